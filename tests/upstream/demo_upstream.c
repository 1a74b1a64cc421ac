/*
 * demo_upstream.c - OpenAI-compatible demo and test model server.
 *
 * One thread, one libuv loop, llhttp for requests, jansson for request JSON.
 * It serves the quick-start demo, the integration tests (fault modes picked
 * per request with the x-demo-mode header, so no restarts are needed) and the
 * benchmarks.  The hot path therefore logs nothing and batches every
 * response produced by one read (pipelining) into a single multi-buffer
 * uv_write.  CLI, endpoints and modes are documented in README.md here.
 *
 * It includes no tollgate header on purpose: it stands in for a third-party
 * server.  proxy/banned.h is force-included by the build.
 *
 * Invariants worth knowing before editing:
 *  - Requests are parsed as bytes arrive and queued in order; only the queue
 *    head is ever answered (HTTP/1.1 pipelining, RFC 9112 section 9.3.2).
 *  - A struct conn is freed only in its last close callback; everything
 *    else that may end a connection calls conn_close(), which only marks it
 *    and starts the asynchronous close (STYLE 13, 14).
 *  - Bytes to send are staged in c->bufs and handed to one uv_write by
 *    flush(); streamed bodies flush per event or per chunk.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>
#include <llhttp.h>
#include <openssl/evp.h>
#include <uv.h>

#define HEAD_MAX (64u * 1024u)         /* url + header bytes of one request */
#define BODY_MAX (16u * 1024u * 1024u) /* request body (except /echo, hashed only) */
#define HDRS_MAX 1024u                 /* header lines of one request */
#define QUEUE_MAX 32u                  /* parsed, unanswered requests before read stop */
#define WQ_HIGH (64u * 1024u)          /* streamed bodies pause above this queue size */
#define WQ_PIPELINE (256u * 1024u)     /* pipelined answers pause above this */
#define OUT_BUFS 64u                   /* uv_bufs staged per uv_write */
#define BLK_SIZE (16u * 1024u)         /* copy block for small response pieces */
#define GIVE_MIN (32u * 1024u)         /* larger pieces get their own buffer */
#define BIG_CHUNK (16u * 1024u)        /* big= body chunk */
#define BIG_DEFAULT (1024u * 1024u)    /* /big without big= */
#define SSE_BIG_BYTES 1024u            /* content bytes per sse-big event */
#define SB_MAX (64u * 1024u * 1024u)   /* ceiling of any built response */
#define LINGER_MS 2000u                /* read-and-discard after our FIN */
#define TOKENS_MAX 1000000             /* max_tokens accepted */
#define TOKENS_DEFAULT 16
#define EMB_DIM 8
#define EMB_INPUTS_MAX 2048
#define PATHS_MAX 1024   /* distinct by_path keys before "<other>" */
#define PATH_KEY_MAX 512 /* longer paths count as "<long>" */
#define DELAY_MAX 3600000
#define CLEN_CHUNKED (-1) /* put_head: chunked (or close-delimited on 1.0) */
#define CLEN_NONE (-2)    /* put_head: no body at all (204, 304) */

#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))
#define sb_lit(b, s) sb_add((b), "" s, sizeof(s) - 1) /* s must be a literal */

/* A growable byte string with a ceiling and a sticky error flag. */
struct sb {
    char *p;    /* heap bytes, not NUL-terminated */
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated */
    bool err;   /* an append failed (ENOMEM or past SB_MAX); checked before use */
};

/* One header line as offsets into req.hb (the buffer may move). */
struct hdr {
    uint32_t name_off; /* name start in hb */
    uint32_t name_len; /* name bytes */
    uint32_t val_off;  /* value start in hb */
    uint32_t val_len;  /* value bytes */
};

/* Fault modes from x-demo-mode (-1 or false: not requested). */
struct mode {
    int64_t delay_first;   /* ms before the response head; -1: global default */
    int64_t delay_between; /* ms between stream events / big chunks */
    int64_t reset_after;   /* events, chunks or body bytes before an RST */
    int64_t big;           /* body of this many 'x' bytes */
    int64_t sse_big;       /* SSE stream of this many ~1 KiB events */
    int64_t events;        /* stream this many content events whatever max_tokens says */
    int status;            /* answer with this status and an error body; 0: off */
    bool no_usage;         /* never send the usage event */
    bool close;            /* Connection: close after the response */
};

enum route {
    R_NOTFOUND,
    R_CHAT,
    R_COMPL,
    R_EMB,
    R_MODELS,
    R_HEALTH,
    R_ECHO,
    R_BIG,
    R_STATS,
    R_RESET
};

/* Where the queue head is in being answered. */
enum rstate {
    S_START,      /* not started */
    S_WAIT_FIRST, /* delay-first-byte timer armed */
    S_RESPOND,    /* delay over: produce the response */
    S_BODY,       /* streaming a body (SSE or big) */
    S_RESET,      /* waiting for writes to drain, then RST */
    S_DONE,       /* fully staged: pop and free */
};

enum body_kind { B_NONE, B_SSE, B_BIG };
enum phase { PH_EVENTS, PH_FINAL, PH_USAGE, PH_DONE, PH_END };
enum tuse { T_NONE, T_DELAY, T_LINGER };

/* One request: parsed head, body, then its response state. */
struct req {
    struct req *next;     /* pipeline queue */
    char *hb;             /* url, then header names and values */
    uint32_t hb_len;      /* bytes used in hb */
    uint32_t hb_cap;      /* bytes allocated in hb */
    uint32_t url_len;     /* url is hb[0, url_len) */
    uint32_t trailer_len; /* trailer bytes seen (counted, not kept) */
    struct hdr *hdrs;     /* header lines in received order */
    uint32_t nhdrs;       /* used entries */
    uint32_t hdrs_cap;    /* allocated entries */
    bool in_field;        /* inside a header name (llhttp may split it) */
    bool head_done;       /* headers complete: later fields are trailers */
    bool keep_alive;      /* llhttp_should_keep_alive() */
    bool keep_body;       /* buffer the body (JSON endpoints) */
    bool is_demo;         /* under /_demo/: no stats, no modes */
    bool bad_mode;        /* x-demo-mode did not parse */
    uint32_t bad_off;     /* offending token in hb */
    uint32_t bad_len;     /* its length */
    uint8_t method;       /* llhttp_method_t */
    uint8_t http_minor;   /* 0 or 1 */
    enum route route;     /* from the path */
    struct mode mode;     /* fault modes */
    char *body;           /* buffered body (keep_body) */
    size_t body_len;      /* bytes in body */
    size_t body_cap;      /* bytes allocated */
    uint64_t body_bytes;  /* body bytes received, buffered or not */
    EVP_MD_CTX *sha;      /* /echo body digest while reading */
    char sha_hex[65];     /* final digest, hex */
    enum rstate state;    /* response progress */
    enum body_kind kind;  /* streamed body type */
    enum phase phase;     /* SSE position */
    bool close_conn;      /* this response ends the connection */
    bool chunked;         /* SSE framed with chunks (HTTP/1.1) */
    bool timer_armed;     /* conn timer runs for this request */
    bool need_delay;      /* delay-between due before the next unit */
    bool strict;          /* back-pressure: one write in flight at a time */
    bool chat;            /* chat.completion(.chunk) rather than text_completion */
    bool include_usage;   /* stream_options.include_usage */
    uint64_t id;          /* response id suffix */
    int64_t created;      /* response timestamp */
    uint64_t n_events;    /* content events to send */
    uint64_t ev_sent;     /* content events sent */
    uint64_t units;       /* events or chunks sent, for reset-after */
    uint64_t prompt;      /* prompt_tokens */
    uint64_t big_left;    /* big body bytes still to send */
    char *model_json;     /* the model as an escaped JSON string, quoted */
};

