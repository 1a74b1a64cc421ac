/*
 * test_usage.c - incremental usage extraction, strip and cut
 * (filters/usage.c).
 *
 * Every sample is fed whole, byte by byte, split at every byte boundary and
 * in random multi-splits; each way must forward the same bytes and give the
 * same result.  Pieces are copied into buffers of their exact size, so ASan
 * sees any read past a piece.  Samples are built like the demo upstream's
 * streams (tests/upstream/demo_upstream.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tg_test.h"

#include "filters/usage.h"
#include "proxy/err.h"
#include "proxy/mem.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHAT_HEAD                                                                                  \
    "{\"id\":\"chatcmpl-demo-7\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"     \
    "\"model\":\"demo-model\",\"choices\":["
#define COMPL_HEAD                                                                                 \
    "{\"id\":\"cmpl-demo-7\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":"     \
    "\"demo-model\",\"choices\":["

/* ---- a growable string ---- */

struct str {
    char *p;    /* bytes (NUL-terminated for convenience) */
    size_t len; /* used */
    size_t cap; /* allocated */
};

static void str_add(struct str *s, const char *p, size_t n)
{
    if (n >= ((size_t)1 << 40))
        abort(); /* never: tells -O3's overflow analysis n is bounded */
    if (s->len + n + 1 > s->cap) {
        s->cap = (s->len + n + 1) * 2;
        s->p = realloc(s->p, s->cap);
        assert_non_null(s->p);
    }
    memcpy(s->p + s->len, p, n);
    s->len += n;
    s->p[s->len] = '\0';
}

static void str_cat(struct str *s, const char *z)
{
    str_add(s, z, strlen(z));
}

