/*
 * test_h1parse.c - strict request-head parser and chunked decoder
 * (proxy/h1parse.c), including every row of the THREATS §2.3 probe matrix.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "proxy/buf.h"
#include "proxy/h1parse.h"

#define MAX_HEAD 8192

/*
 * Parse from an exact-size heap copy, so ASan catches any read past len.  The
 * copy stays alive (the head's ranges point into it) until the next parse or
 * the end of the test.
 */
static char *last_copy;

static void parse_release(void)
{
    free(last_copy);
    last_copy = NULL;
}

static ssize_t parse(const char *in, size_t len, size_t max, struct tg_h1_head *h)
{
    parse_release();
    last_copy = malloc(len ? len : 1);
    assert_non_null(last_copy);
    memcpy(last_copy, in, len);
    return tg_h1_parse_head(last_copy, len, max, h);
}

static int teardown(void **state)
{
    parse_release();
    return 0;
}

/* ---- request heads ---- */

struct head_case {
    const char *name; /* what the case probes (THREATS §2.3 row when "M:") */
    const char *in;   /* the bytes */
    size_t len;       /* their length */
    int status;       /* 0: accepted as a whole head; else the expected error status */
};

/* clang-format off */
#define ACCEPT(n, s) {(n), (s), sizeof(s) - 1, 0}
#define REJECT(n, s, st) {(n), (s), sizeof(s) - 1, (st)}
/* clang-format on */