/* One client connection. */
struct conn {
    uv_tcp_t tcp;            /* the socket */
    uv_timer_t timer;        /* delays and lingering close */
    uv_shutdown_t shut;      /* our FIN */
    llhttp_t parser;         /* request parser */
    struct conn *prev;       /* all-connections list */
    struct conn *next;       /* all-connections list */
    int pending_closes;      /* handles still closing; free at 0 */
    struct req *cur;         /* request being parsed */
    struct req *q_head;      /* oldest unanswered request */
    struct req *q_tail;      /* newest queued request */
    unsigned q_len;          /* queued requests */
    bool busy;               /* q_head is being answered */
    bool reading;            /* uv_read_start is active */
    bool closing;            /* conn_close() ran */
    bool close_after;        /* close once staged output is written */
    bool shutdown_started;   /* uv_shutdown issued */
    bool lingering;          /* after FIN: discarding input until EOF or timer */
    bool input_done;         /* EOF, parse error: parse nothing more */
    bool eof;                /* peer sent FIN */
    bool out_err;            /* staging failed: close at next flush */
    int fail_status;         /* answer this (400, 413, 431, 505) after the queue */
    const char *fail_msg;    /* its message */
    enum tuse tuse;          /* what the timer is for */
    unsigned outstanding;    /* uv_writes in flight */
    uv_buf_t bufs[OUT_BUFS]; /* staged output */
    unsigned nbufs;          /* staged buffers */
    void *owned[OUT_BUFS];   /* heap blocks freed when the write completes */
    unsigned nowned;         /* entries in owned */
    char *blk;               /* current copy block (also in owned) */
    size_t blk_len;          /* bytes used in blk */
    size_t blk_cap;          /* bytes in blk */
    uint64_t out_big;        /* big= body bytes staged, for big_bytes_written */
    struct sb sb;            /* scratch for building bodies and events */
};

/* A write in flight: frees its owned blocks on completion. */
struct wreq {
    uv_write_t req;  /* libuv request */
    struct conn *c;  /* owner */
    uint64_t big;    /* big= bytes in this write */
    unsigned nowned; /* entries in owned */
    void *owned[];   /* heap blocks to free */
};

/* Process state and counters (single thread). */
struct server {
    uv_loop_t *loop;            /* the loop */
    uv_tcp_t listener;          /* listening socket */
    uv_signal_t sig_term;       /* SIGTERM */
    uv_signal_t sig_int;        /* SIGINT */
    llhttp_settings_t settings; /* parser callbacks */
    struct conn *conns;         /* open connections */
    bool stopping;              /* a signal arrived */
    bool quiet;                 /* --quiet */
    int64_t delay_first;        /* --delay-first-byte */
    int sndbuf;                 /* --sndbuf, 0: kernel default */
    uint64_t next_id;           /* response ids */
    uint64_t requests;          /* requests received, /_demo/ excluded */
    uint64_t connections;       /* connections accepted */
    uint64_t open_connections;  /* connections open now */
    uint64_t big_bytes_written; /* big= bytes the socket accepted */
    json_t *by_path;            /* path -> count */
};

static struct server g;
static char xbuf[BIG_CHUNK]; /* 'x' bytes for big= and sse-big */
static char rbuf[64 * 1024]; /* shared read buffer: each read is consumed at once */

static const char models_json[] =
    "{\"object\":\"list\",\"data\":[{\"id\":\"demo-model\",\"object\":\"model\","
    "\"created\":1700000000,\"owned_by\":\"tollgate-demo\"}]}";

static void pump(struct conn *c);
static void flush(struct conn *c);
static void conn_close(struct conn *c, bool reset);

/* ---- string builder ---------------------------------------------------- */

static bool sb_grow(struct sb *b, size_t extra)
{
    size_t need, cap;
    char *p;

    if (b->err)
        return false;
    if (extra > SB_MAX - b->len) {
        b->err = true;
        return false;
    }
    need = b->len + extra;
    if (need <= b->cap)
        return true;
    cap = b->cap ? b->cap : 512;
    while (cap < need)
        cap *= 2;
    p = realloc(b->p, cap);
    if (p == NULL) {
        b->err = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

static void sb_add(struct sb *b, const void *p, size_t n)
{
    if (n == 0 || !sb_grow(b, n))
        return;
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void sb_str(struct sb *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sb *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->err = true;
        return;
    }
    if ((size_t)n < sizeof tmp) {
        sb_add(b, tmp, (size_t)n);
        return;
    }
    if (!sb_grow(b, (size_t)n + 1))
        return;
    va_start(ap, fmt);
    n = vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->err = true;
        return;
    }
    b->len += (size_t)n;
}

static void sb_u64(struct sb *b, uint64_t v)
{
    char d[20];
    size_t i = sizeof d;

    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    sb_add(b, d + i, sizeof d - i);
}

static void sb_reset(struct sb *b)
{
    b->len = 0;
    b->err = false;
}

static void sb_dispose(struct sb *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->err = false;
}

/*
 * Append s as a quoted JSON string.  Header bytes are not promised to be
 * UTF-8, so with latin1 every byte >= 0x80 becomes \u00XX (RFC 9110 5.5
 * treats field octets as ISO-8859-1); jansson-validated strings pass as-is.
 */
static void sb_json_str(struct sb *b, const char *s, size_t n, bool latin1)
{
    static const char hex[] = "0123456789abcdef";
    size_t i, run = 0;

    sb_lit(b, "\"");
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[6];

        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch != 0x7f && (ch < 0x80 || !latin1))
            continue;
        sb_add(b, s + run, i - run);
        run = i + 1;
        if (ch == '"' || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char)ch;
            sb_add(b, esc, 2);
            continue;
        }
        memcpy(esc, "\\u00", 4);
        esc[4] = hex[ch >> 4];
        esc[5] = hex[ch & 15];
        sb_add(b, esc, 6);
    }
    sb_add(b, s + run, n - run);
    sb_lit(b, "\"");
}

/* ---- output staging ---------------------------------------------------- */

static void on_write(uv_write_t *req, int status);

static bool out_room(struct conn *c)
{
    if (c->nbufs == OUT_BUFS || c->nowned == OUT_BUFS)
        flush(c);
    return !c->closing && !c->out_err;
}

/* Stage n bytes at p, which stay valid until the write completes; owned
 * (may be NULL) is freed then.  On failure owned is freed at once. */
static void out_ref(struct conn *c, const char *p, size_t n, void *owned)
{
    if (n == 0 || !out_room(c)) {
        free(owned);
        return;
    }
    c->bufs[c->nbufs].base = (char *)(uintptr_t)p;
    c->bufs[c->nbufs].len = n;
    c->nbufs++;
    if (owned != NULL)
        c->owned[c->nowned++] = owned;
}

/* Stage a copy of n bytes, coalescing small pieces into one block. */
static void out_copy(struct conn *c, const void *p, size_t n)
{
    char *dst;
    uv_buf_t *last;

    if (n == 0 || !out_room(c))
        return;
    if (c->blk == NULL || c->blk_cap - c->blk_len < n) {
        size_t cap = n > BLK_SIZE ? n : BLK_SIZE;
        char *blk = malloc(cap);

        if (blk == NULL) {
            c->out_err = true;
            return;
        }
        c->owned[c->nowned++] = blk;
        c->blk = blk;
        c->blk_len = 0;
        c->blk_cap = cap;
    }
    dst = c->blk + c->blk_len;
    memcpy(dst, p, n);
    c->blk_len += n;
    last = c->nbufs ? &c->bufs[c->nbufs - 1] : NULL;
    if (last != NULL && last->base + last->len == dst) {
        last->len += n;
        return;
    }
    c->bufs[c->nbufs].base = dst;
    c->bufs[c->nbufs].len = n;
    c->nbufs++;
}

#define out_lit(c, s) out_copy((c), "" s, sizeof(s) - 1) /* s must be a literal */

/* Stage the scratch builder's bytes; large ones move without a copy. */
static void out_sb(struct conn *c, size_t n)
{
    if (n >= GIVE_MIN) {
        out_ref(c, c->sb.p, n, c->sb.p);
        c->sb.p = NULL;
        c->sb.len = c->sb.cap = 0;
        return;
    }
    out_copy(c, c->sb.p, n);
}

static void wreq_free(struct wreq *w)
{
    unsigned i;

    for (i = 0; i < w->nowned; i++)
        free(w->owned[i]);
    free(w);
}

/* Hand everything staged to one uv_write. */
static void flush(struct conn *c)
{
    struct wreq *w;
    unsigned n;
    int rv;

    if (c->closing)
        return;
    if (c->out_err) {
        conn_close(c, false);
        return;
    }
    if (c->nbufs == 0)
        return;
    w = malloc(sizeof *w + c->nowned * sizeof w->owned[0]);
    if (w == NULL) {
        conn_close(c, false);
        return;
    }
    w->c = c;
    w->big = c->out_big;
    w->nowned = c->nowned;
    memcpy(w->owned, c->owned, c->nowned * sizeof c->owned[0]);
    n = c->nbufs;
    c->nbufs = c->nowned = 0;
    c->blk = NULL;
    c->blk_len = c->blk_cap = 0;
    c->out_big = 0;
    rv = uv_write(&w->req, (uv_stream_t *)&c->tcp, c->bufs, n, on_write);
    if (rv != 0) {
        wreq_free(w);
        conn_close(c, false);
        return;
    }
    c->outstanding++;
}

