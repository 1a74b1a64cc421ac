/*
 * Upstream HTTP/1.1 client and per-worker keep-alive pool.
 *
 * Ownership: a tg_upconn (socket) lives until its handles are closed; a
 * tg_upstream (one exchange) points at one upconn at a time.  Writes carry
 * the upconn and the exchange generation, so a completion that arrives after
 * the exchange ended never touches freed memory.
 *
 * Re-entrancy: every call into the request (which may end up detaching the
 * exchange) happens with u->in_cb set; tg_upstream_detach() then only marks
 * the exchange, and the callback frees it as it unwinds (STYLE §14).
 */
#include "proxy/upstream.h"

#include <llhttp.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "config/config.h"
#include "proxy/buf.h"
#include "proxy/err.h"
#include "proxy/log.h"
#include "proxy/mem.h"
#include "proxy/req.h"
#include "proxy/worker.h"

#define UP_READ_BUF 65536
#define UP_MAX_HEAD 65536

struct tg_upconn;

struct pool_server {
    struct pool_server *next;   /* pool list */
    char *key;                  /* "host:port" text of the server */
    struct tg_upconn *idle;     /* idle connections (LIFO) */
    unsigned nidle;             /* count of idle */
};

struct rr_slot {
    struct rr_slot *next; /* pool list */
    char *name;           /* upstream name */
    unsigned next_idx;    /* next server index */
};

struct tg_pool {
    struct tg_worker *w;          /* owner */
    struct pool_server *servers;  /* one bucket per server address */
    struct rr_slot *rr;           /* round-robin cursors per upstream */
    unsigned nconns;              /* upconns alive (idle or busy) */
};

struct tg_upconn {
    uv_tcp_t tcp;                /* socket */
    uv_timer_t timer;            /* connect / first-byte / read-gap / idle timer */
    uv_connect_t connect_req;    /* pending connect */
    unsigned pending_closes;     /* handles still closing */
    struct tg_pool *pool;        /* owner */
    struct pool_server *ps;      /* bucket (for returning to the pool) */
    struct tg_upstream *u;       /* current exchange, NULL when idle */
    struct tg_upconn *next_idle; /* idle list */
    uint64_t gen;                /* bumps with each exchange */
    uint64_t idle_timeout_ms;    /* from the upstream config */
    bool connected;              /* connect succeeded */
    bool closing;                /* uv_close started */
    bool idle;                   /* in the idle list */
    bool reading;                /* uv_read_start is active */
};

struct tg_upstream {
    struct tg_req *req;                 /* the exchange's request, NULL once detached */
    struct tg_pool *pool;               /* worker pool */
    const struct tg_cfg_upstream *cfg;  /* pinned by req->cfg */
    struct tg_upconn *uc;               /* connection in use */
    unsigned idx;                       /* server index being tried */
    unsigned tries;                     /* servers tried */
    llhttp_t parser;                    /* response parser */
    llhttp_settings_t *settings;        /* static settings */
    struct tg_buf hname, hval;          /* header being assembled */
    size_t head_bytes;                  /* response head size */
    unsigned writes;                    /* writes in flight */
    bool head_written;                  /* request head queued */
    bool body_written;                  /* request end queued */
    bool chunked_req;                   /* request body chunk-framed upstream */
    bool got_head;                      /* response head passed to the req */
    bool complete;                      /* response fully parsed */
    bool paused;                        /* read stopped for back-pressure */
    bool in_cb;                         /* inside a call into the req */
    bool detached;                      /* the req let go during in_cb */
    bool failed;                        /* parse/protocol error */
};

static void on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void up_fail(struct tg_upstream *u, int status, const char *code, const char *msg,
                    const char *reason);

/* --- pool ---------------------------------------------------------------- */

struct tg_pool *tg_pool_new(struct tg_worker *w)
{
    struct tg_pool *p = tg_mem_calloc(1, sizeof(*p));
    if (p)
        p->w = w;
    return p;
}

static void on_uc_closed(uv_handle_t *h)
{
    struct tg_upconn *uc = h->data;
    if (--uc->pending_closes > 0)
        return;
    uc->pool->nconns--;
    tg_mem_free(uc);
}

