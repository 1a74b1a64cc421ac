/*
 * redis.c - asynchronous Redis client for one worker loop (see redis.h).
 *
 * hiredis 0.14.1 facts this file is built around (THREATS §4.3):
 *  - it has no timeouts: we keep our own connect timer and command timer;
 *  - it cannot withdraw one pipelined command, so a command timeout drops the
 *    whole connection.  redisAsyncDisconnect() is no use for that: it is a
 *    graceful close that waits for every pending reply.  We call
 *    redisAsyncFree(), which runs every pending callback with NULL at once
 *    (or, when called from inside a reply callback, as soon as it returns);
 *  - redisAsyncCommand*() can fail synchronously without calling back;
 *  - the connect callback runs without REDIS_IN_CALLBACK, so freeing the
 *    context from in there would be a use-after-free: on_connect() never
 *    frees, it defers to the state timer;
 *  - after the disconnect callback (or a failed connect callback) hiredis
 *    frees the context: r->ac is cleared before that and never used again.
 *
 * Calls.  r->head..r->tail lists the calls the current connection holds, in
 * the order they were written, which is the order replies come back.  When
 * a connection is dropped, every listed call is completed by us (callback
 * with TIMEOUT/DOWN/CLOSED) and unlinked, but its memory still belongs to
 * hiredis, which calls on_reply() for it once more (NULL reply) while it
 * frees the context; only then is it freed.
 *
 * One command timer is enough: every call gets the same timeout, written in
 * order, so the head of the list has the earliest deadline (a NOSCRIPT
 * re-send goes to the tail with a fresh deadline, which keeps that true).
 * The timer is armed lazily: it is started when the list becomes non-empty
 * and, when it fires early because the head changed, re-armed for the new
 * head.  That costs one timer operation per timeout period instead of one
 * per command, and calls need no handle of their own (a per-call uv_timer
 * would need a uv_close, and so an asynchronous free, for every command).
 * STYLE §18 says "one uv timer per command"; for FIFO replies with one
 * timeout this is the same deadline, checked more cheaply.
 *
 * Re-entrancy: user callbacks (reply callbacks, on_state) may call
 * tg_redis_free().  It marks the client closed and only starts uv_close; the
 * memory goes in the last close callback, so code that called out re-checks
 * r->state == ST_CLOSED and never touches a closing handle.
 */
#include "proxy/redis.h"

#include "proxy/redis_reply.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>

#include "proxy/buf.h"
#include "proxy/err.h"
#include "proxy/log.h"
#include "proxy/mem.h"
#include "proxy/redis_uv.h"

#define MOD "redis"
#define DEF_TIMEOUT_MS 1000
#define DEF_CONNECT_TIMEOUT_MS 1000
#define DEF_MAX_INFLIGHT 1024
#define MAX_ARGS 1024
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define SHA_HEX 40

enum state {
    ST_DOWN,       /* no connection; the state timer will connect */
    ST_CONNECTING, /* r->ac connecting or in AUTH/SELECT; state timer = connect timeout */
    ST_UP,         /* r->ac ready for commands */
    ST_CLOSED,     /* tg_redis_free() ran; handles closing */
};

struct script {
    const char *body;      /* caller-owned */
    size_t len;            /* bytes in body */
    char sha[SHA_HEX + 1]; /* lowercase hex SHA-1 of body */
};

