/*
 * apikey.c - the keys file, the digest index, key generation and the
 * "tollgate key" command line.
 *
 * Memory class (STYLE §9a): a keyring is config data, allocated at load,
 * immutable afterwards and owned by the snapshot.  tg_keyring_lookup() only
 * reads it, so every worker thread may call it at once.
 *
 * The index is an open-addressing table of the stored 32-byte digests.  The
 * digests are SHA-256 / HMAC-SHA256 outputs, uniformly distributed and not
 * chosen by a client, so their first 8 bytes are the table hash and linear
 * probing at a load factor of at most 1/2 needs no defence against flooding.
 */
#include "filters/apikey.h"

#include "config/config.h"
#include "proxy/err.h"
#include "proxy/mem.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define KEYS_MAX_BYTES (64u << 20) /* a keys file larger than this is refused */
#define KEYS_MAX_ENTRIES 4000000u  /* indexes fit in uint32_t with room to spare */
#define ID_MAX 64                  /* key id length */
#define STR_MAX 255                /* principal, tenant and policy length */
#define DIGEST_LEN 32
#define HEX_LEN (2 * DIGEST_LEN)
#define RAW_KEY_BYTES 32   /* 256 bits from RAND_bytes */
#define KEY_B64_LEN 43     /* base64url of 32 bytes, unpadded */
#define CLI_STDIN_MAX 4096 /* "key hash" reads at most this much */
#define NO_INDEX ((size_t)-1)

#define PFX_SHA256 "sha256:"
#define PFX_HMAC "hmac-sha256:"

static const char hexdigits[] = "0123456789abcdef";

enum scheme {
    SCHEME_SHA256 = 1, /* SHA-256 of the key */
    SCHEME_HMAC = 2,   /* HMAC-SHA256 of the key under the pepper */
};

/* One slot of the digest index; idx == 0 marks an empty slot. */
struct slot {
    unsigned char digest[DIGEST_LEN]; /* the stored hash, raw */
    uint32_t idx;                     /* entry index + 1 */
    uint8_t scheme;                   /* enum scheme */
};

struct tg_keyring {
    struct tg_apikey *keys; /* entries, in file order */
    size_t nkeys;           /* count */
    struct slot *slots;     /* digest index, mask + 1 slots */
    size_t mask;            /* table size - 1 (a power of two minus one) */
    unsigned char *pepper;  /* own copy of the pepper (wiped on free), or NULL */
    size_t pepper_len;      /* its length; 0 = no pepper */
    EVP_MD *sha256;         /* fetched once: an implicit fetch per call costs ~200 ns */
    EVP_MAC *hmac;          /* fetched once when there is a pepper */
    EVP_MAC_CTX *hmac_tmpl; /* keyed with the pepper; only ever duplicated (read-only) */
};

/* ---- hashing ---- */

static void to_hex(const unsigned char *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexdigits[d[i] >> 4];
        out[2 * i + 1] = hexdigits[d[i] & 15];
    }
}

static int sha256_with(const EVP_MD *md, const char *key, size_t len, unsigned char out[DIGEST_LEN])
{
    unsigned int n = 0;
    if (EVP_Digest(key, len, out, &n, md, NULL) != 1 || n != DIGEST_LEN)
        return TG_E_TLS;
    return 0;
}

/* HMAC from a copy of the keyed template: the template itself is never written. */
static int hmac_with(const EVP_MAC_CTX *tmpl, const char *key, size_t len,
                     unsigned char out[DIGEST_LEN])
{
    size_t n = 0;
    int rv = TG_E_TLS;
    EVP_MAC_CTX *c = EVP_MAC_CTX_dup(tmpl);
    if (!c)
        return TG_E_NOMEM;
    if (EVP_MAC_update(c, (const unsigned char *)key, len) == 1 &&
        EVP_MAC_final(c, out, &n, DIGEST_LEN) == 1 && n == DIGEST_LEN)
        rv = 0;
    EVP_MAC_CTX_free(c);
    return rv;
}

