/*
 * filter.h - running the filter chain of a request.
 *
 * Request phases run in the order of the registry; response phases in
 * reverse.  A filter that returns STOP is resumed by tg_req_continue(), which
 * calls the next filter.  A filter that returns REPLIED has answered through
 * tg_req_reply_*() and the chain ends.
 */
#ifndef TG_FILTER_H
#define TG_FILTER_H

#include "proxy/req-t.h"

/* The built-in filters in chain order (filters/registry.c); NULL-terminated. */
extern const struct tg_filter_ops *const tg_filter_registry[];

/*
 * Attach the filters of list (NULL-terminated) to req: allocate each
 * context from the arena and call attach().  0 or TG_E_NOMEM / TG_E_TOO_LARGE.
 */
int tg_filter_attach_all(struct tg_req *req, const struct tg_filter_ops *const *list);
/* Run on_request_headers from filter index `from`; calls req->on_chain_done at the end. */
void tg_filter_run_headers(struct tg_req *req, unsigned from);
/*
 * Pass one body chunk through the on_request_data callbacks.  Returns
 * CONTINUE when the chunk may go upstream as is, BUFFER when it was taken
 * into req->body_buffered, REPLIED when a filter answered.
 */
enum tg_filter_status tg_filter_run_data(struct tg_req *req, struct tg_iov chunk, bool end);
/* Response head, reverse order; REPLIED if a filter replaced the response. */
enum tg_filter_status tg_filter_run_response_headers(struct tg_req *req);
/* Response data, reverse order, read-only. */
void tg_filter_run_response_data(struct tg_req *req, struct tg_iov chunk, bool end);
/* on_complete of every filter, reverse order. */
void tg_filter_run_complete(struct tg_req *req);
/* on_destroy of every filter, reverse order. */
void tg_filter_run_destroy(struct tg_req *req);

#endif
