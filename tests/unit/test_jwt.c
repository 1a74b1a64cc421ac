/*
 * test_jwt.c - JWS verification, JWKS loading and the verified-token cache
 * (filters/jwt.c).
 *
 * Keys are generated here with EVP (RSA 2048, EC P-256 / P-384, Ed25519 and a
 * 32-byte HMAC secret), written as JWKS files to a temporary directory, and
 * tokens are signed here with EVP, so every case in the tables below is a
 * real signature over the exact header and payload text of its row.  The
 * rows follow THREATS §3.2 (J1..J32) where they apply to a verifier.  The
 * PyJWT-made fixtures in $TG_TEST_DATA/jwt (make-fixtures.py) are checked too,
 * as an interop test against an independent implementation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tg_test.h"

#include <limits.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "filters/jwt.h"
#include "proxy/mem.h"

#define NOW_S 1750000000LL
#define NOW_MS (NOW_S * 1000)

/* ------------------------------------------------------------------------------------------ */
/* Fixture: keys, JWKS files, issuers                                                         */

static EVP_PKEY *k_rsa, *k_rsa_b, *k_ec256, *k_ec384, *k_ed, *k_rsa1024;
static unsigned char k_hs[32];
static char tmpdir[64];
static char data_dir[PATH_MAX];

/* base64url of the public parts, for building JWKS text */
static char rsa_n[400], rsa_e[16], rsa_b_n[400], rsa_b_e[16], rsa1024_n[200];
static char ec256_x[64], ec256_y[64], ec384_x[80], ec384_y[80], ed_x[64], hs_k[64];
static char rsa_n0[400]; /* n with a leading zero octet */

static struct tg_jwks *jwks_a, *jwks_b, *jwks_c;
static const char *const aud_a[] = {"tollgate", "other"};
static struct tg_jwt_issuer issuers[3];

#define ALL_ALGS ((1u << TG_JWT_ALG_COUNT) - 1)

static void b64url(const unsigned char *in, size_t n, char *out, size_t cap)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            assert_true(o + 1 < cap);
            out[o++] = tab[(acc >> bits) & 63];
        }
    }
    if (bits > 0) {
        assert_true(o + 1 < cap);
        out[o++] = tab[(acc << (6 - bits)) & 63];
    }
    out[o] = '\0';
}

static void bn_param_b64(EVP_PKEY *k, const char *name, size_t pad, char *out, size_t cap)
{
    BIGNUM *bn = NULL;
    unsigned char buf[1024];
    assert_int_equal(EVP_PKEY_get_bn_param(k, name, &bn), 1);
    int n = pad ? BN_bn2binpad(bn, buf, (int)pad) : BN_bn2bin(bn, buf);
    assert_true(n > 0);
    b64url(buf, (size_t)n, out, cap);
    BN_clear_free(bn);
}

static void write_file(const char *name, const char *text, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static struct tg_jwks *load_text(const char *name, const char *text)
{
    char path[PATH_MAX], err[512];
    write_file(name, text, path, sizeof(path));
    struct tg_jwks *j = tg_jwks_load(path, err, sizeof(err));
    if (!j)
        fail_msg("%s: %s", name, err);
    return j;
}

/* JWK member lists, reused by the JWKS-error table. */
static char jwk_rsa[600], jwk_rsa_ps[600], jwk_ec256[300], jwk_ec384[300], jwk_ed[200], jwk_hs[200],
    jwk_rsa_b[600], jwk_rsa1024[400];

/* $TG_TEST_DATA, else tests/data next to this file. */
static void init_data_dir(void)
{
    const char *env = getenv("TG_TEST_DATA");
    if (env && *env) {
        snprintf(data_dir, sizeof(data_dir), "%s", env);
        return;
    }
    const char *slash = strrchr(__FILE__, '/');
    int dl = slash ? (int)(slash - __FILE__) : 1;
    snprintf(data_dir, sizeof(data_dir), "%.*s/../data", dl, slash ? __FILE__ : ".");
}

static int setup(void **state)
{
    char buf[4096];
    unsigned char raw[64];
    size_t rawlen = sizeof(raw);

    init_data_dir();
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/tg_jwt_XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    k_rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    k_rsa_b = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    k_rsa1024 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    k_ec256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    k_ec384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    k_ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (!k_rsa || !k_rsa_b || !k_rsa1024 || !k_ec256 || !k_ec384 || !k_ed ||
        RAND_bytes(k_hs, sizeof(k_hs)) != 1)
        return -1;

    bn_param_b64(k_rsa, OSSL_PKEY_PARAM_RSA_N, 0, rsa_n, sizeof(rsa_n));
    bn_param_b64(k_rsa, OSSL_PKEY_PARAM_RSA_E, 0, rsa_e, sizeof(rsa_e));
    {
        BIGNUM *n = NULL;
        unsigned char nb[300];
        assert_int_equal(EVP_PKEY_get_bn_param(k_rsa, OSSL_PKEY_PARAM_RSA_N, &n), 1);
        int nl = BN_num_bytes(n) + 1;
        assert_int_equal(BN_bn2binpad(n, nb, nl), nl);
        b64url(nb, (size_t)nl, rsa_n0, sizeof(rsa_n0));
        BN_free(n);
    }
    bn_param_b64(k_rsa_b, OSSL_PKEY_PARAM_RSA_N, 0, rsa_b_n, sizeof(rsa_b_n));
    bn_param_b64(k_rsa_b, OSSL_PKEY_PARAM_RSA_E, 0, rsa_b_e, sizeof(rsa_b_e));
    bn_param_b64(k_rsa1024, OSSL_PKEY_PARAM_RSA_N, 0, rsa1024_n, sizeof(rsa1024_n));
    bn_param_b64(k_ec256, OSSL_PKEY_PARAM_EC_PUB_X, 32, ec256_x, sizeof(ec256_x));
    bn_param_b64(k_ec256, OSSL_PKEY_PARAM_EC_PUB_Y, 32, ec256_y, sizeof(ec256_y));
    bn_param_b64(k_ec384, OSSL_PKEY_PARAM_EC_PUB_X, 48, ec384_x, sizeof(ec384_x));
    bn_param_b64(k_ec384, OSSL_PKEY_PARAM_EC_PUB_Y, 48, ec384_y, sizeof(ec384_y));
    if (EVP_PKEY_get_raw_public_key(k_ed, raw, &rawlen) != 1 || rawlen != 32)
        return -1;
    b64url(raw, rawlen, ed_x, sizeof(ed_x));
    b64url(k_hs, sizeof(k_hs), hs_k, sizeof(hs_k));

    snprintf(jwk_rsa, sizeof(jwk_rsa), "\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"%s\"", rsa_n, rsa_e);
    snprintf(jwk_rsa_ps, sizeof(jwk_rsa_ps),
             "\"kty\":\"RSA\",\"alg\":\"PS256\",\"n\":\"%s\",\"e\":\"%s\"", rsa_n, rsa_e);
    snprintf(jwk_rsa_b, sizeof(jwk_rsa_b), "\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"%s\"", rsa_b_n,
             rsa_b_e);
    snprintf(jwk_rsa1024, sizeof(jwk_rsa1024), "\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAB\"",
             rsa1024_n);
    snprintf(jwk_ec256, sizeof(jwk_ec256),
             "\"kty\":\"EC\",\"alg\":\"ES256\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"",
             ec256_x, ec256_y);
    snprintf(jwk_ec384, sizeof(jwk_ec384),
             "\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"%s\",\"y\":\"%s\"", ec384_x, ec384_y);
    snprintf(jwk_ed, sizeof(jwk_ed), "\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%s\"", ed_x);
    snprintf(jwk_hs, sizeof(jwk_hs), "\"kty\":\"oct\",\"alg\":\"HS256\",\"k\":\"%s\"", hs_k);

    /* Issuer A: every kind of key; x5c/x5t in a JWKS are fine (only the token header may not). */
    snprintf(buf, sizeof(buf),
             "{\"keys\":[{\"kid\":\"rsa1\",\"use\":\"sig\",\"x5t\":\"abc\",%s},"
             "{\"kid\":\"rsa-ps\",\"key_ops\":[\"verify\"],%s},{\"kid\":\"ec256\",%s},"
             "{\"kid\":\"ec384\",%s},{\"kid\":\"ed1\",%s},{\"kid\":\"hs1\",%s}]}",
             jwk_rsa, jwk_rsa_ps, jwk_ec256, jwk_ec384, jwk_ed, jwk_hs);
    jwks_a = load_text("a.json", buf);
    /* Issuer B: one key without a kid. */
    snprintf(buf, sizeof(buf), "{\"keys\":[{%s}]}", jwk_rsa_b);
    jwks_b = load_text("b.json", buf);
    /* Issuer C: two RSA keys, so a token without kid is ambiguous. */
    snprintf(buf, sizeof(buf), "{\"keys\":[{\"kid\":\"c1\",%s},{\"kid\":\"c2\",%s}]}", jwk_rsa,
             jwk_rsa_b);
    jwks_c = load_text("c.json", buf);
    if (!jwks_a || !jwks_b || !jwks_c)
        return -1;

    issuers[0] = (struct tg_jwt_issuer){
        "https://a.example", aud_a, 2, jwks_a, ALL_ALGS, "sub", "tenant", "tier", 30000};
    issuers[1] = (struct tg_jwt_issuer){
        "https://b.example", NULL, 0, jwks_b, 1u << TG_JWT_RS256, "email", NULL, NULL, 0};
    unsigned c_algs = (1u << TG_JWT_RS256) | (1u << TG_JWT_ES256);
    issuers[2] =
        (struct tg_jwt_issuer){"https://c.example", NULL, 0, jwks_c, c_algs, "sub", NULL, NULL, 0};
    return 0;
}

static int teardown(void **state)
{
    static const char *const files[] = {"a.json", "b.json", "c.json", "bad.json", "big.json"};
    char path[PATH_MAX];
    tg_jwks_free(jwks_a);
    tg_jwks_free(jwks_b);
    tg_jwks_free(jwks_c);
    EVP_PKEY_free(k_rsa);
    EVP_PKEY_free(k_rsa_b);
    EVP_PKEY_free(k_rsa1024);
    EVP_PKEY_free(k_ec256);
    EVP_PKEY_free(k_ec384);
    EVP_PKEY_free(k_ed);
    OPENSSL_cleanse(k_hs, sizeof(k_hs));
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", tmpdir, files[i]);
        unlink(path);
    }
    rmdir(tmpdir);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Signing and token building                                                                 */

enum signer {
    S_RS256,
    S_RS384,
    S_RS512,
    S_PS256,
    S_ES256,
    S_ES384,
    S_ED,
    S_HS,
    S_RS256_B,       /* issuer B's key */
    S_HS_PEM,        /* HS256 keyed with the RSA public key PEM (J5) */
    S_HS_DER,        /* HS256 keyed with the RSA public key DER (J6) */
    S_ES256_DER,     /* ES256 left DER-encoded (J24) */
    S_ES256_ZERO,    /* r = s = 0 (J25) */
    S_ES256_ORDER,   /* r = s = n (J26) */
    S_ES256_HIGH_S,  /* s replaced by n - s (J27) */
    S_PS256_MAXSALT, /* PSS with the longest salt instead of 32 bytes */
    S_EMPTY,         /* no signature */
};

enum mutation {
    M_NONE,
    M_SIG_FLIP,   /* one bit of the signature flipped */
    M_SIG_TRUNC,  /* last signature byte dropped */
    M_SIG_EXTEND, /* one byte appended to the signature */
    T_PAD,        /* '=' padding appended */
    T_PLUS,       /* '+' in the signature */
    T_SLASH,      /* '/' in the signature */
    T_SPACE,      /* a space in the payload */
    T_NUL,        /* a NUL byte in the payload segment */
    T_NONCANON,   /* unused bits of the last signature character set */
    T_ONE_DOT,    /* "h.ps" */
    T_NO_DOT,     /* "hps" */
    T_EXTRA_DOT,  /* four segments */
    T_JWE,        /* five segments */
    T_EMPTY_HDR,  /* ".p.s" */
    T_EMPTY_PAY,  /* "h..s" */
    T_NONE_HDR,   /* header replaced with {"alg":"none"}, signature kept (J4) */
};

static const unsigned char p256_n[32] = {
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};

/* pad: RSA_PKCS1_PADDING, RSA_PKCS1_PSS_PADDING (salt 32), or its negation (longest salt). */
static size_t evp_sign(EVP_PKEY *k, const char *md, int pad, const char *msg, size_t n,
                       unsigned char *sig, size_t cap)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    size_t len = cap;
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestSignInit_ex(ctx, &pctx, md, NULL, NULL, k, NULL), 1);
    if (pad == RSA_PKCS1_PSS_PADDING || pad == -RSA_PKCS1_PSS_PADDING) {
        assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
        assert_int_equal(EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, md, NULL), 1);
        assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, pad > 0 ? RSA_PSS_SALTLEN_DIGEST
                                                                        : RSA_PSS_SALTLEN_MAX),
                         1);
    }
    assert_int_equal(EVP_DigestSign(ctx, sig, &len, (const unsigned char *)msg, n), 1);
    EVP_MD_CTX_free(ctx);
    return len;
}

