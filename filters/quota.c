/*
 * The quota filter (SPEC §5 request limits, §6 quotas).  See quota.h for the
 * shape; the algorithm both backends implement is in quota-t.h and
 * docs/quotas.md.
 *
 * Life of one request:
 *   on_request_headers  OpenAI body: max_tokens checks (400 or clamp),
 *                       include_usage injection, body re-serialised when
 *                       changed; then admission (local: synchronous; redis:
 *                       one EVALSHA, the chain STOPs until it answers).
 *   on_response_headers x-ratelimit-* headers; a usage reader for 2xx OpenAI
 *                       answers, as an observer (bytes pass untouched) or as
 *                       the response transform (strip the usage event
 *                       tollgate caused, cut output beyond max_tokens).
 *   on_complete         usage (upstream, observed or none) and cost go to
 *                       req->usage for the audit record, and the settlement
 *                       leaves (local: synchronous; redis: one EVALSHA,
 *                       retried on failure: it is idempotent per lease).
 */
#include "filters/quota.h"

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <uv.h>

#include "config/config.h"
#include "filters/filters.h"
#include "filters/quota_common.h"
#include "filters/quota_local.h"
#include "filters/quota_script.h"
#include "filters/usage.h"
#include "lua/scripts.h"
#include "proxy/buf.h"
#include "proxy/err.h"
#include "proxy/log.h"
#include "proxy/mem.h"
#include "proxy/metrics.h"
#include "proxy/redis.h"
#include "proxy/req.h"
#include "proxy/worker.h"

#define LEASE_TTL_MS 60000u   /* a concurrency lease lives this long unless renewed */
#define LEASE_RENEW_MS 20000u /* ... and is renewed this often while its request runs */
#define SETTLE_ATTEMPTS 4     /* a settlement is sent at most this many times */
#define SETTLE_RETRY_MS 250u  /* first retry delay, doubled each time */

enum script_id { S_ADMIT, S_SETTLE, S_RENEW, S_COUNT };

/* Which store admitted a request (and so settles it). */
enum store {
    ST_NONE = 0, /* no admission (no limits) */
    ST_LOCAL,    /* backend "local" */
    ST_REDIS,    /* backend "redis" */
    ST_DEGRADED, /* on_backend_error "local" */
    ST_ALLOWED,  /* on_backend_error "allow": admitted, nothing charged */
};

/* ---- process-wide state ---- */

static struct tg_quota_local *g_local;    /* backend "local" */
static struct tg_quota_local *g_degraded; /* on_backend_error "local" */
static atomic_uint g_degraded_gen;        /* bumped when a Redis connection goes down */
static atomic_int g_redis_workers;        /* workers with a Redis client */
static atomic_int g_redis_up;             /* ... whose connection is up */
static char g_nonce[17];                  /* this process's part of every lease id */

int tg_quota_global_init(void)
{
    unsigned char r[8];
    if (RAND_bytes(r, sizeof(r)) != 1)
        return TG_E_IO;
    for (size_t i = 0; i < sizeof(r); i++)
        snprintf(g_nonce + 2 * i, 3, "%02x", r[i]);
    g_local = tg_quota_local_new();
    g_degraded = tg_quota_local_new();
    if (!g_local || !g_degraded) {
        tg_quota_global_free();
        return TG_E_NOMEM;
    }
    return 0;
}

void tg_quota_global_free(void)
{
    tg_quota_local_free(g_local);
    tg_quota_local_free(g_degraded);
    g_local = g_degraded = NULL;
}

static uint64_t now_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

/* ---- per-worker state ---- */

struct settle_op;
struct quota_ctx;

struct tg_quota_worker {
    struct tg_worker *w;          /* owner */
    struct tg_redis *redis;       /* NULL for the local backend */
    bool up;                      /* last state reported by the client */
    struct tg_cfg_quota key;      /* the settings redis was made from (strings borrowed
                                     from cfg, compared on reload) */
    struct tg_config *key_cfg;    /* reference keeping key's strings alive */
    struct settle_op *settles;    /* settlements in flight (doubly linked) */
    unsigned nsettles;            /* count */
    bool closing;                 /* tg_quota_worker_close ran */
    uv_timer_t renew_timer;       /* due time of renew_head (see "lease renewal") */
    struct quota_ctx *renew_head; /* requests whose lease is renewed, by due time */
    struct quota_ctx *renew_tail; /* newest */
    struct rl_seen {              /* last bucket state Redis told this worker, per principal */
        char principal[64];       /* "" when free; longer names are not kept */
        uint64_t tat_us[2];       /* rpm, tpm: when the bucket is full again (wall clock) */
    } seen[64];                   /* direct-mapped by a hash of the principal */
};

static void on_redis_state(void *arg, bool up)
{
    struct tg_quota_worker *qw = arg;
    if (up == qw->up)
        return;
    qw->up = up;
    atomic_fetch_add(&g_redis_up, up ? 1 : -1);
    if (!up) {
        /* SPEC §3: the degraded counters start fresh at each failure. */
        atomic_fetch_add(&g_degraded_gen, 1);
        tg_log_warn("quota", "worker %u: Redis connection lost; on_backend_error applies",
                    qw->w->index);
    } else {
        tg_log_info("quota", "worker %u: Redis connection up", qw->w->index);
    }
}

static bool same_redis(const struct tg_cfg_quota *a, const struct tg_cfg_quota *b)
{
    return a->backend == b->backend && a->redis_addrlen == b->redis_addrlen &&
           memcmp(&a->redis_addr, &b->redis_addr, a->redis_addrlen) == 0 &&
           a->redis_database == b->redis_database && a->redis_timeout_ms == b->redis_timeout_ms &&
           ((!a->redis_password && !b->redis_password) ||
            (a->redis_password && b->redis_password &&
             strcmp(a->redis_password, b->redis_password) == 0));
}

static void drop_redis(struct tg_quota_worker *qw)
{
    if (!qw->redis)
        return;
    struct tg_redis *r = qw->redis;
    qw->redis = NULL;
    if (qw->up)
        atomic_fetch_sub(&g_redis_up, 1);
    qw->up = false;
    atomic_fetch_sub(&g_redis_workers, 1);
    tg_redis_free(r); /* pending callbacks run now with TG_REDIS_E_CLOSED */
    tg_config_unref(qw->key_cfg);
    qw->key_cfg = NULL;
}

