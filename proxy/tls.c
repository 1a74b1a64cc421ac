#include "proxy/tls.h"

#include <openssl/err.h>
#include <stdio.h>
#include <string.h>

#include <openssl/x509v3.h>

#include "config/config-t.h"
#include "proxy/mem.h"

static void ssl_err(char *err, size_t errlen, const char *what, const char *path)
{
    unsigned long e = ERR_get_error();
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    snprintf(err, errlen, "%s %s: %s", what, path ? path : "", e ? buf : "unknown error");
    ERR_clear_error();
}

/* ALPN selection: the client's list, our preference order (h2 first). */
static int on_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    unsigned protos = (unsigned)(uintptr_t)arg;
    static const unsigned char h2[] = "\x02h2";
    static const unsigned char h11[] = "\x08http/1.1";
    const unsigned char *prefs[2] = {NULL, NULL};
    int n = 0;
    if (protos & TG_PROTO_H2)
        prefs[n++] = h2;
    if (protos & TG_PROTO_HTTP11)
        prefs[n++] = h11;
    for (int i = 0; i < n; i++) {
        for (unsigned j = 0; j < inlen;) {
            unsigned len = in[j];
            if (j + 1 + len > inlen)
                break;
            if (len == prefs[i][0] && memcmp(in + j + 1, prefs[i] + 1, len) == 0) {
                *out = in + j + 1;
                *outlen = (unsigned char)len;
                return SSL_TLSEXT_ERR_OK;
            }
            j += 1 + len;
        }
    }
    /* No common protocol: go on without ALPN (HTTP/1.1) when it is allowed. */
    return (protos & TG_PROTO_HTTP11) ? SSL_TLSEXT_ERR_NOACK : SSL_TLSEXT_ERR_ALERT_FATAL;
}

SSL_CTX *tg_tls_ctx_new(const struct tg_cfg_tls *cfg, unsigned protos, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ssl_err(err, errlen, "SSL_CTX_new", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, cfg->min_version ? cfg->min_version : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->certificate_file) != 1) {
        ssl_err(err, errlen, "cannot load certificate", cfg->certificate_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->private_key_file, SSL_FILETYPE_PEM) != 1) {
        ssl_err(err, errlen, "cannot load private key", cfg->private_key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ssl_err(err, errlen, "private key does not match certificate", cfg->private_key_file);
        goto fail;
    }
    if (cfg->client_ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, cfg->client_ca_file, NULL) != 1) {
            ssl_err(err, errlen, "cannot load client CA", cfg->client_ca_file);
            goto fail;
        }
        int mode = SSL_VERIFY_PEER;
        if (cfg->require_client_cert)
            mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(ctx, mode, NULL);
    }
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn_select, (void *)(uintptr_t)protos);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

int tg_tls_is_h2(SSL *ssl)
{
    const unsigned char *p = NULL;
    unsigned int n = 0;
    SSL_get0_alpn_selected(ssl, &p, &n);
    return n == 2 && memcmp(p, "h2", 2) == 0;
}

/* A printable, control-free copy of an ASN.1 string, or NULL. */
static char *copy_name(const unsigned char *p, int n)
{
    if (!p || n <= 0 || n > 255)
        return NULL;
    for (int i = 0; i < n; i++)
        if (p[i] < 0x21 || p[i] > 0x7e)
            return NULL;
    return tg_mem_strndup((const char *)p, (size_t)n);
}

char *tg_tls_client_principal(SSL *ssl)
{
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (!cert || SSL_get_verify_result(ssl) != X509_V_OK)
        return NULL;
    char *out = NULL;
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int pass = 0; sans && !out && pass < 2; pass++) {
        for (int i = 0; !out && i < sk_GENERAL_NAME_num(sans); i++) {
            const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
            int want = pass == 0 ? GEN_URI : GEN_DNS;
            if (gn->type != want)
                continue;
            const ASN1_IA5STRING *s = want == GEN_URI ? gn->d.uniformResourceIdentifier
                                                      : gn->d.dNSName;
            out = copy_name(ASN1_STRING_get0_data(s), ASN1_STRING_length(s));
        }
    }
    GENERAL_NAMES_free(sans);
    if (out)
        return out;
    X509_NAME *subj = X509_get_subject_name(cert);
    int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
    if (idx < 0)
        return NULL;
    ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx));
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, cn);
    out = copy_name(utf8, n);
    OPENSSL_free(utf8);
    return out;
}

int tg_tls_prepare_config(struct tg_config *c, char *err, size_t errlen)
{
    for (size_t i = 0; i < c->nlisteners; i++) {
        struct tg_cfg_tls *t = c->listeners[i].tls;
        if (!t || t->ctx)
            continue;
        char terr[512];
        t->ctx = tg_tls_ctx_new(t, c->listeners[i].protocols, terr, sizeof(terr));
        if (!t->ctx) {
            snprintf(err, errlen, "%s: listeners[%zu].tls: %s", c->path, i, terr);
            return -1;
        }
    }
    return 0;
}
