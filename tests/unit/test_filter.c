/*
 * test_filter.c - the filter chain and the request exchange (proxy/filter.c,
 * proxy/req.c) driven through a fake session, with no network.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "config/config.h"
#include "proxy/buf.h"
#include "proxy/filter.h"
#include "proxy/mem.h"
#include "proxy/req.h"

/* --- a fake session capturing what the request sends ------------------------------ */

struct fake_sess {
    int status;          /* status passed to send_head */
    bool head_has_body;  /* has_body passed to send_head */
    int heads;           /* send_head calls */
    char body[4096];     /* bytes passed to send_data */
    size_t body_len;     /* length of body */
    bool ended;          /* send_data(end) seen */
    size_t consumed;     /* body_consumed credit */
    int aborts;          /* abort calls */
};

static int f_send_head(struct tg_req *req, bool has_body)
{
    struct fake_sess *s = req->sess;
    s->status = req->status;
    s->head_has_body = has_body;
    s->heads++;
    return 0;
}

static int f_send_data(struct tg_req *req, const char *p, size_t n, bool end)
{
    struct fake_sess *s = req->sess;
    assert_true(s->body_len + n <= sizeof(s->body));
    memcpy(s->body + s->body_len, p, n);
    s->body_len += n;
    s->ended |= end;
    return 0;
}

static size_t f_pending(struct tg_req *req)
{
    (void)req;
    return 0;
}

static void f_abort(struct tg_req *req)
{
    ((struct fake_sess *)req->sess)->aborts++;
}

static void f_consumed(struct tg_req *req, size_t n)
{
    ((struct fake_sess *)req->sess)->consumed += n;
}

static const struct tg_req_sess_ops fake_ops = {f_send_head, f_send_data, f_pending, f_abort,
                                                f_consumed};

/* --- recording filters ------------------------------------------------------------ */

static char trace[512]; /* "A.h B.h ..." */
static int chain_done;
static enum tg_filter_status b_headers_result;
static enum tg_filter_status b_data_result;
static char b_data[4096];
static size_t b_data_len;
static int b_data_calls;
static bool b_data_end;

static void note(const char *s)
{
    size_t n = strlen(trace);
    snprintf(trace + n, sizeof(trace) - n, "%s ", s);
}

static enum tg_filter_status a_headers(struct tg_filter *f, struct tg_req *req)
{
    (void)req;
    *(int *)f->ctx += 1; /* the context is per request and zeroed */
    note("A.h");
    return TG_FILTER_CONTINUE;
}
static enum tg_filter_status b_headers(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    note("B.h");
    if (b_headers_result == TG_FILTER_REPLIED)
        tg_req_reply_error(req, 403, "permission_denied", "no", "authz.route");
    return b_headers_result;
}
static enum tg_filter_status b_body(struct tg_filter *f, struct tg_req *req, struct tg_iov c,
                                    bool end)
{
    (void)f;
    (void)req;
    note("B.d");
    b_data_calls++;
    if (b_data_result != TG_FILTER_BUFFER || end) {
        memcpy(b_data + b_data_len, c.base, c.len);
        b_data_len += c.len;
    }
    b_data_end |= end;
    return end ? TG_FILTER_CONTINUE : b_data_result;
}
static enum tg_filter_status c_headers(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    (void)req;
    note("C.h");
    return TG_FILTER_CONTINUE;
}
static bool d_attach(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    (void)req;
    return false;
}
static enum tg_filter_status d_headers(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    (void)req;
    note("D.h");
    return TG_FILTER_CONTINUE;
}
static enum tg_filter_status a_resp(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    (void)req;
    note("A.r");
    return TG_FILTER_CONTINUE;
}
static enum tg_filter_status c_resp(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    (void)req;
    note("C.r");
    return TG_FILTER_CONTINUE;
}
static void a_complete(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    (void)req;
    note("A.c");
}
static void c_complete(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    (void)req;
    note("C.c");
}
static void a_destroy(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    (void)req;
    note("A.x");
}

static const struct tg_filter_ops fa = {.name = "A", .ctx_size = sizeof(int),
                                        .on_request_headers = a_headers,
                                        .on_response_headers = a_resp,
                                        .on_complete = a_complete, .on_destroy = a_destroy};
static const struct tg_filter_ops fb = {.name = "B", .on_request_headers = b_headers,
                                        .on_request_data = b_body};
static const struct tg_filter_ops fd = {.name = "D", .attach = d_attach,
                                        .on_request_headers = d_headers};
static const struct tg_filter_ops fc = {.name = "C", .on_request_headers = c_headers,
                                        .on_response_headers = c_resp, .on_complete = c_complete};
static const struct tg_filter_ops *const chain[] = {&fa, &fb, &fd, &fc, NULL};