static void str_printf(struct str *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void str_printf(struct str *s, const char *fmt, ...)
{
    char tmp[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof(tmp));
    str_add(s, tmp, (size_t)n);
}

static void str_free(struct str *s)
{
    free(s->p);
    s->p = NULL;
    s->len = s->cap = 0;
}

/* Line ends rewritten: every "\n" becomes eol. */
static struct str with_eol(const struct str *in, const char *eol)
{
    struct str o = {0};
    for (size_t i = 0; i < in->len; i++) {
        if (in->p[i] == '\n')
            str_cat(&o, eol);
        else
            str_add(&o, in->p + i, 1);
    }
    return o;
}

/* ---- sample streams ---- */

/*
 * A demo-style chat stream: n content events "tok<i> " (the first with the
 * role), a final event, the usage event when usage, then [DONE].  *usage_at
 * and *usage_len locate the usage event's bytes (for strip expectations).
 */
static struct str chat_stream(unsigned n, bool usage, size_t *usage_at, size_t *usage_len)
{
    struct str s = {0};
    for (unsigned i = 0; i < n; i++)
        str_printf(&s,
                   "data: " CHAT_HEAD "{\"index\":0,\"delta\":{%s\"content\":\"tok%u \"},"
                   "\"logprobs\":null,\"finish_reason\":null}]}\n\n",
                   i ? "" : "\"role\":\"assistant\",", i);
    str_cat(&s, "data: " CHAT_HEAD
                "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"length\"}]}\n\n");
    if (usage_at)
        *usage_at = s.len;
    if (usage)
        str_printf(&s,
                   "data: " CHAT_HEAD "],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":%u,"
                   "\"total_tokens\":%u}}\n\n",
                   n, 12 + n);
    if (usage_len)
        *usage_len = s.len - *usage_at;
    str_cat(&s, "data: [DONE]\n\n");
    return s;
}

/* The stream without [at, at+len). */
static struct str without(const struct str *s, size_t at, size_t len)
{
    struct str o = {0};
    str_add(&o, s->p, at);
    str_add(&o, s->p + at + len, s->len - at - len);
    return o;
}

/* ---- the harness ---- */

struct sink {
    struct str out; /* forwarded bytes */
    unsigned calls; /* emit calls */
    int fail;       /* return this from every emit when non-zero */
};

static int on_emit(void *arg, const char *p, size_t n)
{
    struct sink *k = arg;
    assert_true(n > 0);
    k->calls++;
    if (k->fail)
        return k->fail;
    str_add(&k->out, p, n);
    return 0;
}

struct outcome {
    struct str out;           /* forwarded bytes */
    struct tg_usage_result r; /* final result */
    bool cut_rv;              /* some call returned TG_USAGE_CUT */
};

/* Read SSE events with jansson instead of the scanner (the differential tests). */
static bool use_oracle;

/* Feed in pieces ending at cuts[0..ncuts) (ascending), then finish. */
static struct outcome feed_pieces(const struct tg_usage_opts *o, const char *in, size_t len,
                                  const size_t *cuts, size_t ncuts)
{
    struct tg_usage *u = tg_usage_new(o);
    struct sink k = {0};
    struct outcome oc = {0};
    size_t at = 0;

    assert_non_null(u);
    tg_usage_set_oracle(u, use_oracle);
    for (size_t c = 0; c <= ncuts; c++) {
        size_t end = c < ncuts ? cuts[c] : len;
        size_t n = end - at;
        char *piece = malloc(n ? n : 1);
        assert_non_null(piece);
        memcpy(piece, in + at, n);
        size_t before = k.out.len;
        int rv = tg_usage_feed(u, piece, n, on_emit, &k);
        free(piece);
        assert_true(rv == 0 || rv == TG_USAGE_CUT);
        if (oc.cut_rv) {
            assert_int_equal(rv, TG_USAGE_CUT);
            assert_int_equal(k.out.len, before); /* nothing after the cut */
        }
        if (rv == TG_USAGE_CUT)
            oc.cut_rv = true;
        at = end;
    }
    int rv = tg_usage_finish(u, on_emit, &k);
    assert_true(rv == 0 || rv == TG_USAGE_CUT);
    if (rv == TG_USAGE_CUT)
        oc.cut_rv = true;
    assert_int_equal(tg_usage_finish(u, on_emit, &k), oc.cut_rv ? TG_USAGE_CUT : TG_E_CLOSED);
    oc.r = *tg_usage_result(u);
    oc.out = k.out;
    if (oc.out.p == NULL)
        str_add(&oc.out, "", 0);
    tg_usage_free(u);
    return oc;
}

static void assert_same_result(const struct tg_usage_result *a, const struct tg_usage_result *b,
                               size_t split)
{
    if (a->have_usage != b->have_usage || a->prompt_tokens != b->prompt_tokens ||
        a->completion_tokens != b->completion_tokens || a->observed_output != b->observed_output ||
        a->content_events != b->content_events || a->done != b->done || a->cut != b->cut ||
        a->lost != b->lost)
        fail_msg("result differs at split %zu: usage %d/%d p %llu/%llu c %llu/%llu obs %llu/%llu "
                 "ev %llu/%llu done %d/%d cut %d/%d lost %d/%d",
                 split, a->have_usage, b->have_usage, (unsigned long long)a->prompt_tokens,
                 (unsigned long long)b->prompt_tokens, (unsigned long long)a->completion_tokens,
                 (unsigned long long)b->completion_tokens, (unsigned long long)a->observed_output,
                 (unsigned long long)b->observed_output, (unsigned long long)a->content_events,
                 (unsigned long long)b->content_events, a->done, b->done, a->cut, b->cut, a->lost,
                 b->lost);
}

static void assert_same_out(const struct str *got, const char *want, size_t want_len, size_t split)
{
    if (got->len != want_len || memcmp(got->p, want, want_len) != 0) {
        size_t i = 0;
        while (i < got->len && i < want_len && got->p[i] == want[i])
            i++;
        fail_msg("split %zu: forwarded %zu bytes, want %zu; first difference at %zu", split,
                 got->len, want_len, i);
    }
}

static uint64_t rng = 0x9e3779b97f4a7c15u;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * Feed in at every split: whole, at each boundary, byte by byte, random
 * multi-splits.  The forwarded bytes must be want (NULL: the input itself)
 * each time, and the results identical.  Returns the one-shot outcome.
 */
static struct outcome check_splits(const struct tg_usage_opts *o, const char *in, size_t len,
                                   const char *want, size_t want_len)
{
    struct outcome ref = feed_pieces(o, in, len, NULL, 0);
    if (want == NULL) {
        want = in;
        want_len = len;
    }
    assert_same_out(&ref.out, want, want_len, 0);
    for (size_t k = 1; k < len; k++) {
        struct outcome oc = feed_pieces(o, in, len, &k, 1);
        assert_same_out(&oc.out, want, want_len, k);
        assert_same_result(&ref.r, &oc.r, k);
        assert_int_equal(ref.cut_rv, oc.cut_rv);
        str_free(&oc.out);
    }
    if (len > 1) {
        size_t *all = malloc((len - 1) * sizeof(size_t));
        assert_non_null(all);
        for (size_t k = 1; k < len; k++)
            all[k - 1] = k;
        struct outcome oc = feed_pieces(o, in, len, all, len - 1);
        assert_same_out(&oc.out, want, want_len, 1);
        assert_same_result(&ref.r, &oc.r, 1);
        str_free(&oc.out);
        for (int t = 0; t < 200; t++) {
            size_t nc = (size_t)(next_rand() % 12) + 1, cuts[12];
            for (size_t c = 0; c < nc; c++)
                cuts[c] = (size_t)(next_rand() % len);
            qsort(cuts, nc, sizeof(size_t), cmp_size);
            oc = feed_pieces(o, in, len, cuts, nc);
            assert_same_out(&oc.out, want, want_len, cuts[0]);
            assert_same_result(&ref.r, &oc.r, cuts[0]);
            str_free(&oc.out);
        }
        free(all);
    }
    return ref;
}

static const char *const eols[] = {"\n", "\r\n", "\r"};

/* ---- SSE: pass-through ---- */

static void test_chat_passthrough(void **state)
{
    struct tg_usage_opts o = {.api = TG_USAGE_CHAT, .sse = true};
    struct str s = chat_stream(5, true, NULL, NULL);

    for (size_t e = 0; e < 3; e++) {
        struct str v = with_eol(&s, eols[e]);
        struct outcome oc = check_splits(&o, v.p, v.len, NULL, 0);
        assert_true(oc.r.have_usage);
        assert_int_equal(oc.r.prompt_tokens, 12);
        assert_int_equal(oc.r.completion_tokens, 5);
        assert_int_equal(oc.r.content_events, 5);
        assert_int_equal(oc.r.observed_output, 10); /* "tokN " = 5 chars: 2 tokens each */
        assert_true(oc.r.done);
        assert_false(oc.r.cut);
        assert_false(oc.r.lost);
        str_free(&oc.out);
        str_free(&v);
    }
    str_free(&s);
}

/* Pass-through hands each piece on with one emit of the caller's own pointer. */
static const char *seen_ptr;
static int on_emit_ptr(void *arg, const char *p, size_t n)
{
    (*(unsigned *)arg)++;
    seen_ptr = p;
    return 0;
}

static void test_passthrough_zero_copy(void **state)
{
    static const struct tg_usage_opts opts[] = {
        {.api = TG_USAGE_CHAT, .sse = true},
        {.api = TG_USAGE_CHAT, .sse = false},
        {.api = TG_USAGE_EMBEDDINGS, .sse = false},
    };
    struct str s = chat_stream(3, true, NULL, NULL);
    for (size_t t = 0; t < 3; t++) {
        struct tg_usage *u = tg_usage_new(&opts[t]);
        unsigned calls = 0;
        assert_non_null(u);
        for (size_t at = 0; at < s.len; at += 37) {
            size_t n = s.len - at < 37 ? s.len - at : 37;
            unsigned before = calls;
            assert_int_equal(tg_usage_feed(u, s.p + at, n, on_emit_ptr, &calls), 0);
            assert_int_equal(calls, before + 1);
            assert_ptr_equal(seen_ptr, s.p + at);
        }
        assert_int_equal(tg_usage_finish(u, on_emit_ptr, &calls), 0);
        tg_usage_free(u);
    }
    str_free(&s);
}

static void test_fields_and_comments(void **state)
{
    /* comments, event:/id:/retry:, a data field split over lines, "data:" without a space,
     * a BOM, a field named "datax" and one named "dat" (both ignored) */
    const char *in =
        "\xEF\xBB\xBF: hello\n"
        "retry: 1000\n\n"
        "event: message\nid: 1\ndata: " CHAT_HEAD "{\"index\":0,\"delta\":{\"content\":\n"
        "data:\"h\xC3\xA9llo w\xF0\x9F\x98\x80rld\"},\"finish_reason\":null}]}\n"
        "datax: {\"usage\":{\"prompt_tokens\":1000}}\n"
        "dat: nothing\n\n"
        ": keep-alive\n\n"
        "id: 2\ndata: " CHAT_HEAD "],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n"
        "data\n\n" /* a data field with no colon: empty data, dispatches nothing */
        "data: [DONE]\n\n";
    struct tg_usage_opts o = {.api = TG_USAGE_CHAT, .sse = true};
    struct str s = {0};
    str_cat(&s, in);

    for (size_t e = 0; e < 3; e++) {
        struct str v = with_eol(&s, eols[e]);
        struct outcome oc = check_splits(&o, v.p, v.len, NULL, 0);
        assert_true(oc.r.have_usage);
        assert_int_equal(oc.r.prompt_tokens, 3);
        assert_int_equal(oc.r.completion_tokens, 4);
        assert_int_equal(oc.r.content_events, 1);
        assert_int_equal(oc.r.observed_output, 3); /* "héllo w😀rld": 11 code points */
        assert_true(oc.r.done);
        assert_false(oc.r.lost);
        str_free(&oc.out);
        str_free(&v);
    }
    str_free(&s);
}

static void test_completions_and_reasoning(void **state)
{
    struct tg_usage_opts o = {.api = TG_USAGE_COMPLETIONS, .sse = true};
    const char *in =
        "data: " COMPL_HEAD "{\"text\":\"abcdefghi\",\"index\":0}]}\n\n"
        "data: " COMPL_HEAD "{\"text\":\"\",\"index\":0,\"finish_reason\":\"stop\"}]}\n\n"
        "data: " COMPL_HEAD "],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}\n\n"
        "data: [DONE]\n\n";
    struct outcome oc = check_splits(&o, in, strlen(in), NULL, 0);
    assert_int_equal(oc.r.content_events, 1);
    assert_int_equal(oc.r.observed_output, 3);
    assert_int_equal(oc.r.prompt_tokens, 2);
    assert_int_equal(oc.r.completion_tokens, 3);
    str_free(&oc.out);

    /* chat: empty content is not content; reasoning, refusal and tool arguments are */
    struct tg_usage_opts oc2 = {.api = TG_USAGE_CHAT, .sse = true};
    const char *in2 =
        "data: " CHAT_HEAD "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"
        "data: " CHAT_HEAD "{\"index\":0,\"delta\":{\"reasoning_content\":\"x\"}}]}\n\n"
        "data: " CHAT_HEAD "{\"index\":0,\"delta\":{\"refusal\":\"no\"}}]}\n\n"
        "data: " CHAT_HEAD "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
        "{\"arguments\":\"{\\\"a\\\":1234567}\"}}]}}]}\n\n"
        "data: " CHAT_HEAD "{\"index\":0,\"delta\":{\"content\":null}}]}\n\n";
    oc = check_splits(&oc2, in2, strlen(in2), NULL, 0);
    assert_int_equal(oc.r.content_events, 3);
    assert_int_equal(oc.r.observed_output, 1 + 1 + 4); /* {"a":1234567} = 13 chars */
    assert_false(oc.r.have_usage);
    assert_false(oc.r.done);
    assert_false(oc.r.lost);
    str_free(&oc.out);
}

static void test_responses_sse(void **state)
{
    struct tg_usage_opts o = {.api = TG_USAGE_RESPONSES, .sse = true, .strip_usage = true};
    const char *in =
        "event: response.created\ndata: "
        "{\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\","
        "\"usage\":null}}\n\n"
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\","
        "\"item_id\":\"m1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hello\"}\n\n"
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\","
        "\"delta\":\" there, friend\"}\n\n"
        "event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\","
        "\"text\":\"Hello there, friend\"}\n\n"
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":"
        "\"resp_1\",\"output\":[],\"usage\":{\"input_tokens\":9,\"output_tokens\":5,"
        "\"total_tokens\":14}}}\n\n";
    /* strip_usage never drops anything in the responses API */
    struct outcome oc = check_splits(&o, in, strlen(in), NULL, 0);
    assert_true(oc.r.have_usage);
    assert_int_equal(oc.r.prompt_tokens, 9);
    assert_int_equal(oc.r.completion_tokens, 5);
    assert_int_equal(oc.r.content_events, 2);
    assert_int_equal(oc.r.observed_output, 2 + 4);
    assert_true(oc.r.done);
    assert_false(oc.r.lost);
    str_free(&oc.out);
}

/* ---- SSE: strip ---- */

static void test_strip_usage(void **state)
{
    size_t at, n;
    struct str s = chat_stream(4, true, &at, &n);
    struct tg_usage_opts o = {.api = TG_USAGE_CHAT, .sse = true, .strip_usage = true};

    for (size_t e = 0; e < 3; e++) {
        /* the usage event's place in the rewritten stream */
        struct str head = {0}, ev = {0};
        str_add(&head, s.p, at);
        str_add(&ev, s.p + at, n);
        struct str v = with_eol(&s, eols[e]), vh = with_eol(&head, eols[e]),
                   ve = with_eol(&ev, eols[e]);
        struct str want = without(&v, vh.len, ve.len);
        struct outcome oc = check_splits(&o, v.p, v.len, want.p, want.len);
        assert_true(oc.r.have_usage);
        assert_int_equal(oc.r.completion_tokens, 4);
        assert_int_equal(oc.r.content_events, 4);
        assert_true(oc.r.done);
        assert_false(oc.r.lost);
        str_free(&oc.out);
        str_free(&want);
        str_free(&v);
        str_free(&vh);
        str_free(&ve);
        str_free(&head);
        str_free(&ev);
    }
    str_free(&s);

    /* An event with content and usage is kept; usage-only with a non-empty usage and
     * choices missing is kept; a usage-only event at the end without its blank line is
     * stripped at finish. */
    const char *keep = "data: " CHAT_HEAD "{\"index\":0,\"delta\":{\"content\":\"a\"}}],"
                       "\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n"
                       "data: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2}}\n\n";
    const char *tail =
        "data: " CHAT_HEAD "],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":3}}";
    struct str in = {0};
    str_cat(&in, keep);
    str_cat(&in, tail);
    struct outcome oc = check_splits(&o, in.p, in.len, keep, strlen(keep));
    assert_int_equal(oc.r.prompt_tokens, 3);
    assert_false(oc.r.done);
    str_free(&oc.out);
    str_free(&in);

    /* Without strip_usage the same transform path (max_output) keeps the usage event. */
    struct tg_usage_opts o2 = {.api = TG_USAGE_CHAT, .sse = true, .max_output = 100};
    s = chat_stream(4, true, NULL, NULL);
    oc = check_splits(&o2, s.p, s.len, NULL, 0);
    assert_false(oc.r.cut);
    assert_int_equal(oc.r.completion_tokens, 4);
    str_free(&oc.out);
    str_free(&s);
}

