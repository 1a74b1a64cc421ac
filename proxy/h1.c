/*
 * HTTP/1.1 server session.  One request at a time per connection (RFC 9112
 * §9.3.2 allows pipelining, but responses must keep their order; like Envoy
 * we parse the next request only after the current response is done).
 *
 * States: HEAD (reading a request head, header timeout running), BODY (the
 * body is being read, body timeout between reads), DONE_READING (the request
 * has been read whole; bytes that arrive are kept for the next request), and
 * IDLE (keep-alive, idle timeout running) which is HEAD with no byte yet.
 *
 * A request's response end may be queued from deep inside upstream or filter
 * code; the session then finishes the exchange from a deferred call, never
 * under its caller (STYLE §14).
 */
#include <stdio.h>
#include <string.h>

#include "config/config.h"
#include "filters/audit.h"
#include "proxy/buf.h"
#include "proxy/conn.h"
#include "proxy/listener.h"
#include "proxy/err.h"
#include "proxy/h1parse.h"
#include "proxy/log.h"
#include "proxy/req.h"
#include "proxy/session.h"
#include "proxy/worker.h"

enum h1_state { H1_HEAD, H1_BODY, H1_DONE_READING, H1_CLOSED };

struct h1_sess {
    struct tg_conn *conn;       /* transport */
    struct tg_config *cfg;      /* snapshot at accept (limits) */
    struct tg_buf in;           /* bytes read and not yet parsed */
    enum h1_state state;        /* see above */
    bool idle;                  /* HEAD with no byte of the next request yet */
    struct tg_req *req;         /* the current exchange */
    bool keep_alive;            /* the connection survives this exchange */
    bool http10;                /* client spoke HTTP/1.0 */
    bool resp_chunked;          /* the response body is chunk-framed */
    bool body_chunked;          /* the request body is chunk-framed */
    uint64_t body_left;         /* Content-Length bytes still to read */
    struct tg_chunked chunked;  /* decoder state */
    size_t body_held;           /* body bytes given to the req and not yet consumed upstream */
    bool paused;                /* reading stopped for back-pressure */
    bool draining;              /* graceful shutdown: close after this exchange */
    bool stall_armed;           /* the timer watches a client that stopped reading */
    struct tg_defer finish;     /* deferred end-of-exchange */
    struct tg_defer process;    /* deferred parse of pipelined bytes */
};

static const struct tg_sess_ops h1_ops;
static void process(struct h1_sess *s);

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Status";
    }
}

/* An error answered before any tg_req exists (malformed head): close afterwards. */
static void raw_error(struct h1_sess *s, int status, const char *code, const char *msg)
{
    char body[256], head[256];
    const char *type = status == 503 ? "server_error" : "invalid_request_error";
    int bn = snprintf(body, sizeof(body),
                      "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"code\":\"%s\"}}\n", msg,
                      type, code);
    int hn = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                      "content-length: %d\r\nconnection: close\r\n\r\n",
                      status, reason_phrase(status), bn);
    struct tg_iov v[2] = {{head, (size_t)hn}, {body, (size_t)bn}};
    tg_conn_write(s->conn, v, 2);
    tg_audit_raw_request(s->conn->worker, s->cfg, s->conn->peer_ip, s->conn->peer_port, s->conn->tls_version,
                         status, status == 408 ? "limits.header_timeout"
                                 : status == 431 ? "limits.header_size"
                                 : status == 503 ? "server.nomem"
                                                 : "limits.invalid_request");
    s->state = H1_CLOSED;
    tg_conn_read_stop(s->conn);
    tg_conn_timer_stop(s->conn);
    tg_conn_close_after_write(s->conn);
}

static struct h1_sess *sess_of(struct tg_req *req)
{
    return req->sess;
}

/* --- the tg_req side ---------------------------------------------------------------- */

