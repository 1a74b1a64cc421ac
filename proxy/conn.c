/*
 * TLS runs over memory BIOs so that libuv keeps owning the socket: ciphertext
 * read from the socket is written into rbio, SSL_read yields plaintext for the
 * session, and whatever SSL_write or the handshake leaves in wbio is flushed
 * with one uv_write.
 */
#include "proxy/conn.h"

#include <openssl/err.h>
#include <stdio.h>
#include <string.h>

#include "config/config-t.h"
#include "proxy/buf.h"
#include "proxy/err.h"
#include "proxy/listener.h"
#include "proxy/log.h"
#include "proxy/mem.h"
#include "proxy/metrics.h"
#include "proxy/session.h"
#include "proxy/tls.h"
#include "proxy/worker.h"

#define READ_BUF 65536

static const char h2_preface[24] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

struct write_req {
    uv_write_t req; /* libuv request */
    size_t len;     /* bytes in data */
    char *data;     /* owned bytes */
};

size_t tg_conn_pending(const struct tg_conn *c)
{
    size_t queued = c->ssl ? BIO_ctrl_pending(c->wbio) : c->out.len;
    return c->inflight + queued;
}

static void on_handle_closed(uv_handle_t *h)
{
    struct tg_conn *c = h->data;
    if (--c->pending_closes > 0)
        return;
    if (c->sess_ops && c->sess_ops->on_free)
        c->sess_ops->on_free(c);
    if (c->ssl)
        SSL_free(c->ssl); /* frees both BIOs */
    tg_buf_dispose(&c->out);
    tg_mem_free(c->client_principal);
    struct tg_worker *w = c->worker;
    struct tg_listener *l = c->listener;
    tg_mem_free(c);
    tg_listener_unref(l);
    atomic_fetch_sub(&tg_listener_conns, 1);
    if (w->metrics)
        atomic_store_explicit(&w->metrics->connections_open,
                              atomic_load_explicit(&w->metrics->connections_open,
                                                   memory_order_relaxed) - 1,
                              memory_order_relaxed);
    tg_worker_conn_gone(w);
}

