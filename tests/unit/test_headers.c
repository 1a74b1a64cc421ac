/*
 * test_headers.c - header syntax checks and token helpers (proxy/headers.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "proxy/buf.h"
#include "proxy/headers.h"

/* A row: input bytes (length given so NUL and high bytes are testable) and the answer. */
struct row {
    const char *in; /* input bytes */
    size_t len;     /* input length */
    bool want;      /* expected predicate result */
};

/* clang-format off */
#define ROW(s, w) {(s), sizeof(s) - 1, (w)}
/* clang-format on */

typedef bool pred_fn(struct tg_iov);

static void run_rows(const char *what, pred_fn *fn, const struct row *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        /* Exact-size heap copy, so ASan sees any read past the range. */
        char *p = test_malloc(rows[i].len ? rows[i].len : 1);
        memcpy(p, rows[i].in, rows[i].len);
        bool got = fn(tg_iov_make(p, rows[i].len));
        test_free(p);
        if (got != rows[i].want)
            fail_msg("%s(\"%s\") = %d, want %d", what, rows[i].in, got, rows[i].want);
    }
}

#define RUN(fn, rows) run_rows(#fn, fn, rows, sizeof(rows) / sizeof(rows[0]))

static void test_name_valid(void **state)
{
    static const struct row rows[] = {
        ROW("host", true),
        ROW("Content-Length", true),
        ROW("x-a_b.c~d!#$%&'*+^`|", true),
        ROW("0", true),
        ROW("", false),
        ROW("X A", false),
        ROW("x-a ", false),
        ROW(" x", false),
        ROW("a:b", false),
        ROW("a\tb", false),
        ROW("a\0b", false),
        ROW("a\"b", false),
        ROW("a(b)", false),
        ROW("a/b", false),
        ROW("a\x7f", false),
        ROW("a\x80", false),
        ROW("a\r\nb", false),
    };
    static const struct row lower_rows[] = {
        ROW("host", true), ROW("x-request-id", true), ROW("Host", false), ROW("x-A", false),
        ROW("", false),    ROW("a b", false),
    };
    RUN(tg_header_name_valid, rows);
    RUN(tg_header_name_valid_lower, lower_rows);
}

static void test_value_valid(void **state)
{
    static const struct row rows[] = {
        ROW("", true),
        ROW("a", true),
        ROW("a b\tc", true),
        ROW("text/plain; charset=\"utf-8\"", true),
        ROW("caf\xc3\xa9", true), /* obs-text */
        ROW("\xff", true),
        ROW(" a", false),
        ROW("a ", false),
        ROW("\ta", false),
        ROW("a\t", false),
        ROW(" ", false),
        ROW("a\rb", false),
        ROW("a\nb", false),
        ROW("a\r\n b", false),
        ROW("a\0b", false),
        ROW("a\x01", false),
        ROW("a\x1f", false),
        ROW("a\x7f", false),
        ROW("a\x0b", false), /* vtab */
    };
    RUN(tg_header_value_valid, rows);
}

static void test_method_target(void **state)
{
    static const struct row methods[] = {
        ROW("GET", true),   ROW("POST", true),  ROW("M-SEARCH", true),
        ROW("get", true),   ROW("", false),     ROW("GE T", false),
        ROW("GET/", false), ROW("G\0T", false), ROW("GET\r", false),
    };
    static const struct row targets[] = {
        ROW("/", true),
        ROW("/v1/chat/completions?x=1&y=%20", true),
        ROW("/a#frag", true),
        ROW("*", true),
        ROW("//a", true),
        ROW("", false),
        ROW("a", false),
        ROW("**", false),
        ROW("http://example.com/", false), /* absolute-form */
        ROW("example.com:443", false),     /* authority-form */
        ROW("/a b", false),
        ROW("/a\tb", false),
        ROW("/a\x7f", false),
        ROW("/\x80", false),
        ROW("/a\0", false),
        ROW("/a\r", false),
    };
    RUN(tg_method_valid, methods);
    RUN(tg_target_valid, targets);
}

static void test_authority(void **state)
{
    static const struct row rows[] = {
        ROW("example.com", true),
        ROW("example.com:8080", true),
        ROW("EXAMPLE.com:1", true),
        ROW("a", true),
        ROW("127.0.0.1", true),
        ROW("127.0.0.1:65535", true),
        ROW("my_host-1.local~x", true),
        ROW("%41bc", true),
        ROW("[::1]", true),
        ROW("[::1]:443", true),
        ROW("[2001:db8::1]", true),
        ROW("[::ffff:1.2.3.4]:80", true),
        ROW("", false),
        ROW(":80", false),
        ROW("a:", false),
        ROW("a:65536", false),
        ROW("a:123456", false),
        ROW("a:8x", false),
        ROW("a:-1", false),
        ROW("a:1:2", false),
        ROW("a b", false),
        ROW("a/b", false),
        ROW("a@b", false),
        ROW("user@a", false),
        ROW("a,b", false),
        ROW("a;b", false),
        ROW("%4", false),
        ROW("%zz", false),
        ROW("a\0", false),
        ROW("a\r\nX-Injected: 1", false),
        ROW("[::1", false),
        ROW("::1", false),
        ROW("[]", false),
        ROW("[::1]x", false),
        ROW("[::1]:", false),
        ROW("[::g]", false),
        ROW("[fe80::1%25eth0]", false),
        ROW("[v1.x]", false),
        ROW("[1.2.3.4]", false),
    };
    RUN(tg_authority_valid, rows);
    /* 255 bytes of host are fine, 256 are not. */
    char big[257];
    memset(big, 'a', sizeof(big));
    assert_true(tg_authority_valid(tg_iov_make(big, 255)));
    assert_false(tg_authority_valid(tg_iov_make(big, 256)));
}