static int make_redis(struct tg_quota_worker *qw, struct tg_config *cfg)
{
    const struct tg_cfg_quota *q = &cfg->quota;
    struct tg_redis_opts o = {0};
    memcpy(&o.addr, &q->redis_addr, q->redis_addrlen);
    o.addrlen = q->redis_addrlen;
    o.password = q->redis_password;
    o.database = (int)q->redis_database;
    o.timeout_ms = q->redis_timeout_ms;
    o.connect_timeout_ms = q->redis_timeout_ms * 4 < 1000 ? 1000 : q->redis_timeout_ms * 4;
    o.on_state = on_redis_state;
    o.state_arg = qw;
    const struct tg_redis_script scripts[S_COUNT] = {
        [S_ADMIT] = {tg_lua_admit, tg_lua_admit_len},
        [S_SETTLE] = {tg_lua_settle, tg_lua_settle_len},
        [S_RENEW] = {tg_lua_renew, tg_lua_renew_len},
    };
    int rv = tg_redis_new(&qw->w->loop, &o, scripts, S_COUNT, &qw->redis);
    if (rv != 0) {
        tg_log_error("quota", "worker %u: cannot create the Redis client: %s", qw->w->index,
                     tg_redis_strerror(rv));
        qw->redis = NULL;
        return rv;
    }
    atomic_fetch_add(&g_redis_workers, 1);
    qw->key = *q;
    qw->key_cfg = tg_config_ref(cfg);
    return 0;
}

int tg_quota_worker_init(struct tg_worker *w)
{
    struct tg_quota_worker *qw = tg_mem_calloc(1, sizeof(*qw));
    if (!qw)
        return TG_E_NOMEM;
    qw->w = w;
    uv_timer_init(&w->loop, &qw->renew_timer); /* cannot fail; closed in tg_quota_worker_close */
    w->quota = qw;
    if (w->cfg->quota.backend == TG_QUOTA_REDIS)
        return make_redis(qw, w->cfg);
    return 0;
}

void tg_quota_worker_update(struct tg_worker *w)
{
    struct tg_quota_worker *qw = w->quota;
    if (!qw || qw->closing)
        return;
    bool want = w->cfg->quota.backend == TG_QUOTA_REDIS;
    if (qw->redis && (!want || !same_redis(&qw->key, &w->cfg->quota)))
        drop_redis(qw);
    if (want && !qw->redis)
        make_redis(qw, w->cfg);
}

/* ---- the request side ---- */

#define RL_FIELDS 6     /* x-ratelimit-{limit,remaining,reset}-{requests,tokens} */
#define RL_VALUE_MAX 24 /* 20 digits, or "<11 digits>m59.999s", plus NUL */

struct quota_ctx {
    struct tg_req *req;               /* owner */
    struct tg_filter *f;              /* this filter */
    enum store store;                 /* who admitted (and settles) */
    struct tg_quota_admit adm;        /* what was asked (strings in the arena) */
    struct tg_quota_decision dec;     /* what was answered */
    struct tg_redis_call *call;       /* pending admission call */
    uint64_t t0;                      /* admission start (uv_hrtime) */
    struct tg_usage *usage;           /* response reader, or NULL */
    const struct tg_cfg_price *price; /* price of the request's model, or NULL */
    uint64_t output_cap;              /* effective max_tokens for a stream cut; 0 none */
    struct quota_ctx *renew_prev;     /* tg_quota_worker's renewal list, while linked */
    struct quota_ctx *renew_next;
    uint64_t renew_due; /* loop time (ms) of the next renewal */
    bool renew_linked;  /* holds a lease that is being renewed */
    bool rl_headers;    /* x-ratelimit-* apply to the answer */
    unsigned rl_mask;   /* bit i: ctx->rl[i] is sent */
    struct rl_value {
        char s[RL_VALUE_MAX]; /* NUL-terminated */
        unsigned char len;
    } rl[RL_FIELDS]; /* x-ratelimit-* values, in rl_names order */
};

/* Reasons (audit) and metric slots of each refusal, scope * TG_QL_COUNT + limit. */
static const char *const deny_reason[TG_QS_COUNT * TG_QL_COUNT] = {
    "quota.requests_per_minute",
    "quota.tokens_per_minute",
    "quota.tokens_per_day",
    "quota.cost_per_day",
    "quota.cost_per_month",
    "quota.concurrency",
    "quota.tenant.requests_per_minute",
    "quota.tenant.tokens_per_minute",
    "quota.tenant.tokens_per_day",
    "quota.tenant.cost_per_day",
    "quota.tenant.cost_per_month",
    "quota.tenant.concurrency",
};

const char *tg_quota_limit_label(unsigned i)
{
    return i < TG_QS_COUNT * TG_QL_COUNT ? deny_reason[i] + 6 : "backend_unavailable";
}

/* OpenAI's duration style for x-ratelimit-reset-*: "120ms", "1s", "1.5s", "6m0s".
 * out has RL_VALUE_MAX bytes; returns the length (NUL-terminated). */
static size_t fmt_reset(char *out, uint64_t ms)
{
    char *p = out;
    if (ms > UINT64_C(1) << 50)
        ms = UINT64_C(1) << 50; /* keeps every field short */
    if (ms < 1000) {
        p = tg_u64_dec(p, ms);
        *p++ = 'm';
    } else {
        uint64_t m = ms / 60000, rest = ms % 60000;
        unsigned frac = (unsigned)(rest % 1000);
        if (m) {
            p = tg_u64_dec(p, m);
            *p++ = 'm';
        }
        p = tg_u64_dec(p, rest / 1000);
        if (frac) {
            /* Three decimals without their trailing zeros. */
            *p++ = '.';
            *p++ = (char)('0' + frac / 100);
            if (frac % 100) {
                *p++ = (char)('0' + frac / 10 % 10);
                if (frac % 10)
                    *p++ = (char)('0' + frac % 10);
            }
        }
    }
    *p++ = 's';
    *p = '\0';
    return (size_t)(p - out);
}

/* The x-ratelimit-* field names, in the order they are sent. */
static const struct tg_iov rl_names[RL_FIELDS] = {
    TG_IOV_LIT("x-ratelimit-limit-requests"),   TG_IOV_LIT("x-ratelimit-remaining-requests"),
    TG_IOV_LIT("x-ratelimit-reset-requests"),   TG_IOV_LIT("x-ratelimit-limit-tokens"),
    TG_IOV_LIT("x-ratelimit-remaining-tokens"), TG_IOV_LIT("x-ratelimit-reset-tokens"),
};

