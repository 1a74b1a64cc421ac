/*
 * filter-t.h - the filter contract (types only).  Every feature that acts on
 * a request (routing, header rewriting, authentication, quotas, audit) is a
 * filter with this shape (STYLE §15, §16).
 */
#ifndef TG_FILTER_T_H
#define TG_FILTER_T_H

#include <stdbool.h>
#include <stddef.h>

#include "proxy/buf-t.h"

struct tg_req;
struct tg_filter;

enum tg_filter_status {
    TG_FILTER_CONTINUE, /* pass the event to the next filter */
    TG_FILTER_STOP,     /* paused; this filter calls tg_req_continue() later */
    TG_FILTER_BUFFER,   /* data phase: hold chunks (bounded) until the end, then call again */
    TG_FILTER_REPLIED,  /* this filter answered via tg_req_reply_*(); the chain ends */
};

typedef bool tg_filter_attach_fn(struct tg_filter *f, struct tg_req *req);
typedef enum tg_filter_status tg_filter_headers_fn(struct tg_filter *f, struct tg_req *req);
typedef enum tg_filter_status tg_filter_data_fn(struct tg_filter *f, struct tg_req *req,
                                                struct tg_iov chunk, bool end);
typedef void tg_filter_resp_data_fn(struct tg_filter *f, struct tg_req *req, struct tg_iov chunk,
                                    bool end);
typedef void tg_filter_event_fn(struct tg_filter *f, struct tg_req *req);

/* A filter's callbacks; any may be NULL, which means pass-through. */
struct tg_filter_ops {
    const char *name;                         /* for logs */
    size_t ctx_size;                          /* per-request state, zeroed, from the arena */
    tg_filter_attach_fn *attach;              /* false: skip this request entirely */
    tg_filter_headers_fn *on_request_headers; /* request head complete */
    tg_filter_data_fn *on_request_data;      /* each request body chunk; end on the last */
    tg_filter_headers_fn *on_response_headers;/* response head, before it is sent (reverse order) */
    tg_filter_resp_data_fn *on_response_data; /* each response chunk, read-only, in place */
    tg_filter_event_fn *on_complete;          /* exactly once, also on deny or abort */
    tg_filter_event_fn *on_destroy;           /* cancel timers and pending I/O; nothing fires after */
};

/* One filter instance attached to one request. */
struct tg_filter {
    const struct tg_filter_ops *ops; /* callbacks */
    void *ctx;                       /* ops->ctx_size zeroed bytes, or NULL */
};

#endif
