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

/* The negotiated ALPN protocol is h2. */
int tg_tls_is_h2(SSL *ssl);

#endif
