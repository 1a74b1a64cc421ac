/*
 * test_apikey.c - the keys file, lookup, hashing and key generation
 * (filters/apikey.c).  Fixtures live in $TG_TEST_DATA/keys: the valid ones
 * are written by keys/make-keys.sh with the openssl command-line tool, so the
 * hashes they hold are computed independently of the code under test; every
 * invalid fixture is listed in bad_cases[] with the exact message it must
 * produce.  Variants of one field (times, ids, hashes) are written to
 * temporary files by the table-driven cases below.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tg_test.h"

#include "filters/apikey.h"
#include "proxy/err.h"
#include "proxy/mem.h"

#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PEPPER "test-pepper-0123456789abcdef" /* the pepper of make-keys.sh */
#define PLEN (sizeof(PEPPER) - 1)
#define ERRMAX 512

static char data_dir[PATH_MAX];
static char tmp_dir[PATH_MAX];

/* $TG_TEST_DATA, else tests/data next to this file. */
static void init_data_dir(void)
{
    const char *env = getenv("TG_TEST_DATA");
    if (env && *env) {
        if (snprintf(data_dir, sizeof(data_dir), "%s", env) >= (int)sizeof(data_dir))
            data_dir[0] = '\0';
        return;
    }
    const char *slash = strrchr(__FILE__, '/');
    int dl = slash ? (int)(slash - __FILE__) : 1;
    if (snprintf(data_dir, sizeof(data_dir), "%.*s/../data", dl, slash ? __FILE__ : ".") < 0)
        data_dir[0] = '\0';
}

static void data_path(char *out, size_t n, const char *rel)
{
    int k = snprintf(out, n, "%s/keys/%s", data_dir, rel);
    if (k < 0 || (size_t)k >= n)
        fail_msg("path too long: %s/keys/%s", data_dir, rel);
}

static struct tg_keyring *load(const char *rel, const char *pepper, char err[ERRMAX])
{
    char p[PATH_MAX];
    data_path(p, sizeof(p), rel);
    return tg_keyring_load(p, (const unsigned char *)pepper, pepper ? strlen(pepper) : 0, err,
                           ERRMAX);
}

static struct tg_keyring *load_ok(const char *rel, const char *pepper)
{
    char err[ERRMAX];
    struct tg_keyring *kr = load(rel, pepper, err);
    if (!kr)
        fail_msg("%s: unexpected error: %s", rel, err);
    return kr;
}

/* A string of n copies of c (static buffer, for over-long keys and fields). */
static const char *repeat(char c, size_t n)
{
    static char buf[1024];
    assert_true(n < sizeof(buf));
    memset(buf, c, n);
    buf[n] = '\0';
    return buf;
}

/* Write text to a new file in tmp_dir; the path goes to out. */
static void write_tmp(const char *text, char *out, size_t n)
{
    int k = snprintf(out, n, "%s/keys-XXXXXX", tmp_dir);
    assert_true(k > 0 && (size_t)k < n);
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static int group_setup(void **state)
{
    (void)state;
    init_data_dir();
    const char *t = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof(tmp_dir), "%s", t && *t ? t : "/tmp");
    return 0;
}

/* ---- valid files ---- */

static void test_load_valid(void **state)
{
    struct tg_keyring *kr = load_ok("valid.json", NULL);
    assert_int_equal(tg_keyring_count(kr), 8);

    const struct tg_apikey *a = tg_keyring_at(kr, 0);
    assert_string_equal(a->id, "alpha");
    assert_string_equal(a->principal, "team-a");
    assert_string_equal(a->tenant, "acme");
    assert_string_equal(a->policy, "standard");
    assert_int_equal(a->not_after_ms, 1798761600000LL); /* 2027-01-01T00:00:00Z */
    assert_false(a->disabled);

    const struct tg_apikey *b = tg_keyring_at(kr, 1);
    assert_string_equal(b->id, "beta");
    assert_null(b->tenant);
    assert_int_equal(b->not_after_ms, 0);

    assert_int_equal(tg_keyring_at(kr, 2)->not_after_ms, 1593518400250LL); /* .250Z */
    assert_true(tg_keyring_at(kr, 3)->disabled);

    const struct tg_apikey *o = tg_keyring_at(kr, 4); /* fields in another order, nulls */
    assert_string_equal(o->id, "offset");
    assert_null(o->tenant);
    assert_false(o->disabled);
    assert_int_equal(o->not_after_ms, 1893456000000LL); /* +00:00 */

    const struct tg_apikey *u = tg_keyring_at(kr, 7);
    assert_string_equal(u->id, "Unicode_1.x");
    assert_string_equal(u->principal, "\xc3\xa9quipe-\xc3\xbc \xe2\x9c\x93");
    assert_string_equal(u->tenant, "tenant with spaces");
    assert_int_equal(u->not_after_ms, 0);
    assert_false(u->disabled);

    assert_null(tg_keyring_at(kr, 8));
    tg_keyring_free(kr);

    kr = load_ok("valid-empty.json", NULL);
    assert_int_equal(tg_keyring_count(kr), 0);
    assert_null(tg_keyring_at(kr, 0));
    assert_int_equal(tg_keyring_lookup(kr, "tg_test_alpha", 13, 0, NULL), TG_APIKEY_UNKNOWN);
    tg_keyring_free(kr);

    /* A pepper is fine for a file without hmac entries. */
    kr = load_ok("valid.json", PEPPER);
    assert_int_equal(tg_keyring_count(kr), 8);
    tg_keyring_free(kr);

    tg_keyring_free(NULL);
    assert_int_equal(tg_keyring_count(NULL), 0);
    assert_null(tg_keyring_at(NULL, 0));
}

