/*
 * The quota parts of the configuration (SPEC §3): the limits of each policy
 * (and of its tenant), the "pricing" table and the "quota" backend block.
 *
 * A limit is either absent/null (unlimited) or a positive number: 0 is
 * refused rather than read as "block everything", because the internal
 * representation uses 0 for "no limit" and an operator who wants to shut a
 * policy out removes its models instead.  Money is read in dollars and held
 * as integer micro-dollars.
 */
#include "config/schema.h"

#include <fnmatch.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>

#include "config/config.h"
#include "proxy/mem.h"

#define COUNT_MAX UINT64_C(1000000000000)       /* 1e12 requests or tokens */
#define CONC_MAX UINT64_C(1000000)              /* concurrent requests */
#define MONEY_MAX 1e8                           /* dollars (1e14 micro-dollars: the backends' bound) */
#define PRICE_MAX 1e5                           /* dollars per million tokens */
#define MAX_TOKENS_MAX UINT64_C(100000000)      /* a max_tokens cap */

/* A positive integer limit (or absent/null) into *dst. */
static int parse_count(struct tg_cfg_ctx *ctx, json_t *v, uint64_t max, uint64_t *dst)
{
    if (!v)
        return 0;
    json_int_t i = json_is_integer(v) ? json_integer_value(v) : 0;
    if (i < 1 || (uint64_t)i > max)
        return tg_schema_err(ctx, "expected an integer 1..%llu, or null for no limit",
                             (unsigned long long)max);
    *dst = (uint64_t)i;
    return 0;
}

/* Dollars (a JSON number) to micro-dollars, rounded to the nearest. */
static int parse_money(struct tg_cfg_ctx *ctx, json_t *v, double max, bool zero_ok, uint64_t *dst)
{
    if (!v)
        return 0;
    double d = json_is_number(v) ? json_number_value(v) : -1.0;
    if (!(d >= 0.0) || d > max || (!zero_ok && d == 0.0))
        return tg_schema_err(ctx, "expected an amount in dollars %s..%g%s",
                             zero_ok ? "0" : "above 0", max, zero_ok ? "" : ", or null for no limit");
    uint64_t micro = (uint64_t)(d * 1e6 + 0.5); /* d >= 0: rounds to nearest */
    if (!zero_ok && micro == 0)
        return tg_schema_err(ctx, "amount below one micro-dollar");
    *dst = micro;
    return 0;
}

/* One parser per limit, so the field table stays declarative. */
#define LIMIT_PARSER(fn, idx, money)                                                               \
    static int fn(struct tg_cfg_ctx *ctx, json_t *v, void *obj)                                    \
    {                                                                                              \
        struct tg_quota_limits *l = obj;                                                           \
        return money ? parse_money(ctx, v, MONEY_MAX, false, &l->v[idx])                           \
                     : parse_count(ctx, v, idx == TG_QL_CONC ? CONC_MAX : COUNT_MAX, &l->v[idx]); \
    }
LIMIT_PARSER(parse_rpm, TG_QL_RPM, false)
LIMIT_PARSER(parse_tpm, TG_QL_TPM, false)
LIMIT_PARSER(parse_tpd, TG_QL_TPD, false)
LIMIT_PARSER(parse_cpd, TG_QL_CPD, true)
LIMIT_PARSER(parse_cpm, TG_QL_CPM, true)
LIMIT_PARSER(parse_conc, TG_QL_CONC, false)

#define LIMIT_FIELDS                                                                               \
    TG_F_CUSTOM("requests_per_minute", parse_rpm, false),                                          \
        TG_F_CUSTOM("tokens_per_minute", parse_tpm, false),                                        \
        TG_F_CUSTOM("tokens_per_day", parse_tpd, false),                                           \
        TG_F_CUSTOM("cost_per_day", parse_cpd, false),                                             \
        TG_F_CUSTOM("cost_per_month", parse_cpm, false),                                           \
        TG_F_CUSTOM("concurrency", parse_conc, false)

static const struct tg_field tenant_fields[] = {LIMIT_FIELDS};

/* Fields below take the policy itself; the limit parsers take &p->lim[...]. */
static int policy_limit(struct tg_cfg_ctx *ctx, json_t *v, void *obj, tg_field_parse_fn *fn)
{
    struct tg_cfg_policy *p = obj;
    return fn(ctx, v, &p->lim[TG_QS_PRINCIPAL]);
}
#define POLICY_LIMIT(name, fn)                                                                     \
    static int name(struct tg_cfg_ctx *ctx, json_t *v, void *obj)                                  \
    {                                                                                              \
        return policy_limit(ctx, v, obj, fn);                                                      \
    }
POLICY_LIMIT(p_rpm, parse_rpm)
POLICY_LIMIT(p_tpm, parse_tpm)
POLICY_LIMIT(p_tpd, parse_tpd)
POLICY_LIMIT(p_cpd, parse_cpd)
POLICY_LIMIT(p_cpm, parse_cpm)
POLICY_LIMIT(p_conc, parse_conc)

static int p_max_tokens(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_policy *p = obj;
    return parse_count(ctx, v, MAX_TOKENS_MAX, &p->max_tokens);
}

