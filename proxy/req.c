#include "proxy/req.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdio.h>
#include <uv.h>

#include "config/config.h"
#include "proxy/buf.h"
#include "proxy/err.h"
#include "proxy/filter.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/upstream.h"
#include "proxy/worker.h"

static atomic_uint_fast64_t next_id = 1;

static void deliver_held(struct tg_req *req);

struct start_defer {
    struct tg_defer d;   /* queued on the worker */
    struct tg_req *req;  /* the request to start */
};

static void on_start(struct tg_defer *d)
{
    struct start_defer *sd = tg_container_of(d, struct start_defer, d);
    struct tg_req *req = sd->req;
    req->start_defer = NULL;
    if (!req->replied && !req->aborted)
        tg_upstream_start(req);
}

/*
 * The chain's end: the upstream exchange starts from the worker's check
 * phase, after the current read was processed whole, so a stream that the
 * same packet already reset (rapid reset, THREATS §1.3) never costs an
 * upstream connection.
 */
static void start_upstream(struct tg_req *req)
{
    if (!req->worker) {
        tg_upstream_start(req);
        return;
    }
    struct start_defer *sd = tg_arena_calloc(&req->arena, sizeof(*sd));
    if (!sd) {
        tg_req_reply_error(req, 503, "unavailable", "out of memory", "server.nomem");
        return;
    }
    sd->req = req;
    req->start_defer = &sd->d;
    tg_worker_defer(req->worker, &sd->d, on_start);
}

struct tg_req *tg_req_new(struct tg_worker *w, struct tg_config *cfg,
                          const struct tg_req_sess_ops *ops, void *sess)
{
    struct tg_req *req = tg_mem_calloc(1, sizeof(*req));
    if (!req)
        return NULL;
    tg_arena_init(&req->arena, 4096);
    req->cfg = tg_config_ref(cfg);
    req->worker = w;
    req->sess_ops = ops;
    req->sess = sess;
    req->id = atomic_fetch_add(&next_id, 1);
    req->start_ns = uv_hrtime();
    req->content_length = -1;
    req->resp_content_length = -1;
    req->buffer_filter = -1;
    req->hold_filter = -1;
    req->stream = -1;
    req->openai.max_tokens = -1;
    req->usage.quota_ms = -1;
    req->on_chain_done = start_upstream;
    tg_bufq_init(&req->body_in);
    tg_bufq_init(&req->body_out);
    tg_buf_init(&req->body_buffered, cfg->limits.max_body_bytes);
    if (tg_filter_attach_all(req, tg_filter_registry) != 0) {
        tg_req_free(req);
        return NULL;
    }
    return req;
}

void tg_req_complete(struct tg_req *req)
{
    if (req->completed)
        return;
    req->completed = true;
    tg_filter_run_complete(req);
}

void tg_req_free(struct tg_req *req)
{
    if (!req)
        return;
    if (!req->resp_end_sent && !req->outcome.reason) {
        req->outcome.client_aborted = true;
        req->outcome.reason = "client.aborted";
    }
    tg_req_complete(req);
    if (req->worker && req->worker->metrics) {
        uint64_t now = uv_hrtime();
        int64_t fb = req->upstream_first_byte_ns
                         ? (int64_t)((req->upstream_first_byte_ns - req->start_ns) / 1000)
                         : -1;
        tg_metrics_request(req->worker->metrics, req->route ? req->route->path_prefix : NULL,
                           req->resp_head_sent ? req->status : 0,
                           (now - req->start_ns) / 1000, fb, req->outcome.reason);
    }
    tg_filter_run_destroy(req);
    if (req->start_defer) {
        tg_worker_cancel(req->worker, req->start_defer);
        req->start_defer = NULL;
    }
    if (req->upstream) {
        struct tg_upstream *u = req->upstream;
        req->upstream = NULL;
        tg_upstream_detach(u);
    }
    /* Credentials still in the arena (a request refused before forward.c
     * removed them) are wiped, not just freed. */
    for (size_t i = 0; i < req->headers.n; i++) {
        struct tg_header *h = &req->headers.v[i];
        if (tg_iov_eq(h->name, TG_IOV_LIT("authorization")) ||
            tg_iov_eq(h->name, TG_IOV_LIT("x-api-key")))
            OPENSSL_cleanse((void *)h->value.base, h->value.len);
    }
    tg_bufq_dispose(&req->body_in);
    tg_bufq_dispose(&req->body_out);
    if (req->body_buffered.base)
        OPENSSL_cleanse(req->body_buffered.base, req->body_buffered.len); /* prompts */
    tg_buf_dispose(&req->body_buffered);
    json_decref(req->openai.doc);
    tg_config_unref(req->cfg);
    tg_arena_dispose(&req->arena);
    tg_mem_free(req);
}