/* ---- lookup ---- */

#define T2026 1767225600000LL /* 2026-01-01T00:00:00Z */

struct lookup_case {
    const char *file;           /* fixture */
    const char *pepper;         /* or NULL */
    const char *key;            /* presented key (NULL: pass a NULL pointer) */
    size_t len;                 /* 0: strlen(key) unless zero_len */
    bool zero_len;              /* present an empty key */
    int64_t now_ms;             /* clock */
    enum tg_apikey_status want; /* expected status */
    const char *want_id;        /* id of *out, or NULL when nothing matched */
};

static void test_lookup(void **state)
{
    static char k256[257], k257[258];
    memset(k256, 'k', 256);
    memset(k257, 'k', 257);
    const struct lookup_case cases[] = {
        /* sha256 entries */
        {"valid.json", NULL, "tg_test_alpha", 0, false, T2026, TG_APIKEY_OK, "alpha"},
        {"valid.json", NULL, "tg_test_alpha", 0, false, 1798761600000LL, TG_APIKEY_OK, "alpha"},
        {"valid.json", NULL, "tg_test_alpha", 0, false, 1798761600001LL, TG_APIKEY_EXPIRED,
         "alpha"},
        {"valid.json", NULL, "tg_test_beta", 0, false, INT64_MAX, TG_APIKEY_OK, "beta"},
        {"valid.json", NULL, "tg_test_expired", 0, false, T2026, TG_APIKEY_EXPIRED, "expired"},
        {"valid.json", NULL, "tg_test_expired", 0, false, 1593518400250LL, TG_APIKEY_OK, "expired"},
        {"valid.json", NULL, "tg_test_expired", 0, false, 1593518400251LL, TG_APIKEY_EXPIRED,
         "expired"},
        {"valid.json", NULL, "tg_test_disabled", 0, false, T2026, TG_APIKEY_DISABLED, "disabled"},
        {"valid.json", NULL, "tg_test_offset", 0, false, 1893456000000LL, TG_APIKEY_OK, "offset"},
        {"valid.json", NULL, "tg_test_offset", 0, false, 1893456000001LL, TG_APIKEY_EXPIRED,
         "offset"},
        {"valid.json", NULL, "tg_test_unicode", 0, false, T2026, TG_APIKEY_OK, "Unicode_1.x"},
        {"valid.json", PEPPER, "tg_test_alpha", 0, false, T2026, TG_APIKEY_OK, "alpha"},
        /* length limits: 256 is accepted; 257 is refused although its hash is stored */
        {"valid.json", NULL, k256, 256, false, T2026, TG_APIKEY_OK, "max-len"},
        {"valid.json", NULL, k257, 257, false, T2026, TG_APIKEY_UNKNOWN, NULL},
        /* near misses */
        {"valid.json", NULL, "tg_test_alph", 0, false, T2026, TG_APIKEY_UNKNOWN, NULL},
        {"valid.json", NULL, "tg_test_alphA", 0, false, T2026, TG_APIKEY_UNKNOWN, NULL},
        {"valid.json", NULL, "tg_test_alpha\n", 0, false, T2026, TG_APIKEY_UNKNOWN, NULL},
        {"valid.json", NULL, "tg_test_alpha", 12, false, T2026, TG_APIKEY_UNKNOWN, NULL},
        {"valid.json", NULL, "", 0, true, T2026, TG_APIKEY_UNKNOWN, NULL},
        {"valid.json", NULL, NULL, 5, false, T2026, TG_APIKEY_UNKNOWN, NULL},
        /* sha256 and hmac-sha256 side by side */
        {"valid-hmac.json", PEPPER, "tg_test_sha", 0, false, T2026, TG_APIKEY_OK, "sha"},
        {"valid-hmac.json", PEPPER, "tg_test_mac", 0, false, T2026, TG_APIKEY_OK, "mac"},
        {"valid-hmac.json", PEPPER, "tg_test_mac_expired", 0, false, T2026, TG_APIKEY_EXPIRED,
         "mac-expired"},
        {"valid-hmac.json", PEPPER, "tg_test_mac_expired", 0, false, 1614834367000LL, TG_APIKEY_OK,
         "mac-expired"},
        {"valid-hmac.json", PEPPER, "tg_test_mac_disabled", 0, false, T2026, TG_APIKEY_DISABLED,
         "mac-disabled"},
        /* the same key stored both ways: the hmac entry wins */
        {"valid-hmac.json", PEPPER, "tg_test_both", 0, false, T2026, TG_APIKEY_OK, "both-mac"},
        {"valid-hmac.json", PEPPER, "tg_test_nope", 0, false, T2026, TG_APIKEY_UNKNOWN, NULL},
        /* another pepper: the hmac entries no longer match, the sha256 ones still do */
        {"valid-hmac.json", "another-pepper-0123456789", "tg_test_mac", 0, false, T2026,
         TG_APIKEY_UNKNOWN, NULL},
        {"valid-hmac.json", "another-pepper-0123456789", "tg_test_sha", 0, false, T2026,
         TG_APIKEY_OK, "sha"},
        {"valid-hmac.json", "another-pepper-0123456789", "tg_test_both", 0, false, T2026,
         TG_APIKEY_OK, "both-sha"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct lookup_case *c = &cases[i];
        struct tg_keyring *kr = load_ok(c->file, c->pepper);
        size_t len = c->zero_len ? 0 : c->len ? c->len : strlen(c->key);
        const struct tg_apikey *out = (const struct tg_apikey *)&out; /* must be overwritten */
        enum tg_apikey_status st = tg_keyring_lookup(kr, c->key, len, c->now_ms, &out);
        if (st != c->want)
            fail_msg("case %zu (%s, %.20s): status %d, want %d", i, c->file,
                     c->key ? c->key : "(null)", (int)st, (int)c->want);
        if (c->want_id) {
            assert_non_null(out);
            assert_string_equal(out->id, c->want_id);
        } else {
            assert_null(out);
        }
        /* out may be NULL */
        assert_int_equal(tg_keyring_lookup(kr, c->key, len, c->now_ms, NULL), c->want);
        tg_keyring_free(kr);
    }
    const struct tg_apikey *out = NULL;
    assert_int_equal(tg_keyring_lookup(NULL, "tg_test_alpha", 13, 0, &out), TG_APIKEY_UNKNOWN);
    assert_null(out);
}

/* ---- load errors ---- */

struct bad_case {
    const char *file;   /* fixture (a directory name is allowed) */
    const char *pepper; /* or NULL */
    const char *msg;    /* the exact message after "PATH: " */
};

#define HASH_MSG "expected \"sha256:\" or \"hmac-sha256:\" followed by 64 lowercase hex digits"
#define ID_MSG "expected 1 to 64 characters from A-Z a-z 0-9 . _ -"
#define TEXT_MSG "expected a string of 1 to 255 bytes without control characters"
#define TIME_MSG "expected an RFC 3339 UTC time such as \"2027-01-01T00:00:00Z\""

static const struct bad_case bad_cases[] = {
    {"bad-syntax.json", NULL, "line 3 column 16: string or '}' expected near '}'"},
    {"bad-dup-json-key.json", NULL, "line 1 column 26: duplicate object key near '\"id\"'"},
    {"bad-top-array.json", NULL, "expected a JSON object at the top level"},
    {"bad-no-keys.json", NULL, "keys: required key is missing"},
    {"bad-unknown-top.json", NULL, "version: unknown key"},
    {"bad-keys-type.json", NULL, "keys: expected an array"},
    {"bad-entry-type.json", NULL, "keys[1]: expected an object"},
    {"bad-unknown-field.json", NULL, "keys[1].key: unknown key"},
    {"bad-missing-id.json", NULL, "keys[0].id: required key is missing"},
    {"bad-missing-hash.json", NULL, "keys[1].hash: required key is missing"},
    {"bad-missing-principal.json", NULL, "keys[0].principal: required key is missing"},
    {"bad-missing-policy.json", NULL, "keys[0].policy: required key is missing"},
    {"bad-id-chars.json", NULL, "keys[0].id: " ID_MSG},
    {"bad-id-long.json", NULL, "keys[0].id: " ID_MSG},
    {"bad-id-null.json", NULL, "keys[0].id: " ID_MSG},
    {"bad-hash-prefix.json", NULL, "keys[2].hash: " HASH_MSG},
    {"bad-hash-upper.json", NULL, "keys[2].hash: " HASH_MSG},
    {"bad-hash-short.json", NULL, "keys[2].hash: " HASH_MSG},
    {"bad-hash-type.json", NULL, "keys[2].hash: " HASH_MSG},
    {"bad-hmac-no-pepper.json", NULL,
     "keys[1].hash: \"hmac-sha256:\" needs a pepper, and auth.api_key_pepper_env is not set"},
    {"bad-principal-control.json", NULL, "keys[0].principal: " TEXT_MSG},
    {"bad-principal-empty.json", NULL, "keys[0].principal: " TEXT_MSG},
    {"bad-tenant-long.json", NULL, "keys[0].tenant: " TEXT_MSG},
    {"bad-tenant-type.json", NULL, "keys[0].tenant: " TEXT_MSG},
    {"bad-policy-c1.json", NULL, "keys[0].policy: " TEXT_MSG},
    {"bad-not-after.json", NULL, "keys[0].not_after: " TIME_MSG},
    {"bad-not-after-type.json", NULL, "keys[0].not_after: " TIME_MSG},
    {"bad-not-after-epoch.json", NULL,
     "keys[0].not_after: expected a time after 1970-01-01T00:00:00Z"},
    {"bad-disabled-type.json", NULL, "keys[0].disabled: expected true or false"},
    {"bad-dup-id.json", NULL, "keys[2].id: duplicate id \"alpha\" (same as keys[0].id)"},
    {"bad-dup-hash.json", NULL, "keys[3].hash: duplicate hash (same as keys[1].hash)"},
    {"bad-dup-hash.json", PEPPER, "keys[3].hash: duplicate hash (same as keys[1].hash)"},
    {"no-such-file.json", NULL, "cannot open: No such file or directory"},
    {".", NULL, "not a regular file"},
};

static void test_bad_files(void **state)
{
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *c = &bad_cases[i];
        char err[ERRMAX], p[PATH_MAX], want[ERRMAX + PATH_MAX];
        memset(err, 'x', sizeof(err));
        struct tg_keyring *kr = load(c->file, c->pepper, err);
        data_path(p, sizeof(p), c->file);
        snprintf(want, sizeof(want), "%s: %s", p, c->msg);
        if (kr)
            fail_msg("%s: loaded, want error \"%s\"", c->file, c->msg);
        if (strcmp(err, want) != 0)
            fail_msg("%s:\n  got  \"%s\"\n  want \"%s\"", c->file, err, want);
    }
    /* No path, a tiny error buffer, no error buffer. */
    char err[ERRMAX], small[16];
    assert_null(tg_keyring_load(NULL, NULL, 0, err, sizeof(err)));
    assert_string_equal(err, "(no file): no keys file given");
    assert_null(tg_keyring_load("", NULL, 0, err, sizeof(err)));
    char p[PATH_MAX];
    data_path(p, sizeof(p), "bad-dup-id.json");
    assert_null(tg_keyring_load(p, NULL, 0, small, sizeof(small)));
    assert_int_equal(strlen(small), sizeof(small) - 1);
    assert_null(tg_keyring_load(p, NULL, 0, NULL, 0));
    assert_null(tg_keyring_load(p, NULL, 5, err, sizeof(err))); /* length without pepper */
}

