/*
 * bench/jwt_verify_bench.c - CPU cost of tollgate's credential checks, per
 * operation, without the proxy around them (built and run by bench/auth.sh).
 *
 *   jwt_verify_bench DIR [PASSES]
 *
 * DIR is what bench/auth_material.py wrote.  Every figure is CPU time of this
 * thread (CLOCK_THREAD_CPUTIME_ID) per operation, the median (and minimum)
 * over PASSES passes (default 5):
 *
 *   tg_jwt_verify          N distinct tokens per algorithm, each verified once
 *                          per pass (tg_jwt_verify keeps no state: every call
 *                          is a full, uncached verification)
 *   authn miss path        what authn does for a token it has not seen:
 *                          tg_jwt_cache_get (miss) + tg_jwt_verify +
 *                          tg_jwt_cache_put, a fresh 4096-entry cache per pass
 *   cache hit              tg_jwt_cache_get of one cached token, repeated
 *   tg_keyring_lookup      one key against 1000 sha256 / hmac-sha256 entries
 *   OpenSSL floor          the same signatures through OpenSSL alone:
 *                            DigestVerify = EVP_MD_CTX_new +
 *                              EVP_DigestVerifyInit_ex(md name) + EVP_DigestVerify
 *                              (tollgate's call sequence, minus parsing/claims)
 *                            PKEY_verify = SHA-256 of the signing input +
 *                              EVP_PKEY_verify on a context initialised once
 *                              (the public-key operation alone; not for EdDSA)
 *
 * Output: one "name<TAB>median_us<TAB>min_us<TAB>ops" line per figure on stdout.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "filters/apikey.h"
#include "filters/jwt.h"

#define ISSUER "https://idp.bench.tollgate"
#define AUDIENCE "tollgate"
#define HIT_OPS 200000
#define KEY_OPS 200000
#define MAX_PASSES 64

static volatile uint64_t sink;
static int passes = 5;
static char dir[4096];

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "jwt_verify_bench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(1);
}

static const char *path_of(const char *name)
{
    static char p[4200];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    return p;
}

static double now_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Record one figure from per-pass µs/op samples. */
static void report(const char *name, double *us, int n, size_t ops)
{
    qsort(us, (size_t)n, sizeof(*us), cmp_double);
    printf("%s\t%.3f\t%.3f\t%zu\n", name, us[n / 2], us[0], ops);
    fflush(stdout);
}

/* ---- inputs ---- */

struct tokens {
    char **tok;
    size_t *len;
    size_t n;
};

static char *slurp(const char *path, size_t *outlen)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die("cannot open %s", path);
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap + 1);
    size_t r;
    while (b && (r = fread(b + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            cap *= 2;
            b = realloc(b, cap + 1);
        }
    }
    fclose(f);
    if (!b)
        die("out of memory reading %s", path);
    b[n] = '\0';
    if (outlen)
        *outlen = n;
    return b;
}

static struct tokens load_tokens(const char *name)
{
    struct tokens t = {0};
    size_t n;
    char *b = slurp(path_of(name), &n);
    for (size_t i = 0; i < n; i++)
        t.n += b[i] == '\n';
    t.tok = calloc(t.n + 1, sizeof(*t.tok));
    t.len = calloc(t.n + 1, sizeof(*t.len));
    size_t k = 0;
    for (char *p = b; *p && k < t.n;) {
        char *e = strchr(p, '\n');
        if (!e)
            break;
        *e = '\0';
        if (e > p) {
            t.tok[k] = p;
            t.len[k] = (size_t)(e - p);
            k++;
        }
        p = e + 1;
    }
    t.n = k;
    if (t.n == 0)
        die("no tokens in %s", name);
    return t;
}

static char *first_line(const char *name)
{
    char *b = slurp(path_of(name), NULL);
    b[strcspn(b, "\r\n")] = '\0';
    return b;
}

static int b64url(const char *in, size_t n, unsigned char *out, size_t *outlen)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        int v = c >= 'A' && c <= 'Z'   ? c - 'A'
                : c >= 'a' && c <= 'z' ? c - 'a' + 26
                : c >= '0' && c <= '9' ? c - '0' + 52
                : c == '-'             ? 62
                : c == '_'             ? 63
                                       : -1;
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    *outlen = o;
    return 0;
}

