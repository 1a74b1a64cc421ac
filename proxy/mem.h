/*
 * mem.h - allocation hooks and the per-request arena.
 *
 * Every allocation in tollgate goes through tg_mem_*, so the unit suite can
 * replace the allocator (failmalloc: fail the Nth allocation) and prove that
 * every error path unwinds without a leak.
 *
 * Memory classes (STYLE §9): config data is malloc'd at load and owned by the
 * snapshot; per-request data lives in a struct tg_arena freed all at once;
 * connections/streams use plain tg_mem allocations; only the config snapshot
 * is reference counted.
 */
#ifndef TG_MEM_H
#define TG_MEM_H

#include <stddef.h>
#include <stdint.h>

#define tg_container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* Allocator table.  All four must be set; tg_mem_set(NULL) restores libc. */
struct tg_allocator {
    void *(*malloc_fn)(size_t n);           /* like malloc */
    void *(*calloc_fn)(size_t n, size_t m); /* like calloc */
    void *(*realloc_fn)(void *p, size_t n); /* like realloc */
    void (*free_fn)(void *p);               /* like free; NULL is a no-op */
};

/* Replace the process-wide allocator (call before any thread starts). */
void tg_mem_set(const struct tg_allocator *a);

void *tg_mem_malloc(size_t n);             /* NULL on failure */
void *tg_mem_calloc(size_t n, size_t m);   /* NULL on failure or overflow */
void *tg_mem_realloc(void *p, size_t n);   /* NULL on failure, p untouched */
void tg_mem_free(void *p);                 /* NULL is a no-op */
char *tg_mem_strdup(const char *s);        /* NULL on failure */
char *tg_mem_strndup(const char *s, size_t n); /* copies n bytes, NUL-terminates */

/*
 * Bump allocator with chunked growth.  Allocations are freed together by
 * tg_arena_dispose() (or recycled by tg_arena_reset()).  Alignment is 16.
 */
struct tg_arena_chunk;
struct tg_arena {
    struct tg_arena_chunk *head; /* newest chunk, with free space at its end */
    size_t chunk_size;           /* default size of a new chunk */
    size_t total;                /* bytes handed out, for accounting */
};

/* Prepare an empty arena whose chunks are at least chunk_size bytes. */
void tg_arena_init(struct tg_arena *a, size_t chunk_size);
/* Free every chunk; the arena is left empty and reusable. */
void tg_arena_dispose(struct tg_arena *a);
/* n bytes, 16-aligned, uninitialised; NULL on allocation failure. */
void *tg_arena_alloc(struct tg_arena *a, size_t n);
/* n zeroed bytes; NULL on failure. */
void *tg_arena_calloc(struct tg_arena *a, size_t n);
/* Copy of [s, s+n) plus a NUL; NULL on failure. */
char *tg_arena_strndup(struct tg_arena *a, const char *s, size_t n);

#endif
