/*
 * audit_json.c - the audit record emitter (see audit_json.h for the exact
 * output contract: jansson's compact dump, byte for byte, for valid input).
 */
#include "filters/audit_json.h"

#include <math.h>
#include <stdio.h>

#include "proxy/buf.h"
#include "proxy/mem.h"

bool tg_jw_grow(struct tg_jw *j, size_t n)
{
    if (j->failed)
        return false;
    if (j->len > j->max || n > j->max - j->len) {
        j->failed = j->too_long = true;
        j->max = j->len;
        return false;
    }
    if (j->cap - j->len >= n)
        return true;
    size_t ncap = j->cap ? j->cap : 4096;
    while (ncap - j->len < n)
        ncap *= 2;
    char *nb = tg_mem_realloc(j->base, ncap);
    if (!nb) {
        j->failed = true;
        j->max = j->len;
        return false;
    }
    j->base = nb;
    j->cap = ncap;
    return true;
}

/* Length of the valid UTF-8 sequence at s[0..n) (s[0] >= 0x80), or 0 if invalid.
 * The rules of jansson's utf8_check_full: no overlong forms, no surrogates,
 * nothing above U+10FFFF. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t k;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        k = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        k = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 4;
        cp = c & 0x07;
    } else {
        return 0; /* a continuation byte, C0/C1 (always overlong) or F5..FF */
    }
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000) || (cp >= 0xD800 && cp <= 0xDFFF) ||
        cp > 0x10FFFF)
        return 0;
    return k;
}

void tg_jw_str(struct tg_jw *j, const char *str, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *s = (const unsigned char *)str;
    /* Worst case 6 output bytes per input byte, plus the quotes: one grow. */
    if (n > (SIZE_MAX - 2) / 6) {
        j->failed = j->too_long = true;
        j->max = j->len;
        return;
    }
    if (!tg_jw_grow(j, 6 * n + 2))
        return;
    char *o = j->base + j->len;
    *o++ = '"';
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *o++ = (char)c;
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t k = utf8_len(s + i, n - i);
            if (k) {
                memcpy(o, s + i, k);
                o += k;
                i += k;
            } else {
                memcpy(o, "\\ufffd", 6); /* one replacement per offending byte */
                o += 6;
                i++;
            }
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        default:
            memcpy(o, "u00", 3);
            o[3] = hex[c >> 4];
            o[4] = hex[c & 15];
            o += 5;
        }
        i++;
    }
    *o++ = '"';
    j->len = (size_t)(o - j->base);
}

void tg_jw_cstr(struct tg_jw *j, const char *s)
{
    if (s)
        tg_jw_str(j, s, strlen(s));
    else
        TG_JW_LIT(j, "null");
}

void tg_jw_int(struct tg_jw *j, int64_t v)
{
    char buf[24], *end = buf + sizeof(buf);
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    char *p = tg_u64_dec_back(end, u);
    if (v < 0)
        *--p = '-';
    tg_jw_raw(j, p, (size_t)(end - p));
}

void tg_jw_real(struct tg_jw *j, double v)
{
    if (!isfinite(v)) {
        TG_JW_LIT(j, "null");
        return;
    }
    /* jansson's jsonp_dtostr with precision 15 (the locale is "C" here). */
    char buf[64];
    int r = snprintf(buf, sizeof(buf), "%.15g", v);
    if (r < 0 || (size_t)r >= sizeof(buf) - 3) {
        j->failed = true; /* cannot happen: %.15g of a finite double fits */
        j->max = j->len;
        return;
    }
    size_t len = (size_t)r;
    if (!strchr(buf, '.') && !strchr(buf, 'e')) {
        buf[len++] = '.';
        buf[len++] = '0';
        buf[len] = '\0';
    }
    char *start = strchr(buf, 'e');
    if (start) {
        start++;
        char *end = start + 1;
        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, len - (size_t)(end - buf) + 1);
            len -= (size_t)(end - start);
        }
    }
    tg_jw_raw(j, buf, len);
}

void tg_jw_micro(struct tg_jw *j, uint64_t n)
{
    /* 100 <= n < 1e15: the value is in [1e-4, 1e9), where %.15g writes
     * fixed notation, and n/1e6 has at most 15 significant digits. */
    if (n < 100 || n >= 1000000000000000ull) {
        if (n == 0)
            TG_JW_LIT(j, "0.0");
        else
            tg_jw_real(j, (double)n / 1e6);
        return;
    }
    char buf[40], *end = buf + sizeof(buf);
    uint64_t ip = n / 1000000u;
    unsigned frac = (unsigned)(n % 1000000u);
    char *p;
    if (frac == 0) {
        *--end = '0'; /* integral: jansson keeps it a real with ".0" */
        p = end;
    } else {
        unsigned digits = 6;
        while (frac % 10 == 0) { /* %g drops trailing zeros */
            frac /= 10;
            digits--;
        }
        p = end;
        for (unsigned i = 0; i < digits; i++) {
            *--p = (char)('0' + frac % 10);
            frac /= 10;
        }
    }
    *--p = '.';
    p = tg_u64_dec_back(p, ip);
    tg_jw_raw(j, p, (size_t)(buf + sizeof(buf) - p));
}
