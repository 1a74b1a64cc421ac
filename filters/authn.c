/*
 * Authentication (SPEC §5): per-IP failed-auth damping, then the caller's
 * credential: "Authorization: Bearer <jwt|key>" (which wins) or "x-api-key",
 * else a verified client certificate.  Every failure is a 401 with
 * WWW-Authenticate: Bearer, counted against the client IP; past
 * failed_auth_per_minute_per_ip failures in a calendar minute, the IP gets
 * 429 for the rest of that minute without its credentials being looked at,
 * so a guessed key cannot be confirmed.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "filters/apikey.h"
#include "filters/authn.h"
#include "filters/filters.h"
#include "filters/jwt.h"
#include "proxy/buf.h"
#include "proxy/req.h"

/* ---- failed-auth damping, shared by all workers ---- */

#define DAMP_SLOTS 8192

struct damp_slot {
    char ip[48];       /* client address text, "" = free */
    int64_t minute;    /* calendar minute (ms / 60000) of the count */
    uint32_t failures; /* failures in that minute */
};

static struct damp_slot damp[DAMP_SLOTS];
static pthread_mutex_t damp_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* The slot for ip in this minute (reusing a stale one when create), or NULL. */
static struct damp_slot *damp_find(const char *ip, int64_t minute, bool create)
{
    uint64_t h = fnv1a(ip);
    struct damp_slot *empty = NULL, *stalest = NULL;
    for (unsigned probe = 0; probe < 16; probe++) {
        struct damp_slot *s = &damp[(h + probe) % DAMP_SLOTS];
        if (s->ip[0] == '\0') {
            if (!empty)
                empty = s;
            continue;
        }
        if (strcmp(s->ip, ip) == 0) {
            if (s->minute != minute) {
                if (!create)
                    return NULL;
                s->minute = minute;
                s->failures = 0;
            }
            return s;
        }
        if (!stalest || s->minute < stalest->minute)
            stalest = s;
    }
    if (!create)
        return NULL;
    struct damp_slot *v = empty ? empty : stalest;
    snprintf(v->ip, sizeof(v->ip), "%s", ip);
    v->minute = minute;
    v->failures = 0;
    return v;
}

bool tg_authn_ip_blocked(const char *ip, uint32_t limit, int64_t now_ms)
{
    if (limit == 0)
        return false;
    pthread_mutex_lock(&damp_mu);
    struct damp_slot *s = damp_find(ip, now_ms / 60000, false);
    bool blocked = s && s->failures >= limit;
    pthread_mutex_unlock(&damp_mu);
    return blocked;
}

void tg_authn_note_failure(const char *ip, int64_t now_ms)
{
    pthread_mutex_lock(&damp_mu);
    struct damp_slot *s = damp_find(ip, now_ms / 60000, true);
    if (s && s->failures < UINT32_MAX)
        s->failures++;
    pthread_mutex_unlock(&damp_mu);
}

void tg_authn_reset_damping(void)
{
    pthread_mutex_lock(&damp_mu);
    memset(damp, 0, sizeof(damp));
    pthread_mutex_unlock(&damp_mu);
}

/* ---- the filter ---- */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static _Thread_local struct tg_jwt_cache *jwt_cache;

void tg_authn_thread_exit(void)
{
    tg_jwt_cache_free(jwt_cache); /* wipes cached claims */
    jwt_cache = NULL;
}

static bool attach(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    return req->cfg->auth.enabled;
}

static const char *dup(struct tg_req *req, const char *s)
{
    return s ? tg_arena_strndup(&req->arena, s, strlen(s)) : NULL;
}

static enum tg_filter_status deny(struct tg_req *req, const char *message, const char *reason,
                                  int64_t now)
{
    tg_authn_note_failure(req->client_ip, now);
    tg_req_reply_error(req, 401, "invalid_api_key", message, reason);
    return TG_FILTER_REPLIED;
}

/* Resolve the identity's policy; a name the config does not know is a 403. */
static enum tg_filter_status set_policy(struct tg_req *req, const char *name)
{
    const struct tg_cfg_policy *p = name ? tg_config_find_policy(req->cfg, name) : NULL;
    if (!p) {
        tg_req_reply_error(req, 403, "permission_denied",
                           "the caller's policy is not configured", "authz.policy");
        return TG_FILTER_REPLIED;
    }
    req->identity.policy = p;
    return TG_FILTER_CONTINUE;
}

static bool looks_like_jwt(struct tg_iov t)
{
    /* "eyJ" (base64url of '{"') and exactly two dots; memchr is vectorised. */
    if (t.len <= 3 || memcmp(t.base, "eyJ", 3) != 0)
        return false;
    const char *end = t.base + t.len;
    const char *d1 = memchr(t.base, '.', t.len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(end - d1 - 1)) : NULL;
    return d2 && !memchr(d2 + 1, '.', (size_t)(end - d2 - 1));
}