/*
 * Format the x-ratelimit-* values of the caller's per-minute limits once,
 * into ctx->rl (they go both to the local-reply extras and, later, to the
 * upstream's response headers).
 */
static void rl_format(struct quota_ctx *ctx)
{
    static const int lim[2] = {TG_QL_RPM, TG_QL_TPM};
    ctx->rl_mask = 0;
    for (int i = 0; i < 2; i++) {
        uint64_t l = ctx->adm.lim[TG_QS_PRINCIPAL].v[lim[i]];
        if (!l)
            continue;
        struct rl_value *v = &ctx->rl[3 * i];
        int64_t rem = ctx->dec.remaining[i];
        v[0].len = (unsigned char)(tg_u64_dec(v[0].s, l) - v[0].s);
        v[0].s[v[0].len] = '\0';
        v[1].len = (unsigned char)(tg_u64_dec(v[1].s, rem < 0 ? 0 : (uint64_t)rem) - v[1].s);
        v[1].s[v[1].len] = '\0';
        v[2].len = (unsigned char)fmt_reset(v[2].s, ctx->dec.reset_ms[i]);
        ctx->rl_mask |= 7u << (3 * i);
    }
}

/*
 * tg_req_reply_extra() without its copies: it duplicates name and value
 * into the request arena, but these already live as long (static names,
 * values in this filter's context, which the arena holds), so the fields
 * are referenced where they are.  Same bound and order as
 * tg_req_reply_extra() (extras beyond the array are dropped).
 */
static void reply_extra(struct tg_req *req, struct tg_iov name, struct tg_iov value)
{
    if (req->nreply_extra >= sizeof(req->reply_extra) / sizeof(req->reply_extra[0]))
        return;
    req->reply_extra[req->nreply_extra++] = (struct tg_header){name, value};
}

/* Format ctx->dec's x-ratelimit-* values into the local-reply extras. */
static void rl_to_extras(struct quota_ctx *ctx, struct tg_req *req)
{
    rl_format(ctx);
    for (unsigned i = 0; i < RL_FIELDS; i++)
        if (ctx->rl_mask & (1u << i))
            reply_extra(req, rl_names[i], tg_iov_make(ctx->rl[i].s, ctx->rl[i].len));
}

static void count_denial(struct tg_req *req, unsigned slot)
{
    if (req->worker && req->worker->metrics)
        tg_counter_add(&req->worker->metrics->quota_denials[slot], 1);
}

static void count_backend_error(struct tg_req *req)
{
    if (req->worker && req->worker->metrics)
        tg_counter_add(&req->worker->metrics->quota_backend_errors, 1);
}

static struct rl_seen *seen_slot(struct tg_quota_worker *qw, const char *principal)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *c = principal; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    return &qw->seen[h % (sizeof(qw->seen) / sizeof(qw->seen[0]))];
}

/*
 * SPEC §5: every answer to an identified caller carries the x-ratelimit-*
 * fields, also one refused before admission (403 model, 400 max_tokens,
 * 413): nothing was charged, so they describe the buckets as they are.
 * The local backend is read exactly; with Redis, the state the last
 * decision for this principal on this worker reported is aged to now (a
 * principal this worker has not seen lately reads as a full bucket).
 */
static void rl_before_reply(struct tg_req *req, void *arg)
{
    struct quota_ctx *ctx = arg;
    const struct tg_cfg_policy *p = req->identity.policy;
    if (ctx->rl_headers || !p || !req->identity.principal)
        return;
    static const int lim[2] = {TG_QL_RPM, TG_QL_TPM};
    if (!p->lim[TG_QS_PRINCIPAL].v[TG_QL_RPM] && !p->lim[TG_QS_PRINCIPAL].v[TG_QL_TPM])
        return;
    uint64_t now = now_us();
    uint64_t tat[2] = {0, 0};
    if (req->cfg->quota.backend == TG_QUOTA_LOCAL) {
        char key[TG_QUOTA_BASE_MAX + 4];
        int n = tg_quota_base(key, sizeof(key), "", TG_QS_PRINCIPAL, req->identity.principal);
        for (int i = 0; n > 0 && i < 2; i++) {
            memcpy(key + n, i ? "tpm" : "rpm", 4);
            int64_t v = 0;
            if (tg_quota_local_peek(g_local, now, key, &v) == 1 && v > 0)
                tat[i] = (uint64_t)v;
        }
    } else if (req->worker && req->worker->quota) {
        struct rl_seen *s = seen_slot(req->worker->quota, req->identity.principal);
        if (strcmp(s->principal, req->identity.principal) == 0)
            memcpy(tat, s->tat_us, sizeof(tat));
    }
    ctx->adm.lim[TG_QS_PRINCIPAL] = p->lim[TG_QS_PRINCIPAL];
    for (int i = 0; i < 2; i++) {
        uint64_t l = p->lim[TG_QS_PRINCIPAL].v[lim[i]];
        uint64_t ahead = tat[i] > now ? tat[i] - now : 0;
        ctx->dec.remaining[i] = l ? tg_quota_gcra_remaining(ahead, l) : -1;
        ctx->dec.reset_ms[i] = (ahead + 999) / 1000;
    }
    rl_to_extras(ctx, req);
}

static bool attach(struct tg_filter *f, struct tg_req *req)
{
    req->before_reply = rl_before_reply;
    req->before_reply_arg = f->ctx;
    return true;
}

/* ---- lease renewal ---- */

/*
 * Every lease is renewed LEASE_RENEW_MS after its admission and then every
 * LEASE_RENEW_MS, so due times are in admission order: the requests holding
 * one are kept on a per-worker FIFO list and a single worker timer fires
 * for the head (re-armed for the next head), instead of one uv_timer (an
 * allocation, a heap insert and an asynchronous close) per request.  A
 * renewed request goes back to the tail with now + LEASE_RENEW_MS, which
 * keeps the order (libuv's repeating timers reschedule the same way).
 */

static void on_renew_reply(void *arg, int status, const redisReply *reply)
{
    (void)arg;
    (void)reply;
    if (status != TG_REDIS_OK)
        tg_log_debug("quota", "lease renewal failed: %s", tg_redis_strerror(status));
}

