/*
 * redis_uv.h - hiredis 0.14.1 <-> libuv adapter (private to proxy/redis.c).
 *
 * Replaces <hiredis/adapters/libuv.h>, which (THREATS §4.3.3) drops poll
 * errors on the floor - a context can then hang forever with callbacks
 * pending - and leaks its state when uv_poll_init fails.
 */
#ifndef TG_REDIS_UV_H
#define TG_REDIS_UV_H

#include <hiredis/async.h>
#include <uv.h>

/*
 * Watch ac's socket on loop.  Call right after redisAsyncConnect() succeeded
 * and before redisAsyncSetConnectCallback().  Returns 0, TG_E_INVALID (already
 * attached), TG_E_NOMEM or a libuv error; on failure nothing stays allocated
 * and ac is unchanged (the caller frees it).  The poll handle is closed
 * asynchronously when hiredis frees ac; the loop must run for that.
 */
int tg_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop);

#endif
