/*
 * jwt.c - JWS compact verification against JWKS key sets, and the verified-
 * token cache.
 *
 * tg_jwt_verify() checks in a fixed order, and a token stops at the first
 * failing step: size, structure / base64url / JSON, header rules (alg, forbidden
 * members, crit), issuer, key and alg match, signature, claims.  Everything up
 * to the signature costs microseconds and depends only on the token, so the
 * only timing an attacker can observe is which of those steps refused it.
 *
 * Keys are built into EVP_PKEY objects (OSSL_PARAM_BLD + EVP_PKEY_fromdata)
 * when the JWKS is loaded, so verification never parses key material.  A key
 * set is immutable after load and may be read by several workers at once.
 */
#include "filters/jwt.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include "proxy/mem.h"

#define MAX_JSON_DEPTH 16               /* THREATS §3.1.5: checked before jansson sees the text */
#define MAX_NUMERIC_DATE 253402300799LL /* 9999-12-31T23:59:59Z; later dates are bogus */
#define MAX_KID 255                     /* longest kid accepted in a JWKS */
#define MIN_RSA_BITS 2048               /* RFC 7518 §3.3 */
#define MAX_RSA_BITS 16384              /* bounds verification cost (OpenSSL's own ceiling) */
#define MIN_OCT_BYTES 32                /* RFC 7518 §3.2: a key at least as long as the hash */
#define MAX_OCT_BYTES 1024              /* anything longer is a mistake */

/* ------------------------------------------------------------------------------------------ */
/* Algorithms and status names                                                                */

static const char *const alg_names[TG_JWT_ALG_COUNT] = {
    [TG_JWT_RS256] = "RS256", [TG_JWT_RS384] = "RS384", [TG_JWT_RS512] = "RS512",
    [TG_JWT_PS256] = "PS256", [TG_JWT_ES256] = "ES256", [TG_JWT_ES384] = "ES384",
    [TG_JWT_EDDSA] = "EdDSA", [TG_JWT_HS256] = "HS256",
};

int tg_jwt_alg_parse(const char *name)
{
    /* RFC 7515 §4.1.1: alg values are case-sensitive, so "rs256" and "NONE" are unknown. */
    if (!name)
        return -1;
    for (int i = 0; i < TG_JWT_ALG_COUNT; i++)
        if (strcmp(name, alg_names[i]) == 0)
            return i;
    return -1;
}

const char *tg_jwt_alg_name(enum tg_jwt_alg alg)
{
    if ((unsigned)alg >= TG_JWT_ALG_COUNT)
        return "unknown";
    return alg_names[alg];
}

const char *tg_jwt_status_name(enum tg_jwt_status st)
{
    switch (st) {
    case TG_JWT_OK: return "ok";
    case TG_JWT_MALFORMED: return "malformed";
    case TG_JWT_TOO_LARGE: return "too_large";
    case TG_JWT_BAD_ALG: return "bad_alg";
    case TG_JWT_FORBIDDEN_HEADER: return "forbidden_header";
    case TG_JWT_UNKNOWN_CRIT: return "unknown_crit";
    case TG_JWT_UNKNOWN_ISSUER: return "unknown_issuer";
    case TG_JWT_UNKNOWN_KID: return "unknown_kid";
    case TG_JWT_KEY_MISMATCH: return "key_mismatch";
    case TG_JWT_BAD_SIGNATURE: return "bad_signature";
    case TG_JWT_MISSING_EXP: return "missing_exp";
    case TG_JWT_EXPIRED: return "expired";
    case TG_JWT_NOT_YET_VALID: return "not_yet_valid";
    case TG_JWT_BAD_AUDIENCE: return "bad_audience";
    case TG_JWT_BAD_CLAIM: return "bad_claim";
    }
    return "unknown";
}

/* ------------------------------------------------------------------------------------------ */
/* Key sets                                                                                   */

enum key_kind {
    KEY_RSA,     /* RS256 RS384 RS512 PS256 */
    KEY_EC_P256, /* ES256 */
    KEY_EC_P384, /* ES384 */
    KEY_ED25519, /* EdDSA */
    KEY_OCT,     /* HS256 */
};

struct jwk {
    char *kid;             /* NUL-terminated, or NULL when the JWK has none */
    size_t kid_len;        /* strlen(kid) */
    enum key_kind kind;    /* key type and curve */
    int alg;               /* the JWK's own "alg" (enum tg_jwt_alg), or -1 for any fitting alg */
    EVP_PKEY *pkey;        /* public key, all kinds but KEY_OCT */
    unsigned char *secret; /* KEY_OCT secret (wiped on free) */
    size_t secret_len;     /* its length */
};

struct tg_jwks {
    struct jwk *keys; /* nkeys entries */
    size_t nkeys;     /* at least 1 */
};

/* The key kind each algorithm needs. */
static enum key_kind alg_kind(enum tg_jwt_alg alg)
{
    switch (alg) {
    case TG_JWT_RS256:
    case TG_JWT_RS384:
    case TG_JWT_RS512:
    case TG_JWT_PS256: return KEY_RSA;
    case TG_JWT_ES256: return KEY_EC_P256;
    case TG_JWT_ES384: return KEY_EC_P384;
    case TG_JWT_EDDSA: return KEY_ED25519;
    case TG_JWT_HS256:
    case TG_JWT_ALG_COUNT: break;
    }
    return KEY_OCT;
}

/* RFC 8725 §3.1: a key is used with exactly the algorithms its type (and own alg) allow. */
static bool key_fits(const struct jwk *k, enum tg_jwt_alg alg)
{
    return k->kind == alg_kind(alg) && (k->alg < 0 || k->alg == (int)alg);
}

