/*
 * tls.h - OpenSSL server contexts for TLS listeners.
 */
#ifndef TG_TLS_H
#define TG_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>

struct tg_cfg_tls;

/*
 * New server SSL_CTX from cfg: certificate chain and key (checked to
 * match), minimum version, no renegotiation, no compression, ALPN offering
 * the protocols in protos (enum tg_proto_bits; h2 preferred), client
 * certificates against client_ca_file when set.  NULL with a message in err.
 */
SSL_CTX *tg_tls_ctx_new(const struct tg_cfg_tls *cfg, unsigned protos, char *err, size_t errlen);

/*
 * The identity of a verified client certificate (SPEC §3: the first URI or
 * DNS subjectAltName, else the subject CN), as a new tg_mem string, or NULL
 * when the peer sent no certificate or it did not verify.
 */
char *tg_tls_client_principal(SSL *ssl);

struct tg_config;
/*
 * Build the server context of every TLS listener of c (stored in
 * c->listeners[i].tls->ctx, freed with the snapshot), so broken
 * certificates or keys are found before the snapshot is used.  Call before
 * the snapshot is shared.  0, or -1 with "FILE: listeners[i].tls: reason".
 */
int tg_tls_prepare_config(struct tg_config *c, char *err, size_t errlen);

/* The negotiated ALPN protocol is h2. */
int tg_tls_is_h2(SSL *ssl);

#endif