static void uc_unlink_idle(struct tg_upconn *uc)
{
    if (!uc->idle)
        return;
    struct tg_upconn **pp = &uc->ps->idle;
    while (*pp && *pp != uc)
        pp = &(*pp)->next_idle;
    if (*pp)
        *pp = uc->next_idle;
    uc->ps->nidle--;
    uc->idle = false;
    uc->next_idle = NULL;
}

static void uc_close(struct tg_upconn *uc)
{
    if (uc->closing)
        return;
    uc_unlink_idle(uc);
    uc->closing = true;
    uc->u = NULL;
    uc->pending_closes = 2;
    uv_close((uv_handle_t *)&uc->timer, on_uc_closed);
    uv_close((uv_handle_t *)&uc->tcp, on_uc_closed);
}

void tg_pool_close_idle(struct tg_pool *p)
{
    for (struct pool_server *ps = p->servers; ps; ps = ps->next)
        while (ps->idle)
            uc_close(ps->idle);
}

void tg_pool_free(struct tg_pool *p)
{
    if (!p)
        return;
    struct pool_server *ps = p->servers;
    while (ps) {
        struct pool_server *n = ps->next;
        tg_mem_free(ps->key);
        tg_mem_free(ps);
        ps = n;
    }
    struct rr_slot *r = p->rr;
    while (r) {
        struct rr_slot *n = r->next;
        tg_mem_free(r->name);
        tg_mem_free(r);
        r = n;
    }
    tg_mem_free(p);
}

unsigned tg_pool_idle_count(const struct tg_pool *p)
{
    unsigned n = 0;
    for (const struct pool_server *ps = p->servers; ps; ps = ps->next)
        n += ps->nidle;
    return n;
}

static struct pool_server *pool_server(struct tg_pool *p, const char *key)
{
    for (struct pool_server *ps = p->servers; ps; ps = ps->next)
        if (strcmp(ps->key, key) == 0)
            return ps;
    struct pool_server *ps = tg_mem_calloc(1, sizeof(*ps));
    if (!ps)
        return NULL;
    ps->key = tg_mem_strdup(key);
    if (!ps->key) {
        tg_mem_free(ps);
        return NULL;
    }
    ps->next = p->servers;
    p->servers = ps;
    return ps;
}

static unsigned rr_next(struct tg_pool *p, const struct tg_cfg_upstream *cfg)
{
    struct rr_slot *r = p->rr;
    while (r && strcmp(r->name, cfg->name) != 0)
        r = r->next;
    if (!r) {
        r = tg_mem_calloc(1, sizeof(*r));
        if (!r || !(r->name = tg_mem_strdup(cfg->name))) {
            tg_mem_free(r);
            return 0;
        }
        r->next = p->rr;
        p->rr = r;
    }
    return r->next_idx++ % (unsigned)cfg->nservers;
}

static void on_idle_timer(uv_timer_t *t)
{
    struct tg_upconn *uc = tg_container_of(t, struct tg_upconn, timer);
    uc_close(uc);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)h;
    (void)hint;
    static _Thread_local char rbuf[UP_READ_BUF];
    *buf = uv_buf_init(rbuf, sizeof(rbuf));
}

/* Keep the socket readable for its whole life: one epoll registration. */
static void uc_read_start(struct tg_upconn *uc)
{
    if (!uc->reading && !uc->closing &&
        uv_read_start((uv_stream_t *)&uc->tcp, on_alloc, on_up_read) == 0)
        uc->reading = true;
}

static void uc_read_stop(struct tg_upconn *uc)
{
    if (uc->reading && !uc->closing) {
        uv_read_stop((uv_stream_t *)&uc->tcp);
        uc->reading = false;
    }
}


/* Return a connection whose exchange finished cleanly. */
static void uc_release(struct tg_upconn *uc, uint32_t max_idle)
{
    uc->u = NULL;
    if (uc->closing)
        return;
    if (uc->pool->w->draining || max_idle == 0) {
        uc_close(uc);
        return;
    }
    /* Past max_idle_connections a connection lingers for at most a second:
     * bursts reuse it instead of reconnecting, and the pool shrinks back to
     * the configured size soon after. */
    uint64_t linger = uc->idle_timeout_ms;
    if (uc->ps->nidle >= max_idle && linger > 1000)
        linger = 1000;
    uc->idle = true;
    uc->next_idle = uc->ps->idle;
    uc->ps->idle = uc;
    uc->ps->nidle++;
    uc_read_start(uc); /* an idle connection that speaks or closes is dropped */
    uv_timer_start(&uc->timer, on_idle_timer, linger, 0);
}

