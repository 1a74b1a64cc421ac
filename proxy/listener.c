#include "proxy/listener.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "config/config-t.h"
#include "proxy/conn.h"
#include "proxy/err.h"
#include "proxy/log.h"
#include "proxy/mem.h"
#include "proxy/tls.h"
#include "proxy/worker.h"
#include "config/config.h"

atomic_uint tg_listener_conns;

/* uv_close callback for a handle allocated on its own. */
static void free_handle(uv_handle_t *h)
{
    tg_mem_free(h);
}

/* Accept and close at once: the kernel backlog must not hold clients forever. */
static void refuse(struct tg_worker *w, uv_stream_t *server)
{
    uv_tcp_t *t = tg_mem_malloc(sizeof(*t));
    if (!t)
        return;
    uv_tcp_init(&w->loop, t);
    uv_accept(server, (uv_stream_t *)t);
    uv_close((uv_handle_t *)t, free_handle);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct tg_listener *l = server->data;
    struct tg_worker *w = l->worker;
    if (status < 0 || l->closing)
        return;
    if (w->draining) {
        refuse(w, server);
        return;
    }
    if (atomic_load(&tg_listener_conns) >= w->cfg->limits.max_connections) {
        refuse(w, server);
        /* At most one line per second per worker: an attack must not flood the log. */
        static _Thread_local uint64_t last_log, refused;
        refused++;
        uint64_t now = uv_now(&w->loop);
        if (now - last_log >= 1000) {
            tg_log_warn("listener", "%s: max_connections reached; %llu connection(s) refused",
                        l->name, (unsigned long long)refused);
            last_log = now;
            refused = 0;
        }
        return;
    }
    int rv = tg_conn_accept(w, l, server);
    if (rv < 0)
        tg_log_warn("listener", "%s: accept failed: %s", l->name, tg_strerror(rv));
}

static void listener_free(struct tg_listener *l)
{
    SSL_CTX_free(l->ssl_ctx);
    while (l->old_names) {
        struct tg_listener_name *n = l->old_names;
        l->old_names = n->next;
        tg_mem_free(n->name);
        tg_mem_free(n);
    }
    tg_mem_free(l->name);
    tg_mem_free(l);
}

static void on_closed(uv_handle_t *h)
{
    struct tg_listener *l = h->data;
    l->closed = true;
    if (l->refs == 0)
        listener_free(l);
}

void tg_listener_unref(struct tg_listener *l)
{
    if (--l->refs == 0 && l->closed)
        listener_free(l);
}

bool tg_listener_same_addr(const struct tg_listener *l, const struct tg_cfg_listener *cfg)
{
    if (l->addr.ss_family != cfg->addr.ss_family)
        return false;
    if (cfg->addr.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)&l->addr, *b = (const void *)&cfg->addr;
        return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *a = (const void *)&l->addr, *b = (const void *)&cfg->addr;
    return a->sin6_port == b->sin6_port &&
           memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0;
}

int tg_listener_update(struct tg_listener *l, const struct tg_cfg_listener *cfg)
{
    if (strcmp(l->name, cfg->name) != 0) {
        /* Requests in flight point at the old name: it is kept until the
         * listener is freed (renames are rare; the list stays short). */
        struct tg_listener_name *n = tg_mem_calloc(1, sizeof(*n));
        char *name = tg_mem_strdup(cfg->name);
        if (!n || !name) {
            tg_mem_free(n);
            tg_mem_free(name);
            return TG_E_NOMEM;
        }
        n->name = l->name;
        n->next = l->old_names;
        l->old_names = n;
        l->name = name;
    }
    l->protocols = cfg->protocols;
    SSL_CTX *ctx = cfg->tls ? cfg->tls->ctx : NULL;
    if (ctx)
        SSL_CTX_up_ref(ctx);
    /* Connections hold their own SSL objects; the old context lives on in them. */
    SSL_CTX_free(l->ssl_ctx);
    l->ssl_ctx = ctx;
    return 0;
}

int tg_listener_open(struct tg_worker *w, const struct tg_cfg_listener *cfg,
                     struct tg_listener **out, char *err, size_t errlen)
{
    struct tg_listener *l = tg_mem_calloc(1, sizeof(*l));
    if (!l)
        return TG_E_NOMEM;
    l->worker = w;
    l->protocols = cfg->protocols;
    l->name = tg_mem_strdup(cfg->name);
    if (!l->name) {
        tg_mem_free(l);
        return TG_E_NOMEM;
    }
    memcpy(&l->addr, &cfg->addr, sizeof(l->addr));
    if (cfg->tls) {
        /* Built off the loop by the server (tg_tls_prepare_config); shared by workers. */
        if (!cfg->tls->ctx) {
            snprintf(err, errlen, "listener %s: TLS context not prepared", cfg->name);
            tg_mem_free(l->name);
            tg_mem_free(l);
            return TG_E_TLS;
        }
        SSL_CTX_up_ref(cfg->tls->ctx);
        l->ssl_ctx = cfg->tls->ctx;
    }
    int rv = uv_tcp_init_ex(&w->loop, &l->tcp, cfg->addr.ss_family);
    if (rv == 0) {
        uv_os_fd_t fd;
        int one = 1;
        uv_fileno((uv_handle_t *)&l->tcp, &fd);
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
            rv = -errno;
        if (rv == 0)
            rv = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&cfg->addr, 0);
        if (rv == 0)
            rv = uv_listen((uv_stream_t *)&l->tcp, 1024, on_connection);
        l->tcp.data = l;
        if (rv < 0) {
            snprintf(err, errlen, "listener %s: cannot listen on %s:%u: %s", cfg->name,
                     cfg->address, cfg->port, uv_strerror(rv));
            l->closing = true;
            uv_close((uv_handle_t *)&l->tcp, on_closed); /* frees l on the next loop turn */
            *out = NULL;
            return rv;
        }
    } else {
        snprintf(err, errlen, "listener %s: socket: %s", cfg->name, uv_strerror(rv));
        SSL_CTX_free(l->ssl_ctx);
        tg_mem_free(l->name);
        tg_mem_free(l);
        return rv;
    }
    *out = l;
    return 0;
}

void tg_listener_close(struct tg_listener *l)
{
    if (l->closing)
        return;
    l->closing = true;
    uv_close((uv_handle_t *)&l->tcp, on_closed);
}