static void on_done(struct tg_req *req)
{
    (void)req;
    chain_done++;
    note("done");
}

static struct tg_config *make_cfg(uint64_t max_body)
{
    struct tg_config *c = tg_mem_calloc(1, sizeof(*c));
    atomic_init(&c->refcnt, 1);
    c->limits.max_body_bytes = max_body;
    c->limits.max_header_bytes = 65536;
    return c;
}

static struct tg_req *new_req(struct tg_config *cfg, struct fake_sess *s)
{
    memset(s, 0, sizeof(*s));
    trace[0] = '\0';
    chain_done = 0;
    b_headers_result = TG_FILTER_CONTINUE;
    b_data_result = TG_FILTER_CONTINUE;
    b_data_len = 0;
    b_data_calls = 0;
    b_data_end = false;
    struct tg_req *req = tg_req_new(NULL, cfg, &fake_ops, s);
    assert_non_null(req);
    tg_filter_run_destroy(req); /* the registry filters have nothing to destroy yet */
    req->nfilters = 0;
    assert_int_equal(tg_filter_attach_all(req, chain), 0);
    req->on_chain_done = on_done;
    req->method = TG_IOV_LIT("POST");
    req->path = TG_IOV_LIT("/v1/x");
    return req;
}

static void test_order_and_attach(void **state)
{
    (void)state;
    struct tg_config *cfg = make_cfg(1 << 20);
    struct fake_sess s;
    struct tg_req *req = new_req(cfg, &s);
    assert_int_equal(req->nfilters, 3); /* D declined in attach */
    tg_req_start(req);
    assert_string_equal(trace, "A.h B.h C.h done ");
    assert_int_equal(*(int *)req->filters[0].ctx, 1);
    assert_int_equal(chain_done, 1);
    /* response headers run in reverse order */
    trace[0] = '\0';
    req->status = 200;
    assert_int_equal(tg_req_response_head(req, true), 0);
    assert_string_equal(trace, "C.r A.r ");
    assert_int_equal(s.heads, 1);
    tg_req_response_data(req, "ok", 2, true);
    trace[0] = '\0';
    tg_req_free(req);
    /* complete once (reverse), then destroy */
    assert_string_equal(trace, "C.c A.c A.x ");
    tg_config_unref(cfg);
}

static void test_stop_and_continue(void **state)
{
    (void)state;
    struct tg_config *cfg = make_cfg(1 << 20);
    struct fake_sess s;
    struct tg_req *req = new_req(cfg, &s);
    b_headers_result = TG_FILTER_STOP;
    tg_req_start(req);
    assert_string_equal(trace, "A.h B.h ");
    assert_int_equal(chain_done, 0);
    /* body arriving while stopped is held, not passed on */
    tg_req_body(req, "hello ", 6, false);
    assert_int_equal(b_data_calls, 0);
    assert_int_equal(req->body_out.bytes, 0);
    tg_req_continue(req);
    assert_string_equal(trace, "A.h B.h C.h done B.d ");
    assert_int_equal(chain_done, 1);
    assert_int_equal(req->body_out.bytes, 6);
    tg_req_body(req, "world", 5, true);
    assert_int_equal(req->body_out.bytes, 11);
    assert_true(req->body_out_end);
    assert_true(b_data_end);
    assert_memory_equal(b_data, "hello world", 11);
    /* a second continue is harmless */
    tg_req_continue(req);
    assert_int_equal(chain_done, 1);
    tg_req_free(req);
    tg_config_unref(cfg);
}

static void test_replied_ends_chain(void **state)
{
    (void)state;
    struct tg_config *cfg = make_cfg(1 << 20);
    struct fake_sess s;
    struct tg_req *req = new_req(cfg, &s);
    b_headers_result = TG_FILTER_REPLIED;
    tg_req_start(req);
    assert_string_equal(trace, "A.h B.h ");
    assert_int_equal(chain_done, 0);
    assert_int_equal(s.status, 403);
    assert_true(s.ended);
    s.body[s.body_len] = '\0';
    assert_string_equal(s.body, "{\"error\":{\"message\":\"no\",\"type\":\"permission_error\","
                                "\"code\":\"permission_denied\"}}\n");
    assert_string_equal(req->outcome.reason, "authz.route");
    assert_true(req->outcome.denied);
    /* body that still arrives is discarded but its flow-control credit returned */
    assert_int_equal(tg_req_body(req, "abc", 3, false), -20006 /* TG_E_CLOSED */);
    assert_int_equal(s.consumed, 3);
    trace[0] = '\0';
    tg_req_free(req);
    assert_string_equal(trace, "C.c A.c A.x ");
    tg_config_unref(cfg);
}

