/*
 * h1parse.c - strict HTTP/1.1 request-head parser and chunked decoder.
 *
 * Why our own parser in front of llhttp: Debian's llhttp 8.1.0 accepts
 * obs-fold, "\r\n\rX" as an end of head (CVE-2023-30589), "identity, chunked",
 * chunked in HTTP/1.0 and spaces inside field names (THREATS §2.3).  Each of
 * those is a request-smuggling primitive between two parsers, so the head is
 * validated here first, in one pass over the lines, and llhttp is then asked
 * for a second opinion on exactly the same bytes.  Any disagreement on where
 * the head ends or how the body is framed is a 400: we never forward a request
 * that two parsers read differently.
 */
#include "proxy/h1parse.h"

#include <llhttp.h>
#include <string.h>

#include "proxy/buf.h"

/* What the field lines told us; the framing is decided once the head ends. */
struct scan {
    unsigned host_count;  /* Host fields seen */
    unsigned cl_count;    /* Content-Length fields seen */
    unsigned te_count;    /* Transfer-Encoding fields seen */
    uint64_t cl;          /* value of the Content-Length field */
    struct tg_iov te;     /* value of the Transfer-Encoding field */
    bool conn_close;      /* a Connection field names "close" */
    bool conn_keep_alive; /* a Connection field names "keep-alive" */
    bool expect_100;      /* Expect: 100-continue */
};