static void jwk_dispose(struct jwk *k)
{
    tg_mem_free(k->kid);
    k->kid = NULL;
    EVP_PKEY_free(k->pkey);
    k->pkey = NULL;
    if (k->secret) {
        OPENSSL_cleanse(k->secret, k->secret_len);
        tg_mem_free(k->secret);
        k->secret = NULL;
    }
}

void tg_jwks_free(struct tg_jwks *jwks)
{
    if (!jwks)
        return;
    for (size_t i = 0; i < jwks->nkeys; i++)
        jwk_dispose(&jwks->keys[i]);
    tg_mem_free(jwks->keys);
    tg_mem_free(jwks);
}

size_t tg_jwks_count(const struct tg_jwks *jwks)
{
    return jwks ? jwks->nkeys : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* base64url (RFC 4648 §5, RFC 7515 §2: no padding, no whitespace)                             */

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decoded size of n base64url characters (valid lengths only). */
static size_t b64url_decoded_len(size_t n)
{
    return n / 4 * 3 + (n % 4 == 0 ? 0 : n % 4 - 1);
}

/*
 * Decode in[0..n) into out (room for b64url_decoded_len(n) bytes).  Refuses
 * characters outside the alphabet (so '=', '+', '/' and whitespace), a length
 * of 1 mod 4, and non-zero unused bits in the last character: RFC 4648 §3.5
 * canonical encoding, so a token has exactly one spelling.  -1 on error.
 */
static int b64url_decode(const char *in, size_t n, unsigned char *out, size_t *outlen)
{
    if (n % 4 == 1)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) /* leftover bits (2 or 4) must be zero */
        return -1;
    *outlen = o;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* JWKS loading                                                                               */

/* What tg_jwks_load() is working on, for error messages. */
struct load_ctx {
    const char *path; /* the JWKS file */
    char *err;        /* caller's message buffer (may be NULL) */
    size_t errlen;    /* its size */
    size_t index;     /* the key being read */
};

/* "PATH: keys[i].field: message" (field may be NULL: "PATH: keys[i]: message"). */
__attribute__((format(printf, 3, 4))) static void key_err(struct load_ctx *lc, const char *field,
                                                          const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    if (!lc->err || lc->errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (field)
        snprintf(lc->err, lc->errlen, "%s: keys[%zu].%s: %s", lc->path, lc->index, field, msg);
    else
        snprintf(lc->err, lc->errlen, "%s: keys[%zu]: %s", lc->path, lc->index, msg);
}

/* "PATH: message", for errors outside a key. */
__attribute__((format(printf, 2, 3))) static void file_err(struct load_ctx *lc, const char *fmt,
                                                           ...)
{
    char msg[300];
    va_list ap;
    if (!lc->err || lc->errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(lc->err, lc->errlen, "%s: %s", lc->path, msg);
}

/*
 * Decode the base64url member `name` of a JWK into a new tg_mem buffer.
 * Returns 1 with *out set, 0 when absent and not required, -1 on error.
 */
static int get_b64(struct load_ctx *lc, json_t *jwk, const char *name, bool required,
                   unsigned char **out, size_t *outlen)
{
    json_t *v = json_object_get(jwk, name);
    *out = NULL;
    *outlen = 0;
    if (!v) {
        if (!required)
            return 0;
        key_err(lc, name, "missing");
        return -1;
    }
    if (!json_is_string(v) || json_string_length(v) == 0) {
        key_err(lc, name, "must be a non-empty base64url string");
        return -1;
    }
    size_t n = json_string_length(v);
    unsigned char *buf = tg_mem_malloc(b64url_decoded_len(n) + 1);
    if (!buf) {
        key_err(lc, name, "out of memory");
        return -1;
    }
    if (n % 4 == 1 || b64url_decode(json_string_value(v), n, buf, outlen) < 0) {
        tg_mem_free(buf);
        key_err(lc, name, "not canonical base64url (RFC 7515 §2: no padding, '-' and '_')");
        return -1;
    }
    *out = buf;
    return 1;
}

/* EVP_PKEY_fromdata() over what bld holds; NULL on failure. */
static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = params ? EVP_PKEY_CTX_new_from_name(NULL, type, NULL) : NULL;
    EVP_PKEY *pkey = NULL;
    if (ctx && EVP_PKEY_fromdata_init(ctx) == 1 &&
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

/* Leading zero octets are tolerated in n and e (RFC 7518 §6.3.1.1 forbids, some IdPs emit). */
static void strip_zeros(const unsigned char **p, size_t *n)
{
    while (*n > 0 && (*p)[0] == 0) {
        (*p)++;
        (*n)--;
    }
}

static int load_rsa(struct load_ctx *lc, json_t *jwk, struct jwk *k)
{
    unsigned char *n = NULL, *e = NULL;
    size_t nlen, elen;
    BIGNUM *bn_n = NULL, *bn_e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    int rv = -1;

    if (get_b64(lc, jwk, "n", true, &n, &nlen) < 0 || get_b64(lc, jwk, "e", true, &e, &elen) < 0)
        goto out;
    const unsigned char *np = n, *ep = e;
    strip_zeros(&np, &nlen);
    strip_zeros(&ep, &elen);
    size_t bits = nlen == 0 ? 0 : (nlen - 1) * 8;
    for (unsigned top = nlen ? np[0] : 0; top; top >>= 1)
        bits++;
    if (bits < MIN_RSA_BITS || bits > MAX_RSA_BITS || !(np[nlen - 1] & 1)) {
        key_err(lc, "n", "RSA modulus of %zu bits: must be odd and %d..%d bits", bits, MIN_RSA_BITS,
                MAX_RSA_BITS);
        goto out;
    }
    /* A huge public exponent would make every verification as slow as a private-key operation. */
    if (elen == 0 || elen > 8 || !(ep[elen - 1] & 1) || (elen == 1 && ep[0] < 3)) {
        key_err(lc, "e", "RSA public exponent must be odd, at least 3 and at most 64 bits");
        goto out;
    }
    bn_n = BN_bin2bn(np, (int)nlen, NULL);
    bn_e = BN_bin2bn(ep, (int)elen, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (!bn_n || !bn_e || !bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e)) {
        key_err(lc, NULL, "out of memory");
        goto out;
    }
    k->pkey = pkey_fromdata("RSA", bld);
    if (!k->pkey || EVP_PKEY_get_bits(k->pkey) < MIN_RSA_BITS) {
        key_err(lc, "n", "OpenSSL refused the RSA key");
        goto out;
    }
    k->kind = KEY_RSA;
    rv = 0;
out:
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    tg_mem_free(n);
    tg_mem_free(e);
    return rv;
}

static int load_ec(struct load_ctx *lc, json_t *jwk, struct jwk *k)
{
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    const char *group;
    size_t flen;
    unsigned char *x = NULL, *y = NULL;
    size_t xlen, ylen;
    unsigned char point[1 + 2 * 48];
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY_CTX *check = NULL;
    int rv = -1;

    if (!crv) {
        key_err(lc, "crv", "missing (\"P-256\" or \"P-384\")");
        return -1;
    }
    if (strcmp(crv, "P-256") == 0) {
        group = "prime256v1";
        flen = 32;
        k->kind = KEY_EC_P256;
    } else if (strcmp(crv, "P-384") == 0) {
        group = "secp384r1";
        flen = 48;
        k->kind = KEY_EC_P384;
    } else {
        key_err(lc, "crv", "unsupported curve \"%.32s\" (P-256 or P-384)", crv);
        return -1;
    }
    if (get_b64(lc, jwk, "x", true, &x, &xlen) < 0 || get_b64(lc, jwk, "y", true, &y, &ylen) < 0)
        goto out;
    /* RFC 7518 §6.2.1.2: each coordinate is the full size for the curve. */
    if (xlen != flen || ylen != flen) {
        key_err(lc, xlen != flen ? "x" : "y", "must be %zu bytes for %s", flen, crv);
        goto out;
    }
    point[0] = 0x04; /* uncompressed SEC1 point */
    memcpy(point + 1, x, flen);
    memcpy(point + 1 + flen, y, flen);
    bld = OSSL_PARAM_BLD_new();
    if (!bld || !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * flen)) {
        key_err(lc, NULL, "out of memory");
        goto out;
    }
    k->pkey = pkey_fromdata("EC", bld);
    /* Invalid-curve attacks need an off-curve point: make OpenSSL check the point. */
    check = k->pkey ? EVP_PKEY_CTX_new_from_pkey(NULL, k->pkey, NULL) : NULL;
    if (!k->pkey || !check || EVP_PKEY_public_check(check) != 1) {
        key_err(lc, "x", "not a valid %s public key", crv);
        goto out;
    }
    rv = 0;
out:
    EVP_PKEY_CTX_free(check);
    OSSL_PARAM_BLD_free(bld);
    tg_mem_free(x);
    tg_mem_free(y);
    return rv;
}

static int load_okp(struct load_ctx *lc, json_t *jwk, struct jwk *k)
{
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    unsigned char *x = NULL;
    size_t xlen;
    OSSL_PARAM_BLD *bld = NULL;
    int rv = -1;

    if (!crv || strcmp(crv, "Ed25519") != 0) {
        key_err(lc, "crv", "unsupported curve \"%.32s\" (only Ed25519)", crv ? crv : "");
        return -1;
    }
    if (get_b64(lc, jwk, "x", true, &x, &xlen) < 0)
        goto out;
    if (xlen != 32) {
        key_err(lc, "x", "must be 32 bytes for Ed25519");
        goto out;
    }
    bld = OSSL_PARAM_BLD_new();
    if (!bld || !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, x, xlen)) {
        key_err(lc, NULL, "out of memory");
        goto out;
    }
    k->pkey = pkey_fromdata("ED25519", bld);
    if (!k->pkey) {
        key_err(lc, "x", "OpenSSL refused the Ed25519 key");
        goto out;
    }
    k->kind = KEY_ED25519;
    rv = 0;
out:
    OSSL_PARAM_BLD_free(bld);
    tg_mem_free(x);
    return rv;
}

static int load_oct(struct load_ctx *lc, json_t *jwk, struct jwk *k)
{
    unsigned char *s;
    size_t slen;
    if (get_b64(lc, jwk, "k", true, &s, &slen) < 0)
        return -1;
    if (slen < MIN_OCT_BYTES || slen > MAX_OCT_BYTES) {
        OPENSSL_cleanse(s, slen);
        tg_mem_free(s);
        key_err(lc, "k", "HMAC secret of %zu bytes: must be %d..%d bytes", slen, MIN_OCT_BYTES,
                MAX_OCT_BYTES);
        return -1;
    }
    k->secret = s;
    k->secret_len = slen;
    k->kind = KEY_OCT;
    return 0;
}

/* Members that only a private JWK has (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2). */
static const char *const private_members[] = {"d", "p", "q", "dp", "dq", "qi", "oth"};

static int load_key(struct load_ctx *lc, json_t *jwk, struct tg_jwks *set, struct jwk *k)
{
    k->alg = -1;
    if (!json_is_object(jwk)) {
        key_err(lc, NULL, "must be an object");
        return -1;
    }
    json_t *kty = json_object_get(jwk, "kty");
    if (!json_is_string(kty)) {
        key_err(lc, "kty", "missing or not a string");
        return -1;
    }
    const char *ty = json_string_value(kty);
    bool oct = strcmp(ty, "oct") == 0;
    if (!oct) {
        for (size_t i = 0; i < sizeof(private_members) / sizeof(private_members[0]); i++) {
            if (json_object_get(jwk, private_members[i])) {
                key_err(lc, private_members[i],
                        "private key material: a verification key set must hold public keys only");
                return -1;
            }
        }
    }
    json_t *use = json_object_get(jwk, "use");
    if (use && (!json_is_string(use) || strcmp(json_string_value(use), "sig") != 0)) {
        key_err(lc, "use", "must be \"sig\" when present");
        return -1;
    }
    json_t *ops = json_object_get(jwk, "key_ops");
    if (ops) {
        bool verify = false;
        size_t i;
        json_t *op;
        if (!json_is_array(ops)) {
            key_err(lc, "key_ops", "must be an array");
            return -1;
        }
        for (i = 0; i < json_array_size(ops); i++) {
            op = json_array_get(ops, i);
            if (json_is_string(op) && strcmp(json_string_value(op), "verify") == 0)
                verify = true;
        }
        if (!verify) {
            key_err(lc, "key_ops", "does not allow \"verify\"");
            return -1;
        }
    }
    json_t *kid = json_object_get(jwk, "kid");
    if (kid) {
        size_t kl = json_string_length(kid);
        if (!json_is_string(kid) || kl == 0 || kl > MAX_KID) {
            key_err(lc, "kid", "must be a string of 1..%d bytes", MAX_KID);
            return -1;
        }
        for (size_t i = 0; i < set->nkeys; i++) {
            const struct jwk *o = &set->keys[i];
            if (o->kid && o->kid_len == kl && memcmp(o->kid, json_string_value(kid), kl) == 0) {
                key_err(lc, "kid", "duplicate kid \"%.64s\" (also keys[%zu])", o->kid, i);
                return -1;
            }
        }
    }

    int rv;
    if (strcmp(ty, "RSA") == 0)
        rv = load_rsa(lc, jwk, k);
    else if (strcmp(ty, "EC") == 0)
        rv = load_ec(lc, jwk, k);
    else if (strcmp(ty, "OKP") == 0)
        rv = load_okp(lc, jwk, k);
    else if (oct)
        rv = load_oct(lc, jwk, k);
    else {
        key_err(lc, "kty", "unsupported key type \"%.32s\" (RSA, EC, OKP or oct)", ty);
        return -1;
    }
    if (rv < 0)
        return -1;

    json_t *alg = json_object_get(jwk, "alg");
    if (alg) {
        int a = json_is_string(alg) ? tg_jwt_alg_parse(json_string_value(alg)) : -1;
        if (a < 0) {
            key_err(lc, "alg", "unsupported algorithm");
            return -1;
        }
        k->alg = a;
        if (!key_fits(k, (enum tg_jwt_alg)a)) {
            key_err(lc, "alg", "%s does not fit a %s key", alg_names[a], ty);
            return -1;
        }
    }
    if (kid) {
        k->kid = tg_mem_strndup(json_string_value(kid), json_string_length(kid));
        if (!k->kid) {
            key_err(lc, "kid", "out of memory");
            return -1;
        }
        k->kid_len = json_string_length(kid);
    }
    return 0;
}

#define MAX_KEYS 256 /* keys are found by a linear scan */

struct tg_jwks *tg_jwks_load(const char *path, char *err, size_t errlen)
{
    struct load_ctx lc = {path, err, errlen, 0};
    struct tg_jwks *set = NULL;
    json_error_t je;
    json_t *root;

    if (err && errlen)
        err[0] = '\0';
    root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (je.line > 0)
            file_err(&lc, "line %d column %d: %s", je.line, je.column, je.text);
        else
            file_err(&lc, "%s", je.text);
        return NULL;
    }
    json_t *keys = json_object_get(root, "keys");
    if (!json_is_object(root) || !json_is_array(keys) || json_array_size(keys) == 0) {
        file_err(&lc, "keys: must be a non-empty array (a JWKS document {\"keys\":[...]})");
        goto fail;
    }
    if (json_array_size(keys) > MAX_KEYS) {
        file_err(&lc, "keys: more than %d keys", MAX_KEYS);
        goto fail;
    }
    set = tg_mem_calloc(1, sizeof(*set));
    if (set)
        set->keys = tg_mem_calloc(json_array_size(keys), sizeof(*set->keys));
    if (!set || !set->keys) {
        file_err(&lc, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < json_array_size(keys); i++) {
        lc.index = i;
        struct jwk *k = &set->keys[i];
        int rv = load_key(&lc, json_array_get(keys, i), set, k);
        set->nkeys = i + 1; /* so a failure frees this key's partial state too */
        if (rv < 0)
            goto fail;
    }
    json_decref(root);
    ERR_clear_error();
    return set;
fail:
    tg_jwks_free(set);
    json_decref(root);
    ERR_clear_error(); /* OpenSSL queued the reason; our message says it */
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Signature verification                                                                     */

/* Group orders, big-endian: r and s must lie in [1, n-1] (THREATS §3.1.6, CVE-2022-21449). */
static const unsigned char p256_order[32] = {
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};
static const unsigned char p384_order[48] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37, 0x2d, 0xdf,
    0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc, 0xc5, 0x29, 0x73};

/* 0 < v < order for big-endian v of the order's length (a public value: memcmp is fine). */
static bool scalar_in_range(const unsigned char *v, const unsigned char *order, size_t n)
{
    bool nonzero = false;
    for (size_t i = 0; i < n; i++)
        nonzero |= v[i] != 0;
    return nonzero && memcmp(v, order, n) < 0;
}

/*
 * RFC 7518 §3.4: the JWS ECDSA signature is R || S, each exactly the size of
 * the group order.  OpenSSL verifies DER, so re-encode.  Any other length,
 * including a DER signature sent as is, is refused.  Returns the DER length,
 * or 0 on refusal.
 */
static size_t ecdsa_raw_to_der(const unsigned char *sig, size_t siglen, size_t half,
                               const unsigned char *order, unsigned char *der, size_t dercap)
{
    size_t dl = 0;
    if (siglen != 2 * half || !scalar_in_range(sig, order, half) ||
        !scalar_in_range(sig + half, order, half))
        return 0;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)half, NULL);
    BIGNUM *s = BN_bin2bn(sig + half, (int)half, NULL);
    if (!es || !r || !s || ECDSA_SIG_set0(es, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        goto out;
    }
    int n = i2d_ECDSA_SIG(es, NULL);
    if (n > 0 && (size_t)n <= dercap) {
        unsigned char *p = der;
        if (i2d_ECDSA_SIG(es, &p) == n)
            dl = (size_t)n;
    }
out:
    ECDSA_SIG_free(es);
    return dl;
}

/* HS256 (RFC 7518 §3.2): recompute and compare in constant time. */
static bool verify_hmac(const struct jwk *k, const unsigned char *msg, size_t msglen,
                        const unsigned char *sig, size_t siglen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    bool ok = false;
    if (HMAC(EVP_sha256(), k->secret, (int)k->secret_len, msg, msglen, mac, &maclen) &&
        maclen == 32 && siglen == 32)
        ok = CRYPTO_memcmp(mac, sig, 32) == 0;
    OPENSSL_cleanse(mac, sizeof(mac));
    return ok;
}

static bool verify_signature(const struct jwk *k, enum tg_jwt_alg alg, const unsigned char *msg,
                             size_t msglen, const unsigned char *sig, size_t siglen)
{
    const char *md = NULL;
    unsigned char der[128];
    EVP_MD_CTX *mctx = NULL;
    EVP_PKEY_CTX *pctx = NULL;
    bool ok = false;

    switch (alg) {
    case TG_JWT_RS256:
    case TG_JWT_PS256: md = "SHA256"; break;
    case TG_JWT_RS384: md = "SHA384"; break;
    case TG_JWT_RS512: md = "SHA512"; break;
    case TG_JWT_ES256:
        md = "SHA256";
        siglen = ecdsa_raw_to_der(sig, siglen, 32, p256_order, der, sizeof(der));
        sig = der;
        break;
    case TG_JWT_ES384:
        md = "SHA384";
        siglen = ecdsa_raw_to_der(sig, siglen, 48, p384_order, der, sizeof(der));
        sig = der;
        break;
    case TG_JWT_EDDSA: /* RFC 8037 §3.1: Ed25519 signs the message itself, no digest */
        if (siglen != 64)
            return false;
        break;
    case TG_JWT_HS256: return verify_hmac(k, msg, msglen, sig, siglen);
    case TG_JWT_ALG_COUNT: return false;
    }
    if (siglen == 0)
        return false;
    if (k->kind == KEY_RSA && siglen != (size_t)EVP_PKEY_get_size(k->pkey))
        return false; /* RFC 8017 §8.2.2 step 1 */

    mctx = EVP_MD_CTX_new();
    if (!mctx || EVP_DigestVerifyInit_ex(mctx, &pctx, md, NULL, NULL, k->pkey, NULL) != 1)
        goto out;
    if (k->kind == KEY_RSA) {
        if (alg == TG_JWT_PS256) {
            /* RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash. */
            if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
                EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, md, NULL) != 1 ||
                EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1)
                goto out;
        } else if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1) {
            goto out;
        }
    }
    ok = EVP_DigestVerify(mctx, sig, siglen, msg, msglen) == 1;