static int p_action(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_policy *p = obj;
    if (!v)
        return 0;
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    if (strcmp(s, "reject") == 0)
        p->max_tokens_clamp = false;
    else if (strcmp(s, "clamp") == 0)
        p->max_tokens_clamp = true;
    else
        return tg_schema_err(ctx, "expected one of \"reject\", \"clamp\"");
    return 0;
}

static int p_tenant(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_policy *p = obj;
    if (!v)
        return 0;
    if (!json_is_object(v))
        return tg_schema_err(ctx, "expected an object of tenant limits, or null");
    return tg_schema_apply(ctx, v, tenant_fields, sizeof(tenant_fields) / sizeof(tenant_fields[0]),
                           &p->lim[TG_QS_TENANT]);
}

const struct tg_field tg_config_policy_fields[] = {
    TG_F_CUSTOM("models", tg_config_parse_models, false),
    TG_F_CUSTOM("requests_per_minute", p_rpm, false),
    TG_F_CUSTOM("tokens_per_minute", p_tpm, false),
    TG_F_CUSTOM("tokens_per_day", p_tpd, false),
    TG_F_CUSTOM("cost_per_day", p_cpd, false),
    TG_F_CUSTOM("cost_per_month", p_cpm, false),
    TG_F_CUSTOM("concurrency", p_conc, false),
    TG_F_CUSTOM("max_tokens", p_max_tokens, false),
    TG_F_CUSTOM("max_tokens_action", p_action, false),
    TG_F_CUSTOM("tenant", p_tenant, false),
};
const size_t tg_config_npolicy_fields =
    sizeof(tg_config_policy_fields) / sizeof(tg_config_policy_fields[0]);

void tg_config_policy_finish(struct tg_cfg_policy *p)
{
    for (int s = 0; s < TG_QS_COUNT; s++)
        for (int l = 0; l < TG_QL_COUNT; l++)
            if (p->lim[s].v[l])
                p->has_limits = true;
}

/* ---- pricing ---- */

static int price_in(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_price *p = obj;
    return parse_money(ctx, v, PRICE_MAX, true, &p->input_per_million);
}

static int price_out(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_price *p = obj;
    return parse_money(ctx, v, PRICE_MAX, true, &p->output_per_million);
}

static const struct tg_field price_fields[] = {
    TG_F_CUSTOM("input_per_million", price_in, true),
    TG_F_CUSTOM("output_per_million", price_out, true),
};

int tg_config_parse_pricing(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_config *c = obj;
    if (!v)
        return 0;
    if (!json_is_object(v))
        return tg_schema_err(ctx, "expected an object of model globs to prices");
    size_t n = json_object_size(v);
    if (n == 0)
        return 0;
    c->prices = tg_mem_calloc(n, sizeof(*c->prices));
    if (!c->prices)
        return tg_schema_nomem(ctx);
    c->nprices = n;
    size_t i = 0;
    const char *glob;
    json_t *pv;
    json_object_foreach(v, glob, pv)
    {
        size_t saved = tg_schema_push_key(ctx, glob);
        struct tg_cfg_price *p = &c->prices[i++];
        size_t len = strlen(glob);
        int rv = 0;
        if (len == 0 || len > 256)
            rv = tg_schema_err(ctx, "expected a model name or glob of 1..256 characters");
        else if (!json_is_object(pv))
            rv = tg_schema_err(ctx, "expected {\"input_per_million\": …, \"output_per_million\": …}");
        else if (!(p->glob = tg_mem_strdup(glob)))
            rv = tg_schema_nomem(ctx);
        else
            rv = tg_schema_apply(ctx, pv, price_fields,
                                 sizeof(price_fields) / sizeof(price_fields[0]), p);
        if (!rv) {
            for (size_t k = 0; k < len; k++)
                if (!strchr("*?[]\\", glob[k]))
                    p->literal++;
            p->exact = p->literal == len;
        }
        tg_schema_pop(ctx, saved);
        if (rv)
            return rv;
    }
    return 0;
}

/* ---- quota ---- */

static const struct tg_field_enum backends[] = {
    {"local", TG_QUOTA_LOCAL},
    {"redis", TG_QUOTA_REDIS},
    {NULL, 0},
};

static const struct tg_field_enum fail_modes[] = {
    {"local", TG_QUOTA_FAIL_LOCAL},
    {"deny", TG_QUOTA_FAIL_DENY},
    {"allow", TG_QUOTA_FAIL_ALLOW},
    {NULL, 0},
};

static int parse_prefix(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_quota *q = obj;
    const char *s = v && json_is_string(v) ? json_string_value(v) : NULL;
    if (!v)
        s = "tg:";
    size_t n = s ? strlen(s) : 0;
    if (!s || n > 64)
        return tg_schema_err(ctx, "expected a key prefix of 0..64 printable characters");
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f || s[i] == '{' ||
            s[i] == '}')
            return tg_schema_err(ctx, "expected a key prefix of printable characters "
                                      "without spaces or braces");
    q->key_prefix = tg_mem_strdup(s);
    return q->key_prefix ? 0 : tg_schema_nomem(ctx);
}