static ssize_t fail(struct tg_h1_head *out, int status, const char *why)
{
    out->error_status = status;
    out->error = why;
    return -1;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * request-line = method SP request-target SP HTTP-version (RFC 9112 §3),
 * with exactly one SP each: the RFC's "MAY accept other whitespace" is where
 * parsers start to disagree.
 */
static ssize_t request_line(const char *p, size_t n, struct tg_h1_head *out)
{
    const char *sp1 = memchr(p, ' ', n), *t, *sp2, *v;
    size_t vn;

    if (sp1 == NULL)
        return fail(out, 400, "malformed request line");
    out->method = tg_iov_make(p, (size_t)(sp1 - p));
    if (!tg_method_valid(out->method))
        return fail(out, 400, "invalid method");
    t = sp1 + 1;
    sp2 = memchr(t, ' ', n - (size_t)(t - p));
    if (sp2 == NULL)
        return fail(out, 400, "malformed request line");
    out->target = tg_iov_make(t, (size_t)(sp2 - t));
    if (out->target.len == 0)
        return fail(out, 400, "extra whitespace in request line");
    v = sp2 + 1;
    vn = n - (size_t)(v - p);
    /* HTTP-version = "HTTP" "/" DIGIT "." DIGIT, case-sensitive (RFC 9112 §2.3). */
    if (vn != 8 || memcmp(v, "HTTP/", 5) != 0 || !is_digit(v[5]) || v[6] != '.' || !is_digit(v[7]))
        return fail(out, 400, "malformed HTTP version");
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
        return fail(out, 505, "HTTP version not supported");
    out->minor = v[7] - '0';
    /* A reverse proxy has no business opening tunnels. */
    if (tg_iov_eq(out->method, TG_IOV_LIT("CONNECT")))
        return fail(out, 501, "CONNECT not supported");
    if (!tg_target_valid(out->target))
        return fail(out, 400, "invalid request target");
    if (out->target.base[0] == '*' && !tg_iov_eq(out->method, TG_IOV_LIT("OPTIONS")))
        return fail(out, 400, "asterisk-form target outside OPTIONS");
    return 0;
}

/* Content-Length = 1*DIGIT, at most 19 digits so it always fits in uint64_t. */
static bool parse_content_length(struct tg_iov v, uint64_t *out)
{
    uint64_t n = 0;

    if (v.len == 0 || v.len > 19)
        return false;
    for (size_t i = 0; i < v.len; i++) {
        if (!is_digit(v.base[i]))
            return false;
        n = n * 10 + (uint64_t)(v.base[i] - '0');
    }
    *out = n;
    return true;
}

/* field-line = field-name ":" OWS field-value OWS (RFC 9112 §5). */
static ssize_t field_line(const char *p, size_t n, struct scan *st, struct tg_h1_head *out)
{
    const char *colon, *vb, *ve;
    struct tg_iov name, value;

    /* n > 0 here: the empty line ends the head before we are called. */
    if (is_ows(p[0]))
        return fail(out, 400, out->nheaders == 0 ? "whitespace before first header" : "obs-fold");
    if (out->nheaders == TG_H1_MAX_HEADERS)
        return fail(out, 431, "too many header fields");
    colon = memchr(p, ':', n);
    if (colon == NULL)
        return fail(out, 400, "header line without colon");
    name = tg_iov_make(p, (size_t)(colon - p));
    if (!tg_header_name_valid(name))
        return fail(out, 400,
                    name.len > 0 && is_ows(colon[-1]) ? "whitespace before colon"
                                                      : "invalid header name");
    vb = colon + 1;
    ve = p + n;
    while (vb < ve && is_ows(*vb))
        vb++;
    while (ve > vb && is_ows(ve[-1]))
        ve--;
    value = tg_iov_make(vb, (size_t)(ve - vb));
    if (!tg_header_value_valid(value))
        return fail(out, 400, "invalid header value");
    out->headers[out->nheaders].name = name;
    out->headers[out->nheaders].value = value;
    out->nheaders++;

    if (tg_iov_ieq(name, "host")) {
        /* RFC 9112 §3.2: 400 for a missing, repeated or invalid Host. */
        if (++st->host_count > 1)
            return fail(out, 400, "duplicate Host");
        if (!tg_authority_valid(value))
            return fail(out, 400, "invalid Host");
        out->host = value;
    } else if (tg_iov_ieq(name, "content-length")) {
        /* RFC 9112 §6.3 item 5 would allow identical repeats; we do not. */
        if (++st->cl_count > 1)
            return fail(out, 400, "duplicate Content-Length");
        if (!parse_content_length(value, &st->cl))
            return fail(out, 400, "invalid Content-Length");
    } else if (tg_iov_ieq(name, "transfer-encoding")) {
        if (++st->te_count > 1)
            return fail(out, 400, "duplicate Transfer-Encoding");
        st->te = value;
    } else if (tg_iov_ieq(name, "connection")) {
        if (tg_token_list_has(value, TG_IOV_LIT("close")))
            st->conn_close = true;
        if (tg_token_list_has(value, TG_IOV_LIT("keep-alive")))
            st->conn_keep_alive = true;
    } else if (tg_iov_ieq(name, "expect")) {
        if (tg_iov_ieq(value, "100-continue"))
            st->expect_100 = true;
    }
    return 0;
}

/* Decide the framing once every field is known (RFC 9112 §6.1, §6.3). */
static ssize_t framing(const struct scan *st, struct tg_h1_head *out)
{
    if (out->minor == 1 && st->host_count == 0)
        return fail(out, 400, "missing Host");
    if (st->cl_count > 0 && st->te_count > 0)
        return fail(out, 400, "both Content-Length and Transfer-Encoding");
    if (st->te_count > 0) {
        if (out->minor == 0)
            return fail(out, 400, "Transfer-Encoding in HTTP/1.0");
        if (tg_iov_ieq(st->te, "chunked")) {
            out->body = TG_H1_BODY_CHUNKED;
        } else if (memchr(st->te.base, ',', st->te.len) != NULL) {
            /* "identity, chunked", "chunked, chunked", "gzip, chunked" ... */
            return fail(out, 400, "Transfer-Encoding list");
        } else if (tg_header_name_valid(st->te)) {
            /* A single well-formed coding we do not implement (RFC 9112 §6.1). */
            return fail(out, 501, "unsupported transfer coding");
        } else {
            return fail(out, 400, "invalid Transfer-Encoding");
        }
    } else if (st->cl_count > 0 && st->cl > 0) {
        out->body = TG_H1_BODY_LENGTH;
        out->content_length = st->cl;
    }
    if (out->minor == 1)
        out->keep_alive = !st->conn_close;
    else
        out->keep_alive = st->conn_keep_alive && !st->conn_close;
    /* RFC 9110 §10.1.1: a 100-continue in an HTTP/1.0 request is ignored. */
    out->expect_continue = out->minor == 1 && st->expect_100;
    return 0;
}

/* Pause as soon as llhttp has read the head: we only want its reading of it. */
static int on_llhttp_headers_complete(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED;
}

static const llhttp_settings_t llhttp_settings = {
    .on_headers_complete = on_llhttp_headers_complete,
};

/*
 * Run llhttp over exactly the head.  It must stop in on_headers_complete at
 * the same byte as we did, read the same method and version, and reach the
 * same framing; after resuming, its own after-headers checks (e.g. a
 * Transfer-Encoding that is not chunked) must pass too.  Returns NULL when it
 * agrees, else a reason.
 */
static const char *second_opinion(const char *buf, size_t head_len, const struct tg_h1_head *h)
{
    llhttp_t p;
    llhttp_errno_t err;
    const char *name;
    bool chunked, has_cl;

    llhttp_init(&p, HTTP_REQUEST, &llhttp_settings);
    if (llhttp_execute(&p, buf, head_len) != HPE_PAUSED)
        return "llhttp rejected the head";
    if (llhttp_get_error_pos(&p) != buf + head_len)
        return "llhttp disagrees on the end of the head";
    if (p.http_major != 1 || p.http_minor != h->minor)
        return "llhttp disagrees on the version";
    name = llhttp_method_name((llhttp_method_t)p.method);
    if (!tg_iov_eq(h->method, tg_iov_make(name, strlen(name))))
        return "llhttp disagrees on the method";
    chunked = (p.flags & F_CHUNKED) != 0;
    has_cl = (p.flags & F_CONTENT_LENGTH) != 0;
    switch (h->body) {
    case TG_H1_BODY_NONE:
        if (chunked || (p.flags & F_TRANSFER_ENCODING) || (has_cl && p.content_length != 0))
            return "llhttp disagrees on the framing";
        break;
    case TG_H1_BODY_LENGTH:
        if (chunked || !has_cl || p.content_length != h->content_length)
            return "llhttp disagrees on the framing";
        break;
    case TG_H1_BODY_CHUNKED:
        if (!chunked || has_cl)
            return "llhttp disagrees on the framing";
        break;
    }
    /*
     * Let llhttp take its framing decision on zero further bytes.
     * HPE_PAUSED_UPGRADE means "Upgrade" was sent: we ignore Upgrade (RFC 9110
     * §7.8 allows it, and it is hop-by-hop), and the body framing llhttp used
     * before switching is the one compared above.
     */
    llhttp_resume(&p);
    err = llhttp_execute(&p, buf + head_len, 0);
    if (err != HPE_OK && err != HPE_PAUSED_UPGRADE)
        return "llhttp rejected the framing";
    return NULL;
}

ssize_t tg_h1_parse_head(const char *buf, size_t len, size_t max_header_bytes,
                         struct tg_h1_head *out)
{
    size_t avail = len < max_header_bytes ? len : max_header_bytes, pos = 0;
    struct scan st;
    bool request_line_done = false;
    const char *why;

    memset(&st, 0, sizeof(st));
    out->method = out->target = out->host = TG_IOV_NULL;
    out->minor = 0;
    out->nheaders = 0;
    out->body = TG_H1_BODY_NONE;
    out->content_length = 0;
    out->keep_alive = false;
    out->expect_continue = false;
    out->error_status = 0;
    out->error = NULL;

    /*
     * One pass over the lines, judging each as soon as its CRLF is in: every
     * error found on a prefix is an error of the whole head, so feeding the
     * head in pieces gives the same answer as feeding it at once.
     */
    for (;;) {
        const char *line = buf + pos, *lf;
        size_t rest = avail - pos, n;
        ssize_t rv;

        lf = memchr(line, '\n', rest);
        if (lf == NULL) {
            /*
             * No complete line yet.  A CR with a byte after it is already a
             * bare CR (this is what catches "\r\n\rX").
             */
            const char *cr = memchr(line, '\r', rest);
            if (cr != NULL && cr + 1 < line + rest)
                return fail(out, 400, "bare CR");
            if (len >= max_header_bytes)
                return fail(out, 431, "request head too large");
            return 0;
        }
        /* RFC 9112 §2.2: a bare LF is a MAY; we require CRLF everywhere. */
        if (lf == line || lf[-1] != '\r')
            return fail(out, 400, "bare LF");
        n = (size_t)(lf - line) - 1;
        if (memchr(line, '\r', n) != NULL)
            return fail(out, 400, "bare CR");
        pos += n + 2;
        if (!request_line_done) {
            /* No leading empty lines either (a MAY in §2.2): the first line is the request. */
            rv = request_line(line, n, out);
            request_line_done = true;
        } else if (n == 0) {
            break;
        } else {
            rv = field_line(line, n, &st, out);
        }
        if (rv < 0)
            return rv;
    }
    if (framing(&st, out) < 0)
        return -1;
    why = second_opinion(buf, pos, out);
    if (why != NULL)
        return fail(out, 400, why);
    return (ssize_t)pos;
}

/* ---- chunked transfer coding (RFC 9112 §7.1) ---- */

#define CHUNK_SIZE_DIGITS 10   /* 16^10 = 2^40: sizes stay below that */
#define CHUNK_EXT_MAX 256      /* bytes of chunk-ext per chunk line (CVE-2024-22019) */
#define CHUNK_TRAILER_MAX 8192 /* bytes of the whole trailer section, CRLFs included */

enum chunked_state {
    CH_SIZE = 0,      /* chunk-size hex digits */
    CH_EXT,           /* ";" chunk-ext up to CR */
    CH_SIZE_LF,       /* LF ending the chunk-size line */
    CH_DATA,          /* chunk-data */
    CH_DATA_CR,       /* CR after chunk-data */
    CH_DATA_LF,       /* LF after chunk-data */
    CH_TRAILER_START, /* start of a trailer field line, or the final CRLF */
    CH_TRAILER_NAME,  /* trailer field-name up to ':' */
    CH_TRAILER_VALUE, /* trailer field-value up to CR */
    CH_TRAILER_LF,    /* LF ending a trailer field line */
    CH_FINAL_LF,      /* LF of the final CRLF */
    CH_DONE,          /* message complete */
    CH_ERROR,         /* malformed; sticky */
};

static bool is_tchar(char c)
{
    return tg_header_name_valid(tg_iov_make(&c, 1));
}

/* field-vchar / SP / HTAB: what may appear in a chunk-ext or a trailer value. */
static bool is_text(char c)
{
    unsigned char u = (unsigned char)c;
    return u == '\t' || (u >= 0x20 && u != 0x7f);
}

void tg_chunked_init(struct tg_chunked *d)
{
    memset(d, 0, sizeof(*d));
    d->state = CH_SIZE;
}

ssize_t tg_chunked_decode(struct tg_chunked *d, const char *in, size_t len, tg_chunked_data_fn *cb,
                          void *ud)
{
    size_t i = 0;

    if (d->state == CH_DONE)
        return 0;
    while (i < len) {
        char c = in[i];
        int h;

        switch ((enum chunked_state)d->state) {
        case CH_SIZE:
            h = hex_value(c);
            if (h >= 0) {
                if (++d->size_digits > CHUNK_SIZE_DIGITS)
                    goto bad;
                d->remaining = (d->remaining << 4) | (uint64_t)h;
            } else if (d->size_digits == 0) {
                goto bad; /* empty size, "0x", whitespace, sign ... */
            } else if (c == ';') {
                d->ext_len = 1;
                d->state = CH_EXT;
            } else if (c == '\r') {
                d->state = CH_SIZE_LF;
            } else {
                goto bad;
            }
            i++;
            break;
        case CH_EXT:
            /* Extensions are ignored (never forwarded), only bounded and CTL-free. */
            if (c == '\r') {
                d->state = CH_SIZE_LF;
            } else if (!is_text(c) || ++d->ext_len > CHUNK_EXT_MAX) {
                goto bad;
            }
            i++;
            break;
        case CH_SIZE_LF:
            if (c != '\n')
                goto bad;
            d->state = d->remaining == 0 ? CH_TRAILER_START : CH_DATA;
            i++;
            break;
        case CH_DATA: {
            size_t n = len - i;
            if ((uint64_t)n > d->remaining)
                n = (size_t)d->remaining;
            if (cb != NULL && cb(ud, in + i, n) != 0)
                goto bad;
            d->remaining -= n;
            i += n;
            if (d->remaining == 0)
                d->state = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
            if (c != '\r')
                goto bad;
            d->state = CH_DATA_LF;
            i++;
            break;
        case CH_DATA_LF:
            if (c != '\n')
                goto bad;
            d->size_digits = 0;
            d->ext_len = 0;
            d->state = CH_SIZE;
            i++;
            break;
        case CH_TRAILER_START:
        case CH_TRAILER_NAME:
        case CH_TRAILER_VALUE:
        case CH_TRAILER_LF:
        case CH_FINAL_LF:
            if (++d->trailer_len > CHUNK_TRAILER_MAX)
                goto bad;
            switch ((enum chunked_state)d->state) {
            case CH_TRAILER_START:
                /* SP/HTAB here would be obs-fold or whitespace before a name. */
                if (c == '\r')
                    d->state = CH_FINAL_LF;
                else if (is_tchar(c))
                    d->state = CH_TRAILER_NAME;
                else
                    goto bad;
                break;
            case CH_TRAILER_NAME:
                if (c == ':')
                    d->state = CH_TRAILER_VALUE;
                else if (!is_tchar(c))
                    goto bad;
                break;
            case CH_TRAILER_VALUE:
                if (c == '\r')
                    d->state = CH_TRAILER_LF;
                else if (!is_text(c))
                    goto bad;
                break;
            case CH_TRAILER_LF:
                if (c != '\n')
                    goto bad;
                d->state = CH_TRAILER_START;
                break;
            case CH_FINAL_LF:
                if (c != '\n')
                    goto bad;
                d->state = CH_DONE;
                d->done = true;
                return (ssize_t)(i + 1);
            case CH_SIZE:
            case CH_EXT:
            case CH_SIZE_LF:
            case CH_DATA:
            case CH_DATA_CR:
            case CH_DATA_LF:
            case CH_DONE:
            case CH_ERROR: goto bad;
            }
            i++;
            break;
        case CH_DONE: return (ssize_t)i;
        case CH_ERROR: return -1;
        }
    }
    return (ssize_t)i;

bad:
    d->state = CH_ERROR;
    return -1;
}
