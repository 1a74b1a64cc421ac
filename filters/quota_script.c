/*
 * quota_script.c - EVALSHA arguments and reply decoding for the scripts of lua/.
 *
 * The arguments are built straight into the caller's struct tg_quota_argv
 * (every piece has a known ceiling: bases, the lease, 20-digit numbers), so
 * a call costs no allocation and cannot grow unbounded.  Numbers are written
 * with a small decimal conversion, not snprintf: this runs twice per request.
 */
#include "filters/quota_script.h"

#include "filters/quota_common.h"
#include "proxy/buf.h"
#include "proxy/err.h"

#include <stdbool.h>
#include <string.h>

#define NUM_MAX 21 /* a uint64 or int64 in decimal plus NUL */

/* Arguments under construction in out->buf. */
struct builder {
    struct tg_quota_argv *out;
    size_t used;
    bool overflow;
};

static void builder_init(struct builder *b, struct tg_quota_argv *out)
{
    out->argc = 0;
    b->out = out;
    b->used = 0;
    b->overflow = false;
}

/* Room for one more argument of n bytes plus its NUL, or NULL (overflow). */
static char *slot(struct builder *b, size_t n)
{
    struct tg_quota_argv *a = b->out;
    if (b->overflow || a->argc >= TG_QUOTA_ARGV_MAX || b->used + n + 1 > sizeof(a->buf)) {
        b->overflow = true;
        return NULL;
    }
    char *p = a->buf + b->used;
    p[n] = '\0';
    a->argv[a->argc] = p;
    a->argvlen[a->argc] = n;
    a->argc++;
    b->used += n + 1;
    return p;
}

static void put(struct builder *b, const char *s, size_t n)
{
    char *p = slot(b, n);
    if (p)
        memcpy(p, s, n);
}

static void put_str(struct builder *b, const char *s)
{
    put(b, s, strlen(s));
}

static void put_u64(struct builder *b, uint64_t v)
{
    char tmp[NUM_MAX];
    char *e = tmp + sizeof(tmp), *q = tg_u64_dec_back(e, v);
    put(b, q, (size_t)(e - q));
}

static void put_i64(struct builder *b, int64_t v)
{
    if (v >= 0) {
        put_u64(b, (uint64_t)v);
        return;
    }
    char tmp[NUM_MAX];
    char *e = tmp + sizeof(tmp), *q = tg_u64_dec_back(e, -(uint64_t)v);
    *--q = '-';
    put(b, q, (size_t)(e - q));
}

/* numkeys and the one or two key bases, written in place. */
static int put_keys(struct builder *b, const char *prefix, const char *principal,
                    const char *tenant)
{
    bool has_tenant = tg_quota_has_tenant(tenant);
    char *room;
    size_t left;
    int n;

    put(b, has_tenant ? "2" : "1", 1);
    for (int s = 0; s < (has_tenant ? 2 : 1); s++) {
        if (b->overflow)
            return TG_E_INVALID;
        room = b->out->buf + b->used;
        left = sizeof(b->out->buf) - b->used;
        n = tg_quota_base(room, left, prefix ? prefix : "", s ? TG_QS_TENANT : TG_QS_PRINCIPAL,
                          s ? tenant : principal);
        if (n < 0)
            return n;
        slot(b, (size_t)n); /* claims the bytes just written (and their NUL) */
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

static int finish(const struct builder *b)
{
    if (b->overflow) {
        b->out->argc = 0;
        return TG_E_INVALID;
    }
    return 0;
}

void tg_quota_argv_dispose(struct tg_quota_argv *a)
{
    if (a)
        a->argc = 0;
}

int tg_quota_script_admit_args(const struct tg_quota_admit *req, const char *prefix,
                               struct tg_quota_argv *out)
{
    struct builder b;
    int rv;

    builder_init(&b, out);
    rv = tg_quota_admit_check(req);
    if (rv < 0)
        return rv;
    rv = put_keys(&b, prefix, req->principal, req->tenant);
    if (rv < 0) {
        out->argc = 0;
        return rv;
    }
    put_u64(&b, req->tokens);
    put_u64(&b, req->cost);
    put_str(&b, req->lease);
    put_u64(&b, req->lease_ttl_ms);
    put_limits(&b, req->lim, tg_quota_has_tenant(req->tenant));
    return finish(&b);
}

int tg_quota_script_settle_args(const struct tg_quota_settle *req, const char *prefix,
                                struct tg_quota_argv *out)
{
    struct builder b;
    int rv;

    builder_init(&b, out);
    rv = tg_quota_settle_check(req);
    if (rv < 0)
        return rv;
    rv = put_keys(&b, prefix, req->principal, req->tenant);
    if (rv < 0) {
        out->argc = 0;
        return rv;
    }
    put_str(&b, req->lease);
    put_u64(&b, req->tokens_reserved);
    put_u64(&b, req->tokens_actual);
    put_u64(&b, req->cost_reserved);
    put_u64(&b, req->cost_actual);
    put_i64(&b, req->day);
    put_i64(&b, req->month);
    put_limits(&b, req->lim, tg_quota_has_tenant(req->tenant));
    return finish(&b);
}

int tg_quota_script_renew_args(const char *principal, const char *tenant, const char *lease,
                               uint64_t ttl_ms, const char *prefix, struct tg_quota_argv *out)
{
    struct builder b;
    size_t ll = lease ? strnlen(lease, TG_QUOTA_LEASE_MAX + 1) : 0;
    int rv;

    builder_init(&b, out);
    if (ll == 0 || ll > TG_QUOTA_LEASE_MAX || ttl_ms < 1 || ttl_ms > TG_QUOTA_VALUE_MAX)
        return TG_E_INVALID;
    rv = put_keys(&b, prefix, principal, tenant);
    if (rv < 0) {
        out->argc = 0;
        return rv;
    }
    put(&b, lease, ll);
    put_u64(&b, ttl_ms);
    return finish(&b);
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