static void on_write(uv_write_t *req, int status)
{
    struct wreq *w = container_of(req, struct wreq, req);
    struct conn *c = w->c;

    if (status == 0)
        g.big_bytes_written += w->big;
    wreq_free(w);
    c->outstanding--;
    if (status != 0) {
        conn_close(c, false);
        return;
    }
    pump(c);
}

/* ---- requests ---------------------------------------------------------- */

static struct req *req_new(void)
{
    struct req *r = calloc(1, sizeof *r);

    if (r == NULL)
        return NULL;
    r->mode.delay_first = -1;
    r->mode.reset_after = -1;
    r->mode.big = -1;
    r->mode.sse_big = -1;
    r->mode.events = -1;
    r->http_minor = 1;
    return r;
}

static void req_free(struct req *r)
{
    if (r == NULL)
        return;
    free(r->hb);
    free(r->hdrs);
    free(r->body);
    EVP_MD_CTX_free(r->sha);
    free(r->model_json);
    free(r);
}

static int hb_add(struct req *r, const char *p, size_t n)
{
    uint32_t cap;
    char *q;

    if (n > HEAD_MAX - r->hb_len)
        return -1;
    if (r->hb_len + n > r->hb_cap) {
        cap = r->hb_cap ? r->hb_cap : 1024;
        while (cap < r->hb_len + n)
            cap *= 2;
        q = realloc(r->hb, cap);
        if (q == NULL)
            return -1;
        r->hb = q;
        r->hb_cap = cap;
    }
    memcpy(r->hb + r->hb_len, p, n);
    r->hb_len += (uint32_t)n;
    return 0;
}

static bool tok_eq(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);

    return n == l && strncasecmp(p, lit, l) == 0;
}

static bool parse_num(const char *p, size_t n, int64_t max, int64_t *out)
{
    char tmp[24], *end;
    long long v;
    size_t i;

    if (n == 0 || n >= sizeof tmp)
        return false;
    for (i = 0; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return false;
    memcpy(tmp, p, n);
    tmp[n] = '\0';
    errno = 0;
    v = strtoll(tmp, &end, 10);
    if (errno != 0 || *end != '\0' || v > max)
        return false;
    *out = v;
    return true;
}

static void trim(const char **p, size_t *n)
{
    while (*n > 0 && (**p == ' ' || **p == '\t')) {
        (*p)++;
        (*n)--;
    }
    while (*n > 0 && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t'))
        (*n)--;
}

/* One "key" or "key=value" of x-demo-mode. */
static bool mode_token(struct mode *m, const char *p, size_t n)
{
    const char *eq = memchr(p, '=', n);
    const char *v = eq ? eq + 1 : NULL;
    size_t kn = eq ? (size_t)(eq - p) : n;
    size_t vn = eq ? n - kn - 1 : 0;
    int64_t x;

    trim(&p, &kn);
    if (v != NULL)
        trim(&v, &vn);
    if (v == NULL) {
        if (tok_eq(p, kn, "no-usage"))
            m->no_usage = true;
        else if (tok_eq(p, kn, "close"))
            m->close = true;
        else
            return false;
        return true;
    }
    if (tok_eq(p, kn, "delay-first-byte"))
        return parse_num(v, vn, DELAY_MAX, &m->delay_first);
    if (tok_eq(p, kn, "delay-between"))
        return parse_num(v, vn, DELAY_MAX, &m->delay_between);
    if (tok_eq(p, kn, "reset-after"))
        return parse_num(v, vn, INT64_MAX / 2, &m->reset_after);
    if (tok_eq(p, kn, "big"))
        return parse_num(v, vn, INT64_C(1) << 40, &m->big);
    if (tok_eq(p, kn, "sse-big"))
        return parse_num(v, vn, 10000000, &m->sse_big);
    if (tok_eq(p, kn, "events"))
        return parse_num(v, vn, 10000000, &m->events);
    if (tok_eq(p, kn, "status")) {
        if (!parse_num(v, vn, 599, &x) || x < 200)
            return false;
        m->status = (int)x;
        return true;
    }
    return false;
}

static void parse_modes(struct req *r, const struct hdr *h)
{
    const char *p = r->hb + h->val_off;
    size_t n = h->val_len;

    while (n > 0) {
        const char *comma = memchr(p, ',', n);
        size_t tn = comma ? (size_t)(comma - p) : n;
        const char *t = p;
        size_t tl = tn;

        trim(&t, &tl);
        if (tl > 0 && !mode_token(&r->mode, t, tl) && !r->bad_mode) {
            r->bad_mode = true;
            r->bad_off = (uint32_t)(t - r->hb);
            r->bad_len = (uint32_t)tl;
        }
        if (comma == NULL)
            break;
        p = comma + 1;
        n -= tn + 1;
    }
}

static size_t path_len(const struct req *r)
{
    const char *q = memchr(r->hb, '?', r->url_len);

    return q ? (size_t)(q - r->hb) : r->url_len;
}

static bool path_is(const char *p, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(p, lit, n) == 0;
}

static enum route route_of(const char *p, size_t n, bool *demo)
{
    *demo = n >= 7 && memcmp(p, "/_demo/", 7) == 0;
    if (path_is(p, n, "/v1/chat/completions"))
        return R_CHAT;
    if (path_is(p, n, "/v1/completions"))
        return R_COMPL;
    if (path_is(p, n, "/v1/embeddings"))
        return R_EMB;
    if (path_is(p, n, "/v1/models"))
        return R_MODELS;
    if (path_is(p, n, "/healthz"))
        return R_HEALTH;
    if (path_is(p, n, "/big"))
        return R_BIG;
    if (path_is(p, n, "/_demo/stats"))
        return R_STATS;
    if (path_is(p, n, "/_demo/reset"))
        return R_RESET;
    if (path_is(p, n, "/echo") || (n > 6 && memcmp(p, "/echo/", 6) == 0))
        return R_ECHO;
    return R_NOTFOUND;
}

static void count_path(const char *p, size_t n)
{
    json_t *v;

    g.requests++;
    if (n > PATH_KEY_MAX) {
        p = "<long>";
        n = 6;
    }
    if (json_object_size(g.by_path) >= PATHS_MAX && json_object_getn(g.by_path, p, n) == NULL) {
        p = "<other>";
        n = 7;
    }
    v = json_object_getn(g.by_path, p, n);
    if (v != NULL) {
        json_integer_set(v, json_integer_value(v) + 1);
        return;
    }
    /* Fails on bytes that are not UTF-8 (or ENOMEM): keep a count anyway. */
    if (json_object_setn_new(g.by_path, p, n, json_integer(1)) == 0)
        return;
    v = json_object_get(g.by_path, "<invalid>");
    if (v != NULL) {
        json_integer_set(v, json_integer_value(v) + 1);
        return;
    }
    /* Out of memory: this request stays counted in "requests" only. */
    (void)json_object_set_new(g.by_path, "<invalid>", json_integer(1));
}

/* ---- llhttp callbacks -------------------------------------------------- */

static int fail(struct conn *c, int status, const char *msg)
{
    if (c->fail_status == 0) {
        c->fail_status = status;
        c->fail_msg = msg;
    }
    return -1;
}

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;

    req_free(c->cur);
    c->cur = req_new();
    if (c->cur == NULL)
        return fail(c, 500, "out of memory");
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;

    if (hb_add(c->cur, at, n) != 0)
        return fail(c, 431, "request head too large");
    c->cur->url_len += (uint32_t)n;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    struct req *r = c->cur;

    if (r->head_done) {
        r->trailer_len += (uint32_t)n;
        return r->trailer_len > HEAD_MAX ? fail(c, 431, "trailers too large") : 0;
    }
    if (!r->in_field) {
        if (r->nhdrs == HDRS_MAX)
            return fail(c, 431, "too many header fields");
        if (r->nhdrs == r->hdrs_cap) {
            uint32_t cap = r->hdrs_cap ? r->hdrs_cap * 2 : 16;
            struct hdr *h = realloc(r->hdrs, cap * sizeof *h);

            if (h == NULL)
                return fail(c, 500, "out of memory");
            r->hdrs = h;
            r->hdrs_cap = cap;
        }
        r->hdrs[r->nhdrs].name_off = r->hb_len;
        r->hdrs[r->nhdrs].name_len = 0;
        r->nhdrs++;
        r->in_field = true;
    }
    if (hb_add(r, at, n) != 0)
        return fail(c, 431, "request head too large");
    r->hdrs[r->nhdrs - 1].name_len += (uint32_t)n;
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    struct req *r = c->cur;

    if (r->head_done)
        return 0;
    r->in_field = false;
    r->hdrs[r->nhdrs - 1].val_off = r->hb_len;
    r->hdrs[r->nhdrs - 1].val_len = 0;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    struct req *r = c->cur;

    if (r->head_done) {
        r->trailer_len += (uint32_t)n;
        return r->trailer_len > HEAD_MAX ? fail(c, 431, "trailers too large") : 0;
    }
    if (hb_add(r, at, n) != 0)
        return fail(c, 431, "request head too large");
    r->hdrs[r->nhdrs - 1].val_len += (uint32_t)n;
    return 0;
}

static void maybe_continue(struct conn *c, struct req *r, bool expect)
{
    /* An interim 100 may only go out while no earlier answer is pending. */
    if (!expect || r->http_minor == 0 || c->q_head != NULL)
        return;
    if (!(c->parser.flags & F_CHUNKED) && c->parser.content_length == 0)
        return;
    out_lit(c, "HTTP/1.1 100 Continue\r\n\r\n");
    flush(c);
}

static int on_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    struct req *r = c->cur;
    bool expect = false;
    size_t plen;
    uint32_t i;

    r->head_done = true;
    if (llhttp_get_http_major(p) != 1)
        return fail(c, 505, "only HTTP/1.1 is supported");
    r->method = llhttp_get_method(p);
    r->http_minor = llhttp_get_http_minor(p);
    r->keep_alive = llhttp_should_keep_alive(p) && r->method != HTTP_CONNECT;
    plen = path_len(r);
    r->route = route_of(r->hb, plen, &r->is_demo);
    for (i = 0; i < r->nhdrs; i++) {
        const struct hdr *h = &r->hdrs[i];

        if (tok_eq(r->hb + h->name_off, h->name_len, "x-demo-mode"))
            parse_modes(r, h);
        else if (tok_eq(r->hb + h->name_off, h->name_len, "expect"))
            expect = tok_eq(r->hb + h->val_off, h->val_len, "100-continue");
    }
    if (!r->is_demo)
        count_path(r->hb, plen);
    r->keep_body = r->route == R_CHAT || r->route == R_COMPL || r->route == R_EMB;
    if (r->route == R_ECHO) {
        r->sha = EVP_MD_CTX_new();
        if (r->sha == NULL || EVP_DigestInit_ex(r->sha, EVP_sha256(), NULL) != 1)
            return fail(c, 500, "digest unavailable");
    } else if ((p->flags & F_CONTENT_LENGTH) && p->content_length > BODY_MAX) {
        return fail(c, 413, "request body too large");
    }
    maybe_continue(c, r, expect);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    struct req *r = c->cur;

    r->body_bytes += n;
    if (r->sha != NULL) {
        if (EVP_DigestUpdate(r->sha, at, n) != 1)
            return fail(c, 500, "digest failed");
        return 0;
    }
    if (r->body_bytes > BODY_MAX)
        return fail(c, 413, "request body too large");
    if (!r->keep_body)
        return 0;
    if (r->body_len + n > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        char *b;

        while (cap < r->body_len + n)
            cap *= 2;
        b = realloc(r->body, cap);
        if (b == NULL)
            return fail(c, 500, "out of memory");
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, at, n);
    r->body_len += n;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    static const char hex[] = "0123456789abcdef";
    struct conn *c = p->data;
    struct req *r = c->cur;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned i, mdlen = 0;

    if (r->sha != NULL) {
        if (EVP_DigestFinal_ex(r->sha, md, &mdlen) != 1 || mdlen != 32)
            return fail(c, 500, "digest failed");
        for (i = 0; i < mdlen; i++) {
            r->sha_hex[2 * i] = hex[md[i] >> 4];
            r->sha_hex[2 * i + 1] = hex[md[i] & 15];
        }
        r->sha_hex[64] = '\0';
        EVP_MD_CTX_free(r->sha);
        r->sha = NULL;
    }
    c->cur = NULL;
    if (c->q_tail != NULL)
        c->q_tail->next = r;
    else
        c->q_head = r;
    c->q_tail = r;
    c->q_len++;
    return 0;
}