static EVP_MAC_CTX *hmac_template(EVP_MAC *mac, const unsigned char *pepper, size_t len)
{
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    EVP_MAC_CTX *c = EVP_MAC_CTX_new(mac);
    if (c && EVP_MAC_init(c, pepper, len, params) != 1) {
        EVP_MAC_CTX_free(c);
        c = NULL;
    }
    return c;
}

int tg_apikey_hash(const char *key, size_t len, const unsigned char *pepper, size_t pepper_len,
                   char out[TG_APIKEY_HASH_MAX])
{
    unsigned char d[DIGEST_LEN];
    size_t dlen = 0;
    const char *pfx;
    int rv = TG_E_TLS;

    if (!key || len == 0 || !out || (pepper_len > 0 && !pepper))
        return TG_E_INVALID;
    /* A longer key could be stored but never presented (lookup refuses it). */
    if (len > TG_APIKEY_MAX_LEN)
        return TG_E_TOO_LARGE;
    if (pepper_len > 0) {
        pfx = PFX_HMAC;
        if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, pepper, pepper_len,
                      (const unsigned char *)key, len, d, sizeof(d), &dlen) == NULL)
            goto out;
    } else {
        pfx = PFX_SHA256;
        if (EVP_Q_digest(NULL, "SHA256", NULL, key, len, d, &dlen) != 1)
            goto out;
    }
    if (dlen != DIGEST_LEN)
        goto out;
    size_t pl = strlen(pfx);
    memcpy(out, pfx, pl);
    to_hex(d, DIGEST_LEN, out + pl);
    out[pl + HEX_LEN] = '\0';
    rv = 0;
out:
    OPENSSL_cleanse(d, sizeof(d));
    return rv;
}

int tg_apikey_generate(char *out, size_t outlen)
{
    unsigned char raw[RAW_KEY_BYTES];
    unsigned char b64[4 * ((RAW_KEY_BYTES + 2) / 3) + 1]; /* 44 + NUL */
    size_t pl = sizeof(TG_APIKEY_PREFIX) - 1;
    int rv = TG_E_TLS;

    if (!out || outlen < 48)
        return TG_E_INVALID;
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        goto out;
    if (EVP_EncodeBlock(b64, raw, sizeof(raw)) != (int)sizeof(b64) - 1)
        goto out;
    /* RFC 4648 §5: base64url replaces '+' and '/', and drops the '=' padding. */
    memcpy(out, TG_APIKEY_PREFIX, pl);
    for (size_t i = 0; i < KEY_B64_LEN; i++) {
        unsigned char c = b64[i];
        out[pl + i] = c == '+' ? '-' : c == '/' ? '_' : (char)c;
    }
    out[pl + KEY_B64_LEN] = '\0';
    rv = 0;
out:
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(b64, sizeof(b64));
    return rv;
}

/* ---- the index ---- */

static size_t slot_of(const struct tg_keyring *kr, const unsigned char *d)
{
    uint64_t h;
    memcpy(&h, d, sizeof(h));
    return (size_t)(h & (uint64_t)kr->mask);
}

/* The slot holding (scheme, digest), or NULL.  The full digest is compared in constant time. */
static const struct slot *probe(const struct tg_keyring *kr, uint8_t scheme,
                                const unsigned char d[DIGEST_LEN])
{
    for (size_t i = slot_of(kr, d);; i = (i + 1) & kr->mask) {
        const struct slot *s = &kr->slots[i];
        if (s->idx == 0)
            return NULL;
        if (s->scheme == scheme && CRYPTO_memcmp(s->digest, d, DIGEST_LEN) == 0)
            return s;
    }
}