/* ---- SSE: cut ---- */

/* Split a synthesized tail into its events and parse each. */
static size_t parse_tail(const char *p, size_t n, json_t **ev, size_t max)
{
    size_t k = 0;
    while (n > 0) {
        assert_true(n > 6 && memcmp(p, "data: ", 6) == 0);
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        assert_true(k < max);
        size_t len = (size_t)(end - p) - 6;
        if (len == 6 && memcmp(p + 6, "[DONE]", 6) == 0) {
            ev[k++] = NULL;
        } else {
            json_error_t err;
            ev[k] = json_loadb(p + 6, len, JSON_REJECT_DUPLICATES, &err);
            if (ev[k] == NULL)
                fail_msg("tail event %zu: %s", k, err.text);
            k++;
        }
        n -= (size_t)(end + 2 - p);
        p = end + 2;
    }
    return k;
}

static void check_head(json_t *e, const char *id, const char *object, const char *model)
{
    assert_string_equal(json_string_value(json_object_get(e, "id")), id);
    assert_string_equal(json_string_value(json_object_get(e, "object")), object);
    assert_string_equal(json_string_value(json_object_get(e, "model")), model);
    assert_int_equal(json_integer_value(json_object_get(e, "created")), 1700000000);
}

static void test_cut_chat(void **state)
{
    struct str s = chat_stream(10, true, NULL, NULL);
    /* the first 3 content events are forwarded: find the start of the 4th */
    const char *p = s.p;
    for (int i = 0; i < 3; i++)
        p = strstr(p, "\n\n") + 2;
    size_t keep = (size_t)(p - s.p);

    for (int strip = 0; strip < 2; strip++) {
        struct tg_usage_opts o = {.api = TG_USAGE_CHAT,
                                  .sse = true,
                                  .max_output = 3,
                                  .prompt_estimate = 40,
                                  .strip_usage = strip};
        struct outcome ref = feed_pieces(&o, s.p, s.len, NULL, 0);
        assert_true(ref.cut_rv);
        assert_true(ref.r.cut);
        assert_int_equal(ref.r.content_events, 3);
        assert_int_equal(ref.r.observed_output, 6);
        assert_false(ref.r.have_usage);
        assert_false(ref.r.done);
        assert_memory_equal(ref.out.p, s.p, keep);

        json_t *ev[4];
        size_t k = parse_tail(ref.out.p + keep, ref.out.len - keep, ev, 4);
        assert_int_equal(k, strip ? 2 : 3);
        check_head(ev[0], "chatcmpl-demo-7", "chat.completion.chunk", "demo-model");
        json_t *c0 = json_array_get(json_object_get(ev[0], "choices"), 0);
        assert_string_equal(json_string_value(json_object_get(c0, "finish_reason")), "length");
        assert_int_equal(json_object_size(json_object_get(c0, "delta")), 0);
        assert_true(json_is_null(json_object_get(c0, "logprobs")));
        if (!strip) {
            check_head(ev[1], "chatcmpl-demo-7", "chat.completion.chunk", "demo-model");
            assert_int_equal(json_array_size(json_object_get(ev[1], "choices")), 0);
            json_t *us = json_object_get(ev[1], "usage");
            assert_int_equal(json_integer_value(json_object_get(us, "prompt_tokens")), 40);
            assert_int_equal(json_integer_value(json_object_get(us, "completion_tokens")), 6);
            assert_int_equal(json_integer_value(json_object_get(us, "total_tokens")), 46);
        }
        assert_null(ev[k - 1]); /* [DONE] */
        for (size_t i = 0; i < k; i++)
            json_decref(ev[i]);

        struct outcome oc = check_splits(&o, s.p, s.len, ref.out.p, ref.out.len);
        str_free(&oc.out);
        str_free(&ref.out);
    }
    str_free(&s);
}