static int send_head(struct tg_req *req, bool has_body)
{
    struct h1_sess *s = sess_of(req);
    if (s->state == H1_CLOSED)
        return TG_E_CLOSED;
    struct tg_buf b;
    tg_buf_init(&b, 256 * 1024);
    int rv = tg_buf_appendf(&b, "HTTP/1.1 %d %s\r\n", req->status, reason_phrase(req->status));
    bool no_body_status = req->status == 204 || req->status == 304 || req->status < 200;
    s->resp_chunked = false;
    for (size_t i = 0; rv == 0 && i < req->resp_headers.n; i++) {
        struct tg_header *h = &req->resp_headers.v[i];
        if (tg_iov_eq(h->name, TG_IOV_LIT("content-length")) && req->resp_content_length < 0)
            continue;
        rv = tg_buf_append(&b, h->name.base, h->name.len);
        if (!rv)
            rv = tg_buf_append(&b, ": ", 2);
        if (!rv)
            rv = tg_buf_append(&b, h->value.base, h->value.len);
        if (!rv)
            rv = tg_buf_append(&b, "\r\n", 2);
    }
    if (has_body && !no_body_status && req->resp_content_length < 0) {
        if (s->http10)
            s->keep_alive = false; /* close-delimited */
        else {
            s->resp_chunked = true;
            if (!rv)
                rv = tg_buf_append(&b, "transfer-encoding: chunked\r\n", 28);
        }
    }
    if (s->draining || s->state == H1_BODY)
        s->keep_alive = false; /* answered before the request body ended: framing is lost */
    if (!rv) {
        if (!s->keep_alive)
            rv = tg_buf_append(&b, "connection: close\r\n\r\n", 21);
        else if (s->http10)
            rv = tg_buf_append(&b, "connection: keep-alive\r\n\r\n", 26);
        else
            rv = tg_buf_append(&b, "\r\n", 2);
    }
    if (rv == 0) {
        struct tg_iov v = {b.base, b.len};
        rv = tg_conn_write(s->conn, &v, 1);
    }
    tg_buf_dispose(&b);
    if (!has_body)
        tg_worker_defer(s->conn->worker, &s->finish, NULL);
    return rv;
}

static int send_data(struct tg_req *req, const char *p, size_t n, bool end)
{
    struct h1_sess *s = sess_of(req);
    if (s->state == H1_CLOSED)
        return TG_E_CLOSED;
    int rv = 0;
    if (s->resp_chunked) {
        char sz[24];
        struct tg_iov v[4];
        unsigned k = 0;
        if (n) {
            int zn = snprintf(sz, sizeof(sz), "%zx\r\n", n);
            v[k++] = tg_iov_make(sz, (size_t)zn);
            v[k++] = tg_iov_make(p, n);
            v[k++] = TG_IOV_LIT("\r\n");
        }
        if (end)
            v[k++] = TG_IOV_LIT("0\r\n\r\n");
        if (k)
            rv = tg_conn_write(s->conn, v, k);
    } else if (n) {
        struct tg_iov v = {p, n};
        rv = tg_conn_write(s->conn, &v, 1);
    }
    if (!s->stall_armed && s->state == H1_DONE_READING) {
        /* A client that takes none of this for idle_timeout_ms is dropped;
         * each completed write re-arms the clock (on_written). */
        s->stall_armed = true;
        tg_conn_timer(s->conn, s->cfg->limits.idle_timeout_ms);
    }
    if (end)
        tg_worker_defer(s->conn->worker, &s->finish, NULL);
    return rv;
}

static size_t pending(struct tg_req *req)
{
    return tg_conn_pending(sess_of(req)->conn);
}

static void abort_resp(struct tg_req *req)
{
    /* Close without the terminating chunk, so the client sees a truncated stream. */
    struct h1_sess *s = sess_of(req);
    s->state = H1_CLOSED;
    s->keep_alive = false;
    tg_conn_read_stop(s->conn);
    tg_conn_timer_stop(s->conn);
    /* What was already relayed still goes out; the terminating chunk never does. */
    tg_conn_close_after_write(s->conn);
}