enum tg_apikey_status tg_keyring_lookup(const struct tg_keyring *kr, const char *key, size_t len,
                                        int64_t now_ms, const struct tg_apikey **out)
{
    unsigned char d[DIGEST_LEN];
    const struct slot *hit = NULL;

    if (out)
        *out = NULL;
    if (!kr || !key || len == 0 || len > TG_APIKEY_MAX_LEN)
        return TG_APIKEY_UNKNOWN;
    /*
     * With a pepper both digests are always computed, so the time taken does
     * not depend on which scheme (if any) the key is stored under.  An
     * hmac-sha256 entry wins over a sha256 entry for the same key.  A crypto
     * failure fails closed (UNKNOWN).
     */
    if (sha256_with(kr->sha256, key, len, d) == 0)
        hit = probe(kr, SCHEME_SHA256, d);
    if (kr->hmac_tmpl && hmac_with(kr->hmac_tmpl, key, len, d) == 0) {
        const struct slot *h = probe(kr, SCHEME_HMAC, d);
        if (h)
            hit = h;
    }
    OPENSSL_cleanse(d, sizeof(d));
    if (!hit)
        return TG_APIKEY_UNKNOWN;

    const struct tg_apikey *k = &kr->keys[hit->idx - 1];
    if (out)
        *out = k;
    if (k->disabled)
        return TG_APIKEY_DISABLED;
    if (k->not_after_ms != 0 && now_ms > k->not_after_ms)
        return TG_APIKEY_EXPIRED;
    return TG_APIKEY_OK;
}

size_t tg_keyring_count(const struct tg_keyring *kr)
{
    return kr ? kr->nkeys : 0;
}

const struct tg_apikey *tg_keyring_at(const struct tg_keyring *kr, size_t i)
{
    return kr && i < kr->nkeys ? &kr->keys[i] : NULL;
}

void tg_keyring_free(struct tg_keyring *kr)
{
    if (!kr)
        return;
    for (size_t i = 0; i < kr->nkeys; i++) {
        struct tg_apikey *k = &kr->keys[i];
        tg_mem_free(k->id);
        tg_mem_free(k->principal);
        tg_mem_free(k->tenant);
        tg_mem_free(k->policy);
    }
    tg_mem_free(kr->keys);
    tg_mem_free(kr->slots);
    if (kr->pepper) {
        OPENSSL_cleanse(kr->pepper, kr->pepper_len);
        tg_mem_free(kr->pepper);
    }
    EVP_MAC_CTX_free(kr->hmac_tmpl); /* wipes its copy of the key */
    EVP_MAC_free(kr->hmac);
    EVP_MD_free(kr->sha256);
    tg_mem_free(kr);
}

/* ---- loading ---- */

struct load {
    const char *path;      /* for messages */
    char *err;             /* caller's buffer */
    size_t errlen;         /* its size */
    struct tg_keyring *kr; /* being built */
    uint32_t *ids;         /* id index: entry index + 1, same size as kr->slots */
};

/*
 * "PATH: keys[i].field: message"; i == NO_INDEX leaves out "keys[i]" (then
 * field is a top-level key), field NULL leaves out ".field".  Field names may
 * come from the file: only printable ASCII is kept.
 */