int tg_hlist_add(struct tg_hlist *l, struct tg_arena *a, struct tg_iov name, struct tg_iov value)
{
    if (l->n == l->cap) {
        if (l->cap >= TG_REQ_MAX_HEADERS)
            return TG_E_TOO_LARGE;
        size_t cap = l->cap ? l->cap * 2 : 16;
        if (cap > TG_REQ_MAX_HEADERS)
            cap = TG_REQ_MAX_HEADERS;
        struct tg_header *v = tg_arena_alloc(a, cap * sizeof(*v));
        if (!v)
            return TG_E_NOMEM;
        if (l->n)
            memcpy(v, l->v, l->n * sizeof(*v));
        l->v = v; /* the old array stays in the arena until the request ends */
        l->cap = cap;
    }
    char *n = tg_arena_strndup(a, name.base, name.len);
    char *v = tg_arena_strndup(a, value.base ? value.base : "", value.len);
    if (!n || !v)
        return TG_E_NOMEM;
    tg_lowercase(n, n, name.len);
    l->v[l->n].name = tg_iov_make(n, name.len);
    l->v[l->n].value = tg_iov_make(v, value.len);
    l->n++;
    return 0;
}

struct tg_iov tg_hlist_get(const struct tg_hlist *l, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].name.len == len && memcmp(l->v[i].name.base, name, len) == 0)
            return l->v[i].value;
    return TG_IOV_NULL;
}

size_t tg_hlist_remove(struct tg_hlist *l, const char *name)
{
    size_t len = strlen(name), out = 0, removed = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].name.len == len && memcmp(l->v[i].name.base, name, len) == 0) {
            removed++;
            continue;
        }
        l->v[out++] = l->v[i];
    }
    l->n = out;
    return removed;
}

/* A filter that held the body stopped the chain after the body had ended. */
static void after_headers_phase(struct tg_req *req)
{
    if (!req->headers_done && !req->replied && req->hold_filter >= 0 && req->body_in_end)
        deliver_held(req);
}

void tg_req_start(struct tg_req *req)
{
    tg_filter_run_headers(req, 0);
    after_headers_phase(req);
    /* Body bytes that arrived while the chain ran (or before) go on now. */
    if (req->headers_done && !req->replied)
        tg_req_body(req, NULL, 0, false);
}

void tg_req_hold_body(struct tg_req *req, struct tg_filter *f)
{
    req->hold_filter = (int)(f - req->filters);
    /* Whatever already arrived joins the held body. */
    while (req->body_in.head) {
        struct tg_iov v = tg_bufq_peek(&req->body_in);
        size_t n = v.len;
        if (tg_buf_append(&req->body_buffered, v.base, n) != 0)
            break; /* cannot pass max_body_bytes: tg_req_body already answered 413 */
        tg_bufq_consume(&req->body_in, n);
        if (req->sess_ops->body_consumed)
            req->sess_ops->body_consumed(req, n);
    }
}

