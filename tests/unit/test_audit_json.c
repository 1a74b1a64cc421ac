/*
 * test_audit_json.c - the audit record emitter (filters/audit_json.c) and
 * the request record it writes (emit_request in filters/audit.c, reached by
 * including the .c, STYLE §22).
 *
 * The oracle is jansson: for valid input the emitter must give the bytes of
 * json_dumps(JSON_COMPACT | JSON_REAL_PRECISION(15)), which is what the
 * writer produced before it had an emitter and what readers were shown.
 * Invalid UTF-8 (which jansson refuses) is checked against a table and for
 * being valid JSON afterwards.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tg_test.h"

#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filters/audit.c"

#define FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))

/* A fresh emitter with a generous ceiling. */
static struct tg_jw jw_new(void)
{
    return (struct tg_jw){.max = 1u << 20};
}

static void jw_free(struct tg_jw *j)
{
    tg_mem_free(j->base);
    *j = (struct tg_jw){0};
}

/* jansson's text for one value (the array brackets stripped). */
static char *jansson_text(json_t *v)
{
    json_t *a = json_array();
    assert_int_equal(json_array_append_new(a, v), 0);
    char *s = json_dumps(a, FLAGS | JSON_ENCODE_ANY);
    assert_non_null(s);
    json_decref(a);
    size_t n = strlen(s);
    memmove(s, s + 1, n - 2);
    s[n - 2] = '\0';
    return s;
}

static void assert_jw_eq(struct tg_jw *j, const char *want)
{
    assert_false(j->failed);
    if (j->len != strlen(want) || memcmp(j->base, want, j->len) != 0)
        fail_msg("emitted %.*s\n     want %s", (int)j->len, j->base, want);
}

/* ---- strings ---- */

static void test_strings_match_jansson(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "",
        "plain",
        "with \"quotes\"",
        "back\\slash",
        "\b\f\n\r\t",
        "\x01\x02\x1f",
        "\x7f",
        "a/b",
        "caf\xc3\xa9",
        "\xe2\x82\xac 5",
        "\xf0\x9d\x84\x9e",
        "\xef\xbf\xbd",
        "/v1/chat/completions",
        "mixed \x1b[31m \xe4\xb8\xad\xe6\x96\x87 \" \\ \x7f end",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tg_jw j = jw_new();
        tg_jw_str(&j, cases[i], strlen(cases[i]));
        char *want = jansson_text(json_string(cases[i]));
        assert_jw_eq(&j, want);
        free(want);
        jw_free(&j);
    }
    struct tg_jw j = jw_new();
    tg_jw_cstr(&j, NULL);
    assert_jw_eq(&j, "null");
    jw_free(&j);
}

static void test_invalid_utf8_is_repaired(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t len;
        const char *want;
    } cases[] = {
        {"\xff", 1, "\"\\ufffd\""},
        {"a\xc3", 2, "\"a\\ufffd\""},                     /* cut before its continuation */
        {"\xe2\x82", 2, "\"\\ufffd\\ufffd\""},            /* cut 3-byte sequence */
        {"\xc0\xaf", 2, "\"\\ufffd\\ufffd\""},            /* overlong '/' */
        {"\xe0\x80\xaf", 3, "\"\\ufffd\\ufffd\\ufffd\""}, /* overlong, 3 bytes */
        {"\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\""}, /* a surrogate */
        {"\xf4\x90\x80\x80", 4, "\"\\ufffd\\ufffd\\ufffd\\ufffd\""}, /* above U+10FFFF */
        {"\x80x", 2, "\"\\ufffdx\""},                                /* a lone continuation byte */
        {"ok\xc3\xa9\xfe\"", 6, "\"ok\xc3\xa9\\ufffd\\\"\""},
        {"nul\0in", 6, "\"nul\\u0000in\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tg_jw j = jw_new();
        tg_jw_str(&j, cases[i].in, cases[i].len);
        assert_jw_eq(&j, cases[i].want);
        /* and it is valid JSON, with a string value */
        json_error_t err;
        json_t *v = json_loadb(j.base, j.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
        if (!v)
            fail_msg("case %zu: not JSON: %s", i, err.text);
        assert_true(json_is_string(v));
        json_decref(v);
        jw_free(&j);
    }
}

/* ---- numbers ---- */

static void test_integers_match_jansson(void **state)
{
    (void)state;
    static const int64_t cases[] = {
        0, 1, -1, 9, 10, 42, 65535, 1000000, -123456789, INT64_MAX, INT64_MIN, INT64_MIN + 1};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tg_jw j = jw_new();
        tg_jw_int(&j, cases[i]);
        char *want = jansson_text(json_integer((json_int_t)cases[i]));
        assert_jw_eq(&j, want);
        free(want);
        jw_free(&j);
    }
}

