/*
 * redis_uv.c - hiredis 0.14.1 <-> libuv adapter: one uv_poll_t on the
 * context's socket, driven by hiredis's add/del read/write hooks.
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
 * under on_poll() (redisAsyncHandleRead -> disconnect -> free).  cleanup only
 * clears p->ac and starts uv_close; p itself lives until the close callback,
 * so on_poll() can still look at p->ac after the read handler returned.
 */
#include "proxy/redis_uv.h"

#include "proxy/err.h"
#include "proxy/mem.h"

struct uvev {
    uv_poll_t poll;        /* watches the context's fd */
    redisAsyncContext *ac; /* NULL once hiredis called cleanup (the context is gone) */
    int events;            /* UV_READABLE | UV_WRITABLE hiredis wants */
};

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct uvev *p = tg_container_of(h, struct uvev, poll);
    if (status < 0)
        events = p->events;
    if (p->ac && (events & UV_READABLE))
        redisAsyncHandleRead(p->ac);
    if (p->ac && (events & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);
}

/* A failed uv_poll_start leaves the socket unwatched; redis.c's command and
 * connect timers then drop the connection, so nothing hangs. */
static void update(struct uvev *p)
{
    if (p->events)
        (void)uv_poll_start(&p->poll, p->events, on_poll);
    else
        (void)uv_poll_stop(&p->poll);
}

static void add_read(void *privdata)
{
    struct uvev *p = privdata;
    p->events |= UV_READABLE;
    update(p);
}

static void del_read(void *privdata)
{
    struct uvev *p = privdata;
    p->events &= ~UV_READABLE;
    update(p);
}

static void add_write(void *privdata)
{
    struct uvev *p = privdata;
    p->events |= UV_WRITABLE;
    update(p);
}

static void del_write(void *privdata)
{
    struct uvev *p = privdata;
    p->events &= ~UV_WRITABLE;
    update(p);
}

static void on_closed(uv_handle_t *h)
{
    tg_mem_free(tg_container_of((uv_poll_t *)h, struct uvev, poll));
}

/* Called by hiredis while it frees the context, before it closes the fd. */
static void cleanup(void *privdata)
{
    struct uvev *p = privdata;
    p->ac->ev.data = NULL;
    p->ac = NULL;
    p->events = 0;
    uv_close((uv_handle_t *)&p->poll, on_closed);
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
    p->ac = ac;
    ac->ev.data = p;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    return 0;
}
