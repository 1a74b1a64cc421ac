/*
 * conn.h - a client connection: TCP, optional TLS (memory BIOs), protocol
 * selection (ALPN on TLS, the h2 preface on plaintext), and the write path.
 *
 * The conn owns the session (h1 or h2) that runs on it and frees it in its
 * close callback.  Writes copy their bytes, so callers may reuse buffers at
 * once; they are gathered and written once per loop iteration.
 */
#ifndef TG_CONN_H
#define TG_CONN_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <uv.h>

#include "proxy/buf-t.h"
#include "proxy/worker.h"

struct tg_conn;
struct tg_listener;
struct tg_worker;

/* What a session (h1.c, h2.c) implements for its connection. */
struct tg_sess_ops {
    const char *name;                                            /* "h1" or "h2" */
    void (*on_read)(struct tg_conn *c, const char *p, size_t n); /* plaintext bytes */
    void (*on_eof)(struct tg_conn *c, int err);                  /* peer closed or read error */
    void (*on_written)(struct tg_conn *c);                       /* a write completed */
    void (*on_timer)(struct tg_conn *c);                         /* conn->timer fired */
    void (*on_drain)(struct tg_conn *c);                         /* graceful shutdown began */
    void (*on_free)(struct tg_conn *c);                          /* free the session */
};

struct tg_conn {
    uv_tcp_t tcp;                       /* the socket (first: handle data) */
    uv_timer_t timer;                   /* the session's timeout timer */
    unsigned pending_closes;            /* handles still closing */
    struct tg_worker *worker;           /* owner */
    struct tg_listener *listener;       /* accepted on */
    struct tg_conn *prev, *next;        /* worker's list */
    SSL *ssl;                           /* TLS state, NULL on plaintext */
    BIO *rbio, *wbio;                   /* memory BIOs of ssl */
    bool handshake_done;                /* TLS handshake finished */
    const struct tg_sess_ops *sess_ops; /* NULL until the protocol is chosen */
    void *sess;                         /* the session */
    char sniff[24];                     /* first bytes on plaintext, for the preface */
    size_t sniff_len;                   /* bytes in sniff */
    struct tg_buf out;                  /* plaintext bytes waiting for the deferred flush */
    struct tg_defer flush;              /* the deferred flush */
    struct tg_defer written;            /* on_written after a synchronous write */
    size_t inflight;                    /* bytes handed to uv_write, not yet written */
    bool reading;                       /* uv_read_start is active */
    bool want_read;                     /* the session wants bytes (not paused) */
    bool closing;                       /* close started */
    bool close_after_write;             /* close once write_pending reaches 0 */
    char peer_ip[48];                   /* peer address text */
    unsigned short peer_port;           /* peer port */
    const char *tls_version;            /* "TLSv1.3" or NULL */
    char *client_principal;             /* verified client certificate identity, or NULL */
};

/* Accept one connection from server on listener l.  0 or a negative error. */
int tg_conn_accept(struct tg_worker *w, struct tg_listener *l, uv_stream_t *server);
/* Queue bytes for the peer (copied; encrypted on TLS).  0 or a negative error. */
int tg_conn_write(struct tg_conn *c, const struct tg_iov *iov, unsigned n);
/* Bytes accepted by tg_conn_write and not yet written to the socket. */
size_t tg_conn_pending(const struct tg_conn *c);
/* Pause / resume delivering reads to the session. */
void tg_conn_read_stop(struct tg_conn *c);
void tg_conn_read_start(struct tg_conn *c);
/* Arm or stop the session timer. */
void tg_conn_timer(struct tg_conn *c, uint64_t ms);
void tg_conn_timer_stop(struct tg_conn *c);
/* Close now (queued writes are dropped).  Idempotent. */
void tg_conn_close(struct tg_conn *c);
#define TG_CONN_LINGER_MS 5000 /* longest wait for queued bytes after a close was decided */

/* Close once every queued write has completed, or after TG_CONN_LINGER_MS. */
void tg_conn_close_after_write(struct tg_conn *c);
/* Ask the session to drain (graceful shutdown). */
void tg_conn_drain(struct tg_conn *c);

#endif