static void body_consumed(struct tg_req *req, size_t n)
{
    struct h1_sess *s = sess_of(req);
    s->body_held = n > s->body_held ? 0 : s->body_held - n;
    if (s->paused && s->body_held < TG_REQ_BODY_HIGH_WATER / 2 && s->state == H1_BODY) {
        s->paused = false;
        tg_conn_read_start(s->conn);
        tg_conn_timer(s->conn, s->cfg->limits.body_timeout_ms);
        tg_worker_defer(s->conn->worker, &s->process, NULL);
    }
}

static const struct tg_req_sess_ops req_ops = {
    .send_head = send_head,
    .send_data = send_data,
    .pending = pending,
    .abort = abort_resp,
    .body_consumed = body_consumed,
};

/* --- exchange lifecycle ---------------------------------------------------------------- */

static void arm_idle(struct h1_sess *s)
{
    s->idle = true;
    tg_conn_timer(s->conn, s->cfg->limits.idle_timeout_ms);
}

static void on_finish(struct tg_defer *d)
{
    struct h1_sess *s = tg_container_of(d, struct h1_sess, finish);
    struct tg_req *req = s->req;
    if (!req || !req->resp_end_sent || s->state == H1_CLOSED)
        return;
    if (s->state != H1_DONE_READING || !req->body_in_end) {
        /* Answered before the request body was read: the framing is lost. */
        s->keep_alive = false;
    }
    s->req = NULL;
    tg_req_free(req);
    if (!s->keep_alive || s->draining) {
        s->state = H1_CLOSED;
        tg_conn_read_stop(s->conn);
        tg_conn_timer_stop(s->conn);
        tg_conn_close_after_write(s->conn);
        return;
    }
    s->state = H1_HEAD;
    s->body_held = 0;
    s->stall_armed = false;
    if (s->paused) {
        s->paused = false;
        tg_conn_read_start(s->conn);
    }
    if (s->in.len) {
        s->idle = false;
        tg_conn_timer(s->conn, s->cfg->limits.header_timeout_ms);
        process(s);
    } else {
        arm_idle(s);
    }
}

static void on_process(struct tg_defer *d)
{
    struct h1_sess *s = tg_container_of(d, struct h1_sess, process);
    if (s->state != H1_CLOSED)
        process(s);
}

static int body_chunk(void *ud, const char *p, size_t n)
{
    struct h1_sess *s = ud;
    s->body_held += n;
    tg_req_body(s->req, p, n, false);
    return s->state == H1_CLOSED ? -1 : 0;
}

static void read_body(struct h1_sess *s)
{
    if (!s->in.len && !(s->body_chunked ? s->chunked.done : s->body_left == 0))
        return;
    struct tg_req *req = s->req;
    size_t used;
    bool end;
    if (s->body_chunked) {
        ssize_t r = tg_chunked_decode(&s->chunked, s->in.base, s->in.len, body_chunk, s);
        if (s->state == H1_CLOSED)
            return;
        if (r < 0) {
            s->keep_alive = false;
            if (!req->resp_head_sent) {
                tg_req_reply_error(req, 400, "invalid_request", "malformed chunked body",
                                   "limits.invalid_request");
            } else {
                tg_req_response_abort(req, "client.bad_body");
            }
            tg_conn_read_stop(s->conn);
            return;
        }
        used = (size_t)r;
        end = s->chunked.done;
    } else {
        used = s->in.len < s->body_left ? s->in.len : (size_t)s->body_left;
        s->body_left -= used;
        end = s->body_left == 0;
        if (used)
            s->body_held += used;
        if (used || end)
            tg_req_body(req, s->in.base, used, end);
        if (s->state == H1_CLOSED)
            return;
    }
    tg_buf_consume(&s->in, used);
    if (req->replied && !end) {
        /* Answered (413, 4xx) while the body still comes: do not read and
         * discard an unbounded body; close once the answer is out. */
        s->keep_alive = false;
        s->state = H1_DONE_READING;
        s->in.len = 0;
        tg_conn_read_stop(s->conn);
        tg_conn_timer_stop(s->conn);
        tg_worker_defer(s->conn->worker, &s->finish, NULL);
        return;
    }
    if (end) {
        if (s->body_chunked)
            tg_req_body(req, NULL, 0, true);
        s->state = H1_DONE_READING;
        tg_conn_timer_stop(s->conn);
        tg_worker_defer(s->conn->worker, &s->finish, NULL); /* may already be answered */
        return;
    }
    if (s->body_held > TG_REQ_BODY_HIGH_WATER && !s->paused) {
        /* The upstream is slow to take the body: the client waits for us, so
         * the body timeout does not run until reading resumes. */
        s->paused = true;
        tg_conn_read_stop(s->conn);
        tg_conn_timer_stop(s->conn);
    } else if (!s->paused) {
        tg_conn_timer(s->conn, s->cfg->limits.body_timeout_ms);
    }
}

