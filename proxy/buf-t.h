/*
 * buf-t.h - wire-byte types shared by every module (types only).
 */
#ifndef TG_BUF_T_H
#define TG_BUF_T_H

#include <stddef.h>
#include <stdbool.h>

/* A borrowed byte range; never assumed NUL-terminated. */
struct tg_iov {
    const char *base; /* first byte, may be NULL when len == 0 */
    size_t len;       /* number of bytes */
};

#define TG_IOV_LIT(s) ((struct tg_iov){(s), sizeof(s) - 1})
#define TG_IOV_NULL ((struct tg_iov){NULL, 0})

/* A growable byte buffer with a hard ceiling (STYLE §10). */
struct tg_buf {
    char *base;  /* heap storage, NULL until first append */
    size_t len;  /* bytes in use */
    size_t cap;  /* bytes allocated */
    size_t max;  /* ceiling: appends past it fail with TG_E_TOO_LARGE */
};

/* One owned chunk in a byte queue. */
struct tg_chunk {
    struct tg_chunk *next; /* next chunk, FIFO order */
    size_t off;            /* bytes already consumed from data[] */
    size_t len;            /* bytes stored in data[] */
    char data[];           /* payload */
};

/* FIFO of owned chunks with a running byte count (for watermarks). */
struct tg_bufq {
    struct tg_chunk *head; /* oldest chunk */
    struct tg_chunk *tail; /* newest chunk */
    size_t bytes;          /* unconsumed bytes across all chunks */
};

#endif
