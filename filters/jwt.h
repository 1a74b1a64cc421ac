/*
 * jwt.h - JWS compact token verification against JWKS key sets (RFC 7515,
 * 7517, 7518, 7519), following the JWT best current practices of RFC 8725.
 *
 * Everything cryptographic goes through OpenSSL EVP.  The token's "alg" is
 * parsed once into enum tg_jwt_alg; anything outside the enum, "none", an alg
 * not allowed for the issuer, or an alg that does not match the key's type
 * (key confusion) is refused.  Header-supplied keys (jwk, jku, x5u, x5c) and
 * unknown "crit" entries are refused.  Verification returns a status enum,
 * never a bool.
 */
#ifndef TG_JWT_H
#define TG_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TG_JWT_MAX_TOKEN 8192 /* longer tokens are refused unparsed */

enum tg_jwt_alg {
    TG_JWT_RS256 = 0,
    TG_JWT_RS384,
    TG_JWT_RS512,
    TG_JWT_PS256,
    TG_JWT_ES256, /* signature is raw r||s (64 bytes), not DER */
    TG_JWT_ES384, /* raw r||s (96 bytes) */
    TG_JWT_EDDSA, /* Ed25519 only */
    TG_JWT_HS256, /* only with an "oct" key in the JWKS */
    TG_JWT_ALG_COUNT,
};

/* Parse an algorithm name ("RS256" ...); -1 when unknown (including "none"). */
int tg_jwt_alg_parse(const char *name);
/* The name of an algorithm. */
const char *tg_jwt_alg_name(enum tg_jwt_alg alg);

enum tg_jwt_status {
    TG_JWT_OK = 0,
    TG_JWT_MALFORMED,        /* not three base64url parts, bad base64url, bad JSON, dup keys */
    TG_JWT_TOO_LARGE,        /* longer than TG_JWT_MAX_TOKEN */
    TG_JWT_BAD_ALG,          /* none, unknown, not allowed for the issuer */
    TG_JWT_FORBIDDEN_HEADER, /* jwk / jku / x5u / x5c / x5t in the header */
    TG_JWT_UNKNOWN_CRIT,     /* a "crit" entry we do not implement (we implement none) */
    TG_JWT_UNKNOWN_ISSUER,   /* "iss" missing or not a configured issuer */
    TG_JWT_UNKNOWN_KID,      /* no key with this kid (or no kid and several keys) */
    TG_JWT_KEY_MISMATCH,     /* alg does not fit the key's type / curve / the key's own alg */
    TG_JWT_BAD_SIGNATURE,    /* the signature does not verify */
    TG_JWT_MISSING_EXP,      /* no numeric "exp" */
    TG_JWT_EXPIRED,          /* now > exp + leeway */
    TG_JWT_NOT_YET_VALID,    /* now < nbf - leeway (or iat far in the future) */
    TG_JWT_BAD_AUDIENCE,     /* "aud" (string or array) holds none of the audiences */
    TG_JWT_BAD_CLAIM,        /* the principal claim is missing or not a non-empty string,
                                or tenant/policy claims are present but not strings */
};

/* Short stable name of a status, e.g. "bad_signature" (for logs and metrics). */
const char *tg_jwt_status_name(enum tg_jwt_status st);

/* A verification key set loaded from a JWKS file (immutable once loaded). */
struct tg_jwks;

/*
 * Load a JWKS document ({"keys":[...]}) from path.  Supported: "RSA" (n, e;
 * at least 2048 bits), "EC" (crv P-256 / P-384, x, y), "OKP" (crv Ed25519,
 * x), "oct" (k, at least 32 bytes; HS256 only).  Each key may carry "kid",
 * "alg" (then only that alg may use it) and "use" (must be "sig" if
 * present).  A key holding private parts ("d", "p", "q"...) is refused: a
 * verification key set must not hold private keys.  Returns NULL with a
 * message "PATH: keys[3].n: ..." in err on any error.  Blocking (file I/O).
 */
struct tg_jwks *tg_jwks_load(const char *path, char *err, size_t errlen);
/* Free a key set (wipes oct secrets).  NULL is a no-op. */
void tg_jwks_free(struct tg_jwks *jwks);
/* Number of keys in the set. */
size_t tg_jwks_count(const struct tg_jwks *jwks);

/* One configured issuer, as the verifier needs it (strings borrowed). */
struct tg_jwt_issuer {
    const char *issuer;             /* required "iss" value */
    const char *const *audiences;   /* accepted "aud" values; naudiences 0 = no aud check */
    size_t naudiences;              /* count of audiences */
    const struct tg_jwks *jwks;     /* the issuer's keys */
    unsigned algorithms;            /* bit (1u << enum tg_jwt_alg) for each allowed alg */
    const char *principal_claim;    /* e.g. "sub" */
    const char *tenant_claim;       /* or NULL */
    const char *policy_claim;       /* or NULL */
    int64_t leeway_ms;              /* clock skew allowed on exp / nbf */
};

/* What a verified token says (copied, NUL-terminated, truncated never: too long = BAD_CLAIM). */
struct tg_jwt_claims {
    char principal[256];    /* value of principal_claim */
    char tenant[256];       /* value of tenant_claim, "" if absent */
    char policy[128];       /* value of policy_claim, "" if absent */
    size_t issuer_index;    /* which issuer matched */
    int64_t exp_ms;         /* expiry, ms since the epoch */
    int64_t nbf_ms;         /* not-before, ms since the epoch (0 if absent) */
};

/*
 * Verify token[0..len) (no "Bearer " prefix) against the issuers: the
 * issuer is chosen by the payload's "iss", the key by the header's "kid"
 * in that issuer's JWKS, then the signature is verified, then exp / nbf /
 * aud are checked against now_ms (wall clock, ms since the epoch) with the
 * issuer's leeway.  Fills *out only on TG_JWT_OK.  Never crashes or reads
 * past len on any input; never allocates more than O(len).
 */
enum tg_jwt_status tg_jwt_verify(const char *token, size_t len,
                                 const struct tg_jwt_issuer *issuers, size_t nissuers,
                                 int64_t now_ms, struct tg_jwt_claims *out);

/*
 * Verified-token cache, one per worker (not thread-safe).  Keyed by the
 * SHA-256 of the whole token; an entry is kept until its exp.  A hit still
 * rechecks exp/nbf against now, so a cached token costs a hash and a lookup
 * instead of a signature check.  `generation` ties entries to a config
 * snapshot: a lookup with another generation misses (keys may have changed).
 */
struct tg_jwt_cache;
struct tg_jwt_cache *tg_jwt_cache_new(size_t capacity);
void tg_jwt_cache_free(struct tg_jwt_cache *c);
/* True and *out filled when token is cached for generation and still valid at now_ms. */
bool tg_jwt_cache_get(struct tg_jwt_cache *c, uint64_t generation, const char *token, size_t len,
                      int64_t now_ms, int64_t leeway_ms, struct tg_jwt_claims *out);
/* Remember a verified token (evicts the oldest entry when full). */
void tg_jwt_cache_put(struct tg_jwt_cache *c, uint64_t generation, const char *token, size_t len,
                      const struct tg_jwt_claims *claims);

#endif