/* ---- JWT through tollgate ---- */

static const char *const audiences[] = {AUDIENCE};

static struct tg_jwt_issuer issuer_for(const struct tg_jwks *jwks)
{
    return (struct tg_jwt_issuer){
        .issuer = ISSUER,
        .audiences = audiences,
        .naudiences = 1,
        .jwks = jwks,
        .algorithms = (1u << TG_JWT_RS256) | (1u << TG_JWT_ES256) | (1u << TG_JWT_EDDSA),
        .principal_claim = "sub",
        .tenant_claim = "tenant",
        .policy_claim = NULL,
        .leeway_ms = 30000,
    };
}

static void bench_verify(const char *alg, const struct tokens *t, const struct tg_jwt_issuer *iss)
{
    double us[MAX_PASSES];
    struct tg_jwt_claims cl;
    int64_t now = wall_ms();
    for (int p = 0; p < passes; p++) {
        double t0 = now_cpu_ns();
        for (size_t i = 0; i < t->n; i++) {
            enum tg_jwt_status st = tg_jwt_verify(t->tok[i], t->len[i], iss, 1, now, &cl);
            if (st != TG_JWT_OK)
                die("tg_jwt_verify: %s", tg_jwt_status_name(st));
            sink += cl.exp_ms;
        }
        us[p] = (now_cpu_ns() - t0) / 1e3 / (double)t->n;
    }
    char name[64];
    snprintf(name, sizeof(name), "tg_jwt_verify %s", alg);
    report(name, us, passes, t->n);
}

static void bench_miss_path(const char *alg, const struct tokens *t,
                            const struct tg_jwt_issuer *iss)
{
    double us[MAX_PASSES];
    struct tg_jwt_claims cl;
    int64_t now = wall_ms();
    for (int p = 0; p < passes; p++) {
        struct tg_jwt_cache *c = tg_jwt_cache_new(4096);
        if (!c)
            die("%s", "tg_jwt_cache_new failed");
        double t0 = now_cpu_ns();
        for (size_t i = 0; i < t->n; i++) {
            if (tg_jwt_cache_get(c, 1, t->tok[i], t->len[i], now, 30000, &cl))
                die("%s", "unexpected cache hit (duplicate tokens?)");
            if (tg_jwt_verify(t->tok[i], t->len[i], iss, 1, now, &cl) != TG_JWT_OK)
                die("%s", "tg_jwt_verify failed");
            tg_jwt_cache_put(c, 1, t->tok[i], t->len[i], &cl);
        }
        us[p] = (now_cpu_ns() - t0) / 1e3 / (double)t->n;
        tg_jwt_cache_free(c);
    }
    char name[64];
    snprintf(name, sizeof(name), "authn miss path %s", alg);
    report(name, us, passes, t->n);
}

static void bench_cache_hit(const char *alg, const struct tokens *t,
                            const struct tg_jwt_issuer *iss)
{
    double us[MAX_PASSES];
    struct tg_jwt_claims cl;
    int64_t now = wall_ms();
    struct tg_jwt_cache *c = tg_jwt_cache_new(4096);
    if (!c || tg_jwt_verify(t->tok[0], t->len[0], iss, 1, now, &cl) != TG_JWT_OK)
        die("%s", "cache setup failed");
    tg_jwt_cache_put(c, 1, t->tok[0], t->len[0], &cl);
    for (int p = 0; p < passes; p++) {
        double t0 = now_cpu_ns();
        for (size_t i = 0; i < HIT_OPS; i++) {
            if (!tg_jwt_cache_get(c, 1, t->tok[0], t->len[0], now, 30000, &cl))
                die("%s", "cache miss");
            sink += cl.exp_ms;
        }
        us[p] = (now_cpu_ns() - t0) / 1e3 / HIT_OPS;
    }
    tg_jwt_cache_free(c);
    char name[64];
    snprintf(name, sizeof(name), "tg_jwt_cache_get hit %s (%zu B token)", alg, t->len[0]);
    report(name, us, passes, HIT_OPS);
}

/* ---- API keys ---- */

