/*
 * RFC 9110 §7.6.1: a proxy removes every field named in Connection, then the
 * hop-by-hop fields themselves, and only then adds its own.  Client
 * credentials (Authorization, x-api-key) are never forwarded; the upstream's
 * own token from authorization_env is sent instead when configured.  Fields that
 * tollgate asserts (x-tollgate-*, x-forwarded-*) are removed from the client's
 * request first so a client can never pre-set them.
 */
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "filters/filters.h"
#include "proxy/buf.h"
#include "proxy/req.h"

/* Remove fields named by Connection values, then every hop-by-hop field. */
static void strip_hop_by_hop(struct tg_hlist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        if (!tg_iov_eq(l->v[i].name, TG_IOV_LIT("connection")))
            continue;
        struct tg_iov list = l->v[i].value;
        for (size_t j = 0; j < l->n; j++)
            if (j != i && tg_token_list_has(list, l->v[j].name))
                l->v[j].name.len = 0; /* marked for removal */
    }
    size_t out = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].name.len == 0 || tg_header_is_hop_by_hop(l->v[i].name))
            continue;
        l->v[out++] = l->v[i];
    }
    l->n = out;
}

static bool has_prefix(struct tg_iov name, const char *p)
{
    size_t n = strlen(p);
    return name.len >= n && memcmp(name.base, p, n) == 0;
}

/*
 * A request id: 64 random bits drawn once per thread, then a per-thread
 * counter.  Unique across threads and instances with overwhelming
 * probability, and one RAND_bytes call per thread instead of per request.
 */
static void make_request_id(char out[33])
{
    static _Thread_local uint64_t prefix, counter;
    if (!prefix && RAND_bytes((unsigned char *)&prefix, sizeof(prefix)) != 1)
        prefix = (uint64_t)(uintptr_t)&counter ^ 0x9e3779b97f4a7c15ull;
    counter++;
    snprintf(out, 33, "%016llx%016llx", (unsigned long long)prefix, (unsigned long long)counter);
}

int tg_req_assign_id(struct tg_req *req)
{
    struct tg_iov rid = tg_hlist_get(&req->headers, "x-request-id");
    if (rid.base && tg_request_id_sane(rid)) {
        req->request_id = rid; /* arena copy made when the header was stored */
        return 0;
    }
    char *id = tg_arena_alloc(&req->arena, 33);
    if (!id)
        return -1;
    make_request_id(id);
    req->request_id = tg_iov_make(id, 32);
    return 0;
}

static int add(struct tg_req *req, const char *name, struct tg_iov value)
{
    return tg_hlist_add(&req->headers, &req->arena, tg_iov_make(name, strlen(name)), value);
}

static enum tg_filter_status on_request_headers(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    struct tg_hlist *l = &req->headers;
    strip_hop_by_hop(l);

    struct tg_iov xff = tg_hlist_get(l, "x-forwarded-for");
    char *xff_copy = xff.base ? tg_arena_strndup(&req->arena, xff.base, xff.len) : NULL;

    size_t out = 0;
    for (size_t i = 0; i < l->n; i++) {
        struct tg_iov n = l->v[i].name;
        if (has_prefix(n, "x-tollgate-") || has_prefix(n, "x-forwarded-") ||
            tg_iov_eq(n, TG_IOV_LIT("x-request-id")) || tg_iov_eq(n, TG_IOV_LIT("forwarded")))
            continue;
        /* Client credentials never reach the model server (SPEC §5), and
         * their copy in the request arena is wiped now that authentication
         * is done with it. */
        if (tg_iov_eq(n, TG_IOV_LIT("authorization")) || tg_iov_eq(n, TG_IOV_LIT("x-api-key"))) {
            OPENSSL_cleanse((void *)l->v[i].value.base, l->v[i].value.len);
            continue;
        }
        l->v[out++] = l->v[i];
    }
    l->n = out;

    if (!req->request_id.len && tg_req_assign_id(req) != 0)
        goto nomem;
    if (add(req, "x-request-id", req->request_id))
        goto nomem;

    size_t ipn = strlen(req->client_ip);
    if (xff_copy && xff.len) {
        size_t n = xff.len + 2 + ipn;
        char *v = tg_arena_alloc(&req->arena, n + 1);
        if (!v)
            goto nomem;
        snprintf(v, n + 1, "%s, %s", xff_copy, req->client_ip);
        if (add(req, "x-forwarded-for", tg_iov_make(v, n)))
            goto nomem;
    } else if (add(req, "x-forwarded-for", tg_iov_make(req->client_ip, ipn))) {
        goto nomem;
    }
    if (add(req, "x-forwarded-proto", req->tls ? TG_IOV_LIT("https") : TG_IOV_LIT("http")))
        goto nomem;
    /* The identity tollgate asserts (the client's own copies were removed above). */
    if (req->identity.principal &&
        add(req, "x-tollgate-principal",
            tg_iov_make(req->identity.principal, strlen(req->identity.principal))))
        goto nomem;
    if (req->identity.tenant &&
        add(req, "x-tollgate-tenant",
            tg_iov_make(req->identity.tenant, strlen(req->identity.tenant))))
        goto nomem;
    if (req->route && req->route->upstream->authorization) {
        const char *tok = req->route->upstream->authorization;
        size_t n = 7 + strlen(tok);
        char *v = tg_arena_alloc(&req->arena, n + 1);
        if (!v)
            goto nomem;
        snprintf(v, n + 1, "Bearer %s", tok);
        if (add(req, "authorization", tg_iov_make(v, n)))
            goto nomem;
    }
    return TG_FILTER_CONTINUE;
nomem:
    tg_req_reply_error(req, 503, "unavailable", "out of memory", "server.nomem");
    return TG_FILTER_REPLIED;
}

static enum tg_filter_status on_response_headers(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    strip_hop_by_hop(&req->resp_headers);
    if (req->request_id.len && !tg_hlist_get(&req->resp_headers, "x-request-id").base)
        tg_hlist_add(&req->resp_headers, &req->arena, TG_IOV_LIT("x-request-id"),
                     req->request_id);
    return TG_FILTER_CONTINUE;
}

const struct tg_filter_ops tg_filter_forward = {
    .name = "forward",
    .on_request_headers = on_request_headers,
    .on_response_headers = on_response_headers,
};
