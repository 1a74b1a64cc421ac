/*
 * redis.h - asynchronous Redis client: one connection owned by one worker
 * loop, running Lua scripts by EVALSHA (hiredis 0.14.1 on our own libuv
 * adapter, proxy/redis_uv.c).
 *
 * Life of a connection.  tg_redis_new() does no I/O: the first connect starts
 * on the next loop iteration.  A connect sends AUTH (when a password is set)
 * and SELECT (when database != 0), or PING when neither is needed, pipelined
 * before anything else; the client is "up" only once every one of those has
 * answered without an error.  The connect (TCP plus those replies) has its own
 * timer.  Any failure - refused or timed-out connect, AUTH/SELECT error, a
 * command timeout, a lost socket, a READONLY or LOADING reply (failover) -
 * drops the connection, fails every command in flight, and reconnects from a
 * timer with exponential backoff and jitter (100 ms doubling to 5 s).  The
 * backoff is reset only when a command gets a reply, not when a connect
 * succeeds, so a Redis that accepts connections but then times out (or
 * keeps answering READONLY) is probed less and less often: together with
 * failing fast while down, this is the circuit breaker of THREATS §4.3.7.
 *
 * While the client is not up, tg_redis_eval() fails fast: it returns
 * TG_REDIS_E_DOWN and never calls back.  There is no queueing while down.
 *
 * Writes.  tg_redis_eval() only queues the command (already encoded in
 * RESP); everything queued during one loop iteration goes out in one
 * write(2) just before the loop next blocks (a uv_prepare handle, see
 * redis_uv.c), so the commands of many requests share a write and, usually,
 * no epoll_ctl is needed.  POLLOUT is watched only while the socket buffer
 * is full.
 *
 * Threads: a client and its calls belong to the loop thread that created
 * them; nothing here is thread-safe.  Nothing blocks the loop: the address
 * must be numeric (resolve names off the loop first).  hiredis writes with
 * write(2), so the process must ignore SIGPIPE (server.c does).
 *
 * Error codes are in tollgate's range (proxy/err.h): -20200..-20299 are this
 * module's; TG_E_NOMEM and TG_E_INVALID come from err.h.
 */
#ifndef TG_REDIS_H
#define TG_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "proxy/err.h"

struct redisReply;    /* hiredis/hiredis.h; callers inspect it there */
struct tg_redis;      /* one connection (and its reconnect logic) on one loop */
struct tg_redis_call; /* one pending tg_redis_eval() */

/* Statuses given to tg_redis_cb and returned by tg_redis_eval(). */
enum tg_redis_status {
    TG_REDIS_OK = 0,             /* a non-error reply */
    TG_REDIS_E_DOWN = -20201,    /* not connected, or the connection was lost */
    TG_REDIS_E_TIMEOUT = -20202, /* no reply within timeout_ms; the connection was dropped */
    TG_REDIS_E_REPLY = -20203,   /* Redis answered with an error reply (OOM, BUSY, READONLY...) */
    TG_REDIS_E_BUSY = -20204,    /* max_inflight commands already pending */
    TG_REDIS_E_CLOSED = -20205,  /* tg_redis_free() ran with the command pending */
};

/*
 * Reply callback.  Runs exactly once per accepted call unless the call was
 * cancelled.  status TG_REDIS_OK: reply is the (non-error) reply.
 * TG_REDIS_E_REPLY: reply is the error reply (type REDIS_REPLY_ERROR; str is
 * "CODE message").  Any other status: reply is NULL.  The reply is owned by
 * hiredis and valid only during the call; the tg_redis_call handle is invalid
 * once the callback starts.  The callback may call tg_redis_eval(),
 * tg_redis_call_cancel() on other calls, and tg_redis_free().
 */
typedef void tg_redis_cb(void *arg, int status, const struct redisReply *reply);

/*
 * State hook: up is true when a connection finished its AUTH/SELECT, false
 * when an up connection was lost.  Called only on changes, from loop
 * callbacks (never from tg_redis_new, tg_redis_eval or tg_redis_free).  It may
 * call tg_redis_free().
 */
typedef void tg_redis_state_cb(void *arg, bool up);