static void bench_keyring(const char *label, const char *file, const unsigned char *pepper,
                          size_t pepper_len, const char *key)
{
    char err[512];
    struct tg_keyring *kr = tg_keyring_load(path_of(file), pepper, pepper_len, err, sizeof(err));
    if (!kr)
        die("tg_keyring_load: %s", err);
    double us[MAX_PASSES];
    int64_t now = wall_ms();
    size_t len = strlen(key);
    for (int p = 0; p < passes; p++) {
        const struct tg_apikey *k = NULL;
        double t0 = now_cpu_ns();
        for (size_t i = 0; i < KEY_OPS; i++) {
            if (tg_keyring_lookup(kr, key, len, now, &k) != TG_APIKEY_OK)
                die("%s", "tg_keyring_lookup failed");
            sink += (uintptr_t)k;
        }
        us[p] = (now_cpu_ns() - t0) / 1e3 / KEY_OPS;
    }
    tg_keyring_free(kr);
    report(label, us, passes, KEY_OPS);
}

/* ---- OpenSSL alone ---- */

struct signed_msg {
    const unsigned char *msg; /* the signing input, inside the token */
    size_t msglen;
    unsigned char sig[600];   /* raw (RSA, Ed25519) or DER (ECDSA) */
    size_t siglen;
};

static struct signed_msg *split_tokens(const struct tokens *t, int ecdsa)
{
    struct signed_msg *m = calloc(t->n, sizeof(*m));
    for (size_t i = 0; i < t->n; i++) {
        const char *dot = memchr(t->tok[i], '.', t->len[i]);
        const char *dot2 = dot ? memchr(dot + 1, '.', t->len[i] - (size_t)(dot + 1 - t->tok[i])) : NULL;
        if (!dot2)
            die("%s", "malformed token");
        m[i].msg = (const unsigned char *)t->tok[i];
        m[i].msglen = (size_t)(dot2 - t->tok[i]);
        unsigned char raw[600];
        size_t rl = 0;
        size_t sl = t->len[i] - m[i].msglen - 1;
        if (sl > 800 || b64url(dot2 + 1, sl, raw, &rl) < 0)
            die("%s", "bad signature encoding");
        if (!ecdsa) {
            memcpy(m[i].sig, raw, rl);
            m[i].siglen = rl;
            continue;
        }
        /* JWS ES256 is r||s; OpenSSL wants DER (done outside the timed loop). */
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(raw, (int)(rl / 2), NULL), *s = BN_bin2bn(raw + rl / 2, (int)(rl / 2), NULL);
        if (!es || !r || !s || ECDSA_SIG_set0(es, r, s) != 1)
            die("%s", "ECDSA_SIG");
        unsigned char *p = m[i].sig;
        int dl = i2d_ECDSA_SIG(es, &p);
        if (dl <= 0)
            die("%s", "i2d_ECDSA_SIG");
        m[i].siglen = (size_t)dl;
        ECDSA_SIG_free(es);
    }
    return m;
}

static EVP_PKEY *load_pub(const char *name)
{
    FILE *f = fopen(path_of(name), "r");
    if (!f)
        die("cannot open %s", name);
    EVP_PKEY *k = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    fclose(f);
    if (!k)
        die("cannot read %s", name);
    return k;
}

