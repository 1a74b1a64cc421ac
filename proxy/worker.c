#include "proxy/worker.h"

#include "filters/quota.h"
#include "proxy/redis_reply.h"

#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>

#include "config/config.h"
#include "filters/audit.h"
#include "filters/authn.h"
#include "proxy/conn.h"
#include "proxy/err.h"
#include "proxy/listener.h"
#include "proxy/log.h"
#include "proxy/mem.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/upstream.h"

static void on_idle(uv_idle_t *h);

void tg_worker_defer(struct tg_worker *w, struct tg_defer *d, void (*fn)(struct tg_defer *d))
{
    if (fn)
        d->fn = fn;
    if (d->queued)
        return;
    d->queued = true;
    d->next = NULL;
    d->round = w->defer_round;
    if (w->defer_tail)
        w->defer_tail->next = d;
    else
        w->defer_head = d;
    w->defer_tail = d;
    if (!uv_is_active((uv_handle_t *)&w->idle))
        uv_idle_start(&w->idle, on_idle);
}

void tg_worker_cancel(struct tg_worker *w, struct tg_defer *d)
{
    if (!d->queued)
        return;
    struct tg_defer **pp = &w->defer_head, *prev = NULL;
    while (*pp && *pp != d) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp) {
        *pp = d->next;
        if (w->defer_tail == d)
            w->defer_tail = prev;
    }
    d->queued = false;
    d->next = NULL;
}

static void run_deferred(struct tg_worker *w)
{
    /* Run what was queued before this round; calls queued meanwhile carry
     * the new round number and wait, so this always ends.  Items stay on
     * the worker's list until they run, so tg_worker_cancel() can remove one
     * that an earlier call is about to free. */
    uint64_t round = ++w->defer_round;
    while (w->defer_head && w->defer_head->round < round) {
        struct tg_defer *d = w->defer_head;
        w->defer_head = d->next;
        if (!w->defer_head)
            w->defer_tail = NULL;
        d->next = NULL;
        d->queued = false;
        d->fn(d);
    }
}

static void on_check(uv_check_t *h)
{
    struct tg_worker *w = tg_container_of(h, struct tg_worker, check);
    for (int i = 0; i < 8 && w->defer_head; i++)
        run_deferred(w);
    if (!w->defer_head)
        uv_idle_stop(&w->idle);
}

static void on_idle(uv_idle_t *h)
{
    /* Only here so the loop polls without blocking while calls are queued. */
    (void)h;
}

static void close_worker_handles(struct tg_worker *w)
{
    uv_close((uv_handle_t *)&w->wakeup, NULL);
    uv_close((uv_handle_t *)&w->check, NULL);
    uv_close((uv_handle_t *)&w->idle, NULL);
    uv_close((uv_handle_t *)&w->grace, NULL);
}

static void maybe_finish(struct tg_worker *w)
{
    if (!w->draining || w->nconns > 0 || uv_is_closing((uv_handle_t *)&w->wakeup))
        return;
    /* Settlements still in flight finish first (bounded by the grace timer). */
    if (!tg_quota_worker_idle(w))
        return;
    tg_quota_worker_close(w);
    tg_pool_close_idle(w->pool);
    close_worker_handles(w);
}

void tg_worker_conn_gone(struct tg_worker *w)
{
    maybe_finish(w);
}

static void on_grace(uv_timer_t *t)
{
    struct tg_worker *w = tg_container_of(t, struct tg_worker, grace);
    if (w->nconns)
        tg_log_warn("worker", "worker %u: shutdown grace expired; closing %u connection(s)",
                    w->index, w->nconns);
    while (w->conns)
        tg_conn_close(w->conns);
    tg_quota_worker_close(w); /* abandons settlements still waiting for Redis */
    maybe_finish(w);
}

static void begin_drain(struct tg_worker *w)
{
    if (w->draining)
        return;
    w->draining = true;
    for (struct tg_listener *l = w->listeners; l;) {
        struct tg_listener *n = l->next;
        tg_listener_close(l);
        l = n;
    }
    w->listeners = NULL;
    tg_pool_close_idle(w->pool);
    /* on_drain may close the conn, which unlinks it: walk with care. */
    struct tg_conn *c = w->conns;
    while (c) {
        struct tg_conn *n = c->next;
        tg_conn_drain(c);
        c = n;
    }
    uv_timer_start(&w->grace, on_grace, w->cfg->limits.shutdown_grace_ms, 0);
    maybe_finish(w);
}

/*
 * SPEC §4: listeners whose address is unchanged keep their socket (no
 * connection is refused during a reload) and take the new name, protocols
 * and TLS context; new addresses are bound; removed ones stop accepting,
 * and their connections finish on their own.
 */