/* ---- response building ------------------------------------------------- */

static const char *reason(int status)
{
    static const struct {
        int code;
        const char *text;
    } tab[] = {
        {200, "OK"},
        {201, "Created"},
        {202, "Accepted"},
        {204, "No Content"},
        {304, "Not Modified"},
        {400, "Bad Request"},
        {401, "Unauthorized"},
        {402, "Payment Required"},
        {403, "Forbidden"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {408, "Request Timeout"},
        {409, "Conflict"},
        {413, "Content Too Large"},
        {415, "Unsupported Media Type"},
        {422, "Unprocessable Content"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {501, "Not Implemented"},
        {502, "Bad Gateway"},
        {503, "Service Unavailable"},
        {504, "Gateway Timeout"},
        {505, "HTTP Version Not Supported"},
    };
    size_t i;

    for (i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (tab[i].code == status)
            return tab[i].text;
    return "Status";
}

/*
 * Stage a response head.  clen >= 0 is a Content-Length; CLEN_CHUNKED means
 * chunked on HTTP/1.1 and close-delimited on 1.0; CLEN_NONE means no body.
 * extra is zero or more complete "Name: value\r\n" lines.
 */
static void put_head(struct conn *c, const struct req *r, int status, const char *ctype,
                     int64_t clen, const char *extra)
{
    char h[512], len[48] = "";
    int n;

    if (clen >= 0)
        n = snprintf(len, sizeof len, "Content-Length: %" PRId64 "\r\n", clen);
    else if (clen == CLEN_CHUNKED && r->http_minor >= 1)
        n = snprintf(len, sizeof len, "Transfer-Encoding: chunked\r\n");
    else
        n = 0;
    if (n < 0 || (size_t)n >= sizeof len) {
        c->out_err = true;
        return;
    }
    n = snprintf(h, sizeof h, "HTTP/1.1 %d %s\r\nServer: demo-upstream\r\n%s%s%s%s%s%s\r\n", status,
                 reason(status), ctype ? "Content-Type: " : "", ctype ? ctype : "",
                 ctype ? "\r\n" : "", len, extra ? extra : "",
                 r->close_conn ? "Connection: close\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof h) {
        c->out_err = true;
        return;
    }
    out_copy(c, h, (size_t)n);
}

/*
 * Stage a complete response whose body is c->sb (a failed build is a 500).
 * With reset-after=N only the first N body bytes go out, then an RST.
 */
static void respond_sb(struct conn *c, struct req *r, int status, const char *ctype,
                       const char *extra)
{
    bool nobody = status == 204 || status == 304;
    size_t n = c->sb.len;

    if (c->sb.err) {
        c->out_err = true;
        return;
    }
    put_head(c, r, status, nobody ? NULL : ctype, nobody ? CLEN_NONE : (int64_t)n, extra);
    r->state = S_DONE;
    if (r->mode.reset_after >= 0) {
        if ((uint64_t)r->mode.reset_after < n)
            n = (size_t)r->mode.reset_after;
        r->state = S_RESET;
    }
    if (!nobody && r->method != HTTP_HEAD)
        out_sb(c, n);
}

static void respond_text(struct conn *c, struct req *r, int status, const char *ctype,
                         const char *body, size_t n)
{
    sb_reset(&c->sb);
    sb_add(&c->sb, body, n);
    respond_sb(c, r, status, ctype, NULL);
}

static void error_kind(int status, const char **type, const char **code)
{
    *code = NULL;
    switch (status) {
    case 401:
        *type = "invalid_request_error";
        *code = "invalid_api_key";
        return;
    case 403: *type = "permission_error"; return;
    case 404: *type = "not_found_error"; return;
    case 413:
        *type = "invalid_request_error";
        *code = "request_too_large";
        return;
    case 429:
        *type = "requests";
        *code = "rate_limit_exceeded";
        return;
    case 503:
        *type = "server_error";
        *code = "service_unavailable";
        return;
    default: *type = status >= 500 ? "server_error" : "invalid_request_error"; return;
    }
}

/* An OpenAI-shaped error: {"error":{"message","type","param","code"}}. */
static void reply_error(struct conn *c, struct req *r, int status, const char *type,
                        const char *param, const char *msg, size_t msglen)
{
    struct sb *b = &c->sb;
    const char *dtype, *code;

    error_kind(status, &dtype, &code);
    sb_reset(b);
    sb_lit(b, "{\"error\":{\"message\":");
    sb_json_str(b, msg, msglen, true);
    sb_lit(b, ",\"type\":\"");
    sb_str(b, type ? type : dtype);
    sb_lit(b, "\",\"param\":");
    if (param != NULL) {
        sb_lit(b, "\"");
        sb_str(b, param);
        sb_lit(b, "\"");
    } else {
        sb_lit(b, "null");
    }
    sb_lit(b, ",\"code\":");
    if (code != NULL) {
        sb_lit(b, "\"");
        sb_str(b, code);
        sb_lit(b, "\"");
    } else {
        sb_lit(b, "null");
    }
    sb_lit(b, "}}");
    respond_sb(c, r, status, "application/json",
               status == 429 || status == 503 ? "Retry-After: 1\r\n" : NULL);
}

static void reply_bad(struct conn *c, struct req *r, const char *param, const char *msg)
{
    reply_error(c, r, 400, "invalid_request_error", param, msg, strlen(msg));
}

static void reply_not_found(struct conn *c, struct req *r)
{
    char msg[300];
    int n = snprintf(msg, sizeof msg, "Invalid URL (%s %.*s)",
                     llhttp_method_name((llhttp_method_t)r->method),
                     (int)(r->url_len > 200 ? 200 : r->url_len), r->hb);

    if (n < 0) {
        c->out_err = true;
        return;
    }
    if ((size_t)n >= sizeof msg)
        n = (int)sizeof msg - 1;
    reply_error(c, r, 404, "invalid_request_error", NULL, msg, (size_t)n);
}

/* Connection-level failure (bad framing, too large): no request to answer. */
static void reply_conn_error(struct conn *c)
{
    struct req *r = req_new();
    const char *msg = c->fail_msg ? c->fail_msg : "malformed HTTP request";

    if (r == NULL) {
        c->out_err = true;
        return;
    }
    r->close_conn = true;
    reply_error(c, r, c->fail_status, NULL, NULL, msg, strlen(msg));
    req_free(r);
}

static int set_model(struct req *r, const char *s, size_t n)
{
    struct sb b = {0};

    sb_json_str(&b, s, n, false);
    sb_add(&b, "", 1);
    if (b.err) {
        sb_dispose(&b);
        return -1;
    }
    r->model_json = b.p;
    return 0;
}

static uint64_t count_words(const char *s, size_t n)
{
    uint64_t w = 0;
    bool in = false;
    size_t i;

    for (i = 0; i < n; i++) {
        bool sp = s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r');

        if (!sp && !in)
            w++;
        in = !sp;
    }
    return w;
}

/* Words of a string, of text parts ({"text": ...}), or integers as tokens. */
static uint64_t json_words(const json_t *v, int depth)
{
    uint64_t w = 0;
    size_t i;
    json_t *e;

    if (json_is_string(v))
        return count_words(json_string_value(v), json_string_length(v));
    if (json_is_integer(v))
        return 1;
    if (json_is_object(v))
        return json_words(json_object_get(v, "text"), depth);
    if (!json_is_array(v) || depth >= 3)
        return 0;
    for (i = 0; i < json_array_size(v); i++) {
        e = json_array_get(v, i);
        w += json_words(e, depth + 1);
    }
    return w;
}

static uint64_t prompt_tokens(json_t *root, bool chat)
{
    uint64_t w = 0;
    size_t i;
    json_t *m;

    if (chat) {
        json_t *msgs = json_object_get(root, "messages");

        if (json_is_array(msgs)) {
            for (i = 0; i < json_array_size(msgs); i++) {
                m = json_array_get(msgs, i);
                if (json_is_object(m))
                    w += json_words(json_object_get(m, "content"), 0);
            }
        }
    } else {
        w = json_words(json_object_get(root, "prompt"), 0);
    }
    return w ? w : 1;
}

/* max_tokens, else max_completion_tokens, else the default.  -1: bad value. */
static int max_tokens(json_t *root, uint64_t *out, const char **param)
{
    static const char *const keys[] = {"max_tokens", "max_completion_tokens"};
    size_t i;

    *out = TOKENS_DEFAULT;
    for (i = 0; i < 2; i++) {
        json_t *v = json_object_get(root, keys[i]);
        json_int_t x;

        if (v == NULL || json_is_null(v))
            continue;
        *param = keys[i];
        if (!json_is_integer(v))
            return -1;
        x = json_integer_value(v);
        if (x < 0 || x > TOKENS_MAX)
            return -1;
        *out = (uint64_t)x;
        return 0;
    }
    return 0;
}

/* Parse the body as a JSON object carrying a "model" string, or reply 400. */
static json_t *parse_request(struct conn *c, struct req *r)
{
    json_error_t jerr;
    json_t *root = json_loadb(r->body ? r->body : "", r->body_len, 0, &jerr);
    json_t *model;

    free(r->body);
    r->body = NULL;
    r->body_len = r->body_cap = 0;
    if (!json_is_object(root)) {
        reply_bad(c, r, NULL,
                  "We could not parse the JSON body of your request. (HINT: This likely means "
                  "you aren't using your HTTP library correctly.)");
        json_decref(root);
        return NULL;
    }
    model = json_object_get(root, "model");
    if (!json_is_string(model) || json_string_length(model) == 0) {
        reply_bad(c, r, "model", "you must provide a model parameter");
        json_decref(root);
        return NULL;
    }
    if (set_model(r, json_string_value(model), json_string_length(model)) != 0) {
        c->out_err = true;
        json_decref(root);
        return NULL;
    }
    return root;
}

static void sse_start(struct conn *c, struct req *r)
{
    r->chunked = r->http_minor >= 1;
    if (!r->chunked)
        r->close_conn = true; /* HTTP/1.0: the body ends at close */
    r->kind = B_SSE;
    r->phase = r->n_events ? PH_EVENTS : PH_FINAL;
    r->strict = r->mode.sse_big >= 0;
    put_head(c, r, 200, "text/event-stream", CLEN_CHUNKED, "Cache-Control: no-cache\r\n");
    if (r->method == HTTP_HEAD) {
        r->state = S_DONE;
        return;
    }
    flush(c);
    r->state = S_BODY;
}

static void completion_body(struct sb *b, const struct req *r, uint64_t n)
{
    uint64_t i;

    sb_reset(b);
    sb_str(b, r->chat ? "{\"id\":\"chatcmpl-demo-" : "{\"id\":\"cmpl-demo-");
    sb_u64(b, r->id);
    sb_str(b, r->chat ? "\",\"object\":\"chat.completion\"" : "\",\"object\":\"text_completion\"");
    sb_printf(b, ",\"created\":%" PRId64 ",\"model\":%s,\"choices\":[{", r->created, r->model_json);
    sb_str(b, r->chat ? "\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\""
                      : "\"text\":\"");
    for (i = 0; i < n && !b->err; i++) {
        sb_str(b, i ? " tok" : "tok");
        sb_u64(b, i);
    }
    sb_str(b, r->chat ? "\"},\"logprobs\":null,\"finish_reason\":\"length\"}]"
                      : "\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}]");
    sb_printf(b,
              ",\"usage\":{\"prompt_tokens\":%" PRIu64 ",\"completion_tokens\":%" PRIu64
              ",\"total_tokens\":%" PRIu64 "}}",
              r->prompt, n, r->prompt + n);
}

static void handle_completion(struct conn *c, struct req *r, bool chat)
{
    const char *param = NULL;
    json_t *root = parse_request(c, r);
    json_t *v, *opts;
    uint64_t n;
    bool stream = false;

    if (root == NULL)
        return;
    r->chat = chat;
    if (max_tokens(root, &n, &param) != 0) {
        reply_bad(c, r, param, "max_tokens must be an integer between 0 and 1000000");
        goto out;
    }
    v = json_object_get(root, "stream");
    if (v != NULL && !json_is_null(v) && !json_is_boolean(v)) {
        reply_bad(c, r, "stream", "stream must be a boolean");
        goto out;
    }
    stream = json_is_true(v);
    opts = json_object_get(root, "stream_options");
    r->include_usage = json_is_object(opts) && json_is_true(json_object_get(opts, "include_usage"));
    r->prompt = prompt_tokens(root, chat);
    r->id = ++g.next_id;
    r->created = (int64_t)time(NULL);
    if (r->mode.sse_big >= 0) {
        r->n_events = (uint64_t)r->mode.sse_big;
        sse_start(c, r);
    } else if (stream) {
        /* events=N: an upstream that ignores max_tokens. */
        r->n_events = r->mode.events >= 0 ? (uint64_t)r->mode.events : n;
        sse_start(c, r);
    } else {
        completion_body(&c->sb, r, n);
        respond_sb(c, r, 200, "application/json", NULL);
    }
out:
    json_decref(root);
}

/* sse-big on an endpoint that does not stream by itself. */
static void handle_sse_generic(struct conn *c, struct req *r)
{
    if (set_model(r, "demo-model", 10) != 0) {
        c->out_err = true;
        return;
    }
    r->chat = true;
    r->prompt = 1;
    r->id = ++g.next_id;
    r->created = (int64_t)time(NULL);
    r->n_events = (uint64_t)r->mode.sse_big;
    sse_start(c, r);
}

static uint64_t mix(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

/* FNV-1a over a string, or over the integers of a token array. */
static uint64_t input_hash(const json_t *v)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    size_t i;
    json_t *e;

    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);

        for (i = 0; i < n; i++)
            h = (h ^ (unsigned char)s[i]) * UINT64_C(0x100000001b3);
        return h;
    }
    for (i = 0; i < json_array_size(v); i++) {
        e = json_array_get(v, i);
        h = (h ^ (uint64_t)json_integer_value(e)) * UINT64_C(0x100000001b3);
    }
    return h;
}

/* Every element has this type (arrays: arrays of integers). */
static bool all_of(const json_t *a, json_type type)
{
    size_t i;
    json_t *e;

    for (i = 0; i < json_array_size(a); i++) {
        e = json_array_get(a, i);
        if (json_typeof(e) != type || (type == JSON_ARRAY && !all_of(e, JSON_INTEGER)))
            return false;
    }
    return true;
}

static void emb_item(struct sb *b, size_t idx, const json_t *input)
{
    uint64_t h = input_hash(input);
    int d;

    sb_printf(b, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":[", idx ? "," : "", idx);
    for (d = 0; d < EMB_DIM; d++) {
        double x = (double)(mix(h + (uint64_t)d) >> 11) * 0x1.0p-53 * 2.0 - 1.0;

        sb_printf(b, "%s%.6f", d ? "," : "", x);
    }
    sb_lit(b, "]}");
}

static void handle_embeddings(struct conn *c, struct req *r)
{
    struct sb *b = &c->sb;
    json_t *root = parse_request(c, r);
    json_t *in, *e;
    uint64_t tokens;
    size_t i;

    if (root == NULL)
        return;
    in = json_object_get(root, "input");
    if (!json_is_string(in) &&
        !(json_is_array(in) && json_array_size(in) > 0 && json_array_size(in) <= EMB_INPUTS_MAX &&
          (all_of(in, JSON_STRING) || all_of(in, JSON_INTEGER) || all_of(in, JSON_ARRAY)))) {
        reply_bad(c, r, "input",
                  "input must be a string, an array of strings, or token arrays (1-2048 items)");
        goto out;
    }
    tokens = json_words(in, 0);
    if (tokens == 0)
        tokens = 1;
    sb_reset(b);
    sb_lit(b, "{\"object\":\"list\",\"data\":[");
    if (json_is_string(in) || all_of(in, JSON_INTEGER))
        emb_item(b, 0, in);
    else {
        for (i = 0; i < json_array_size(in); i++) {
            e = json_array_get(in, i);
            emb_item(b, i, e);
        }
    }
    sb_printf(
        b, "],\"model\":%s,\"usage\":{\"prompt_tokens\":%" PRIu64 ",\"total_tokens\":%" PRIu64 "}}",
        r->model_json, tokens, tokens);
    respond_sb(c, r, 200, "application/json", NULL);
out:
    json_decref(root);
}

static void handle_echo(struct conn *c, struct req *r)
{
    struct sb *b = &c->sb;
    const char *m = llhttp_method_name((llhttp_method_t)r->method);
    uint32_t i;

    sb_reset(b);
    sb_lit(b, "{\"method\":");
    sb_json_str(b, m, strlen(m), true);
    sb_lit(b, ",\"path\":");
    sb_json_str(b, r->hb, r->url_len, true);
    sb_printf(b, ",\"http_version\":\"1.%u\",\"headers\":[", (unsigned)r->http_minor);
    for (i = 0; i < r->nhdrs; i++) {
        const struct hdr *h = &r->hdrs[i];

        sb_str(b, i ? ",[" : "[");
        sb_json_str(b, r->hb + h->name_off, h->name_len, true);
        sb_lit(b, ",");
        sb_json_str(b, r->hb + h->val_off, h->val_len, true);
        sb_lit(b, "]");
    }
    sb_printf(b, "],\"body_bytes\":%" PRIu64 ",\"body_sha256\":\"%s\"}", r->body_bytes, r->sha_hex);
    respond_sb(c, r, 200, "application/json", NULL);
}

static void handle_stats(struct conn *c, struct req *r, bool reset)
{
    json_t *o;
    char *s;

    if (reset) {
        g.requests = g.connections = g.big_bytes_written = 0;
        if (json_object_clear(g.by_path) != 0) {
            c->out_err = true;
            return;
        }
    }
    o = json_pack("{s:I,s:I,s:I,s:I,s:O}", "requests", (json_int_t)g.requests, "connections",
                  (json_int_t)g.connections, "open_connections", (json_int_t)g.open_connections,
                  "big_bytes_written", (json_int_t)g.big_bytes_written, "by_path", g.by_path);
    s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (s == NULL) {
        c->out_err = true;
        return;
    }
    respond_text(c, r, 200, "application/json", s, strlen(s));
    free(s);
}

static void big_start(struct conn *c, struct req *r, uint64_t bytes)
{
    put_head(c, r, 200, "application/octet-stream", (int64_t)bytes, NULL);
    if (r->method == HTTP_HEAD || bytes == 0) {
        r->state = r->mode.reset_after >= 0 ? S_RESET : S_DONE;
        return;
    }
    flush(c);
    r->kind = B_BIG;
    r->strict = true;
    r->big_left = bytes;
    r->state = S_BODY;
}

static bool is_get(const struct req *r)
{
    return r->method == HTTP_GET || r->method == HTTP_HEAD;
}

/* Produce the response of r (the delay, if any, is over). */
static void respond(struct conn *c, struct req *r)
{
    r->close_conn = !r->keep_alive || r->mode.close || r->http_minor == 0;
    r->state = S_DONE;
    if (r->bad_mode) {
        char msg[200];
        int n = snprintf(msg, sizeof msg, "invalid x-demo-mode token '%.*s'",
                         (int)(r->bad_len > 100 ? 100 : r->bad_len), r->hb + r->bad_off);

        if (n < 0 || (size_t)n >= sizeof msg)
            n = 0;
        reply_error(c, r, 400, NULL, NULL, msg, (size_t)n);
        return;
    }
    if (r->route == R_STATS && is_get(r)) {
        handle_stats(c, r, false);
        return;
    }
    if (r->route == R_RESET && r->method == HTTP_POST) {
        handle_stats(c, r, true);
        return;
    }
    if (r->is_demo) {
        reply_not_found(c, r);
        return;
    }
    if (r->mode.status != 0) {
        char msg[64];
        int n = snprintf(msg, sizeof msg, "demo-upstream: injected status %d", r->mode.status);

        reply_error(c, r, r->mode.status, NULL, NULL, msg, n > 0 ? (size_t)n : 0);
        return;
    }
    if (r->mode.big >= 0) {
        big_start(c, r, (uint64_t)r->mode.big);
        return;
    }
    if (r->mode.sse_big >= 0 && r->route != R_CHAT && r->route != R_COMPL) {
        handle_sse_generic(c, r);
        return;
    }
    switch (r->route) {
    case R_CHAT:
    case R_COMPL:
        if (r->method == HTTP_POST) {
            handle_completion(c, r, r->route == R_CHAT);
            return;
        }
        break;
    case R_EMB:
        if (r->method == HTTP_POST) {
            handle_embeddings(c, r);
            return;
        }
        break;
    case R_MODELS:
        if (is_get(r)) {
            respond_text(c, r, 200, "application/json", models_json, sizeof models_json - 1);
            return;
        }
        break;
    case R_HEALTH:
        if (is_get(r)) {
            respond_text(c, r, 200, "text/plain", "ok", 2);
            return;
        }
        break;
    case R_ECHO: handle_echo(c, r); return;
    case R_BIG:
        if (is_get(r) || r->method == HTTP_POST) {
            big_start(c, r, BIG_DEFAULT);
            return;
        }
        break;
    case R_NOTFOUND:
    case R_STATS:
    case R_RESET: break;
    }
    reply_not_found(c, r);
}

/* ---- streamed bodies --------------------------------------------------- */

static void sse_prefix(struct sb *b, const struct req *r)
{
    sb_str(b, r->chat ? "data: {\"id\":\"chatcmpl-demo-" : "data: {\"id\":\"cmpl-demo-");
    sb_u64(b, r->id);
    sb_str(b, r->chat ? "\",\"object\":\"chat.completion.chunk\""
                      : "\",\"object\":\"text_completion\"");
    sb_printf(b, ",\"created\":%" PRId64 ",\"model\":%s,\"choices\":[", r->created, r->model_json);
}

static void sse_content(struct sb *b, const struct req *r)
{
    if (r->chat)
        sb_str(b, r->ev_sent ? "{\"index\":0,\"delta\":{\"content\":\""
                             : "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"");
    else
        sb_lit(b, "{\"text\":\"");
    if (r->mode.sse_big >= 0) {
        sb_add(b, xbuf, SSE_BIG_BYTES);
    } else {
        sb_lit(b, "tok");
        sb_u64(b, r->ev_sent);
        sb_lit(b, " ");
    }
    sb_str(b, r->chat ? "\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
                      : "\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n");
}

/* Stage c->sb as one event (one chunk), then write it on its own. */
static void sse_emit(struct conn *c, struct req *r, bool last)
{
    char hdr[24];
    int n;

    if (c->sb.err) {
        c->out_err = true;
        flush(c);
        return;
    }
    if (r->chunked) {
        n = snprintf(hdr, sizeof hdr, "%zx\r\n", c->sb.len);
        if (n < 0 || (size_t)n >= sizeof hdr) {
            c->out_err = true;
            flush(c);
            return;
        }
        out_copy(c, hdr, (size_t)n);
    }
    out_copy(c, c->sb.p, c->sb.len);
    if (r->chunked)
        out_lit(c, "\r\n");
    if (last && r->chunked)
        out_lit(c, "0\r\n\r\n");
    flush(c);
}

static void sse_unit(struct conn *c, struct req *r)
{
    struct sb *b = &c->sb;
    uint64_t n = r->ev_sent;

    sb_reset(b);
    switch (r->phase) {
    case PH_EVENTS:
        sse_prefix(b, r);
        sse_content(b, r);
        r->ev_sent++;
        r->units++;
        if (r->ev_sent == r->n_events)
            r->phase = PH_FINAL;
        break;
    case PH_FINAL:
        sse_prefix(b, r);
        sb_str(b, r->chat ? "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":"
                            "\"length\"}]}\n\n"
                          : "{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":"
                            "\"length\"}]}\n\n");
        r->phase = r->include_usage && !r->mode.no_usage ? PH_USAGE : PH_DONE;
        break;
    case PH_USAGE:
        sse_prefix(b, r);
        sb_printf(b,
                  "],\"usage\":{\"prompt_tokens\":%" PRIu64 ",\"completion_tokens\":%" PRIu64
                  ",\"total_tokens\":%" PRIu64 "}}\n\n",
                  r->prompt, n, r->prompt + n);
        r->phase = PH_DONE;
        break;
    case PH_DONE:
        sb_lit(b, "data: [DONE]\n\n");
        r->phase = PH_END;
        r->state = S_DONE;
        break;
    case PH_END: return;
    }
    sse_emit(c, r, r->phase == PH_END);
}

static void big_unit(struct conn *c, struct req *r)
{
    size_t n = r->big_left < BIG_CHUNK ? (size_t)r->big_left : BIG_CHUNK;

    out_ref(c, xbuf, n, NULL);
    c->out_big += n;
    r->big_left -= n;
    r->units++;
    if (r->big_left == 0)
        r->state = S_DONE;
    flush(c);
}

static bool content_left(const struct req *r)
{
    return r->kind == B_BIG ? r->big_left > 0 : r->phase == PH_EVENTS;
}

static void on_timer(uv_timer_t *t);

static void arm(struct conn *c, struct req *r, uint64_t ms)
{
    c->tuse = T_DELAY;
    r->timer_armed = true;
    if (uv_timer_start(&c->timer, on_timer, ms, 0) != 0)
        conn_close(c, false);
}

/* Send body units while the socket keeps up; writes and timers resume it. */
static void body_step(struct conn *c, struct req *r)
{
    while (!c->closing && r->state == S_BODY && !r->timer_armed) {
        size_t wq = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);

        if (r->mode.reset_after >= 0 && r->units >= (uint64_t)r->mode.reset_after &&
            content_left(r)) {
            r->state = S_RESET;
            return;
        }
        if (wq >= WQ_HIGH || (r->strict && c->outstanding > 0))
            return;
        if (r->need_delay && r->mode.delay_between > 0) {
            arm(c, r, (uint64_t)r->mode.delay_between);
            return;
        }
        r->need_delay = true;
        if (r->kind == B_BIG)
            big_unit(c, r);
        else
            sse_unit(c, r);
    }
}

/* Advance the queue head as far as it can go now. */
static void step(struct conn *c, struct req *r)
{
    int64_t delay = r->mode.delay_first >= 0 ? r->mode.delay_first : g.delay_first;

    if (r->state == S_START) {
        r->state = S_RESPOND;
        if (delay > 0 && !r->is_demo) {
            r->state = S_WAIT_FIRST;
            arm(c, r, (uint64_t)delay);
            return;
        }
    }
    if (r->state == S_RESPOND)
        respond(c, r);
    if (r->state == S_BODY)
        body_step(c, r);
    if (r->state == S_RESET && !c->closing) {
        flush(c);
        if (!c->closing && c->outstanding == 0)
            conn_close(c, true);
    }
}

/* ---- connection -------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    buf->base = rbuf;
    buf->len = sizeof rbuf;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void read_start(struct conn *c)
{
    if (c->reading || c->closing)
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        conn_close(c, false);
        return;
    }
    c->reading = true;
}

static void read_stop(struct conn *c)
{
    if (!c->reading)
        return;
    uv_read_stop((uv_stream_t *)&c->tcp); /* cannot fail on a TCP handle */
    c->reading = false;
}