static void renew_one(struct tg_quota_worker *qw, struct quota_ctx *ctx)
{
    uint64_t now = now_us();
    switch (ctx->store) {
    case ST_LOCAL:
        tg_quota_local_renew(g_local, now, ctx->adm.principal, ctx->adm.tenant, ctx->adm.lease,
                             LEASE_TTL_MS);
        break;
    case ST_DEGRADED:
        tg_quota_local_renew(g_degraded, now, ctx->adm.principal, ctx->adm.tenant, ctx->adm.lease,
                             LEASE_TTL_MS);
        break;
    case ST_REDIS: {
        struct tg_quota_argv a;
        if (!qw->redis ||
            tg_quota_script_renew_args(ctx->adm.principal, ctx->adm.tenant, ctx->adm.lease,
                                       LEASE_TTL_MS, ctx->req->cfg->quota.key_prefix, &a) != 0)
            break;
        /* Fire and forget: a lost renewal only shortens the lease. */
        tg_redis_eval(qw->redis, S_RENEW, a.argc, a.argv, a.argvlen, on_renew_reply, NULL, NULL);
        tg_quota_argv_dispose(&a);
        break;
    }
    case ST_NONE:
    case ST_ALLOWED: break;
    }
}

static void renew_unlink(struct tg_quota_worker *qw, struct quota_ctx *ctx)
{
    if (ctx->renew_prev)
        ctx->renew_prev->renew_next = ctx->renew_next;
    else
        qw->renew_head = ctx->renew_next;
    if (ctx->renew_next)
        ctx->renew_next->renew_prev = ctx->renew_prev;
    else
        qw->renew_tail = ctx->renew_prev;
    ctx->renew_prev = ctx->renew_next = NULL;
    ctx->renew_linked = false;
}

static void renew_link(struct tg_quota_worker *qw, struct quota_ctx *ctx, uint64_t due)
{
    ctx->renew_due = due;
    ctx->renew_next = NULL;
    ctx->renew_prev = qw->renew_tail;
    if (qw->renew_tail)
        qw->renew_tail->renew_next = ctx;
    else
        qw->renew_head = ctx;
    qw->renew_tail = ctx;
    ctx->renew_linked = true;
}

static void on_renew(uv_timer_t *t)
{
    struct tg_quota_worker *qw = tg_container_of(t, struct tg_quota_worker, renew_timer);
    uint64_t now = uv_now(t->loop);
    struct quota_ctx *stop = NULL; /* first request renewed in this run */
    struct quota_ctx *ctx;
    while ((ctx = qw->renew_head) != NULL && ctx != stop && ctx->renew_due <= now) {
        renew_unlink(qw, ctx);
        renew_link(qw, ctx, now + LEASE_RENEW_MS);
        if (!stop)
            stop = ctx;
        renew_one(qw, ctx);
    }
    if (qw->renew_head)
        uv_timer_start(t, on_renew, qw->renew_head->renew_due - now, 0);
}

static void renew_start(struct quota_ctx *ctx)
{
    struct tg_req *req = ctx->req;
    struct tg_quota_worker *qw = req->worker ? req->worker->quota : NULL;
    if (!qw || qw->closing || (!ctx->adm.lim[0].v[TG_QL_CONC] && !ctx->adm.lim[1].v[TG_QL_CONC]))
        return; /* no renewal: the lease simply expires after LEASE_TTL_MS */
    renew_link(qw, ctx, uv_now(&req->worker->loop) + LEASE_RENEW_MS);
    if (!uv_is_active((uv_handle_t *)&qw->renew_timer))
        uv_timer_start(&qw->renew_timer, on_renew, LEASE_RENEW_MS, 0);
}

static void renew_stop(struct quota_ctx *ctx)
{
    /* Linked implies the worker's quota state is alive: closing it unlinks all. */
    if (ctx->renew_linked)
        renew_unlink(ctx->req->worker->quota, ctx);
}

/* ---- admission ---- */

/* A Redis decision tells how full the caller's buckets are: keep it for
 * answers refused before admission (rl_before_reply). */
static void remember(struct quota_ctx *ctx)
{
    struct tg_quota_worker *qw = ctx->req->worker ? ctx->req->worker->quota : NULL;
    size_t n = strlen(ctx->req->identity.principal);
    if (!qw || n >= sizeof(qw->seen[0].principal))
        return;
    struct rl_seen *s = seen_slot(qw, ctx->req->identity.principal);
    memcpy(s->principal, ctx->req->identity.principal, n + 1);
    uint64_t now = now_us();
    for (int i = 0; i < 2; i++)
        s->tat_us[i] = now + ctx->dec.reset_ms[i] * 1000;
}

/* The decision is in ctx->dec: go on, or answer 429. */
static void decided(struct quota_ctx *ctx, bool sync)
{
    struct tg_req *req = ctx->req;
    if (ctx->store == ST_REDIS)
        remember(ctx);
    req->usage.quota_ms = (double)(uv_hrtime() - ctx->t0) / 1e6;
    ctx->rl_headers = true;
    rl_to_extras(ctx, req);
    if (ctx->dec.allowed) {
        renew_start(ctx);
        if (!sync)
            tg_req_continue(req);
        return;
    }
    ctx->store = ST_NONE; /* nothing was charged */
    int d = ctx->dec.denied;
    unsigned slot = d >= 0 && d < TG_QS_COUNT * TG_QL_COUNT ? (unsigned)d : 0;
    int lim = (int)(slot % TG_QL_COUNT);
    bool budget = lim == TG_QL_TPD || lim == TG_QL_CPD || lim == TG_QL_CPM;
    char ra[24];
    uint64_t secs = (ctx->dec.retry_after_ms + 999) / 1000;
    snprintf(ra, sizeof(ra), "%llu", (unsigned long long)(secs ? secs : 1));
    tg_req_reply_extra(req, "retry-after", ra);
    count_denial(req, slot);
    tg_req_reply_error(req, 429, budget ? "insufficient_quota" : "rate_limit_exceeded",
                       budget ? "quota exceeded for this period; see retry-after"
                              : "rate limit exceeded; see retry-after",
                       deny_reason[slot]);
}

/* Answer 503 because the shared backend cannot be asked. */
static void unavailable(struct quota_ctx *ctx)
{
    struct tg_req *req = ctx->req;
    ctx->store = ST_NONE;
    req->usage.quota_ms = (double)(uv_hrtime() - ctx->t0) / 1e6;
    tg_req_reply_extra(req, "retry-after", "1");
    count_denial(req, TG_QS_COUNT * TG_QL_COUNT);
    tg_req_reply_error(req, 503, "unavailable", "the quota backend is unavailable",
                       "quota.backend_unavailable");
}