out:
    EVP_MD_CTX_free(mctx);
    if (!ok)
        ERR_clear_error(); /* a refused signature must not grow the thread's error queue */
    return ok;
}

/* ------------------------------------------------------------------------------------------ */
/* Token parsing                                                                              */

/*
 * Nesting depth of JSON text, counted before jansson parses it (THREATS
 * §3.1.5).  Brackets inside strings do not count.  True when at most max.
 */
static bool json_depth_ok(const unsigned char *s, size_t n, int max)
{
    int depth = 0;
    bool in_str = false, esc = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++depth > max)
                return false;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return true;
}

/* Decode one base64url segment and parse it as a JSON object; NULL when any of that fails. */
static json_t *segment_json(const char *seg, size_t n, unsigned char *buf)
{
    size_t dlen;
    if (n == 0 || b64url_decode(seg, n, buf, &dlen) < 0 ||
        !json_depth_ok(buf, dlen, MAX_JSON_DEPTH))
        return NULL;
    /* No JSON_DECODE_ANY (top level must be an object or array), no JSON_ALLOW_NUL. */
    json_t *j = json_loadb((const char *)buf, dlen, JSON_REJECT_DUPLICATES, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* ASCII case-insensitive equality with a NUL-terminated literal. */
static bool str_ieq(const char *s, size_t n, const char *lit)
{
    size_t i;
    for (i = 0; i < n && lit[i]; i++)
        if (tolower((unsigned char)s[i]) != tolower((unsigned char)lit[i]))
            return false;
    return i == n && lit[i] == '\0';
}

/* Header members that carry or point at keys: never trusted (RFC 8725 §3.10, THREATS §3.1.2). */
static const char *const forbidden_headers[] = {"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256"};

/*
 * The JOSE header rules.  *alg is set when the answer is OK; *kid is the
 * header's kid or NULL.
 */
static enum tg_jwt_status check_header(json_t *h, enum tg_jwt_alg *alg, json_t **kid)
{
    json_t *a = json_object_get(h, "alg");
    if (!json_is_string(a))
        return TG_JWT_MALFORMED; /* RFC 7515 §4.1.1: alg is required */
    /* tg_jwt_alg_parse knows no "none" in any case, nor any name with a NUL in it. */
    int parsed = tg_jwt_alg_parse(json_string_value(a));
    if (parsed < 0)
        return TG_JWT_BAD_ALG;
    *alg = (enum tg_jwt_alg)parsed;

    for (size_t i = 0; i < sizeof(forbidden_headers) / sizeof(forbidden_headers[0]); i++)
        if (json_object_get(h, forbidden_headers[i]))
            return TG_JWT_FORBIDDEN_HEADER;
    /* RFC 7515 §4.1.11: we understand no extension, so any crit is fatal.  RFC 7797 "b64"
       is only meaningful as a critical extension, so it is refused the same way. */
    if (json_object_get(h, "crit") || json_object_get(h, "b64"))
        return TG_JWT_UNKNOWN_CRIT;

    json_t *typ = json_object_get(h, "typ");
    if (typ) {
        /* RFC 7515 §4.1.9 (media types compare case-insensitively), RFC 9068 §2.1. */
        const char *t = json_string_value(typ);
        size_t tl = json_string_length(typ);
        if (!t || !(str_ieq(t, tl, "JWT") || str_ieq(t, tl, "at+jwt") ||
                    str_ieq(t, tl, "application/jwt") || str_ieq(t, tl, "application/at+jwt")))
            return TG_JWT_MALFORMED;
    }
    /* A cty announces a nested JWT (RFC 7519 §5.2); we never unwrap one. */
    if (json_object_get(h, "cty"))
        return TG_JWT_MALFORMED;
    *kid = json_object_get(h, "kid");
    if (*kid && !json_is_string(*kid))
        return TG_JWT_MALFORMED;
    return TG_JWT_OK;
}

/* The key for this token in the issuer's set, or the reason there is none. */
static enum tg_jwt_status select_key(const struct tg_jwks *set, json_t *kid, enum tg_jwt_alg alg,
                                     const struct jwk **out)
{
    const struct jwk *found = NULL;
    if (!set || set->nkeys == 0)
        return TG_JWT_UNKNOWN_KID;
    if (kid) {
        const char *s = json_string_value(kid);
        size_t n = json_string_length(kid);
        for (size_t i = 0; i < set->nkeys && !found; i++)
            if (set->keys[i].kid && set->keys[i].kid_len == n &&
                memcmp(set->keys[i].kid, s, n) == 0)
                found = &set->keys[i];
        if (!found)
            return TG_JWT_UNKNOWN_KID;
    } else {
        /* Without a kid the key must be unambiguous: exactly one key usable for alg. */
        size_t usable = 0;
        for (size_t i = 0; i < set->nkeys; i++) {
            if (key_fits(&set->keys[i], alg)) {
                found = &set->keys[i];
                usable++;
            }
        }
        if (usable == 0)
            return TG_JWT_KEY_MISMATCH;
        if (usable > 1)
            return TG_JWT_UNKNOWN_KID;
    }
    if (!key_fits(found, alg))
        return TG_JWT_KEY_MISMATCH;
    *out = found;
    return TG_JWT_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Claims                                                                                     */

/* a + b, saturating (the operands are ms timestamps and leeways from config). */
static int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

/*
 * A NumericDate (RFC 7519 §2) as ms since the epoch.  1 when v is absent, 0 with *ms set,
 * -1 when v is not a number, -2 when it is negative, not finite or past year 9999.
 */
static int numeric_date_ms(json_t *v, int64_t *ms)
{
    if (!v)
        return 1;
    if (json_is_integer(v)) {
        json_int_t s = json_integer_value(v);
        if (s < 0 || s > MAX_NUMERIC_DATE)
            return -2;
        *ms = (int64_t)s * 1000;
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!isfinite(d) || d < 0 || d > (double)MAX_NUMERIC_DATE)
            return -2;
        *ms = (int64_t)(d * 1000.0);
        return 0;
    }
    return -1;
}

/*
 * Copy string claim `name` into dst[cap].  A missing claim leaves "" and
 * returns 0 unless required.  Anything but a string of at most cap-1 bytes
 * without control characters is -1: the values end up in upstream request
 * headers (x-tollgate-principal) and audit records.
 */
static int copy_claim(json_t *payload, const char *name, bool required, char *dst, size_t cap)
{
    dst[0] = '\0';
    if (!name)
        return required ? -1 : 0;
    json_t *v = json_object_get(payload, name);
    if (!v)
        return required ? -1 : 0;
    if (!json_is_string(v))
        return -1;
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (n >= cap || (required && n == 0))
        return -1;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return -1;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return 0;
}

static bool audience_ok(const struct tg_jwt_issuer *iss, json_t *aud)
{
    if (iss->naudiences == 0)
        return true;
    json_t *one;
    size_t i, n = json_is_array(aud) ? json_array_size(aud) : 1;
    bool match = false;
    if (!json_is_string(aud) && !json_is_array(aud))
        return false;
    for (i = 0; i < n; i++) {
        one = json_is_array(aud) ? json_array_get(aud, i) : aud;
        if (!json_is_string(one))
            return false; /* RFC 7519 §4.1.3: an array of StringOrURI values */
        const char *s = json_string_value(one);
        size_t sl = json_string_length(one);
        for (size_t k = 0; k < iss->naudiences; k++)
            if (iss->audiences[k] && strlen(iss->audiences[k]) == sl &&
                memcmp(iss->audiences[k], s, sl) == 0)
                match = true;
    }
    return match;
}

static enum tg_jwt_status check_claims(const struct tg_jwt_issuer *iss, json_t *p, int64_t now_ms,
                                       struct tg_jwt_claims *c)
{
    int64_t leeway = iss->leeway_ms > 0 ? iss->leeway_ms : 0;
    int64_t iat_ms = 0;
    int r;

    r = numeric_date_ms(json_object_get(p, "exp"), &c->exp_ms);
    if (r == 1 || r == -1)
        return TG_JWT_MISSING_EXP;
    if (r < 0)
        return TG_JWT_BAD_CLAIM;
    if (now_ms > sat_add(c->exp_ms, leeway))
        return TG_JWT_EXPIRED;

    c->nbf_ms = 0;
    r = numeric_date_ms(json_object_get(p, "nbf"), &c->nbf_ms);
    if (r < 0)
        return TG_JWT_BAD_CLAIM;
    if (r == 0 && sat_add(now_ms, leeway) < c->nbf_ms)
        return TG_JWT_NOT_YET_VALID;

    r = numeric_date_ms(json_object_get(p, "iat"), &iat_ms);
    if (r < 0)
        return TG_JWT_BAD_CLAIM;
    if (r == 0 && iat_ms > sat_add(now_ms, leeway))
        return TG_JWT_NOT_YET_VALID;

    if (!audience_ok(iss, json_object_get(p, "aud")))
        return TG_JWT_BAD_AUDIENCE;

    if (copy_claim(p, iss->principal_claim ? iss->principal_claim : "sub", true, c->principal,
                   sizeof(c->principal)) < 0 ||
        copy_claim(p, iss->tenant_claim, false, c->tenant, sizeof(c->tenant)) < 0 ||
        copy_claim(p, iss->policy_claim, false, c->policy, sizeof(c->policy)) < 0)
        return TG_JWT_BAD_CLAIM;
    return TG_JWT_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Verification                                                                               */

enum tg_jwt_status tg_jwt_verify(const char *token, size_t len, const struct tg_jwt_issuer *issuers,
                                 size_t nissuers, int64_t now_ms, struct tg_jwt_claims *out)
{
    /* Decoded segments are at most 3/4 of the token, so one token-sized buffer holds them. */
    unsigned char buf[TG_JWT_MAX_TOKEN];
    json_t *header = NULL, *payload = NULL, *kid = NULL;
    const struct tg_jwt_issuer *iss = NULL;
    const struct jwk *key = NULL;
    struct tg_jwt_claims c;
    enum tg_jwt_alg alg = TG_JWT_RS256;
    enum tg_jwt_status st = TG_JWT_MALFORMED;
    size_t i;

    if (len > TG_JWT_MAX_TOKEN)
        return TG_JWT_TOO_LARGE;
    if (!token || len == 0)
        return TG_JWT_MALFORMED;

    /* Exactly three segments (five would be JWE); header and payload non-empty. */
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)))
        return TG_JWT_MALFORMED;
    size_t hlen = (size_t)(d1 - token), plen = (size_t)(d2 - d1 - 1);
    size_t slen = len - (size_t)(d2 + 1 - token);

    header = segment_json(token, hlen, buf);
    if (!header)
        goto out;
    payload = segment_json(d1 + 1, plen, buf);
    if (!payload)
        goto out;
    /* The signature may be empty here, so "alg":"none" tokens are refused as bad_alg below. */
    unsigned char *sig = buf;
    size_t siglen = 0;
    if (b64url_decode(d2 + 1, slen, sig, &siglen) < 0)
        goto out;

    st = check_header(header, &alg, &kid);
    if (st != TG_JWT_OK)
        goto out;

    /* RFC 7519 §4.1.1 with an exact, byte-for-byte match. */
    json_t *jiss = json_object_get(payload, "iss");
    st = TG_JWT_UNKNOWN_ISSUER;
    if (!json_is_string(jiss))
        goto out;
    for (i = 0; i < nissuers && !iss; i++) {
        const char *want = issuers[i].issuer;
        if (want && strlen(want) == json_string_length(jiss) &&
            memcmp(want, json_string_value(jiss), json_string_length(jiss)) == 0)
            iss = &issuers[i];
    }
    if (!iss)
        goto out;
    if (!(iss->algorithms & (1u << alg))) {
        st = TG_JWT_BAD_ALG;
        goto out;
    }
    st = select_key(iss->jwks, kid, alg, &key);
    if (st != TG_JWT_OK)
        goto out;

    /* RFC 7515 §5.2: the signing input is the two first segments exactly as sent. */
    if (!verify_signature(key, alg, (const unsigned char *)token, (size_t)(d2 - token), sig,
                          siglen)) {
        st = TG_JWT_BAD_SIGNATURE;
        goto out;
    }

    memset(&c, 0, sizeof(c));
    st = check_claims(iss, payload, now_ms, &c);
    if (st == TG_JWT_OK) {
        c.issuer_index = (size_t)(iss - issuers);
        *out = c;
    }
out:
    json_decref(header);
    json_decref(payload);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* Verified-token cache                                                                       */

#define NIL UINT32_MAX
#define MAX_CACHE (1u << 24) /* entries; a bigger request is clamped */

struct cache_entry {
    unsigned char hash[32];      /* SHA-256 of the token */
    uint64_t generation;         /* config generation it was verified under */
    struct tg_jwt_claims claims; /* what the verification produced */
    uint32_t next;               /* next entry in the same bucket, or NIL */
    bool used;                   /* slot holds an entry */
};

/*
 * A ring of entries in insertion order (the slot after the newest is the
 * oldest: FIFO eviction) indexed by a chained hash table of bucket heads.
 */
struct tg_jwt_cache {
    struct cache_entry *entries; /* capacity slots */
    uint32_t *buckets;           /* nbuckets heads (entry index or NIL) */
    size_t capacity;             /* entries */
    size_t mask;                 /* nbuckets - 1, nbuckets a power of two >= 2 * capacity */
    size_t head;                 /* next slot to fill (and so evict) */
    EVP_MD *sha256;              /* fetched once, so a lookup pays no fetch */
};

struct tg_jwt_cache *tg_jwt_cache_new(size_t capacity)
{
    struct tg_jwt_cache *c;
    size_t nb = 2;

    if (capacity == 0)
        capacity = 1;
    if (capacity > MAX_CACHE)
        capacity = MAX_CACHE;
    while (nb < 2 * capacity)
        nb <<= 1;
    c = tg_mem_calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->capacity = capacity;
    c->mask = nb - 1;
    c->entries = tg_mem_calloc(capacity, sizeof(*c->entries));
    c->buckets = tg_mem_malloc(nb * sizeof(*c->buckets));
    c->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!c->entries || !c->buckets || !c->sha256) {
        tg_jwt_cache_free(c);
        return NULL;
    }
    for (size_t i = 0; i < nb; i++)
        c->buckets[i] = NIL;
    return c;
}

