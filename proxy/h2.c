/*
 * HTTP/2 server session on nghttp2 1.52 (THREATS §1.4 for the settings).
 *
 * Flow control both ways:
 *  - request bodies: automatic WINDOW_UPDATEs are off; bytes are consumed
 *    (nghttp2_session_consume) only when the upstream write that carried them
 *    completes, so a slow model server slows the client, never our memory;
 *  - responses: each stream has a bounded queue that the data provider reads;
 *    above the high-water mark the upstream read is stopped, and the provider
 *    returns NGHTTP2_ERR_DEFERRED when the queue is empty.
 *
 * Output is produced by one deferred flush per loop iteration, never from
 * inside calls made by the request or upstream code (STYLE §14), so
 * on_stream_close, which frees requests, never runs under their feet.
 */
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <string.h>

#include "config/config.h"
#include "proxy/buf.h"
#include "proxy/conn.h"
#include "proxy/listener.h"
#include "proxy/err.h"
#include "proxy/log.h"
#include "proxy/req.h"
#include "proxy/session.h"
#include "proxy/worker.h"

#define H2_MAX_HEADER_FIELDS 100
#define H2_STREAM_WINDOW (256 * 1024)
#define H2_CONN_WINDOW (1024 * 1024)
#define H2_SEND_HIGH_WATER (256 * 1024)
#define H2_PREMATURE_MIN_STREAMS 500

struct h2_sess;

struct h2_stream {
    struct h2_sess *s;          /* session */
    int32_t id;                 /* stream id */
    struct tg_req *req;         /* the exchange, NULL once freed */
    struct tg_bufq out;         /* response bytes waiting for the data provider */
    bool out_end;               /* the response end is in out */
    bool deferred;              /* the data provider returned DEFERRED */
    bool abort_after_data;      /* reset (INTERNAL_ERROR) once out is drained */
    uint64_t discarded;         /* request body bytes dropped after a local answer */
    bool end_sent;              /* our END_STREAM has left */
    bool head_sent;             /* response HEADERS submitted */
    bool started;               /* tg_req_start ran */
    size_t hdr_bytes;           /* header list size so far (name+value+32) */
    unsigned nhdr;              /* header fields so far */
    int bad_status;             /* 400/431 to answer once the head is complete, else 0 */
    const char *bad_why;        /* reason text for bad_status */
    bool have_method, have_path, have_scheme; /* pseudo-headers seen */
    struct tg_iov host;         /* host field if sent */
    size_t unconsumed;          /* DATA bytes received and not yet consumed */
    uint64_t began_ms;          /* loop time of the first HEADERS frame */
    uint64_t last_rx_ms;        /* loop time of the last request DATA */
    uint64_t last_tx_ms;        /* loop time the client last took response bytes */
    struct h2_stream *prev, *next; /* session's list of live streams */
};

struct h2_sess {
    struct tg_conn *conn;       /* transport */
    struct tg_config *cfg;      /* snapshot at accept */
    nghttp2_session *ng;        /* the nghttp2 session */
    struct tg_defer flush;      /* deferred output */
    bool h2c;                   /* plaintext prior knowledge */
    bool got_settings;          /* the client's first SETTINGS arrived */
    bool draining;              /* GOAWAY sent for shutdown */
    bool dead;                  /* closing: no more work */
    unsigned nstreams;          /* open streams with a request */
    unsigned closed_streams;    /* streams closed so far */
    unsigned premature;         /* closed by the peer before our response head */
    struct h2_stream *streams;  /* live streams (for teardown) */
    uint64_t last_write_ms;     /* loop time the socket last made progress */
    bool sweeping;              /* the timer is the per-stream sweep */
};

static void link_stream(struct h2_sess *s, struct h2_stream *st)
{
    st->next = s->streams;
    if (s->streams)
        s->streams->prev = st;
    s->streams = st;
}

static void unlink_stream(struct h2_sess *s, struct h2_stream *st)
{
    if (st->prev)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    st->prev = st->next = NULL;
}

static void schedule_flush(struct h2_sess *s)
{
    if (!s->dead)
        tg_worker_defer(s->conn->worker, &s->flush, NULL);
}

static uint64_t now_ms(struct h2_sess *s)
{
    return uv_now(&s->conn->worker->loop);
}

/*
 * One timer per connection: the idle timeout while no stream is open, else a
 * sweep every `tick` that applies the per-stream timeouts (see on_timer).
 */
