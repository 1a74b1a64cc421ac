/*
 * h1parse.h - strict HTTP/1.1 request-head parser and chunked body decoder.
 *
 * This is the client-facing parser, so it is deliberately stricter than
 * llhttp 8.1 (THREATS §2.3): it finds the end of the head (CRLFCRLF) within
 * max_header_bytes and rejects bare CR or LF, obs-fold, whitespace before a
 * colon or before the first field, non-token names, CTLs in values, a
 * malformed request line (double SP, bad version), a missing or repeated Host,
 * any Content-Length that is not one plain 1*DIGIT, Content-Length together
 * with Transfer-Encoding, and any Transfer-Encoding other than a single
 * "chunked" (HTTP/1.1 only).  The accepted head is then also run through
 * llhttp as a second opinion, and must be accepted there with the same
 * framing decision.
 */
#ifndef TG_H1PARSE_H
#define TG_H1PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proxy/headers.h"

#define TG_H1_MAX_HEADERS 100

enum tg_h1_body {
    TG_H1_BODY_NONE = 0,    /* no body (no CL, no TE, or CL: 0) */
    TG_H1_BODY_LENGTH = 1,  /* Content-Length bytes follow */
    TG_H1_BODY_CHUNKED = 2, /* chunked transfer coding follows */
};

/* A parsed request head; every range points into the caller's buffer. */
struct tg_h1_head {
    struct tg_iov method;                        /* e.g. "POST" */
    struct tg_iov target;                        /* origin-form target incl. query */
    int minor;                                   /* HTTP/1.<minor>: 0 or 1 */
    struct tg_header headers[TG_H1_MAX_HEADERS]; /* fields in order, names as sent */
    size_t nheaders;                             /* count of fields */
    struct tg_iov host;                          /* Host value (empty for 1.0 without Host) */
    enum tg_h1_body body;                        /* framing of the body */
    uint64_t content_length;                     /* valid when body == TG_H1_BODY_LENGTH */
    bool keep_alive;                             /* 1.1 without "close", or 1.0 with keep-alive */
    bool expect_continue;                        /* "Expect: 100-continue" was sent */
    int error_status;                            /* on failure: 400, 431, 501 or 505 */
    const char *error;                           /* on failure: short static reason */
};

/*
 * Parse the head at the start of buf[0..len).  Returns the head length
 * (through the final CRLFCRLF, at most max_header_bytes) on success, 0 when
 * more bytes are needed (only while len < max_header_bytes), or -1 on a
 * malformed or oversized head with out->error_status and out->error set (431
 * when no complete head fits in max_header_bytes or it holds more than
 * TG_H1_MAX_HEADERS fields; 501 for CONNECT and for a single unknown transfer
 * coding; 505 for a version other than 1.0/1.1; else 400, including any head
 * llhttp reads differently, e.g. a method llhttp does not know).  Leading
 * empty lines are not skipped.  Errors are reported as soon as the offending
 * line is complete, so a prefix never contradicts the whole head.  Bytes after
 * the head (body, next request) are not looked at.  The parser keeps no state
 * between calls: each call rescans from buf[0], so callers should call again
 * only when new bytes contain a '\n'.
 */
ssize_t tg_h1_parse_head(const char *buf, size_t len, size_t max_header_bytes,
                         struct tg_h1_head *out);

/* Streaming decoder for a chunked request body (RFC 9112 §7.1), strict. */
struct tg_chunked {
    int state;            /* internal state */
    uint64_t remaining;   /* bytes left in the current chunk */
    unsigned size_digits; /* hex digits seen in the current size */
    size_t ext_len;       /* bytes of chunk extension seen (capped at 256) */
    size_t trailer_len;   /* bytes of trailer section seen (capped at 8192) */
    bool done;            /* the last chunk and trailers were consumed */
};

/* Called for each run of decoded body bytes; return 0 to go on, non-zero to stop with an error. */
typedef int tg_chunked_data_fn(void *ud, const char *data, size_t len);

void tg_chunked_init(struct tg_chunked *d);
/*
 * Decode in[0..len).  Returns the number of bytes consumed (stops right after
 * the final CRLF, so pipelined bytes that follow are left unconsumed; d->done
 * is then set, and later calls return 0), or -1 when the coding is malformed
 * (non-hex size, more than 10 hex digits i.e. a size of 2^40 or more, any
 * whitespace around the size, an extension over 256 bytes counting its ';',
 * missing CRLF after data, a trailer line that is not a valid field line,
 * trailers over 8192 bytes including the final CRLF) or cb returned non-zero.
 * An error is sticky.  cb may be NULL to discard the data; it is called before
 * returning, with ranges inside in[].
 */
ssize_t tg_chunked_decode(struct tg_chunked *d, const char *in, size_t len, tg_chunked_data_fn *cb,
                          void *ud);

#endif
