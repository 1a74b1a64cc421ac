/*
 * fuzz_sse_usage.c - the usage reader (filters/usage.c) on upstream bytes.
 *
 * Input: byte 0 picks the options (API, SSE or JSON body, strip_usage,
 * max_output), byte 1 seeds the piece sizes, the rest is the body.  The body
 * is fed whole and in pieces (copied to exact-size buffers, so ASan sees any
 * overread); both runs must forward the same bytes and give the same result.
 * In pass-through mode the forwarded bytes are the input; with strip_usage
 * and no cut they are the input with whole events left out (a subsequence).
 * Memory is bounded: every allocation (jansson's too) is counted, and the
 * peak of live bytes must stay under MEM_BOUND whatever the input.
 *
 * Differential: the body is fed once more to a reader that parses every SSE
 * event with jansson (tg_usage_set_oracle), the reference of the event
 * scanner: both must forward the same bytes and give the same result (the
 * bytes only when both runs fell in the same second: a cut without the
 * upstream's `created` writes the clock).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "filters/usage.h"
#include "proxy/mem.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Held event (128 KiB) + data (64 KiB) + jansson's tree of one 64 KiB event. */
#define MEM_BOUND (24u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- a counting allocator: a size header before each block ---- */

static size_t live, peak;

static void *c_malloc(size_t n)
{
    size_t *p = malloc(n + 16);
    if (p == NULL)
        return NULL;
    p[0] = n;
    live += n;
    if (live > peak)
        peak = live;
    return (char *)p + 16;
}

static void *c_calloc(size_t n, size_t m)
{
    if (m != 0 && n > SIZE_MAX / m)
        return NULL;
    void *p = c_malloc(n * m);
    if (p != NULL)
        memset(p, 0, n * m);
    return p;
}

static void c_free(void *q)
{
    if (q == NULL)
        return;
    size_t *p = (size_t *)((char *)q - 16);
    live -= p[0];
    free(p);
}

static void *c_realloc(void *q, size_t n)
{
    if (q == NULL)
        return c_malloc(n);
    size_t old = ((size_t *)((char *)q - 16))[0];
    void *p = c_malloc(n);
    if (p == NULL)
        return NULL;
    memcpy(p, q, old < n ? old : n);
    c_free(q);
    return p;
}

static const struct tg_allocator counting = {c_malloc, c_calloc, c_realloc, c_free};

/* ---- the sink ---- */

struct sink {
    char *p;    /* forwarded bytes */
    size_t len; /* used */
    size_t cap; /* allocated */
};

static int on_emit(void *arg, const char *p, size_t n)
{
    struct sink *s = arg;
    CHECK(n > 0);
    if (s->len + n > s->cap) {
        s->cap = (s->len + n) * 2;
        s->p = realloc(s->p, s->cap);
        CHECK(s->p != NULL);
    }
    memcpy(s->p + s->len, p, n);
    s->len += n;
    return 0;
}

struct run {
    struct sink out;          /* forwarded */
    struct tg_usage_result r; /* result */
    bool cut;                 /* TG_USAGE_CUT returned */
};