static enum tg_filter_status by_jwt(struct tg_req *req, struct tg_iov tok, int64_t now)
{
    const struct tg_cfg_auth *a = &req->cfg->auth;
    struct tg_jwt_claims cl;
    int64_t leeway = 0;
    for (size_t i = 0; i < a->njwt; i++)
        if ((int64_t)a->jwt[i].leeway_ms > leeway)
            leeway = (int64_t)a->jwt[i].leeway_ms;
    if (!jwt_cache)
        jwt_cache = tg_jwt_cache_new(4096);
    uint64_t gen = req->cfg->version;
    bool hit = jwt_cache && tg_jwt_cache_get(jwt_cache, gen, tok.base, tok.len, now, leeway, &cl);
    if (!hit) {
        struct tg_jwt_issuer iss[16];
        size_t n = a->njwt < 16 ? a->njwt : 16;
        for (size_t i = 0; i < n; i++) {
            const struct tg_cfg_jwt *j = &a->jwt[i];
            iss[i] = (struct tg_jwt_issuer){
                .issuer = j->issuer,
                .audiences = (const char *const *)j->audiences,
                .naudiences = j->naudiences,
                .jwks = j->jwks,
                .algorithms = j->algorithms,
                .principal_claim = j->principal_claim,
                .tenant_claim = j->tenant_claim,
                .policy_claim = j->policy_claim,
                .leeway_ms = (int64_t)j->leeway_ms,
            };
        }
        enum tg_jwt_status st = tg_jwt_verify(tok.base, tok.len, iss, n, now, &cl);
        if (st == TG_JWT_EXPIRED)
            return deny(req, "the token has expired", "auth.expired", now);
        if (st != TG_JWT_OK)
            return deny(req, "invalid token", "auth.invalid_token", now);
        if (jwt_cache)
            tg_jwt_cache_put(jwt_cache, gen, tok.base, tok.len, &cl);
    }
    const struct tg_cfg_jwt *j = &a->jwt[cl.issuer_index];
    req->identity.method = "jwt";
    req->identity.principal = dup(req, cl.principal);
    req->identity.tenant = cl.tenant[0] ? dup(req, cl.tenant) : NULL;
    return set_policy(req, cl.policy[0] ? cl.policy : j->default_policy);
}

static enum tg_filter_status by_key(struct tg_req *req, struct tg_iov key, int64_t now)
{
    const struct tg_apikey *k = NULL;
    enum tg_apikey_status st = tg_keyring_lookup(req->cfg->auth.keyring, key.base, key.len, now, &k);
    switch (st) {
    case TG_APIKEY_OK: break;
    case TG_APIKEY_EXPIRED: return deny(req, "the API key has expired", "auth.expired", now);
    case TG_APIKEY_DISABLED: return deny(req, "the API key is disabled", "auth.disabled", now);
    case TG_APIKEY_UNKNOWN:
    default: return deny(req, "invalid API key", "auth.invalid_key", now);
    }
    req->identity.method = "api_key";
    req->identity.key_id = dup(req, k->id);
    req->identity.principal = dup(req, k->principal);
    req->identity.tenant = dup(req, k->tenant);
    return set_policy(req, k->policy);
}

static enum tg_filter_status by_mtls(struct tg_req *req)
{
    /* The policy of the listener the certificate was presented to. */
    const char *policy = NULL;
    for (size_t i = 0; i < req->cfg->nlisteners; i++) {
        const struct tg_cfg_listener *l = &req->cfg->listeners[i];
        if (req->listener && strcmp(l->name, req->listener) == 0 && l->tls)
            policy = l->tls->client_cert_policy;
    }
    req->identity.method = "mtls";
    req->identity.principal = dup(req, req->mtls_principal);
    return set_policy(req, policy);
}

static enum tg_filter_status on_request_headers(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    const struct tg_cfg_auth *a = &req->cfg->auth;
    int64_t now = wall_ms();
    if (tg_authn_ip_blocked(req->client_ip, a->failed_auth_per_minute_per_ip, now)) {
        char retry[16];
        snprintf(retry, sizeof(retry), "%lld", (long long)(60 - (now / 1000) % 60));
        tg_req_reply_extra(req, "retry-after", retry);
        tg_req_reply_error(req, 429, "rate_limit_exceeded",
                           "too many failed authentication attempts from this address",
                           "auth.ip_blocked");
        return TG_FILTER_REPLIED;
    }
    struct tg_iov cred = TG_IOV_NULL;
    struct tg_iov authz = tg_hlist_get(&req->headers, "authorization");
    if (authz.base) {
        if (authz.len < 7 || !tg_iov_ieq(tg_iov_make(authz.base, 7), "bearer "))
            return deny(req, "unsupported authorization scheme (use Bearer)",
                        "auth.invalid_token", now);
        size_t i = 7;
        while (i < authz.len && authz.base[i] == ' ')
            i++;
        cred = tg_iov_make(authz.base + i, authz.len - i);
    } else {
        cred = tg_hlist_get(&req->headers, "x-api-key");
    }
    if (cred.base && cred.len == 0)
        return deny(req, "empty credential", "auth.invalid_key", now);
    if (!cred.base) {
        if (req->mtls_principal)
            return by_mtls(req);
        tg_authn_note_failure(req->client_ip, now);
        tg_req_reply_error(req, 401, "invalid_api_key",
                           "missing credentials: send Authorization: Bearer <key or token>",
                           "auth.missing");
        return TG_FILTER_REPLIED;
    }
    /* SPEC §3: JWTs come in Authorization: Bearer only; x-api-key holds API keys. */
    if (a->njwt && authz.base && looks_like_jwt(cred))
        return by_jwt(req, cred, now);
    if (a->keyring)
        return by_key(req, cred, now);
    return deny(req, "invalid credential", a->njwt ? "auth.invalid_token" : "auth.invalid_key",
                now);
}

const struct tg_filter_ops tg_filter_authn = {
    .name = "authn",
    .attach = attach,
    .on_request_headers = on_request_headers,
};