/* --- exchange ---------------------------------------------------------------- */

static void u_free(struct tg_upstream *u)
{
    tg_buf_dispose(&u->hname);
    tg_buf_dispose(&u->hval);
    tg_mem_free(u);
}

/* End the exchange: pool or close the socket, free u. */
static void u_finish(struct tg_upstream *u, bool reusable)
{
    struct tg_upconn *uc = u->uc;
    u->uc = NULL;
    if (uc) {
        uv_timer_stop(&uc->timer);
        if (reusable && !uc->closing) {
            uc_release(uc, u->cfg->max_idle_connections);
        } else {
            uc_close(uc);
        }
    }
    u_free(u);
}

void tg_upstream_detach(struct tg_upstream *u)
{
    if (!u)
        return;
    u->req = NULL;
    if (u->in_cb) {
        u->detached = true;
        return;
    }
    u_finish(u, false);
}

/* After a call into the req: true when u must not be touched any more. */
static bool after_cb(struct tg_upstream *u)
{
    u->in_cb = false;
    if (u->detached) {
        u_finish(u, false);
        return true;
    }
    return false;
}

static void up_fail(struct tg_upstream *u, int status, const char *code, const char *msg,
                    const char *reason)
{
    struct tg_req *req = u->req;
    if (!req) {
        u_finish(u, false);
        return;
    }
    req->outcome.upstream_failed = true;
    if (!req->outcome.reason)
        req->outcome.reason = reason;
    /* The req detaches u (reply_error and response_abort both do). */
    u->in_cb = true;
    if (u->got_head)
        tg_req_response_abort(req, reason);
    else
        tg_req_reply_error(req, status, code, msg, reason);
    if (after_cb(u))
        return;
    /* Not detached (should not happen): make sure nothing leaks. */
    if (u->req)
        u->req->upstream = NULL;
    u_finish(u, false);
}

struct up_write {
    uv_write_t wr;              /* libuv request */
    struct tg_upconn *uc;       /* connection */
    uint64_t gen;               /* exchange generation */
    size_t body_bytes;          /* request body bytes carried (flow-control credit) */
    struct tg_chunk *chunk;     /* owned body chunk, or NULL */
    char *head;                 /* owned head bytes, or NULL */
};

static void on_up_write(uv_write_t *wr, int status)
{
    struct up_write *w = (struct up_write *)wr;
    struct tg_upconn *uc = w->uc;
    struct tg_upstream *u = uc->u;
    bool same = u && !uc->closing && uc->gen == w->gen;
    tg_mem_free(w->chunk);
    tg_mem_free(w->head);
    size_t credit = w->body_bytes;
    tg_mem_free(w);
    if (!same)
        return;
    u->writes--;
    if (status < 0) {
        if (!u->got_head)
            up_fail(u, 502, "upstream_error", "upstream connection failed", "upstream.error");
        return;
    }
    if (credit && u->req && u->req->sess_ops->body_consumed) {
        u->in_cb = true;
        u->req->sess_ops->body_consumed(u->req, credit);
        after_cb(u);
    }
}

static int up_write(struct tg_upstream *u, uv_buf_t *bufs, unsigned n, struct tg_chunk *chunk,
                    char *head, size_t credit)
{
    /* Most writes go out whole at once: no request, no callback, no epoll_ctl. */
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    int done = uv_try_write((uv_stream_t *)&u->uc->tcp, bufs, n);
    if (done == (int)total) {
        tg_mem_free(chunk);
        tg_mem_free(head);
        if (credit && u->req && u->req->sess_ops->body_consumed)
            u->req->sess_ops->body_consumed(u->req, credit);
        return 0;
    }
    if (done < 0 && done != UV_EAGAIN && done != UV_ENOSYS)
        return done;
    if (done > 0) {
        /* Skip what the kernel took; the rest is queued below. */
        size_t skip = (size_t)done;
        unsigned k = 0;
        while (k < n && skip >= bufs[k].len)
            skip -= bufs[k++].len;
        bufs += k;
        n -= k;
        bufs[0].base += skip;
        bufs[0].len -= skip;
    }
    struct up_write *w = tg_mem_calloc(1, sizeof(*w));
    if (!w)
        return TG_E_NOMEM;
    w->uc = u->uc;
    w->gen = u->uc->gen;
    w->chunk = chunk;
    w->head = head;
    w->body_bytes = credit;
    int rv = uv_write(&w->wr, (uv_stream_t *)&u->uc->tcp, bufs, n, on_up_write);
    if (rv < 0) {
        tg_mem_free(w);
        return rv;
    }
    u->writes++;
    return 0;
}