static int fill_req(struct h1_sess *s, struct tg_req *req, const struct tg_h1_head *h)
{
    struct tg_arena *a = &req->arena;
    char *m = tg_arena_strndup(a, h->method.base, h->method.len);
    char *p = tg_arena_strndup(a, h->target.base, h->target.len);
    char *au = tg_arena_strndup(a, h->host.base, h->host.len);
    if (!m || !p || !au)
        return TG_E_NOMEM;
    req->method = tg_iov_make(m, h->method.len);
    req->path = tg_iov_make(p, h->target.len);
    req->authority = tg_iov_make(au, h->host.len);
    req->head_only = tg_iov_eq(req->method, TG_IOV_LIT("HEAD"));
    req->proto = TG_REQ_HTTP11;
    req->tls = s->conn->ssl != NULL;
    req->mtls_principal = s->conn->client_principal;
    req->listener = s->conn->listener->name;
    req->tls_version = s->conn->tls_version;
    memcpy(req->client_ip, s->conn->peer_ip, sizeof(req->client_ip));
    req->client_port = s->conn->peer_port;
    for (size_t i = 0; i < h->nheaders; i++) {
        struct tg_iov n = h->headers[i].name;
        /* Framing and Host are rebuilt by tollgate. */
        if (tg_iov_ieq(n, "host") || tg_iov_ieq(n, "content-length") ||
            tg_iov_ieq(n, "transfer-encoding") || tg_iov_ieq(n, "expect"))
            continue;
        int rv = tg_hlist_add(&req->headers, a, n, h->headers[i].value);
        if (rv)
            return rv;
    }
    req->has_body = h->body != TG_H1_BODY_NONE;
    req->content_length = h->body == TG_H1_BODY_LENGTH ? (int64_t)h->content_length
                          : h->body == TG_H1_BODY_NONE ? 0
                                                       : -1;
    return 0;
}

