/*
 * Snapshot lifetime.  A snapshot is shared read-only between worker threads;
 * the reference count is the only field written after load (STYLE §9d).
 */
#include "config/schema.h"

#include <openssl/ssl.h>

#include "proxy/mem.h"

#include <string.h>

#include <openssl/crypto.h>

/* Secrets are wiped before their memory goes back to the allocator (STYLE §25). */
void tg_config_free_secret(char *s)
{
    if (!s)
        return;
    OPENSSL_cleanse(s, strlen(s));
    tg_mem_free(s);
}

static void free_listener(struct tg_cfg_listener *l)
{
    tg_mem_free(l->name);
    tg_mem_free(l->address);
    if (l->tls) {
        tg_mem_free(l->tls->certificate_file);
        tg_mem_free(l->tls->private_key_file);
        tg_mem_free(l->tls->client_ca_file);
        tg_mem_free(l->tls->client_cert_policy);
        SSL_CTX_free(l->tls->ctx);
        tg_mem_free(l->tls);
    }
}

static void free_upstream(struct tg_cfg_upstream *u)
{
    tg_mem_free(u->name);
    for (size_t i = 0; i < u->nservers; i++) {
        tg_mem_free(u->servers[i].text);
        tg_mem_free(u->servers[i].host);
    }
    tg_mem_free(u->servers);
    if (u->tls) {
        tg_mem_free(u->tls->ca_file);
        tg_mem_free(u->tls->server_name);
        tg_mem_free(u->tls->certificate_file);
        tg_mem_free(u->tls->private_key_file);
        tg_mem_free(u->tls);
    }
    tg_config_free_secret(u->authorization);
}

void tg_config_free(struct tg_config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nlisteners; i++)
        free_listener(&c->listeners[i]);
    tg_mem_free(c->listeners);
    tg_mem_free(c->admin.address);
    tg_config_free_secret(c->admin.token);
    for (size_t i = 0; i < c->nupstreams; i++)
        free_upstream(&c->upstreams[i]);
    tg_mem_free(c->upstreams);
    for (size_t i = 0; i < c->nroutes; i++) {
        tg_mem_free(c->routes[i].path_prefix);
        for (size_t k = 0; k < c->routes[i].npolicies; k++)
            tg_mem_free(c->routes[i].policies[k]);
        tg_mem_free(c->routes[i].policies);
    }
    tg_mem_free(c->routes);
    tg_config_free_auth(c);
    tg_config_free_audit(c);
    tg_config_free_quota(c);
    tg_mem_free(c->error_log_file);
    tg_mem_free(c->path);
    tg_mem_free(c->dir);
    tg_mem_free(c);
}

struct tg_config *tg_config_ref(struct tg_config *c)
{
    atomic_fetch_add_explicit(&c->refcnt, 1, memory_order_relaxed);
    return c;
}

void tg_config_unref(struct tg_config *c)
{
    if (!c)
        return;
    /* acq_rel: every reader's last use happens before the free. */
    if (atomic_fetch_sub_explicit(&c->refcnt, 1, memory_order_acq_rel) == 1)
        tg_config_free(c);
}