/*
 * Redis could not answer: on_backend_error decides.  sync: still inside
 * on_request_headers (return value decides), else the chain is stopped.
 * Returns the status on_request_headers should return.
 */
static enum tg_filter_status backend_failed(struct quota_ctx *ctx, bool sync)
{
    struct tg_req *req = ctx->req;
    const struct tg_cfg_quota *q = &req->cfg->quota;
    count_backend_error(req);
    req->usage.degraded = true;
    if (q->on_backend_error == TG_QUOTA_FAIL_ALLOW) {
        ctx->store = ST_ALLOWED;
        req->usage.quota_ms = (double)(uv_hrtime() - ctx->t0) / 1e6;
        if (!sync)
            tg_req_continue(req);
        return TG_FILTER_CONTINUE;
    }
    bool budgets = false;
    for (int s = 0; s < TG_QS_COUNT; s++)
        budgets = budgets || ctx->adm.lim[s].v[TG_QL_TPD] || ctx->adm.lim[s].v[TG_QL_CPD] ||
                  ctx->adm.lim[s].v[TG_QL_CPM];
    if (q->on_backend_error == TG_QUOTA_FAIL_DENY || budgets) {
        unavailable(ctx);
        return TG_FILTER_REPLIED;
    }
    /* "local": this instance's share of each per-minute and concurrency
     * limit, in counters of the current failure generation. */
    struct tg_quota_admit a = ctx->adm;
    for (int s = 0; s < TG_QS_COUNT; s++)
        for (int l = 0; l < TG_QL_COUNT; l++)
            if (a.lim[s].v[l]) {
                uint64_t v = a.lim[s].v[l] / q->instances;
                a.lim[s].v[l] = v ? v : 1;
            }
    unsigned gen = atomic_load(&g_degraded_gen);
    size_t pl = strlen(ctx->adm.principal) + 16;
    char *p = tg_arena_alloc(&req->arena, pl);
    char *t = NULL;
    if (p)
        snprintf(p, pl, "g%u:%s", gen, ctx->adm.principal);
    if (p && ctx->adm.tenant) {
        size_t tl = strlen(ctx->adm.tenant) + 16;
        if ((t = tg_arena_alloc(&req->arena, tl)))
            snprintf(t, tl, "g%u:%s", gen, ctx->adm.tenant);
    }
    if (!p || (ctx->adm.tenant && !t)) {
        unavailable(ctx);
        return TG_FILTER_REPLIED;
    }
    a.principal = p;
    a.tenant = t;
    ctx->adm = a;
    ctx->store = ST_DEGRADED;
    if (tg_quota_local_admit(g_degraded, now_us(), &ctx->adm, &ctx->dec) != 0) {
        unavailable(ctx);
        return TG_FILTER_REPLIED;
    }
    decided(ctx, sync);
    return ctx->dec.allowed ? TG_FILTER_CONTINUE : TG_FILTER_REPLIED;
}

static void on_admit_reply(void *arg, int status, const redisReply *reply)
{
    struct quota_ctx *ctx = arg;
    ctx->call = NULL;
    if (status == TG_REDIS_OK && tg_quota_script_admit_reply(reply, &ctx->dec) == 0) {
        decided(ctx, false);
        return;
    }
    if (status == TG_REDIS_OK || status == TG_REDIS_E_REPLY)
        tg_log_warn("quota", "admission script: %s",
                    status == TG_REDIS_E_REPLY && reply && reply->str ? reply->str
                                                                      : "malformed reply");
    backend_failed(ctx, false);
}

static enum tg_filter_status admit(struct quota_ctx *ctx)
{
    struct tg_req *req = ctx->req;
    ctx->t0 = uv_hrtime();
    if (req->cfg->quota.backend == TG_QUOTA_LOCAL) {
        ctx->store = ST_LOCAL;
        if (tg_quota_local_admit(g_local, now_us(), &ctx->adm, &ctx->dec) != 0) {
            ctx->store = ST_NONE;
            tg_req_reply_error(req, 503, "unavailable", "out of memory", "server.nomem");
            return TG_FILTER_REPLIED;
        }
        decided(ctx, true);
        return ctx->dec.allowed ? TG_FILTER_CONTINUE : TG_FILTER_REPLIED;
    }
    struct tg_quota_worker *qw = req->worker ? req->worker->quota : NULL;
    struct tg_quota_argv a;
    if (!qw || !qw->redis ||
        tg_quota_script_admit_args(&ctx->adm, req->cfg->quota.key_prefix, &a) != 0)
        return backend_failed(ctx, true);
    ctx->store = ST_REDIS;
    int rv = tg_redis_eval(qw->redis, S_ADMIT, a.argc, a.argv, a.argvlen, on_admit_reply, ctx,
                           &ctx->call);
    tg_quota_argv_dispose(&a);
    if (rv != 0) {
        ctx->call = NULL;
        return backend_failed(ctx, true);
    }
    return TG_FILTER_STOP;
}

/* ---- request limits of OpenAI bodies ---- */

static const char *const max_fields[] = {"max_tokens", "max_completion_tokens",
                                         "max_output_tokens"};

/*
 * SPEC §3/§5: max_tokens (and its two aliases) must be a non-negative
 * integer or null; above the policy's cap it is refused or clamped.
 * Returns 1 when the body changed, 0 when not, -1 when answered.
 */
static int check_max_tokens(struct tg_req *req, json_t *doc)
{
    const struct tg_cfg_policy *p = req->identity.policy;
    int changed = 0;
    for (size_t i = 0; i < sizeof(max_fields) / sizeof(max_fields[0]); i++) {
        json_t *v = json_object_get(doc, max_fields[i]);
        if (!v || json_is_null(v))
            continue;
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            char msg[96];
            snprintf(msg, sizeof(msg), "%s must be a non-negative integer", max_fields[i]);
            tg_req_reply_error(req, 400, "invalid_request", msg, "limits.invalid_request");
            return -1;
        }
        uint64_t n = (uint64_t)json_integer_value(v);
        if (p && p->max_tokens && n > p->max_tokens) {
            if (!p->max_tokens_clamp) {
                char msg[128];
                snprintf(msg, sizeof(msg), "%s %llu is above this caller's limit of %llu",
                         max_fields[i], (unsigned long long)n, (unsigned long long)p->max_tokens);
                tg_req_reply_error(req, 400, "invalid_request", msg, "limits.max_tokens");
                return -1;
            }
            json_object_set_new(doc, max_fields[i], json_integer((json_int_t)p->max_tokens));
            n = p->max_tokens;
            changed = 1;
        }
        if (req->openai.max_tokens < 0 || (int64_t)n < req->openai.max_tokens)
            req->openai.max_tokens = (int64_t)n;
    }
    return changed;
}