/* Connection options; copied by tg_redis_new(). */
struct tg_redis_opts {
    struct sockaddr_storage addr; /* numeric IPv4 or IPv6 address and port (never DNS) */
    socklen_t addrlen;            /* size of the sockaddr in addr */
    const char *password;         /* AUTH password when non-NULL (copied, wiped at free) */
    int database;                 /* SELECT this database when non-zero (0..INT_MAX) */
    uint64_t timeout_ms;          /* per-command deadline; 0 means 1000 */
    uint64_t connect_timeout_ms;  /* TCP connect plus AUTH/SELECT replies; 0 means 1000 */
    unsigned max_inflight;        /* commands held by the connection; 0 means 1024 */
    tg_redis_state_cb *on_state;  /* optional up/down hook (metrics, readiness) */
    void *state_arg;              /* first argument of on_state */
};

/* A Lua script.  The body is caller-owned and must outlive the client. */
struct tg_redis_script {
    const char *body; /* script text (need not be NUL-terminated) */
    size_t len;       /* bytes in body */
};

/* Counters for metrics; monotonic except inflight and up. */
struct tg_redis_stats {
    uint64_t errors;           /* error replies, including AUTH/SELECT errors */
    uint64_t timeouts;         /* commands that hit timeout_ms */
    uint64_t connect_failures; /* connects refused, timed out or rejected at AUTH/SELECT */
    uint64_t disconnects;      /* up connections lost, for any reason */
    uint64_t reconnects;       /* connect attempts after the first */
    uint64_t noscript;         /* EVALSHA answered NOSCRIPT and was re-sent as EVAL */
    unsigned inflight;         /* commands the connection holds (cancelled ones included) */
    bool up;                   /* same as tg_redis_up() */
};

/*
 * Create a client on loop and schedule its first connect.  scripts[0..n) are
 * hashed now (SHA-1) and referred to by index in tg_redis_eval(); the array
 * is copied, the bodies are not.  Returns 0 and sets *out, or TG_E_INVALID
 * (bad address, database or script), TG_E_NOMEM, or a libuv error.  Never
 * calls back.
 */
int tg_redis_new(uv_loop_t *loop, const struct tg_redis_opts *o,
                 const struct tg_redis_script *scripts, size_t nscripts, struct tg_redis **out);

/*
 * Run scripts[script] with argv[0..argc): numkeys, the keys, then the
 * arguments (the caller does not send "EVALSHA sha").  The arguments are
 * copied.  Sends EVALSHA; on NOSCRIPT re-sends once as EVAL with the body,
 * which reloads the script cache (the deadline restarts then, so a call can
 * take up to 2 * timeout_ms).  Callbacks run in submission order, except a
 * call re-sent after NOSCRIPT, which goes to the back of the pipeline.
 *
 * Returns 0: cb will run exactly once (unless cancelled), never before this
 * returns; if out is non-NULL it receives a handle valid until cb starts.
 * Returns non-zero: cb will never run.  TG_REDIS_E_DOWN (not up),
 * TG_REDIS_E_BUSY (max_inflight reached), TG_REDIS_E_CLOSED (after free),
 * TG_E_INVALID (bad script index, argc < 1 or > 1024), TG_E_NOMEM.
 */
int tg_redis_eval(struct tg_redis *r, unsigned script, int argc, const char **argv,
                  const size_t *argvlen, tg_redis_cb *cb, void *arg, struct tg_redis_call **out);

/*
 * Forget a call whose callback has not run yet: the callback will not run.
 * The command stays on the wire (hiredis cannot withdraw one), still counts
 * in inflight and under the timeout; its memory is freed when hiredis hands
 * it back.  NULL is a no-op.
 */
void tg_redis_call_cancel(struct tg_redis_call *c);

/* True when connected and past AUTH/SELECT, i.e. tg_redis_eval() can succeed. */
bool tg_redis_up(const struct tg_redis *r);

/* Copy the counters into *st. */
void tg_redis_stats(const struct tg_redis *r, struct tg_redis_stats *st);

/* Message for a tg_redis_status code (other codes: tg_strerror()); never NULL. */
const char *tg_redis_strerror(int status);

/*
 * Destroy the client.  Every pending call's callback runs once, synchronously
 * inside this function, with TG_REDIS_E_CLOSED; on_state is not called.  The
 * connection is dropped at once (no graceful drain).  Handles close
 * asynchronously: keep running the loop until they are closed (uv_loop_close
 * then succeeds); memory is released in the last close callback.  May be
 * called from any tg_redis callback.  NULL is a no-op.
 */
void tg_redis_free(struct tg_redis *r);

#endif