struct tg_redis {
    uv_loop_t *loop;             /* owner loop */
    uv_timer_t state_timer;      /* connect timeout, or backoff before the next connect */
    uv_timer_t call_timer;       /* deadline of the oldest call (armed lazily) */
    unsigned pending_closes;     /* timers still closing after free */
    enum state state;            /* see enum state */
    redisAsyncContext *ac;       /* current connection, NULL when down */
    struct tg_redis_call *head;  /* calls on ac, oldest first */
    struct tg_redis_call *tail;  /* newest call */
    unsigned hs_pending;         /* AUTH/SELECT/PING replies still expected */
    unsigned hs_next;            /* index in hs_what of the next handshake reply */
    const char *hs_what[3];      /* names of the handshake commands sent, in order */
    bool hs_failed;              /* a handshake command could not be queued */
    uint64_t backoff_ms;         /* last backoff step; 0 once a command got a reply */
    uint64_t attempts;           /* connect attempts started */
    uint64_t rng;                /* xorshift state for jitter */
    char host[64];               /* numeric address for hiredis */
    int port;                    /* TCP port */
    char *password;              /* AUTH password or NULL (wiped at free) */
    int database;                /* SELECT argument, 0 = none */
    char dbtext[16];             /* database in decimal */
    uint64_t timeout_ms;         /* per command */
    uint64_t connect_timeout_ms; /* per connect + handshake */
    unsigned max_inflight;       /* cap on calls held by ac */
    tg_redis_state_cb *on_state; /* optional hook */
    void *state_arg;             /* its argument */
    struct script *scripts;      /* nscripts entries */
    size_t nscripts;             /* count */
    struct tg_redis_stats st;    /* counters (st.up unused; see tg_redis_stats) */
};

struct tg_redis_call {
    struct tg_redis_call *prev; /* list links while linked */
    struct tg_redis_call *next; /* list links while linked */
    struct tg_redis *r;         /* owner client */
    tg_redis_cb *cb;            /* NULL once completed or cancelled */
    void *arg;                  /* cb argument */
    uint64_t deadline;          /* loop time (ms) by which the reply must come */
    unsigned script;            /* index in r->scripts */
    bool linked;                /* on r's list: the current connection holds it */
    bool resent;                /* already re-sent as EVAL after NOSCRIPT */
    int argc;                   /* the caller's arguments */
    size_t tail_len;            /* bytes of the caller's arguments in RESP, at cmd + HDR_MAX */
    char cmd[];                 /* HDR_MAX bytes for the EVALSHA head, then the tail */
};

/*
 * Commands are sent already in RESP (redisAsyncFormattedCommand): the
 * caller's arguments are encoded once, in the call's own allocation, behind
 * room for the longest "*<n>\r\n$7\r\nEVALSHA\r\n$40\r\n<sha>\r\n" head
 * (n <= MAX_ARGS + 2, four digits).  A NOSCRIPT re-send builds "EVAL <body>"
 * plus the same tail in a temporary buffer.  hiredis copies the command into
 * its output buffer, so neither needs to outlive the send.
 */
#define HDR_MAX 72

/* Decimal digits of v. */
static size_t dec_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