static const struct head_case head_cases[] = {
    /* THREATS §2.3 probe matrix, every request-head row. */
    REJECT("M: CL then TE",
           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
           "Transfer-Encoding: chunked\r\n\r\n",
           400),
    REJECT("M: TE then CL",
           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
           "Content-Length: 3\r\n\r\n",
           400),
    REJECT("M: duplicate CL same",
           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
           "Content-Length: 3\r\n\r\n",
           400),
    REJECT("M: duplicate CL different",
           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
           "Content-Length: 4\r\n\r\n",
           400),
    REJECT("M: CL list 3, 3", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", 400),
    REJECT("M: CL +3", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", 400),
    REJECT("M: CL space colon", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\n", 400),
    REJECT("M: TE space colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
           400),
    REJECT("M: TE identity, chunked",
           "POST / HTTP/1.1\r\nHost: a\r\n"
           "Transfer-Encoding: identity, chunked\r\n\r\n",
           400),
    ACCEPT("M: TE HTAB chunked",
           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n"),
    REJECT("M: TE obs-fold chunked",
           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n"
           " chunked\r\n\r\n",
           400),
    REJECT("M: generic obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400),
    REJECT("M: bare-LF headers", "GET / HTTP/1.1\nHost: a\n\n", 400),
    REJECT("M: bare-LF one header", "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    REJECT("M: bare-LF end of head", "GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    REJECT("M: bare CR line end", "GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
    REJECT("M: CR in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
    REJECT("M: NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", 400),
    REJECT("M: \\r\\n\\rX after headers", "GET / HTTP/1.1\r\nHost: a\r\n\rX", 400),
    REJECT("M: \\r\\n\\rX then more", "GET / HTTP/1.1\r\nHost: a\r\n\rXGET / HTTP/1.1\r\n\r\n",
           400),
    REJECT("M: HTTP/1.0 + TE chunked", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
           400),
    REJECT("M: no Host", "GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
    REJECT("M: two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    REJECT("M: space in name", "GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", 400),
    REJECT("M: SP before first header", "GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    REJECT("M: HTAB before first header", "GET / HTTP/1.1\r\n\tHost: a\r\n\r\n", 400),
    REJECT("M: double SP request line", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),

    /* Valid requests. */
    ACCEPT("GET", "GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ACCEPT("GET query", "GET /v1/models?x=1&y=%20 HTTP/1.1\r\nHost: api.example.com:8443\r\n"
                        "Accept: */*\r\nUser-Agent: curl/8.0\r\n\r\n"),
    ACCEPT("POST CL", "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
                      "Content-Type: application/json\r\nContent-Length: 17\r\n\r\n"),
    ACCEPT("POST CL 0", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
    ACCEPT("POST chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ACCEPT("chunked case", "POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: ChUnKeD\r\n\r\n"),
    ACCEPT("chunked OWS", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  chunked \r\n\r\n"),
    ACCEPT("CL OWS", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\t 3  \r\n\r\n"),
    /*
     * Valid OWS that llhttp 8.1 misreads: it does not see "chunked<HTAB>" as
     * chunked, and refuses "3<HTAB>" as a Content-Length.  The second opinion
     * turns both into a 400, which is safe.
     */
    REJECT("chunked HTAB (llhttp)",
           "POST / HTTP/1.1\r\nHost: a\r\n"
           "Transfer-Encoding: chunked\t\r\n\r\n",
           400),
    REJECT("CL HTAB (llhttp)", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\t\r\n\r\n", 400),
    ACCEPT("HTTP/1.0 no Host", "GET / HTTP/1.0\r\n\r\n"),
    ACCEPT("HTTP/1.0 with Host", "GET / HTTP/1.0\r\nHost: a\r\n\r\n"),
    ACCEPT("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
    ACCEPT("IPv6 Host", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"),
    ACCEPT("empty value", "GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Sp:   \r\n\r\n"),
    ACCEPT("obs-text value", "GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n"),
    ACCEPT("19-digit CL",
           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999999\r\n\r\n"),
    ACCEPT("CL leading zeros", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n"),
    ACCEPT("Upgrade ignored", "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
                              "Upgrade: websocket\r\n\r\n"),

    /* Request line. */
    REJECT("HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
    REJECT("HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    REJECT("HTTP/0.9 version", "GET / HTTP/0.9\r\n\r\n", 505),
    REJECT("HTTP/0.9 simple", "GET /\r\n\r\n", 400),
    REJECT("lowercase http", "GET / http/1.1\r\nHost: a\r\n\r\n", 400),
    REJECT("HTTP/11", "GET / HTTP/11\r\nHost: a\r\n\r\n", 400),
    REJECT("HTTP/1.10", "GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400),
    REJECT("trailing SP", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400),
    REJECT("HTAB separator", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    REJECT("double SP before version", "GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    REJECT("leading SP", " GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    REJECT("leading CRLF", "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    REJECT("space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    REJECT("absolute-form", "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    REJECT("asterisk GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    REJECT("CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
    REJECT("CONNECT origin-form", "CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    REJECT("non-token method", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    REJECT("empty method", " / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    REJECT("high byte target", "GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    /* A token method llhttp does not know: its second opinion refuses it. */
    REJECT("unknown method (llhttp)", "FOO / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    REJECT("lowercase method (llhttp)", "get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),

    /* Field lines. */
    REJECT("no colon", "GET / HTTP/1.1\r\nHost: a\r\nX-A\r\n\r\n", 400),
    REJECT("empty name", "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400),
    REJECT("HTAB before colon", "GET / HTTP/1.1\r\nHost: a\r\nX-A\t: b\r\n\r\n", 400),
    REJECT("non-token name", "GET / HTTP/1.1\r\nHost: a\r\nX@A: b\r\n\r\n", 400),
    REJECT("DEL in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400),
    REJECT("CTL in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n", 400),
    REJECT("vtab in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x0b b\r\n\r\n", 400),
    REJECT("obs-fold after Host", "GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", 400),

    /* Host. */
    REJECT("Host empty", "GET / HTTP/1.1\r\nHost:\r\n\r\n", 400),
    REJECT("Host bad char", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    REJECT("Host bad port", "GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", 400),
    REJECT("Host userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
    REJECT("two Hosts differ", "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400),
    REJECT("two Hosts in 1.0", "GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400),

    /* Content-Length. */
    REJECT("CL empty", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400),
    REJECT("CL negative", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    REJECT("CL hex", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
    REJECT("CL inner space", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n", 400),
    REJECT("CL 20 digits",
           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000000000000000\r\n"
           "\r\n",
           400),
    REJECT("CL overflow",
           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n"
           "\r\n",
           400),
    REJECT("CL duplicate case",
           "POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 3\r\n"
           "CONTENT-LENGTH: 3\r\n\r\n",
           400),

    /* Transfer-Encoding. */
    REJECT("TE gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    REJECT("TE identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501),
    REJECT("TE gzip + CL",
           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
           "Content-Length: 3\r\n\r\n",
           400),
    REJECT("TE chunked, chunked",
           "POST / HTTP/1.1\r\nHost: a\r\n"
           "Transfer-Encoding: chunked, chunked\r\n\r\n",
           400),
    REJECT("TE gzip, chunked",
           "POST / HTTP/1.1\r\nHost: a\r\n"
           "Transfer-Encoding: gzip, chunked\r\n\r\n",
           400),
    REJECT("TE duplicate",
           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
           "Transfer-Encoding: chunked\r\n\r\n",
           400),
    REJECT("TE vtab",
           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0b"
           "chunked\r\n\r\n",
           400),
    REJECT("TE chunked param",
           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n"
           "\r\n",
           400),
    REJECT("TE empty", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400),
    REJECT("TE in 1.0 gzip", "POST / HTTP/1.0\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
};

/* Every prefix of a case gives "need more" or the whole input's own error. */
static void check_prefixes(const struct head_case *c, ssize_t full, int full_status)
{
    struct tg_h1_head h;
    bool failed = false;

    for (size_t k = 0; k < c->len; k++) {
        ssize_t rv = parse(c->in, k, MAX_HEAD, &h);
        if (rv > 0)
            fail_msg("%s: prefix %zu accepted (%zd)", c->name, k, rv);
        if (rv == 0 && failed)
            fail_msg("%s: prefix %zu needs more after an earlier prefix failed", c->name, k);
        if (rv < 0) {
            failed = true;
            if (full >= 0 || h.error_status != full_status)
                fail_msg("%s: prefix %zu fails with %d (%s), whole input gives %zd/%d", c->name, k,
                         h.error_status, h.error, full, full_status);
        }
    }
}

static void test_head_table(void **state)
{
    for (size_t i = 0; i < sizeof(head_cases) / sizeof(head_cases[0]); i++) {
        const struct head_case *c = &head_cases[i];
        struct tg_h1_head h;
        ssize_t rv = parse(c->in, c->len, MAX_HEAD, &h);

        if (c->status == 0 && rv != (ssize_t)c->len)
            fail_msg("%s: want accept (%zu), got %zd: %d %s", c->name, c->len, rv, h.error_status,
                     h.error ? h.error : "");
        if (c->status != 0 && (rv != -1 || h.error_status != c->status || h.error == NULL))
            fail_msg("%s: want %d, got %zd (%d %s)", c->name, c->status, rv, h.error_status,
                     h.error ? h.error : "");
        check_prefixes(c, rv, h.error_status);
    }
}

static void test_head_fields(void **state)
{
    static const char req[] = "POST /v1/chat/completions?stream=1 HTTP/1.1\r\n"
                              "Host: api.example.com:8443\r\n"
                              "X-Pad:   spaced value \t\r\n"
                              "Content-Length: 17\r\n"
                              "Expect: 100-Continue\r\n"
                              "\r\n"
                              "{\"model\":\"m\"}...";
    struct tg_h1_head h;
    ssize_t rv = parse(req, sizeof(req) - 1, MAX_HEAD, &h);
    size_t head_len = (size_t)(strstr(req, "\r\n\r\n") - req) + 4;

    assert_int_equal(rv, head_len);
    assert_true(tg_iov_eq(h.method, TG_IOV_LIT("POST")));
    assert_true(tg_iov_eq(h.target, TG_IOV_LIT("/v1/chat/completions?stream=1")));
    assert_int_equal(h.minor, 1);
    assert_int_equal(h.nheaders, 4);
    assert_true(tg_iov_eq(h.headers[0].name, TG_IOV_LIT("Host")));
    assert_true(tg_iov_eq(h.headers[1].value, TG_IOV_LIT("spaced value")));
    assert_true(tg_iov_eq(h.host, TG_IOV_LIT("api.example.com:8443")));
    assert_int_equal(h.body, TG_H1_BODY_LENGTH);
    assert_int_equal(h.content_length, 17);
    assert_true(h.keep_alive);
    assert_true(h.expect_continue);
    assert_int_equal(h.error_status, 0);
    assert_null(h.error);
}

static void test_head_framing(void **state)
{
    static const struct {
        const char *in;       /* request head */
        enum tg_h1_body body; /* expected framing */
        uint64_t cl;          /* expected content_length */
    } rows[] = {
        {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", TG_H1_BODY_NONE, 0},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", TG_H1_BODY_NONE, 0},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n", TG_H1_BODY_LENGTH, 42},
        {"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\n", TG_H1_BODY_LENGTH, 5},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999999\r\n\r\n",
         TG_H1_BODY_LENGTH, UINT64_C(9999999999999999999)},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", TG_H1_BODY_CHUNKED, 0},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        struct tg_h1_head h;
        ssize_t rv = parse(rows[i].in, strlen(rows[i].in), MAX_HEAD, &h);
        assert_int_equal(rv, strlen(rows[i].in));
        assert_int_equal(h.body, rows[i].body);
        if (rows[i].body == TG_H1_BODY_LENGTH)
            assert_true(h.content_length == rows[i].cl);
    }
}

static void test_head_connection(void **state)
{
    static const struct {
        const char *in;  /* request head */
        bool keep_alive; /* expected */
        bool expect;     /* expected expect_continue */
    } rows[] = {
        {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true, false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false, false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n", false, false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", false,
         false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", true, false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n", true, false},
        {"GET / HTTP/1.0\r\n\r\n", false, false},
        {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true, false},
        {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false, false},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n", true,
         true},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 100-CONTINUE\r\n\r\n", true,
         true},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 200-ok\r\n\r\n", true, false},
        {"POST / HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n", false, false},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        struct tg_h1_head h;
        ssize_t rv = parse(rows[i].in, strlen(rows[i].in), MAX_HEAD, &h);
        if (rv != (ssize_t)strlen(rows[i].in) || h.keep_alive != rows[i].keep_alive ||
            h.expect_continue != rows[i].expect)
            fail_msg("row %zu: rv %zd keep_alive %d expect %d", i, rv, h.keep_alive,
                     h.expect_continue);
    }
}

static void test_head_pipelined(void **state)
{
    static const char two[] = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
                              "GET /b HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char body[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
                               "helloGET / HTTP/1.1\r\n";
    struct tg_h1_head h;
    ssize_t rv = parse(two, sizeof(two) - 1, MAX_HEAD, &h);

    assert_int_equal(rv, 28);
    assert_true(tg_iov_eq(h.target, TG_IOV_LIT("/a")));
    rv = parse(two + 28, sizeof(two) - 1 - 28, MAX_HEAD, &h);
    assert_int_equal(rv, 28);
    assert_true(tg_iov_eq(h.target, TG_IOV_LIT("/b")));
    /* The body and the next request are left unconsumed. */
    rv = parse(body, sizeof(body) - 1, MAX_HEAD, &h);
    assert_int_equal(rv, strstr(body, "hello") - body);
    assert_int_equal(h.content_length, 5);
}

static void test_head_incremental(void **state)
{
    /* Every accepted case, byte by byte: 0 until the last byte, then the head length. */
    for (size_t i = 0; i < sizeof(head_cases) / sizeof(head_cases[0]); i++) {
        const struct head_case *c = &head_cases[i];
        if (c->status != 0)
            continue;
        for (size_t k = 0; k <= c->len; k++) {
            struct tg_h1_head h;
            ssize_t rv = parse(c->in, k, MAX_HEAD, &h);
            ssize_t want = k == c->len ? (ssize_t)c->len : 0;
            if (rv != want)
                fail_msg("%s: prefix %zu gives %zd, want %zd", c->name, k, rv, want);
        }
    }
}

static void test_head_limits(void **state)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const size_t n = sizeof(req) - 1;
    struct tg_h1_head h;
    char big[4096];
    size_t len;
    ssize_t rv;

    /* A head of exactly max bytes fits; one byte less of room is 431. */
    assert_int_equal(parse(req, n, n, &h), n);
    assert_int_equal(parse(req, n, n - 1, &h), -1);
    assert_int_equal(h.error_status, 431);
    /* Incomplete and below the ceiling: need more.  At the ceiling: 431. */
    assert_int_equal(parse(req, n - 1, n, &h), 0);
    assert_int_equal(parse(req, n - 1, n - 1, &h), -1);
    assert_int_equal(h.error_status, 431);
    assert_int_equal(parse(req, 10, 10, &h), -1);
    assert_int_equal(h.error_status, 431);
    assert_int_equal(parse(req, 0, 10, &h), 0);

    /* A never-ending field line. */
    len = (size_t)snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    memset(big + len, 'v', sizeof(big) - len);
    assert_int_equal(parse(big, 1000, 1000, &h), -1);
    assert_int_equal(h.error_status, 431);
    assert_int_equal(parse(big, 999, 1000, &h), 0);

    /* TG_H1_MAX_HEADERS fields pass, one more is 431 (Host counts). */
    for (int extra = 0; extra <= 1; extra++) {
        len = (size_t)snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nHost: a\r\n");
        for (int i = 1; i < TG_H1_MAX_HEADERS + extra; i++)
            len += (size_t)snprintf(big + len, sizeof(big) - len, "X-%d: v\r\n", i);
        len += (size_t)snprintf(big + len, sizeof(big) - len, "\r\n");
        assert_true(len < sizeof(big));
        rv = parse(big, len, sizeof(big), &h);
        if (extra == 0) {
            assert_int_equal(rv, len);
            assert_int_equal(h.nheaders, TG_H1_MAX_HEADERS);
        } else {
            assert_int_equal(rv, -1);
            assert_int_equal(h.error_status, 431);
        }
    }
}

/* ---- chunked bodies ---- */

struct sink {
    char buf[16384]; /* decoded bytes */
    size_t len;      /* bytes in buf */
    size_t calls;    /* callback count */
    size_t fail_at;  /* when non-zero: fail the callback once len reaches this */
};

static int on_data(void *ud, const char *data, size_t len)
{
    struct sink *s = ud;
    assert_true(s->len + len <= sizeof(s->buf));
    memcpy(s->buf + s->len, data, len);
    s->len += len;
    s->calls++;
    if (s->fail_at != 0 && s->len >= s->fail_at)
        return -1;
    return 0;
}

/* Decode in pieces of `step` bytes (0: all at once); returns consumed or -1. */
static ssize_t decode(const char *in, size_t len, size_t step, struct sink *s)
{
    struct tg_chunked d;
    size_t off = 0;

    tg_chunked_init(&d);
    s->len = s->calls = 0;
    while (off < len) {
        size_t n = step == 0 || step > len - off ? len - off : step;
        char *p = test_malloc(n);
        memcpy(p, in + off, n);
        ssize_t rv = tg_chunked_decode(&d, p, n, on_data, s);
        test_free(p);
        if (rv < 0)
            return -1;
        assert_true((size_t)rv <= n);
        off += (size_t)rv;
        if (d.done)
            return (ssize_t)off;
        assert_int_equal(rv, n); /* not done: everything offered was consumed */
    }
    return 0; /* needs more */
}

struct chunk_case {
    const char *name; /* what the case probes ("M:" = THREATS §2.3 row) */
    const char *in;   /* encoded bytes */
    size_t len;       /* their length */
    ssize_t consumed; /* expected: bytes consumed when done, 0 need more, -1 malformed */
    const char *out;  /* expected decoded bytes (up to the error for -1 rows) */
    size_t out_len;   /* their length */
};

/* clang-format off */
#define CHUNK(n, s, c, o) {(n), (s), sizeof(s) - 1, (c), (o), sizeof(o) - 1}
/* clang-format on */
#define CH_ALL -2 /* consumed: the whole input */

static const char ext70[] = "3;"
                            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                            "\r\n"
                            "abc\r\n0\r\n\r\n";

static const struct chunk_case chunk_cases[] = {
    /* THREATS §2.3 rows. */
    CHUNK("M: size LF only", "3\nabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("M: size 0x3", "0x3\r\nabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("M: size overflow", "10000000000\r\n", -1, ""),
    CHUNK("M: size overflow 64-bit", "fffffffffffffffff\r\n", -1, ""),
    CHUNK("M: data then XX", "3\r\nabcXX0\r\n\r\n", -1, "abc"),
    /* (the 70-byte extension row is chunk_ext70 below) */

    /* Valid. */
    CHUNK("one chunk", "5\r\nhello\r\n0\r\n\r\n", CH_ALL, "hello"),
    CHUNK("two chunks", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", CH_ALL, "hello world"),
    CHUNK("empty body", "0\r\n\r\n", CH_ALL, ""),
    CHUNK("hex upper", "A\r\n0123456789\r\n0\r\n\r\n", CH_ALL, "0123456789"),
    CHUNK("hex lower", "a\r\n0123456789\r\n0\r\n\r\n", CH_ALL, "0123456789"),
    CHUNK("leading zeros", "0005\r\nhello\r\n000\r\n\r\n", CH_ALL, "hello"),
    CHUNK("binary data", "4\r\n\r\n\0\xff\r\n0\r\n\r\n", CH_ALL, "\r\n\0\xff"),
    CHUNK("extension", "5;name=value\r\nhello\r\n0;last\r\n\r\n", CH_ALL, "hello"),
    CHUNK("quoted extension", "5;a=\"x y\"\r\nhello\r\n0\r\n\r\n", CH_ALL, "hello"),
    CHUNK("trailer", "5\r\nhello\r\n0\r\nX-Sum: abc\r\nX-Other:\tv w \r\n\r\n", CH_ALL, "hello"),
    CHUNK("empty trailer value", "0\r\nX:\r\n\r\n", CH_ALL, ""),
    CHUNK("pipelined after", "2\r\nhi\r\n0\r\n\r\nGET / HTTP/1.1\r\n", 12, "hi"),
    CHUNK("10 hex digits", "000000000a\r\n0123456789\r\n0\r\n\r\n", CH_ALL, "0123456789"),
    CHUNK("10 hex digits big", "ffffffffff\r\nab", 0, "ab"),
    CHUNK("incomplete data", "5\r\nhel", 0, "hel"),
    CHUNK("incomplete end", "5\r\nhello\r\n0\r\n", 0, "hello"),

    /* Malformed sizes. */
    CHUNK("empty size", "\r\n", -1, ""),
    CHUNK("11 hex digits", "0000000000a\r\n", -1, ""),
    CHUNK("SP before size", " 3\r\nabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("SP after size", "3 \r\nabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("HTAB after size", "3\t\r\nabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("SP before ext", "3 ;a\r\nabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("plus sign", "+3\r\nabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("minus sign", "-3\r\nabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("non-hex", "3g\r\nabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("size CR CR", "3\r\rabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("ext bare CR", "3;a\rb\r\nabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("ext bare LF", "3;a\nabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("ext NUL", "3;a\0b\r\nabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("ext DEL", "3;a\x7f\r\nabc\r\n0\r\n\r\n", -1, ""),
    CHUNK("semicolon first", ";a\r\nabc\r\n0\r\n\r\n", -1, ""),

    /* Missing CRLF after data. */
    CHUNK("data LF only", "3\r\nabc\n0\r\n\r\n", -1, "abc"),
    CHUNK("data CR only", "3\r\nabc\r0\r\n\r\n", -1, "abc"),
    CHUNK("data too long", "3\r\nabcd\r\n0\r\n\r\n", -1, "abc"),
    CHUNK("data too short", "3\r\nab\r\n0\r\n\r\n", -1, "ab\r"),

    /* Last chunk and trailers. */
    CHUNK("last LF only", "0\n\r\n", -1, ""),
    CHUNK("final LF only", "0\r\n\n", -1, ""),
    CHUNK("final CR X", "0\r\n\rX", -1, ""),
    CHUNK("trailer obs-fold", "0\r\nX: a\r\n b\r\n\r\n", -1, ""),
    CHUNK("trailer leading SP", "0\r\n X: a\r\n\r\n", -1, ""),
    CHUNK("trailer no colon", "0\r\nX-A\r\n\r\n", -1, ""),
    CHUNK("trailer empty name", "0\r\n: a\r\n\r\n", -1, ""),
    CHUNK("trailer space in name", "0\r\nX A: b\r\n\r\n", -1, ""),
    CHUNK("trailer space before colon", "0\r\nX : b\r\n\r\n", -1, ""),
    CHUNK("trailer NUL", "0\r\nX: a\0b\r\n\r\n", -1, ""),
    CHUNK("trailer bare CR", "0\r\nX: a\rb\r\n\r\n", -1, ""),
    CHUNK("trailer bare LF", "0\r\nX: a\nY: b\r\n\r\n", -1, ""),
    CHUNK("trailer LF end", "0\r\nX: a\r\n\n", -1, ""),
};

static void check_chunk_case(const struct chunk_case *c)
{
    static struct sink one, step;
    ssize_t want = c->consumed == CH_ALL ? (ssize_t)c->len : c->consumed;
    size_t out_len = c->out_len;
    static const size_t steps[] = {0, 1, 2, 3, 7};

    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        ssize_t rv = decode(c->in, c->len, steps[i], &step);
        if (rv != want)
            fail_msg("%s (step %zu): consumed %zd, want %zd", c->name, steps[i], rv, want);
        if (step.len != out_len || memcmp(step.buf, c->out, out_len) != 0)
            fail_msg("%s (step %zu): decoded %zu bytes, want %zu", c->name, steps[i], step.len,
                     out_len);
        if (i == 0) {
            one = step;
        } else if (one.len != step.len || memcmp(one.buf, step.buf, one.len) != 0) {
            fail_msg("%s: step %zu differs from one-shot", c->name, steps[i]);
        }
        assert_true(step.len <= c->len);
    }
}

static void test_chunked_table(void **state)
{
    for (size_t i = 0; i < sizeof(chunk_cases) / sizeof(chunk_cases[0]); i++)
        check_chunk_case(&chunk_cases[i]);
}

static void test_chunked_ext_cap(void **state)
{
    /* THREATS §2.3: a 70-byte extension is fine; the cap is 256 bytes per line. */
    static const struct chunk_case ext = CHUNK("M: 70-byte extension", ext70, CH_ALL, "abc");
    char in[600];
    struct sink s;
    size_t n;

    check_chunk_case(&ext);
    for (size_t ext_len = 255; ext_len <= 258; ext_len++) {
        /* ext_len counts the ';' too. */
        in[0] = '3';
        in[1] = ';';
        memset(in + 2, 'e', ext_len - 1);
        n = 1 + ext_len;
        memcpy(in + n, "\r\nabc\r\n0\r\n\r\n", 12);
        n += 12;
        ssize_t want = ext_len <= 256 ? (ssize_t)n : -1;
        assert_int_equal(decode(in, n, 0, &s), want);
        assert_int_equal(decode(in, n, 1, &s), want);
    }
}

static void test_chunked_trailer_cap(void **state)
{
    /* The trailer section, CRLFs included, may be 8192 bytes and no more. */
    static char in[9000];
    struct sink s;

    for (size_t total = 8191; total <= 8193; total++) {
        /* "0\r\n" + "X: vvv...\r\n" + "\r\n"; total counts from 'X' to the final LF. */
        size_t n = 0, value = total - 2 - 5;
        memcpy(in, "0\r\nX: ", 6);
        n = 6;
        memset(in + n, 'v', value);
        n += value;
        memcpy(in + n, "\r\n\r\n", 4);
        n += 4;
        ssize_t want = total <= 8192 ? (ssize_t)n : -1;
        assert_int_equal(decode(in, n, 0, &s), want);
        assert_int_equal(decode(in, n, 1, &s), want);
    }
}

static void test_chunked_callback_error(void **state)
{
    static const char in[] = "5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n";
    struct sink s;

    memset(&s, 0, sizeof(s));
    s.fail_at = 7;
    assert_int_equal(decode(in, sizeof(in) - 1, 0, &s), -1);
    assert_int_equal(s.len, 10); /* the second run was delivered, then refused */
    s.fail_at = 3;
    assert_int_equal(decode(in, sizeof(in) - 1, 1, &s), -1);
    assert_int_equal(s.len, 3);
}

static void test_chunked_sticky(void **state)
{
    struct tg_chunked d;
    struct sink s;

    memset(&s, 0, sizeof(s));
    /* After done, nothing more is consumed. */
    tg_chunked_init(&d);
    assert_int_equal(tg_chunked_decode(&d, "0\r\n\r\n", 5, on_data, &s), 5);
    assert_true(d.done);
    assert_int_equal(tg_chunked_decode(&d, "1\r\nx\r\n", 6, on_data, &s), 0);
    /* After an error, every call fails. */
    tg_chunked_init(&d);
    assert_int_equal(tg_chunked_decode(&d, "x", 1, on_data, &s), -1);
    assert_int_equal(tg_chunked_decode(&d, "0\r\n\r\n", 5, on_data, &s), -1);
    assert_false(d.done);
    /* A NULL callback discards the data. */
    tg_chunked_init(&d);
    assert_int_equal(tg_chunked_decode(&d, "2\r\nhi\r\n0\r\n\r\n", 12, NULL, NULL), 12);
    assert_int_equal(s.len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_head_table, teardown),
        cmocka_unit_test_teardown(test_head_fields, teardown),
        cmocka_unit_test_teardown(test_head_framing, teardown),
        cmocka_unit_test_teardown(test_head_connection, teardown),
        cmocka_unit_test_teardown(test_head_pipelined, teardown),
        cmocka_unit_test_teardown(test_head_incremental, teardown),
        cmocka_unit_test_teardown(test_head_limits, teardown),
        cmocka_unit_test(test_chunked_table),
        cmocka_unit_test(test_chunked_ext_cap),
        cmocka_unit_test(test_chunked_trailer_cap),
        cmocka_unit_test(test_chunked_callback_error),
        cmocka_unit_test(test_chunked_sticky),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