/* Write whatever request body is ready. */
static void pump_body(struct tg_upstream *u)
{
    struct tg_req *req = u->req;
    if (!req || !u->head_written || u->body_written || !u->uc)
        return;
    while (req->body_out.head) {
        struct tg_chunk *c = req->body_out.head;
        req->body_out.head = c->next;
        if (!req->body_out.head)
            req->body_out.tail = NULL;
        size_t len = c->len - c->off;
        req->body_out.bytes -= len;
        c->next = NULL;
        char sz[24];
        uv_buf_t b[3];
        unsigned k = 0;
        if (u->chunked_req) {
            int zn = snprintf(sz, sizeof(sz), "%zx\r\n", len);
            /* sz lives on the stack: copy it with the chunk via a small head. */
            char *h = tg_mem_strndup(sz, (size_t)zn);
            if (!h) {
                tg_mem_free(c);
                up_fail(u, 502, "upstream_error", "out of memory", "upstream.error");
                return;
            }
            b[k++] = uv_buf_init(h, (unsigned)zn);
            b[k++] = uv_buf_init(c->data + c->off, (unsigned)len);
            b[k++] = uv_buf_init((char *)"\r\n", 2);
            if (up_write(u, b, k, c, h, len) < 0) {
                tg_mem_free(c);
                tg_mem_free(h);
                up_fail(u, 502, "upstream_error", "upstream write failed", "upstream.error");
                return;
            }
        } else {
            b[k++] = uv_buf_init(c->data + c->off, (unsigned)len);
            if (up_write(u, b, k, c, NULL, len) < 0) {
                tg_mem_free(c);
                up_fail(u, 502, "upstream_error", "upstream write failed", "upstream.error");
                return;
            }
        }
    }
    if (req->body_out_end) {
        u->body_written = true;
        if (u->chunked_req) {
            uv_buf_t b = uv_buf_init((char *)"0\r\n\r\n", 5);
            if (up_write(u, &b, 1, NULL, NULL, 0) < 0)
                up_fail(u, 502, "upstream_error", "upstream write failed", "upstream.error");
        }
    }
}

void tg_upstream_body_ready(struct tg_upstream *u)
{
    pump_body(u); /* writes never call back synchronously, in a callback or not */
}

static void on_first_byte_timeout(uv_timer_t *t)
{
    struct tg_upconn *uc = tg_container_of(t, struct tg_upconn, timer);
    struct tg_upstream *u = uc->u;
    if (!u)
        return;
    tg_log_warn("upstream", "%s: no response within %llu ms", uc->ps->key,
                (unsigned long long)u->cfg->first_byte_timeout_ms);
    up_fail(u, 504, "upstream_timeout", "the upstream did not answer in time",
            "upstream.timeout");
}

static bool is_hop(struct tg_iov n)
{
    return tg_header_is_hop_by_hop(n) || tg_iov_ieq(n, "content-length");
}