/* "*<argc>\r\n$<len(a0)>\r\n<a0>\r\n$<len(a1)>\r\n<a1>\r\n" into p; returns the end. */
static char *put_head(char *p, int argc, const char *a0, size_t l0, const char *a1, size_t l1)
{
    *p++ = '*';
    p = tg_u64_dec(p, (uint64_t)argc);
    *p++ = '\r';
    *p++ = '\n';
    *p++ = '$';
    p = tg_u64_dec(p, l0);
    *p++ = '\r';
    *p++ = '\n';
    memcpy(p, a0, l0);
    p += l0;
    *p++ = '\r';
    *p++ = '\n';
    *p++ = '$';
    p = tg_u64_dec(p, l1);
    *p++ = '\r';
    *p++ = '\n';
    memcpy(p, a1, l1);
    p += l1;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

static void on_state_timer(uv_timer_t *t);
static void on_call_timer(uv_timer_t *t);

/* --- calls ------------------------------------------------------------------ */

static void link_tail(struct tg_redis *r, struct tg_redis_call *c)
{
    c->prev = r->tail;
    c->next = NULL;
    if (r->tail)
        r->tail->next = c;
    else
        r->head = c;
    r->tail = c;
    c->linked = true;
    r->st.inflight++;
    c->deadline = uv_now(r->loop) + r->timeout_ms;
    if (!uv_is_active((uv_handle_t *)&r->call_timer))
        uv_timer_start(&r->call_timer, on_call_timer, r->timeout_ms, 0);
}

static void unlink_call(struct tg_redis *r, struct tg_redis_call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        r->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        r->tail = c->prev;
    c->prev = c->next = NULL;
    c->linked = false;
    r->st.inflight--;
    if (!r->head)
        uv_timer_stop(&r->call_timer);
}

/* Run the callback, at most once; it may free r. */
static void finish(struct tg_redis_call *c, int status, const redisReply *reply)
{
    tg_redis_cb *cb = c->cb;
    c->cb = NULL;
    if (cb)
        cb(c->arg, status, reply);
}

static void on_reply(redisAsyncContext *ac, void *rep, void *privdata);

/* Queue c on r->ac as EVALSHA, or EVAL once resent is set.  0, TG_REDIS_E_DOWN or TG_E_NOMEM. */
static int send_call(struct tg_redis *r, struct tg_redis_call *c)
{
    const struct script *s = &r->scripts[c->script];
    const char *tail = c->cmd + HDR_MAX;
    int rv;
    if (!c->resent) {
        char head[HDR_MAX];
        size_t hl = (size_t)(put_head(head, c->argc + 2, "EVALSHA", 7, s->sha, SHA_HEX) - head);
        char *start = c->cmd + HDR_MAX - hl;
        memcpy(start, head, hl);
        rv = redisAsyncFormattedCommand(r->ac, on_reply, c, start, hl + c->tail_len);
    } else {
        /* Rare (script cache flushed): a temporary "EVAL <body>" copy. */
        size_t size = HDR_MAX + s->len + c->tail_len;
        char *cmd = tg_mem_malloc(size);
        if (!cmd)
            return TG_E_NOMEM;
        char *p = put_head(cmd, c->argc + 2, "EVAL", 4, s->body, s->len);
        memcpy(p, tail, c->tail_len);
        rv = redisAsyncFormattedCommand(r->ac, on_reply, c, cmd, (size_t)(p - cmd) + c->tail_len);
        tg_mem_free(cmd);
    }
    /* REDIS_ERR here means no callback will ever come (THREATS §4.3.4). */
    if (rv != REDIS_OK)
        return TG_REDIS_E_DOWN;
    link_tail(r, c);
    return 0;
}

/* Does the error reply start with this code word ("NOSCRIPT", "READONLY")? */
static bool is_code(const redisReply *rep, const char *code)
{
    size_t n = strlen(code);
    return rep->str && rep->len >= n && memcmp(rep->str, code, n) == 0 &&
           (rep->len == n || rep->str[n] == ' ');
}

/* Length of the leading error code word, for logs (never the whole text). */
static int code_len(const redisReply *rep)
{
    size_t n = 0;
    while (rep->str && n < rep->len && n < 32 && rep->str[n] != ' ')
        n++;
    return (int)n;
}

/* --- connection ------------------------------------------------------------- */

static uint64_t rnd(struct tg_redis *r)
{
    uint64_t x = r->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    r->rng = x;
    return x;
}

/* Next connect after 100 ms doubling to 5 s, each step jittered to [step/2, step]. */
static void schedule_retry(struct tg_redis *r)
{
    uint64_t step = r->backoff_ms ? r->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (step > BACKOFF_MAX_MS)
        step = BACKOFF_MAX_MS;
    r->backoff_ms = step;
    uint64_t delay = step / 2 + rnd(r) % (step / 2 + 1);
    uv_timer_start(&r->state_timer, on_state_timer, delay, 0);
}

/* Fail every call on the connection: timed_out gets TIMEOUT, the others status. */
static void fail_all(struct tg_redis *r, struct tg_redis_call *timed_out, int status)
{
    struct tg_redis_call *c;
    while ((c = r->head) != NULL) {
        unlink_call(r, c);
        finish(c, c == timed_out ? TG_REDIS_E_TIMEOUT : status, NULL);
    }
}

/*
 * The current connection is gone (free_ac false: hiredis is already freeing
 * it) or must go (free_ac true).  Complete every call, tell the owner, and
 * schedule a reconnect.  May be called from inside any hiredis callback
 * except on_connect (see the top of the file).
 */
static void lost(struct tg_redis *r, struct tg_redis_call *timed_out, int status, bool free_ac)
{
    redisAsyncContext *ac = r->ac;
    bool was_up = r->state == ST_UP;
    r->ac = NULL;
    r->hs_pending = 0;
    r->hs_failed = false;
    if (r->state == ST_CLOSED)
        return;
    r->state = ST_DOWN;
    uv_timer_stop(&r->state_timer);
    if (was_up)
        r->st.disconnects++;
    fail_all(r, timed_out, status);
    if (free_ac && ac)
        redisAsyncFree(ac);
    if (r->state == ST_CLOSED)
        return;
    if (was_up) {
        tg_log_warn(MOD, "connection to %s:%d lost", r->host, r->port);
        if (r->on_state) {
            r->on_state(r->state_arg, false);
            if (r->state == ST_CLOSED)
                return;
        }
    }
    schedule_retry(r);
}

static void became_up(struct tg_redis *r)
{
    r->state = ST_UP;
    uv_timer_stop(&r->state_timer);
    tg_log_info(MOD, "connected to %s:%d", r->host, r->port);
    if (r->on_state)
        r->on_state(r->state_arg, true);
}

/* Replies to AUTH / SELECT / PING, privdata = r.  Runs inside REDIS_IN_CALLBACK. */
static void on_handshake(redisAsyncContext *ac, void *rep, void *privdata)
{
    struct tg_redis *r = privdata;
    redisReply *reply = rep;
    if (ac != r->ac)
        return; /* a dropped connection being freed */
    if (!reply) {
        r->st.connect_failures++;
        lost(r, NULL, TG_REDIS_E_DOWN, false);
        return;
    }
    const char *what = r->hs_next < 3 ? r->hs_what[r->hs_next] : "?";
    r->hs_next++;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* Log the error code only: never the password, nor text derived from it. */
        r->st.errors++;
        r->st.connect_failures++;
        tg_log_error(MOD, "%s:%d rejected %s: %.*s", r->host, r->port, what, code_len(reply),
                     reply->str);
        lost(r, NULL, TG_REDIS_E_DOWN, true); /* hiredis frees once we return */
        return;
    }
    if (--r->hs_pending == 0)
        became_up(r);
}