static void test_cut_rules(void **state)
{
    struct str s = {0}, want = {0};
    const char *ev = "data: " COMPL_HEAD "{\"text\":\"0123456789012345678901234567890123456789\","
                     "\"index\":0}]}\r\n\r\n";
    for (int i = 0; i < 6; i++)
        str_cat(&s, ev);
    str_cat(&s, "data: [DONE]\r\n\r\n");
    struct tg_usage_opts o = {
        .api = TG_USAGE_COMPLETIONS, .sse = true, .max_output = 5, .prompt_estimate = 7};
    str_cat(&want, ev);
    str_cat(&want, ev);
    str_cat(&want, "data: {\"id\":\"cmpl-demo-7\",\"object\":\"text_completion\",\"created\":"
                   "1700000000,\"model\":\"demo-model\",\"choices\":[{\"text\":\"\",\"index\":0,"
                   "\"logprobs\":null,\"finish_reason\":\"length\"}]}\n\n"
                   "data: {\"id\":\"cmpl-demo-7\",\"object\":\"text_completion\",\"created\":"
                   "1700000000,\"model\":\"demo-model\",\"choices\":[],\"usage\":{\"prompt_tokens\""
                   ":7,\"completion_tokens\":20,\"total_tokens\":27}}\n\n"
                   "data: [DONE]\n\n");
    struct outcome oc = check_splits(&o, s.p, s.len, want.p, want.len);
    assert_true(oc.r.cut);
    assert_true(oc.cut_rv);
    assert_int_equal(oc.r.content_events, 2);
    assert_int_equal(oc.r.observed_output, 20);
    str_free(&oc.out);

    /* max_output not reached: no cut, bytes untouched */
    o.max_output = 15;
    oc = check_splits(&o, s.p, s.len, NULL, 0);
    assert_false(oc.r.cut);
    assert_int_equal(oc.r.observed_output, 60);
    str_free(&oc.out);
    str_free(&s);
    str_free(&want);
}

/* Upstream strings are escaped in the synthesized events. */
static void test_cut_escapes(void **state)
{
    const char *in =
        "data: {\"id\":\"a\\\"b\\\\c\\u0001\xC3\xA9\",\"object\":\"chat.completion.chunk\","
        "\"created\":5,\"model\":\"m\\n\",\"choices\":[{\"index\":0,\"delta\":"
        "{\"content\":\"x\"}}]}\n\n";
    struct str s = {0};
    str_cat(&s, in);
    str_cat(&s, in);
    struct tg_usage_opts o = {.api = TG_USAGE_CHAT, .sse = true, .max_output = 1};
    struct outcome oc = feed_pieces(&o, s.p, s.len, NULL, 0);
    assert_true(oc.r.cut);
    json_t *ev[4];
    size_t k = parse_tail(oc.out.p + strlen(in), oc.out.len - strlen(in), ev, 4);
    assert_int_equal(k, 3);
    assert_string_equal(json_string_value(json_object_get(ev[0], "id")), "a\"b\\c\x01\xC3\xA9");
    assert_string_equal(json_string_value(json_object_get(ev[1], "model")), "m\n");
    assert_int_equal(json_integer_value(json_object_get(ev[1], "created")), 5);
    for (size_t i = 0; i < k; i++)
        json_decref(ev[i]);
    str_free(&oc.out);
    str_free(&s);
}

/* ---- SSE: damage ---- */

static void test_oversized_event(void **state)
{
    struct str big = {0}, s = {0};
    for (int i = 0; i < 70 * 1024 / 8; i++)
        str_cat(&big, "abcdefgh");
    str_cat(&s, "data: " CHAT_HEAD "{\"index\":0,\"delta\":{\"content\":\"");
    str_add(&s, big.p, big.len);
    str_cat(&s, "\"}}]}\n\n");
    str_cat(&s, "data: " CHAT_HEAD "],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n"
                "data: [DONE]\n\n");
    static const struct tg_usage_opts opts[] = {
        {.api = TG_USAGE_CHAT, .sse = true},
        {.api = TG_USAGE_CHAT, .sse = true, .max_output = 1000000},
    };
    for (size_t t = 0; t < 2; t++) {
        for (size_t step = 1000; step < s.len * 2; step *= 7) {
            size_t cuts[200], nc = 0;
            for (size_t at = step; at < s.len && nc < 200; at += step)
                cuts[nc++] = at;
            struct outcome oc = feed_pieces(&opts[t], s.p, s.len, cuts, nc);
            assert_same_out(&oc.out, s.p, s.len, step);
            assert_true(oc.r.lost);
            assert_true(oc.r.have_usage); /* reading resumed at the next event */
            assert_int_equal(oc.r.prompt_tokens, 3);
            assert_true(oc.r.done);
            assert_int_equal(oc.r.content_events, 1); /* counted from its data's characters */
            assert_true(oc.r.observed_output >= 70 * 1024 / 4);
            str_free(&oc.out);
        }
    }
    /* strip mode: the oversized event is forwarded, the usage event still stripped */
    struct tg_usage_opts o = {.api = TG_USAGE_CHAT, .sse = true, .strip_usage = true};
    const char *u = strstr(s.p, "data: " CHAT_HEAD "],");
    size_t ulen = strstr(u, "\n\n") + 2 - u;
    struct str want = without(&s, (size_t)(u - s.p), ulen);
    struct outcome oc = feed_pieces(&o, s.p, s.len, NULL, 0);
    assert_same_out(&oc.out, want.p, want.len, 0);
    assert_true(oc.r.lost);
    str_free(&oc.out);

    /* an oversized run of comment lines, in transform mode, at small pieces */
    struct str c = {0};
    for (int i = 0; i < 140 * 1024 / 16; i++)
        str_cat(&c, ": 0123456789abc\n");
    str_cat(&c, "\n"); /* ends the comment-only event, oversized: forwarded */
    size_t clen = c.len;
    str_cat(&c,
            "data: " CHAT_HEAD "],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n");
    size_t cuts[64], nc = 0;
    for (size_t at = 4099; at < c.len && nc < 64; at += 4099)
        cuts[nc++] = at;
    oc = feed_pieces(&o, c.p, c.len, cuts, nc);
    assert_same_out(&oc.out, c.p, clen, 4099); /* the usage event after it is stripped */
    assert_true(oc.r.lost);
    assert_true(oc.r.have_usage);
    str_free(&oc.out);

    str_free(&c);
    str_free(&want);
    str_free(&big);
    str_free(&s);
}

static void test_bad_json_and_done(void **state)
{
    const char *in = "data: {\"choices\":[{\"delta\":{\"content\":\"abc\"}}]\n\n" /* truncated */
                     "data: {\"a\":1,\"a\":2}\n\n"                                /* duplicate */
                     "data: [1,2]\n\n"
                     "data: " CHAT_HEAD "{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n"
                     "data: [DONE]"; /* no blank line */
    struct tg_usage_opts o = {.api = TG_USAGE_CHAT, .sse = true, .strip_usage = true};
    struct outcome oc = check_splits(&o, in, strlen(in), NULL, 0);
    assert_true(oc.r.lost);
    assert_true(oc.r.done); /* the last event counts at finish */
    assert_int_equal(oc.r.content_events, 1);
    assert_false(oc.r.have_usage);
    str_free(&oc.out);

    /* bad usage values */
    const char *bad = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":-1}}\n\n"
                      "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":\"3\"}}\n\n";
    oc = check_splits(&o, bad, strlen(bad), "", 0); /* stripped: usage-only events */
    assert_true(oc.r.lost);
    assert_false(oc.r.have_usage);
    str_free(&oc.out);

    /* an interrupted stream: no [DONE], no usage */
    struct str s = chat_stream(3, false, NULL, NULL);
    s.len -= strlen("data: [DONE]\n\n") + 20;
    oc = check_splits(&o, s.p, s.len, NULL, 0);
    assert_false(oc.r.done);
    assert_false(oc.r.have_usage);
    assert_int_equal(oc.r.content_events, 3);
    assert_int_equal(oc.r.observed_output, 6);
    str_free(&oc.out);
    str_free(&s);
}

