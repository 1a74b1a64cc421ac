/*
 * The chain keeps one cursor (req->fcur) for the request-header phase, like
 * HAProxy's flt.current: a STOP parks the cursor on the stopping filter and
 * tg_req_continue() resumes with the one after it.
 */
#include "proxy/filter.h"

#include "proxy/buf.h"
#include "proxy/err.h"
#include "proxy/req.h"

int tg_filter_attach_all(struct tg_req *req, const struct tg_filter_ops *const *list)
{
    for (size_t i = 0; list[i]; i++) {
        const struct tg_filter_ops *ops = list[i];
        if (req->nfilters == TG_REQ_MAX_FILTERS)
            return TG_E_TOO_LARGE;
        struct tg_filter *f = &req->filters[req->nfilters];
        f->ops = ops;
        f->ctx = NULL;
        if (ops->ctx_size) {
            f->ctx = tg_arena_calloc(&req->arena, ops->ctx_size);
            if (!f->ctx)
                return TG_E_NOMEM;
        }
        if (ops->attach && !ops->attach(f, req))
            continue; /* declined: the slot is reused */
        req->nfilters++;
    }
    return 0;
}

void tg_filter_run_headers(struct tg_req *req, unsigned from)
{
    for (unsigned i = from; i < req->nfilters; i++) {
        struct tg_filter *f = &req->filters[i];
        if (!f->ops->on_request_headers)
            continue;
        enum tg_filter_status st = f->ops->on_request_headers(f, req);
        switch (st) {
        case TG_FILTER_CONTINUE:
        case TG_FILTER_BUFFER: /* meaningless for headers: treated as continue */
            continue;
        case TG_FILTER_STOP:
            req->fcur = i;
            return;
        case TG_FILTER_REPLIED:
            req->fcur = req->nfilters;
            return;
        }
    }
    req->fcur = req->nfilters;
    req->headers_done = true;
    if (req->on_chain_done && !req->replied)
        req->on_chain_done(req);
}

enum tg_filter_status tg_filter_run_data(struct tg_req *req, struct tg_iov chunk, bool end)
{
    unsigned i = 0;
    if (req->buffer_filter >= 0) {
        /* A filter wants the whole body: filters before it see each chunk. */
        unsigned bf = (unsigned)req->buffer_filter;
        for (; i < bf; i++) {
            struct tg_filter *f = &req->filters[i];
            if (f->ops->on_request_data &&
                f->ops->on_request_data(f, req, chunk, end) == TG_FILTER_REPLIED)
                return TG_FILTER_REPLIED;
        }
        if (tg_buf_append(&req->body_buffered, chunk.base, chunk.len) != 0)
            return TG_FILTER_BUFFER; /* the ceiling is checked by tg_req_body */
        if (!end)
            return TG_FILTER_BUFFER;
        chunk = tg_iov_make(req->body_buffered.base, req->body_buffered.len);
    }
    for (; i < req->nfilters; i++) {
        struct tg_filter *f = &req->filters[i];
        if (!f->ops->on_request_data)
            continue;
        enum tg_filter_status st = f->ops->on_request_data(f, req, chunk, end);
        switch (st) {
        case TG_FILTER_CONTINUE:
        case TG_FILTER_STOP: /* data filters cannot pause on their own yet */
            continue;
        case TG_FILTER_BUFFER:
            if (req->buffer_filter >= 0)
                continue; /* the whole body is already being delivered */
            req->buffer_filter = (int)i;
            if (tg_buf_append(&req->body_buffered, chunk.base, chunk.len) != 0)
                return TG_FILTER_BUFFER;
            if (end)
                return tg_filter_run_data(req, TG_IOV_NULL, true);
            return TG_FILTER_BUFFER;
        case TG_FILTER_REPLIED:
            return TG_FILTER_REPLIED;
        }
    }
    return TG_FILTER_CONTINUE;
}

enum tg_filter_status tg_filter_run_response_headers(struct tg_req *req)
{
    for (unsigned i = req->nfilters; i-- > 0;) {
        struct tg_filter *f = &req->filters[i];
        if (f->ops->on_response_headers &&
            f->ops->on_response_headers(f, req) == TG_FILTER_REPLIED)
            return TG_FILTER_REPLIED;
    }
    return TG_FILTER_CONTINUE;
}

void tg_filter_run_response_data(struct tg_req *req, struct tg_iov chunk, bool end)
{
    for (unsigned i = req->nfilters; i-- > 0;) {
        struct tg_filter *f = &req->filters[i];
        if (f->ops->on_response_data)
            f->ops->on_response_data(f, req, chunk, end);
    }
}

void tg_filter_run_complete(struct tg_req *req)
{
    for (unsigned i = req->nfilters; i-- > 0;) {
        struct tg_filter *f = &req->filters[i];
        if (f->ops->on_complete)
            f->ops->on_complete(f, req);
    }
}

void tg_filter_run_destroy(struct tg_req *req)
{
    for (unsigned i = req->nfilters; i-- > 0;) {
        struct tg_filter *f = &req->filters[i];
        if (f->ops->on_destroy)
            f->ops->on_destroy(f, req);
    }
}