/* Serialize and write the request head, then start streaming the body. */
static void send_request(struct tg_upstream *u)
{
    struct tg_req *req = u->req;
    struct tg_buf b;
    tg_buf_init(&b, (size_t)req->cfg->limits.max_header_bytes + 8192);
    const struct tg_cfg_server *srv = &u->cfg->servers[u->idx];
    int rv = tg_buf_append(&b, req->method.base, req->method.len);
    rv = rv ? rv : tg_buf_append(&b, " ", 1);
    rv = rv ? rv : tg_buf_append(&b, req->path.base, req->path.len);
    rv = rv ? rv : tg_buf_append(&b, " HTTP/1.1\r\nhost: ", 17);
    if (!rv) {
        /* RFC 9113 §8.3.1: Host from :authority; else the server's own address. */
        if (req->authority.len)
            rv = tg_buf_append(&b, req->authority.base, req->authority.len);
        else
            rv = tg_buf_append(&b, srv->text, strlen(srv->text)); /* [v6]:port kept */
    }
    rv = rv ? rv : tg_buf_append(&b, "\r\n", 2);
    for (size_t i = 0; !rv && i < req->headers.n; i++) {
        struct tg_header *h = &req->headers.v[i];
        if (is_hop(h->name))
            continue;
        /* Last line of defence against header injection (THREATS §2.2). */
        if (!tg_header_name_valid(h->name) || !tg_header_value_valid(h->value))
            continue;
        rv = tg_buf_append(&b, h->name.base, h->name.len);
        rv = rv ? rv : tg_buf_append(&b, ": ", 2);
        rv = rv ? rv : tg_buf_append(&b, h->value.base, h->value.len);
        rv = rv ? rv : tg_buf_append(&b, "\r\n", 2);
    }
    if (!rv) {
        if (req->content_length >= 0) {
            bool send_cl = req->content_length > 0 || !tg_iov_eq(req->method, TG_IOV_LIT("GET"));
            if (send_cl && !tg_iov_eq(req->method, TG_IOV_LIT("HEAD")))
                rv = tg_buf_appendf(&b, "content-length: %lld\r\n",
                                    (long long)req->content_length);
        } else {
            u->chunked_req = true;
            rv = tg_buf_append(&b, "transfer-encoding: chunked\r\n", 28);
        }
    }
    rv = rv ? rv : tg_buf_append(&b, "\r\n", 2);
    if (rv) {
        tg_buf_dispose(&b);
        up_fail(u, 502, "upstream_error", "request head too large", "upstream.error");
        return;
    }
    uv_buf_t ub = uv_buf_init(b.base, (unsigned)b.len);
    if (up_write(u, &ub, 1, NULL, b.base, 0) < 0) {
        tg_buf_dispose(&b);
        up_fail(u, 502, "upstream_error", "upstream write failed", "upstream.error");
        return;
    }
    u->head_written = true;
    llhttp_init(&u->parser, HTTP_RESPONSE, u->settings);
    u->parser.data = u;
    uc_read_start(u->uc);
    uv_timer_start(&u->uc->timer, on_first_byte_timeout, u->cfg->first_byte_timeout_ms,
                   u->cfg->first_byte_timeout_ms);
    pump_body(u);
}

/* --- response parsing ---------------------------------------------------------------- */

static int flush_header(struct tg_upstream *u)
{
    if (!u->hname.len)
        return 0;
    int rv = 0;
    if (u->req)
        rv = tg_hlist_add(&u->req->resp_headers, &u->req->arena,
                          tg_iov_make(u->hname.base, u->hname.len),
                          tg_iov_make(u->hval.base, u->hval.len));
    u->hname.len = 0;
    u->hval.len = 0;
    return rv ? -1 : 0;
}

static int on_h_field(llhttp_t *p, const char *at, size_t len)
{
    struct tg_upstream *u = p->data;
    u->head_bytes += len;
    if (u->head_bytes > UP_MAX_HEAD)
        return -1;
    return tg_buf_append(&u->hname, at, len) ? -1 : 0;
}

static int on_h_value(llhttp_t *p, const char *at, size_t len)
{
    struct tg_upstream *u = p->data;
    u->head_bytes += len;
    if (u->head_bytes > UP_MAX_HEAD)
        return -1;
    if (!u->hname.len)
        return -1;
    return tg_buf_append(&u->hval, at, len) ? -1 : 0;
}

/* One field is complete (its value may be empty): store it. */
static int on_h_value_complete(llhttp_t *p)
{
    return flush_header(p->data);
}