static void test_reals_match_jansson(void **state)
{
    (void)state;
    static const double cases[] = {
        0.0,       -0.0,      1.0,     2.0,     10.0,    100.0,  1e15,
        1e16,      1e17,      1e21,    0.5,     0.1,     0.2,    1.35,
        41.7,      0.000316,  2.8e-05, 1e-4,    9.9e-5,  1e-7,   123456789.123456,
        1.0 / 3.0, 2.0 / 3.0, -2.5,    DBL_MAX, DBL_MIN, 5e-324, 1234567890123456789.0};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tg_jw j = jw_new();
        tg_jw_real(&j, cases[i]);
        char *want = jansson_text(json_real(cases[i]));
        assert_jw_eq(&j, want);
        free(want);
        jw_free(&j);
    }
    /* Not finite: jansson refuses it (the member would vanish); we write null. */
    struct tg_jw j = jw_new();
    tg_jw_real(&j, NAN);
    tg_jw_real(&j, INFINITY);
    assert_jw_eq(&j, "nullnull");
    jw_free(&j);
}

static void check_micro(uint64_t n)
{
    struct tg_jw j = jw_new();
    tg_jw_micro(&j, n);
    char *want = jansson_text(json_real((double)n / 1e6));
    if (j.len != strlen(want) || memcmp(j.base, want, j.len) != 0)
        fail_msg("n=%llu: emitted %.*s want %s", (unsigned long long)n, (int)j.len, j.base, want);
    free(want);
    jw_free(&j);
}

static void test_micro_matches_jansson(void **state)
{
    (void)state;
    static const uint64_t edges[] = {0,
                                     1,
                                     28,
                                     99,
                                     100,
                                     101,
                                     316,
                                     1000,
                                     999999,
                                     1000000,
                                     1000001,
                                     1350000,
                                     41700000,
                                     10000000,
                                     123456789012345,
                                     999999999999999,
                                     1000000000000000,
                                     1000000000000001,
                                     18446744073709551615ull};
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
        check_micro(edges[i]);
    /* Random values at every magnitude (xorshift, fixed seed). */
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        unsigned digits = 1 + (unsigned)(x % 17);
        uint64_t mod = 1;
        for (unsigned d = 0; d < digits; d++)
            mod *= 10;
        check_micro((x >> 3) % mod);
    }
}

/* ---- the request record ---- */

/* An event as request_event() would fill it, strings borrowed. */
struct ev_case {
    const char *str[EV_NSTR];
    const char *tls, *auth_method, *reason;
    int status, stream, port, proto;
    bool denied;
    uint64_t id, cfgv, in, out, total_ns, first_ns;
    bool first;
    struct tg_req_usage usage;
};

static struct req_event *make_event(const struct ev_case *c)
{
    static const char *protos[] = {"http/1.1", "h2", "h2c"};
    struct req_event *e = tg_mem_calloc(1, sizeof(*e));
    assert_non_null(e);
    for (int i = 0; i < EV_NSTR; i++)
        e->str[i] = c->str[i];
    e->lazy.emit = emit_request;
    e->lazy.build = build_request;
    e->lazy.free = free_event;
    e->tv.tv_sec = 1795642384; /* 2026-11-25T20:33:04Z */
    e->tv.tv_usec = 123456;
    e->id = c->id;
    e->config_version = c->cfgv;
    e->bytes_in = c->in;
    e->bytes_out = c->out;
    e->total_ns = c->total_ns;
    e->first_byte_ns = c->first_ns;
    e->has_first_byte = c->first;
    e->tls = c->tls;
    e->protocol = protos[c->proto];
    e->auth_method = c->auth_method;
    e->reason = c->reason;
    e->status = c->status;
    e->stream = c->stream;
    e->client_port = c->port;
    e->denied = c->denied;
    e->usage = c->usage;
    return e;
}

/* What format_one() made of a built record: type, ts, seq, the rest, prev. */
static char *jansson_line(json_t *rec, uint64_t seq, const char *prev)
{
    json_t *o = json_object();
    json_object_set(o, "type", json_object_get(rec, "type"));
    json_object_set(o, "ts", json_object_get(rec, "ts"));
    json_object_set_new(o, "seq", json_integer((json_int_t)seq));
    const char *k;
    json_t *v;
    json_object_foreach(rec, k, v)
    {
        if (strcmp(k, "type") && strcmp(k, "ts"))
            json_object_set(o, k, v);
    }
    json_object_set_new(o, "prev", json_string(prev));
    char *s = json_dumps(o, FLAGS);
    json_decref(o);
    return s;
}