static void bench_floor(const char *alg, const struct tokens *t, const char *pem, int kind)
{
    /* kind: 0 RSA, 1 ECDSA, 2 Ed25519 */
    struct signed_msg *m = split_tokens(t, kind == 1);
    EVP_PKEY *pk = load_pub(pem);
    const char *md = kind == 2 ? NULL : "SHA256";
    double us[MAX_PASSES];
    char name[96];

    for (int p = 0; p < passes; p++) {
        double t0 = now_cpu_ns();
        for (size_t i = 0; i < t->n; i++) {
            EVP_MD_CTX *c = EVP_MD_CTX_new();
            EVP_PKEY_CTX *pc = NULL;
            if (!c || EVP_DigestVerifyInit_ex(c, &pc, md, NULL, NULL, pk, NULL) != 1 ||
                (kind == 0 && EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) != 1) ||
                EVP_DigestVerify(c, m[i].sig, m[i].siglen, m[i].msg, m[i].msglen) != 1)
                die("OpenSSL EVP_DigestVerify failed (%s)", alg);
            EVP_MD_CTX_free(c);
        }
        us[p] = (now_cpu_ns() - t0) / 1e3 / (double)t->n;
    }
    snprintf(name, sizeof(name), "OpenSSL DigestVerify %s", alg);
    report(name, us, passes, t->n);

    if (kind != 2) {
        EVP_MD *sha = EVP_MD_fetch(NULL, "SHA256", NULL);
        EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
        if (!sha || !pc || EVP_PKEY_verify_init(pc) != 1 ||
            (kind == 0 && (EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) != 1 ||
                           EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) != 1)))
            die("EVP_PKEY_verify_init failed (%s)", alg);
        for (int p = 0; p < passes; p++) {
            double t0 = now_cpu_ns();
            for (size_t i = 0; i < t->n; i++) {
                unsigned char d[32];
                unsigned int dl = 0;
                if (EVP_Digest(m[i].msg, m[i].msglen, d, &dl, sha, NULL) != 1 ||
                    EVP_PKEY_verify(pc, m[i].sig, m[i].siglen, d, dl) != 1)
                    die("OpenSSL EVP_PKEY_verify failed (%s)", alg);
            }
            us[p] = (now_cpu_ns() - t0) / 1e3 / (double)t->n;
        }
        snprintf(name, sizeof(name), "OpenSSL PKEY_verify %s", alg);
        report(name, us, passes, t->n);
        EVP_PKEY_CTX_free(pc);
        EVP_MD_free(sha);
    }
    EVP_PKEY_free(pk);
    free(m);
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s DIR [PASSES]\n", argv[0]);
        return 2;
    }
    snprintf(dir, sizeof(dir), "%s", argv[1]);
    if (argc == 3) {
        passes = (int)strtol(argv[2], NULL, 10);
        if (passes < 1 || passes > MAX_PASSES)
            die("%s", "PASSES must be 1..64");
    }

    char err[512];
    struct tg_jwks *jwks = tg_jwks_load(path_of("jwks.json"), err, sizeof(err));
    if (!jwks)
        die("tg_jwks_load: %s", err);
    struct tg_jwt_issuer iss = issuer_for(jwks);
    struct tokens rs = load_tokens("tokens-RS256.txt");
    struct tokens es = load_tokens("tokens-ES256.txt");
    struct tokens ed = load_tokens("tokens-EdDSA.txt");
    char *key = first_line("apikey.txt");
    char *pepper = first_line("pepper.txt");

    /* Warm-up: lazy provider/method loading is not a per-request cost. */
    struct tg_jwt_claims cl;
    int64_t now = wall_ms();
    if (tg_jwt_verify(rs.tok[0], rs.len[0], &iss, 1, now, &cl) != TG_JWT_OK ||
        tg_jwt_verify(es.tok[0], es.len[0], &iss, 1, now, &cl) != TG_JWT_OK ||
        tg_jwt_verify(ed.tok[0], ed.len[0], &iss, 1, now, &cl) != TG_JWT_OK)
        die("%s", "warm-up verification failed");

    bench_keyring("tg_keyring_lookup sha256", "keys-sha256.json", NULL, 0, key);
    bench_keyring("tg_keyring_lookup hmac-sha256 (pepper)", "keys-hmac.json",
                  (const unsigned char *)pepper, strlen(pepper), key);
    bench_cache_hit("RS256", &rs, &iss);
    bench_cache_hit("ES256", &es, &iss);

    bench_verify("RS256", &rs, &iss);
    bench_floor("RS256", &rs, "rsa1.pub.pem", 0);
    bench_verify("ES256", &es, &iss);
    bench_floor("ES256", &es, "ec1.pub.pem", 1);
    bench_verify("EdDSA", &ed, &iss);
    bench_floor("EdDSA", &ed, "ed1.pub.pem", 2);
    bench_miss_path("RS256", &rs, &iss);
    bench_miss_path("ES256", &es, &iss);
    bench_miss_path("EdDSA", &ed, &iss);

    tg_jwks_free(jwks);
    free(key);
    free(pepper);
    return sink == 42 ? 3 : 0;
}