/* One entry whose field `field` has the JSON value `json`, written to a temp file and loaded. */
static struct tg_keyring *load_variant(const char *field, const char *json, const char *pepper,
                                       char err[ERRMAX])
{
    char text[2048], p[PATH_MAX];
    const char *id = strcmp(field, "id") == 0 ? json : "\"a\"";
    const char *hash =
        strcmp(field, "hash") == 0
            ? json
            : "\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"";
    const char *principal = strcmp(field, "principal") == 0 ? json : "\"p\"";
    const char *extra_name = strcmp(field, "not_after") == 0 || strcmp(field, "tenant") == 0 ||
                                     strcmp(field, "disabled") == 0 || strcmp(field, "policy") == 0
                                 ? field
                                 : NULL;
    int n;
    if (extra_name && strcmp(field, "policy") == 0)
        n = snprintf(text, sizeof(text),
                     "{\"keys\":[{\"id\":%s,\"hash\":%s,\"principal\":%s,\"policy\":%s}]}", id,
                     hash, principal, json);
    else if (extra_name)
        n = snprintf(text, sizeof(text),
                     "{\"keys\":[{\"id\":%s,\"hash\":%s,\"principal\":%s,\"policy\":\"s\","
                     "\"%s\":%s}]}",
                     id, hash, principal, extra_name, json);
    else
        n = snprintf(text, sizeof(text),
                     "{\"keys\":[{\"id\":%s,\"hash\":%s,\"principal\":%s,\"policy\":\"s\"}]}", id,
                     hash, principal);
    assert_true(n > 0 && (size_t)n < sizeof(text));
    write_tmp(text, p, sizeof(p));
    struct tg_keyring *kr =
        tg_keyring_load(p, (const unsigned char *)pepper, pepper ? strlen(pepper) : 0, err, ERRMAX);
    unlink(p);
    return kr;
}

