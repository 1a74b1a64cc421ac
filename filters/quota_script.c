/*
 * quota_script.c - EVALSHA arguments and reply decoding for the scripts of lua/.
 *
 * The arguments are built in a fixed-size stack buffer first (every piece
 * has a known ceiling: bases, the lease, 20-digit numbers), then copied into
 * one heap block, so a call costs one allocation and cannot grow unbounded.
 */
#include "filters/quota_script.h"

#include "filters/quota_common.h"
#include "proxy/err.h"
#include "proxy/mem.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define NUM_MAX 21 /* a uint64 or int64 in decimal plus NUL */
#define BUILD_MAX (2 * TG_QUOTA_BASE_MAX + TG_QUOTA_LEASE_MAX + 1 + TG_QUOTA_ARGV_MAX * NUM_MAX)

/* Arguments under construction: offsets into a stack buffer. */
struct builder {
    char buf[BUILD_MAX];
    size_t used;
    int argc;
    size_t off[TG_QUOTA_ARGV_MAX];
    size_t len[TG_QUOTA_ARGV_MAX];
    bool overflow;
};

static void put(struct builder *b, const char *s, size_t n)
{
    if (b->overflow || b->argc >= TG_QUOTA_ARGV_MAX || b->used + n + 1 > sizeof(b->buf)) {
        b->overflow = true;
        return;
    }
    memcpy(b->buf + b->used, s, n);
    b->buf[b->used + n] = '\0';
    b->off[b->argc] = b->used;
    b->len[b->argc] = n;
    b->argc++;
    b->used += n + 1;
}

static void put_str(struct builder *b, const char *s)
{
    put(b, s, strlen(s));
}

static void put_u64(struct builder *b, uint64_t v)
{
    char tmp[NUM_MAX];
    int n = snprintf(tmp, sizeof(tmp), "%" PRIu64, v);
    put(b, tmp, (size_t)n);
}

static void put_i64(struct builder *b, int64_t v)
{
    char tmp[NUM_MAX];
    int n = snprintf(tmp, sizeof(tmp), "%" PRId64, v);
    put(b, tmp, (size_t)n);
}

/* numkeys and the one or two key bases. */
static int put_keys(struct builder *b, const char *prefix, const char *principal,
                    const char *tenant)
{
    char base[TG_QUOTA_BASE_MAX];
    bool has_tenant = tg_quota_has_tenant(tenant);
    int n;

    put_str(b, has_tenant ? "2" : "1");
    n = tg_quota_base(base, sizeof(base), prefix ? prefix : "", TG_QS_PRINCIPAL, principal);
    if (n < 0)
        return n;
    put(b, base, (size_t)n);
    if (has_tenant) {
        n = tg_quota_base(base, sizeof(base), prefix ? prefix : "", TG_QS_TENANT, tenant);
        if (n < 0)
            return n;
        put(b, base, (size_t)n);
    }
    return 0;
}

static void put_limits(struct builder *b, const struct tg_quota_limits lim[TG_QS_COUNT],
                       bool has_tenant)
{
    for (int s = 0; s < (has_tenant ? 2 : 1); s++)
        for (int l = 0; l < TG_QL_COUNT; l++)
            put_u64(b, lim[s].v[l]);
}

/* Move the built arguments into out's single heap block. */
static int finish(const struct builder *b, struct tg_quota_argv *out)
{
    if (b->overflow)
        return TG_E_INVALID;
    out->buf = tg_mem_malloc(b->used);
    if (!out->buf)
        return TG_E_NOMEM;
    memcpy(out->buf, b->buf, b->used);
    for (int i = 0; i < b->argc; i++) {
        out->argv[i] = out->buf + b->off[i];
        out->argvlen[i] = b->len[i];
    }
    out->argc = b->argc;
    return 0;
}

static void reset(struct tg_quota_argv *a)
{
    memset(a, 0, sizeof(*a));
}

void tg_quota_argv_dispose(struct tg_quota_argv *a)
{
    if (!a)
        return;
    tg_mem_free(a->buf);
    reset(a);
}

int tg_quota_script_admit_args(const struct tg_quota_admit *req, const char *prefix,
                               struct tg_quota_argv *out)
{
    struct builder b;
    int rv;