/* Queue one handshake command; false when hiredis refused it. */
static bool handshake(struct tg_redis *r, redisAsyncContext *ac, const char *what, int argc,
                      const char **argv, const size_t *lens)
{
    if (redisAsyncCommandArgv(ac, on_handshake, r, argc, argv, lens) != REDIS_OK)
        return false;
    r->hs_what[r->hs_pending++] = what;
    return true;
}

/* Not inside REDIS_IN_CALLBACK: must not free ac here. */
static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct tg_redis *r = ac->data;
    if (ac != r->ac)
        return;
    if (status != REDIS_OK) {
        r->st.connect_failures++;
        tg_log_warn(MOD, "connect to %s:%d failed: %s", r->host, r->port,
                    ac->errstr ? ac->errstr : "?");
        lost(r, NULL, TG_REDIS_E_DOWN, false); /* hiredis frees ac after we return */
        return;
    }
    bool ok = true;
    r->hs_pending = 0;
    r->hs_next = 0;
    if (r->password) {
        const char *argv[2] = {"AUTH", r->password};
        size_t lens[2] = {4, strlen(r->password)};
        ok = handshake(r, ac, "AUTH", 2, argv, lens);
    }
    if (ok && r->database) {
        const char *argv[2] = {"SELECT", r->dbtext};
        size_t lens[2] = {6, strlen(r->dbtext)};
        ok = handshake(r, ac, "SELECT", 2, argv, lens);
    }
    if (ok && r->hs_pending == 0) {
        /* Nothing to authenticate: still wait for one real reply before "up". */
        const char *argv[1] = {"PING"};
        size_t lens[1] = {4};
        ok = handshake(r, ac, "PING", 1, argv, lens);
    }
    if (!ok) {
        /* Drop it from the state timer, outside hiredis. */
        r->hs_failed = true;
        uv_timer_start(&r->state_timer, on_state_timer, 0, 0);
    }
}

/* hiredis is freeing ac (after a read/write error, or our redisAsyncFree). */
static void on_disconnect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct tg_redis *r = ac->data;
    if (ac != r->ac)
        return;
    lost(r, NULL, TG_REDIS_E_DOWN, false);
}