static void update_timer(struct h2_sess *s)
{
    if (s->dead)
        return;
    if (!s->got_settings && s->nstreams == 0)
        return; /* the header timeout armed at accept still runs */
    if (s->nstreams == 0) {
        s->sweeping = false;
        tg_conn_timer(s->conn, s->cfg->limits.idle_timeout_ms);
        return;
    }
    if (s->sweeping)
        return;
    const struct tg_cfg_limits *l = &s->cfg->limits;
    uint64_t tick = l->header_timeout_ms;
    if (l->body_timeout_ms < tick)
        tick = l->body_timeout_ms;
    if (l->idle_timeout_ms < tick)
        tick = l->idle_timeout_ms;
    tick /= 4;
    if (tick > 1000)
        tick = 1000;
    if (tick < 20)
        tick = 20;
    s->sweeping = true;
    tg_conn_timer(s->conn, tick);
}

/* Send what nghttp2 has, until the socket's queue is full. */
static void flush(struct h2_sess *s)
{
    if (s->dead)
        return;
    /* nghttp2 hands out one frame (or frame header) at a time: they are
     * joined here so that a TLS connection gets full records, not one per
     * 9-byte frame header. */
    char buf[65536];
    size_t used = 0;
    if (tg_conn_pending(s->conn) == 0)
        s->last_write_ms = now_ms(s);
    while (tg_conn_pending(s->conn) < H2_SEND_HIGH_WATER) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(s->ng, &data);
        if (n < 0) {
            tg_log_debug("h2", "mem_send: %s", nghttp2_strerror((int)n));
            s->dead = true;
            tg_conn_close(s->conn);
            return;
        }
        if (n == 0)
            break;
        if (used + (size_t)n > sizeof(buf)) {
            struct tg_iov v = {buf, used};
            if (used && tg_conn_write(s->conn, &v, 1) < 0)
                goto fail;
            used = 0;
        }
        if ((size_t)n > sizeof(buf)) {
            struct tg_iov v = {(const char *)data, (size_t)n};
            if (tg_conn_write(s->conn, &v, 1) < 0)
                goto fail;
            continue;
        }
        memcpy(buf + used, data, (size_t)n);
        used += (size_t)n;
    }
    if (used) {
        struct tg_iov v = {buf, used};
        if (tg_conn_write(s->conn, &v, 1) < 0)
            goto fail;
    }
    if (!nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng)) {
        s->dead = true;
        tg_conn_close_after_write(s->conn);
    }
    return;
fail:
    s->dead = true;
    tg_conn_close(s->conn);
}

static void on_flush(struct tg_defer *d)
{
    flush(tg_container_of(d, struct h2_sess, flush));
}

/* --- the tg_req side ---------------------------------------------------------------- */

static ssize_t read_data(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)ng;
    (void)id;
    (void)ud;
    struct h2_stream *st = src->ptr;
    size_t n = tg_bufq_read(&st->out, buf, length);
    if (n == 0 && st->abort_after_data)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets: INTERNAL_ERROR */
    if (st->out.bytes == 0 && st->out_end) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        return (ssize_t)n;
    }
    if (n == 0) {
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    st->last_tx_ms = now_ms(st->s);
    if (st->req && st->out.bytes < TG_REQ_RESP_LOW_WATER)
        tg_req_client_drained(st->req);
    return (ssize_t)n;
}

static int send_head(struct tg_req *req, bool has_body)
{
    struct h2_stream *st = req->sess;
    struct h2_sess *s = st->s;
    if (s->dead)
        return TG_E_CLOSED;
    size_t n = req->resp_headers.n + 1;
    nghttp2_nv *nva = tg_arena_alloc(&req->arena, n * sizeof(*nva));
    char *status = tg_arena_alloc(&req->arena, 4);
    if (!nva || !status)
        return TG_E_NOMEM;
    snprintf(status, 4, "%03d", req->status);
    size_t k = 0;
    nva[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3,
                            NGHTTP2_NV_FLAG_NO_COPY_NAME};
    for (size_t i = 0; i < req->resp_headers.n; i++) {
        struct tg_header *h = &req->resp_headers.v[i];
        if (tg_header_is_hop_by_hop(h->name))
            continue;
        nva[k++] = (nghttp2_nv){(uint8_t *)h->name.base, (uint8_t *)h->value.base, h->name.len,
                                h->value.len, NGHTTP2_NV_FLAG_NONE};
    }
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = read_data};
    int rv = nghttp2_submit_response(s->ng, st->id, nva, k, has_body ? &prd : NULL);
    if (rv != 0)
        return TG_E_PROTO;
    st->head_sent = true;
    schedule_flush(s);
    return 0;
}