/*
 * SPEC §5: a streamed chat/completions request gets
 * stream_options.include_usage = true so its usage can be counted; when the
 * client had not asked, the usage event is stripped from what it receives.
 * Returns 1 when the body changed.
 */
static int inject_include_usage(struct tg_req *req, json_t *doc)
{
    if (req->stream != 1 || req->openai.include_usage ||
        (req->openai.api != TG_USAGE_CHAT && req->openai.api != TG_USAGE_COMPLETIONS))
        return 0;
    json_t *so = json_object_get(doc, "stream_options");
    if (!json_is_object(so)) {
        so = json_object();
        if (!so || json_object_set_new(doc, "stream_options", so) != 0)
            return -1;
    }
    if (json_object_set_new(so, "include_usage", json_true()) != 0)
        return -1;
    req->openai.strip_usage = true;
    return 1;
}

/* Body rewrite, reservation sizes.  0, or -1 when answered. */
static int request_limits(struct quota_ctx *ctx)
{
    struct tg_req *req = ctx->req;
    json_t *doc = req->openai.doc;
    if (!doc)
        return 0;
    int a = check_max_tokens(req, doc);
    if (a < 0)
        return -1;
    /* The policy's cap binds a request that names no limit too: the model
     * server gets it, so a non-streamed answer cannot run past it either. */
    const struct tg_cfg_policy *pol = req->identity.policy;
    if (pol && pol->max_tokens && req->openai.max_tokens < 0 &&
        req->openai.api != TG_USAGE_EMBEDDINGS) {
        const char *field =
            req->openai.api == TG_USAGE_RESPONSES ? "max_output_tokens" : "max_tokens";
        if (json_object_set_new(doc, field, json_integer((json_int_t)pol->max_tokens)) != 0) {
            tg_req_reply_error(req, 503, "unavailable", "out of memory", "server.nomem");
            return -1;
        }
        req->openai.max_tokens = (int64_t)pol->max_tokens;
        a = 1;
    }
    int b = inject_include_usage(req, doc);
    if (b < 0) {
        tg_req_reply_error(req, 503, "unavailable", "out of memory", "server.nomem");
        return -1;
    }
    if (a || b) {
        char *s = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
        int rv = s ? tg_req_replace_body(req, s, strlen(s)) : TG_E_NOMEM;
        free(s); /* jansson's allocator */
        if (rv != 0) {
            tg_req_reply_error(req, 503, "unavailable", "out of memory", "server.nomem");
            return -1;
        }
    }
    const struct tg_cfg_policy *p = req->identity.policy;
    if (req->stream == 1)
        ctx->output_cap = req->openai.max_tokens >= 0 ? (uint64_t)req->openai.max_tokens
                          : p && p->max_tokens        ? p->max_tokens
                                                      : 0;
    return 0;
}

/* Amounts the backends accept (quota_common.h): beyond it, the budget is gone anyway. */
static uint64_t clamp(uint64_t v)
{
    return v > TG_QUOTA_VALUE_MAX ? TG_QUOTA_VALUE_MAX : v;
}

/* Tokens reserved at admission: prompt estimate plus the output that may come. */
static uint64_t output_reservation(const struct tg_req *req)
{
    if (!req->openai.inspected || req->openai.api == TG_USAGE_EMBEDDINGS)
        return 0;
    if (req->openai.max_tokens >= 0)
        return (uint64_t)req->openai.max_tokens;
    const struct tg_cfg_policy *p = req->identity.policy;
    if (p && p->max_tokens)
        return p->max_tokens;
    return req->cfg->quota.default_output_reservation;
}

static enum tg_filter_status on_request_headers(struct tg_filter *f, struct tg_req *req)
{
    struct quota_ctx *ctx = f->ctx;
    ctx->req = req;
    ctx->f = f;
    if (req->openai.inspected) {
        int rl = request_limits(ctx);
        /* The parsed body is not needed past here: give its ~20 small
         * blocks back now, while they are hot, not at the end of a stream. */
        json_decref(req->openai.doc);
        req->openai.doc = NULL;
        if (rl < 0)
            return TG_FILTER_REPLIED;
        ctx->price = tg_config_find_price(req->cfg, req->model);
    }
    const struct tg_cfg_policy *p = req->identity.policy;
    if (!p || !p->has_limits || !req->identity.principal)
        return TG_FILTER_CONTINUE;
    char *lease = tg_arena_alloc(&req->arena, 40);
    if (!lease) {
        tg_req_reply_error(req, 503, "unavailable", "out of memory", "server.nomem");
        return TG_FILTER_REPLIED;
    }
    snprintf(lease, 40, "%s-%llx", g_nonce, (unsigned long long)req->id);
    uint64_t out = output_reservation(req);
    ctx->adm.principal = req->identity.principal;
    ctx->adm.tenant = req->identity.tenant && req->identity.tenant[0] ? req->identity.tenant : NULL;
    ctx->adm.lim[TG_QS_PRINCIPAL] = p->lim[TG_QS_PRINCIPAL];
    if (ctx->adm.tenant)
        ctx->adm.lim[TG_QS_TENANT] = p->lim[TG_QS_TENANT];
    ctx->adm.tokens = clamp(req->openai.inspected ? req->openai.prompt_estimate + out : 0);
    ctx->adm.cost = clamp(tg_config_cost(ctx->price, req->openai.prompt_estimate, out));
    ctx->adm.lease = lease;
    ctx->adm.lease_ttl_ms = LEASE_TTL_MS;
    return admit(ctx);
}

/* ---- the response side ---- */

static bool is_sse(const struct tg_req *req)
{
    struct tg_iov ct = tg_hlist_get(&req->resp_headers, "content-type");
    return ct.len >= 17 && strncasecmp(ct.base, "text/event-stream", 17) == 0;
}

static int emit_to_client(void *arg, const char *p, size_t n)
{
    return tg_req_response_emit(arg, p, n, false);
}

static int emit_nowhere(void *arg, const char *p, size_t n)
{
    (void)arg;
    (void)p;
    (void)n;
    return 0;
}