    reset(out);
    rv = tg_quota_admit_check(req);
    if (rv < 0)
        return rv;
    b.used = 0;
    b.argc = 0;
    b.overflow = false;
    rv = put_keys(&b, prefix, req->principal, req->tenant);
    if (rv < 0)
        return rv;
    put_u64(&b, req->tokens);
    put_u64(&b, req->cost);
    put_str(&b, req->lease);
    put_u64(&b, req->lease_ttl_ms);
    put_limits(&b, req->lim, tg_quota_has_tenant(req->tenant));
    return finish(&b, out);
}

int tg_quota_script_settle_args(const struct tg_quota_settle *req, const char *prefix,
                                struct tg_quota_argv *out)
{
    struct builder b;
    int rv;

    reset(out);
    rv = tg_quota_settle_check(req);
    if (rv < 0)
        return rv;
    b.used = 0;
    b.argc = 0;
    b.overflow = false;
    rv = put_keys(&b, prefix, req->principal, req->tenant);
    if (rv < 0)
        return rv;
    put_str(&b, req->lease);
    put_u64(&b, req->tokens_reserved);
    put_u64(&b, req->tokens_actual);
    put_u64(&b, req->cost_reserved);
    put_u64(&b, req->cost_actual);
    put_i64(&b, req->day);
    put_i64(&b, req->month);
    put_limits(&b, req->lim, tg_quota_has_tenant(req->tenant));
    return finish(&b, out);
}

int tg_quota_script_renew_args(const char *principal, const char *tenant, const char *lease,
                               uint64_t ttl_ms, const char *prefix, struct tg_quota_argv *out)
{
    struct builder b;
    size_t ll = lease ? strnlen(lease, TG_QUOTA_LEASE_MAX + 1) : 0;
    int rv;

    reset(out);
    if (ll == 0 || ll > TG_QUOTA_LEASE_MAX || ttl_ms < 1 || ttl_ms > TG_QUOTA_VALUE_MAX)
        return TG_E_INVALID;
    b.used = 0;
    b.argc = 0;
    b.overflow = false;
    rv = put_keys(&b, prefix, principal, tenant);
    if (rv < 0)
        return rv;
    put(&b, lease, ll);
    put_u64(&b, ttl_ms);
    return finish(&b, out);
}

/* The i-th element of an array reply as an integer; false if it is anything else. */
static bool int_at(const redisReply *r, size_t i, long long *v)
{
    const redisReply *e = r->element ? r->element[i] : NULL;
    if (!e || e->type != REDIS_REPLY_INTEGER)
        return false;
    *v = e->integer;
    return true;
}

int tg_quota_script_admit_reply(const redisReply *r, struct tg_quota_decision *out)
{
    long long v[9];

    memset(out, 0, sizeof(*out));
    out->denied = -1;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 9)
        return TG_E_PROTO;
    for (size_t i = 0; i < 9; i++)
        if (!int_at(r, i, &v[i]))
            return TG_E_PROTO;
    /* allowed, denied and retry must agree; times and windows are never negative. */
    if ((v[0] != 0 && v[0] != 1) || v[1] < -1 || v[1] >= TG_QS_COUNT * TG_QL_COUNT ||
        (v[0] == 1) != (v[1] == -1) || v[2] < 0 || v[3] < -1 || v[4] < 0 || v[5] < -1 ||
        v[6] < 0 || v[7] < 0 || v[8] < 0)
        return TG_E_PROTO;
    out->allowed = v[0] == 1;
    out->denied = (int)v[1];
    out->retry_after_ms = (uint64_t)v[2];
    out->remaining[0] = v[3];
    out->reset_ms[0] = (uint64_t)v[4];
    out->remaining[1] = v[5];
    out->reset_ms[1] = (uint64_t)v[6];
    out->day = v[7];
    out->month = v[8];
    return 0;
}

static int zero_or_one(const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_INTEGER || (r->integer != 0 && r->integer != 1))
        return TG_E_PROTO;
    return (int)r->integer;
}

int tg_quota_script_settle_reply(const redisReply *r)
{
    return zero_or_one(r);
}

int tg_quota_script_renew_reply(const redisReply *r)
{
    return zero_or_one(r);
}