void tg_jwt_cache_free(struct tg_jwt_cache *c)
{
    if (!c)
        return;
    if (c->entries)
        OPENSSL_cleanse(c->entries, c->capacity * sizeof(*c->entries));
    tg_mem_free(c->entries);
    tg_mem_free(c->buckets);
    EVP_MD_free(c->sha256);
    tg_mem_free(c);
}

static bool cache_hash(struct tg_jwt_cache *c, const char *token, size_t len,
                       unsigned char hash[32])
{
    unsigned int n = 0;
    return EVP_Digest(token, len, hash, &n, c->sha256, NULL) == 1 && n == 32;
}

static uint32_t *bucket_of(struct tg_jwt_cache *c, const unsigned char hash[32])
{
    uint64_t h;
    memcpy(&h, hash, sizeof(h)); /* SHA-256 output is uniform: any 64 bits will do */
    return &c->buckets[h & c->mask];
}

/* The entry index for hash, or NIL. */
static uint32_t cache_find(struct tg_jwt_cache *c, const unsigned char hash[32])
{
    for (uint32_t i = *bucket_of(c, hash); i != NIL; i = c->entries[i].next)
        if (CRYPTO_memcmp(c->entries[i].hash, hash, 32) == 0)
            return i;
    return NIL;
}

static void cache_remove(struct tg_jwt_cache *c, uint32_t idx)
{
    struct cache_entry *e = &c->entries[idx];
    uint32_t *link = bucket_of(c, e->hash);
    while (*link != NIL && *link != idx)
        link = &c->entries[*link].next;
    if (*link == idx)
        *link = e->next;
    memset(e, 0, sizeof(*e));
}

