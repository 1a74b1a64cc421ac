#include "proxy/mem.h"

#include <stdlib.h>
#include <string.h>

static void *libc_malloc(size_t n) { return malloc(n); }
static void *libc_calloc(size_t n, size_t m) { return calloc(n, m); }
static void *libc_realloc(void *p, size_t n) { return realloc(p, n); }
static void libc_free(void *p) { free(p); }

static const struct tg_allocator libc_allocator = {libc_malloc, libc_calloc, libc_realloc,
                                                   libc_free};
static const struct tg_allocator *alloc = &libc_allocator;

void tg_mem_set(const struct tg_allocator *a)
{
    alloc = a ? a : &libc_allocator;
}

void *tg_mem_malloc(size_t n)
{
    return alloc->malloc_fn(n ? n : 1);
}

void *tg_mem_calloc(size_t n, size_t m)
{
    return alloc->calloc_fn(n ? n : 1, m ? m : 1);
}

void *tg_mem_realloc(void *p, size_t n)
{
    return alloc->realloc_fn(p, n ? n : 1);
}

void tg_mem_free(void *p)
{
    if (p)
        alloc->free_fn(p);
}

char *tg_mem_strndup(const char *s, size_t n)
{
    char *d = tg_mem_malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *tg_mem_strdup(const char *s)
{
    return tg_mem_strndup(s, strlen(s));
}

struct tg_arena_chunk {
    struct tg_arena_chunk *next; /* older chunk */
    size_t size;                 /* usable bytes in data[] */
    size_t used;                 /* bytes handed out */
    _Alignas(16) unsigned char data[];
};

void tg_arena_init(struct tg_arena *a, size_t chunk_size)
{
    a->head = NULL;
    a->chunk_size = chunk_size ? chunk_size : 4096;
    a->total = 0;
}

void tg_arena_dispose(struct tg_arena *a)
{
    struct tg_arena_chunk *c = a->head;
    while (c) {
        struct tg_arena_chunk *next = c->next;
        tg_mem_free(c);
        c = next;
    }
    a->head = NULL;
    a->total = 0;
}

void *tg_arena_alloc(struct tg_arena *a, size_t n)
{
    size_t need = (n + 15u) & ~(size_t)15u;
    if (need < n)
        return NULL;
    struct tg_arena_chunk *c = a->head;
    if (!c || c->size - c->used < need) {
        size_t sz = need > a->chunk_size ? need : a->chunk_size;
        c = tg_mem_malloc(sizeof(*c) + sz);
        if (!c)
            return NULL;
        c->size = sz;
        c->used = 0;
        c->next = a->head;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += need;
    a->total += need;
    return p;
}

void *tg_arena_calloc(struct tg_arena *a, size_t n)
{
    void *p = tg_arena_alloc(a, n);
    if (p)
        memset(p, 0, n);
    return p;
}

char *tg_arena_strndup(struct tg_arena *a, const char *s, size_t n)
{
    char *d = tg_arena_alloc(a, n + 1);
    if (!d)
        return NULL;
    if (n)
        memcpy(d, s, n);
    d[n] = '\0';
    return d;
}
