/*
 * fuzz_h1_head.c - differential fuzzer for the strict request-head parser.
 *
 * Whenever tg_h1_parse_head() accepts a head, an independent llhttp 8.1
 * instance (not the one inside h1parse.c) must accept the same bytes, stop at
 * the same end of head, and read the same method, target, version, fields and
 * body framing.  Also checked: an accepted head satisfies our own validators,
 * and feeding a prefix never contradicts the answer for the whole input.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "proxy/buf.h"
#include "proxy/h1parse.h"

#define MAX_HEAD 2048

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What llhttp reported through its span callbacks. */
struct seen {
    struct tg_iov url;                           /* request target */
    struct tg_header headers[TG_H1_MAX_HEADERS]; /* fields */
    size_t n;                                    /* fields started */
    bool in_value;                               /* last span was a value */
    bool overflow;                               /* more fields than we can hold */
};

/* Extend a range with a span; llhttp over one buffer must report contiguous spans. */
static void extend(struct tg_iov *r, const char *at, size_t len)
{
    if (r->base == NULL) {
        r->base = at;
        r->len = len;
        return;
    }
    CHECK(r->base + r->len == at);
    r->len += len;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    extend(&((struct seen *)p->data)->url, at, len);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct seen *s = p->data;
    if (s->n == 0 || s->in_value) {
        if (s->n == TG_H1_MAX_HEADERS) {
            s->overflow = true;
            return 0;
        }
        s->n++;
        s->in_value = false;
    }
    if (!s->overflow)
        extend(&s->headers[s->n - 1].name, at, len);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct seen *s = p->data;
    s->in_value = true;
    if (!s->overflow && s->n > 0)
        extend(&s->headers[s->n - 1].value, at, len);
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
};

static struct tg_iov trim(struct tg_iov v)
{
    while (v.len > 0 && (v.base[0] == ' ' || v.base[0] == '\t')) {
        v.base++;
        v.len--;
    }
    while (v.len > 0 && (v.base[v.len - 1] == ' ' || v.base[v.len - 1] == '\t'))
        v.len--;
    return v;
}

static void differential(const char *buf, size_t head_len, const struct tg_h1_head *h)
{
    static struct seen s;
    llhttp_t p;
    const char *name;

    memset(&s, 0, sizeof(s));
    llhttp_init(&p, HTTP_REQUEST, &settings);
    p.data = &s;
    CHECK(llhttp_execute(&p, buf, head_len) == HPE_PAUSED);
    CHECK(llhttp_get_error_pos(&p) == buf + head_len);
    CHECK(p.http_major == 1 && p.http_minor == h->minor);
    name = llhttp_method_name((llhttp_method_t)p.method);
    CHECK(tg_iov_eq(h->method, tg_iov_make(name, strlen(name))));
    CHECK(tg_iov_eq(h->target, s.url));
    CHECK(!s.overflow && s.n == h->nheaders);
    for (size_t i = 0; i < s.n; i++) {
        CHECK(tg_iov_eq(h->headers[i].name, s.headers[i].name));
        CHECK(tg_iov_eq(h->headers[i].value, trim(s.headers[i].value)));
    }
    /* Framing. */
    switch (h->body) {
    case TG_H1_BODY_NONE:
        CHECK(!(p.flags & (F_CHUNKED | F_TRANSFER_ENCODING)));
        CHECK(!(p.flags & F_CONTENT_LENGTH) || p.content_length == 0);
        break;
    case TG_H1_BODY_LENGTH:
        CHECK(!(p.flags & F_CHUNKED) && (p.flags & F_CONTENT_LENGTH));
        CHECK(p.content_length == h->content_length);
        break;
    case TG_H1_BODY_CHUNKED: CHECK((p.flags & F_CHUNKED) && !(p.flags & F_CONTENT_LENGTH)); break;
    }
    llhttp_resume(&p);
    llhttp_errno_t err = llhttp_execute(&p, buf + head_len, 0);
    CHECK(err == HPE_OK || err == HPE_PAUSED_UPGRADE);
}

/* What we promise about every accepted head, checked with our own validators. */
static void self_consistent(size_t head_len, const struct tg_h1_head *h)
{
    CHECK(head_len <= MAX_HEAD);
    CHECK(tg_method_valid(h->method) && tg_target_valid(h->target));
    CHECK(h->minor == 0 || h->minor == 1);
    CHECK(h->nheaders <= TG_H1_MAX_HEADERS);
    for (size_t i = 0; i < h->nheaders; i++) {
        CHECK(tg_header_name_valid(h->headers[i].name));
        CHECK(tg_header_value_valid(h->headers[i].value));
    }
    CHECK(h->minor == 0 || tg_authority_valid(h->host));
    CHECK(h->body != TG_H1_BODY_LENGTH || h->content_length > 0);
    CHECK(h->error_status == 0 && h->error == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct tg_h1_head h, hp;
    /* Exact-size copy: ASan flags any read past size. */
    char *buf = malloc(size ? size : 1);
    ssize_t rv, rp;
    size_t k;

    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    rv = tg_h1_parse_head(buf, size, MAX_HEAD, &h);
    CHECK(rv >= -1 && rv <= (ssize_t)size);
    if (rv > 0) {
        self_consistent((size_t)rv, &h);
        differential(buf, (size_t)rv, &h);
        /* One byte short of the head is "need more". */
        CHECK(tg_h1_parse_head(buf, (size_t)rv - 1, MAX_HEAD, &hp) == 0);
    } else if (rv < 0) {
        CHECK(h.error != NULL);
        CHECK(h.error_status == 400 || h.error_status == 431 || h.error_status == 501 ||
              h.error_status == 505);
    }
    /* Any prefix: need more, or the whole input's own answer. */
    k = size > 0 ? (size_t)data[0] * size / 256 : 0;
    rp = tg_h1_parse_head(buf, k, MAX_HEAD, &hp);
    if (rv > 0 && k >= (size_t)rv) {
        CHECK(rp == rv);
    } else if (rp != 0) {
        CHECK(rp == -1 && rv == -1 && hp.error_status == h.error_status);
    }
    free(buf);
    return 0;
}