static void apply_listeners(struct tg_worker *w, const struct tg_config *next)
{
    struct tg_listener *kept = NULL, **tail = &kept;
    bool *matched = tg_mem_calloc(next->nlisteners ? next->nlisteners : 1, sizeof(bool));
    if (!matched) {
        tg_log_error("worker", "worker %u: out of memory applying listeners", w->index);
        return;
    }
    struct tg_listener *l = w->listeners;
    while (l) {
        struct tg_listener *n = l->next;
        size_t i = 0;
        while (i < next->nlisteners && (matched[i] || !tg_listener_same_addr(l, &next->listeners[i])))
            i++;
        if (i < next->nlisteners && tg_listener_update(l, &next->listeners[i]) == 0) {
            matched[i] = true;
            l->next = NULL;
            *tail = l;
            tail = &l->next;
        } else {
            /* Removed: stop accepting, and let its connections finish their
             * current exchange and close (h2 GOAWAY, h1 Connection: close). */
            struct tg_conn *c = w->conns;
            while (c) {
                struct tg_conn *cn = c->next;
                if (c->listener == l)
                    tg_conn_drain(c);
                c = cn;
            }
            tg_listener_close(l);
        }
        l = n;
    }
    for (size_t i = 0; i < next->nlisteners; i++) {
        if (matched[i])
            continue;
        struct tg_listener *nl = NULL;
        char err[512];
        if (tg_listener_open(w, &next->listeners[i], &nl, err, sizeof(err)) < 0) {
            tg_log_error("worker", "worker %u: %s", w->index, err);
            continue;
        }
        *tail = nl;
        tail = &nl->next;
    }
    w->listeners = kept;
    tg_mem_free(matched);
}

static void on_wakeup(uv_async_t *a)
{
    struct tg_worker *w = tg_container_of(a, struct tg_worker, wakeup);
    struct tg_config *next = tg_server_take_config(w->server, w->index);
    if (next) {
        if (!w->draining)
            apply_listeners(w, next);
        tg_config_unref(w->cfg);
        w->cfg = next;
        tg_quota_worker_update(w);
    }
    if (w->stop_requested)
        begin_drain(w);
}

int tg_worker_init(struct tg_worker *w, struct tg_server *s, unsigned i, struct tg_config *cfg)
{
    memset(w, 0, sizeof(*w));
    w->index = i;
    w->server = s;
    int rv = uv_loop_init(&w->loop);
    if (rv < 0)
        return rv;
    w->cfg = tg_config_ref(cfg);
    uv_async_init(&w->loop, &w->wakeup, on_wakeup);
    uv_check_init(&w->loop, &w->check);
    uv_check_start(&w->check, on_check);
    uv_idle_init(&w->loop, &w->idle);
    uv_timer_init(&w->loop, &w->grace);
    uv_unref((uv_handle_t *)&w->grace);
    w->pool = tg_pool_new(w);
    w->metrics = tg_mem_calloc(1, sizeof(*w->metrics));
    if (!w->pool || !w->metrics)
        return TG_E_NOMEM;
    if ((rv = tg_quota_worker_init(w)) != 0)
        return rv;
    for (size_t k = 0; k < cfg->nlisteners; k++) {
        struct tg_listener *l = NULL;
        char err[512];
        rv = tg_listener_open(w, &cfg->listeners[k], &l, err, sizeof(err));
        if (rv < 0) {
            tg_log_error("worker", "%s", err);
            return rv;
        }
        l->next = w->listeners;
        w->listeners = l;
    }
    return 0;
}

static void thread_main(void *arg)
{
    struct tg_worker *w = arg;
    /* A name for top, perf and bench/audit.sh (per-thread CPU from /proc). */
    char name[16];
    snprintf(name, sizeof(name), "tg-worker-%u", w->index);
    prctl(PR_SET_NAME, name, 0, 0, 0);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    tg_audit_thread_exit();
    uv_run(&w->loop, UV_RUN_DEFAULT); /* the closed timer's callback */
    tg_authn_thread_exit();
    tg_redis_reply_thread_exit();
    atomic_store(&w->finished, true);
}

int tg_worker_start(struct tg_worker *w)
{
    return uv_thread_create(&w->thread, thread_main, w);
}

void tg_worker_stop(struct tg_worker *w)
{
    w->stop_requested = true;
    uv_async_send(&w->wakeup);
}

void tg_worker_join(struct tg_worker *w)
{
    uv_thread_join(&w->thread);
}

/* Free a worker whose loop has finished (or never ran). */
void tg_worker_dispose(struct tg_worker *w)
{
    if (!uv_is_closing((uv_handle_t *)&w->wakeup)) {
        /* Never ran (startup failed): close what init opened. */
        w->draining = true;
        for (struct tg_listener *l = w->listeners; l;) {
            struct tg_listener *n = l->next;
            tg_listener_close(l);
            l = n;
        }
        w->listeners = NULL;
        tg_quota_worker_close(w);
        close_worker_handles(w);
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&w->loop) != 0)
        tg_log_warn("worker", "worker %u: loop closed with handles left", w->index);
    tg_pool_free(w->pool);
    w->pool = NULL;
    tg_mem_free(w->metrics);
    w->metrics = NULL;
    tg_config_unref(w->cfg);
    w->cfg = NULL;
}
