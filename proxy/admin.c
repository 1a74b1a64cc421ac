#include "proxy/admin.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

#include "config/config-t.h"
#include "proxy/buf.h"
#include "proxy/err.h"
#include "proxy/h1parse.h"
#include "proxy/log.h"
#include "proxy/mem.h"

#define ADMIN_MAX_HEAD 8192
#define ADMIN_MAX_CONNS 64
#define ADMIN_TIMEOUT_MS 5000

struct tg_admin {
    uv_tcp_t tcp;                   /* listening socket */
    const struct tg_admin_ops *ops; /* server callbacks */
    void *ud;                       /* their argument */
    unsigned nconns;                /* open admin connections */
    struct admin_conn *conns;       /* their list */
    bool closing;                   /* stop requested */
    bool listener_closed;           /* the listening handle's close callback ran */
};

struct admin_conn {
    uv_tcp_t tcp;           /* socket */
    uv_timer_t timer;       /* whole-exchange timeout */
    struct tg_admin *admin; /* listener */
    char buf[ADMIN_MAX_HEAD]; /* request head */
    size_t len;             /* bytes in buf */
    int pending;            /* handles closing */
    bool done;              /* answered or closing */
    bool head_only;         /* HEAD request: no body in the answer */
    struct admin_conn *prev, *next; /* admin's list */
};

static void maybe_free(struct tg_admin *a)
{
    if (a->closing && a->listener_closed && a->nconns == 0)
        tg_mem_free(a);
}

struct admin_write {
    uv_write_t w;   /* request */
    char *data;     /* owned bytes */
};

static void on_conn_closed(uv_handle_t *h)
{
    struct admin_conn *c = h->data;
    if (--c->pending > 0)
        return;
    struct tg_admin *a = c->admin;
    if (c->prev)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->nconns--;
    tg_mem_free(c);
    maybe_free(a);
}