static void start_connect(struct tg_redis *r)
{
    if (r->attempts++ > 0)
        r->st.reconnects++;
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (!ac) {
        tg_log_error(MOD, "connect to %s:%d: out of memory", r->host, r->port);
        goto fail;
    }
    if (ac->err) {
        /* Immediate failure: hiredis reports it here, not through a callback. */
        tg_log_warn(MOD, "connect to %s:%d failed: %s", r->host, r->port, ac->errstr);
        redisAsyncFree(ac);
        goto fail;
    }
    /* Bounded, pooled reply objects (a hostile "*4000000000" allocates nothing). */
    ac->c.reader->fn = &tg_redis_reply_fns;
    int rv = tg_redis_uv_attach(ac, r->loop);
    if (rv < 0) {
        tg_log_error(MOD, "connect to %s:%d: %s", r->host, r->port, tg_strerror(rv));
        redisAsyncFree(ac);
        goto fail;
    }
    ac->data = r;
    r->ac = ac;
    r->state = ST_CONNECTING;
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    redisAsyncSetConnectCallback(ac, on_connect); /* also starts watching for writable */
    uv_timer_start(&r->state_timer, on_state_timer, r->connect_timeout_ms, 0);
    return;
fail:
    r->st.connect_failures++;
    schedule_retry(r);
}

static void on_state_timer(uv_timer_t *t)
{
    struct tg_redis *r = tg_container_of(t, struct tg_redis, state_timer);
    switch (r->state) {
    case ST_DOWN: start_connect(r); break;
    case ST_CONNECTING:
        r->st.connect_failures++;
        if (!r->hs_failed) {
            tg_log_warn(MOD, "connect to %s:%d timed out after %" PRIu64 " ms", r->host, r->port,
                        r->connect_timeout_ms);
        }
        lost(r, NULL, TG_REDIS_E_DOWN, true);
        break;
    case ST_UP:
    case ST_CLOSED: break;
    }
}

static void on_call_timer(uv_timer_t *t)
{
    struct tg_redis *r = tg_container_of(t, struct tg_redis, call_timer);
    struct tg_redis_call *c = r->head;
    if (!c || r->state != ST_UP)
        return;
    uint64_t now = uv_now(r->loop);
    if (c->deadline > now) {
        uv_timer_start(&r->call_timer, on_call_timer, c->deadline - now, 0);
        return;
    }
    r->st.timeouts++;
    tg_log_warn(MOD, "%s:%d: no reply within %" PRIu64 " ms, dropping the connection", r->host,
                r->port, r->timeout_ms);
    lost(r, c, TG_REDIS_E_DOWN, true);
}

/* EVALSHA/EVAL replies.  Runs inside REDIS_IN_CALLBACK (or hiredis's free). */
static void on_reply(redisAsyncContext *ac, void *rep, void *privdata)
{
    struct tg_redis_call *c = privdata;
    struct tg_redis *r = c->r;
    redisReply *reply = rep;
    if (!c->linked) {
        /* Already completed when its connection was dropped; hiredis is done with it. */
        tg_mem_free(c);
        return;
    }
    if (!reply) {
        /* hiredis is dropping the connection (EOF, reset): fail everything, c included. */
        lost(r, NULL, TG_REDIS_E_DOWN, false);
        tg_mem_free(c);
        return;
    }
    unlink_call(r, c);
    bool err = reply->type == REDIS_REPLY_ERROR;
    if (err && c->cb && !c->resent && is_code(reply, "NOSCRIPT")) {
        /* Script cache flushed (restart, SCRIPT FLUSH, failover): EVAL reloads it. */
        r->st.noscript++;
        c->resent = true;
        if (send_call(r, c) == 0)
            return;
        finish(c, TG_REDIS_E_DOWN, NULL);
        tg_mem_free(c);
        return;
    }
    bool failover = err && (is_code(reply, "READONLY") || is_code(reply, "LOADING"));
    if (err)
        r->st.errors++;
    if (!failover)
        r->backoff_ms = 0; /* the connection really works: next failure starts at 100 ms */
    finish(c, err ? TG_REDIS_E_REPLY : TG_REDIS_OK, reply);
    tg_mem_free(c);
    if (failover && r->state == ST_UP && r->ac == ac) {
        tg_log_warn(MOD, "%s:%d answered %.*s: reconnecting", r->host, r->port, code_len(reply),
                    reply->str);
        lost(r, NULL, TG_REDIS_E_DOWN, true); /* hiredis frees once we return */
    }
}