static const struct tg_field redis_fields[] = {
    TG_F_STRING(struct tg_cfg_quota, redis_address, "address", 64, "127.0.0.1", false),
    TG_F_UINT(struct tg_cfg_quota, redis_port, "port", 1, 65535, 6379, false),
    TG_F_ENV(struct tg_cfg_quota, redis_password, "password_env"),
    TG_F_UINT(struct tg_cfg_quota, redis_database, "database", 0, 65535, 0, false),
    TG_F_UINT(struct tg_cfg_quota, redis_timeout_ms, "timeout_ms", 1, 60000, 50, false),
    TG_F_CUSTOM("key_prefix", parse_prefix, false),
};

static int parse_redis(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_quota *q = obj;
    if (v && !json_is_object(v))
        return tg_schema_err(ctx, "expected an object");
    int rv = tg_schema_apply(ctx, v, redis_fields, sizeof(redis_fields) / sizeof(redis_fields[0]),
                             q);
    if (rv)
        return rv;
    /*
     * A host name is resolved here, while the configuration loads (off the
     * event loops): hiredis would otherwise call getaddrinfo on a worker's
     * loop.  The first address is used until the next reload.
     */
    if (tg_config_numeric_addr(q->redis_address, q->redis_port, &q->redis_addr,
                               &q->redis_addrlen) == 0)
        return 0;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    char port[8], qn[100];
    snprintf(port, sizeof(port), "%u", (unsigned)q->redis_port);
    size_t saved = tg_schema_push_key(ctx, "address");
    bool host_ok = q->redis_address[0] != '\0';
    for (const char *c = q->redis_address; *c && host_ok; c++)
        host_ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (*c >= '0' && *c <= '9') || *c == '-' || *c == '.' || *c == '_';
    int gai = host_ok ? getaddrinfo(q->redis_address, port, &hints, &res) : EAI_NONAME;
    if (gai != 0 || !res || res->ai_addrlen > sizeof(q->redis_addr)) {
        rv = tg_schema_err(ctx, "cannot resolve %s: %s",
                           tg_schema_quote(q->redis_address, qn, sizeof(qn)),
                           !host_ok ? "not an IP address or host name"
                           : gai ? gai_strerror(gai)
                                 : "no usable address");
    } else {
        memcpy(&q->redis_addr, res->ai_addr, res->ai_addrlen);
        q->redis_addrlen = res->ai_addrlen;
    }
    if (res)
        freeaddrinfo(res);
    tg_schema_pop(ctx, saved);
    return rv;
}

static const struct tg_field quota_fields[] = {
    TG_F_ENUM(struct tg_cfg_quota, backend, "backend", backends, TG_QUOTA_LOCAL),
    TG_F_CUSTOM("redis", parse_redis, false),
    TG_F_ENUM(struct tg_cfg_quota, on_backend_error, "on_backend_error", fail_modes,
              TG_QUOTA_FAIL_LOCAL),
    TG_F_UINT(struct tg_cfg_quota, instances, "instances", 1, 100000, 1, false),
    TG_F_UINT(struct tg_cfg_quota, default_output_reservation, "default_output_reservation", 0,
              MAX_TOKENS_MAX, 1024, false),
};

int tg_config_parse_quota(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_config *c = obj;
    if (v && !json_is_object(v))
        return tg_schema_err(ctx, "expected an object");
    /* Absent: the local backend with every default (the redis block is then unused). */
    return tg_schema_apply(ctx, v, quota_fields, sizeof(quota_fields) / sizeof(quota_fields[0]),
                           &c->quota);
}

void tg_config_free_quota(struct tg_config *c)
{
    for (size_t i = 0; i < c->nprices; i++)
        tg_mem_free(c->prices[i].glob);
    tg_mem_free(c->prices);
    c->prices = NULL;
    tg_mem_free(c->quota.redis_address);
    tg_mem_free(c->quota.key_prefix);
    tg_config_free_secret(c->quota.redis_password);
    c->quota.redis_password = NULL;
}

const struct tg_cfg_price *tg_config_find_price(const struct tg_config *c, const char *model)
{
    const struct tg_cfg_price *best = NULL;
    if (!model)
        return NULL;
    for (size_t i = 0; i < c->nprices; i++) {
        const struct tg_cfg_price *p = &c->prices[i];
        if (p->exact) {
            if (strcmp(p->glob, model) == 0)
                return p; /* an exact name always wins */
            continue;
        }
        if ((!best || p->literal > best->literal) && fnmatch(p->glob, model, 0) == 0)
            best = p;
    }
    return best;
}

uint64_t tg_config_cost(const struct tg_cfg_price *p, uint64_t prompt, uint64_t completion)
{
    if (!p)
        return 0;
    /* micro-dollars per million tokens x tokens: exact in 128 bits, rounded up once. */
    unsigned __int128 t = (unsigned __int128)prompt * p->input_per_million +
                          (unsigned __int128)completion * p->output_per_million;
    t = (t + 999999) / 1000000;
    return t > UINT64_MAX ? UINT64_MAX : (uint64_t)t;
}