static int send_data(struct tg_req *req, const char *p, size_t n, bool end)
{
    struct h2_stream *st = req->sess;
    struct h2_sess *s = st->s;
    if (s->dead)
        return TG_E_CLOSED;
    if (st->out.bytes == 0)
        st->last_tx_ms = now_ms(s); /* the stall clock starts when bytes wait */
    if (n && tg_bufq_push(&st->out, p, n) != 0)
        return TG_E_NOMEM;
    if (end)
        st->out_end = true;
    if (st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(s->ng, st->id);
    }
    schedule_flush(s);
    return 0;
}

static size_t pending(struct tg_req *req)
{
    struct h2_stream *st = req->sess;
    return st->out.bytes;
}

static void abort_resp(struct tg_req *req)
{
    struct h2_stream *st = req->sess;
    if (st->s->dead)
        return;
    if (st->head_sent && !st->out_end) {
        /* Queue the reset behind what was relayed: an RST submitted now would
         * make nghttp2 drop the queued HEADERS and DATA.  The data provider
         * fails once the queue is empty, and nghttp2 resets the stream. */
        st->abort_after_data = true;
        if (st->deferred) {
            st->deferred = false;
            nghttp2_session_resume_data(st->s->ng, st->id);
        }
    } else {
        nghttp2_submit_rst_stream(st->s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    }
    schedule_flush(st->s);
}

static void body_consumed(struct tg_req *req, size_t n)
{
    struct h2_stream *st = req->sess;
    struct h2_sess *s = st->s;
    if (s->dead)
        return;
    if (n > st->unconsumed)
        n = st->unconsumed;
    st->unconsumed -= n;
    st->last_rx_ms = now_ms(s); /* the client may send again: its clock restarts */
    nghttp2_session_consume(s->ng, st->id, n);
    schedule_flush(s);
}

static const struct tg_req_sess_ops req_ops = {
    .send_head = send_head,
    .send_data = send_data,
    .pending = pending,
    .abort = abort_resp,
    .body_consumed = body_consumed,
};

/* --- nghttp2 callbacks ---------------------------------------------------------------- */

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct h2_sess *s = ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (s->draining) {
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    struct h2_stream *st = tg_mem_calloc(1, sizeof(*st));
    if (!st)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    st->s = s;
    st->id = frame->hd.stream_id;
    st->began_ms = st->last_rx_ms = st->last_tx_ms = now_ms(s);
    tg_bufq_init(&st->out);
    st->req = tg_req_new(s->conn->worker, s->conn->worker->cfg, &req_ops, st);
    if (!st->req) {
        tg_mem_free(st);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    struct tg_req *req = st->req;
    req->proto = s->h2c ? TG_REQ_H2C : TG_REQ_H2;
    req->tls = s->conn->ssl != NULL;
    req->mtls_principal = s->conn->client_principal;
    req->listener = s->conn->listener->name;
    req->tls_version = s->conn->tls_version;
    memcpy(req->client_ip, s->conn->peer_ip, sizeof(req->client_ip));
    req->client_port = s->conn->peer_port;
    nghttp2_session_set_stream_user_data(ng, st->id, st);
    link_stream(s, st);
    s->nstreams++;
    update_timer(s);
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud)
{
    (void)flags;
    (void)ud;
    struct h2_stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (!st || !st->req || st->started)
        return 0; /* trailers are dropped */
    struct tg_req *req = st->req;
    st->hdr_bytes += namelen + valuelen + 32;
    st->nhdr++;
    if (st->bad_status)
        return 0;
    if (st->hdr_bytes > st->s->cfg->limits.max_header_bytes || st->nhdr > H2_MAX_HEADER_FIELDS) {
        st->bad_status = 431;
        st->bad_why = "request header list too large";
        return 0;
    }
    struct tg_iov n = {(const char *)name, namelen}, v = {(const char *)value, valuelen};
    struct tg_arena *a = &req->arena;
    if (namelen && name[0] == ':') {
        char *copy = tg_arena_strndup(a, v.base, v.len);
        if (!copy)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        struct tg_iov c = {copy, v.len};
        if (tg_iov_eq(n, TG_IOV_LIT(":method"))) {
            req->method = c;
            st->have_method = true;
        } else if (tg_iov_eq(n, TG_IOV_LIT(":path"))) {
            req->path = c;
            st->have_path = true;
        } else if (tg_iov_eq(n, TG_IOV_LIT(":authority"))) {
            req->authority = c;
        } else if (tg_iov_eq(n, TG_IOV_LIT(":scheme"))) {
            st->have_scheme = true;
        }
        return 0;
    }
    if (tg_iov_eq(n, TG_IOV_LIT("host"))) {
        char *copy = tg_arena_strndup(a, v.base, v.len);
        if (!copy)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        st->host = tg_iov_make(copy, v.len);
        return 0;
    }
    if (tg_iov_eq(n, TG_IOV_LIT("content-length"))) {
        /* nghttp2 already checked it is one valid number. */
        int64_t cl = 0;
        for (size_t i = 0; i < valuelen; i++)
            cl = cl * 10 + (value[i] - '0');
        req->content_length = cl;
        return 0;
    }
    if (tg_iov_eq(n, TG_IOV_LIT("te")))
        return 0; /* only "trailers" gets here, and it is hop-by-hop */
    if (tg_iov_eq(n, TG_IOV_LIT("cookie"))) {
        /* RFC 9113 §8.2.3: crumbs are joined with "; " for HTTP/1.1. */
        for (size_t i = 0; i < req->headers.n; i++) {
            struct tg_header *h = &req->headers.v[i];
            if (!tg_iov_eq(h->name, TG_IOV_LIT("cookie")))
                continue;
            char *j = tg_arena_alloc(a, h->value.len + 2 + valuelen + 1);
            if (!j)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            memcpy(j, h->value.base, h->value.len);
            memcpy(j + h->value.len, "; ", 2);
            memcpy(j + h->value.len + 2, value, valuelen);
            j[h->value.len + 2 + valuelen] = '\0';
            h->value = tg_iov_make(j, h->value.len + 2 + valuelen);
            return 0;
        }
    }
    if (tg_hlist_add(&req->headers, a, n, v) != 0) {
        st->bad_status = 431;
        st->bad_why = "too many request header fields";
    }
    return 0;
}

static void start_stream(struct h2_sess *s, struct h2_stream *st, bool end_stream)
{
    struct tg_req *req = st->req;
    st->started = true;
    if (!st->host.base && !req->authority.base)
        req->authority = TG_IOV_LIT("");
    else if (!req->authority.base)
        req->authority = st->host;
    else if (st->host.base && !tg_iov_eq(st->host, req->authority)) {
        st->bad_status = 400;
        st->bad_why = "host differs from :authority";
    }
    if (!st->bad_status && (!st->have_method || !st->have_path || !st->have_scheme)) {
        st->bad_status = 400; /* CONNECT and other forms without :path */
        st->bad_why = "unsupported request form";
    }
    if (!st->bad_status && !tg_target_valid(req->path)) {
        st->bad_status = 400;
        st->bad_why = "invalid :path";
    }
    req->head_only = tg_iov_eq(req->method, TG_IOV_LIT("HEAD"));
    req->has_body = !end_stream;
    if (end_stream)
        req->content_length = 0;
    if (st->bad_status) {
        req->outcome.reason = "limits.invalid_request";
        tg_req_reply_error(req, st->bad_status,
                           st->bad_status == 431 ? "request_too_large" : "invalid_request",
                           st->bad_why, "limits.invalid_request");
        return;
    }
    if (req->content_length >= 0 && (uint64_t)req->content_length > s->cfg->limits.max_body_bytes) {
        tg_req_reply_error(req, 413, "request_too_large",
                           "request body exceeds the configured max_body_bytes",
                           "limits.body_size");
        return;
    }
    tg_req_start(req);
    if (end_stream && st->req)
        tg_req_body(req, NULL, 0, true);
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct h2_sess *s = ud;
    if (frame->hd.type == NGHTTP2_SETTINGS && !s->got_settings &&
        !(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
        s->got_settings = true;
        update_timer(s);
    }
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    struct h2_stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (!st || !st->req)
        return 0;
    bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
    if (frame->hd.type == NGHTTP2_HEADERS && !st->started) {
        start_stream(s, st, end);
        return 0;
    }
    if (end)
        tg_req_body(st->req, NULL, 0, true);
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    (void)flags;
    struct h2_sess *s = ud;
    struct h2_stream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (!st || !st->req) {
        nghttp2_session_consume(ng, id, len);
        schedule_flush(s);
        return 0;
    }
    st->unconsumed += len;
    st->last_rx_ms = now_ms(s);
    if (st->req->replied && st->end_sent) {
        /* Answered before the body ended: the rest is read and dropped (some
         * clients show no answer if the upload is reset), but only up to
         * max_body_bytes; then RST_STREAM(NO_ERROR), RFC 9113 §8.1. */
        st->discarded += len;
        if (st->discarded > s->cfg->limits.max_body_bytes)
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_NO_ERROR);
    }
    tg_req_body(st->req, (const char *)data, len, false);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *ud)
{
    struct h2_sess *s = ud;
    struct h2_stream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (!st)
        return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    s->closed_streams++;
    if (!st->head_sent && error_code != NGHTTP2_NO_ERROR)
        s->premature++;
    if (st->unconsumed)
        nghttp2_session_consume_connection(ng, st->unconsumed);
    if (st->req) {
        struct tg_req *req = st->req;
        st->req = NULL;
        if (!st->started && error_code == NGHTTP2_PROTOCOL_ERROR && !req->outcome.reason) {
            /* nghttp2 refused a malformed request head (RFC 9113 §8.1.1). */
            req->outcome.reason = "limits.invalid_request";
            req->outcome.denied = true;
        }
        if (!req->resp_end_sent || st->out.bytes || !st->out_end)
            tg_req_client_abort(req);
        tg_req_free(req);
    }
    tg_bufq_dispose(&st->out);
    unlink_stream(s, st);
    tg_mem_free(st);
    s->nstreams--;
    update_timer(s);
    /* Rapid-reset defence (CVE-2023-44487, THREATS §1.3): mostly premature closes. */
    if (s->closed_streams >= H2_PREMATURE_MIN_STREAMS && s->premature * 2 > s->closed_streams &&
        !s->draining) {
        tg_log_warn("h2", "too many premature stream resets from %s; closing",
                    s->conn->peer_ip);
        nghttp2_session_terminate_session(ng, NGHTTP2_ENHANCE_YOUR_CALM);
        s->draining = true;
    }
    if (s->draining && s->nstreams == 0)
        schedule_flush(s);
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    (void)ud;
    if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        struct h2_stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
        if (st)
            st->end_sent = true;
    }
    return 0;
}

/* --- the tg_conn side ---------------------------------------------------------------- */

static void on_read(struct tg_conn *c, const char *p, size_t n)
{
    struct h2_sess *s = c->sess;
    if (s->dead)
        return;
    ssize_t r = nghttp2_session_mem_recv(s->ng, (const uint8_t *)p, n);
    if (r < 0) {
        tg_log_debug("h2", "closing connection from %s: %s", c->peer_ip,
                     nghttp2_strerror((int)r));
        if (r != NGHTTP2_ERR_BAD_CLIENT_MAGIC)
            nghttp2_session_terminate_session(s->ng, (r == NGHTTP2_ERR_FLOODED ||
                                                      r == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS)
                                                         ? NGHTTP2_ENHANCE_YOUR_CALM
                                                         : NGHTTP2_PROTOCOL_ERROR);
        flush(s);
        s->dead = true;
        tg_conn_close_after_write(c);
        return;
    }
    schedule_flush(s);
}

static void on_eof(struct tg_conn *c, int err)
{
    (void)err;
    struct h2_sess *s = c->sess;
    s->dead = true; /* streams are aborted as the session is freed */
}

static void on_written(struct tg_conn *c)
{
    struct h2_sess *s = c->sess;
    s->last_write_ms = now_ms(s);
    if (!s->dead && (nghttp2_session_want_write(s->ng) || tg_conn_pending(s->conn) == 0))
        schedule_flush(s);
}

static void terminate(struct h2_sess *s, uint32_t code)
{
    nghttp2_session_terminate_session(s->ng, code);
    flush(s);
    s->dead = true;
    tg_conn_close_after_write(s->conn);
}

static void on_timer(struct tg_conn *c)
{
    struct h2_sess *s = c->sess;
    if (s->dead)
        return;
    if (s->nstreams == 0) {
        /* Header timeout (no preface/SETTINGS in time) or idle connection. */
        terminate(s, NGHTTP2_NO_ERROR);
        return;
    }
    const struct tg_cfg_limits *l = &s->cfg->limits;
    uint64_t now = now_ms(s);
    if (tg_conn_pending(c) > 0 && now - s->last_write_ms >= l->idle_timeout_ms) {
        /* The client stopped reading the connection altogether. */
        tg_log_debug("h2", "client %s stopped reading; closing", c->peer_ip);
        on_eof(c, TG_E_TIMEOUT);
        tg_conn_close(c);
        return;
    }
    for (struct h2_stream *st = s->streams, *next; st; st = next) {
        next = st->next;
        struct tg_req *req = st->req;
        if (!st->started) {
            if (now - st->began_ms >= l->header_timeout_ms) {
                /* HEADERS without END_HEADERS, then silence (slow CONTINUATION). */
                terminate(s, NGHTTP2_ENHANCE_YOUR_CALM);
                return;
            }
            continue;
        }
        if (!req)
            continue;
        if (req->has_body && !req->body_in_end && st->unconsumed == 0 &&
            now - st->last_rx_ms >= l->body_timeout_ms) {
            /* (With credit held back for a slow upstream, the wait is ours.) */
            if (req->replied)
                nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
            else if (!req->resp_head_sent)
                tg_req_reply_error(req, 408, "request_timeout",
                                   "request body not received in time", "limits.body_timeout");
            else
                nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
            continue;
        }
        if (st->head_sent && st->out.bytes > 0 && now - st->last_tx_ms >= l->idle_timeout_ms) {
            /* Response bytes wait and the client's window stays shut. */
            if (!req->outcome.reason)
                req->outcome.reason = "client.stalled";
            nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        }
    }
    schedule_flush(s);
    s->sweeping = false;
    update_timer(s);
}

static void on_drain(struct tg_conn *c)
{
    struct h2_sess *s = c->sess;
    if (s->dead || s->draining)
        return;
    s->draining = true;
    nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    if (s->nstreams == 0) {
        flush(s);
        s->dead = true;
        tg_conn_close_after_write(c);
        return;
    }
    schedule_flush(s);
}

static void on_free(struct tg_conn *c)
{
    struct h2_sess *s = c->sess;
    s->dead = true;
    tg_worker_cancel(c->worker, &s->flush);
    /* nghttp2_session_del does not call on_stream_close: end the live streams here. */
    while (s->streams) {
        struct h2_stream *st = s->streams;
        unlink_stream(s, st);
        nghttp2_session_set_stream_user_data(s->ng, st->id, NULL);
        if (st->req) {
            if (!st->req->resp_end_sent || st->out.bytes)
                tg_req_client_abort(st->req);
            tg_req_free(st->req);
        }
        tg_bufq_dispose(&st->out);
        tg_mem_free(st);
        s->nstreams--;
    }
    nghttp2_session_del(s->ng);
    tg_config_unref(s->cfg);
    tg_mem_free(s);
    c->sess = NULL;
}

static const struct tg_sess_ops h2_ops = {
    .name = "h2",
    .on_read = on_read,
    .on_eof = on_eof,
    .on_written = on_written,
    .on_timer = on_timer,
    .on_drain = on_drain,
    .on_free = on_free,
};

static nghttp2_session_callbacks *callbacks;
static nghttp2_option *options;
static uv_once_t once = UV_ONCE_INIT;

static void init_once(void)
{
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, on_frame_send);
    nghttp2_option_new(&options);
    nghttp2_option_set_no_auto_window_update(options, 1);
    nghttp2_option_set_no_closed_streams(options, 1);
    nghttp2_option_set_max_continuations(options, 8);
    nghttp2_option_set_stream_reset_rate_limit(options, 200, 20);
    nghttp2_option_set_max_outbound_ack(options, 1000);
    nghttp2_option_set_max_settings(options, 32);
    nghttp2_option_set_max_deflate_dynamic_table_size(options, 4096);
}

int tg_h2_attach(struct tg_conn *c, int h2c)
{
    uv_once(&once, init_once);
    if (!callbacks || !options)
        return TG_E_NOMEM;
    struct h2_sess *s = tg_mem_calloc(1, sizeof(*s));
    if (!s)
        return TG_E_NOMEM;
    s->conn = c;
    s->cfg = tg_config_ref(c->worker->cfg);
    s->h2c = h2c != 0;
    s->flush.fn = on_flush;
    s->last_write_ms = uv_now(&c->worker->loop);
    if (nghttp2_session_server_new2(&s->ng, callbacks, s, options) != 0) {
        tg_config_unref(s->cfg);
        tg_mem_free(s);
        return TG_E_NOMEM;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->cfg->limits.max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, s->cfg->limits.max_header_bytes},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
    };
    nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW);
    c->sess = s;
    c->sess_ops = &h2_ops;
    if (c->worker->draining)
        on_drain(c);
    schedule_flush(s);
    return 0;
}
