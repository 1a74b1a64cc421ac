/*
 * buf.h - bounded buffers and chunk queues.
 */
#ifndef TG_BUF_H
#define TG_BUF_H

#include "proxy/buf-t.h"

#include <stdint.h>
#include <string.h>

static inline struct tg_iov tg_iov_make(const char *p, size_t n)
{
    return (struct tg_iov){p, n};
}

/* True when the two ranges hold the same bytes. */
static inline bool tg_iov_eq(struct tg_iov a, struct tg_iov b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.base, b.base, a.len) == 0);
}

/* Longest decimal form of a uint64_t. */
#define TG_U64_DEC_MAX 20

/* Decimal digits of v written backwards so that they end just before end;
 * returns the first digit.  No snprintf: this runs per request. */
static inline char *tg_u64_dec_back(char *end, uint64_t v)
{
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return end;
}

/* Decimal digits of v at p (at most TG_U64_DEC_MAX bytes, no NUL); returns the end. */
static inline char *tg_u64_dec(char *p, uint64_t v)
{
    char tmp[TG_U64_DEC_MAX];
    char *s = tg_u64_dec_back(tmp + sizeof(tmp), v);
    size_t n = (size_t)(tmp + sizeof(tmp) - s);
    memcpy(p, s, n);
    return p + n;
}

/* ASCII case-insensitive equality of a range and a NUL-terminated literal. */
bool tg_iov_ieq(struct tg_iov a, const char *lit);

/* Empty buffer whose length may never pass max bytes. */
void tg_buf_init(struct tg_buf *b, size_t max);
/* Free storage; the buffer is empty and reusable with the same ceiling. */
void tg_buf_dispose(struct tg_buf *b);
/* Append n bytes.  0, TG_E_TOO_LARGE (nothing appended) or TG_E_NOMEM. */
int tg_buf_append(struct tg_buf *b, const void *p, size_t n);
/* Append a formatted string (bounded by the ceiling); same return codes. */
int tg_buf_appendf(struct tg_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drop the first n bytes (n <= len). */
void tg_buf_consume(struct tg_buf *b, size_t n);

/* Empty queue. */
void tg_bufq_init(struct tg_bufq *q);
/* Free every chunk. */
void tg_bufq_dispose(struct tg_bufq *q);
/* Copy n bytes into a new chunk at the tail.  0 or TG_E_NOMEM. */
int tg_bufq_push(struct tg_bufq *q, const void *p, size_t n);
/* Copy up to n bytes from the head into dst, consuming them; returns bytes copied. */
size_t tg_bufq_read(struct tg_bufq *q, void *dst, size_t n);
/* Peek at the head chunk's unconsumed bytes (len 0 when empty). */
struct tg_iov tg_bufq_peek(const struct tg_bufq *q);
/* Consume n bytes from the head chunk (n <= its unconsumed length). */
void tg_bufq_consume(struct tg_bufq *q, size_t n);

#endif