static void conn_close(struct admin_conn *c)
{
    if (c->pending)
        return;
    c->pending = 2;
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_written(uv_write_t *w, int status)
{
    (void)status;
    struct admin_write *aw = (struct admin_write *)w;
    struct admin_conn *c = w->data;
    tg_mem_free(aw->data);
    tg_mem_free(aw);
    conn_close(c);
}

static void respond(struct admin_conn *c, int status, const char *ctype, struct tg_buf *body)
{
    const char *reason = status == 200 ? "OK" : status == 401 ? "Unauthorized"
                         : status == 404 ? "Not Found" : status == 405 ? "Method Not Allowed"
                         : status == 503 ? "Service Unavailable" : "Bad Request";
    struct tg_buf out;
    tg_buf_init(&out, 64u * 1024u * 1024u);
    int rv = tg_buf_appendf(&out, "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n"
                                  "cache-control: no-store\r\nconnection: close\r\n%s\r\n",
                            status, reason, ctype, body->len,
                            status == 401 ? "www-authenticate: Bearer\r\n" : "");
    if (!rv && !c->head_only)
        rv = tg_buf_append(&out, body->base, body->len);
    c->done = true;
    struct admin_write *aw = rv ? NULL : tg_mem_calloc(1, sizeof(*aw));
    if (!aw) {
        tg_buf_dispose(&out);
        conn_close(c);
        return;
    }
    aw->data = out.base;
    aw->w.data = c;
    uv_buf_t b = uv_buf_init(out.base, (unsigned)out.len);
    if (uv_write(&aw->w, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
        tg_mem_free(aw->data);
        tg_mem_free(aw);
        conn_close(c);
    }
}

static void text(struct admin_conn *c, int status, const char *msg)
{
    struct tg_buf b;
    tg_buf_init(&b, 4096);
    tg_buf_appendf(&b, "%s\n", msg);
    respond(c, status, "text/plain; charset=utf-8", &b);
    tg_buf_dispose(&b);
}

static bool token_ok(struct admin_conn *c, const struct tg_h1_head *h)
{
    const char *want = c->admin->ops->token(c->admin->ud);
    if (!want)
        return true;
    for (size_t i = 0; i < h->nheaders; i++) {
        if (!tg_iov_ieq(h->headers[i].name, "authorization"))
            continue;
        struct tg_iov v = h->headers[i].value;
        if (v.len < 7 || !tg_iov_ieq(tg_iov_make(v.base, 7), "bearer "))
            return false;
        size_t wl = strlen(want), gl = v.len - 7;
        /* Constant time over the token's length; lengths may differ. */
        return gl == wl && CRYPTO_memcmp(v.base + 7, want, wl) == 0;
    }
    return false;
}

static void handle(struct admin_conn *c, const struct tg_h1_head *h)
{
    struct tg_iov path = h->target;
    for (size_t i = 0; i < path.len; i++)
        if (path.base[i] == '?') {
            path.len = i;
            break;
        }
    c->head_only = tg_iov_eq(h->method, TG_IOV_LIT("HEAD"));
    if (!tg_iov_eq(h->method, TG_IOV_LIT("GET")) && !c->head_only) {
        text(c, 405, "method not allowed");
        return;
    }
    struct tg_buf b;
    tg_buf_init(&b, 32u * 1024u * 1024u);
    if (tg_iov_eq(path, TG_IOV_LIT("/healthz"))) {
        tg_buf_append(&b, "ok\n", 3);
        respond(c, 200, "text/plain; charset=utf-8", &b);
    } else if (tg_iov_eq(path, TG_IOV_LIT("/readyz"))) {
        int st = c->admin->ops->ready(c->admin->ud, &b);
        respond(c, st, "application/json", &b);
    } else if (tg_iov_eq(path, TG_IOV_LIT("/metrics"))) {
        if (!token_ok(c, h)) {
            tg_buf_dispose(&b);
            text(c, 401, "unauthorized");
            return;
        }
        if (c->admin->ops->metrics(c->admin->ud, &b) != 0) {
            tg_buf_dispose(&b);
            text(c, 503, "metrics unavailable");
            return;
        }
        respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", &b);
    } else {
        tg_buf_dispose(&b);
        text(c, 404, "not found");
        return;
    }
    tg_buf_dispose(&b);
}

static void on_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct admin_conn *c = hd->data;
    *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct admin_conn *c = s->data;
    if (c->done)
        return;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    c->len += (size_t)nread;
    static _Thread_local struct tg_h1_head head;
    ssize_t r = tg_h1_parse_head(c->buf, c->len, sizeof(c->buf), &head);
    if (r == 0 && c->len < sizeof(c->buf))
        return;
    uv_read_stop(s);
    if (r <= 0) {
        text(c, head.error_status ? head.error_status : 400, "bad request");
        return;
    }
    handle(c, &head);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct tg_admin *a = server->data;
    if (status < 0 || a->closing)
        return;
    struct admin_conn *c = tg_mem_calloc(1, sizeof(*c));
    if (!c)
        return;
    c->admin = a;
    a->nconns++;
    c->next = a->conns;
    if (a->conns)
        a->conns->prev = c;
    a->conns = c;
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0 || a->nconns > ADMIN_MAX_CONNS) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, ADMIN_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* uv_close callback for a handle allocated on its own. */
static void free_handle(uv_handle_t *h)
{
    tg_mem_free(h);
}

struct tg_admin *tg_admin_start(uv_loop_t *loop, const struct tg_cfg_admin *cfg,
                                const struct tg_admin_ops *ops, void *ud, char *err,
                                size_t errlen)
{
    struct tg_admin *a = tg_mem_calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->ops = ops;
    a->ud = ud;
    uv_tcp_init(loop, &a->tcp);
    a->tcp.data = a;
    int rv = uv_tcp_bind(&a->tcp, (const struct sockaddr *)&cfg->addr, 0);
    if (rv == 0)
        rv = uv_listen((uv_stream_t *)&a->tcp, 64, on_connection);
    if (rv < 0) {
        snprintf(err, errlen, "admin: cannot listen on %s:%u: %s", cfg->address, cfg->port,
                 uv_strerror(rv));
        uv_close((uv_handle_t *)&a->tcp, free_handle);
        return NULL;
    }
    return a;
}

static void on_listener_closed(uv_handle_t *h)
{
    struct tg_admin *a = h->data;
    a->listener_closed = true;
    maybe_free(a);
}

void tg_admin_stop(struct tg_admin *a)
{
    if (!a)
        return;
    a->closing = true;
    for (struct admin_conn *c = a->conns; c; c = c->next)
        conn_close(c);
    uv_close((uv_handle_t *)&a->tcp, on_listener_closed);
}