static void finish(struct conn *c)
{
    struct req *r = c->q_head;

    c->q_head = r->next;
    if (c->q_head == NULL)
        c->q_tail = NULL;
    c->q_len--;
    c->busy = false;
    if (r->close_conn)
        c->close_after = true;
    req_free(r);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = container_of(req, struct conn, shut);

    if (c->closing)
        return;
    if (status != 0 || c->eof) {
        conn_close(c, false);
        return;
    }
    /* Read and drop what the peer still sends, so our close does not turn
     * into an RST that destroys the response in flight (RFC 9112 9.6). */
    c->lingering = true;
    c->tuse = T_LINGER;
    if (uv_timer_start(&c->timer, on_timer, LINGER_MS, 0) != 0) {
        conn_close(c, false);
        return;
    }
    read_start(c);
}

/* Answer queued requests in order, then flush, resume reading or close. */
static void pump(struct conn *c)
{
    while (!c->closing) {
        if (c->busy) {
            step(c, c->q_head);
            if (c->closing || c->q_head->state != S_DONE)
                break;
            finish(c);
            continue;
        }
        if (c->close_after || c->q_head == NULL)
            break;
        if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > WQ_PIPELINE)
            break; /* the client is not reading: on_write resumes */
        c->busy = true;
    }
    if (c->closing)
        return;
    if (!c->busy && c->q_head == NULL && c->input_done && !c->close_after) {
        if (c->fail_status != 0)
            reply_conn_error(c);
        c->close_after = true;
    }
    if (!c->close_after && !c->input_done && c->q_len < QUEUE_MAX)
        read_start(c);
    flush(c);
    if (c->closing || !c->close_after || c->shutdown_started || c->busy)
        return;
    c->shutdown_started = true;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        conn_close(c, false);
}