static int on_h_complete(llhttp_t *p)
{
    struct tg_upstream *u = p->data;
    struct tg_req *req = u->req;
    if (flush_header(u) || !req)
        return -1;
    for (size_t i = 0; i < req->resp_headers.n; i++)
        if (!tg_header_name_valid(req->resp_headers.v[i].name) ||
            !tg_header_value_valid(req->resp_headers.v[i].value))
            return -1; /* never forward bytes that could split a header */
    int status = llhttp_get_status_code(p);
    if (status >= 100 && status < 200) {
        /* Interim responses are not forwarded; drop their fields. */
        req->resp_headers.n = 0;
        u->head_bytes = 0;
        return 0;
    }
    req->status = status;
    bool no_body = req->head_only || status == 204 || status == 304;
    if (p->flags & F_CHUNKED)
        req->resp_content_length = -1;
    else if (p->flags & F_CONTENT_LENGTH)
        req->resp_content_length = (int64_t)p->content_length;
    else
        req->resp_content_length = -1;
    bool has_body = !no_body && req->resp_content_length != 0;
    /* A known length is kept (the session frames by it); otherwise the
     * session chooses the framing and no content-length may pass. */
    if (req->resp_content_length < 0)
        tg_hlist_remove(&req->resp_headers, "content-length");
    u->got_head = true;
    req->upstream_first_byte_ns = uv_hrtime();
    tg_req_response_head(req, has_body);
    if (u->detached)
        return HPE_PAUSED; /* on_up_read frees u once llhttp returns */
    return no_body ? 1 : 0;
}

static int on_h_body(llhttp_t *p, const char *at, size_t len)
{
    struct tg_upstream *u = p->data;
    if (!u->req)
        return -1;
    tg_req_response_data(u->req, at, len, false);
    return u->detached ? -1 : 0;
}

static int on_h_message_complete(llhttp_t *p)
{
    struct tg_upstream *u = p->data;
    if (!u->got_head)
        return 0; /* an interim 1xx response ended */
    u->complete = true;
    return HPE_PAUSED;
}

static llhttp_settings_t up_settings = {
    .on_header_field = on_h_field,
    .on_header_value = on_h_value,
    .on_header_value_complete = on_h_value_complete,
    .on_headers_complete = on_h_complete,
    .on_body = on_h_body,
    .on_message_complete = on_h_message_complete,
};

static void complete(struct tg_upstream *u, bool leftover)
{
    struct tg_req *req = u->req;
    bool reusable = !leftover && llhttp_should_keep_alive(&u->parser) && u->body_written &&
                    u->writes == 0 && !u->failed;
    /* Detach first: ending the response may free the request. */
    if (req)
        req->upstream = NULL;
    u->req = NULL;
    u_finish(u, reusable);
    if (req && !req->resp_end_sent)
        tg_req_response_data(req, NULL, 0, true);
}

static void on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct tg_upconn *uc = s->data;
    struct tg_upstream *u = uc->u;
    if (uc->closing || nread == 0)
        return;
    if (!u) {
        /* Idle (or between exchanges): EOF or stray bytes end the connection. */
        uc_close(uc);
        return;
    }
    if (nread < 0) {
        if (nread == UV_EOF && u->got_head && llhttp_message_needs_eof(&u->parser)) {
            llhttp_errno_t e = llhttp_finish(&u->parser);
            if (e == HPE_OK && u->complete) {
                u->failed = true; /* not reusable */
                complete(u, false);
                return;
            }
        }
        up_fail(u, 502, "upstream_error", "upstream closed the connection", "upstream.error");
        return;
    }
    uv_timer_again(&uc->timer); /* read-gap timeout while streaming */
    u->in_cb = true;
    llhttp_errno_t e = llhttp_execute(&u->parser, buf->base, (size_t)nread);
    if (after_cb(u))
        return; /* the request let go of u during a callback */
    if (e == HPE_PAUSED && u->complete) {
        const char *stop = llhttp_get_error_pos(&u->parser);
        bool leftover = stop && stop < buf->base + nread;
        complete(u, leftover);
        return;
    }
    if (e != HPE_OK) {
        tg_log_warn("upstream", "%s: malformed response: %s", uc->ps->key,
                    llhttp_errno_name(e));
        u->failed = true;
        up_fail(u, 502, "upstream_error", "malformed response from upstream", "upstream.error");
        return;
    }
    if (u->req && !u->paused && tg_req_client_congested(u->req)) {
        u->paused = true;
        uc_read_stop(uc);
        uv_timer_stop(&uc->timer);
    }
}

