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

struct tg_listener_name {
    struct tg_listener_name *next; /* older */
    char *name;                    /* owned */
};

struct tg_listener {
    uv_tcp_t tcp;              /* listening socket */
    struct tg_worker *worker;  /* owner */
    struct tg_listener *next;  /* worker's list */
    char *name;                /* listener name (owned) */
    struct tg_listener_name *old_names; /* names before reloads (requests may point at them) */
    unsigned protocols;        /* enum tg_proto_bits */
    SSL_CTX *ssl_ctx;          /* TLS context (a reference), NULL on plaintext */
    struct sockaddr_storage addr; /* bound address, the identity kept across reloads */
    unsigned refs;             /* connections accepted on it and still open */
    bool closing;              /* uv_close started */
    bool closed;               /* its handle is closed: freed when refs reach 0 */
};

/* Process-wide count of client connections (max_connections). */
extern atomic_uint tg_listener_conns;

/*
 * Bind and listen for cfg on worker w.  On success *out is the new listener.
 * err receives a message on failure.  0 or a negative error.
 */
int tg_listener_open(struct tg_worker *w, const struct tg_cfg_listener *cfg,
                     struct tg_listener **out, char *err, size_t errlen);
/* Stop accepting; l is freed once closed and its last connection is gone. */
void tg_listener_close(struct tg_listener *l);
/* A connection on l closed (drops the reference tg_conn_accept took). */
void tg_listener_unref(struct tg_listener *l);
/* Take cfg's protocols, name and TLS context for the connections accepted from now on. */
int tg_listener_update(struct tg_listener *l, const struct tg_cfg_listener *cfg);
/* True when l is bound to cfg's address. */
bool tg_listener_same_addr(const struct tg_listener *l, const struct tg_cfg_listener *cfg);

#endif