void tg_conn_close(struct tg_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    tg_worker_cancel(c->worker, &c->flush);
    tg_worker_cancel(c->worker, &c->written);
    /* Unlink now so a drain never visits a closing conn. */
    if (c->prev)
        c->prev->next = c->next;
    else
        c->worker->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->worker->nconns--;
    c->pending_closes = 2;
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void on_write(uv_write_t *wr, int status)
{
    struct write_req *r = (struct write_req *)wr;
    struct tg_conn *c = wr->data;
    c->inflight -= r->len;
    tg_mem_free(r->data);
    tg_mem_free(r);
    if (c->closing)
        return;
    if (status < 0) {
        /* The peer is gone; the session learns it through on_eof. */
        if (c->sess_ops && c->sess_ops->on_eof)
            c->sess_ops->on_eof(c, status);
        tg_conn_close(c);
        return;
    }
    if (c->close_after_write && tg_conn_pending(c) == 0) {
        tg_conn_close(c);
        return;
    }
    if (c->sess_ops && c->sess_ops->on_written)
        c->sess_ops->on_written(c);
}

/* A write completed synchronously: tell the session from the check phase. */
static void on_written_deferred(struct tg_defer *d)
{
    struct tg_conn *c = tg_container_of(d, struct tg_conn, written);
    if (c->closing)
        return;
    if (c->close_after_write && tg_conn_pending(c) == 0) {
        tg_conn_close(c);
        return;
    }
    if (c->sess_ops && c->sess_ops->on_written)
        c->sess_ops->on_written(c);
}

/* Hand everything queued to the kernel in one uv_write. */
static int flush_now(struct tg_conn *c)
{
    if (c->closing)
        return TG_E_CLOSED;
    char *data;
    size_t len;
    if (c->ssl) {
        len = BIO_ctrl_pending(c->wbio);
        if (len == 0)
            return 0;
        data = tg_mem_malloc(len);
        if (!data)
            return TG_E_NOMEM;
        int got = BIO_read(c->wbio, data, (int)len);
        if (got <= 0) {
            tg_mem_free(data);
            return TG_E_TLS;
        }
        len = (size_t)got;
    } else {
        if (c->out.len == 0)
            return 0;
        data = c->out.base; /* take the buffer itself: no copy */
        len = c->out.len;
        c->out.base = NULL;
        c->out.len = c->out.cap = 0;
    }
    /* Try the socket directly first: a write the kernel takes whole needs no
     * request, no completion callback and no epoll_ctl (libuv re-arms the
     * watcher each time a queued write drains). */
    uv_buf_t b = uv_buf_init(data, (unsigned)len);
    int done = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (done == (int)len) {
        tg_mem_free(data);
        if (c->sess_ops && c->sess_ops->on_written)
            tg_worker_defer(c->worker, &c->written, NULL);
        return 0;
    }
    if (done > 0) {
        memmove(data, data + done, len - (size_t)done);
        len -= (size_t)done;
        b = uv_buf_init(data, (unsigned)len);
    } else if (done != UV_EAGAIN && done != UV_ENOSYS) {
        tg_mem_free(data);
        return done;
    }
    struct write_req *r = tg_mem_malloc(sizeof(*r));
    if (!r) {
        tg_mem_free(data);
        return TG_E_NOMEM;
    }
    r->data = data;
    r->len = len;
    r->req.data = c;
    int rv = uv_write(&r->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rv < 0) {
        tg_mem_free(data);
        tg_mem_free(r);
        return rv;
    }
    c->inflight += len;
    return 0;
}

static void on_flush(struct tg_defer *d)
{
    struct tg_conn *c = tg_container_of(d, struct tg_conn, flush);
    int rv = flush_now(c);
    if (rv < 0 && !c->closing) {
        if (c->sess_ops && c->sess_ops->on_eof)
            c->sess_ops->on_eof(c, rv);
        tg_conn_close(c);
    }
}

static void on_linger(uv_timer_t *t)
{
    tg_conn_close(tg_container_of(t, struct tg_conn, timer));
}

void tg_conn_close_after_write(struct tg_conn *c)
{
    if (c->closing)
        return;
    tg_worker_cancel(c->worker, &c->flush);
    flush_now(c);
    if (tg_conn_pending(c) == 0) {
        tg_conn_close(c);
        return;
    }
    c->close_after_write = true;
    /* A peer that never reads does not hold the socket forever. */
    uv_timer_start(&c->timer, on_linger, TG_CONN_LINGER_MS, 0);
}

/*
 * Writes are gathered and handed to the kernel once per loop iteration (from
 * the worker's check phase), so a response head and its first body bytes, or
 * the SSE events of one upstream read, leave in one system call.
 */
int tg_conn_write(struct tg_conn *c, const struct tg_iov *iov, unsigned n)
{
    if (c->closing)
        return TG_E_CLOSED;
    if (!c->ssl) {
        for (unsigned i = 0; i < n; i++) {
            int rv = tg_buf_append(&c->out, iov[i].base, iov[i].len);
            if (rv)
                return rv;
        }
        tg_worker_defer(c->worker, &c->flush, on_flush);
        return 0;
    }
    /* One TLS record per call where possible: small pieces are joined first. */
    char join[16384];
    size_t used = 0;
    for (unsigned i = 0; i <= n; i++) {
        bool last = i == n;
        size_t len = last ? 0 : iov[i].len;
        if (used && (last || used + len > sizeof(join))) {
            if (SSL_write(c->ssl, join, (int)used) <= 0) {
                ERR_clear_error();
                return TG_E_TLS;
            }
            used = 0;
        }
        if (last || len == 0)
            continue;
        if (len <= sizeof(join)) {
            memcpy(join + used, iov[i].base, len);
            used += len;
        } else if (SSL_write(c->ssl, iov[i].base, (int)len) <= 0) {
            ERR_clear_error();
            return TG_E_TLS;
        }
    }
    tg_worker_defer(c->worker, &c->flush, on_flush);
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    (void)h;
    /* One buffer per worker would do; a static per thread is simplest. */
    static _Thread_local char rbuf[READ_BUF];
    *buf = uv_buf_init(rbuf, sizeof(rbuf));
}

static void deliver(struct tg_conn *c, const char *p, size_t n);

/* Plaintext listener: look at the first bytes for the HTTP/2 preface. */
static void sniff(struct tg_conn *c, const char *p, size_t n)
{
    unsigned protos = c->listener->protocols;
    size_t take = sizeof(c->sniff) - c->sniff_len;
    if (take > n)
        take = n;
    memcpy(c->sniff + c->sniff_len, p, take);
    c->sniff_len += take;
    bool match = memcmp(c->sniff, h2_preface, c->sniff_len) == 0;
    if (match && c->sniff_len < sizeof(c->sniff))
        return; /* could still be the preface */
    int rv;
    if (match && (protos & TG_PROTO_H2C))
        rv = tg_h2_attach(c, 1);
    else if (protos & TG_PROTO_HTTP11)
        rv = tg_h1_attach(c);
    else
        rv = TG_E_PROTO; /* h2c-only listener and no preface */
    if (rv < 0) {
        tg_conn_close(c);
        return;
    }
    char tmp[sizeof(c->sniff)];
    size_t sl = c->sniff_len;
    memcpy(tmp, c->sniff, sl);
    c->sess_ops->on_read(c, tmp, sl);
    if (!c->closing && n > take)
        c->sess_ops->on_read(c, p + take, n - take);
}

static void tls_fail(struct tg_conn *c, const char *what)
{
    unsigned long e = ERR_peek_error();
    char buf[160] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    tg_log_debug("tls", "%s from %s:%u: %s", what, c->peer_ip, c->peer_port, buf);
    ERR_clear_error();
    flush_now(c); /* send the alert, if any */
    tg_conn_close_after_write(c);
}

static void tls_read(struct tg_conn *c, const char *p, size_t n)
{
    if (BIO_write(c->rbio, p, (int)n) != (int)n) {
        tls_fail(c, "BIO_write");
        return;
    }
    if (!c->handshake_done) {
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                flush_now(c);
                return;
            }
            tls_fail(c, "handshake failed");
            return;
        }
        c->handshake_done = true;
        c->tls_version = SSL_get_version(c->ssl);
        c->client_principal = tg_tls_client_principal(c->ssl);
        int rv;
        if (tg_tls_is_h2(c->ssl))
            rv = tg_h2_attach(c, 0);
        else if (c->listener->protocols & TG_PROTO_HTTP11)
            rv = tg_h1_attach(c);
        else
            rv = TG_E_PROTO;
        if (rv < 0) {
            tg_conn_close(c);
            return;
        }
        flush_now(c);
    }
    char buf[16384];
    while (!c->closing) {
        int r = SSL_read(c->ssl, buf, sizeof(buf));
        if (r > 0) {
            c->sess_ops->on_read(c, buf, (size_t)r);
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            c->sess_ops->on_eof(c, UV_EOF);
            if (!c->closing)
                tg_conn_close(c);
            return;
        }
        tls_fail(c, "read failed");
        if (c->sess_ops->on_eof)
            c->sess_ops->on_eof(c, TG_E_TLS);
        return;
    }
    if (!c->closing)
        flush_now(c);
}