static void start_request(struct h1_sess *s, const struct tg_h1_head *h, size_t head_len)
{
    s->http10 = h->minor == 0;
    s->keep_alive = h->keep_alive && !s->draining;
    struct tg_req *req = tg_req_new(s->conn->worker, s->conn->worker->cfg, &req_ops, s);
    if (!req || fill_req(s, req, h) != 0) {
        tg_req_free(req);
        raw_error(s, 503, "unavailable", "out of memory");
        return;
    }
    if (h->body == TG_H1_BODY_LENGTH &&
        h->content_length > req->cfg->limits.max_body_bytes) {
        /* Refuse before reading it; the connection cannot be reused. */
        s->req = req;
        s->keep_alive = false;
        s->state = H1_BODY;
        tg_buf_consume(&s->in, head_len);
        req->outcome.reason = "limits.body_size";
        tg_req_reply_error(req, 413, "request_too_large",
                           "request body exceeds the configured max_body_bytes",
                           "limits.body_size");
        return;
    }
    bool expect = h->expect_continue && h->body != TG_H1_BODY_NONE && !s->http10;
    s->body_chunked = h->body == TG_H1_BODY_CHUNKED;
    s->body_left = h->body == TG_H1_BODY_LENGTH ? h->content_length : 0;
    tg_chunked_init(&s->chunked);
    tg_buf_consume(&s->in, head_len);
    s->req = req;
    s->state = req->has_body ? H1_BODY : H1_DONE_READING;
    if (req->has_body)
        tg_conn_timer(s->conn, s->cfg->limits.body_timeout_ms);
    else
        tg_conn_timer_stop(s->conn);
    if (expect) {
        struct tg_iov v = TG_IOV_LIT("HTTP/1.1 100 Continue\r\n\r\n");
        tg_conn_write(s->conn, &v, 1);
    }
    tg_req_start(req);
    if (s->state == H1_CLOSED || s->req != req)
        return;
    if (!req->has_body)
        tg_req_body(req, NULL, 0, true);
}

static void process(struct h1_sess *s)
{
    while (s->state != H1_CLOSED) {
        if (s->state == H1_HEAD) {
            if (!s->in.len)
                return;
            /* The parsed head points into s->in; it is used before s->in changes. */
            static _Thread_local struct tg_h1_head head;
            struct tg_h1_head *h = &head;
            ssize_t r =
                tg_h1_parse_head(s->in.base, s->in.len, s->cfg->limits.max_header_bytes, h);
            if (r == 0)
                return;
            if (r < 0) {
                int st = h->error_status;
                const char *why = h->error;
                tg_log_debug("h1", "rejected request head from %s: %s", s->conn->peer_ip,
                             why ? why : "malformed");
                raw_error(s, st ? st : 400, st == 431 ? "request_too_large" : "invalid_request",
                          why ? why : "malformed request");
                return;
            }
            start_request(s, h, (size_t)r);
            continue;
        }
        if (s->state == H1_BODY) {
            if (s->paused)
                return;
            size_t before = s->in.len;
            enum h1_state st = s->state;
            read_body(s);
            if (s->state == st && s->in.len == before)
                return;
            continue;
        }
        return; /* DONE_READING: keep pipelined bytes for later */
    }
}

/* --- the tg_conn side ---------------------------------------------------------------- */

static void on_read(struct tg_conn *c, const char *p, size_t n)
{
    struct h1_sess *s = c->sess;
    if (s->state == H1_CLOSED)
        return;
    if (s->state == H1_HEAD && s->idle) {
        s->idle = false;
        tg_conn_timer(c, s->cfg->limits.header_timeout_ms);
    }
    int rv = tg_buf_append(&s->in, p, n);
    if (rv == TG_E_TOO_LARGE) {
        if (s->state == H1_HEAD) {
            raw_error(s, 431, "request_too_large", "request head too large");
            return;
        }
        /* Pipelined bytes beyond the ceiling: stop reading until this exchange ends. */
        tg_conn_read_stop(c);
        size_t room = s->in.max - s->in.len;
        tg_buf_append(&s->in, p, room);
        /* The rest is lost: this connection cannot continue after the response. */
        s->keep_alive = false;
        return;
    } else if (rv) {
        raw_error(s, 503, "unavailable", "out of memory");
        return;
    }
    if (s->state == H1_DONE_READING && s->in.len > s->cfg->limits.max_header_bytes)
        tg_conn_read_stop(c); /* enough pipelined bytes held; resume after the response */
    /* The head parser keeps no state: re-run it only when a line may have
     * ended, so a client dribbling one byte per packet costs at most one scan
     * per header line, not one per byte. */
    if (s->state == H1_HEAD && !memchr(p, '\n', n) && s->in.len < s->cfg->limits.max_header_bytes)
        return;
    process(s);
}

