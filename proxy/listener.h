/*
 * listener.h - a listening socket of one worker (SO_REUSEPORT, so every
 * worker binds the same address and the kernel spreads connections).
 */
#ifndef TG_LISTENER_H
#define TG_LISTENER_H

#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

struct tg_cfg_listener;
struct tg_worker;

struct tg_listener {
    uv_tcp_t tcp;              /* listening socket */
    struct tg_worker *worker;  /* owner */
    struct tg_listener *next;  /* worker's list */
    char *name;                /* listener name (owned) */
    unsigned protocols;        /* enum tg_proto_bits */
    SSL_CTX *ssl_ctx;          /* TLS context, NULL on plaintext */
    bool closing;              /* uv_close started */
};

/* Process-wide count of client connections (max_connections). */
extern atomic_uint tg_listener_conns;

/*
 * Bind and listen for cfg on worker w.  On success *out is the new listener.
 * err receives a message on failure.  0 or a negative error.
 */
int tg_listener_open(struct tg_worker *w, const struct tg_cfg_listener *cfg,
                     struct tg_listener **out, char *err, size_t errlen);
/* Stop accepting and free l (asynchronously). */
void tg_listener_close(struct tg_listener *l);

#endif