static void on_timer(uv_timer_t *t)
{
    struct conn *c = container_of(t, struct conn, timer);
    struct req *r = c->q_head;

    if (c->closing)
        return;
    if (c->tuse == T_LINGER) {
        conn_close(c, false);
        return;
    }
    c->tuse = T_NONE;
    if (r != NULL && r->timer_armed) {
        r->timer_armed = false;
        if (r->state == S_WAIT_FIRST)
            r->state = S_RESPOND;
        else
            r->need_delay = false;
    }
    pump(c);
}

static void parse_input(struct conn *c, const char *p, size_t n)
{
    while (n > 0) {
        enum llhttp_errno err = llhttp_execute(&c->parser, p, n);
        const char *pos;

        if (err == HPE_OK)
            return;
        if (err == HPE_PAUSED_UPGRADE && c->fail_status == 0) {
            /* Upgrade is optional for the server (RFC 9110 7.8): ignore it
             * and keep reading HTTP/1.1 after the request. */
            pos = llhttp_get_error_pos(&c->parser);
            llhttp_resume_after_upgrade(&c->parser);
            if (pos == NULL || pos < p || pos > p + n)
                break;
            n -= (size_t)(pos - p);
            p = pos;
            continue;
        }
        break;
    }
    if (c->fail_status == 0)
        fail(c, 400, llhttp_get_error_reason(&c->parser));
    c->input_done = true;
    req_free(c->cur);
    c->cur = NULL;
    read_stop(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = container_of(s, struct conn, tcp);

    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        if (nread != UV_EOF || c->lingering) {
            conn_close(c, false);
            return;
        }
        c->eof = true;
        c->input_done = true;
        read_stop(c);
        req_free(c->cur); /* a half-received request is dropped */
        c->cur = NULL;
        pump(c);
        return;
    }
    if (c->lingering || c->close_after || c->input_done)
        return;
    parse_input(c, buf->base, (size_t)nread);
    if (c->q_len >= QUEUE_MAX)
        read_stop(c);
    pump(c);
}

