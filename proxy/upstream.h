/*
 * upstream.h - the HTTP/1.1 exchange with a model server.
 *
 * One tg_upstream per request that reached the end of the filter chain.  It
 * takes a connection from the worker's pool (round robin over the route's
 * servers, skipping one that refuses), writes the request head and streams
 * the body from req->body_out, parses the response with llhttp and streams
 * it to the client through tg_req_response_*(), reading only while the
 * client keeps up (back-pressure).  Timeouts: connect -> 504, first byte ->
 * 504, refused / reset / malformed before the head -> 502; after the head a
 * failure aborts the client stream (never a clean end).
 */
#ifndef TG_UPSTREAM_H
#define TG_UPSTREAM_H

#include <stdbool.h>

struct tg_req;
struct tg_upstream;
struct tg_worker;

/*
 * Start the exchange for req (req->route->upstream).  Never fails directly:
 * on error it answers the request itself (502/504).  May call back into req
 * before returning.
 */
void tg_upstream_start(struct tg_req *req);
/* New bytes (or the end) are in req->body_out. */
void tg_upstream_body_ready(struct tg_upstream *u);
/* The client queue drained: resume reading the response if paused. */
void tg_upstream_resume(struct tg_upstream *u);
/* The request is going away: close (or pool, if reusable) and free u. */
void tg_upstream_detach(struct tg_upstream *u);

/* Per-worker pool state: create and destroy (closes idle connections). */
struct tg_pool;
struct tg_pool *tg_pool_new(struct tg_worker *w);
/* Close every idle connection; active ones close when their request ends. */
void tg_pool_close_idle(struct tg_pool *p);
/* Free the pool once no connection refers to it (call after the loop drained). */
void tg_pool_free(struct tg_pool *p);
/* Number of idle pooled connections (tests, metrics). */
unsigned tg_pool_idle_count(const struct tg_pool *p);

#endif
