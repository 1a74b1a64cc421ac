/*
 * redis_uv.c - hiredis 0.14.1 <-> libuv adapter: one uv_poll_t on the
 * context's socket, driven by hiredis's add/del read/write hooks, and one
 * uv_prepare_t that coalesces writes.
 *
 * Write coalescing.  hiredis calls addWrite for every command it queues.
 * Watching for POLLOUT each time costs epoll_ctl calls per command (and
 * uv_poll_start always begins with uv_poll_stop, which does EPOLL_CTL_DEL,
 * so even a redundant restart is two syscalls), and one write(2) per wake-up
 * rather than per loop iteration.  Instead, once connected, addWrite only
 * starts the prepare handle; it runs right before the loop next blocks in
 * epoll, and writes everything queued during that iteration with one
 * redisAsyncHandleWrite (one write(2)) - the socket buffer nearly always has
 * room, so epoll is not touched.  Only when hiredis still has output after
 * that write (socket buffer full) do we watch for POLLOUT, until a write
 * empties the buffer.  The readable watch is started once and stays; the
 * poll handle is restarted only when the event set really changes.  Before
 * the connect completed, addWrite watches POLLOUT as usual (that is how a
 * non-blocking connect is seen to finish).  Nothing is lost by deferring:
 * the prepare handle runs before every poll, so no queued command waits
 * while the loop sleeps.
 *
 * Differences from the Debian adapters/libuv.h (THREATS §4.3.3):
 *  - a poll error is passed on: libuv reports it with status < 0, no events,
 *    and stops the handle (that is how a refused connect or a reset shows up
 *    with POLLERR).  We then tell hiredis the socket is ready for whatever it
 *    was waiting for, so its read/write/connect check sees the error and the
 *    context fails instead of hanging (upstream fix 9ce15c4, v1.0.0);
 *  - the state is freed when uv_poll_init fails (upstream 2706c3e, v1.3.0).
 *
 * Lifetime: hiredis calls cleanup from inside its own free, possibly from
 * under on_poll() or on_prepare() (redisAsyncHandleRead/Write -> disconnect
 * -> free).  cleanup only clears p->ac and starts uv_close on both handles;
 * p itself lives until the second close callback, so the callers can still
 * look at p->ac after the handler returned.
 */
#include "proxy/redis_uv.h"

#include <stdbool.h>

#include "proxy/err.h"
#include "proxy/mem.h"

struct uvev {
    uv_poll_t poll;        /* watches the context's fd */
    uv_prepare_t flush;    /* writes the queued commands before the loop blocks */
    redisAsyncContext *ac; /* NULL once hiredis called cleanup (the context is gone) */
    int events;            /* UV_READABLE | UV_WRITABLE the poll handle watches */
    int closing;           /* handles still closing after cleanup */
    bool writing;          /* inside redisAsyncHandleWrite */
};

static void on_poll(uv_poll_t *h, int status, int events);

/* A failed uv_poll_start leaves the socket unwatched; redis.c's command and
 * connect timers then drop the connection, so nothing hangs. */
static void set_events(struct uvev *p, int events)
{
    if (events == p->events)
        return;
    p->events = events;
    if (events)
        (void)uv_poll_start(&p->poll, events, on_poll);
    else
        (void)uv_poll_stop(&p->poll);
}

static void handle_write(struct uvev *p)
{
    p->writing = true;
    redisAsyncHandleWrite(p->ac);
    p->writing = false;
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct uvev *p = tg_container_of(h, struct uvev, poll);
    if (status < 0) {
        /* libuv stopped the handle: what we asked for is what hiredis waits
         * on.  Forget the set, so the next add_read/add_write restarts it. */
        events = p->events;
        p->events = 0;
    }
    if (p->ac && (events & UV_READABLE))
        redisAsyncHandleRead(p->ac);
    if (p->ac && (events & UV_WRITABLE))
        handle_write(p);
}

static void on_flush(uv_prepare_t *h)
{
    struct uvev *p = tg_container_of(h, struct uvev, flush);
    uv_prepare_stop(h);
    if (p->ac)
        handle_write(p); /* still output after it: add_write arms POLLOUT */
}

static void add_read(void *privdata)
{
    struct uvev *p = privdata;
    set_events(p, p->events | UV_READABLE);
}

static void del_read(void *privdata)
{
    struct uvev *p = privdata;
    set_events(p, p->events & ~UV_READABLE);
}

static void add_write(void *privdata)
{
    struct uvev *p = privdata;
    if (p->events & UV_WRITABLE)
        return; /* POLLOUT is watched: its event writes everything */
    if (p->writing || !(p->ac->c.flags & REDIS_CONNECTED)) {
        /* The socket buffer is full (a write left output behind), or the
         * connect is still in progress: wait until the socket is writable. */
        uv_prepare_stop(&p->flush);
        set_events(p, p->events | UV_WRITABLE);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&p->flush))
        (void)uv_prepare_start(&p->flush, on_flush);
}

static void del_write(void *privdata)
{
    struct uvev *p = privdata;
    uv_prepare_stop(&p->flush);
    set_events(p, p->events & ~UV_WRITABLE);
}

static void on_closed(uv_handle_t *h)
{
    struct uvev *p = h->data;
    if (--p->closing == 0)
        tg_mem_free(p);
}

/* Called by hiredis while it frees the context, before it closes the fd. */
static void cleanup(void *privdata)
{
    struct uvev *p = privdata;
    p->ac->ev.data = NULL;
    p->ac = NULL;
    p->events = 0;
    p->closing = 2;
    uv_close((uv_handle_t *)&p->poll, on_closed);
    uv_close((uv_handle_t *)&p->flush, on_closed);
}

int tg_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    if (ac->ev.data)
        return TG_E_INVALID;
    struct uvev *p = tg_mem_calloc(1, sizeof(*p));
    if (!p)
        return TG_E_NOMEM;
    int rv = uv_poll_init(loop, &p->poll, ac->c.fd);
    if (rv < 0) {
        tg_mem_free(p);
        return rv;
    }
    /* uv_prepare_init cannot fail (it only links the handle into the loop). */
    (void)uv_prepare_init(loop, &p->flush);
    p->poll.data = p;
    p->flush.data = p;
    p->ac = ac;
    ac->ev.data = p;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    return 0;
}