static void conn_free(struct conn *c)
{
    unsigned i;
    struct req *r;

    req_free(c->cur);
    while ((r = c->q_head) != NULL) {
        c->q_head = r->next;
        req_free(r);
    }
    for (i = 0; i < c->nowned; i++)
        free(c->owned[i]);
    sb_dispose(&c->sb);
    free(c);
}

static void closed(struct conn *c)
{
    if (--c->pending_closes == 0)
        conn_free(c);
}

static void on_close_tcp(uv_handle_t *h)
{
    closed(container_of(h, struct conn, tcp));
}

static void on_close_timer(uv_handle_t *h)
{
    closed(container_of(h, struct conn, timer));
}

/* Start closing; the memory goes in the last close callback.  reset sends
 * an RST (SO_LINGER 0) instead of a FIN. */
static void conn_close(struct conn *c, bool reset)
{
    if (c->closing)
        return;
    c->closing = true;
    g.open_connections--;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        g.conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->pending_closes = 2;
    uv_close((uv_handle_t *)&c->timer, on_close_timer);
    /* close_reset refuses while a shutdown is pending: fall back to close. */
    if (!reset || uv_tcp_close_reset(&c->tcp, on_close_tcp) != 0)
        uv_close((uv_handle_t *)&c->tcp, on_close_tcp);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct conn *c;

    if (status != 0 || g.stopping)
        return;
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return;
    if (uv_tcp_init(g.loop, &c->tcp) != 0) {
        free(c);
        return;
    }
    c->pending_closes = 1;
    if (uv_timer_init(g.loop, &c->timer) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_close_tcp);
        return;
    }
    c->pending_closes = 2;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->timer, on_close_timer);
        uv_close((uv_handle_t *)&c->tcp, on_close_tcp);
        return;
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &g.settings);
    c->parser.data = c;
    c->next = g.conns;
    if (g.conns != NULL)
        g.conns->prev = c;
    g.conns = c;
    g.connections++;
    g.open_connections++;
    /* Small events must not wait for an ACK (Nagle): best effort. */
    (void)uv_tcp_nodelay(&c->tcp, 1);
    if (g.sndbuf > 0) {
        int v = g.sndbuf;

        (void)uv_send_buffer_size((uv_handle_t *)&c->tcp, &v);
    }
    read_start(c);
}