void tg_upstream_resume(struct tg_upstream *u)
{
    if (!u->paused || !u->uc || u->uc->closing)
        return;
    u->paused = false;
    uc_read_start(u->uc);
    uv_timer_start(&u->uc->timer, on_first_byte_timeout, u->cfg->first_byte_timeout_ms,
                   u->cfg->first_byte_timeout_ms);
}

/* --- connecting ---------------------------------------------------------------- */

static void try_server(struct tg_upstream *u);

static void on_connect_timeout(uv_timer_t *t)
{
    struct tg_upconn *uc = tg_container_of(t, struct tg_upconn, timer);
    struct tg_upstream *u = uc->u;
    if (!u)
        return;
    tg_log_warn("upstream", "%s: connect timed out", uc->ps->key);
    up_fail(u, 504, "upstream_timeout", "connecting to the upstream timed out",
            "upstream.timeout");
}

static void on_connect(uv_connect_t *cr, int status)
{
    struct tg_upconn *uc = cr->data;
    struct tg_upstream *u = uc->u;
    if (uc->closing || !u)
        return;
    uv_timer_stop(&uc->timer);
    if (status < 0) {
        tg_log_warn("upstream", "%s: connect failed: %s", uc->ps->key, uv_strerror(status));
        u->uc = NULL;
        uc_close(uc);
        /* Nothing was sent: another server may take it (SPEC: skip a refusing server). */
        if (u->tries < u->cfg->nservers) {
            u->idx = (u->idx + 1) % (unsigned)u->cfg->nservers;
            try_server(u);
            return;
        }
        up_fail(u, 502, "upstream_error", "no upstream server accepted the connection",
                "upstream.error");
        return;
    }
    uc->connected = true;
    uv_tcp_nodelay(&uc->tcp, 1);
    send_request(u);
}

static void try_server(struct tg_upstream *u)
{
    const struct tg_cfg_server *srv = &u->cfg->servers[u->idx];
    u->tries++;
    if (u->req)
        u->req->upstream_addr = srv->text;
    struct pool_server *ps = pool_server(u->pool, srv->text);
    if (!ps) {
        up_fail(u, 502, "upstream_error", "out of memory", "upstream.error");
        return;
    }
    if (ps->idle) {
        struct tg_upconn *uc = ps->idle;
        uc_unlink_idle(uc);
        uv_timer_stop(&uc->timer);
        uc->u = u;
        uc->gen++;
        u->uc = uc;
        send_request(u);
        return;
    }
    struct tg_upconn *uc = tg_mem_calloc(1, sizeof(*uc));
    if (!uc) {
        up_fail(u, 502, "upstream_error", "out of memory", "upstream.error");
        return;
    }
    struct tg_worker *w = u->pool->w;
    uc->pool = u->pool;
    uc->ps = ps;
    uc->idle_timeout_ms = u->cfg->idle_timeout_ms;
    uv_tcp_init(&w->loop, &uc->tcp);
    uv_timer_init(&w->loop, &uc->timer);
    uc->tcp.data = uc;
    uc->timer.data = uc;
    uc->connect_req.data = uc;
    u->pool->nconns++;
    uc->u = u;
    uc->gen = 1;
    u->uc = uc;
    int rv = uv_tcp_connect(&uc->connect_req, &uc->tcp, (const struct sockaddr *)&srv->addr,
                            on_connect);
    if (rv < 0) {
        u->uc = NULL;
        uc_close(uc);
        up_fail(u, 502, "upstream_error", "cannot connect to upstream", "upstream.error");
        return;
    }
    uv_timer_start(&uc->timer, on_connect_timeout, u->cfg->connect_timeout_ms, 0);
}

void tg_upstream_start(struct tg_req *req)
{
    struct tg_upstream *u = tg_mem_calloc(1, sizeof(*u));
    if (!u) {
        tg_req_reply_error(req, 503, "unavailable", "out of memory", "server.nomem");
        return;
    }
    u->req = req;
    u->pool = req->worker->pool;
    u->cfg = req->route->upstream;
    u->settings = &up_settings;
    tg_buf_init(&u->hname, 8192);
    tg_buf_init(&u->hval, UP_MAX_HEAD);
    req->upstream = u;
    u->idx = rr_next(u->pool, u->cfg);
    try_server(u);
}