/* --- API ---------------------------------------------------------------------- */

static void on_timer_closed(struct tg_redis *r)
{
    if (--r->pending_closes > 0)
        return;
    if (r->password) {
        OPENSSL_cleanse(r->password, strlen(r->password));
        tg_mem_free(r->password);
    }
    tg_mem_free(r->scripts);
    tg_mem_free(r);
}

static void on_state_timer_closed(uv_handle_t *h)
{
    on_timer_closed(tg_container_of((uv_timer_t *)h, struct tg_redis, state_timer));
}

static void on_call_timer_closed(uv_handle_t *h)
{
    on_timer_closed(tg_container_of((uv_timer_t *)h, struct tg_redis, call_timer));
}

static int set_addr(struct tg_redis *r, const struct tg_redis_opts *o)
{
    if (o->addr.ss_family == AF_INET && o->addrlen >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&o->addr;
        r->port = ntohs(a->sin_port);
        if (uv_ip4_name(a, r->host, sizeof(r->host)) != 0)
            return TG_E_INVALID;
    } else if (o->addr.ss_family == AF_INET6 && o->addrlen >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&o->addr;
        r->port = ntohs(a->sin6_port);
        if (uv_ip6_name(a, r->host, sizeof(r->host)) != 0)
            return TG_E_INVALID;
    } else {
        return TG_E_INVALID;
    }
    return r->port ? 0 : TG_E_INVALID;
}

static int hash_script(struct script *s)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(s->body, s->len, md, &mdlen, EVP_sha1(), NULL) || mdlen * 2 != SHA_HEX)
        return TG_E_INVALID;
    for (unsigned i = 0; i < mdlen; i++) {
        s->sha[2 * i] = hex[md[i] >> 4];
        s->sha[2 * i + 1] = hex[md[i] & 15];
    }
    s->sha[SHA_HEX] = '\0';
    return 0;
}

int tg_redis_new(uv_loop_t *loop, const struct tg_redis_opts *o,
                 const struct tg_redis_script *scripts, size_t nscripts, struct tg_redis **out)
{
    int rv = TG_E_INVALID;
    *out = NULL;
    if (!loop || !o || (nscripts && !scripts) || o->database < 0)
        return TG_E_INVALID;
    struct tg_redis *r = tg_mem_calloc(1, sizeof(*r));
    if (!r)
        return TG_E_NOMEM;
    r->loop = loop;
    if ((rv = set_addr(r, o)) < 0)
        goto fail;
    rv = TG_E_NOMEM;
    if (o->password && !(r->password = tg_mem_strdup(o->password)))
        goto fail;
    if (nscripts && !(r->scripts = tg_mem_calloc(nscripts, sizeof(*r->scripts))))
        goto fail;
    r->nscripts = nscripts;
    for (size_t i = 0; i < nscripts; i++) {
        rv = TG_E_INVALID;
        if (!scripts[i].body || !scripts[i].len)
            goto fail;
        r->scripts[i].body = scripts[i].body;
        r->scripts[i].len = scripts[i].len;
        if ((rv = hash_script(&r->scripts[i])) < 0)
            goto fail;
    }
    r->database = o->database;
    snprintf(r->dbtext, sizeof(r->dbtext), "%d", o->database);
    r->timeout_ms = o->timeout_ms ? o->timeout_ms : DEF_TIMEOUT_MS;
    r->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : DEF_CONNECT_TIMEOUT_MS;
    r->max_inflight = o->max_inflight ? o->max_inflight : DEF_MAX_INFLIGHT;
    r->on_state = o->on_state;
    r->state_arg = o->state_arg;
    r->rng = (uv_hrtime() ^ (uint64_t)(uintptr_t)r) | 1;
    r->state = ST_DOWN;
    if ((rv = uv_timer_init(loop, &r->state_timer)) < 0)
        goto fail;
    if ((rv = uv_timer_init(loop, &r->call_timer)) < 0) {
        r->pending_closes = 1;
        r->state = ST_CLOSED;
        uv_close((uv_handle_t *)&r->state_timer, on_state_timer_closed);
        return rv;
    }
    uv_timer_start(&r->state_timer, on_state_timer, 0, 0); /* first connect, next iteration */
    *out = r;
    return 0;
fail:
    if (r->password) {
        OPENSSL_cleanse(r->password, strlen(r->password));
        tg_mem_free(r->password);
    }
    tg_mem_free(r->scripts);
    tg_mem_free(r);
    return rv;
}

