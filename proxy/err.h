/*
 * err.h - tollgate error codes.
 *
 * Functions return 0 on success and a negative code on failure.  libuv codes
 * (UV_E*, all above -4100) pass through unchanged; tollgate's own codes use the
 * disjoint range -20000..-20999 so tg_strerror() can tell them apart.
 */
#ifndef TG_ERR_H
#define TG_ERR_H

enum tg_err {
    TG_OK = 0,
    TG_E_NOMEM = -20001,      /* allocation failed */
    TG_E_TOO_LARGE = -20002,  /* a bounded buffer would pass its ceiling */
    TG_E_INVALID = -20003,    /* malformed input (protocol or config) */
    TG_E_PROTO = -20004,      /* peer violated the protocol */
    TG_E_TIMEOUT = -20005,    /* a timer expired */
    TG_E_CLOSED = -20006,     /* the object was closed or disposed */
    TG_E_NOTFOUND = -20007,   /* lookup found nothing */
    TG_E_TLS = -20008,        /* OpenSSL reported an error */
    TG_E_UPSTREAM = -20009,   /* upstream refused, reset or sent garbage */
    TG_E_IO = -20010,         /* file or socket I/O failed */
    TG_E_AGAIN = -20011,      /* try again later (would block) */
};

/* Human-readable message for a tollgate or libuv error code; never NULL. */
const char *tg_strerror(int err);

#endif
