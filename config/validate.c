/*
 * Checks that span elements or sections, run once everything is parsed and
 * before the routes are sorted, so that every message can still name the
 * element by its index in the document.
 */
#include "config/schema.h"
#include "filters/apikey.h"

#include "proxy/err.h"

#include <arpa/inet.h>
#include <string.h>

struct tg_cfg_upstream *tg_config_find_upstream(struct tg_config *c, const char *name)
{
    for (size_t i = 0; i < c->nupstreams; i++)
        if (c->upstreams[i].name && strcmp(c->upstreams[i].name, name) == 0)
            return &c->upstreams[i];
    return NULL;
}

/* Same family, address and port: two sockets could not both bind it. */
static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
    const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/*
 * Point ctx->jpath at "section[i].key" (i == SIZE_MAX: "section.key"; key
 * may be NULL) before reporting an error there.
 */
static void set_path(struct tg_cfg_ctx *ctx, const char *section, size_t i, const char *key)
{
    tg_schema_pop(ctx, 0);
    tg_schema_push_key(ctx, section);
    if (i != SIZE_MAX)
        tg_schema_push_index(ctx, i);
    if (key)
        tg_schema_push_key(ctx, key);
}

static bool policy_known(const struct tg_config *c, const char *name)
{
    return tg_config_find_policy(c, name) != NULL;
}

static int check_listeners(struct tg_cfg_ctx *ctx)
{
    struct tg_config *c = ctx->cfg;
    char q[100];
    for (size_t i = 0; i < c->nlisteners; i++) {
        const struct tg_cfg_listener *l = &c->listeners[i];
        for (size_t j = 0; j < i; j++) {
            if (strcmp(l->name, c->listeners[j].name) == 0) {
                set_path(ctx, "listeners", i, "name");
                return tg_schema_err(ctx, "duplicate listener name %s (also listeners[%zu])",
                                     tg_schema_quote(l->name, q, sizeof(q)), j);
            }
            if (same_addr(&l->addr, &c->listeners[j].addr)) {
                set_path(ctx, "listeners", i, "port");
                return tg_schema_err(ctx, "address %s port %u is already used by listeners[%zu]",
                                     tg_schema_quote(l->address, q, sizeof(q)), l->port, j);
            }
        }
        if (c->admin.enabled && same_addr(&l->addr, &c->admin.addr)) {
            set_path(ctx, "admin", SIZE_MAX, "port");
            return tg_schema_err(ctx, "address %s port %u is already used by listeners[%zu]",
                                 tg_schema_quote(c->admin.address, q, sizeof(q)), c->admin.port,
                                 i);
        }
        if (l->tls && l->tls->client_cert_policy &&
            !policy_known(c, l->tls->client_cert_policy)) {
            set_path(ctx, "listeners", i, "tls.client_cert_policy");
            return tg_schema_err(ctx, "unknown policy %s",
                                 tg_schema_quote(l->tls->client_cert_policy, q, sizeof(q)));
        }
    }
    return 0;
}

static int check_upstreams(struct tg_cfg_ctx *ctx)
{
    struct tg_config *c = ctx->cfg;
    char q[100];
    for (size_t i = 0; i < c->nupstreams; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(c->upstreams[i].name, c->upstreams[j].name) == 0) {
                set_path(ctx, "upstreams", i, "name");
                return tg_schema_err(ctx, "duplicate upstream name %s (also upstreams[%zu])",
                                     tg_schema_quote(c->upstreams[i].name, q, sizeof(q)), j);
            }
        }
    }
    return 0;
}

static int check_routes(struct tg_cfg_ctx *ctx)
{
    struct tg_config *c = ctx->cfg;
    char q[100];
    for (size_t i = 0; i < c->nroutes; i++) {
        const struct tg_cfg_route *r = &c->routes[i];
        for (size_t j = 0; j < i; j++) {
            if (strcmp(r->path_prefix, c->routes[j].path_prefix) == 0) {
                set_path(ctx, "routes", i, "path_prefix");
                return tg_schema_err(ctx, "duplicate path_prefix %s (also routes[%zu])",
                                     tg_schema_quote(r->path_prefix, q, sizeof(q)), j);
            }
        }
        for (size_t k = 0; k < r->npolicies; k++) {
            if (policy_known(c, r->policies[k]))
                continue;
            set_path(ctx, "routes", i, "policies");
            tg_schema_push_index(ctx, k);
            return tg_schema_err(ctx, "unknown policy %s",
                                 tg_schema_quote(r->policies[k], q, sizeof(q)));
        }
    }
    return 0;
}

/* Every policy an identity can carry must exist; auth needs a credential source. */
static int check_auth(struct tg_cfg_ctx *ctx)
{
    struct tg_config *c = ctx->cfg;
    const struct tg_cfg_auth *a = &c->auth;
    char q[100];
    if (!a->enabled) {
        /* Restrictions nobody could enforce must not look enforced. */
        for (size_t i = 0; i < c->nroutes; i++)
            if (c->routes[i].policies) {
                set_path(ctx, "routes", i, "policies");
                return tg_schema_err(ctx, "needs an \"auth\" block (no caller has a policy "
                                          "without authentication)");
            }
        for (size_t i = 0; i < c->nlisteners; i++)
            if (c->listeners[i].tls && c->listeners[i].tls->client_cert_policy) {
                set_path(ctx, "listeners", i, "tls.client_cert_policy");
                return tg_schema_err(ctx, "needs an \"auth\" block");
            }
        return 0;
    }
    bool mtls = false;
    for (size_t i = 0; i < c->nlisteners; i++)
        if (c->listeners[i].tls && c->listeners[i].tls->client_ca_file)
            mtls = true;
    if (!a->keyring && a->njwt == 0 && !mtls) {
        set_path(ctx, "auth", SIZE_MAX, NULL);
        return tg_schema_err(ctx, "expected api_keys_file, jwt, or a TLS listener with "
                                  "client_ca_file: no caller could authenticate");
    }
    for (size_t i = 0; i < a->njwt; i++) {
        const char *dp = a->jwt[i].default_policy;
        if (dp && !policy_known(c, dp)) {
            set_path(ctx, "auth.jwt", i, "default_policy");
            return tg_schema_err(ctx, "unknown policy %s", tg_schema_quote(dp, q, sizeof(q)));
        }
    }
    for (size_t i = 0; a->keyring && i < tg_keyring_count(a->keyring); i++) {
        const struct tg_apikey *k = tg_keyring_at(a->keyring, i);
        if (!policy_known(c, k->policy)) {
            set_path(ctx, "auth", SIZE_MAX, "api_keys_file");
            return tg_schema_err(ctx, "key %s: unknown policy %s",
                                 tg_schema_quote(k->id, q, sizeof(q)), k->policy);
        }
    }
    return 0;
}

int tg_config_validate(struct tg_cfg_ctx *ctx)
{
    int rv;
    if ((rv = check_listeners(ctx)) != 0 || (rv = check_upstreams(ctx)) != 0 ||
        (rv = check_routes(ctx)) != 0 || (rv = check_auth(ctx)) != 0)
        return rv;
    return 0;
}