/* DER ECDSA signature -> raw r || s of half bytes each. */
static size_t der_to_raw(unsigned char *sig, size_t len, size_t half)
{
    const unsigned char *p = sig;
    const BIGNUM *r, *s;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)len);
    assert_non_null(es);
    ECDSA_SIG_get0(es, &r, &s);
    assert_int_equal(BN_bn2binpad(r, sig, (int)half), (int)half);
    assert_int_equal(BN_bn2binpad(s, sig + half, (int)half), (int)half);
    ECDSA_SIG_free(es);
    return 2 * half;
}

static size_t hmac_with_pubkey(bool pem, const char *msg, size_t n, unsigned char *sig)
{
    unsigned char *der = NULL;
    char *text = NULL;
    long tlen;
    unsigned int len = 0;
    if (pem) {
        BIO *b = BIO_new(BIO_s_mem());
        assert_int_equal(PEM_write_bio_PUBKEY(b, k_rsa), 1);
        tlen = BIO_get_mem_data(b, &text);
        assert_non_null(
            HMAC(EVP_sha256(), text, (int)tlen, (const unsigned char *)msg, n, sig, &len));
        BIO_free(b);
    } else {
        int dl = i2d_PUBKEY(k_rsa, &der);
        assert_true(dl > 0);
        assert_non_null(HMAC(EVP_sha256(), der, dl, (const unsigned char *)msg, n, sig, &len));
        OPENSSL_free(der);
    }
    return len;
}

static size_t sign(enum signer s, const char *msg, size_t n, unsigned char *sig, size_t cap)
{
    unsigned int hl = 0;
    size_t len;
    switch (s) {
    case S_RS256: return evp_sign(k_rsa, "SHA256", RSA_PKCS1_PADDING, msg, n, sig, cap);
    case S_RS384: return evp_sign(k_rsa, "SHA384", RSA_PKCS1_PADDING, msg, n, sig, cap);
    case S_RS512: return evp_sign(k_rsa, "SHA512", RSA_PKCS1_PADDING, msg, n, sig, cap);
    case S_PS256: return evp_sign(k_rsa, "SHA256", RSA_PKCS1_PSS_PADDING, msg, n, sig, cap);
    case S_PS256_MAXSALT:
        return evp_sign(k_rsa, "SHA256", -RSA_PKCS1_PSS_PADDING, msg, n, sig, cap);
    case S_RS256_B: return evp_sign(k_rsa_b, "SHA256", RSA_PKCS1_PADDING, msg, n, sig, cap);
    case S_ES256: return der_to_raw(sig, evp_sign(k_ec256, "SHA256", 0, msg, n, sig, cap), 32);
    case S_ES384: return der_to_raw(sig, evp_sign(k_ec384, "SHA384", 0, msg, n, sig, cap), 48);
    case S_ES256_DER: return evp_sign(k_ec256, "SHA256", 0, msg, n, sig, cap);
    case S_ES256_ZERO: memset(sig, 0, 64); return 64;
    case S_ES256_ORDER:
        memcpy(sig, p256_n, 32);
        memcpy(sig + 32, p256_n, 32);
        return 64;
    case S_ES256_HIGH_S: {
        len = der_to_raw(sig, evp_sign(k_ec256, "SHA256", 0, msg, n, sig, cap), 32);
        BIGNUM *bs = BN_bin2bn(sig + 32, 32, NULL), *bn = BN_bin2bn(p256_n, 32, NULL);
        assert_int_equal(BN_sub(bs, bn, bs), 1);
        assert_int_equal(BN_bn2binpad(bs, sig + 32, 32), 32);
        BN_free(bs);
        BN_free(bn);
        return len;
    }
    case S_ED: return evp_sign(k_ed, NULL, 0, msg, n, sig, cap);
    case S_HS:
        assert_non_null(
            HMAC(EVP_sha256(), k_hs, sizeof(k_hs), (const unsigned char *)msg, n, sig, &hl));
        return hl;
    case S_HS_PEM: return hmac_with_pubkey(true, msg, n, sig);
    case S_HS_DER: return hmac_with_pubkey(false, msg, n, sig);
    case S_EMPTY: return 0;
    }
    return 0;
}

/* A token built from literal JSON texts (so duplicates and odd types survive). */
struct token {
    char *s;    /* malloc'd, NUL-terminated (may also hold an inner NUL) */
    size_t len; /* bytes */
};

static void splice(struct token *t, size_t at, size_t del, const char *ins, size_t inslen)
{
    char *n = malloc(t->len - del + inslen + 1);
    assert_non_null(n);
    memcpy(n, t->s, at);
    memcpy(n + at, ins, inslen);
    memcpy(n + at + inslen, t->s + at + del, t->len - at - del + 1);
    free(t->s);
    t->s = n;
    t->len = t->len - del + inslen;
}

static struct token make_token(const char *hdr, const char *pay, enum signer s, enum mutation m)
{
    size_t cap = 3 * (strlen(hdr) + strlen(pay)) + 2048;
    char *tok = malloc(cap);
    unsigned char sig[1024];
    assert_non_null(tok);
    b64url((const unsigned char *)hdr, strlen(hdr), tok, cap);
    size_t hl = strlen(tok);
    tok[hl] = '.';
    b64url((const unsigned char *)pay, strlen(pay), tok + hl + 1, cap - hl - 1);
    size_t si = strlen(tok);
    size_t siglen = sign(s, tok, si, sig, sizeof(sig));
    if (m == M_SIG_FLIP)
        sig[siglen / 2] ^= 0x01;
    if (m == M_SIG_TRUNC)
        siglen--;
    if (m == M_SIG_EXTEND)
        sig[siglen++] = 0x00;
    tok[si] = '.';
    b64url(sig, siglen, tok + si + 1, cap - si - 1);