/* ---- process ----------------------------------------------------------- */

static void on_signal(uv_signal_t *s, int signum)
{
    struct conn *c, *next;

    (void)s;
    (void)signum;
    if (g.stopping)
        return;
    g.stopping = true;
    uv_close((uv_handle_t *)&g.listener, NULL);
    uv_close((uv_handle_t *)&g.sig_term, NULL);
    uv_close((uv_handle_t *)&g.sig_int, NULL);
    for (c = g.conns; c != NULL; c = next) {
        next = c->next;
        conn_close(c, false);
    }
}

struct opts {
    const char *host; /* --host */
    int64_t port;     /* --port */
};

static void usage(FILE *f)
{
    fprintf(f, "usage: demo_upstream [--host ADDR] [--port N] [--quiet]\n"
               "                     [--delay-first-byte MS] [--sndbuf BYTES]\n");
}

/* "--name value" or "--name=value"; returns the value or NULL. */
static const char *opt_value(int argc, char **argv, int *i, const char *name)
{
    size_t n = strlen(name);

    if (strncmp(argv[*i], name, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != '\0' || *i + 1 >= argc)
        return NULL;
    return argv[++*i];
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *v;
        int64_t x;

        if (strcmp(argv[i], "--quiet") == 0) {
            g.quiet = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if ((v = opt_value(argc, argv, &i, "--host")) != NULL) {
            o->host = v;
        } else if ((v = opt_value(argc, argv, &i, "--port")) != NULL) {
            if (!parse_num(v, strlen(v), 65535, &o->port))
                goto bad;
        } else if ((v = opt_value(argc, argv, &i, "--delay-first-byte")) != NULL) {
            if (!parse_num(v, strlen(v), DELAY_MAX, &g.delay_first))
                goto bad;
        } else if ((v = opt_value(argc, argv, &i, "--sndbuf")) != NULL) {
            if (!parse_num(v, strlen(v), 1 << 30, &x))
                goto bad;
            g.sndbuf = (int)x;
        } else {
            goto bad;
        }
    }
    return 0;
bad:
    fprintf(stderr, "demo_upstream: bad argument '%s'\n", argv[i < argc ? i : argc - 1]);
    usage(stderr);
    return -1;
}

static int resolve(const char *host, int port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
        return 0;
    return uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss);
}

static int listen_port(void)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;

    if (uv_tcp_getsockname(&g.listener, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void settings_init(llhttp_settings_t *s)
{
    llhttp_settings_init(s);
    s->on_message_begin = on_message_begin;
    s->on_url = on_url;
    s->on_header_field = on_header_field;
    s->on_header_field_complete = on_header_field_complete;
    s->on_header_value = on_header_value;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
}

int main(int argc, char **argv)
{
    struct opts o = {.host = "127.0.0.1", .port = 8000};
    struct sockaddr_storage ss;
    int rv, port;

    if (parse_args(argc, argv, &o) != 0)
        return 2;
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        perror("demo_upstream: signal");
        return 1;
    }
    memset(xbuf, 'x', sizeof xbuf);
    settings_init(&g.settings);
    g.loop = uv_default_loop();
    g.by_path = json_object();
    if (g.loop == NULL || g.by_path == NULL) {
        fprintf(stderr, "demo_upstream: out of memory\n");
        return 1;
    }
    rv = resolve(o.host, (int)o.port, &ss);
    if (rv == 0)
        rv = uv_tcp_init(g.loop, &g.listener);
    if (rv == 0)
        rv = uv_tcp_bind(&g.listener, (const struct sockaddr *)&ss, 0);
    if (rv == 0)
        rv = uv_listen((uv_stream_t *)&g.listener, 1024, on_connection);
    if (rv == 0)
        rv = uv_signal_init(g.loop, &g.sig_term);
    if (rv == 0)
        rv = uv_signal_start(&g.sig_term, on_signal, SIGTERM);
    if (rv == 0)
        rv = uv_signal_init(g.loop, &g.sig_int);
    if (rv == 0)
        rv = uv_signal_start(&g.sig_int, on_signal, SIGINT);
    if (rv != 0) {
        fprintf(stderr, "demo_upstream: cannot listen on %s:%d: %s\n", o.host, (int)o.port,
                uv_strerror(rv));
        return 1;
    }
    port = listen_port();
    if (port < 0 || printf("listening %d\n", port) < 0 || fflush(stdout) != 0) {
        fprintf(stderr, "demo_upstream: cannot report the port\n");
        return 1;
    }
    uv_run(g.loop, UV_RUN_DEFAULT);
    rv = uv_loop_close(g.loop);
    json_decref(g.by_path);
    if (rv != 0 && !g.quiet)
        fprintf(stderr, "demo_upstream: loop closed with handles open\n");
    return 0;
}