static int xform(struct tg_req *req, const char *p, size_t n, bool end)
{
    struct quota_ctx *ctx = req->resp_xform_arg;
    int rv = tg_usage_feed(ctx->usage, p, n, emit_to_client, req);
    if (rv == 0 && end)
        rv = tg_usage_finish(ctx->usage, emit_to_client, req);
    if (rv == TG_USAGE_CUT) {
        /* The upstream ignored max_tokens: the stream ended with our own
         * final event and [DONE]; close the upstream request. */
        tg_req_response_cut(req, "stream.cut");
        return 0;
    }
    if (rv < 0)
        return rv;
    return end ? tg_req_response_emit(req, NULL, 0, true) : 0;
}

/* Drop every x-ratelimit-* field of rl_names from l, in one pass. */
static void rl_strip(struct tg_hlist *l)
{
    size_t out = 0;
    for (size_t i = 0; i < l->n; i++) {
        struct tg_iov n = l->v[i].name;
        bool ours = false;
        if (n.len >= 24 && memcmp(n.base, "x-ratelimit-", 12) == 0)
            for (unsigned k = 0; k < RL_FIELDS && !ours; k++)
                ours = tg_iov_eq(n, rl_names[k]);
        if (!ours)
            l->v[out++] = l->v[i];
    }
    l->n = out;
}

static enum tg_filter_status on_response_headers(struct tg_filter *f, struct tg_req *req)
{
    struct quota_ctx *ctx = f->ctx;
    if (ctx->rl_headers) {
        /* Ours describe the caller's tollgate limits; an upstream's own would mislead. */
        rl_strip(&req->resp_headers);
        for (unsigned i = 0; i < RL_FIELDS; i++)
            if (ctx->rl_mask & (1u << i))
                tg_hlist_add(&req->resp_headers, &req->arena, rl_names[i],
                             tg_iov_make(ctx->rl[i].s, ctx->rl[i].len));
    }
    if (!req->openai.inspected || req->status < 200 || req->status >= 300 || req->head_only)
        return TG_FILTER_CONTINUE;
    bool sse = is_sse(req);
    struct tg_usage_opts o = {
        .api = (enum tg_usage_api)req->openai.api,
        .sse = sse,
        .strip_usage = sse && req->openai.strip_usage,
        .max_output = sse ? ctx->output_cap : 0,
        .prompt_estimate = req->openai.prompt_estimate,
    };
    ctx->usage = tg_usage_new(&o);
    if (!ctx->usage)
        return TG_FILTER_CONTINUE; /* usage then counts as observed */
    if (o.strip_usage || o.max_output) {
        /* Events may be dropped or added: the length is no longer known. */
        req->resp_content_length = -1;
        tg_hlist_remove(&req->resp_headers, "content-length");
        req->resp_xform = xform;
        req->resp_xform_arg = ctx;
    }
    return TG_FILTER_CONTINUE;
}

static void on_response_data(struct tg_filter *f, struct tg_req *req, struct tg_iov chunk, bool end)
{
    struct quota_ctx *ctx = f->ctx;
    (void)req;
    if (!ctx->usage || req->resp_xform)
        return; /* the transform reads it */
    tg_usage_feed(ctx->usage, chunk.base, chunk.len, emit_nowhere, NULL);
    if (end)
        tg_usage_finish(ctx->usage, emit_nowhere, NULL);
}

/* ---- settlement ---- */

struct settle_op {
    struct settle_op *next, *prev; /* tg_quota_worker.settles */
    struct tg_quota_worker *qw;    /* owner */
    struct tg_quota_settle s;      /* strings point into data[] */
    struct tg_redis_call *call;    /* in flight, or NULL */
    uv_timer_t timer;              /* retry delay, initialised at the first retry */
    bool timer_live;               /* timer initialised: free through uv_close */
    unsigned attempts;             /* sends so far */
    char data[];                   /* principal, tenant, lease */
};

static void settle_send(struct settle_op *op);

static void on_settle_closed(uv_handle_t *h)
{
    tg_mem_free(h->data);
}

static void settle_done(struct settle_op *op)
{
    struct tg_quota_worker *qw = op->qw;
    if (op->prev)
        op->prev->next = op->next;
    else
        qw->settles = op->next;
    if (op->next)
        op->next->prev = op->prev;
    qw->nsettles--;
    if (op->timer_live)
        uv_close((uv_handle_t *)&op->timer, on_settle_closed);
    else
        tg_mem_free(op); /* the usual case: settled at the first attempt, no handle */
    if (qw->nsettles == 0 && qw->w->draining && !qw->closing)
        tg_worker_conn_gone(qw->w); /* the worker may finish now */
}

static void on_settle_retry(uv_timer_t *t)
{
    settle_send(t->data);
}

static void settle_failed(struct settle_op *op, int status)
{
    if (op->qw->closing || op->attempts >= SETTLE_ATTEMPTS) {
        tg_log_warn("quota",
                    "settlement of %s abandoned after %u attempt(s): %s; its "
                    "reservation stays charged",
                    op->s.lease, op->attempts, tg_redis_strerror(status));
        settle_done(op);
        return;
    }
    if (!op->timer_live) {
        uv_timer_init(&op->qw->w->loop, &op->timer);
        op->timer.data = op;
        op->timer_live = true;
    }
    uv_timer_start(&op->timer, on_settle_retry, (uint64_t)SETTLE_RETRY_MS << (op->attempts - 1), 0);
}

static void on_settle_reply(void *arg, int status, const redisReply *reply)
{
    struct settle_op *op = arg;
    op->call = NULL;
    if (status == TG_REDIS_OK && tg_quota_script_settle_reply(reply) >= 0) {
        settle_done(op); /* settled now, or by an earlier attempt that timed out */
        return;
    }
    if (status == TG_REDIS_E_REPLY && reply && reply->str)
        tg_log_warn("quota", "settlement script: %s", reply->str);
    settle_failed(op, status);
}

static void settle_send(struct settle_op *op)
{
    struct tg_quota_worker *qw = op->qw;
    struct tg_quota_argv a;
    op->attempts++;
    if (qw->closing || !qw->redis || !qw->key_cfg ||
        tg_quota_script_settle_args(&op->s, qw->key_cfg->quota.key_prefix, &a) != 0) {
        settle_failed(op, TG_REDIS_E_DOWN);
        return;
    }
    int rv = tg_redis_eval(qw->redis, S_SETTLE, a.argc, a.argv, a.argvlen, on_settle_reply, op,
                           &op->call);
    tg_quota_argv_dispose(&a);
    if (rv != 0) {
        op->call = NULL;
        settle_failed(op, rv);
    }
}