/* The held body is complete: let the holding filter decide. */
static void deliver_held(struct tg_req *req)
{
    if (req->held_delivered)
        return;
    req->held_delivered = true;
    struct tg_filter *f = &req->filters[req->hold_filter];
    struct tg_iov whole = tg_iov_make(req->body_buffered.base, req->body_buffered.len);
    if (f->ops->on_request_data)
        f->ops->on_request_data(f, req, whole, true);
}

void tg_req_continue(struct tg_req *req)
{
    if (req->replied || req->headers_done)
        return;
    tg_filter_run_headers(req, req->fcur + 1);
    after_headers_phase(req);
    if (req->headers_done && !req->replied)
        tg_req_body(req, NULL, 0, false);
}

/* Move chunks from body_in through the data filters into body_out. */
static void pump_body(struct tg_req *req)
{
    bool moved = false;
    if (req->hold_filter >= 0) {
        /* The chain went on after a filter held the body: it goes upstream whole. */
        req->hold_filter = -1;
        if (req->body_buffered.len &&
            tg_bufq_push(&req->body_out, req->body_buffered.base, req->body_buffered.len) != 0) {
            tg_req_reply_error(req, 503, "unavailable", "out of memory", "server.nomem");
            return;
        }
        tg_buf_dispose(&req->body_buffered);
        if (req->body_in_end)
            req->body_out_end = true;
        moved = true;
    }
    while (req->body_in.head || (req->body_in_end && !req->body_out_end)) {
        struct tg_chunk *c = req->body_in.head;
        bool last = req->body_in_end && (!c || c->next == NULL);
        struct tg_iov chunk = c ? tg_bufq_peek(&req->body_in) : TG_IOV_NULL;
        enum tg_filter_status st = tg_filter_run_data(req, chunk, last);
        if (st == TG_FILTER_REPLIED || req->replied)
            return;
        /* Once a filter buffers, every chunk goes into req->body_buffered. */
        bool buffered = req->buffer_filter >= 0;
        if (c) {
            req->body_in.head = c->next;
            if (!req->body_in.head)
                req->body_in.tail = NULL;
            size_t n = c->len - c->off;
            req->body_in.bytes -= n;
            c->next = NULL;
            if (buffered) {
                /* Its bytes now live in body_buffered: release the client's credit. */
                tg_mem_free(c);
                if (req->sess_ops->body_consumed)
                    req->sess_ops->body_consumed(req, n);
            } else {
                /* Move the chunk node itself: no copy. */
                if (req->body_out.tail)
                    req->body_out.tail->next = c;
                else
                    req->body_out.head = c;
                req->body_out.tail = c;
                req->body_out.bytes += n;
            }
        }
        if (buffered && last && st == TG_FILTER_CONTINUE && req->body_buffered.len &&
            tg_bufq_push(&req->body_out, req->body_buffered.base, req->body_buffered.len) != 0) {
            tg_req_reply_error(req, 503, "unavailable", "out of memory", "server.nomem");
            return;
        }
        if (last)
            req->body_out_end = true;
        moved = true;
    }
    if (moved && req->upstream)
        tg_upstream_body_ready(req->upstream);
}

int tg_req_body(struct tg_req *req, const char *p, size_t n, bool end)
{
    if (end)
        req->body_in_end = true; /* the client finished, whatever happens to the bytes */
    if (req->replied || req->aborted) {
        if (n && req->sess_ops->body_consumed)
            req->sess_ops->body_consumed(req, n);
        return TG_E_CLOSED;
    }
    if (n) {
        req->body_received += n;
        if (req->body_received > req->cfg->limits.max_body_bytes) {
            if (req->sess_ops->body_consumed)
                req->sess_ops->body_consumed(req, n);
            tg_req_reply_error(req, 413, "request_too_large",
                               "request body exceeds the configured max_body_bytes",
                               "limits.body_size");
            return TG_E_CLOSED;
        }
        if (req->hold_filter >= 0 && !req->headers_done) {
            /* Held for a filter: the client is not stalled by the hold. */
            if (tg_buf_append(&req->body_buffered, p, n) != 0) {
                tg_req_reply_error(req, 503, "unavailable", "out of memory", "server.nomem");
                return TG_E_NOMEM;
            }
            if (req->sess_ops->body_consumed)
                req->sess_ops->body_consumed(req, n);
        } else if (tg_bufq_push(&req->body_in, p, n) != 0) {
            tg_req_reply_error(req, 503, "unavailable", "out of memory", "server.nomem");
            return TG_E_NOMEM;
        }
    }
    if (req->hold_filter >= 0 && !req->headers_done) {
        if (end)
            deliver_held(req);
        return 0;
    }
    if (req->headers_done)
        pump_body(req);
    return 0;
}