static void test_hop_by_hop(void **state)
{
    static const struct row rows[] = {
        ROW("connection", true),
        ROW("Connection", true),
        ROW("KEEP-ALIVE", true),
        ROW("proxy-connection", true),
        ROW("Transfer-Encoding", true),
        ROW("te", true),
        ROW("upgrade", true),
        ROW("trailer", true),
        ROW("proxy-authenticate", true),
        ROW("Proxy-Authorization", true),
        ROW("http2-settings", true),
        ROW("Host", true),
        ROW("content-length", false),
        ROW("authorization", false),
        ROW("tea", false),
        ROW("t", false),
        ROW("", false),
        ROW("connection ", false),
    };
    RUN(tg_header_is_hop_by_hop, rows);
}

static void test_token_list(void **state)
{
    static const struct {
        const char *list; /* the list value */
        const char *name; /* token looked for */
        bool want;        /* expected */
    } rows[] = {
        {"close", "close", true},
        {"Close", "close", true},
        {"keep-alive, close", "close", true},
        {"keep-alive ,close", "close", true},
        {"  close  ", "close", true},
        {",,close,,", "close", true},
        {"foo,\tCLOSE\t, bar", "close", true},
        {"keep-alive", "close", false},
        {"closed", "close", false},
        {"xclose", "close", false},
        {"clo se", "close", false},
        {"", "close", false},
        {",", "close", false},
        {"upgrade", "upgrade", true},
        {"Upgrade, HTTP2-Settings", "http2-settings", true},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        size_t n = strlen(rows[i].list);
        char *p = test_malloc(n ? n : 1);
        memcpy(p, rows[i].list, n);
        bool got =
            tg_token_list_has(tg_iov_make(p, n), tg_iov_make(rows[i].name, strlen(rows[i].name)));
        test_free(p);
        if (got != rows[i].want)
            fail_msg("tg_token_list_has(\"%s\", \"%s\") = %d", rows[i].list, rows[i].name, got);
    }
}

static void test_request_id(void **state)
{
    static const struct row rows[] = {
        ROW("a", true),
        ROW("req-123_abc.def:ghi", true),
        ROW("01J8ZQ6X4Y0000000000000000", true),
        ROW("", false),
        ROW("a b", false),
        ROW("a/b", false),
        ROW("a\r\nb", false),
        ROW("\xc3\xa9", false),
    };
    RUN(tg_request_id_sane, rows);
    char id[129];
    memset(id, 'x', sizeof(id));
    assert_true(tg_request_id_sane(tg_iov_make(id, 128)));
    assert_false(tg_request_id_sane(tg_iov_make(id, 129)));
}

static void test_lowercase(void **state)
{
    char out[32];
    char buf[] = "Content-TYPE: X-Y_z 0@[`{";

    tg_lowercase(out, "HeLLo-World", 11);
    assert_memory_equal(out, "hello-world", 11);
    /* In place (dst == src); non-letters, including '@' '[' '`' '{', unchanged. */
    tg_lowercase(buf, buf, strlen(buf));
    assert_string_equal(buf, "content-type: x-y_z 0@[`{");
    tg_lowercase(out, "\xc3\x89", 2); /* bytes >= 0x80 untouched */
    assert_memory_equal(out, "\xc3\x89", 2);
}

static void test_path_is_normal(void **state)
{
    (void)state;
    static const struct {
        const char *path;
        bool normal;
    } cases[] = {
        {"/", true},
        {"/v1/chat/completions", true},
        {"/v1/x?a=../b", true},       /* the query is not part of the path */
        {"/v1/.well-known/x", true},  /* a dot that starts a name is fine */
        {"/v1/a..b", true},
        {"/v1/..x", true},
        {"/v1/%41", true},
        {"/v1/../admin", false},
        {"/v1/./x", false},
        {"/v1/..", false},
        {"/v1/.", false},
        {"/v1/%2e%2e/admin", false},
        {"/v1/%2E./admin", false},
        {"/v1%2fadmin", false},
        {"/v1%2Fadmin", false},
        {"/v1/a%5cb", false},
        {"/v1\\..\\admin", false},
        {"/v1/x/..?q", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tg_iov v = {cases[i].path, strlen(cases[i].path)};
        if (tg_path_is_normal(v) != cases[i].normal)
            fail_msg("%s: expected %s", cases[i].path, cases[i].normal ? "normal" : "refused");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_is_normal),
        cmocka_unit_test(test_name_valid),    cmocka_unit_test(test_value_valid),
        cmocka_unit_test(test_method_target), cmocka_unit_test(test_authority),
        cmocka_unit_test(test_hop_by_hop),    cmocka_unit_test(test_token_list),
        cmocka_unit_test(test_request_id),    cmocka_unit_test(test_lowercase),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