int tg_redis_eval(struct tg_redis *r, unsigned script, int argc, const char **argv,
                  const size_t *argvlen, tg_redis_cb *cb, void *arg, struct tg_redis_call **out)
{
    if (out)
        *out = NULL;
    if (!r || r->state == ST_CLOSED)
        return TG_REDIS_E_CLOSED;
    if (script >= r->nscripts || argc < 1 || argc > MAX_ARGS || !argv || !argvlen || !cb)
        return TG_E_INVALID;
    if (r->state != ST_UP)
        return TG_REDIS_E_DOWN;
    if (r->st.inflight >= r->max_inflight)
        return TG_REDIS_E_BUSY;

    /* One allocation: the call, room for the head, the arguments in RESP. */
    size_t tail = 0;
    for (int i = 0; i < argc; i++) {
        if (argvlen[i] > SIZE_MAX / 4 || tail > SIZE_MAX / 4)
            return TG_E_INVALID;
        tail += 1 + dec_len(argvlen[i]) + 2 + argvlen[i] + 2; /* $<len>\r\n<arg>\r\n */
    }
    struct tg_redis_call *c = tg_mem_malloc(sizeof(*c) + HDR_MAX + tail);
    if (!c)
        return TG_E_NOMEM;
    memset(c, 0, sizeof(*c));
    c->r = r;
    c->cb = cb;
    c->arg = arg;
    c->script = script;
    c->argc = argc;
    c->tail_len = tail;
    char *p = c->cmd + HDR_MAX;
    for (int i = 0; i < argc; i++) {
        *p++ = '$';
        p = tg_u64_dec(p, argvlen[i]);
        *p++ = '\r';
        *p++ = '\n';
        if (argvlen[i])
            memcpy(p, argv[i], argvlen[i]);
        p += argvlen[i];
        *p++ = '\r';
        *p++ = '\n';
    }
    int rv = send_call(r, c);
    if (rv < 0) {
        tg_mem_free(c);
        return rv;
    }
    if (out)
        *out = c;
    return 0;
}

void tg_redis_call_cancel(struct tg_redis_call *c)
{
    if (c)
        c->cb = NULL;
}

bool tg_redis_up(const struct tg_redis *r)
{
    return r && r->state == ST_UP;
}

void tg_redis_stats(const struct tg_redis *r, struct tg_redis_stats *st)
{
    *st = r->st;
    st->up = r->state == ST_UP;
}

const char *tg_redis_strerror(int status)
{
    switch (status) {
    case TG_REDIS_OK: return "success";
    case TG_REDIS_E_DOWN: return "redis: not connected";
    case TG_REDIS_E_TIMEOUT: return "redis: command timed out";
    case TG_REDIS_E_REPLY: return "redis: error reply";
    case TG_REDIS_E_BUSY: return "redis: too many commands in flight";
    case TG_REDIS_E_CLOSED: return "redis: client closed";
    default: break;
    }
    return tg_strerror(status);
}

void tg_redis_free(struct tg_redis *r)
{
    if (!r || r->state == ST_CLOSED)
        return;
    redisAsyncContext *ac = r->ac;
    r->state = ST_CLOSED;
    r->ac = NULL;
    /* Our timers first: uv_close stops them, and a callback cannot restart them. */
    r->pending_closes = 2;
    uv_close((uv_handle_t *)&r->state_timer, on_state_timer_closed);
    uv_close((uv_handle_t *)&r->call_timer, on_call_timer_closed);
    fail_all(r, NULL, TG_REDIS_E_CLOSED);
    /* Runs on_reply(NULL) for the (now unlinked) calls, which frees them; deferred
     * by hiredis until the current reply callback returns when called from one. */
    if (ac)
        redisAsyncFree(ac);
}