bool tg_jwt_cache_get(struct tg_jwt_cache *c, uint64_t generation, const char *token, size_t len,
                      int64_t now_ms, int64_t leeway_ms, struct tg_jwt_claims *out)
{
    unsigned char hash[32];
    if (!c || !token || len > TG_JWT_MAX_TOKEN || !cache_hash(c, token, len, hash))
        return false;
    uint32_t i = cache_find(c, hash);
    if (i == NIL)
        return false;
    struct cache_entry *e = &c->entries[i];
    if (e->generation != generation)
        return false;
    int64_t leeway = leeway_ms > 0 ? leeway_ms : 0;
    if (now_ms > sat_add(e->claims.exp_ms, leeway)) {
        cache_remove(c, i); /* never valid again */
        return false;
    }
    if (e->claims.nbf_ms && sat_add(now_ms, leeway) < e->claims.nbf_ms)
        return false;
    *out = e->claims;
    return true;
}

void tg_jwt_cache_put(struct tg_jwt_cache *c, uint64_t generation, const char *token, size_t len,
                      const struct tg_jwt_claims *claims)
{
    unsigned char hash[32];
    if (!c || !token || !claims || len > TG_JWT_MAX_TOKEN || !cache_hash(c, token, len, hash))
        return;
    uint32_t i = cache_find(c, hash);
    if (i == NIL) {
        i = (uint32_t)c->head;
        c->head = (c->head + 1) % c->capacity;
        if (c->entries[i].used)
            cache_remove(c, i); /* the oldest entry */
        uint32_t *b = bucket_of(c, hash);
        struct cache_entry *e = &c->entries[i];
        memcpy(e->hash, hash, 32);
        e->next = *b;
        e->used = true;
        *b = i;
    }
    c->entries[i].generation = generation;
    c->entries[i].claims = *claims;
}