static void test_buffer_whole_body(void **state)
{
    (void)state;
    struct tg_config *cfg = make_cfg(1 << 20);
    struct fake_sess s;
    struct tg_req *req = new_req(cfg, &s);
    b_data_result = TG_FILTER_BUFFER;
    tg_req_start(req);
    tg_req_body(req, "abc", 3, false);
    tg_req_body(req, "def", 3, false);
    assert_int_equal(req->body_out.bytes, 0); /* held for the buffering filter */
    assert_int_equal(s.consumed, 6);          /* the client is not stalled by the hold */
    tg_req_body(req, "gh", 2, true);
    assert_true(b_data_end);
    assert_int_equal(b_data_len, 8);
    assert_memory_equal(b_data, "abcdefgh", 8); /* whole body in one call at the end */
    assert_int_equal(req->body_out.bytes, 8);
    assert_true(req->body_out_end);
    char out[16];
    assert_int_equal(tg_bufq_read(&req->body_out, out, sizeof(out)), 8);
    assert_memory_equal(out, "abcdefgh", 8);
    tg_req_free(req);
    tg_config_unref(cfg);
}

static void test_body_limit(void **state)
{
    (void)state;
    struct tg_config *cfg = make_cfg(10);
    struct fake_sess s;
    struct tg_req *req = new_req(cfg, &s);
    tg_req_start(req);
    assert_int_equal(tg_req_body(req, "0123456789", 10, false), 0);
    assert_int_not_equal(tg_req_body(req, "x", 1, false), 0);
    assert_int_equal(s.status, 413);
    assert_string_equal(req->outcome.reason, "limits.body_size");
    s.body[s.body_len] = '\0';
    assert_non_null(strstr(s.body, "\"code\":\"request_too_large\""));
    tg_req_free(req);
    tg_config_unref(cfg);
}

static void test_complete_once_without_start(void **state)
{
    (void)state;
    struct tg_config *cfg = make_cfg(10);
    struct fake_sess s;
    struct tg_req *req = new_req(cfg, &s);
    tg_req_complete(req);
    tg_req_complete(req);
    tg_req_free(req);
    assert_string_equal(trace, "C.c A.c A.x ");
    assert_int_equal(s.heads, 0);
    tg_config_unref(cfg);
}

static void test_abort_after_head(void **state)
{
    (void)state;
    struct tg_config *cfg = make_cfg(10);
    struct fake_sess s;
    struct tg_req *req = new_req(cfg, &s);
    tg_req_start(req);
    req->status = 200;
    tg_req_response_head(req, true);
    /* an error after the head cannot be a clean reply: the stream is aborted */
    tg_req_reply_error(req, 502, "upstream_error", "x", "upstream.error");
    assert_int_equal(s.aborts, 1);
    assert_int_equal(s.heads, 1);
    assert_false(s.ended);
    assert_string_equal(req->outcome.reason, "upstream.error");
    tg_req_free(req);
    tg_config_unref(cfg);
}

static void test_hlist(void **state)
{
    (void)state;
    struct tg_arena a;
    tg_arena_init(&a, 256);
    struct tg_hlist l = {0};
    assert_int_equal(tg_hlist_add(&l, &a, TG_IOV_LIT("X-Foo"), TG_IOV_LIT("1")), 0);
    assert_int_equal(tg_hlist_add(&l, &a, TG_IOV_LIT("x-bar"), TG_IOV_LIT("2")), 0);
    assert_int_equal(tg_hlist_add(&l, &a, TG_IOV_LIT("x-foo"), TG_IOV_LIT("3")), 0);
    assert_int_equal(tg_hlist_get(&l, "x-foo").len, 1);
    assert_memory_equal(tg_hlist_get(&l, "x-foo").base, "1", 1);
    assert_null(tg_hlist_get(&l, "X-Foo").base); /* names are stored lowercase */
    assert_int_equal(tg_hlist_remove(&l, "x-foo"), 2);
    assert_int_equal(l.n, 1);
    for (int i = 0; i < TG_REQ_MAX_HEADERS - 1; i++)
        assert_int_equal(tg_hlist_add(&l, &a, TG_IOV_LIT("a"), TG_IOV_LIT("b")), 0);
    assert_int_equal(tg_hlist_add(&l, &a, TG_IOV_LIT("a"), TG_IOV_LIT("b")), -20002);
    tg_arena_dispose(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_attach),
        cmocka_unit_test(test_stop_and_continue),
        cmocka_unit_test(test_replied_ends_chain),
        cmocka_unit_test(test_buffer_whole_body),
        cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_complete_once_without_start),
        cmocka_unit_test(test_abort_after_head),
        cmocka_unit_test(test_hlist),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
