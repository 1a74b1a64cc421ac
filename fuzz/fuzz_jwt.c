/*
 * fuzz_jwt.c - tg_jwt_verify() against a fixed key set (THREATS §8.4 fuzz_jwt).
 *
 * The key set and the valid tokens come from tests/data/jwt (made by
 * make-fixtures.py with PyJWT); the same tokens are the seeds in
 * fuzz/corpus/jwt.  Two modes, chosen by the first byte:
 *
 *   - anything else: the bytes are the token.  Oracle: TG_JWT_OK only for a
 *     token byte-identical to one of the fixture tokens; nobody here holds a
 *     private key, so anything else verifying is a forgery.  The verified-
 *     token cache must agree (a hit only for a fixture token).
 *   - '{': "HEADER-JSON\nPAYLOAD-JSON".  The harness encodes both and signs
 *     them with HS256 under the set's oct key "hs1", so the fuzzer reaches the
 *     header rules and the claim checks behind a valid MAC.  Oracle: OK only
 *     when an independent reading of the header says alg HS256 with kid "hs1"
 *     or none and no forbidden member, and the claims are consistent with now.
 *
 *   mkdir -p /tmp/corpus-jwt && build-fuzz/fuzz/fuzz_jwt -max_len=8400 /tmp/corpus-jwt
 * fuzz/corpus/jwt
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "filters/jwt.h"

#define NOW_MS 1750000000000LL /* fixed, so runs reproduce; fixtures are valid 2023..2100 */
#define LEEWAY_MS 30000
#define MAX_SEEDS 32

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tg_jwks *jwks;
static struct tg_jwt_issuer issuers[2];
static const char *const audiences[] = {"tollgate"};
static char *seeds[MAX_SEEDS];
static size_t seed_len[MAX_SEEDS], nseeds;
static unsigned char hs_key[64];
static size_t hs_len;
static struct tg_jwt_cache *cache;

/* $TG_TEST_DATA/jwt/name, else tests/data/jwt/name relative to this file. */
static void data_path(char *out, size_t cap, const char *name)
{
    const char *env = getenv("TG_TEST_DATA");
    int n;
    if (env && *env) {
        n = snprintf(out, cap, "%s/jwt/%s", env, name);
    } else {
        const char *slash = strrchr(__FILE__, '/');
        int dl = slash ? (int)(slash - __FILE__) : 1;
        n = snprintf(out, cap, "%.*s/../tests/data/jwt/%s", dl, slash ? __FILE__ : ".", name);
    }
    CHECK(n > 0 && (size_t)n < cap);
}

static int b64v(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '-' ? 62 : c == '_' ? 63 : -1;
}

static void b64url(const unsigned char *in, size_t n, char *out)
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
            out[o++] = tab[(acc >> bits) & 63];
        }
    }
    if (bits > 0)
        out[o++] = tab[(acc << (6 - bits)) & 63];
    out[o] = '\0';
}

/* The oct key "hs1" of the fixture set, read independently of jwt.c. */
static void load_hs_key(const char *path)
{
    json_t *root = json_load_file(path, 0, NULL), *k;
    size_t i;
    CHECK(root);
    json_t *keys = json_object_get(root, "keys");
    for (i = 0; i < json_array_size(keys); i++) {
        k = json_array_get(keys, i);
        const char *kid = json_string_value(json_object_get(k, "kid"));
        const char *s = json_string_value(json_object_get(k, "k"));
        if (!kid || strcmp(kid, "hs1") != 0 || !s)
            continue;
        uint32_t acc = 0;
        int bits = 0;
        for (; *s; s++) {
            int v = b64v((unsigned char)*s);
            CHECK(v >= 0);
            acc = (acc << 6) | (uint32_t)v;
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                CHECK(hs_len < sizeof(hs_key));
                hs_key[hs_len++] = (unsigned char)(acc >> bits);
            }
        }
    }
    json_decref(root);
    CHECK(hs_len >= 32);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char path[PATH_MAX], err[512], line[TG_JWT_MAX_TOKEN + 2];
    data_path(path, sizeof(path), "fuzz-jwks.json");
    jwks = tg_jwks_load(path, err, sizeof(err));
    if (!jwks) {
        fprintf(stderr, "fuzz_jwt: %s\n", err);
        abort();
    }
    load_hs_key(path);
    issuers[0] = (struct tg_jwt_issuer){"https://fuzz.example",
                                        audiences,
                                        1,
                                        jwks,
                                        (1u << TG_JWT_ALG_COUNT) - 1,
                                        "sub",
                                        "tenant",
                                        "tier",
                                        LEEWAY_MS};
    /* Same keys, a narrower policy: RS256 only, no audience check, another principal. */
    issuers[1] = (struct tg_jwt_issuer){
        "https://fuzz2.example", NULL, 0, jwks, 1u << TG_JWT_RS256, "email", NULL, NULL, 0};

    data_path(path, sizeof(path), "fuzz-tokens.txt");
    FILE *f = fopen(path, "r");
    CHECK(f);
    while (nseeds < MAX_SEEDS && fgets(line, sizeof(line), f)) {
        size_t n = strcspn(line, "\r\n");
        if (n == 0)
            continue;
        seeds[nseeds] = malloc(n);
        CHECK(seeds[nseeds]);
        memcpy(seeds[nseeds], line, n);
        seed_len[nseeds++] = n;
    }
    fclose(f);
    CHECK(nseeds > 0);
    /* The fixtures must verify, or the oracle below would be vacuous. */
    for (size_t i = 0; i < nseeds; i++) {
        struct tg_jwt_claims c;
        CHECK(tg_jwt_verify(seeds[i], seed_len[i], issuers, 2, NOW_MS, &c) == TG_JWT_OK);
    }
    cache = tg_jwt_cache_new(64);
    CHECK(cache);
    return 0;
}