/* ---- SSE: the event scanner against jansson ---- */

/* One event with data d: each LF in d starts another data line (SSE joins them with LF). */
static void add_event(struct str *s, const char *d, size_t n)
{
    str_cat(s, "data: ");
    for (size_t i = 0; i < n; i++) {
        if (d[i] == '\n')
            str_cat(s, "\ndata: ");
        else
            str_add(s, d + i, 1);
    }
    str_cat(s, "\n\n");
}

/*
 * The scanner and jansson (tg_usage_set_oracle) on one event's data, for
 * every API and in pass-through, strip and cut mode: the event, then two
 * content events of every API without identity, so that a cut writes the id,
 * model and created that only the event under test can give.  Results and
 * forwarded bytes must be identical (the bytes only when both runs fell in
 * the same second, as a cut without `created` writes the clock).
 */
static void check_oracle(const char *d, size_t n)
{
    static const char x[] = "{\"choices\":[{\"delta\":{\"content\":\"ab\"},\"text\":\"ab\"}],"
                            "\"type\":\"response.output_text.delta\",\"delta\":\"ab\"}";
    static const struct tg_usage_opts modes[] = {
        {.sse = true},
        {.sse = true, .strip_usage = true},
        {.sse = true, .max_output = 1, .prompt_estimate = 9},
        {.sse = true, .strip_usage = true, .max_output = 1},
    };
    struct str s = {0};

    add_event(&s, d, n);
    add_event(&s, x, strlen(x));
    add_event(&s, x, strlen(x));
    str_cat(&s, "data: [DONE]\n\n");
    for (int api = TG_USAGE_CHAT; api <= TG_USAGE_RESPONSES; api++) {
        for (size_t m = 0; m < sizeof(modes) / sizeof(modes[0]); m++) {
            struct tg_usage_opts o = modes[m];
            o.api = (enum tg_usage_api)api;
            time_t t0 = time(NULL);
            use_oracle = false;
            struct outcome a = feed_pieces(&o, s.p, s.len, NULL, 0);
            use_oracle = true;
            struct outcome b = feed_pieces(&o, s.p, s.len, NULL, 0);
            use_oracle = false;
            bool same_second = time(NULL) == t0;
            if (a.r.have_usage != b.r.have_usage || a.r.lost != b.r.lost ||
                a.r.content_events != b.r.content_events || a.r.cut != b.r.cut)
                print_message("scanner and jansson differ (api %d, mode %zu) on: %.*s\n", api, m,
                              (int)n, d);
            assert_same_result(&a.r, &b.r, (size_t)api * 10 + m);
            if (same_second)
                assert_same_out(&a.out, b.out.p, b.out.len, (size_t)api * 10 + m);
            else
                assert_int_equal(a.out.len, b.out.len);
            str_free(&a.out);
            str_free(&b.out);
        }
    }
    str_free(&s);
}

struct scan_case {
    enum tg_usage_api api;   /* the reader's API */
    const char *data;        /* one event's data */
    bool lost;               /* want: result.lost */
    uint64_t events;         /* want: content_events */
    uint64_t observed;       /* want: observed_output */
    bool usage;              /* want: have_usage */
    uint64_t prompt, compl ; /* want: the usage */
    bool done;               /* want: done */
};

#define C TG_USAGE_CHAT
#define CO TG_USAGE_COMPLETIONS
#define E TG_USAGE_EMBEDDINGS
#define R TG_USAGE_RESPONSES
static const struct scan_case scan_cases[] = {
    /* escapes: a surrogate pair is one character, every escape is one */
    {C,
     "{\"choices\":[{\"delta\":{\"content\":\"\\ud83d\\ude00\\uD83D\\uDE00\\ud83d\\ude00"
     "\\ud83d\\ude00\"}}]}",
     false, 1, 1, false, 0, 0, false},
    {C, "{\"choices\":[{\"delta\":{\"content\":\"\\n\\t\\\"\\\\\\/\\b\\f\\r\\u00e9\"}}]}", false, 1,
     3, false, 0, 0, false},
    {C,
     "{\"choices\":[{\"delta\":{\"content\":\"\xC3\xA9\xE6\xBC\xA2\xF0\x9F\x98\x80"
     "ab\"}}]}",
     false, 1, 2, false, 0, 0, false},
    {C, "{\"choices\":[{\"delta\":{\"content\":\"\"}}]}", false, 0, 0, false, 0, 0, false},
    {C,
     "{\"choices\":[{\"delta\":{\"content\":\"a\",\"reasoning_content\":\"bcd\","
     "\"refusal\":\"e\"}},{\"delta\":{\"content\":\"fghij\"}}]}",
     false, 1, 3, false, 0, 0, false},
    /* keys at the wrong depth, or inside strings */
    {C,
     "{\"choices\":[{\"delta\":{\"content\":\"hi\"},\"usage\":{\"prompt_tokens\":9,"
     "\"completion_tokens\":1}}]}",
     false, 1, 1, false, 0, 0, false},
    {C,
     "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"content\","
     "\"arguments\":\"{\\\"content\\\":\\\"xx\\\"}\"}}]}}]}",
     false, 1, 4, false, 0, 0, false},
    {C,
     "{\"x\":{\"choices\":[{\"delta\":{\"content\":\"abc\"}}],\"usage\":{\"prompt_tokens\":1}},"
     "\"choices\":[{\"text\":\"abc\",\"content\":\"abc\",\"delta\":{\"x\":{\"content\":\"a\"}}}]}",
     false, 0, 0, false, 0, 0, false},
    {C, "{\"choices\":{\"delta\":{\"content\":\"abc\"}},\"usage\":{\"prompt_tokens\":2}}", false, 0,
     0, true, 2, 0, false},
    /* usage */
    {C, "{\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}", false, 0, 0,
     true, 3, 4, false},
    {C,
     "{\"usage\":{\"completion_tokens\":null,\"prompt_tokens\":3,\"total_tokens\":3.5},"
     "\"choices\":[]}",
     false, 0, 0, true, 3, 0, false},
    {C, "{\"choices\":[],\"usage\":null}", false, 0, 0, false, 0, 0, false},
    {C, "{\"choices\":[],\"usage\":{\"prompt_tokens\":1.0}}", true, 0, 0, false, 0, 0, false},
    {C, "{\"choices\":[],\"usage\":{\"prompt_tokens\":null}}", true, 0, 0, false, 0, 0, false},
    {C, "{\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":-4}}", true, 0, 0,
     false, 0, 0, false},
    {C, "{\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":[4]}}", true, 0, 0,
     false, 0, 0, false},
    {C, "{\"choices\":[],\"usage\":{\"completion_tokens\":4}}", true, 0, 0, false, 0, 0, false},
    {C, "{\"choices\":[],\"usage\":[]}", true, 0, 0, false, 0, 0, false},
    {C, "{\"choices\":[],\"usage\":\"x\"}", true, 0, 0, false, 0, 0, false},
    {C, "{\"choices\":[],\"usage\":{\"prompt_tokens\":9223372036854775807}}", false, 0, 0, true,
     9223372036854775807u, 0, false},
    /* keys with escapes (jansson decides: the scanner hands them over) */
    {C, "{\"choices\":[{\"delta\":{\"cont\\u0065nt\":\"abcde\"}}]}", false, 1, 2, false, 0, 0,
     false},
    {C, "{\"choices\":[],\"a\":1,\"\\u0061\":2}", true, 0, 0, false, 0, 0, false},
    {C, "{\"choices\":[{\"delta\":{\"content\":\"a\",\"content\":\"b\"}}]}", true, 0, 0, false, 0,
     0, false},
    {C, "{\"choices\":[],\"choices\":[]}", true, 0, 0, false, 0, 0, false},
    /* whitespace and numbers */
    {C, " \t\n{ \"choices\" :\n[ { \"delta\" : { \"content\" : \"hey\" } } ] ,\"n\":\t1 }\n ",
     false, 1, 1, false, 0, 0, false},
    {C,
     "{\"choices\":[{\"delta\":{\"content\":\"ab\"}}],\"n\":[0,-0,1.5e3,2E-2,-1e-400,1e308,"
     "0.5E+2,9223372036854775807,-9223372036854775808,true,false,null,{},[]]}",
     false, 1, 1, false, 0, 0, false},
    {C, "{\"n\":1.7976931348623157e308,\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}", false, 1,
     1, false, 0, 0, false},
    {C, "{\"n\":123456789012345678901234567890.5,\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}",
     false, 1, 1, false, 0, 0, false},
    {C, "{\"n\":1e309,\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}", true, 0, 0, false, 0, 0,
     false},
    {C, "{\"n\":-1.8e308,\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}", true, 0, 0, false, 0, 0,
     false},
    {C, "{\"n\":9223372036854775808,\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}", true, 0, 0,
     false, 0, 0, false},
    {C, "{\"n\":-9223372036854775809,\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}", true, 0, 0,
     false, 0, 0, false},
    /* other APIs */
    {CO, "{\"choices\":[{\"text\":\"hello\",\"delta\":{\"content\":\"zzzzzzzzz\"}}]}", false, 1, 2,
     false, 0, 0, false},
    {E, "{\"choices\":[{\"text\":\"hello\"}],\"usage\":{\"prompt_tokens\":7}}", false, 0, 0, true,
     7, 0, false},
    {R, "{\"delta\":\"hello\",\"type\":\"response.output_text.delta\"}", false, 1, 2, false, 0, 0,
     false},
    {R, "{\"type\":\"response.output_text\\u002edelta\",\"delta\":\"abc\"}", false, 1, 1, false, 0,
     0, false},
    {R, "{\"type\":\"response.refusal.delta\",\"delta\":5}", false, 0, 0, false, 0, 0, false},
    {R,
     "{\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":5,"
     "\"output_tokens\":7}},\"usage\":{\"input_tokens\":1}}",
     false, 0, 0, true, 5, 7, true},
    {R, "{\"response\":{\"usage\":{\"input_tokens\":5}},\"type\":\"response.failed\"}", false, 0, 0,
     true, 5, 0, true},
    {R, "{\"type\":\"response.incomplete\",\"response\":{\"usage\":null}}", false, 0, 0, false, 0,
     0, true},
    {R, "{\"type\":\"response.created\",\"response\":{\"usage\":{\"input_tokens\":\"x\"}}}", false,
     0, 0, false, 0, 0, false},
    /* identity: escapes decoded, too long not kept */
    {C, "{\"id\":\"a\\u00e9\\\"\\ud83d\\ude00\",\"model\":\"m\\/1\",\"created\":-5,\"choices\":[]}",
     false, 0, 0, false, 0, 0, false},
    {C,
     "{\"created\":1.5,\"model\":5,\"id\":\"0123456789012345678901234567890123456789012345678901"
     "23456789012345678901234567890123456789012345678901234567890123456789012345678901234567890"
     "123456789012345678901234567890123456789012345678901234567890123456789\",\"choices\":[]}",
     false, 0, 0, false, 0, 0, false},
};
#undef C
#undef CO
#undef E
#undef R