static const char *error_type(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

int tg_req_resp_header_add(struct tg_req *req, const char *name, const char *value)
{
    return tg_hlist_add(&req->resp_headers, &req->arena, tg_iov_make(name, strlen(name)),
                        tg_iov_make(value, strlen(value)));
}

void tg_req_reply_extra(struct tg_req *req, const char *name, const char *value)
{
    if (req->nreply_extra >= sizeof(req->reply_extra) / sizeof(req->reply_extra[0]))
        return;
    char *n = tg_arena_strndup(&req->arena, name, strlen(name));
    char *v = tg_arena_strndup(&req->arena, value, strlen(value));
    if (!n || !v)
        return;
    req->reply_extra[req->nreply_extra++] =
        (struct tg_header){tg_iov_make(n, strlen(n)), tg_iov_make(v, strlen(v))};
}

void tg_req_reply_error(struct tg_req *req, int status, const char *code, const char *message,
                        const char *reason)
{
    if (req->replied || req->resp_end_sent)
        return;
    if (!req->outcome.reason)
        req->outcome.reason = reason;
    if (status < 500 || strcmp(code, "unavailable") == 0)
        req->outcome.denied = true;
    if (req->resp_head_sent) {
        /* Too late for a clean answer: the client must see a broken stream. */
        tg_req_response_abort(req, reason);
        return;
    }
    req->replied = true;
    if (req->upstream) {
        struct tg_upstream *u = req->upstream;
        req->upstream = NULL;
        tg_upstream_detach(u);
    }
    /* JSON-escape the message (it may quote a name); code is a fixed token. */
    char msg[320];
    size_t k = 0;
    for (const char *m = message; *m && k + 7 < sizeof(msg); m++) {
        unsigned char ch = (unsigned char)*m;
        if (ch == '"' || ch == '\\') {
            msg[k++] = '\\';
            msg[k++] = (char)ch;
        } else if (ch < 0x20) {
            k += (size_t)snprintf(msg + k, sizeof(msg) - k, "\\u%04x", ch);
        } else {
            msg[k++] = (char)ch;
        }
    }
    msg[k] = '\0';
    char body[512];
    int n = snprintf(body, sizeof(body),
                     "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"code\":\"%s\"}}\n",
                     msg, error_type(status), code);
    if (n < 0 || (size_t)n >= sizeof(body))
        n = 0;
    char len[24];
    snprintf(len, sizeof(len), "%d", n);
    req->status = status;
    req->resp_headers.n = 0;
    if (req->before_reply) {
        void (*fn)(struct tg_req *, void *) = req->before_reply;
        req->before_reply = NULL;
        fn(req, req->before_reply_arg);
    }
    tg_req_resp_header_add(req, "content-type", "application/json");
    tg_req_resp_header_add(req, "content-length", len);
    if (status == 401)
        tg_req_resp_header_add(req, "www-authenticate", "Bearer");
    for (unsigned i = 0; i < req->nreply_extra; i++)
        tg_hlist_add(&req->resp_headers, &req->arena, req->reply_extra[i].name,
                     req->reply_extra[i].value);
    if (req->request_id.len) {
        char *id = tg_arena_strndup(&req->arena, req->request_id.base, req->request_id.len);
        if (id)
            tg_req_resp_header_add(req, "x-request-id", id);
    }
    req->resp_content_length = n;
    req->resp_head_sent = true;
    bool head_only = req->head_only;
    if (req->sess_ops->send_head(req, !head_only && n > 0) != 0)
        return;
    if (!head_only && n > 0) {
        req->bytes_out += (uint64_t)n;
        req->resp_end_sent = true;
        req->sess_ops->send_data(req, body, (size_t)n, true);
    } else {
        req->resp_end_sent = true;
    }
}

int tg_req_response_head(struct tg_req *req, bool has_body)
{
    if (tg_filter_run_response_headers(req) == TG_FILTER_REPLIED)
        return TG_E_CLOSED;
    req->resp_head_sent = true;
    if (!has_body)
        req->resp_end_sent = true;
    return req->sess_ops->send_head(req, has_body);
}

int tg_req_response_data(struct tg_req *req, const char *p, size_t n, bool end)
{
    if (req->resp_end_sent)
        return TG_E_CLOSED;
    tg_filter_run_response_data(req, tg_iov_make(p, n), end);
    if (req->resp_xform)
        return req->resp_xform(req, p, n, end);
    return tg_req_response_emit(req, p, n, end);
}

int tg_req_response_emit(struct tg_req *req, const char *p, size_t n, bool end)
{
    if (req->resp_end_sent)
        return TG_E_CLOSED;
    req->bytes_out += n;
    if (end)
        req->resp_end_sent = true;
    return req->sess_ops->send_data(req, p, n, end);
}

void tg_req_response_cut(struct tg_req *req, const char *reason)
{
    if (!req->resp_end_sent)
        tg_req_response_emit(req, NULL, 0, true);
    if (!req->outcome.reason)
        req->outcome.reason = reason;
    if (req->upstream) {
        struct tg_upstream *u = req->upstream;
        req->upstream = NULL;
        tg_upstream_detach(u);
    }
}

int tg_req_replace_body(struct tg_req *req, const char *p, size_t n)
{
    if (req->hold_filter < 0 || req->headers_done)
        return TG_E_CLOSED;
    struct tg_buf nb;
    tg_buf_init(&nb, n > req->body_buffered.max ? n : req->body_buffered.max);
    if (n && tg_buf_append(&nb, p, n) != 0)
        return TG_E_NOMEM;
    if (req->body_buffered.base)
        OPENSSL_cleanse(req->body_buffered.base, req->body_buffered.len);
    tg_buf_dispose(&req->body_buffered);
    req->body_buffered = nb;
    req->content_length = (int64_t)n;
    return 0;
}

void tg_req_response_abort(struct tg_req *req, const char *reason)
{
    if (req->aborted)
        return;
    req->aborted = true;
    req->outcome.upstream_failed = true;
    if (!req->outcome.reason)
        req->outcome.reason = reason;
    if (req->upstream) {
        struct tg_upstream *u = req->upstream;
        req->upstream = NULL;
        tg_upstream_detach(u);
    }
    req->sess_ops->abort(req);
}

bool tg_req_client_congested(struct tg_req *req)
{
    return req->sess_ops->pending(req) > TG_REQ_RESP_HIGH_WATER;
}

void tg_req_client_drained(struct tg_req *req)
{
    if (req->upstream)
        tg_upstream_resume(req->upstream);
}

void tg_req_client_abort(struct tg_req *req)
{
    if (req->resp_end_sent && !req->upstream)
        return;
    if (!req->outcome.reason) {
        req->outcome.reason = "client.aborted";
        req->outcome.client_aborted = true;
    }
    req->aborted = true;
    if (req->upstream) {
        struct tg_upstream *u = req->upstream;
        req->upstream = NULL;
        tg_upstream_detach(u);
    }
}

double tg_req_elapsed_ms(const struct tg_req *req)
{
    return (double)(uv_hrtime() - req->start_ns) / 1e6;
}