struct variant_case {
    const char *field; /* entry field */
    const char *json;  /* its JSON value */
    int64_t want_ms;   /* not_after: expected value when valid */
    const char *msg;   /* expected message after "keys[0].FIELD: ", or NULL when valid */
};

static void test_field_variants(void **state)
{
    const struct variant_case cases[] = {
        /* not_after: RFC 3339, UTC only */
        {"not_after", "\"2027-01-01T00:00:00Z\"", 1798761600000LL, NULL},
        {"not_after", "\"2027-01-01t00:00:00z\"", 1798761600000LL, NULL},
        {"not_after", "\"2027-01-01T00:00:00+00:00\"", 1798761600000LL, NULL},
        {"not_after", "\"2027-01-01T00:00:00.5Z\"", 1798761600500LL, NULL},
        {"not_after", "\"2027-01-01T00:00:00.12Z\"", 1798761600120LL, NULL},
        {"not_after", "\"2027-01-01T00:00:00.123456789Z\"", 1798761600123LL, NULL},
        {"not_after", "\"2027-01-01T00:00:00.999+00:00\"", 1798761600999LL, NULL},
        {"not_after", "\"2028-02-29T23:59:59Z\"", 1835481599000LL, NULL},
        {"not_after", "\"2000-02-29T00:00:00Z\"", 951782400000LL, NULL},
        {"not_after", "\"2016-12-31T23:59:60Z\"", 1483228800000LL, NULL}, /* leap second */
        {"not_after", "\"1970-01-01T00:00:00.001Z\"", 1, NULL},
        {"not_after", "\"9999-12-31T23:59:59Z\"", 253402300799000LL, NULL},
        {"not_after", "null", 0, NULL},
        {"not_after", "\"2027-01-01\"", 0, TIME_MSG},
        {"not_after", "\"2027-01-01T00:00:00\"", 0, TIME_MSG},
        {"not_after", "\"2027-01-01 00:00:00Z\"", 0, TIME_MSG},
        {"not_after", "\"2027-01-01T00:00:00+01:00\"", 0, TIME_MSG},
        {"not_after", "\"2027-01-01T00:00:00-00:00\"", 0, TIME_MSG},
        {"not_after", "\"2027-01-01T00:00:00+00:00Z\"", 0, TIME_MSG},
        {"not_after", "\"2027-01-01T00:00:00.Z\"", 0, TIME_MSG},
        {"not_after", "\"2027-01-01T00:00:00.1234567890Z\"", 0, TIME_MSG},
        {"not_after", "\"2027-13-01T00:00:00Z\"", 0, TIME_MSG},
        {"not_after", "\"2027-00-01T00:00:00Z\"", 0, TIME_MSG},
        {"not_after", "\"2027-02-29T00:00:00Z\"", 0, TIME_MSG},
        {"not_after", "\"2100-02-29T00:00:00Z\"", 0, TIME_MSG},
        {"not_after", "\"2027-04-31T00:00:00Z\"", 0, TIME_MSG},
        {"not_after", "\"2027-01-00T00:00:00Z\"", 0, TIME_MSG},
        {"not_after", "\"2027-01-01T24:00:00Z\"", 0, TIME_MSG},
        {"not_after", "\"2027-01-01T00:60:00Z\"", 0, TIME_MSG},
        {"not_after", "\"2027-01-01T00:00:61Z\"", 0, TIME_MSG},
        {"not_after", "\"+027-01-01T00:00:00Z\"", 0, TIME_MSG},
        {"not_after", "\"20270-01-01T00:00:00Z\"", 0, TIME_MSG},
        {"not_after", "\"2027-1-01T00:00:00Z\"", 0, TIME_MSG},
        {"not_after", "\"2027-01-01T00:00:00Z \"", 0, TIME_MSG},
        {"not_after", "\"\"", 0, TIME_MSG},
        {"not_after", "true", 0, TIME_MSG},
        {"not_after", "\"1969-12-31T23:59:59Z\"", 0, "expected a time after 1970-01-01T00:00:00Z"},
        {"not_after", "\"0000-01-01T00:00:00Z\"", 0, "expected a time after 1970-01-01T00:00:00Z"},
        /* id */
        {"id", "\"a\"", 0, NULL},
        {"id", "\"A-Z.a_z-0.9\"", 0, NULL},
        {"id", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"", 0, NULL},
        {"id", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"", 0, ID_MSG},
        {"id", "\"\"", 0, ID_MSG},
        {"id", "\"a/b\"", 0, ID_MSG},
        {"id", "\"a:b\"", 0, ID_MSG},
        {"id", "\"\\u00e9\"", 0, ID_MSG},
        {"id", "7", 0, ID_MSG},
        /* hash */
        {"hash", "\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"", 0,
         NULL},
        {"hash", "\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeF\"", 0,
         HASH_MSG},
        {"hash", "\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg\"", 0,
         HASH_MSG},
        {"hash", "\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0\"", 0,
         HASH_MSG},
        {"hash", "\"SHA256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"", 0,
         HASH_MSG},
        {"hash", "\"sha256 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"", 0,
         HASH_MSG},
        {"hash", "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"", 0,
         HASH_MSG},
        {"hash", "\"hmac-sha256:\"", 0, HASH_MSG},
        {"hash", "\"tg_plaintext_key\"", 0, HASH_MSG},
        {"hash", "null", 0, HASH_MSG},
        /* principal / tenant / policy */
        {"principal", "\"x\"", 0, NULL},
        {"principal", "\"tab\\tinside\"", 0, TEXT_MSG},
        {"principal", "\"del\\u007f\"", 0, TEXT_MSG},
        {"principal", "\"nl\\n\"", 0, TEXT_MSG},
        {"principal", "null", 0, TEXT_MSG},
        {"principal", "[\"x\"]", 0, TEXT_MSG},
        {"tenant", "\"acme\"", 0, NULL},
        {"tenant", "null", 0, NULL},
        {"tenant", "\"\"", 0, TEXT_MSG},
        {"policy", "\"\\u00a0nbsp is printable\"", 0, NULL},
        {"policy", "\"c1\\u009f\"", 0, TEXT_MSG},
        {"policy", "null", 0, TEXT_MSG},
        /* disabled */
        {"disabled", "true", 0, NULL},
        {"disabled", "false", 0, NULL},
        {"disabled", "null", 0, NULL},
        {"disabled", "0", 0, "expected true or false"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct variant_case *c = &cases[i];
        char err[ERRMAX];
        struct tg_keyring *kr = load_variant(c->field, c->json, NULL, err);
        if (!c->msg) {
            if (!kr)
                fail_msg("case %zu: %s = %s: unexpected error %s", i, c->field, c->json, err);
            if (strcmp(c->field, "not_after") == 0 &&
                tg_keyring_at(kr, 0)->not_after_ms != c->want_ms)
                fail_msg("case %zu: %s: %lld ms, want %lld", i, c->json,
                         (long long)tg_keyring_at(kr, 0)->not_after_ms, (long long)c->want_ms);
            tg_keyring_free(kr);
            continue;
        }
        if (kr)
            fail_msg("case %zu: %s = %s: loaded, want \"%s\"", i, c->field, c->json, c->msg);
        char tail[ERRMAX];
        snprintf(tail, sizeof(tail), ": keys[0].%s: %s", c->field, c->msg);
        size_t el = strlen(err), tl = strlen(tail);
        if (el < tl || strcmp(err + el - tl, tail) != 0)
            fail_msg("case %zu: %s = %s:\n  got  \"%s\"\n  want \"...%s\"", i, c->field, c->json,
                     err, tail);
    }
    /* The longest principal is 255 bytes. */
    char json[1100], err[ERRMAX];
    snprintf(json, sizeof(json), "\"%s\"", repeat('p', 255));
    struct tg_keyring *kr = load_variant("principal", json, NULL, err);
    assert_non_null(kr);
    assert_int_equal(strlen(tg_keyring_at(kr, 0)->principal), 255);
    tg_keyring_free(kr);
    snprintf(json, sizeof(json), "\"%s\"", repeat('p', 256));
    assert_null(load_variant("principal", json, NULL, err));
    /* An hmac entry loads with a pepper. */
    kr = load_variant(
        "hash", "\"hmac-sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"",
        PEPPER, err);
    assert_non_null(kr);
    tg_keyring_free(kr);
}

/* ---- hashing and generation ---- */

struct hash_case {
    const char *key;    /* input */
    size_t len;         /* 0: strlen(key) */
    const char *pepper; /* or NULL */
    const char *want;   /* from the openssl CLI (or the cited standard) */
};

static void test_hash_vectors(void **state)
{
    static char k256[257];
    memset(k256, 'k', 256);
    const struct hash_case cases[] = {
        /* FIPS 180-2 appendix B.1 */
        {"abc", 0, NULL, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        /* RFC 4231 test case 2 */
        {"what do ya want for nothing?", 0, "Jefe",
         "hmac-sha256:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
        /* printf %s KEY | openssl dgst -sha256 [-hmac PEPPER] */
        {"KEY", 0, NULL, "sha256:5ca24005b740717ba4f3f6bc48a230700e68c2a4b11ecedb96f169f4efaf1f21"},
        {"KEY", 0, PEPPER,
         "hmac-sha256:cb47841613dcb2750523483c8708a1bfa8f4690a29c1310f20796e45094f0f99"},
        {"abc", 0, PEPPER,
         "hmac-sha256:5c6d65c780f13795c3cecc19eb3bac6f360ffcffb837fa80e98c46c2a6ea110a"},
        {"tg_test_alpha", 0, NULL,
         "sha256:ab46ecc6ae416fa57272283777395343a32ec9746b36b6dc916f240889955e0a"},
        {"tg_test_alpha", 0, "x",
         "hmac-sha256:1198f3bc7d3ad1046f76b37b2dd4f066480ee47d0a377c9762539bf9931348a7"},
        {"tg_test_mac", 0, PEPPER,
         "hmac-sha256:05eee43827e619dbfeff7c8e8fc4a2e2c12fbfeedf3bc79669e8daeda0e16d6b"},
        /* printf 'a\0b' | openssl dgst -sha256: the length, not a NUL, ends the key */
        {"a\0b", 3, NULL,
         "sha256:59b271ae1bbcb1d31d41929817f4b16fb439eb4f31520b5ad1d5ce98920a7138"},
        {k256, 256, NULL,
         "sha256:ce16fe78208a4e93f7158e62393680e025b2ad584f4e875ce903a654bb74cf93"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct hash_case *c = &cases[i];
        char out[TG_APIKEY_HASH_MAX];
        memset(out, 'x', sizeof(out));
        size_t len = c->len ? c->len : strlen(c->key);
        assert_int_equal(tg_apikey_hash(c->key, len, (const unsigned char *)c->pepper,
                                        c->pepper ? strlen(c->pepper) : 0, out),
                         0);
        assert_string_equal(out, c->want);
    }
    char out[TG_APIKEY_HASH_MAX], k257[258];
    memset(k257, 'k', 257);
    assert_int_equal(tg_apikey_hash(k257, 257, NULL, 0, out), TG_E_TOO_LARGE);
    assert_int_equal(tg_apikey_hash("", 0, NULL, 0, out), TG_E_INVALID);
    assert_int_equal(tg_apikey_hash(NULL, 3, NULL, 0, out), TG_E_INVALID);
    assert_int_equal(tg_apikey_hash("KEY", 3, NULL, 4, out), TG_E_INVALID);
    /* A pepper pointer with length 0 means no pepper. */
    assert_int_equal(tg_apikey_hash("KEY", 3, (const unsigned char *)PEPPER, 0, out), 0);
    assert_string_equal(out,
                        "sha256:5ca24005b740717ba4f3f6bc48a230700e68c2a4b11ecedb96f169f4efaf1f21");
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_generate(void **state)
{
    enum { N = 1000 };
    static char keys[N][48];
    static char *sorted[N];
    for (size_t i = 0; i < N; i++) {
        memset(keys[i], 'x', sizeof(keys[i]));
        assert_int_equal(tg_apikey_generate(keys[i], sizeof(keys[i])), 0);
        assert_int_equal(strlen(keys[i]), 46);
        assert_memory_equal(keys[i], TG_APIKEY_PREFIX, 3);
        for (size_t j = 3; j < 46; j++) {
            char c = keys[i][j];
            if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_'))
                fail_msg("key %zu: character %zu is '%c'", i, j, c);
        }
        sorted[i] = keys[i];
    }
    qsort(sorted, N, sizeof(sorted[0]), cmp_str);
    for (size_t i = 1; i < N; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            fail_msg("duplicate key %s", sorted[i]);
    /*
     * 43 base64url characters carry 258 bits: the last one only 4 bits of
     * data (32 bytes = 256 bits), so it is one of the 16 characters whose low
     * 2 bits are zero.  Anything else would mean a wrong encoding.
     */
    for (size_t i = 0; i < N; i++)
        assert_non_null(strchr("AEIMQUYcgkosw048", keys[i][45]));

    char small[48];
    assert_int_equal(tg_apikey_generate(small, 47), TG_E_INVALID);
    assert_int_equal(tg_apikey_generate(NULL, 48), TG_E_INVALID);
    assert_int_equal(tg_apikey_generate(small, sizeof(small)), 0);

    /* A generated key round-trips through hash + load + lookup. */
    char hash[TG_APIKEY_HASH_MAX], text[512], p[PATH_MAX], err[ERRMAX];
    assert_int_equal(tg_apikey_hash(small, strlen(small), NULL, 0, hash), 0);
    snprintf(text, sizeof(text),
             "{\"keys\":[{\"id\":\"g\",\"hash\":\"%s\",\"principal\":\"p\",\"policy\":\"s\"}]}",
             hash);
    write_tmp(text, p, sizeof(p));
    struct tg_keyring *kr = tg_keyring_load(p, NULL, 0, err, sizeof(err));
    unlink(p);
    assert_non_null(kr);
    assert_int_equal(tg_keyring_lookup(kr, small, strlen(small), T2026, NULL), TG_APIKEY_OK);
    tg_keyring_free(kr);
}

/* Many keys, both schemes: the index finds every one and nothing else. */
static void test_many_keys(void **state)
{
    enum { N = 3000 };
    static char keys[N][48];
    size_t cap = (size_t)N * 200 + 64, o = 0;
    char *text = malloc(cap), p[PATH_MAX], err[ERRMAX];
    assert_non_null(text);
    o += (size_t)snprintf(text + o, cap - o, "{\"keys\":[");
    for (size_t i = 0; i < N; i++) {
        char hash[TG_APIKEY_HASH_MAX];
        assert_int_equal(tg_apikey_generate(keys[i], sizeof(keys[i])), 0);
        assert_int_equal(
            tg_apikey_hash(keys[i], 46, (const unsigned char *)PEPPER, i % 2 ? PLEN : 0, hash), 0);
        o += (size_t)snprintf(text + o, cap - o,
                              "%s{\"id\":\"k%zu\",\"hash\":\"%s\",\"principal\":\"p\","
                              "\"policy\":\"s\"}",
                              i ? "," : "", i, hash);
        assert_true(o < cap);
    }
    o += (size_t)snprintf(text + o, cap - o, "]}");
    assert_true(o < cap);
    write_tmp(text, p, sizeof(p));
    free(text);
    struct tg_keyring *kr =
        tg_keyring_load(p, (const unsigned char *)PEPPER, PLEN, err, sizeof(err));
    unlink(p);
    if (!kr)
        fail_msg("%s", err);
    assert_int_equal(tg_keyring_count(kr), N);
    for (size_t i = 0; i < N; i++) {
        const struct tg_apikey *k = NULL;
        char want[16];
        assert_int_equal(tg_keyring_lookup(kr, keys[i], 46, T2026, &k), TG_APIKEY_OK);
        snprintf(want, sizeof(want), "k%zu", i);
        assert_string_equal(k->id, want);
    }
    for (size_t i = 0; i < N; i++) {
        char other[48];
        assert_int_equal(tg_apikey_generate(other, sizeof(other)), 0);
        assert_int_equal(tg_keyring_lookup(kr, other, 46, T2026, NULL), TG_APIKEY_UNKNOWN);
    }
    tg_keyring_free(kr);
}

/* ---- failmalloc: fail the Nth allocation, for every N ---- */


/*
 * Load rel with allocation N failing, for N = 1, 2, ... until a run sees no
 * injected failure.  A failed run returns NULL with a message and leaks
 * nothing (ASan's leak check at exit); the clean run must give the expected
 * result.  Returns the number of allocations of the clean run.
 */
static unsigned long failmalloc_run(const char *rel, const char *pepper, const char *final_err)
{
    char err[ERRMAX];
    /* jansson allocates through tg_mem too, so its failures are covered. */
    json_set_alloc_funcs(tg_mem_malloc, tg_mem_free);
    for (unsigned long n = 1;; n++) {
        err[0] = '\0';
        tg_test_failmalloc_arm(n);
        struct tg_keyring *kr = load(rel, pepper, err);
        /* A loaded keyring must also be usable and freeable under the hooks. */
        if (kr)
            (void)tg_keyring_lookup(kr, "tg_test_alpha", 13, T2026, NULL);
        tg_keyring_free(kr);
        tg_test_failmalloc_disarm();
        if (!tg_test_failmalloc_failed()) {
            json_set_alloc_funcs(malloc, free);
            if (final_err) {
                assert_null(kr);
                if (!strstr(err, final_err))
                    fail_msg("%s: got \"%s\", want \"%s\"", rel, err, final_err);
            } else if (!kr) {
                fail_msg("%s: clean run failed: %s", rel, err);
            }
            return n - 1;
        }
        if (kr)
            fail_msg("%s: allocation %lu failed but the load succeeded", rel, n);
        if (err[0] == '\0')
            fail_msg("%s: allocation %lu failed without a message", rel, n);
    }
}

static void test_failmalloc(void **state)
{
    unsigned long n = failmalloc_run("valid.json", NULL, NULL);
    print_message("valid.json: %lu allocations, each failed once\n", n);
    assert_true(n > 20);
    n = failmalloc_run("valid-hmac.json", PEPPER, NULL);
    print_message("valid-hmac.json: %lu allocations, each failed once\n", n);
    assert_true(n > 20);
    failmalloc_run("bad-dup-hash.json", NULL, "keys[3].hash: duplicate hash");
    failmalloc_run("bad-syntax.json", NULL, "line 3 column 16");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_valid),   cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_bad_files),    cmocka_unit_test(test_field_variants),
        cmocka_unit_test(test_hash_vectors), cmocka_unit_test(test_generate),
        cmocka_unit_test(test_many_keys),    cmocka_unit_test(test_failmalloc),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
