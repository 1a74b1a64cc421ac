/*
 * fuzz_chunked.c - the strict chunked decoder, fed three ways.
 *
 * One-shot, byte-by-byte and in pieces of an input-chosen size must consume
 * the same number of bytes (or all fail) and decode the same bytes; decoded
 * bytes never exceed the bytes consumed; a finished decoder consumes nothing
 * more.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/h1parse.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct sink {
    char *buf;  /* decoded bytes, capacity = input size */
    size_t cap; /* capacity */
    size_t len; /* bytes decoded */
};

static int on_data(void *ud, const char *p, size_t n)
{
    struct sink *s = ud;
    CHECK(n > 0);
    CHECK(s->len + n <= s->cap); /* decoded never exceeds the input */
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    return 0;
}

/* Feed in pieces of step bytes (0 = one go).  Returns consumed when done, 0 if not done, -1. */
static ssize_t run(const char *in, size_t len, size_t step, struct sink *s)
{
    struct tg_chunked d;
    size_t off = 0;

    tg_chunked_init(&d);
    s->len = 0;
    while (off < len) {
        size_t n = step == 0 || step > len - off ? len - off : step;
        /* Exact-size piece, so ASan sees any overread of the piece. */
        char *piece = malloc(n);
        CHECK(piece != NULL);
        memcpy(piece, in + off, n);
        ssize_t rv = tg_chunked_decode(&d, piece, n, on_data, s);
        free(piece);
        if (rv < 0)
            return -1;
        CHECK((size_t)rv <= n);
        off += (size_t)rv;
        CHECK(s->len <= off);
        if (d.done) {
            CHECK(tg_chunked_decode(&d, in, len, on_data, s) == 0);
            return (ssize_t)off;
        }
        CHECK((size_t)rv == n);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sink one, each, some;
    ssize_t r1, r2, r3;
    size_t step = size > 0 ? (size_t)(data[size - 1] % 16) + 2 : 2;

    one.cap = each.cap = some.cap = size;
    one.buf = malloc(size + 1);
    each.buf = malloc(size + 1);
    some.buf = malloc(size + 1);
    CHECK(one.buf != NULL && each.buf != NULL && some.buf != NULL);

    r1 = run((const char *)data, size, 0, &one);
    r2 = run((const char *)data, size, 1, &each);
    r3 = run((const char *)data, size, step, &some);
    CHECK(r1 == r2 && r1 == r3);
    CHECK(one.len == each.len && one.len == some.len);
    CHECK(memcmp(one.buf, each.buf, one.len) == 0 && memcmp(one.buf, some.buf, one.len) == 0);
    if (r1 > 0)
        CHECK(one.len < (size_t)r1); /* at least "0\r\n\r\n" of framing */

    free(one.buf);
    free(each.buf);
    free(some.buf);
    return 0;
}