/* Invalid JSON: every one sets lost and counts nothing. */
static const char *const bad_events[] = {
    "{\"choices\":[}",
    "{\"choices\":[{\"delta\":{\"content\":\"abc\"}}]",
    "{\"choices\":[{\"delta\":{\"content\":\"abc\"}}]}}",
    "{\"choices\":[{\"delta\":{\"content\":\"abc\"}},]}",
    "{\"a\":1,}",
    "{,}",
    "{\"a\" 1}",
    "{\"a\":1 \"b\":2}",
    "{\"a\"::1}",
    "{\"a\":}",
    "{1:2}",
    "{'a':1}",
    "{\"a\":\"x}",
    "{\"a\":\"\\x\"}",
    "{\"a\":\"\\u12\"}",
    "{\"a\":\"\\u12g4\"}",
    "{\"a\":\"\\ud800\"}",
    "{\"a\":\"\\udc00\"}",
    "{\"a\":\"\\ud800\\u0041\"}",
    "{\"a\":\"\\ud800\\ud800\"}",
    "{\"a\":\"\\ud800x\"}",
    "{\"a\":\"\\u0000\"}",
    "{\"\\u0000\":1}",
    "{\"a\":\"raw\ttab\"}",
    "{\"a\":\"\xC3\x28\"}",
    "{\"a\":\"\xED\xA0\x80\"}",
    "{\"a\":\"\xF4\x90\x80\x80\"}",
    "{\"a\":\"\xC0\xAF\"}",
    "{\"a\":\"\xE0\x80\xAF\"}",
    "{\"a\":\"\xF0\x9F\x98\"}",
    "{\"a\":\"\x80\"}",
    "{\"a\":\"\xFF\"}",
    "{\"a\":01}",
    "{\"a\":1.}",
    "{\"a\":.5}",
    "{\"a\":-}",
    "{\"a\":+1}",
    "{\"a\":1e}",
    "{\"a\":1e+}",
    "{\"a\":0x1}",
    "{\"a\":1.5.3}",
    "{\"a\":tru}",
    "{\"a\":truex}",
    "{\"a\":nul}",
    "{\"a\":NaN}",
    "{\"a\":1}x",
    "{\"a\":1}{}",
    "[1]",
    "[{\"choices\":[]}]",
    "\"x\"",
    "5",
    "{",
    "\xEF\xBB\xBF{}",
    "{\"choices\":[],\"usage\":{\"prompt_tokens\":3}",
    "{\"choices\":[{\"delta\":{\"content\":\"abc\"}}],\"usage\":nul}",
};

static void test_scanner_cases(void **state)
{
    char name[64];
    for (size_t i = 0; i < sizeof(scan_cases) / sizeof(scan_cases[0]); i++) {
        const struct scan_case *c = &scan_cases[i];
        struct tg_usage_opts o = {.api = c->api, .sse = true};
        struct str s = {0};
        add_event(&s, c->data, strlen(c->data));
        struct outcome oc = feed_pieces(&o, s.p, s.len, NULL, 0);
        snprintf(name, sizeof(name), "case %zu", i);
        if (oc.r.lost != c->lost || oc.r.content_events != c->events ||
            oc.r.observed_output != c->observed || oc.r.have_usage != c->usage ||
            oc.r.prompt_tokens != c->prompt || oc.r.completion_tokens != c->compl ||
            oc.r.done != c->done)
            fail_msg("%s: lost %d ev %llu obs %llu usage %d %llu/%llu done %d: %s", name, oc.r.lost,
                     (unsigned long long)oc.r.content_events,
                     (unsigned long long)oc.r.observed_output, oc.r.have_usage,
                     (unsigned long long)oc.r.prompt_tokens,
                     (unsigned long long)oc.r.completion_tokens, oc.r.done, c->data);
        str_free(&oc.out);
        str_free(&s);
        check_oracle(c->data, strlen(c->data));
    }
    for (size_t i = 0; i < sizeof(bad_events) / sizeof(bad_events[0]); i++) {
        struct tg_usage_opts o = {.api = TG_USAGE_CHAT, .sse = true};
        struct str s = {0};
        add_event(&s, bad_events[i], strlen(bad_events[i]));
        struct outcome oc = feed_pieces(&o, s.p, s.len, NULL, 0);
        if (!oc.r.lost || oc.r.content_events != 0 || oc.r.have_usage)
            fail_msg("bad event %zu read as valid: %s", i, bad_events[i]);
        str_free(&oc.out);
        str_free(&s);
        check_oracle(bad_events[i], strlen(bad_events[i]));
    }
}

