/*
 * The reply-object functions of proxy/redis_reply.c: same trees as hiredis's
 * own for what our scripts answer, refusal of announced sizes past the
 * bounds (without allocating them), and node reuse.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "proxy/redis_reply.h"

static redisReader *reader(void)
{
    redisReader *r = redisReaderCreate();
    assert_non_null(r);
    r->fn = &tg_redis_reply_fns;
    return r;
}

/* Parse one reply from s; NULL when the reader refused it (error set). */
static redisReply *parse(redisReader *r, const char *s, size_t n)
{
    void *out = NULL;
    assert_int_equal(redisReaderFeed(r, s, n), REDIS_OK);
    if (redisReaderGetReply(r, &out) != REDIS_OK)
        return NULL;
    return out;
}

static void test_admit_reply_shape(void **state)
{
    (void)state;
    redisReader *r = reader();
    static const char in[] = "*9\r\n:1\r\n:-1\r\n:0\r\n:599\r\n:100\r\n:-1\r\n:0\r\n:20000\r\n"
                             ":672000\r\n";
    redisReply *rep = parse(r, in, sizeof(in) - 1);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->elements, 9);
    assert_int_equal(rep->element[0]->type, REDIS_REPLY_INTEGER);
    assert_int_equal(rep->element[1]->integer, -1);
    assert_int_equal(rep->element[8]->integer, 672000);
    tg_redis_reply_fns.freeObject(rep);
    /* Strings, errors, nil and nesting keep hiredis's layout. */
    static const char in2[] = "*4\r\n$3\r\nabc\r\n-NOSCRIPT No matching script\r\n$-1\r\n*1\r\n+OK\r\n";
    rep = parse(r, in2, sizeof(in2) - 1);
    assert_non_null(rep);
    assert_int_equal(rep->elements, 4);
    assert_int_equal(rep->element[0]->type, REDIS_REPLY_STRING);
    assert_int_equal(rep->element[0]->len, 3);
    assert_string_equal(rep->element[0]->str, "abc");
    assert_int_equal(rep->element[1]->type, REDIS_REPLY_ERROR);
    assert_string_equal(rep->element[1]->str, "NOSCRIPT No matching script");
    assert_int_equal(rep->element[2]->type, REDIS_REPLY_NIL);
    assert_int_equal(rep->element[3]->element[0]->type, REDIS_REPLY_STATUS);
    assert_string_equal(rep->element[3]->element[0]->str, "OK");
    tg_redis_reply_fns.freeObject(rep);
    redisReaderFree(r);
}

static void test_announced_sizes_are_bounded(void **state)
{
    (void)state;
    /* hiredis 0.14's own functions would calloc 32 GB here. */
    static const char *const hostile[] = {
        "*4000000000\r\n", "*65\r\n", "*2\r\n*1000\r\n",
    };
    for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
        redisReader *r = reader();
        assert_null(parse(r, hostile[i], strlen(hostile[i])));
        assert_int_not_equal(r->err, 0);
        redisReaderFree(r);
    }
    /* 64 elements are fine. */
    redisReader *r = reader();
    char big[64 * 5 + 8];
    size_t n = (size_t)snprintf(big, sizeof(big), "*64\r\n");
    for (int i = 0; i < 64; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, ":%d\r\n", i % 10);
    redisReply *rep = parse(r, big, n);
    assert_non_null(rep);
    assert_int_equal(rep->elements, 64);
    tg_redis_reply_fns.freeObject(rep);
    redisReaderFree(r);
}

static void test_long_string_refused(void **state)
{
    (void)state;
    redisReader *r = reader();
    size_t len = TG_REDIS_REPLY_MAX_STRING + 1;
    char head[32];
    int hn = snprintf(head, sizeof(head), "$%zu\r\n", len);
    assert_int_equal(redisReaderFeed(r, head, (size_t)hn), REDIS_OK);
    static char body[TG_REDIS_REPLY_MAX_STRING + 3];
    memset(body, 'x', len);
    memcpy(body + len, "\r\n", 2);
    void *out = NULL;
    assert_int_equal(redisReaderFeed(r, body, len + 2), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &out), REDIS_ERR);
    assert_null(out);
    redisReaderFree(r);
}

static void test_nodes_are_reused(void **state)
{
    (void)state;
    redisReader *r = reader();
    redisReply *a = parse(r, ":1\r\n", 4);
    assert_non_null(a);
    tg_redis_reply_fns.freeObject(a);
    redisReply *b = parse(r, ":2\r\n", 4);
    assert_ptr_equal(a, b); /* the freed node came back */
    assert_int_equal(b->integer, 2);
    assert_null(b->element);
    tg_redis_reply_fns.freeObject(b);
    redisReaderFree(r);
    tg_redis_reply_thread_exit();
    tg_redis_reply_thread_exit(); /* twice is fine */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admit_reply_shape),
        cmocka_unit_test(test_announced_sizes_are_bounded),
        cmocka_unit_test(test_long_string_refused),
        cmocka_unit_test(test_nodes_are_reused),
    };
    int rv = cmocka_run_group_tests(tests, NULL, NULL);
    tg_redis_reply_thread_exit();
    return rv;
}