static void deliver(struct tg_conn *c, const char *p, size_t n)
{
    if (c->ssl)
        tls_read(c, p, n);
    else if (!c->sess_ops)
        sniff(c, p, n);
    else
        c->sess_ops->on_read(c, p, n);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct tg_conn *c = s->data;
    if (c->closing)
        return;
    if (nread < 0) {
        if (c->sess_ops && c->sess_ops->on_eof)
            c->sess_ops->on_eof(c, (int)nread);
        if (!c->closing)
            tg_conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    deliver(c, buf->base, (size_t)nread);
}

void tg_conn_read_stop(struct tg_conn *c)
{
    c->want_read = false;
    if (c->reading && !c->closing) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

void tg_conn_read_start(struct tg_conn *c)
{
    c->want_read = true;
    if (!c->reading && !c->closing) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = true;
    }
}

static void on_timer(uv_timer_t *t)
{
    struct tg_conn *c = tg_container_of(t, struct tg_conn, timer);
    if (c->closing)
        return;
    if (c->sess_ops && c->sess_ops->on_timer)
        c->sess_ops->on_timer(c);
    else
        tg_conn_close(c); /* no protocol yet: the header timeout */
}

void tg_conn_timer(struct tg_conn *c, uint64_t ms)
{
    if (!c->closing && !c->close_after_write)
        uv_timer_start(&c->timer, on_timer, ms, 0);
}

void tg_conn_timer_stop(struct tg_conn *c)
{
    if (!c->closing && !c->close_after_write)
        uv_timer_stop(&c->timer);
}

void tg_conn_drain(struct tg_conn *c)
{
    if (c->closing)
        return;
    if (c->sess_ops && c->sess_ops->on_drain)
        c->sess_ops->on_drain(c);
    else
        tg_conn_close(c);
}

int tg_conn_accept(struct tg_worker *w, struct tg_listener *l, uv_stream_t *server)
{
    struct tg_conn *c = tg_mem_calloc(1, sizeof(*c));
    if (!c)
        return TG_E_NOMEM;
    c->worker = w;
    c->listener = l;
    l->refs++;
    atomic_fetch_add(&tg_listener_conns, 1);
    if (w->metrics) {
        tg_counter_add(&w->metrics->connections_accepted, 1);
        atomic_store_explicit(&w->metrics->connections_open,
                              atomic_load_explicit(&w->metrics->connections_open,
                                                   memory_order_relaxed) + 1,
                              memory_order_relaxed);
    }
    uv_tcp_init(&w->loop, &c->tcp);
    uv_timer_init(&w->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    /* The output ceiling is a safety net: sessions stop producing at their
     * high-water marks long before it. */
    tg_buf_init(&c->out, 64u * 1024u * 1024u);
    c->flush.fn = on_flush;
    c->written.fn = on_written_deferred;
    /* Link first so tg_conn_close can unlink on every path. */
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    int rv = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rv < 0) {
        tg_conn_close(c);
        return rv;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            uv_ip4_name(a, c->peer_ip, sizeof(c->peer_ip));
            c->peer_port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            uv_ip6_name(a, c->peer_ip, sizeof(c->peer_ip));
            c->peer_port = ntohs(a->sin6_port);
        }
    }
    if (l->ssl_ctx) {
        c->ssl = SSL_new(l->ssl_ctx);
        c->rbio = BIO_new(BIO_s_mem());
        c->wbio = BIO_new(BIO_s_mem());
        if (!c->ssl || !c->rbio || !c->wbio) {
            BIO_free(c->rbio);
            BIO_free(c->wbio);
            c->rbio = c->wbio = NULL;
            tg_conn_close(c);
            return TG_E_NOMEM;
        }
        SSL_set_bio(c->ssl, c->rbio, c->wbio);
        SSL_set_accept_state(c->ssl);
    }
    /* Until a session takes over, the timer is the header timeout. */
    tg_conn_timer(c, w->cfg->limits.header_timeout_ms);
    tg_conn_read_start(c);
    return 0;
}