/* The identity a cut writes comes decoded from the scanner as from jansson. */
static void test_scanner_identity(void **state)
{
    const char *in = "data: {\"id\":\"a\\u00e9\\\"\\ud83d\\ude00\",\"model\":\"m\\/1\","
                     "\"created\":-5,\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"
                     "data: {\"choices\":[{\"delta\":{\"content\":\"y\"}}]}\n\n";
    struct tg_usage_opts o = {.api = TG_USAGE_CHAT, .sse = true, .max_output = 1};
    struct outcome oc = feed_pieces(&o, in, strlen(in), NULL, 0);
    assert_true(oc.r.cut);
    const char *tail = strstr(oc.out.p, "\n\n") + 2;
    json_t *ev[4];
    size_t k = parse_tail(tail, oc.out.len - (size_t)(tail - oc.out.p), ev, 4);
    assert_int_equal(k, 3);
    assert_string_equal(json_string_value(json_object_get(ev[0], "id")),
                        "a\xC3\xA9\"\xF0\x9F\x98\x80");
    assert_string_equal(json_string_value(json_object_get(ev[0], "model")), "m/1");
    assert_int_equal(json_integer_value(json_object_get(ev[0], "created")), -5);
    for (size_t i = 0; i < k; i++)
        json_decref(ev[i]);
    str_free(&oc.out);
}

/* Nesting past the scanner's depth and objects with many keys go to jansson. */
static void test_scanner_limits(void **state)
{
    struct str d = {0};
    str_cat(&d, "{\"choices\":[{\"delta\":{\"content\":\"abcde\"}}],\"x\":");
    for (int i = 0; i < 40; i++)
        str_cat(&d, i % 2 ? "{\"k\":" : "[");
    str_cat(&d, "1");
    for (int i = 39; i >= 0; i--)
        str_cat(&d, i % 2 ? "}" : "]");
    str_cat(&d, "}");
    struct tg_usage_opts o = {.api = TG_USAGE_CHAT, .sse = true};
    struct str s = {0};
    add_event(&s, d.p, d.len);
    struct outcome oc = feed_pieces(&o, s.p, s.len, NULL, 0);
    assert_false(oc.r.lost);
    assert_int_equal(oc.r.observed_output, 2);
    str_free(&oc.out);
    str_free(&s);
    check_oracle(d.p, d.len);

    d.len = 0;
    str_cat(&d, "{\"choices\":[{\"delta\":{\"content\":\"abcde\"}}]");
    for (int i = 0; i < 100; i++)
        str_printf(&d, ",\"k%d\":%d", i, i);
    str_cat(&d, "}");
    check_oracle(d.p, d.len);
    str_cat(&d, ","); /* now invalid */
    check_oracle(d.p, d.len);
    d.len = 0;
    str_cat(&d, "{\"choices\":[{\"delta\":{\"content\":\"abcde\"}}]");
    for (int i = 0; i < 100; i++)
        str_printf(&d, ",\"k%d\":%d", i % 70, i);
    str_cat(&d, "}"); /* a duplicate past the scanner's key table */
    check_oracle(d.p, d.len);
    str_free(&d);
}

/* Random damage to valid events: the scanner must still agree with jansson. */
static void test_scanner_mutations(void **state)
{
    static const char pool[] = "{}[]\":,\\u0123456789abcdefABCDEF.-+eEntrulsx \t\n\x80\xBF\xC3"
                               "\xE0\xED\xF0\xF4\xFF";
    struct str d = {0};
    size_t nvalid = sizeof(scan_cases) / sizeof(scan_cases[0]);

    for (unsigned iter = 0; iter < 4000; iter++) {
        const char *base = scan_cases[next_rand() % nvalid].data;
        d.len = 0;
        str_cat(&d, base);
        unsigned ops = 1 + (unsigned)(next_rand() % 3);
        for (unsigned k = 0; k < ops && d.len > 0; k++) {
            size_t at = next_rand() % d.len;
            uint64_t r = next_rand();
            char c = (r & 8) ? pool[(r >> 8) % (sizeof(pool) - 1)] : (char)(r >> 16);
            switch (r & 3) {
            case 0: d.p[at] = c; break; /* replace */
            case 1:
                memmove(d.p + at, d.p + at + 1, d.len - at - 1);
                d.len--;
                break; /* delete */
            case 2:    /* insert */
                str_add(&d, "", 0);
                str_add(&d, " ", 1);
                memmove(d.p + at + 1, d.p + at, d.len - at - 1);
                d.p[at] = c;
                break;
            default: d.len = at; break; /* truncate */
            }
        }
        check_oracle(d.p, d.len);
    }
    str_free(&d);
}

/* An emit error stops the call and is sticky. */
static void test_emit_error(void **state)
{
    struct tg_usage_opts o = {.api = TG_USAGE_CHAT, .sse = true, .strip_usage = true};
    struct str s = chat_stream(2, true, NULL, NULL);
    struct tg_usage *u = tg_usage_new(&o);
    struct sink k = {.fail = -7};
    assert_int_equal(tg_usage_feed(u, s.p, s.len, on_emit, &k), -7);
    unsigned calls = k.calls;
    assert_int_equal(tg_usage_feed(u, s.p, s.len, on_emit, &k), -7);
    assert_int_equal(tg_usage_finish(u, on_emit, &k), -7);
    assert_int_equal(k.calls, calls);
    tg_usage_free(u);
    tg_usage_free(NULL);
    str_free(&s);
}

/* ---- JSON bodies ---- */

static void test_json_chat(void **state)
{
    const char *in =
        "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,"
        "\"message\":{\"role\":\"assistant\",\"content\":\"h\\u00e9llo \\\"w\\\" "
        "\xF0\x9F\x98\x80\","
        "\"usage\":{\"prompt_tokens\":99,\"completion_tokens\":99}},\"text\":\"not chat\","
        "\"finish_reason\":\"stop\"}],"
        "\"x\":{\"usage\":{\"prompt_tokens\":98}},"
        "\"usage\" : {\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18,"
        "\"details\":{\"cached_tokens\":0,\"s\":\"}]\\\"{\"}}} \n";
    struct tg_usage_opts o = {.api = TG_USAGE_CHAT};
    struct outcome oc = check_splits(&o, in, strlen(in), NULL, 0);
    assert_true(oc.r.have_usage);
    assert_int_equal(oc.r.prompt_tokens, 11);
    assert_int_equal(oc.r.completion_tokens, 7);
    assert_true(oc.r.done);
    assert_false(oc.r.lost);
    /* h é l l o ␠ \" w \" ␠ 😀 = 11 characters */
    assert_int_equal(oc.r.content_events, 1);
    assert_int_equal(oc.r.observed_output, 3);
    str_free(&oc.out);

    /* only a nested usage: none taken */
    const char *nested =
        "{\"choices\":[{\"message\":{\"content\":\"a\"},\"usage\":{\"prompt_tokens\""
        ":5}}],\"data\":[{\"usage\":{\"prompt_tokens\":6}}]}";
    oc = check_splits(&o, nested, strlen(nested), NULL, 0);
    assert_false(oc.r.have_usage);
    assert_true(oc.r.done);
    assert_int_equal(oc.r.observed_output, 1);
    str_free(&oc.out);

    /* duplicate top-level usage: lost, the first kept */
    const char *dup = "{\"usage\":{\"prompt_tokens\":1},\"usage\":{\"prompt_tokens\":2}}";
    oc = check_splits(&o, dup, strlen(dup), NULL, 0);
    assert_true(oc.r.lost);
    assert_int_equal(oc.r.prompt_tokens, 1);
    str_free(&oc.out);

    /* completions */
    struct tg_usage_opts oc2 = {.api = TG_USAGE_COMPLETIONS};
    const char *compl = "{\"choices\":[{\"text\":\"abcde\",\"index\":0},{\"text\":\"fgh\"}],"
                        "\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}";
    oc = check_splits(&oc2, compl, strlen(compl ), NULL, 0);
    assert_int_equal(oc.r.content_events, 2);
    assert_int_equal(oc.r.observed_output, 2);
    assert_int_equal(oc.r.completion_tokens, 2);
    str_free(&oc.out);

    /* responses: input/output tokens; output text */
    struct tg_usage_opts orp = {.api = TG_USAGE_RESPONSES};
    const char *resp =
        "{\"id\":\"resp_1\",\"object\":\"response\",\"output\":[{\"type\":\"message\","
        "\"content\":[{\"type\":\"output_text\",\"text\":\"Hello there\","
        "\"annotations\":[]}]}],\"usage\":{\"input_tokens\":9,\"output_tokens\":3,"
        "\"total_tokens\":12}}";
    oc = check_splits(&orp, resp, strlen(resp), NULL, 0);
    assert_int_equal(oc.r.prompt_tokens, 9);
    assert_int_equal(oc.r.completion_tokens, 3);
    assert_int_equal(oc.r.observed_output, 3);
    assert_true(oc.r.done);
    str_free(&oc.out);

    /* truncated inside the usage object: lost, not done */
    const char *trunc = "{\"choices\":[],\"usage\":{\"prompt_tokens\":4,";
    oc = check_splits(&o, trunc, strlen(trunc), NULL, 0);
    assert_false(oc.r.have_usage);
    assert_false(oc.r.done);
    assert_true(oc.r.lost);
    str_free(&oc.out);

    /* a usage object past TG_USAGE_JSON_MAX: lost */
    struct str huge = {0};
    str_cat(&huge, "{\"usage\":{\"prompt_tokens\":1,\"pad\":\"");
    for (int i = 0; i < 5000; i++)
        str_cat(&huge, "x");
    str_cat(&huge, "\"}}");
    oc = feed_pieces(&o, huge.p, huge.len, NULL, 0);
    assert_true(oc.r.lost);
    assert_false(oc.r.have_usage);
    assert_true(oc.r.done);
    str_free(&oc.out);
    str_free(&huge);
}