static int fail(struct load *l, size_t i, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(struct load *l, size_t i, const char *field, const char *fmt, ...)
{
    char where[128];
    size_t w = 0;
    int n;

    if (!l->err || l->errlen == 0)
        return TG_E_INVALID;
    if (i != NO_INDEX) {
        n = snprintf(where, sizeof(where), "keys[%zu]", i);
        w = n > 0 ? (size_t)n : 0;
    }
    if (field) {
        if (w > 0 && w + 1 < sizeof(where))
            where[w++] = '.';
        for (const char *f = field; *f && w + 1 < sizeof(where) && f - field < 64; f++) {
            unsigned char c = (unsigned char)*f;
            where[w++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
        }
    }
    where[w < sizeof(where) ? w : sizeof(where) - 1] = '\0';
    if (w > 0)
        n = snprintf(l->err, l->errlen, "%s: %s: ", l->path, where);
    else
        n = snprintf(l->err, l->errlen, "%s: ", l->path);
    if (n >= 0 && (size_t)n < l->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(l->err + n, l->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return TG_E_INVALID;
}

static int nomem(struct load *l)
{
    if (l->err && l->errlen)
        snprintf(l->err, l->errlen, "%s: out of memory", l->path);
    return TG_E_NOMEM;
}

/* Read the whole regular file at l->path (at most KEYS_MAX_BYTES) into a tg_mem buffer. */
static int read_file(struct load *l, char **out, size_t *outlen)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0, cap;
    int rv = TG_E_IO;
    int fd = open(l->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(l, NO_INDEX, NULL, "cannot open: %s", strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rv = fail(l, NO_INDEX, NULL, "not a regular file");
        goto out;
    }
    if ((uint64_t)st.st_size > KEYS_MAX_BYTES) {
        rv = fail(l, NO_INDEX, NULL, "larger than %u bytes", KEYS_MAX_BYTES);
        goto out;
    }
    /* The file may grow while we read: read to EOF, within the limit. */
    cap = (size_t)st.st_size + 1;
    if (!(buf = tg_mem_malloc(cap))) {
        rv = nomem(l);
        goto out;
    }
    for (;;) {
        if (len == cap) {
            char *nb;
            if (cap > KEYS_MAX_BYTES) {
                rv = fail(l, NO_INDEX, NULL, "larger than %u bytes", KEYS_MAX_BYTES);
                goto out;
            }
            if (!(nb = tg_mem_realloc(buf, cap * 2))) {
                rv = nomem(l);
                goto out;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rv = fail(l, NO_INDEX, NULL, "cannot read: %s", strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    *out = buf;
    *outlen = len;
    buf = NULL;
    rv = 0;
out:
    tg_mem_free(buf);
    close(fd);
    return rv;
}

static bool id_ok(const char *s, size_t n)
{
    if (n == 0 || n > ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* 1..STR_MAX bytes of UTF-8 (jansson checked it) without C0, DEL or C1 controls. */
static bool text_ok(json_t *v)
{
    if (!json_is_string(v))
        return false;
    size_t n = json_string_length(v);
    const unsigned char *s = (const unsigned char *)json_string_value(v);
    if (n == 0 || n > STR_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f)
            return false;
        if (s[i] == 0xc2 && i + 1 < n && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f)
            return false; /* U+0080..U+009F */
    }
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* uppercase is refused: one spelling per hash keeps duplicates detectable */
}

/* "sha256:<64 lowercase hex>" or "hmac-sha256:<64 lowercase hex>"; 0 when malformed. */
static uint8_t parse_hash(const char *s, size_t n, unsigned char d[DIGEST_LEN])
{
    uint8_t scheme;
    size_t pl;
    if (n == strlen(PFX_SHA256) + HEX_LEN && memcmp(s, PFX_SHA256, strlen(PFX_SHA256)) == 0) {
        scheme = SCHEME_SHA256;
        pl = strlen(PFX_SHA256);
    } else if (n == strlen(PFX_HMAC) + HEX_LEN && memcmp(s, PFX_HMAC, strlen(PFX_HMAC)) == 0) {
        scheme = SCHEME_HMAC;
        pl = strlen(PFX_HMAC);
    } else {
        return 0;
    }
    for (size_t i = 0; i < DIGEST_LEN; i++) {
        int hi = hexval(s[pl + 2 * i]), lo = hexval(s[pl + 2 * i + 1]);
        if (hi < 0 || lo < 0)
            return 0;
        d[i] = (unsigned char)(hi << 4 | lo);
    }
    return scheme;
}

/* n decimal digits at s (no sign, no space); -1 when any is not a digit. */
static int digits(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static int days_in_month(int y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

/*
 * RFC 3339 date-time in UTC: "YYYY-MM-DDTHH:MM:SS[.frac](Z|+00:00)".  The
 * fraction (1 to 9 digits) is truncated to milliseconds.  A leap second (:60)
 * is accepted and normalised by timegm() into the next minute.  false when
 * malformed; *ms may then be negative for dates before 1970.
 */
static bool parse_time(const char *s, size_t n, int64_t *ms)
{
    struct tm tm;
    int64_t frac = 0;
    size_t p = 19;

    if (n < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' ||
        s[16] != ':')
        return false;
    int y = digits(s, 4), mo = digits(s + 5, 2), d = digits(s + 8, 2);
    int h = digits(s + 11, 2), mi = digits(s + 14, 2), se = digits(s + 17, 2);
    if (y < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59 || se < 0 ||
        se > 60 || d > days_in_month(y, mo))
        return false;
    if (s[p] == '.') {
        size_t f = ++p;
        for (; p < n && s[p] >= '0' && s[p] <= '9'; p++)
            if (p - f < 3)
                frac = frac * 10 + (s[p] - '0');
        if (p == f || p - f > 9)
            return false;
        for (size_t k = p - f; k < 3; k++)
            frac *= 10;
    }
    if (!((n - p == 1 && (s[p] == 'Z' || s[p] == 'z')) ||
          (n - p == 6 && memcmp(s + p, "+00:00", 6) == 0)))
        return false;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = se;
    _Static_assert(sizeof(time_t) >= 8, "64-bit time_t: every year 0000..9999 converts");
    *ms = (int64_t)timegm(&tm) * 1000 + frac;
    return true;
}

static int take_text(struct load *l, size_t i, const char *field, json_t *v, char **dst)
{
    if (!text_ok(v))
        return fail(l, i, field, "expected a string of 1 to %d bytes without control characters",
                    STR_MAX);
    if (!(*dst = tg_mem_strdup(json_string_value(v))))
        return nomem(l);
    return 0;
}

#define HASH_EXPECTED                                                                              \
    "expected \"" PFX_SHA256 "\" or \"" PFX_HMAC "\" followed by 64 lowercase hex digits"
#define TIME_EXPECTED "expected an RFC 3339 UTC time such as \"2027-01-01T00:00:00Z\""

/* Add entry i's id to the id index; an error names both entries. */
static int index_id(struct load *l, size_t i)
{
    const char *id = l->kr->keys[i].id;
    uint64_t h = 1469598103934665603ull; /* FNV-1a: ids are short and checked once */
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    for (size_t s = (size_t)(h & l->kr->mask);; s = (s + 1) & l->kr->mask) {
        if (l->ids[s] == 0) {
            l->ids[s] = (uint32_t)(i + 1);
            return 0;
        }
        size_t j = l->ids[s] - 1;
        if (strcmp(l->kr->keys[j].id, id) == 0)
            return fail(l, i, "id", "duplicate id \"%s\" (same as keys[%zu].id)", id, j);
    }
}

/* Add entry i's digest to the lookup index; an error names both entries. */
static int index_hash(struct load *l, size_t i, uint8_t scheme, const unsigned char *d)
{
    struct tg_keyring *kr = l->kr;
    for (size_t s = slot_of(kr, d);; s = (s + 1) & kr->mask) {
        struct slot *sl = &kr->slots[s];
        if (sl->idx == 0) {
            memcpy(sl->digest, d, DIGEST_LEN);
            sl->scheme = scheme;
            sl->idx = (uint32_t)(i + 1);
            return 0;
        }
        if (sl->scheme == scheme && memcmp(sl->digest, d, DIGEST_LEN) == 0)
            return fail(l, i, "hash", "duplicate hash (same as keys[%zu].hash)",
                        (size_t)sl->idx - 1);
    }
}

static int parse_entry(struct load *l, json_t *obj, size_t i)
{
    struct tg_apikey *k = &l->kr->keys[i];
    unsigned char d[DIGEST_LEN];
    uint8_t scheme = 0;
    const char *name;
    json_t *v;
    int rv;

    if (!json_is_object(obj))
        return fail(l, i, NULL, "expected an object");
    /* Document order, so the first problem in the file is the one reported. */
    json_object_foreach(obj, name, v)
    {
        if (strcmp(name, "id") == 0) {
            if (!json_is_string(v) || !id_ok(json_string_value(v), json_string_length(v)))
                return fail(l, i, name, "expected 1 to %d characters from A-Z a-z 0-9 . _ -",
                            ID_MAX);
            if (!(k->id = tg_mem_strdup(json_string_value(v))))
                return nomem(l);
        } else if (strcmp(name, "hash") == 0) {
            if (!json_is_string(v) ||
                !(scheme = parse_hash(json_string_value(v), json_string_length(v), d)))
                return fail(l, i, name, HASH_EXPECTED);
            if (scheme == SCHEME_HMAC && l->kr->pepper_len == 0)
                return fail(l, i, name,
                            "\"" PFX_HMAC "\" needs a pepper, and "
                            "auth.api_key_pepper_env is not set");
        } else if (strcmp(name, "principal") == 0) {
            if ((rv = take_text(l, i, name, v, &k->principal)) != 0)
                return rv;
        } else if (strcmp(name, "policy") == 0) {
            if ((rv = take_text(l, i, name, v, &k->policy)) != 0)
                return rv;
        } else if (strcmp(name, "tenant") == 0) {
            /* Optional fields: null is the same as absent. */
            if (!json_is_null(v) && (rv = take_text(l, i, name, v, &k->tenant)) != 0)
                return rv;
        } else if (strcmp(name, "not_after") == 0) {
            if (json_is_null(v))
                continue;
            int64_t t = 0;
            if (!json_is_string(v) || !parse_time(json_string_value(v), json_string_length(v), &t))
                return fail(l, i, name, TIME_EXPECTED);
            if (t <= 0) /* 0 means "no expiry" in struct tg_apikey */
                return fail(l, i, name, "expected a time after 1970-01-01T00:00:00Z");
            k->not_after_ms = t;
        } else if (strcmp(name, "disabled") == 0) {
            if (!json_is_null(v) && !json_is_boolean(v))
                return fail(l, i, name, "expected true or false");
            k->disabled = json_is_true(v);
        } else {
            return fail(l, i, name, "unknown key");
        }
    }
    if (!k->id)
        return fail(l, i, "id", "required key is missing");
    if (!scheme)
        return fail(l, i, "hash", "required key is missing");
    if (!k->principal)
        return fail(l, i, "principal", "required key is missing");
    if (!k->policy)
        return fail(l, i, "policy", "required key is missing");
    if ((rv = index_id(l, i)) != 0)
        return rv;
    return index_hash(l, i, scheme, d);
}

static int parse_root(struct load *l, json_t *root)
{
    struct tg_keyring *kr = l->kr;
    json_t *keys = NULL, *v;
    const char *name;

    if (!json_is_object(root))
        return fail(l, NO_INDEX, NULL, "expected a JSON object at the top level");
    json_object_foreach(root, name, v)
    {
        if (strcmp(name, "keys") != 0)
            return fail(l, NO_INDEX, name, "unknown key");
        keys = v;
    }
    if (!keys)
        return fail(l, NO_INDEX, "keys", "required key is missing");
    if (!json_is_array(keys))
        return fail(l, NO_INDEX, "keys", "expected an array");
    size_t n = json_array_size(keys);
    if (n > KEYS_MAX_ENTRIES)
        return fail(l, NO_INDEX, "keys", "more than %u entries", KEYS_MAX_ENTRIES);

    size_t cap = 8;
    while (cap < 2 * n)
        cap *= 2;
    kr->keys = tg_mem_calloc(n, sizeof(*kr->keys));
    kr->slots = tg_mem_calloc(cap, sizeof(*kr->slots));
    l->ids = tg_mem_calloc(cap, sizeof(*l->ids));
    if (!kr->keys || !kr->slots || !l->ids)
        return nomem(l);
    kr->nkeys = n; /* every entry is zeroed, so a partial keyring frees cleanly */
    kr->mask = cap - 1;

    for (size_t i = 0; i < n; i++) {
        int rv = parse_entry(l, json_array_get(keys, i), i);
        if (rv)
            return rv;
    }
    return 0;
}

static int init_crypto(struct load *l, const unsigned char *pepper, size_t pepper_len)
{
    struct tg_keyring *kr = l->kr;
    if (!(kr->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL)))
        return fail(l, NO_INDEX, NULL, "OpenSSL has no SHA256");
    if (pepper_len == 0)
        return 0;
    if (!(kr->pepper = tg_mem_malloc(pepper_len)))
        return nomem(l);
    memcpy(kr->pepper, pepper, pepper_len);
    kr->pepper_len = pepper_len;
    if (!(kr->hmac = EVP_MAC_fetch(NULL, "HMAC", NULL)) ||
        !(kr->hmac_tmpl = hmac_template(kr->hmac, kr->pepper, kr->pepper_len)))
        return fail(l, NO_INDEX, NULL, "OpenSSL cannot set up HMAC-SHA256");
    return 0;
}

struct tg_keyring *tg_keyring_load(const char *path, const unsigned char *pepper, size_t pepper_len,
                                   char *err, size_t errlen)
{
    struct load l;
    char *bytes = NULL;
    size_t len = 0;
    json_t *root = NULL;
    json_error_t je;
    bool ok = false;

    memset(&l, 0, sizeof(l));
    l.path = path && *path ? path : "(no file)";
    l.err = err;
    l.errlen = errlen;
    if (err && errlen)
        err[0] = '\0';
    if (!path || !*path) {
        fail(&l, NO_INDEX, NULL, "no keys file given");
        return NULL;
    }
    if (pepper_len > 0 && !pepper) {
        fail(&l, NO_INDEX, NULL, "internal error: pepper length without a pepper");
        return NULL;
    }
    if (!(l.kr = tg_mem_calloc(1, sizeof(*l.kr)))) {
        nomem(&l);
        return NULL;
    }
    if (init_crypto(&l, pepper, pepper_len) != 0 || read_file(&l, &bytes, &len) != 0)
        goto out;
    root = json_loadb(bytes, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (err && errlen) {
            if (je.line > 0)
                snprintf(err, errlen, "%s: line %d column %d: %s", l.path, je.line, je.column,
                         je.text);
            else
                snprintf(err, errlen, "%s: %s", l.path, je.text);
        }
        goto out;
    }
    if (parse_root(&l, root) != 0)
        goto out;
    ok = true;
out:
    json_decref(root);
    tg_mem_free(bytes);
    tg_mem_free(l.ids);
    if (!ok) {
        tg_keyring_free(l.kr);
        l.kr = NULL;
    }
    return l.kr;
}

/* ---- tollgate key new|hash ---- */

static void cli_usage(FILE *f)
{
    fprintf(f,
            "usage: tollgate key new --id ID [-c FILE]   print a new key and its keys-file entry\n"
            "       tollgate key hash [-c FILE] < KEY    print the hash of the key on stdin\n");
}

/* write(2) straight to fd 1: no stdio buffer keeps a copy of the key. */
static int write_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return TG_E_IO;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* stdin up to CLI_STDIN_MAX bytes; TG_E_TOO_LARGE past it.  buf holds CLI_STDIN_MAX + 1. */
static int read_stdin(char *buf, size_t *len)
{
    size_t n = 0;
    while (n < CLI_STDIN_MAX + 1) {
        ssize_t r = read(0, buf + n, CLI_STDIN_MAX + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return TG_E_IO;
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *len = n;
    return n > CLI_STDIN_MAX ? TG_E_TOO_LARGE : 0;
}

static int cli_new(const char *id, const unsigned char *pepper, size_t pepper_len)
{
    char key[48], hash[TG_APIKEY_HASH_MAX], out[512];
    int rv = 1, n;

    if (tg_apikey_generate(key, sizeof(key)) != 0 ||
        tg_apikey_hash(key, strlen(key), pepper, pepper_len, hash) != 0) {
        fprintf(stderr, "tollgate: key new: cannot generate a key (OpenSSL error)\n");
        goto out;
    }
    /* id is [A-Za-z0-9._-] and hash is ASCII: nothing needs JSON escaping. */
    n = snprintf(
        out, sizeof(out),
        "%s\n{\"id\":\"%s\",\"hash\":\"%s\",\"principal\":\"%s\",\"policy\":\"default\"}\n", key,
        id, hash, id);
    if (n < 0 || (size_t)n >= sizeof(out)) {
        fprintf(stderr, "tollgate: key new: internal error\n");
        goto out;
    }
    if (write_all(1, out, (size_t)n) != 0) {
        fprintf(stderr, "tollgate: key new: cannot write to stdout: %s\n", strerror(errno));
        goto out;
    }
    fprintf(stderr,
            "tollgate: the key (line 1) is shown only once: store it now.  Before adding the\n"
            "entry (line 2) to the keys file, set its \"principal\" and \"policy\" (and\n"
            "\"tenant\" if needed); \"principal\" is the id and \"policy\" is \"default\" only\n"
            "as placeholders.\n");
    rv = 0;
out:
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(out, sizeof(out));
    return rv;
}

static int cli_hash(const unsigned char *pepper, size_t pepper_len)
{
    char buf[CLI_STDIN_MAX + 1], hash[TG_APIKEY_HASH_MAX + 1];
    size_t len = 0;
    int rv = 1, e;

    e = read_stdin(buf, &len);
    if (e == TG_E_TOO_LARGE) {
        fprintf(stderr, "tollgate: key hash: more than %d bytes on stdin\n", CLI_STDIN_MAX);
        goto out;
    } else if (e != 0) {
        fprintf(stderr, "tollgate: key hash: cannot read stdin: %s\n", strerror(errno));
        goto out;
    }
    /* One trailing newline (LF or CRLF), as `echo` or a text editor leaves it. */
    if (len > 0 && buf[len - 1] == '\n') {
        len--;
        if (len > 0 && buf[len - 1] == '\r')
            len--;
    }
    if (len == 0) {
        fprintf(stderr, "tollgate: key hash: no key on stdin\n");
        goto out;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c < 0x20 || c == 0x7f) {
            fprintf(stderr, "tollgate: key hash: the key contains a control character "
                            "(more than one trailing newline?)\n");
            goto out;
        }
    }
    e = tg_apikey_hash(buf, len, pepper, pepper_len, hash);
    if (e == TG_E_TOO_LARGE) {
        fprintf(stderr,
                "tollgate: key hash: the key is longer than %d bytes, which tollgate "
                "never accepts\n",
                TG_APIKEY_MAX_LEN);
        goto out;
    } else if (e != 0) {
        fprintf(stderr, "tollgate: key hash: cannot hash (OpenSSL error)\n");
        goto out;
    }
    size_t hl = strlen(hash);
    hash[hl++] = '\n';
    if (write_all(1, hash, hl) != 0) {
        fprintf(stderr, "tollgate: key hash: cannot write to stdout: %s\n", strerror(errno));
        goto out;
    }
    rv = 0;
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    return rv;
}

int tg_cli_key(int argc, char **argv)
{
    const char *cmd, *id = NULL, *cfgpath = NULL;
    struct tg_config *cfg = NULL;
    const unsigned char *pepper = NULL;
    size_t pepper_len = 0;
    int rv;

    if (argc < 2 || !argv[1]) {
        cli_usage(stderr);
        return 2;
    }
    cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0) {
        cli_usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "new") != 0 && strcmp(cmd, "hash") != 0) {
        fprintf(stderr, "tollgate: key: unknown command \"%s\"\n", cmd);
        cli_usage(stderr);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = NULL, *val = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            cli_usage(stdout);
            return 0;
        } else if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            dst = &cfgpath;
        } else if (strcmp(a, "--id") == 0 && strcmp(cmd, "new") == 0) {
            dst = &id;
        } else if (strncmp(a, "--id=", 5) == 0 && strcmp(cmd, "new") == 0) {
            dst = &id;
            val = a + 5;
        } else {
            fprintf(stderr, "tollgate: key %s: unknown argument \"%s\"\n", cmd, a);
            cli_usage(stderr);
            return 2;
        }
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "tollgate: key %s: %s needs a value\n", cmd, a);
                return 2;
            }
            val = argv[++i];
        }
        if (*dst) {
            fprintf(stderr, "tollgate: key %s: %s given twice\n", cmd, a);
            return 2;
        }
        *dst = val;
    }
    if (strcmp(cmd, "new") == 0) {
        if (!id) {
            fprintf(stderr, "tollgate: key new: --id ID is required\n");
            cli_usage(stderr);
            return 2;
        }
        if (!id_ok(id, strlen(id))) {
            fprintf(stderr,
                    "tollgate: key new: --id: expected 1 to %d characters from "
                    "A-Z a-z 0-9 . _ -\n",
                    ID_MAX);
            return 2;
        }
    }
    if (cfgpath) {
        char err[TG_CONFIG_ERR_MAX];
        if (!(cfg = tg_config_load(cfgpath, err))) {
            fprintf(stderr, "tollgate: %s\n", err);
            return 1;
        }
        pepper = cfg->auth.pepper;
        pepper_len = cfg->auth.pepper ? cfg->auth.pepper_len : 0;
    }
    rv = strcmp(cmd, "new") == 0 ? cli_new(id, pepper, pepper_len) : cli_hash(pepper, pepper_len);
    tg_config_unref(cfg);
    return rv;
}