static void test_request_record_matches_jansson(void **state)
{
    (void)state;
    const char *prev = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    static const struct ev_case cases[] = {
        /* an allowed chat request with usage, cost and a quota round trip */
        {.str = {"a30c1e123364013c0000000000000003", "127.0.0.1", "POST", "/v1/chat/completions",
                 "/v1/", "std-1", "team-a", "acme", "standard", "demo-model", "127.0.0.1:41675"},
         .auth_method = "api_key",
         .status = 200,
         .stream = 0,
         .port = 42068,
         .proto = 0,
         .id = 4,
         .cfgv = 1,
         .in = 106,
         .out = 288,
         .total_ns = 1350000,
         .first_ns = 1200000,
         .first = true,
         .usage = {.source = 1,
                   .prompt_tokens = 12,
                   .completion_tokens = 16,
                   .cost = 28,
                   .quota_ms = 0.21}},
        /* a passthrough GET over h2c: no auth block, no usage */
        {.str = {"x", "::1", "GET", "/v1/models", "/", NULL, NULL, NULL, NULL, NULL, "[::1]:8000"},
         .status = 200,
         .stream = -1,
         .port = 1,
         .proto = 2,
         .id = 1,
         .cfgv = 7,
         .in = 0,
         .out = 0,
         .total_ns = 87654,
         .first_ns = 50000,
         .first = true,
         .usage = {.source = 0, .quota_ms = -1}},
        /* a denial before routing: nulls everywhere, deny */
        {.str = {NULL, "203.0.113.7", "POST", "/x", NULL, NULL, NULL, NULL, NULL, NULL, NULL},
         .tls = "TLSv1.3",
         .reason = "audit.unavailable",
         .status = 503,
         .stream = -1,
         .port = 65535,
         .proto = 1,
         .denied = true,
         .id = 18446744073709551615ull,
         .cfgv = 2,
         .in = 0,
         .out = 120,
         .total_ns = 0,
         .usage = {.source = 0, .quota_ms = -1}},
        /* a JWT caller with null key_id and tenant, a cut stream, degraded, observed usage */
        {.str = {"req-\"quoted\"", "10.0.0.1", "POST", "/v1/chat/completions", "/v1/", NULL,
                 "user@example.com", NULL, "gold", "caf\xc3\xa9-model", "10.0.0.2:80"},
         .auth_method = "jwt",
         .reason = "stream.cut",
         .status = 200,
         .stream = 1,
         .port = 5,
         .proto = 1,
         .id = 99,
         .cfgv = 3,
         .in = 4096,
         .out = 123456789,
         .total_ns = 1834200000,
         .first_ns = 41700000,
         .first = true,
         .usage = {.source = 2,
                   .prompt_tokens = 812,
                   .completion_tokens = 256,
                   .cost = 316,
                   .degraded = true,
                   .quota_ms = 12.345678}},
        /* an integral total and cost, zero cost, no first byte */
        {.str = {"r", "127.0.0.1", "GET", "/a\tb", "/", "k", "p", "t", "pol", "m", NULL},
         .auth_method = "mtls",
         .reason = "upstream.timeout",
         .status = 504,
         .stream = 0,
         .port = 80,
         .proto = 0,
         .id = 2,
         .cfgv = 1,
         .total_ns = 5000000000,
         .first = false,
         .usage =
             {.source = 1, .prompt_tokens = 0, .completion_tokens = 0, .cost = 0, .quota_ms = 0}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct req_event *e = make_event(&cases[i]);
        uint64_t seq = 1000 + i;
        struct tg_jw j = jw_new();
        e->lazy.emit(&e->lazy, &j, seq);
        TG_JW_LIT(&j, ",\"prev\":\"");
        tg_jw_raw(&j, prev, 64);
        TG_JW_LIT(&j, "\"}");
        json_t *rec = e->lazy.build(&e->lazy);
        assert_non_null(rec);
        char *want = jansson_line(rec, seq, prev);
        if (j.failed || j.len != strlen(want) || memcmp(j.base, want, j.len) != 0)
            fail_msg("case %zu:\nemitted %.*s\n   want %s", i, (int)j.len, j.base, want);
        free(want);
        json_decref(rec);
        jw_free(&j);
        e->lazy.free(&e->lazy);
    }
}

/* ---- limits ---- */

static void test_ceiling_and_oom_are_sticky(void **state)
{
    (void)state;
    struct tg_jw j = {.max = 10};
    TG_JW_LIT(&j, "0123456789");
    assert_false(j.failed);
    tg_jw_raw(&j, "x", 1);
    assert_true(j.failed);
    assert_true(j.too_long);
    tg_jw_int(&j, 5);
    assert_int_equal(j.len, 10);
    jw_free(&j);

    /* A string needs room for its worst case (6 bytes per input byte). */
    j = (struct tg_jw){.max = 100};
    tg_jw_str(&j, "0123456789abcdefg", 17);
    assert_true(j.failed && j.too_long);
    jw_free(&j);

    for (unsigned long n = 1;; n++) {
        tg_test_failmalloc_arm(n);
        j = jw_new();
        tg_jw_str(&j, "hello", 5);
        TG_JW_LIT(&j, ",");
        tg_jw_real(&j, 1.5);
        bool injected = tg_test_failmalloc_failed();
        tg_test_failmalloc_disarm();
        if (injected) {
            assert_true(j.failed);
            assert_false(j.too_long);
        } else {
            assert_jw_eq(&j, "\"hello\",1.5");
        }
        jw_free(&j);
        if (!injected)
            break;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strings_match_jansson),
        cmocka_unit_test(test_invalid_utf8_is_repaired),
        cmocka_unit_test(test_integers_match_jansson),
        cmocka_unit_test(test_reals_match_jansson),
        cmocka_unit_test(test_micro_matches_jansson),
        cmocka_unit_test(test_request_record_matches_jansson),
        cmocka_unit_test(test_ceiling_and_oom_are_sticky),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
