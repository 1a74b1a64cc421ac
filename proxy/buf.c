#include "proxy/buf.h"

#include <stdarg.h>
#include <stdio.h>

#include "proxy/err.h"
#include "proxy/mem.h"

bool tg_iov_ieq(struct tg_iov a, const char *lit)
{
    size_t n = strlen(lit);
    if (a.len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a.base[i], y = (unsigned char)lit[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

void tg_buf_init(struct tg_buf *b, size_t max)
{
    b->base = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

void tg_buf_dispose(struct tg_buf *b)
{
    tg_mem_free(b->base);
    b->base = NULL;
    b->len = b->cap = 0;
}

static int reserve(struct tg_buf *b, size_t extra)
{
    if (extra > b->max || b->len > b->max - extra)
        return TG_E_TOO_LARGE;
    size_t need = b->len + extra;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    if (cap > b->max)
        cap = b->max;
    char *p = tg_mem_realloc(b->base, cap);
    if (!p)
        return TG_E_NOMEM;
    b->base = p;
    b->cap = cap;
    return 0;
}

int tg_buf_append(struct tg_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    int rv = reserve(b, n);
    if (rv)
        return rv;
    memcpy(b->base + b->len, p, n);
    b->len += n;
    return 0;
}

int tg_buf_appendf(struct tg_buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return TG_E_INVALID;
    if ((size_t)n < sizeof(tmp))
        return tg_buf_append(b, tmp, (size_t)n);
    int rv = reserve(b, (size_t)n + 1);
    if (rv)
        return rv;
    va_start(ap, fmt);
    vsnprintf(b->base + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void tg_buf_consume(struct tg_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->base, b->base + n, b->len - n);
    b->len -= n;
}

void tg_bufq_init(struct tg_bufq *q)
{
    q->head = q->tail = NULL;
    q->bytes = 0;
}

void tg_bufq_dispose(struct tg_bufq *q)
{
    struct tg_chunk *c = q->head;
    while (c) {
        struct tg_chunk *n = c->next;
        tg_mem_free(c);
        c = n;
    }
    tg_bufq_init(q);
}

int tg_bufq_push(struct tg_bufq *q, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    struct tg_chunk *c = tg_mem_malloc(sizeof(*c) + n);
    if (!c)
        return TG_E_NOMEM;
    c->next = NULL;
    c->off = 0;
    c->len = n;
    memcpy(c->data, p, n);
    if (q->tail)
        q->tail->next = c;
    else
        q->head = c;
    q->tail = c;
    q->bytes += n;
    return 0;
}

struct tg_iov tg_bufq_peek(const struct tg_bufq *q)
{
    if (!q->head)
        return TG_IOV_NULL;
    return tg_iov_make(q->head->data + q->head->off, q->head->len - q->head->off);
}

void tg_bufq_consume(struct tg_bufq *q, size_t n)
{
    struct tg_chunk *c = q->head;
    if (!c)
        return;
    c->off += n;
    q->bytes -= n;
    if (c->off >= c->len) {
        q->head = c->next;
        if (!q->head)
            q->tail = NULL;
        tg_mem_free(c);
    }
}

size_t tg_bufq_read(struct tg_bufq *q, void *dst, size_t n)
{
    size_t done = 0;
    while (done < n && q->head) {
        struct tg_iov v = tg_bufq_peek(q);
        size_t k = v.len < n - done ? v.len : n - done;
        memcpy((char *)dst + done, v.base, k);
        done += k;
        tg_bufq_consume(q, k);
    }
    return done;
}