static bool is_seed(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < nseeds; i++)
        if (seed_len[i] == size && memcmp(seeds[i], data, size) == 0)
            return true;
    return false;
}

/* What must hold of any accepted token's claims. */
static void check_claims(const struct tg_jwt_claims *c)
{
    CHECK(c->issuer_index < 2);
    int64_t leeway = issuers[c->issuer_index].leeway_ms;
    CHECK(NOW_MS <= c->exp_ms + leeway);
    CHECK(c->nbf_ms <= NOW_MS + leeway);
    size_t n = strnlen(c->principal, sizeof(c->principal));
    CHECK(n > 0 && n < sizeof(c->principal));
    CHECK(strnlen(c->tenant, sizeof(c->tenant)) < sizeof(c->tenant));
    CHECK(strnlen(c->policy, sizeof(c->policy)) < sizeof(c->policy));
    for (size_t i = 0; i < n; i++)
        CHECK((unsigned char)c->principal[i] >= 0x20 && c->principal[i] != 0x7f);
}

static void raw_mode(const uint8_t *data, size_t size)
{
    struct tg_jwt_claims c, h;
    enum tg_jwt_status st = tg_jwt_verify((const char *)data, size, issuers, 2, NOW_MS, &c);
    bool seed = is_seed(data, size);
    if (st == TG_JWT_OK) {
        if (!seed) {
            fprintf(stderr, "fuzz_jwt: forged token accepted: %.*s\n", (int)size, data);
            abort();
        }
        check_claims(&c);
        tg_jwt_cache_put(cache, 1, (const char *)data, size, &c);
    }
    if (tg_jwt_cache_get(cache, 1, (const char *)data, size, NOW_MS, LEEWAY_MS, &h))
        CHECK(seed);
}

/* alg HS256, kid absent or "hs1", none of the members verification must refuse. */
static bool header_allows_hs1(const char *text, size_t n)
{
    static const char *const bad[] = {"jwk",      "jku",  "x5u", "x5c", "x5t",
                                      "x5t#S256", "crit", "b64", "cty"};
    json_t *h = json_loadb(text, n, JSON_REJECT_DUPLICATES, NULL);
    bool ok = json_is_object(h);
    const char *alg = json_string_value(json_object_get(h, "alg"));
    json_t *kid = json_object_get(h, "kid");
    ok = ok && alg && strcmp(alg, "HS256") == 0 &&
         json_string_length(json_object_get(h, "alg")) == 5;
    ok = ok && (!kid || (json_is_string(kid) && json_string_length(kid) == 3 &&
                         strcmp(json_string_value(kid), "hs1") == 0));
    for (size_t i = 0; ok && i < sizeof(bad) / sizeof(bad[0]); i++)
        ok = !json_object_get(h, bad[i]);
    json_decref(h);
    return ok;
}

static void structured_mode(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    if (!nl || size > TG_JWT_MAX_TOKEN)
        return;
    size_t hl = (size_t)(nl - data), pl = size - hl - 1;
    char *tok = malloc(2 * size + 64);
    CHECK(tok);
    b64url(data, hl, tok);
    size_t d1 = strlen(tok);
    tok[d1] = '.';
    b64url(nl + 1, pl, tok + d1 + 1);
    size_t d2 = strlen(tok);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    CHECK(HMAC(EVP_sha256(), hs_key, (int)hs_len, (const unsigned char *)tok, d2, mac, &maclen));
    tok[d2] = '.';
    b64url(mac, maclen, tok + d2 + 1);

    struct tg_jwt_claims c;
    size_t len = strlen(tok);
    if (tg_jwt_verify(tok, len, issuers, 2, NOW_MS, &c) == TG_JWT_OK) {
        if (!header_allows_hs1((const char *)data, hl)) {
            fprintf(stderr, "fuzz_jwt: header accepted against the rules: %.*s\n", (int)hl, data);
            abort();
        }
        CHECK(c.issuer_index == 0); /* issuer 1 does not allow HS256 */
        check_claims(&c);
    }
    free(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 0 && data[0] == '{')
        structured_mode(data, size);
    else
        raw_mode(data, size);
    return 0;
}
