/*
 * audit_json.h - a small JSON text emitter for audit records (SPEC §7).
 *
 * The audit writer formats request records with this instead of building a
 * jansson object and dumping it: the output is the bytes jansson's
 * json_dumps(JSON_COMPACT | JSON_REAL_PRECISION(15)) gives for the same
 * values, so readers see the same lines, but without an allocation per
 * member.  Differences from jansson, on purpose:
 *   - a string that is not valid UTF-8 (jansson refuses it, and the member
 *     would go missing) is written with each offending byte replaced by
 *     \ufffd, so the line is always valid JSON;
 *   - a non-finite real (jansson refuses it) is written as null.
 * Escaping is jansson's: \" \\ \b \f \n \r \t, other control characters as
 * \u00XX (uppercase hex), everything else (valid UTF-8 included) as is.
 * Reals follow jansson's dtostr: "%.15g", ".0" appended when the text has
 * neither '.' nor 'e', and the exponent without '+' or leading zeros
 * (2.8e-05 is written 2.8e-5).
 *
 * The emitter writes into caller-provided heap storage that it may grow
 * (tg_mem_realloc) up to a ceiling (STYLE §10).  Errors are sticky: after
 * an allocation failure or passing the ceiling every call is a no-op and
 * failed is set, so a record is emitted with no checks and checked once.
 */
#ifndef TG_AUDIT_JSON_H
#define TG_AUDIT_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* An output buffer: base[0..len) is written; it may be moved by a grow. */
struct tg_jw {
    char *base;    /* heap storage (tg_mem_*), may be NULL when cap is 0 */
    size_t len;    /* bytes written */
    size_t cap;    /* bytes allocated */
    size_t max;    /* ceiling for len: passing it sets failed and too_long */
    bool failed;   /* an append failed (out of memory or past max); sticky */
    bool too_long; /* the failure was passing max */
};

/* Make room for n more bytes (grows base, at least doubling).  false (and failed) if not. */
bool tg_jw_grow(struct tg_jw *j, size_t n);

/* Append n raw bytes (keys, punctuation, literals such as null/true). */
static inline void tg_jw_raw(struct tg_jw *j, const char *p, size_t n)
{
    /* len <= max always holds; after a failure max == len, so this stays a no-op. */
    if ((n > j->max - j->len || n > j->cap - j->len) && !tg_jw_grow(j, n))
        return;
    memcpy(j->base + j->len, p, n);
    j->len += n;
}

/* Append a string literal (no NUL), e.g. TG_JW_LIT(j, ",\"id\":"). */
#define TG_JW_LIT(j, lit) tg_jw_raw((j), (lit), sizeof(lit) - 1)

/* Append s[0..n) as a JSON string: quoted, escaped, invalid UTF-8 repaired. */
void tg_jw_str(struct tg_jw *j, const char *s, size_t n);
/* Append the NUL-terminated s as a JSON string, or null when s is NULL. */
void tg_jw_cstr(struct tg_jw *j, const char *s);
/* Append an integer exactly (jansson's json_integer is int64). */
void tg_jw_int(struct tg_jw *j, int64_t v);
/* Append a real as jansson does with JSON_REAL_PRECISION(15); null if not finite. */
void tg_jw_real(struct tg_jw *j, double v);
/*
 * Append the real (double)n / 1e6 (milliseconds from nanoseconds, dollars
 * from micro-dollars) exactly as tg_jw_real() would, without printf for the
 * common range: a decimal of at most 15 significant digits survives the
 * trip through a double, so its digits can be written from n directly.
 */
void tg_jw_micro(struct tg_jw *j, uint64_t n);

#endif