static void settle_redis(struct tg_req *req, const struct tg_quota_settle *s)
{
    struct tg_quota_worker *qw = req->worker ? req->worker->quota : NULL;
    if (!qw || qw->closing)
        return;
    size_t pl = strlen(s->principal) + 1, tl = s->tenant ? strlen(s->tenant) + 1 : 0,
           ll = strlen(s->lease) + 1;
    struct settle_op *op = tg_mem_calloc(1, sizeof(*op) + pl + tl + ll);
    if (!op) {
        tg_log_warn("quota", "settlement of %s dropped: out of memory", s->lease);
        return;
    }
    op->qw = qw;
    op->s = *s;
    char *d = op->data;
    memcpy(d, s->principal, pl);
    op->s.principal = d;
    d += pl;
    if (s->tenant) {
        memcpy(d, s->tenant, tl);
        op->s.tenant = d;
        d += tl;
    }
    memcpy(d, s->lease, ll);
    op->s.lease = d;
    op->next = qw->settles;
    if (qw->settles)
        qw->settles->prev = op;
    qw->settles = op;
    qw->nsettles++;
    settle_send(op);
}

/* Usage of the finished exchange into req->usage (SPEC §6 and §7 usage.source). */
static void final_usage(struct quota_ctx *ctx)
{
    struct tg_req *req = ctx->req;
    struct tg_req_usage *u = &req->usage;
    const struct tg_usage_result *r = ctx->usage ? tg_usage_result(ctx->usage) : NULL;
    if (!req->openai.inspected)
        return; /* passthrough: requests and concurrency only */
    if (r && r->have_usage && !r->cut) {
        u->source = 1;
        u->prompt_tokens = r->prompt_tokens;
        u->completion_tokens = r->completion_tokens;
    } else if (r || (req->upstream_addr && !req->upstream_first_byte_ns && !req->replied)) {
        /* The answer started (or the request reached a model server) but no
         * usage came: the prompt estimate plus the output seen. */
        u->source = 2;
        u->prompt_tokens = req->openai.prompt_estimate;
        u->completion_tokens = r ? r->observed_output : 0;
    } else {
        return; /* denied, refused by the upstream, or never sent: nothing used */
    }
    u->cost = tg_config_cost(ctx->price, u->prompt_tokens, u->completion_tokens);
    if (req->worker && req->worker->metrics)
        tg_metrics_tokens(req->worker->metrics, req->model, u->prompt_tokens, u->completion_tokens);
}

static void on_complete(struct tg_filter *f, struct tg_req *req)
{
    struct quota_ctx *ctx = f->ctx;
    if (!ctx->req)
        return; /* the chain never reached this filter */
    if (ctx->call) {
        tg_redis_call_cancel(ctx->call);
        ctx->call = NULL;
        ctx->store = ST_NONE; /* never admitted: nothing to settle (the lease expires) */
    }
    renew_stop(ctx);
    final_usage(ctx);
    if (ctx->store == ST_NONE || ctx->store == ST_ALLOWED)
        return;
    struct tg_quota_settle s = {
        .principal = ctx->adm.principal,
        .tenant = ctx->adm.tenant,
        .lease = ctx->adm.lease,
        .tokens_reserved = ctx->adm.tokens,
        .tokens_actual = clamp(req->usage.prompt_tokens + req->usage.completion_tokens),
        .cost_reserved = ctx->adm.cost,
        .cost_actual = clamp(req->usage.cost),
        .day = ctx->dec.day,
        .month = ctx->dec.month,
    };
    memcpy(s.lim, ctx->adm.lim, sizeof(s.lim));
    ctx->store == ST_REDIS
        ? settle_redis(req, &s)
        : (void)tg_quota_local_settle(ctx->store == ST_LOCAL ? g_local : g_degraded, now_us(), &s);
    ctx->store = ST_NONE;
}

static void on_destroy(struct tg_filter *f, struct tg_req *req)
{
    struct quota_ctx *ctx = f->ctx;
    (void)req;
    if (ctx->call) {
        tg_redis_call_cancel(ctx->call);
        ctx->call = NULL;
    }
    renew_stop(ctx);
    tg_usage_free(ctx->usage);
    ctx->usage = NULL;
}

const struct tg_filter_ops tg_filter_quota = {
    .name = "quota",
    .ctx_size = sizeof(struct quota_ctx),
    .attach = attach,
    .on_request_headers = on_request_headers,
    .on_response_headers = on_response_headers,
    .on_response_data = on_response_data,
    .on_complete = on_complete,
    .on_destroy = on_destroy,
};

/* ---- worker teardown and readiness ---- */

bool tg_quota_worker_idle(const struct tg_worker *w)
{
    const struct tg_quota_worker *qw = w->quota;
    return !qw || qw->nsettles == 0;
}

static void on_worker_closed(uv_handle_t *h)
{
    tg_mem_free(tg_container_of((uv_timer_t *)h, struct tg_quota_worker, renew_timer));
}

void tg_quota_worker_close(struct tg_worker *w)
{
    struct tg_quota_worker *qw = w->quota;
    if (!qw || qw->closing)
        return;
    qw->closing = true;
    while (qw->settles) {
        struct settle_op *op = qw->settles;
        if (op->call) {
            tg_redis_call_cancel(op->call);
            op->call = NULL;
        }
        if (op->timer_live)
            uv_timer_stop(&op->timer);
        tg_log_warn("quota", "settlement of %s abandoned at shutdown", op->s.lease);
        settle_done(op);
    }
    drop_redis(qw);
    /* Requests still holding a lease stop being renewed (their renew_stop
     * then has nothing to do); the memory goes once the timer has closed. */
    while (qw->renew_head)
        renew_unlink(qw, qw->renew_head);
    w->quota = NULL;
    uv_close((uv_handle_t *)&qw->renew_timer, on_worker_closed);
}

const char *tg_quota_backend_state(const struct tg_config *cfg)
{
    if (cfg->quota.backend != TG_QUOTA_REDIS)
        return "local";
    int n = atomic_load(&g_redis_workers);
    return n > 0 && atomic_load(&g_redis_up) >= n ? "redis" : "degraded";
}

bool tg_quota_ready(const struct tg_config *cfg)
{
    return cfg->quota.on_backend_error != TG_QUOTA_FAIL_DENY ||
           strcmp(tg_quota_backend_state(cfg), "redis") == 0 ||
           cfg->quota.backend != TG_QUOTA_REDIS;
}