static void test_json_embeddings_big(void **state)
{
    struct str s = {0};
    str_cat(&s, "{\"object\":\"list\",\"data\":[");
    for (int i = 0; i < 3000; i++) {
        str_printf(&s, "%s{\"object\":\"embedding\",\"index\":%d,\"embedding\":[", i ? "," : "", i);
        for (int d = 0; d < 64; d++)
            str_printf(&s, "%s-0.%06d", d ? "," : "", (i * 64 + d) % 999983);
        str_cat(&s, "]}");
    }
    str_cat(&s, "],\"model\":\"e\",\"usage\":{\"prompt_tokens\":3000,\"total_tokens\":3000}}");
    assert_true(s.len > 1000000);
    struct tg_usage_opts o = {.api = TG_USAGE_EMBEDDINGS};
    size_t cuts[1024], nc = 0;
    for (size_t at = 16384 - 7; at < s.len && nc < 1024; at += 16384)
        cuts[nc++] = at;
    struct outcome oc = feed_pieces(&o, s.p, s.len, cuts, nc);
    assert_same_out(&oc.out, s.p, s.len, 0);
    assert_true(oc.r.have_usage);
    assert_int_equal(oc.r.prompt_tokens, 3000);
    assert_int_equal(oc.r.completion_tokens, 0);
    assert_int_equal(oc.r.observed_output, 0);
    assert_true(oc.r.done);
    assert_false(oc.r.lost);
    str_free(&oc.out);
    str_free(&s);
}

/* ---- failmalloc ---- */

/*
 * Run the scenario with allocation N failing, for every N.  A failure never
 * crashes, leaks or loses bytes: pass-through forwards the input exactly;
 * strip forwards at least the stripped stream and at most the input, exactly
 * the stripped stream unless `lost` says something could not be read.
 */
static void test_failmalloc(void **state)
{
    size_t at, n;
    struct str s = chat_stream(4, true, &at, &n);
    struct str want = without(&s, at, n);
    const char *body = "{\"choices\":[{\"message\":{\"content\":\"abc\"}}],"
                       "\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}";
    static const struct tg_usage_opts opts[] = {
        {.api = TG_USAGE_CHAT, .sse = true},
        {.api = TG_USAGE_CHAT, .sse = true, .strip_usage = true},
        {.api = TG_USAGE_CHAT, .sse = true, .strip_usage = true, .max_output = 2},
        {.api = TG_USAGE_CHAT},
        {.api = TG_USAGE_CHAT, .sse = true, .strip_usage = true}, /* jansson reads the events */
    };
    /* allocations each scenario must reach: the scanner allocates nothing, jansson its trees */
    static const unsigned long min_allocs[] = {2, 3, 3, 5, 5};
    size_t cuts[] = {10, 250, 251, 600};

    json_set_alloc_funcs(tg_mem_malloc, tg_mem_free);
    for (size_t t = 0; t < 5; t++) {
        const char *in = t == 3 ? body : s.p;
        size_t len = t == 3 ? strlen(body) : s.len;
        for (unsigned long f = 1;; f++) {
            tg_test_failmalloc_arm(f);
            struct tg_usage *u = tg_usage_new(&opts[t]);
            struct sink k = {0};
            int rv = 0;
            if (u != NULL && t == 4)
                tg_usage_set_oracle(u, true);
            if (u != NULL) {
                size_t from = 0;
                for (size_t c = 0; c <= 4 && rv == 0; c++) {
                    size_t to = c < 4 && cuts[c] < len ? cuts[c] : len;
                    if (to < from)
                        to = from;
                    rv = tg_usage_feed(u, in + from, to - from, on_emit, &k);
                    from = to;
                }
                if (rv == 0)
                    rv = tg_usage_finish(u, on_emit, &k);
            }
            tg_test_failmalloc_disarm();
            bool failed = tg_test_failmalloc_failed();
            if (u != NULL) {
                const struct tg_usage_result *r = tg_usage_result(u);
                assert_true(rv == 0 || rv == TG_USAGE_CUT);
                if (t == 0 || t == 3)
                    assert_same_out(&k.out, in, len, f);
                else if ((t == 1 || t == 4) && !r->lost)
                    assert_same_out(&k.out, want.p, want.len, f);
                else if (t == 1 || t == 4)
                    assert_true(k.out.len >= want.len && k.out.len <= s.len);
                else
                    assert_true(r->cut || r->lost);
                if (!failed)
                    assert_false(r->lost);
            }
            tg_usage_free(u);
            str_free(&k.out);
            if (!failed) {
                print_message("scenario %zu: %lu allocations, each failed once\n", t, f - 1);
                assert_true(f - 1 >= min_allocs[t]); /* new, buffers (and jansson) reached */
                break;
            }
        }
    }
    json_set_alloc_funcs(malloc, free);
    str_free(&want);
    str_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_passthrough),
        cmocka_unit_test(test_passthrough_zero_copy),
        cmocka_unit_test(test_fields_and_comments),
        cmocka_unit_test(test_completions_and_reasoning),
        cmocka_unit_test(test_responses_sse),
        cmocka_unit_test(test_strip_usage),
        cmocka_unit_test(test_cut_chat),
        cmocka_unit_test(test_cut_rules),
        cmocka_unit_test(test_cut_escapes),
        cmocka_unit_test(test_oversized_event),
        cmocka_unit_test(test_bad_json_and_done),
        cmocka_unit_test(test_scanner_cases),
        cmocka_unit_test(test_scanner_identity),
        cmocka_unit_test(test_scanner_limits),
        cmocka_unit_test(test_scanner_mutations),
        cmocka_unit_test(test_emit_error),
        cmocka_unit_test(test_json_chat),
        cmocka_unit_test(test_json_embeddings_big),
        cmocka_unit_test(test_failmalloc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