static uint32_t rnd(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Feed in pieces: seed 0 means one piece.  oracle: jansson reads the events. */
static void run(const struct tg_usage_opts *o, const char *in, size_t len, uint32_t seed,
                bool oracle, struct run *r)
{
    struct tg_usage *u = tg_usage_new(o);
    size_t at = 0;
    int rv;

    memset(r, 0, sizeof(*r));
    CHECK(u != NULL);
    tg_usage_set_oracle(u, oracle);
    while (at < len) {
        size_t n = len - at;
        if (seed != 0) {
            uint32_t x = rnd(&seed);
            n = (x & 7) == 0 ? (x >> 8) % 4096 : (x >> 8) % 64;
            if (n > len - at)
                n = len - at;
        }
        char *piece = malloc(n ? n : 1);
        CHECK(piece != NULL);
        memcpy(piece, in + at, n);
        size_t before = r->out.len;
        rv = tg_usage_feed(u, piece, n, on_emit, &r->out);
        free(piece);
        CHECK(rv == 0 || rv == TG_USAGE_CUT);
        if (r->cut)
            CHECK(rv == TG_USAGE_CUT && r->out.len == before);
        r->cut |= rv == TG_USAGE_CUT;
        at += n;
    }
    rv = tg_usage_finish(u, on_emit, &r->out);
    CHECK(rv == 0 || rv == TG_USAGE_CUT);
    r->cut |= rv == TG_USAGE_CUT;
    r->r = *tg_usage_result(u);
    tg_usage_free(u);
}

/* Is a a subsequence of b? */
static bool subseq(const char *a, size_t an, const char *b, size_t bn)
{
    size_t i = 0;
    for (size_t j = 0; j < bn && i < an; j++)
        if (a[i] == b[j])
            i++;
    return i == an;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint64_t max_outputs[] = {0, 1, 3, 50};
    static bool init;
    struct tg_usage_opts o;
    struct run one, some, ref;

    if (!init) {
        tg_mem_set(&counting);
        json_set_alloc_funcs(tg_mem_malloc, tg_mem_free);
        init = true;
    }
    if (size < 2)
        return 0;
    memset(&o, 0, sizeof(o));
    o.api = (enum tg_usage_api)(data[0] & 3);
    o.sse = (data[0] & 4) == 0; /* mostly SSE */
    o.strip_usage = (data[0] & 8) != 0;
    o.max_output = max_outputs[(data[0] >> 4) & 3];
    o.prompt_estimate = data[0] >> 6;
    uint32_t seed = (uint32_t)data[1] * 2654435761u + 1;
    const char *in = (const char *)data + 2;
    size_t len = size - 2;

    live = peak = 0;
    time_t t0 = time(NULL);
    run(&o, in, len, 0, false, &one);
    run(&o, in, len, 0, true, &ref);
    bool same_second = time(NULL) == t0;
    run(&o, in, len, seed, false, &some);
    CHECK(live == 0); /* everything freed */
    CHECK(peak < MEM_BOUND);

    /*
     * The scanner reads what jansson reads -- except for a raw NUL byte
     * between JSON tokens, which jansson 2.14's json_loadb skips like
     * whitespace ({"a":1<NUL>} loads) and the scanner refuses (RFC 8259 has
     * no such whitespace; the event is then "lost", i.e. charged as
     * observed).  Inputs with a NUL byte are left out of the comparison.
     */
    if (!memchr(in, '\0', len)) {
        CHECK(one.out.len == ref.out.len);
        CHECK(!same_second || one.out.len == 0 ||
              memcmp(one.out.p, ref.out.p, one.out.len) == 0);
        CHECK(one.cut == ref.cut && one.r.have_usage == ref.r.have_usage &&
              one.r.prompt_tokens == ref.r.prompt_tokens &&
              one.r.completion_tokens == ref.r.completion_tokens &&
              one.r.observed_output == ref.r.observed_output &&
              one.r.content_events == ref.r.content_events && one.r.done == ref.r.done &&
              one.r.lost == ref.r.lost);
    }

    CHECK(one.out.len == some.out.len);
    CHECK(one.out.len == 0 || memcmp(one.out.p, some.out.p, one.out.len) == 0);
    CHECK(one.cut == some.cut && one.r.cut == one.cut);
    CHECK(one.r.have_usage == some.r.have_usage && one.r.prompt_tokens == some.r.prompt_tokens &&
          one.r.completion_tokens == some.r.completion_tokens &&
          one.r.observed_output == some.r.observed_output &&
          one.r.content_events == some.r.content_events && one.r.done == some.r.done &&
          one.r.lost == some.r.lost);

    bool cut_on =
        o.sse && o.max_output > 0 && (o.api == TG_USAGE_CHAT || o.api == TG_USAGE_COMPLETIONS);
    bool transform = o.sse && (o.strip_usage || cut_on);
    if (!transform)
        CHECK(one.out.len == len && (len == 0 || memcmp(one.out.p, in, len) == 0));
    else if (!one.cut)
        CHECK(subseq(one.out.p, one.out.len, in, len));
    if (!cut_on)
        CHECK(!one.cut);
    if (one.cut)
        /* an oversized event is counted before the cut that follows it */
        CHECK(one.r.content_events <= o.max_output + 1 &&
              one.r.observed_output <= 4 * o.max_output + len);

    free(one.out.p);
    free(some.out.p);
    free(ref.out.p);
    return 0;
}
