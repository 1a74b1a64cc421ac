/*
 * worker.h - one event-loop thread: its listeners, client connections,
 * upstream pool and current configuration snapshot (STYLE §20: everything a
 * connection touches stays on its worker's thread).
 */
#ifndef TG_WORKER_H
#define TG_WORKER_H

#include <stdbool.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

struct tg_config;
struct tg_conn;
struct tg_listener;
struct tg_pool;
struct tg_server;
struct tg_metrics_shard;

/* A deferred call, run from the worker's check phase after the current callback unwinds. */
struct tg_defer {
    struct tg_defer *next;          /* queue link */
    void (*fn)(struct tg_defer *d); /* the call */
    bool queued;                    /* true while waiting */
    uint64_t round;                 /* worker round in which it was queued */
};

struct tg_quota_worker;

struct tg_worker {
    unsigned index;                 /* 0..workers-1 */
    struct tg_server *server;       /* owning server */
    uv_loop_t loop;                 /* this thread's loop */
    uv_thread_t thread;             /* the thread */
    uv_async_t wakeup;              /* cross-thread commands (stop, new config) */
    uv_check_t check;               /* runs deferred calls */
    uv_idle_t idle;                 /* keeps the loop from blocking while calls are queued */
    uv_timer_t grace;               /* shutdown grace period */
    struct tg_defer *defer_head;    /* deferred calls, FIFO */
    struct tg_defer *defer_tail;    /* last deferred call */
    uint64_t defer_round;           /* incremented by each run of the queue */
    struct tg_config *cfg;          /* current snapshot (one reference) */
    struct tg_listener *listeners;  /* this worker's listening sockets */
    struct tg_conn *conns;          /* open client connections (doubly linked) */
    unsigned nconns;                /* count of conns */
    struct tg_pool *pool;           /* upstream keep-alive pools */
    struct tg_metrics_shard *metrics; /* this worker's counters (read by scrapes) */
    struct tg_quota_worker *quota;  /* quota backend state (filters/quota.c), or NULL */
    bool draining;                  /* stop accepting, finish in-flight work */
    bool stop_requested;            /* set by another thread; read in wakeup */
    int exit_code;                  /* 0 unless startup failed */
    atomic_bool finished;           /* the loop has returned (set by the worker thread) */
};

/* Queue fn to run after the current callback returns (idempotent while queued). */
void tg_worker_defer(struct tg_worker *w, struct tg_defer *d, void (*fn)(struct tg_defer *d));
/* Remove d from the queue if it is waiting. */
void tg_worker_cancel(struct tg_worker *w, struct tg_defer *d);

/*
 * Prepare worker w (index i) with cfg: loop, handles, listeners (bound with
 * SO_REUSEPORT).  0 or a negative error (the address could not be bound...).
 */
int tg_worker_init(struct tg_worker *w, struct tg_server *s, unsigned i, struct tg_config *cfg);
/* Run the worker's loop on a new thread.  0 or a libuv error. */
int tg_worker_start(struct tg_worker *w);
/* From any thread: begin a graceful drain (stop accepting, finish requests, exit the loop). */
void tg_worker_stop(struct tg_worker *w);
/* Join the thread and free everything (after it exited). */
void tg_worker_join(struct tg_worker *w);
/* Free everything once the loop has finished (or never started). */
void tg_worker_dispose(struct tg_worker *w);
/* A connection closed: the worker exits once draining and none is left. */
void tg_worker_conn_gone(struct tg_worker *w);

#endif