static void on_eof(struct tg_conn *c, int err)
{
    struct h1_sess *s = c->sess;
    (void)err;
    if (s->req) {
        struct tg_req *req = s->req;
        s->req = NULL;
        tg_req_free(req); /* counts as client.aborted when the response did not end */
    }
    s->state = H1_CLOSED;
}

static void on_written(struct tg_conn *c)
{
    struct h1_sess *s = c->sess;
    if (!s->req || s->state == H1_CLOSED)
        return;
    size_t pending = tg_conn_pending(c);
    if (s->state == H1_DONE_READING && s->stall_armed) {
        /* Progress: the clock starts again, or stops once nothing waits. */
        if (pending > 0) {
            tg_conn_timer(c, s->cfg->limits.idle_timeout_ms);
        } else {
            s->stall_armed = false;
            tg_conn_timer_stop(c);
        }
    }
    if (pending < TG_REQ_RESP_LOW_WATER)
        tg_req_client_drained(s->req);
}

static void on_timer(struct tg_conn *c)
{
    struct h1_sess *s = c->sess;
    if (s->state == H1_HEAD && !s->idle && s->in.len) {
        raw_error(s, 408, "request_timeout", "request head not received in time");
        return;
    }
    if (s->state == H1_BODY && s->req && !s->req->resp_head_sent) {
        /* Answer first (send_head needs the session open), then close. */
        s->keep_alive = false;
        tg_conn_read_stop(c);
        tg_req_reply_error(s->req, 408, "request_timeout", "request body not received in time",
                           "limits.body_timeout");
        s->state = H1_CLOSED;
        tg_conn_close_after_write(c);
        return;
    }
    if (s->req && s->req->resp_head_sent && !s->req->resp_end_sent &&
        tg_conn_pending(c) > 0) {
        /* The client stopped reading the response for idle_timeout_ms. */
        tg_log_debug("h1", "client %s stopped reading; closing", c->peer_ip);
        if (!s->req->outcome.reason)
            s->req->outcome.reason = "client.stalled";
    }
    /* Idle keep-alive, header timeout with no byte, a stalled body after the
     * head, or a client that stopped reading. */
    on_eof(c, TG_E_TIMEOUT);
    tg_conn_close(c);
}

static void on_drain(struct tg_conn *c)
{
    struct h1_sess *s = c->sess;
    s->draining = true;
    s->keep_alive = false;
    if (!s->req) {
        s->state = H1_CLOSED;
        tg_conn_close(c);
    }
}

static void on_free(struct tg_conn *c)
{
    struct h1_sess *s = c->sess;
    if (s->req) {
        struct tg_req *req = s->req;
        s->req = NULL;
        tg_req_free(req); /* counts as client.aborted when the response did not end */
    }
    tg_worker_cancel(c->worker, &s->finish);
    tg_worker_cancel(c->worker, &s->process);
    tg_buf_dispose(&s->in);
    tg_config_unref(s->cfg);
    tg_mem_free(s);
    c->sess = NULL;
}

static const struct tg_sess_ops h1_ops = {
    .name = "h1",
    .on_read = on_read,
    .on_eof = on_eof,
    .on_written = on_written,
    .on_timer = on_timer,
    .on_drain = on_drain,
    .on_free = on_free,
};

int tg_h1_attach(struct tg_conn *c)
{
    struct h1_sess *s = tg_mem_calloc(1, sizeof(*s));
    if (!s)
        return TG_E_NOMEM;
    s->conn = c;
    s->cfg = tg_config_ref(c->worker->cfg);
    /* Head ceiling plus room for one body read of pipelined bytes. */
    tg_buf_init(&s->in, (size_t)s->cfg->limits.max_header_bytes + 65536);
    s->state = H1_HEAD;
    s->finish.fn = on_finish;
    s->process.fn = on_process;
    c->sess = s;
    c->sess_ops = &h1_ops;
    if (c->worker->draining)
        s->draining = true;
    return 0;
}