    struct token t = {tok, strlen(tok)};
    size_t d1 = hl, d2 = si;
    switch (m) {
    case M_NONE:
    case M_SIG_FLIP:
    case M_SIG_TRUNC:
    case M_SIG_EXTEND: break;
    case T_PAD: splice(&t, t.len, 0, "==", 2); break;
    case T_PLUS: t.s[d2 + 1] = '+'; break;
    case T_SLASH: t.s[d2 + 1] = '/'; break;
    case T_SPACE: splice(&t, d1 + 2, 0, " ", 1); break;
    case T_NUL: splice(&t, d1 + 2, 0, "\0", 1); break;
    case T_NONCANON: {
        static const char tab[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        assert_int_not_equal((t.len - d2 - 1) % 4, 0); /* the last char must have spare bits */
        char *last = &t.s[t.len - 1];
        *last = tab[(strchr(tab, *last) - tab) ^ 1];
        break;
    }
    case T_ONE_DOT: splice(&t, d2, 1, "", 0); break;
    case T_NO_DOT:
        splice(&t, d2, 1, "", 0);
        splice(&t, d1, 1, "", 0);
        break;
    case T_EXTRA_DOT: splice(&t, t.len, 0, ".AAAA", 5); break;
    case T_JWE: splice(&t, t.len, 0, ".AAAA.AAAA", 10); break;
    case T_EMPTY_HDR: splice(&t, 0, d1, "", 0); break;
    case T_EMPTY_PAY: splice(&t, d1 + 1, d2 - d1 - 1, "", 0); break;
    case T_NONE_HDR: {
        char h[64];
        b64url((const unsigned char *)"{\"alg\":\"none\"}", 14, h, sizeof(h));
        splice(&t, 0, d1, h, strlen(h));
        break;
    }
    }
    return t;
}

/* ------------------------------------------------------------------------------------------ */
/* The verification table                                                                     */

#define ISS_A "\"iss\":\"https://a.example\""
#define ISS_B "\"iss\":\"https://b.example\""
#define ISS_C "\"iss\":\"https://c.example\""
#define TIMES "\"iat\":1750000000,\"nbf\":1750000000,\"exp\":1750000300"
#define REST ",\"tenant\":\"acme\",\"tier\":\"gold\"}"
/* A valid payload for issuer A. */
#define P_OK "{\"sub\":\"u1\"," ISS_A ",\"aud\":\"tollgate\"," TIMES REST
/* Issuer A payload with one extra / replacing member list. */
#define P_A(members) "{\"sub\":\"u1\"," ISS_A ",\"aud\":\"tollgate\"," members REST
#define P_B "{\"email\":\"b@example.com\"," ISS_B "," TIMES "}"
#define P_C "{\"sub\":\"u1\"," ISS_C "," TIMES "}"
#define H(alg, kid) "{\"alg\":\"" alg "\",\"typ\":\"JWT\",\"kid\":\"" kid "\"}"
#define H_RS "{\"alg\":\"RS256\",\"kid\":\"rsa1\""
#define D16 "[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]" /* 15 arrays: depth 16 inside the payload object */

struct vcase {
    const char *name;
    const char *hdr;
    const char *pay;
    enum signer signer;
    enum mutation mut;
    enum tg_jwt_status want;
    size_t issuer;         /* expected issuer_index on OK */
    const char *principal; /* expected principal on OK */
};

/* clang-format off */
static const struct vcase vcases[] = {
    /* J1 and every algorithm */
    {"RS256", H("RS256", "rsa1"), P_OK, S_RS256, M_NONE, TG_JWT_OK, 0, "u1"},
    {"RS384", H("RS384", "rsa1"), P_OK, S_RS384, M_NONE, TG_JWT_OK, 0, "u1"},
    {"RS512", H("RS512", "rsa1"), P_OK, S_RS512, M_NONE, TG_JWT_OK, 0, "u1"},
    {"PS256", H("PS256", "rsa1"), P_OK, S_PS256, M_NONE, TG_JWT_OK, 0, "u1"},
    {"PS256 key with alg PS256", H("PS256", "rsa-ps"), P_OK, S_PS256, M_NONE, TG_JWT_OK, 0, "u1"},
    {"ES256", H("ES256", "ec256"), P_OK, S_ES256, M_NONE, TG_JWT_OK, 0, "u1"},
    {"ES384", H("ES384", "ec384"), P_OK, S_ES384, M_NONE, TG_JWT_OK, 0, "u1"},
    {"EdDSA", H("EdDSA", "ed1"), P_OK, S_ED, M_NONE, TG_JWT_OK, 0, "u1"},
    {"HS256", H("HS256", "hs1"), P_OK, S_HS, M_NONE, TG_JWT_OK, 0, "u1"},
    {"issuer B, no kid, one key", "{\"alg\":\"RS256\"}", P_B, S_RS256_B, M_NONE, TG_JWT_OK, 1,
     "b@example.com"},
    {"no kid, one usable ES256 key among many", "{\"alg\":\"ES256\"}", P_OK, S_ES256, M_NONE,
     TG_JWT_OK, 0, "u1"},
    {"no kid, RS256: the PS256-only key does not count", "{\"alg\":\"RS256\"}", P_OK, S_RS256,
     M_NONE, TG_JWT_OK, 0, "u1"},
    {"typ at+jwt", "{\"alg\":\"RS256\",\"typ\":\"at+jwt\",\"kid\":\"rsa1\"}", P_OK, S_RS256,
     M_NONE, TG_JWT_OK, 0, "u1"},
    {"typ jwt (case-insensitive)", "{\"alg\":\"RS256\",\"typ\":\"jwt\",\"kid\":\"rsa1\"}", P_OK,
     S_RS256, M_NONE, TG_JWT_OK, 0, "u1"},
    {"typ application/at+JWT", "{\"alg\":\"RS256\",\"typ\":\"application/at+JWT\",\"kid\":\"rsa1\"}",
     P_OK, S_RS256, M_NONE, TG_JWT_OK, 0, "u1"},
    {"unknown header member ignored", H_RS ",\"x-foo\":{\"a\":[1]}}", P_OK, S_RS256, M_NONE,
     TG_JWT_OK, 0, "u1"},
    {"ES256 high-S accepted (J27: RFC 7518 has no low-S rule)", H("ES256", "ec256"), P_OK,
     S_ES256_HIGH_S, M_NONE, TG_JWT_OK, 0, "u1"},

    /* J2-J4: none */
    {"alg none, empty sig", "{\"alg\":\"none\"}", P_OK, S_EMPTY, M_NONE, TG_JWT_BAD_ALG, 0, NULL},
    {"alg NONE", "{\"alg\":\"NONE\"}", P_OK, S_EMPTY, M_NONE, TG_JWT_BAD_ALG, 0, NULL},
    {"alg nOnE", "{\"alg\":\"nOnE\",\"kid\":\"rsa1\"}", P_OK, S_EMPTY, M_NONE, TG_JWT_BAD_ALG, 0, NULL},
    {"alg none, RS256 signature kept", H("RS256", "rsa1"), P_OK, S_RS256, T_NONE_HDR,
     TG_JWT_BAD_ALG, 0, NULL},
    {"alg rs256 (case matters)", H("rs256", "rsa1"), P_OK, S_RS256, M_NONE, TG_JWT_BAD_ALG, 0, NULL},
    {"alg ES512 unsupported", H("ES512", "ec256"), P_OK, S_ES256, M_NONE, TG_JWT_BAD_ALG, 0, NULL},
    {"alg HS512 unsupported", H("HS512", "hs1"), P_OK, S_HS, M_NONE, TG_JWT_BAD_ALG, 0, NULL},
    {"alg with NUL", "{\"alg\":\"RS256\\u0000\",\"kid\":\"rsa1\"}", P_OK, S_RS256, M_NONE,
     TG_JWT_MALFORMED, 0, NULL},
    {"alg missing", "{\"kid\":\"rsa1\"}", P_OK, S_RS256, M_NONE, TG_JWT_MALFORMED, 0, NULL},
    {"alg not a string", "{\"alg\":256,\"kid\":\"rsa1\"}", P_OK, S_RS256, M_NONE, TG_JWT_MALFORMED, 0, NULL},

    /* J5-J7: key confusion; alg not allowed */
    {"HS256 keyed with the RSA public PEM", H("HS256", "rsa1"), P_OK, S_HS_PEM, M_NONE,
     TG_JWT_KEY_MISMATCH, 0, NULL},
    {"HS256 keyed with the RSA public DER", H("HS256", "rsa1"), P_OK, S_HS_DER, M_NONE,
     TG_JWT_KEY_MISMATCH, 0, NULL},
    {"HS256 PEM confusion, issuer without HS256", "{\"alg\":\"HS256\"}", P_B, S_HS_PEM, M_NONE,
     TG_JWT_BAD_ALG, 0, NULL},
    {"RS256 header on the EC key", H("RS256", "ec256"), P_OK, S_ES256, M_NONE,
     TG_JWT_KEY_MISMATCH, 0, NULL},
    {"RS256 on a key restricted to PS256", H("RS256", "rsa-ps"), P_OK, S_RS256, M_NONE,
     TG_JWT_KEY_MISMATCH, 0, NULL},
    {"ES384 on the P-256 key", H("ES384", "ec256"), P_OK, S_ES384, M_NONE, TG_JWT_KEY_MISMATCH, 0, NULL},
    {"ES256 on the P-384 key", H("ES256", "ec384"), P_OK, S_ES256, M_NONE, TG_JWT_KEY_MISMATCH, 0, NULL},
    {"EdDSA on the RSA key", H("EdDSA", "rsa1"), P_OK, S_ED, M_NONE, TG_JWT_KEY_MISMATCH, 0, NULL},
    {"RS256 on the oct key", H("RS256", "hs1"), P_OK, S_RS256, M_NONE, TG_JWT_KEY_MISMATCH, 0, NULL},
    {"RS384 not allowed for issuer B", "{\"alg\":\"RS384\"}", P_B, S_RS384, M_NONE, TG_JWT_BAD_ALG, 0, NULL},
    {"no kid, no key usable for the alg", "{\"alg\":\"ES256\"}", P_C, S_ES256, M_NONE,
     TG_JWT_KEY_MISMATCH, 0, NULL},
    {"ES256 not allowed for issuer B", "{\"alg\":\"ES256\"}", P_B, S_ES256, M_NONE, TG_JWT_BAD_ALG, 0, NULL},

    /* J8-J11: kid and header-supplied keys */
    {"unknown kid", H("RS256", "nope"), P_OK, S_RS256, M_NONE, TG_JWT_UNKNOWN_KID, 0, NULL},
    {"kid path traversal", H("HS256", "../../../../dev/null"), P_OK, S_HS, M_NONE,
     TG_JWT_UNKNOWN_KID, 0, NULL},
    {"kid SQL", H("RS256", "x' UNION SELECT 'k"), P_OK, S_RS256, M_NONE, TG_JWT_UNKNOWN_KID, 0, NULL},
    {"kid with NUL", "{\"alg\":\"RS256\",\"kid\":\"rsa1\\u0000\"}", P_OK, S_RS256, M_NONE,
     TG_JWT_MALFORMED, 0, NULL},
    {"kid empty", H("RS256", ""), P_OK, S_RS256, M_NONE, TG_JWT_UNKNOWN_KID, 0, NULL},
    {"kid not a string", "{\"alg\":\"RS256\",\"kid\":1}", P_OK, S_RS256, M_NONE, TG_JWT_MALFORMED, 0, NULL},
    {"kid of another issuer's key", H("RS256", "c2"), P_OK, S_RS256_B, M_NONE,
     TG_JWT_UNKNOWN_KID, 0, NULL},
    {"no kid, two keys", "{\"alg\":\"RS256\"}", P_C, S_RS256, M_NONE, TG_JWT_UNKNOWN_KID, 0, NULL},
    {"no kid, two PS256-capable keys", "{\"alg\":\"PS256\"}", P_OK, S_PS256, M_NONE,
     TG_JWT_UNKNOWN_KID, 0, NULL},
    {"jwk header", H_RS ",\"jwk\":{\"kty\":\"oct\",\"k\":\"AAAA\"}}", P_OK, S_RS256, M_NONE,
     TG_JWT_FORBIDDEN_HEADER, 0, NULL},
    {"jku header", H_RS ",\"jku\":\"http://127.0.0.1:9/j\"}", P_OK, S_RS256, M_NONE,
     TG_JWT_FORBIDDEN_HEADER, 0, NULL},
    {"x5u header", H_RS ",\"x5u\":\"http://127.0.0.1:9/c\"}", P_OK, S_RS256, M_NONE,
     TG_JWT_FORBIDDEN_HEADER, 0, NULL},
    {"x5c header", H_RS ",\"x5c\":[\"MIIB\"]}", P_OK, S_RS256, M_NONE, TG_JWT_FORBIDDEN_HEADER, 0, NULL},
    {"x5t header", H_RS ",\"x5t\":\"abc\"}", P_OK, S_RS256, M_NONE, TG_JWT_FORBIDDEN_HEADER, 0, NULL},
    {"x5t#S256 header", H_RS ",\"x5t#S256\":\"abc\"}", P_OK, S_RS256, M_NONE,
     TG_JWT_FORBIDDEN_HEADER, 0, NULL},
    {"jwk header null", H_RS ",\"jwk\":null}", P_OK, S_RS256, M_NONE, TG_JWT_FORBIDDEN_HEADER, 0, NULL},

    /* J19, J20, J32: crit, b64, typ, cty */
    {"crit", H_RS ",\"crit\":[\"x-unknown\"],\"x-unknown\":1}", P_OK, S_RS256, M_NONE,
     TG_JWT_UNKNOWN_CRIT, 0, NULL},
    {"crit empty", H_RS ",\"crit\":[]}", P_OK, S_RS256, M_NONE, TG_JWT_UNKNOWN_CRIT, 0, NULL},
    {"crit exp", H_RS ",\"crit\":[\"exp\"]}", P_OK, S_RS256, M_NONE, TG_JWT_UNKNOWN_CRIT, 0, NULL},
    {"b64 false", "{\"alg\":\"HS256\",\"kid\":\"hs1\",\"b64\":false,\"crit\":[\"b64\"]}", P_OK,
     S_HS, M_NONE, TG_JWT_UNKNOWN_CRIT, 0, NULL},
    {"b64 without crit", "{\"alg\":\"HS256\",\"kid\":\"hs1\",\"b64\":true}", P_OK, S_HS, M_NONE,
     TG_JWT_UNKNOWN_CRIT, 0, NULL},
    {"typ JWE", "{\"alg\":\"RS256\",\"typ\":\"JWE\",\"kid\":\"rsa1\"}", P_OK, S_RS256, M_NONE,
     TG_JWT_MALFORMED, 0, NULL},
    {"typ not a string", "{\"alg\":\"RS256\",\"typ\":1,\"kid\":\"rsa1\"}", P_OK, S_RS256, M_NONE,
     TG_JWT_MALFORMED, 0, NULL},
    {"cty JWT (nested)", H_RS ",\"cty\":\"JWT\"}", P_OK, S_RS256, M_NONE, TG_JWT_MALFORMED, 0, NULL},

    /* J24-J26, J30: signatures */
    {"RS256 bit flipped", H("RS256", "rsa1"), P_OK, S_RS256, M_SIG_FLIP, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"RS384 bit flipped", H("RS384", "rsa1"), P_OK, S_RS384, M_SIG_FLIP, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"PS256 bit flipped", H("PS256", "rsa1"), P_OK, S_PS256, M_SIG_FLIP, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"ES256 bit flipped", H("ES256", "ec256"), P_OK, S_ES256, M_SIG_FLIP, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"ES384 bit flipped", H("ES384", "ec384"), P_OK, S_ES384, M_SIG_FLIP, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"EdDSA bit flipped", H("EdDSA", "ed1"), P_OK, S_ED, M_SIG_FLIP, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"HS256 bit flipped", H("HS256", "hs1"), P_OK, S_HS, M_SIG_FLIP, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"RS256 truncated", H("RS256", "rsa1"), P_OK, S_RS256, M_SIG_TRUNC, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"ES256 truncated", H("ES256", "ec256"), P_OK, S_ES256, M_SIG_TRUNC, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"ES384 truncated", H("ES384", "ec384"), P_OK, S_ES384, M_SIG_TRUNC, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"EdDSA truncated", H("EdDSA", "ed1"), P_OK, S_ED, M_SIG_TRUNC, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"HS256 truncated", H("HS256", "hs1"), P_OK, S_HS, M_SIG_TRUNC, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"RS256 extended", H("RS256", "rsa1"), P_OK, S_RS256, M_SIG_EXTEND, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"ES256 raw 65 bytes", H("ES256", "ec256"), P_OK, S_ES256, M_SIG_EXTEND, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"HS256 33 bytes", H("HS256", "hs1"), P_OK, S_HS, M_SIG_EXTEND, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"ES256 DER signature", H("ES256", "ec256"), P_OK, S_ES256_DER, M_NONE, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"ES256 r=s=0", H("ES256", "ec256"), P_OK, S_ES256_ZERO, M_NONE, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"ES256 r=s=n", H("ES256", "ec256"), P_OK, S_ES256_ORDER, M_NONE, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"RS256 empty signature", H("RS256", "rsa1"), P_OK, S_EMPTY, M_NONE, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"HS256 empty signature", H("HS256", "hs1"), P_OK, S_EMPTY, M_NONE, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"RS256 signed by issuer B's key", H("RS256", "rsa1"), P_OK, S_RS256_B, M_NONE,
     TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"PS256 with a 222-byte salt (RFC 7518 §3.5: 32)", H("PS256", "rsa1"), P_OK, S_PS256_MAXSALT,
     M_NONE, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"RS256 verified as PS256", H("PS256", "rsa1"), P_OK, S_RS256, M_NONE, TG_JWT_BAD_SIGNATURE, 0, NULL},
    {"PS256 verified as RS256", H("RS256", "rsa1"), P_OK, S_PS256, M_NONE, TG_JWT_BAD_SIGNATURE, 0, NULL},

    /* J12-J18: claims */
    {"exp within leeway", H("RS256", "rsa1"), P_A("\"exp\":1749999980"), S_RS256, M_NONE, TG_JWT_OK, 0, "u1"},
    {"exp at the leeway edge", H("RS256", "rsa1"), P_A("\"exp\":1749999970"), S_RS256, M_NONE, TG_JWT_OK, 0, "u1"},
    {"exp just past the leeway", H("RS256", "rsa1"), P_A("\"exp\":1749999969.999"), S_RS256, M_NONE,
     TG_JWT_EXPIRED, 0, NULL},
    {"expired", H("RS256", "rsa1"), P_A("\"exp\":1749999939"), S_RS256, M_NONE, TG_JWT_EXPIRED, 0, NULL},
    {"expired, no leeway (issuer B)", "{\"alg\":\"RS256\"}",
     "{\"email\":\"e\"," ISS_B ",\"exp\":1749999999}", S_RS256_B, M_NONE, TG_JWT_EXPIRED, 0, NULL},
    {"exp real", H("RS256", "rsa1"), P_A("\"exp\":1750000300.5"), S_RS256, M_NONE, TG_JWT_OK, 0, "u1"},
    {"exp missing", H("RS256", "rsa1"), P_A("\"nbf\":1750000000"), S_RS256, M_NONE, TG_JWT_MISSING_EXP, 0, NULL},
    {"exp string", H("RS256", "rsa1"), P_A("\"exp\":\"9999999999\""), S_RS256, M_NONE,
     TG_JWT_MISSING_EXP, 0, NULL},
    {"exp true", H("RS256", "rsa1"), P_A("\"exp\":true"), S_RS256, M_NONE, TG_JWT_MISSING_EXP, 0, NULL},
    {"exp null", H("RS256", "rsa1"), P_A("\"exp\":null"), S_RS256, M_NONE, TG_JWT_MISSING_EXP, 0, NULL},
    {"exp object", H("RS256", "rsa1"), P_A("\"exp\":{}"), S_RS256, M_NONE, TG_JWT_MISSING_EXP, 0, NULL},
    {"exp negative", H("RS256", "rsa1"), P_A("\"exp\":-1"), S_RS256, M_NONE, TG_JWT_BAD_CLAIM, 0, NULL},
    {"exp 1e300", H("RS256", "rsa1"), P_A("\"exp\":1e300"), S_RS256, M_NONE, TG_JWT_BAD_CLAIM, 0, NULL},
    {"exp INT64_MAX", H("RS256", "rsa1"), P_A("\"exp\":9223372036854775807"), S_RS256, M_NONE,
     TG_JWT_BAD_CLAIM, 0, NULL},
    {"exp year 10000", H("RS256", "rsa1"), P_A("\"exp\":253402300800"), S_RS256, M_NONE,
     TG_JWT_BAD_CLAIM, 0, NULL},
    {"exp 1e400 (jansson refuses)", H("RS256", "rsa1"), P_A("\"exp\":1e400"), S_RS256, M_NONE,
     TG_JWT_MALFORMED, 0, NULL},
    {"exp beyond int64 (jansson refuses)", H("RS256", "rsa1"), P_A("\"exp\":99999999999999999999999"),
     S_RS256, M_NONE, TG_JWT_MALFORMED, 0, NULL},
    {"nbf in the future", H("RS256", "rsa1"), P_A("\"exp\":1750000300,\"nbf\":1750000120"), S_RS256,
     M_NONE, TG_JWT_NOT_YET_VALID, 0, NULL},
    {"nbf within leeway", H("RS256", "rsa1"), P_A("\"exp\":1750000300,\"nbf\":1750000030"), S_RS256,
     M_NONE, TG_JWT_OK, 0, "u1"},
    {"nbf string", H("RS256", "rsa1"), P_A("\"exp\":1750000300,\"nbf\":\"0\""), S_RS256, M_NONE,
     TG_JWT_BAD_CLAIM, 0, NULL},
    {"iat in the future", H("RS256", "rsa1"), P_A("\"exp\":1750009999,\"iat\":1750003600"), S_RS256,
     M_NONE, TG_JWT_NOT_YET_VALID, 0, NULL},
    {"iat within leeway", H("RS256", "rsa1"), P_A("\"exp\":1750009999,\"iat\":1750000029"), S_RS256,
     M_NONE, TG_JWT_OK, 0, "u1"},
    {"iat bool", H("RS256", "rsa1"), P_A("\"exp\":1750009999,\"iat\":false"), S_RS256, M_NONE,
     TG_JWT_BAD_CLAIM, 0, NULL},
    {"aud array match", H("RS256", "rsa1"),
     "{\"sub\":\"u1\"," ISS_A ",\"aud\":[\"x\",\"other\"]," TIMES "}", S_RS256, M_NONE, TG_JWT_OK, 0, "u1"},
    {"aud mismatch", H("RS256", "rsa1"), "{\"sub\":\"u1\"," ISS_A ",\"aud\":\"proxyX\"," TIMES "}",
     S_RS256, M_NONE, TG_JWT_BAD_AUDIENCE, 0, NULL},
    {"aud prefix", H("RS256", "rsa1"), "{\"sub\":\"u1\"," ISS_A ",\"aud\":\"tollgat\"," TIMES "}",
     S_RS256, M_NONE, TG_JWT_BAD_AUDIENCE, 0, NULL},
    {"aud array mismatch", H("RS256", "rsa1"),
     "{\"sub\":\"u1\"," ISS_A ",\"aud\":[\"x\",\"y\"]," TIMES "}", S_RS256, M_NONE,
     TG_JWT_BAD_AUDIENCE, 0, NULL},
    {"aud array empty", H("RS256", "rsa1"), "{\"sub\":\"u1\"," ISS_A ",\"aud\":[]," TIMES "}",
     S_RS256, M_NONE, TG_JWT_BAD_AUDIENCE, 0, NULL},
    {"aud array with a number", H("RS256", "rsa1"),
     "{\"sub\":\"u1\"," ISS_A ",\"aud\":[1,\"tollgate\"]," TIMES "}", S_RS256, M_NONE,
     TG_JWT_BAD_AUDIENCE, 0, NULL},
    {"aud object", H("RS256", "rsa1"), "{\"sub\":\"u1\"," ISS_A ",\"aud\":{}," TIMES "}", S_RS256,
     M_NONE, TG_JWT_BAD_AUDIENCE, 0, NULL},
    {"aud missing", H("RS256", "rsa1"), "{\"sub\":\"u1\"," ISS_A "," TIMES "}", S_RS256, M_NONE,
     TG_JWT_BAD_AUDIENCE, 0, NULL},
    {"aud ignored without audiences", "{\"alg\":\"RS256\"}",
     "{\"email\":\"e\"," ISS_B ",\"aud\":{}," TIMES "}", S_RS256_B, M_NONE, TG_JWT_OK, 1, "e"},
    {"iss unknown", H("RS256", "rsa1"), "{\"sub\":\"u1\",\"iss\":\"https://evil\"," TIMES "}",
     S_RS256, M_NONE, TG_JWT_UNKNOWN_ISSUER, 0, NULL},
    {"iss suffix", H("RS256", "rsa1"), "{\"sub\":\"u1\",\"iss\":\"https://a.example.evil\"," TIMES "}",
     S_RS256, M_NONE, TG_JWT_UNKNOWN_ISSUER, 0, NULL},
    {"iss prefix", H("RS256", "rsa1"), "{\"sub\":\"u1\",\"iss\":\"https://a.exampl\"," TIMES "}",
     S_RS256, M_NONE, TG_JWT_UNKNOWN_ISSUER, 0, NULL},
    {"iss case", H("RS256", "rsa1"), "{\"sub\":\"u1\",\"iss\":\"https://A.example\"," TIMES "}",
     S_RS256, M_NONE, TG_JWT_UNKNOWN_ISSUER, 0, NULL},
    {"iss missing", H("RS256", "rsa1"), "{\"sub\":\"u1\"," TIMES "}", S_RS256, M_NONE,
     TG_JWT_UNKNOWN_ISSUER, 0, NULL},
    {"iss array", H("RS256", "rsa1"), "{\"sub\":\"u1\",\"iss\":[\"https://a.example\"]," TIMES "}",
     S_RS256, M_NONE, TG_JWT_UNKNOWN_ISSUER, 0, NULL},
    {"principal missing", H("RS256", "rsa1"), "{" ISS_A ",\"aud\":\"tollgate\"," TIMES "}", S_RS256,
     M_NONE, TG_JWT_BAD_CLAIM, 0, NULL},
    {"principal number", H("RS256", "rsa1"), "{\"sub\":1," ISS_A ",\"aud\":\"tollgate\"," TIMES "}",
     S_RS256, M_NONE, TG_JWT_BAD_CLAIM, 0, NULL},
    {"principal empty", H("RS256", "rsa1"), "{\"sub\":\"\"," ISS_A ",\"aud\":\"tollgate\"," TIMES "}",
     S_RS256, M_NONE, TG_JWT_BAD_CLAIM, 0, NULL},
    {"principal with CRLF", H("RS256", "rsa1"),
     "{\"sub\":\"u1\\r\\nx-evil: 1\"," ISS_A ",\"aud\":\"tollgate\"," TIMES "}", S_RS256, M_NONE,
     TG_JWT_BAD_CLAIM, 0, NULL},
    {"principal claim of issuer B missing", "{\"alg\":\"RS256\"}", "{\"sub\":\"u1\"," ISS_B "," TIMES "}",
     S_RS256_B, M_NONE, TG_JWT_BAD_CLAIM, 0, NULL},
    {"tenant number", H("RS256", "rsa1"),
     "{\"sub\":\"u1\"," ISS_A ",\"aud\":\"tollgate\"," TIMES ",\"tenant\":7}", S_RS256, M_NONE,
     TG_JWT_BAD_CLAIM, 0, NULL},
    {"policy array", H("RS256", "rsa1"),
     "{\"sub\":\"u1\"," ISS_A ",\"aud\":\"tollgate\"," TIMES ",\"tier\":[\"gold\"]}", S_RS256, M_NONE,
     TG_JWT_BAD_CLAIM, 0, NULL},
    {"tenant and policy absent", H("RS256", "rsa1"),
     "{\"sub\":\"u2\"," ISS_A ",\"aud\":\"tollgate\"," TIMES "}", S_RS256, M_NONE, TG_JWT_OK, 0, "u2"},

    /* J21-J23, J28: structure */
    {"padding =", H("RS256", "rsa1"), P_OK, S_RS256, T_PAD, TG_JWT_MALFORMED, 0, NULL},
    {"+ in signature", H("RS256", "rsa1"), P_OK, S_RS256, T_PLUS, TG_JWT_MALFORMED, 0, NULL},
    {"/ in signature", H("RS256", "rsa1"), P_OK, S_RS256, T_SLASH, TG_JWT_MALFORMED, 0, NULL},
    {"space in payload", H("RS256", "rsa1"), P_OK, S_RS256, T_SPACE, TG_JWT_MALFORMED, 0, NULL},
    {"NUL in payload", H("RS256", "rsa1"), P_OK, S_RS256, T_NUL, TG_JWT_MALFORMED, 0, NULL},
    {"non-canonical last char", H("RS256", "rsa1"), P_OK, S_RS256, T_NONCANON, TG_JWT_MALFORMED, 0, NULL},
    {"one dot", H("RS256", "rsa1"), P_OK, S_RS256, T_ONE_DOT, TG_JWT_MALFORMED, 0, NULL},
    {"no dot", H("RS256", "rsa1"), P_OK, S_RS256, T_NO_DOT, TG_JWT_MALFORMED, 0, NULL},
    {"four segments", H("RS256", "rsa1"), P_OK, S_RS256, T_EXTRA_DOT, TG_JWT_MALFORMED, 0, NULL},
    {"five segments (JWE)", H("RS256", "rsa1"), P_OK, S_RS256, T_JWE, TG_JWT_MALFORMED, 0, NULL},
    {"empty header", H("RS256", "rsa1"), P_OK, S_RS256, T_EMPTY_HDR, TG_JWT_MALFORMED, 0, NULL},
    {"empty payload", H("RS256", "rsa1"), P_OK, S_RS256, T_EMPTY_PAY, TG_JWT_MALFORMED, 0, NULL},
    {"header is an array", "[\"RS256\"]", P_OK, S_RS256, M_NONE, TG_JWT_MALFORMED, 0, NULL},
    {"header is a string", "\"RS256\"", P_OK, S_RS256, M_NONE, TG_JWT_MALFORMED, 0, NULL},
    {"payload is an array", H("RS256", "rsa1"), "[" P_OK "]", S_RS256, M_NONE, TG_JWT_MALFORMED, 0, NULL},
    {"payload is a number", H("RS256", "rsa1"), "1750000300", S_RS256, M_NONE, TG_JWT_MALFORMED, 0, NULL},
    {"payload not JSON", H("RS256", "rsa1"), "sub=u1", S_RS256, M_NONE, TG_JWT_MALFORMED, 0, NULL},
    {"payload trailing garbage", H("RS256", "rsa1"), P_OK "x", S_RS256, M_NONE, TG_JWT_MALFORMED, 0, NULL},
    {"duplicate alg in header", "{\"alg\":\"RS256\",\"alg\":\"none\",\"kid\":\"rsa1\"}", P_OK, S_RS256,
     M_NONE, TG_JWT_MALFORMED, 0, NULL},
    {"duplicate sub in payload", H("RS256", "rsa1"),
     "{\"sub\":\"u1\",\"sub\":\"admin\"," ISS_A ",\"aud\":\"tollgate\"," TIMES "}", S_RS256, M_NONE,
     TG_JWT_MALFORMED, 0, NULL},
    {"depth 16 accepted", H("RS256", "rsa1"), P_A(TIMES ",\"x\":" D16), S_RS256, M_NONE, TG_JWT_OK, 0, "u1"},
    {"depth 17 refused", H("RS256", "rsa1"), P_A(TIMES ",\"x\":[" D16 "]"), S_RS256, M_NONE,
     TG_JWT_MALFORMED, 0, NULL},
    {"brackets in strings do not count", H("RS256", "rsa1"),
     P_A(TIMES ",\"x\":\"[[[[[[[[[[[[[[[[[[[[\\\"{{{{{{{{{{{{{{{{{{{\""), S_RS256, M_NONE, TG_JWT_OK, 0, "u1"},
    {"deep header", "{\"alg\":\"RS256\",\"kid\":\"rsa1\",\"x\":[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]}",
     P_OK, S_RS256, M_NONE, TG_JWT_MALFORMED, 0, NULL},
};
/* clang-format on */

static void check_row(const struct vcase *v)
{
    struct token t = make_token(v->hdr, v->pay, v->signer, v->mut);
    /* Exact-size heap copy, so ASan sees any read past len. */
    char *p = malloc(t.len ? t.len : 1);
    assert_non_null(p);
    memcpy(p, t.s, t.len);
    struct tg_jwt_claims out, untouched;
    memset(&out, 0xA5, sizeof(out));
    memcpy(&untouched, &out, sizeof(out));
    enum tg_jwt_status st = tg_jwt_verify(p, t.len, issuers, 3, NOW_MS, &out);
    if (st != v->want)
        fail_msg("%s: got %s, want %s (token %s)", v->name, tg_jwt_status_name(st),
                 tg_jwt_status_name(v->want), t.s);
    if (st == TG_JWT_OK) {
        assert_int_equal(out.issuer_index, v->issuer);
        assert_string_equal(out.principal, v->principal);
        assert_true(out.exp_ms > 0);
    } else if (memcmp(&out, &untouched, sizeof(out)) != 0) {
        fail_msg("%s: *out written on failure", v->name);
    }
    /* A refused token must leave nothing on this thread's OpenSSL error queue. */
    if (ERR_peek_error() != 0)
        fail_msg("%s: OpenSSL error queue not empty", v->name);
    free(p);
    free(t.s);
}

static void test_verify_table(void **state)
{
    for (size_t i = 0; i < sizeof(vcases) / sizeof(vcases[0]); i++)
        check_row(&vcases[i]);
}

/* Claims are copied out exactly, with times in ms. */
static void test_claims_out(void **state)
{
    struct token t = make_token(H("ES256", "ec256"),
                                "{\"sub\":\"alice\"," ISS_A ",\"aud\":\"other\",\"iat\":1750000000,"
                                "\"nbf\":1749999000,\"exp\":1750000300.25,\"tenant\":\"t1\","
                                "\"tier\":\"gold\"}",
                                S_ES256, M_NONE);
    struct tg_jwt_claims c;
    assert_int_equal(tg_jwt_verify(t.s, t.len, issuers, 3, NOW_MS, &c), TG_JWT_OK);
    assert_string_equal(c.principal, "alice");
    assert_string_equal(c.tenant, "t1");
    assert_string_equal(c.policy, "gold");
    assert_int_equal(c.issuer_index, 0);
    assert_int_equal(c.exp_ms, 1750000300250LL);
    assert_int_equal(c.nbf_ms, 1749999000000LL);
    free(t.s);

    /* No nbf: nbf_ms 0; tenant and policy "". */
    t = make_token("{\"alg\":\"RS256\"}", "{\"email\":\"e\"," ISS_B ",\"exp\":1750000001}",
                   S_RS256_B, M_NONE);
    assert_int_equal(tg_jwt_verify(t.s, t.len, issuers, 3, NOW_MS, &c), TG_JWT_OK);
    assert_int_equal(c.nbf_ms, 0);
    assert_string_equal(c.tenant, "");
    assert_string_equal(c.policy, "");
    assert_int_equal(c.issuer_index, 1);
    /* The same token against no issuers, or only issuer A. */
    assert_int_equal(tg_jwt_verify(t.s, t.len, issuers, 0, NOW_MS, &c), TG_JWT_UNKNOWN_ISSUER);
    assert_int_equal(tg_jwt_verify(t.s, t.len, issuers, 1, NOW_MS, &c), TG_JWT_UNKNOWN_ISSUER);
    free(t.s);
}

/* Long principal / tenant / policy values: the limits of struct tg_jwt_claims, never truncated. */
static void test_claim_lengths(void **state)
{
    static const struct {
        const char *claim;
        size_t len;
        enum tg_jwt_status want;
    } rows[] = {
        {"sub", 255, TG_JWT_OK},    {"sub", 256, TG_JWT_BAD_CLAIM},
        {"tenant", 255, TG_JWT_OK}, {"tenant", 256, TG_JWT_BAD_CLAIM},
        {"tier", 127, TG_JWT_OK},   {"tier", 128, TG_JWT_BAD_CLAIM},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char val[300], pay[600];
        memset(val, 'v', rows[i].len);
        val[rows[i].len] = '\0';
        if (strcmp(rows[i].claim, "sub") == 0)
            snprintf(pay, sizeof(pay), "{\"sub\":\"%s\"," ISS_A ",\"aud\":\"tollgate\"," TIMES "}",
                     val);
        else
            snprintf(pay, sizeof(pay),
                     "{\"sub\":\"u\",\"%s\":\"%s\"," ISS_A ",\"aud\":\"tollgate\"," TIMES "}",
                     rows[i].claim, val);
        struct token t = make_token(H("EdDSA", "ed1"), pay, S_ED, M_NONE);
        struct tg_jwt_claims c;
        enum tg_jwt_status st = tg_jwt_verify(t.s, t.len, issuers, 3, NOW_MS, &c);
        if (st != rows[i].want)
            fail_msg("%s of %zu bytes: %s", rows[i].claim, rows[i].len, tg_jwt_status_name(st));
        if (st == TG_JWT_OK) {
            const char *got = strcmp(rows[i].claim, "sub") == 0      ? c.principal
                              : strcmp(rows[i].claim, "tenant") == 0 ? c.tenant
                                                                     : c.policy;
            assert_string_equal(got, val);
        }
        free(t.s);
    }
}

/* J23: the size cap is checked before anything else; a valid token just under it passes. */
static void test_size_limit(void **state)
{
    struct tg_jwt_claims c;
    char *pay = malloc(TG_JWT_MAX_TOKEN);
    assert_non_null(pay);
    /* Find the largest padding that keeps the token within the limit. */
    size_t pad = 5000;
    struct token t = {NULL, 0};
    for (;; pad++) {
        snprintf(pay, TG_JWT_MAX_TOKEN,
                 "{\"sub\":\"u1\"," ISS_A ",\"aud\":\"tollgate\"," TIMES ",\"pad\":\"%0*d\"}",
                 (int)pad, 0);
        struct token n = make_token(H("HS256", "hs1"), pay, S_HS, M_NONE);
        if (n.len > TG_JWT_MAX_TOKEN) {
            /* n is a validly signed token one step over the limit. */
            assert_int_equal(tg_jwt_verify(n.s, n.len, issuers, 3, NOW_MS, &c), TG_JWT_TOO_LARGE);
            free(n.s);
            break;
        }
        free(t.s);
        t = n;
    }
    assert_true(t.len <= TG_JWT_MAX_TOKEN && t.len > TG_JWT_MAX_TOKEN - 4);
    assert_int_equal(tg_jwt_verify(t.s, t.len, issuers, 3, NOW_MS, &c), TG_JWT_OK);
    free(t.s);
    free(pay);

    /* 1 MB of 'A', and the empty and NULL token. */
    size_t big = 1 << 20;
    char *junk = malloc(big);
    assert_non_null(junk);
    memset(junk, 'A', big);
    junk[100] = '.';
    junk[200] = '.';
    assert_int_equal(tg_jwt_verify(junk, big, issuers, 3, NOW_MS, &c), TG_JWT_TOO_LARGE);
    assert_int_equal(tg_jwt_verify(junk, TG_JWT_MAX_TOKEN + 1, issuers, 3, NOW_MS, &c),
                     TG_JWT_TOO_LARGE);
    assert_int_equal(tg_jwt_verify(junk, TG_JWT_MAX_TOKEN, issuers, 3, NOW_MS, &c),
                     TG_JWT_MALFORMED);
    free(junk);
    assert_int_equal(tg_jwt_verify("", 0, issuers, 3, NOW_MS, &c), TG_JWT_MALFORMED);
    assert_int_equal(tg_jwt_verify(NULL, 0, issuers, 3, NOW_MS, &c), TG_JWT_MALFORMED);
    assert_int_equal(tg_jwt_verify("..", 2, issuers, 3, NOW_MS, &c), TG_JWT_MALFORMED);
}

/* J30: every single-bit change anywhere in a valid token is refused. */
static void test_bitflips(void **state)
{
    static const struct {
        const char *hdr;
        enum signer s;
    } algs[] = {{H("RS256", "rsa1"), S_RS256},
                {H("ES256", "ec256"), S_ES256},
                {H("EdDSA", "ed1"), S_ED},
                {H("HS256", "hs1"), S_HS}};
    struct tg_jwt_claims c;
    for (size_t a = 0; a < sizeof(algs) / sizeof(algs[0]); a++) {
        struct token t = make_token(algs[a].hdr, P_OK, algs[a].s, M_NONE);
        assert_int_equal(tg_jwt_verify(t.s, t.len, issuers, 3, NOW_MS, &c), TG_JWT_OK);
        for (size_t i = 0; i < t.len; i++) {
            for (int b = 0; b < 8; b++) {
                t.s[i] ^= (char)(1 << b);
                enum tg_jwt_status st = tg_jwt_verify(t.s, t.len, issuers, 3, NOW_MS, &c);
                if (st == TG_JWT_OK)
                    fail_msg("%s: flipping bit %d of byte %zu still verifies", algs[a].hdr, b, i);
                t.s[i] ^= (char)(1 << b);
            }
        }
        /* Every prefix is refused too. */
        for (size_t n = 0; n < t.len; n++)
            assert_int_not_equal(tg_jwt_verify(t.s, n, issuers, 3, NOW_MS, &c), TG_JWT_OK);
        free(t.s);
    }
}

/* Tokens made by PyJWT 2.6 (tests/data/jwt/make-fixtures.py) verify here. */
static void test_pyjwt_interop(void **state)
{
    char path[PATH_MAX], err[512], line[TG_JWT_MAX_TOKEN + 2];
    assert_true(snprintf(path, sizeof(path), "%s/jwt/fuzz-jwks.json", data_dir) <
                (int)sizeof(path));
    struct tg_jwks *set = tg_jwks_load(path, err, sizeof(err));
    if (!set)
        fail_msg("%s", err);
    assert_int_equal(tg_jwks_count(set), 5);
    static const char *const aud[] = {"tollgate"};
    struct tg_jwt_issuer iss = {
        "https://fuzz.example", aud, 1, set, ALL_ALGS, "sub", "tenant", "tier", 0};
    assert_true(snprintf(path, sizeof(path), "%s/jwt/fuzz-tokens.txt", data_dir) <
                (int)sizeof(path));
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    unsigned seen = 0;
    while (fgets(line, sizeof(line), f)) {
        size_t n = strcspn(line, "\r\n");
        struct tg_jwt_claims c;
        enum tg_jwt_status st = tg_jwt_verify(line, n, &iss, 1, NOW_MS, &c);
        if (st != TG_JWT_OK)
            fail_msg("fixture token %u: %s", seen, tg_jwt_status_name(st));
        assert_string_equal(c.principal, "fuzz-user");
        assert_string_equal(c.tenant, "acme");
        assert_string_equal(c.policy, "standard");
        seen++;
    }
    fclose(f);
    assert_int_equal(seen, TG_JWT_ALG_COUNT); /* one per algorithm */
    tg_jwks_free(set);
}

/* ------------------------------------------------------------------------------------------ */
/* JWKS loading                                                                               */

static void test_jwks_ok(void **state)
{
    assert_int_equal(tg_jwks_count(jwks_a), 6);
    assert_int_equal(tg_jwks_count(jwks_b), 1);
    assert_int_equal(tg_jwks_count(NULL), 0);
    tg_jwks_free(NULL);

    /* Leading zero octets in n, e = 3, unknown members, a JWK with alg, no kid. */
    char buf[2048];
    snprintf(buf, sizeof(buf),
             "{\"other\":1,\"keys\":[{\"kty\":\"RSA\",\"alg\":\"RS512\",\"n\":\"%s\",\"e\":\"Aw\","
             "\"x5c\":[\"MIIB\"],\"ext\":true}]}",
             rsa_n0);
    struct tg_jwks *j = load_text("big.json", buf);
    assert_int_equal(tg_jwks_count(j), 1);
    tg_jwks_free(j);
}

struct jwks_bad {
    const char *name;
    const char *base;  /* JWK members (a jwk_* string), or NULL for a literal document */
    const char *extra; /* members added after base (a later duplicate replaces: see below) */
    const char *doc;   /* whole document when base is NULL */
    const char *error; /* expected message after "PATH: " */
};

static void test_jwks_errors(void **state)
{
    const struct jwks_bad rows[] = {
        {"RSA private exponent", jwk_rsa, ",\"d\":\"AQAB\"", NULL,
         "keys[1].d: private key material"},
        {"RSA private prime", jwk_rsa, ",\"p\":\"AQAB\"", NULL, "keys[1].p: private key material"},
        {"EC private key", jwk_ec256, ",\"d\":\"AQAB\"", NULL, "keys[1].d: private key material"},
        {"OKP private key", jwk_ed, ",\"d\":\"AQAB\"", NULL, "keys[1].d: private key material"},
        {"RSA 1024 bits", jwk_rsa1024, "", NULL, "keys[1].n: RSA modulus of 1024 bits"},
        {"unknown kty", "\"kty\":\"RSA-X\",\"n\":\"AQAB\"", "", NULL,
         "keys[1].kty: unsupported key type \"RSA-X\""},
        {"kty missing", "\"n\":\"AQAB\"", "", NULL, "keys[1].kty: missing"},
        {"EC P-521", "\"kty\":\"EC\",\"crv\":\"P-521\",\"x\":\"AA\",\"y\":\"AA\"", "", NULL,
         "keys[1].crv: unsupported curve \"P-521\""},
        {"EC secp256k1", "\"kty\":\"EC\",\"crv\":\"secp256k1\",\"x\":\"AA\",\"y\":\"AA\"", "", NULL,
         "keys[1].crv: unsupported curve"},
        {"EC crv missing", "\"kty\":\"EC\",\"x\":\"AA\",\"y\":\"AA\"", "", NULL,
         "keys[1].crv: missing"},
        {"OKP X25519", "\"kty\":\"OKP\",\"crv\":\"X25519\",\"x\":\"AA\"", "", NULL,
         "keys[1].crv: unsupported curve \"X25519\""},
        {"EC P-384 coordinates as P-256", NULL, NULL, NULL, NULL}, /* filled below */
        {"EC point not on the curve", NULL, NULL, NULL, NULL},     /* filled below */
        {"use enc", jwk_rsa, ",\"use\":\"enc\"", NULL, "keys[1].use: must be \"sig\""},
        {"use not a string", jwk_rsa, ",\"use\":1", NULL, "keys[1].use: must be \"sig\""},
        {"key_ops without verify", jwk_rsa, ",\"key_ops\":[\"encrypt\"]", NULL,
         "keys[1].key_ops: does not allow \"verify\""},
        {"alg of another key type", jwk_rsa, ",\"alg\":\"ES256\"", NULL,
         "keys[1].alg: ES256 does not fit a RSA key"},
        {"alg HS256 on an EC key", jwk_ec384, ",\"alg\":\"HS256\"", NULL,
         "keys[1].alg: HS256 does not fit"},
        {"alg unknown", jwk_rsa, ",\"alg\":\"RSA-OAEP\"", NULL,
         "keys[1].alg: unsupported algorithm"},
        {"alg none", jwk_hs, "", NULL, NULL}, /* filled below */
        {"oct 16 bytes", "\"kty\":\"oct\",\"k\":\"AAAAAAAAAAAAAAAAAAAAAA\"", "", NULL,
         "keys[1].k: HMAC secret of 16 bytes"},
        {"oct k missing", "\"kty\":\"oct\"", "", NULL, "keys[1].k: missing"},
        {"n with padding", "\"kty\":\"RSA\",\"n\":\"AQAB==\",\"e\":\"AQAB\"", "", NULL,
         "keys[1].n: not canonical base64url"},
        {"e with +", "\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"A+AB\"", "", NULL,
         "keys[1].e: not canonical base64url"},
        {"n missing", "\"kty\":\"RSA\",\"e\":\"AQAB\"", "", NULL, "keys[1].n: missing"},
        {"n not a string", "\"kty\":\"RSA\",\"n\":5,\"e\":\"AQAB\"", "", NULL,
         "keys[1].n: must be"},
        {"e even", NULL, NULL, NULL, NULL},       /* filled below */
        {"e of 9 bytes", NULL, NULL, NULL, NULL}, /* filled below */
        {"kid empty", jwk_ed, ",\"kid\":\"\"", NULL, "keys[1].kid: must be a string"},
        {"kid number", jwk_ed, ",\"kid\":7", NULL, "keys[1].kid: must be a string"},
        {"key not an object", NULL, NULL, "{\"keys\":[\"RSA\"]}", "keys[0]: must be an object"},
        {"keys missing", NULL, NULL, "{\"key\":[]}", "keys: must be a non-empty array"},
        {"keys empty", NULL, NULL, "{\"keys\":[]}", "keys: must be a non-empty array"},
        {"top-level array", NULL, NULL, "[{\"kty\":\"oct\"}]", "keys: must be a non-empty array"},
        {"not JSON", NULL, NULL, "{\"keys\":[", "line 1"},
        {"duplicate member", NULL, NULL, "{\"keys\":[],\"keys\":[]}",
         "line 1 column 17: duplicate object key"},
        {"duplicate kid", NULL, NULL, NULL, NULL}, /* filled below */
    };
    size_t nrows = sizeof(rows) / sizeof(rows[0]);
    struct jwks_bad *r = malloc(sizeof(rows));
    assert_non_null(r);
    memcpy(r, rows, sizeof(rows));
    char p384_as_256[300], off_curve[300], rsa_even[600], rsa_e9[600], dup_kid[1200], hs_none[200];
    snprintf(hs_none, sizeof(hs_none), "\"kty\":\"oct\",\"alg\":\"none\",\"k\":\"%s\"", hs_k);
    snprintf(p384_as_256, sizeof(p384_as_256),
             "\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"", ec384_x, ec384_y);
    snprintf(off_curve, sizeof(off_curve),
             "\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"", ec256_x, ec256_x);
    snprintf(rsa_even, sizeof(rsa_even), "\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAA\"", rsa_n);
    snprintf(rsa_e9, sizeof(rsa_e9), "\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQEBAQEBAQEB\"", rsa_n);
    snprintf(dup_kid, sizeof(dup_kid), "{\"keys\":[{\"kid\":\"k\",%s},{\"kid\":\"k\",%s}]}", jwk_ed,
             jwk_ec256);
    for (size_t i = 0; i < nrows; i++) {
        if (strcmp(r[i].name, "EC P-384 coordinates as P-256") == 0)
            r[i] =
                (struct jwks_bad){r[i].name, p384_as_256, "", NULL, "keys[1].x: must be 32 bytes"};
        else if (strcmp(r[i].name, "EC point not on the curve") == 0)
            r[i] =
                (struct jwks_bad){r[i].name, off_curve, "", NULL, "keys[1].x: not a valid P-256"};
        else if (strcmp(r[i].name, "alg none") == 0)
            r[i] = (struct jwks_bad){r[i].name, hs_none, "", NULL,
                                     "keys[1].alg: unsupported algorithm"};
        else if (strcmp(r[i].name, "e even") == 0)
            r[i] =
                (struct jwks_bad){r[i].name, rsa_even, "", NULL, "keys[1].e: RSA public exponent"};
        else if (strcmp(r[i].name, "e of 9 bytes") == 0)
            r[i] = (struct jwks_bad){r[i].name, rsa_e9, "", NULL, "keys[1].e: RSA public exponent"};
        else if (strcmp(r[i].name, "duplicate kid") == 0)
            r[i] = (struct jwks_bad){r[i].name, NULL, NULL, dup_kid,
                                     "keys[1].kid: duplicate kid \"k\" (also keys[0])"};
    }
    for (size_t i = 0; i < nrows; i++) {
        char doc[2048], path[PATH_MAX], err[512], want[700];
        if (r[i].base) /* key 0 is valid, so the index in the message is checked too */
            snprintf(doc, sizeof(doc), "{\"keys\":[{%s},{%s%s}]}", jwk_ed, r[i].base, r[i].extra);
        else
            snprintf(doc, sizeof(doc), "%s", r[i].doc);
        write_file("bad.json", doc, path, sizeof(path));
        memset(err, 0, sizeof(err));
        struct tg_jwks *j = tg_jwks_load(path, err, sizeof(err));
        if (j)
            fail_msg("%s: loaded", r[i].name);
        if (r[i].error) {
            assert_true(snprintf(want, sizeof(want), "%s: %s", path, r[i].error) <
                        (int)sizeof(want));
            if (strncmp(err, want, strlen(want)) != 0)
                fail_msg("%s:\n  got  %s\n  want %s...", r[i].name, err, want);
        } else if (strncmp(err, path, strlen(path)) != 0 || !strstr(err, "keys[1].")) {
            fail_msg("%s: %s", r[i].name, err);
        }
    }
    free(r);

    /* A missing file names the path; a NULL or tiny err buffer is fine. */
    char err[512];
    assert_null(tg_jwks_load("/nonexistent/jwks.json", err, sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent/jwks.json"));
    assert_null(tg_jwks_load("/nonexistent/jwks.json", NULL, 0));
    assert_null(tg_jwks_load("/nonexistent/jwks.json", err, 1));
    assert_int_equal(err[0], '\0');
}

/* ------------------------------------------------------------------------------------------ */
/* Names                                                                                      */

static void test_names(void **state)
{
    for (int a = 0; a < TG_JWT_ALG_COUNT; a++)
        assert_int_equal(tg_jwt_alg_parse(tg_jwt_alg_name((enum tg_jwt_alg)a)), a);
    static const char *const bad[] = {"none",  "None",  "NONE",  "",      "rs256",   "RS256 ",
                                      "ES512", "HS384", "PS384", "PS512", "EdDSA\n", "ED25519"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(tg_jwt_alg_parse(bad[i]), -1);
    assert_int_equal(tg_jwt_alg_parse(NULL), -1);
    assert_string_equal(tg_jwt_alg_name(TG_JWT_ALG_COUNT), "unknown");
    assert_string_equal(tg_jwt_status_name(TG_JWT_BAD_SIGNATURE), "bad_signature");
    /* Status names are distinct. */
    for (int i = TG_JWT_OK; i <= TG_JWT_BAD_CLAIM; i++) {
        assert_string_not_equal(tg_jwt_status_name((enum tg_jwt_status)i), "unknown");
        for (int k = 0; k < i; k++)
            assert_string_not_equal(tg_jwt_status_name((enum tg_jwt_status)i),
                                    tg_jwt_status_name((enum tg_jwt_status)k));
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Cache                                                                                      */

static struct tg_jwt_claims claims_for(const char *principal, int64_t exp_ms, int64_t nbf_ms)
{
    struct tg_jwt_claims c;
    memset(&c, 0, sizeof(c));
    /* Test principals are short; bounded copies keep -Wformat-truncation quiet at -O3. */
    size_t n = strnlen(principal, sizeof(c.tenant) - 3);
    memcpy(c.principal, principal, n);
    memcpy(c.tenant, "t-", 2);
    memcpy(c.tenant + 2, principal, n);
    c.exp_ms = exp_ms;
    c.nbf_ms = nbf_ms;
    c.issuer_index = 2;
    return c;
}

static void test_cache(void **state)
{
    struct tg_jwt_cache *c = tg_jwt_cache_new(4);
    struct tg_jwt_claims in, out;
    const char *tok = "aaa.bbb.ccc";
    assert_non_null(c);

    /* Miss, put, hit with the same claims. */
    assert_false(tg_jwt_cache_get(c, 1, tok, strlen(tok), NOW_MS, 0, &out));
    in = claims_for("alice", NOW_MS + 60000, 0);
    tg_jwt_cache_put(c, 1, tok, strlen(tok), &in);
    memset(&out, 0, sizeof(out));
    assert_true(tg_jwt_cache_get(c, 1, tok, strlen(tok), NOW_MS, 0, &out));
    assert_memory_equal(&out, &in, sizeof(in));
    /* One byte different, or a prefix: miss. */
    assert_false(tg_jwt_cache_get(c, 1, "aaa.bbb.ccd", 11, NOW_MS, 0, &out));
    assert_false(tg_jwt_cache_get(c, 1, tok, strlen(tok) - 1, NOW_MS, 0, &out));
    /* Another generation: miss, and the entry is not disturbed. */
    assert_false(tg_jwt_cache_get(c, 2, tok, strlen(tok), NOW_MS, 0, &out));
    assert_true(tg_jwt_cache_get(c, 1, tok, strlen(tok), NOW_MS, 0, &out));
    /* Expiry rechecked with leeway: within leeway hits, past it misses and drops the entry. */
    assert_true(tg_jwt_cache_get(c, 1, tok, strlen(tok), NOW_MS + 60000, 0, &out));
    assert_true(tg_jwt_cache_get(c, 1, tok, strlen(tok), NOW_MS + 65000, 5000, &out));
    assert_false(tg_jwt_cache_get(c, 1, tok, strlen(tok), NOW_MS + 65001, 5000, &out));
    assert_false(tg_jwt_cache_get(c, 1, tok, strlen(tok), NOW_MS, 0, &out)); /* dropped */
    /* nbf rechecked too. */
    in = claims_for("bob", NOW_MS + 60000, NOW_MS + 10000);
    tg_jwt_cache_put(c, 1, tok, strlen(tok), &in);
    assert_false(tg_jwt_cache_get(c, 1, tok, strlen(tok), NOW_MS, 0, &out));
    assert_true(tg_jwt_cache_get(c, 1, tok, strlen(tok), NOW_MS, 10000, &out));
    assert_true(tg_jwt_cache_get(c, 1, tok, strlen(tok), NOW_MS + 10000, 0, &out));
    assert_string_equal(out.principal, "bob");
    /* A put for a new generation replaces the entry in place. */
    in = claims_for("carol", NOW_MS + 60000, 0);
    tg_jwt_cache_put(c, 7, tok, strlen(tok), &in);
    assert_false(tg_jwt_cache_get(c, 1, tok, strlen(tok), NOW_MS, 0, &out));
    assert_true(tg_jwt_cache_get(c, 7, tok, strlen(tok), NOW_MS, 0, &out));
    assert_string_equal(out.principal, "carol");
    tg_jwt_cache_free(c);

    /* NULL cache: always a miss, put is a no-op. */
    assert_false(tg_jwt_cache_get(NULL, 1, tok, strlen(tok), NOW_MS, 0, &out));
    tg_jwt_cache_put(NULL, 1, tok, strlen(tok), &in);
    tg_jwt_cache_free(NULL);
}

/* FIFO eviction: the oldest entry goes first; re-putting does not duplicate. */
static void test_cache_eviction(void **state)
{
    enum { CAP = 8, N = 40 };
    struct tg_jwt_cache *c = tg_jwt_cache_new(CAP);
    struct tg_jwt_claims in, out;
    char tok[N][32];
    assert_non_null(c);
    for (int i = 0; i < N; i++) {
        snprintf(tok[i], sizeof(tok[i]), "tok-%d", i);
        in = claims_for(tok[i], NOW_MS + 60000, 0);
        tg_jwt_cache_put(c, 1, tok[i], strlen(tok[i]), &in);
        tg_jwt_cache_put(c, 1, tok[i], strlen(tok[i]), &in); /* same token again */
        /* Exactly the last CAP tokens are present, each with its own claims. */
        for (int k = 0; k <= i; k++) {
            bool hit = tg_jwt_cache_get(c, 1, tok[k], strlen(tok[k]), NOW_MS, 0, &out);
            if (hit != (k > i - CAP))
                fail_msg("after %d puts, token %d: hit=%d", i + 1, k, hit);
            if (hit)
                assert_string_equal(out.principal, tok[k]);
        }
    }
    tg_jwt_cache_free(c);

    /* Capacity 0 still works as capacity 1. */
    c = tg_jwt_cache_new(0);
    assert_non_null(c);
    in = claims_for("x", NOW_MS + 1, 0);
    tg_jwt_cache_put(c, 1, "a", 1, &in);
    tg_jwt_cache_put(c, 1, "b", 1, &in);
    assert_false(tg_jwt_cache_get(c, 1, "a", 1, NOW_MS, 0, &out));
    assert_true(tg_jwt_cache_get(c, 1, "b", 1, NOW_MS, 0, &out));
    tg_jwt_cache_free(c);
}

/* The cache in front of verification, as the filter uses it. */
static void test_cache_with_verify(void **state)
{
    struct tg_jwt_cache *c = tg_jwt_cache_new(16);
    struct token t = make_token(H("RS256", "rsa1"), P_OK, S_RS256, M_NONE);
    struct tg_jwt_claims v, h;
    assert_false(tg_jwt_cache_get(c, 3, t.s, t.len, NOW_MS, 30000, &h));
    assert_int_equal(tg_jwt_verify(t.s, t.len, issuers, 3, NOW_MS, &v), TG_JWT_OK);
    tg_jwt_cache_put(c, 3, t.s, t.len, &v);
    assert_true(tg_jwt_cache_get(c, 3, t.s, t.len, NOW_MS, 30000, &h));
    assert_memory_equal(&h, &v, sizeof(v));
    /* exp 1750000300 + 30 s leeway. */
    assert_true(tg_jwt_cache_get(c, 3, t.s, t.len, 1750000330000LL, 30000, &h));
    assert_false(tg_jwt_cache_get(c, 3, t.s, t.len, 1750000330001LL, 30000, &h));
    assert_int_equal(tg_jwt_verify(t.s, t.len, issuers, 3, 1750000330001LL, &v), TG_JWT_EXPIRED);
    free(t.s);
    tg_jwt_cache_free(c);
}

/* ------------------------------------------------------------------------------------------ */
/* Allocation failures (STYLE §12)                                                            */


static void fm_begin(unsigned long n)
{
    tg_test_failmalloc_arm(n);
}

static void test_failmalloc(void **state)
{
    char path[PATH_MAX], err[512];
    struct token t = make_token(H("ES384", "ec384"), P_OK, S_ES384, M_NONE);
    snprintf(path, sizeof(path), "%s/a.json", tmpdir);
    json_set_alloc_funcs(tg_mem_malloc, tg_mem_free); /* jansson's failures are covered too */
    unsigned long n;
    for (n = 1;; n++) {
        fm_begin(n);
        struct tg_jwks *j = tg_jwks_load(path, err, sizeof(err));
        tg_test_failmalloc_disarm();
        if (!tg_test_failmalloc_failed()) {
            assert_non_null(j);
            tg_jwks_free(j);
            break;
        }
        if (j)
            fail_msg("jwks: allocation %lu failed but the load succeeded", n);
        assert_true(err[0] != '\0');
    }
    assert_true(n > 10);
    for (n = 1;; n++) {
        struct tg_jwt_claims c;
        fm_begin(n);
        enum tg_jwt_status st = tg_jwt_verify(t.s, t.len, issuers, 3, NOW_MS, &c);
        tg_test_failmalloc_disarm();
        if (!tg_test_failmalloc_failed()) {
            assert_int_equal(st, TG_JWT_OK);
            break;
        }
        assert_int_not_equal(st, TG_JWT_OK); /* fails closed */
    }
    for (n = 1;; n++) {
        fm_begin(n);
        struct tg_jwt_cache *c = tg_jwt_cache_new(100);
        tg_test_failmalloc_disarm();
        if (!tg_test_failmalloc_failed()) {
            assert_non_null(c);
            tg_jwt_cache_free(c);
            break;
        }
        assert_null(c);
    }
    json_set_alloc_funcs(malloc, free);
    free(t.s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),          cmocka_unit_test(test_verify_table),
        cmocka_unit_test(test_claims_out),     cmocka_unit_test(test_claim_lengths),
        cmocka_unit_test(test_size_limit),     cmocka_unit_test(test_bitflips),
        cmocka_unit_test(test_pyjwt_interop),  cmocka_unit_test(test_jwks_ok),
        cmocka_unit_test(test_jwks_errors),    cmocka_unit_test(test_cache),
        cmocka_unit_test(test_cache_eviction), cmocka_unit_test(test_cache_with_verify),
        cmocka_unit_test(test_failmalloc),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
