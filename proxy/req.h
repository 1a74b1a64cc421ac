/*
 * req.h - the request/response exchange.
 *
 * A tg_req is created by a client session (h1.c or h2.c) once a request head
 * is complete and valid, runs through the filter chain, is handed to the
 * upstream, and streams the response back through the session.  The session
 * owns it and frees it with tg_req_free() when its stream or exchange ends;
 * tg_req_free() guarantees on_complete ran exactly once.
 */
#ifndef TG_REQ_H
#define TG_REQ_H

#include "proxy/req-t.h"

/* High and low water marks of bytes queued toward the client (back-pressure). */
#define TG_REQ_RESP_HIGH_WATER (256u * 1024u)
#define TG_REQ_RESP_LOW_WATER (64u * 1024u)
/* Request body bytes held in tollgate before the client is paused (h1). */
#define TG_REQ_BODY_HIGH_WATER (256u * 1024u)

/*
 * New request pinned to cfg (takes its own reference) on worker w, talking to
 * the session through ops/sess.  Filters are attached from the registry.
 * NULL on allocation failure.
 */
struct tg_req *tg_req_new(struct tg_worker *w, struct tg_config *cfg,
                          const struct tg_req_sess_ops *ops, void *sess);
/* Complete (if not yet), destroy filters, detach the upstream, unpin, free.  NULL ok. */
void tg_req_free(struct tg_req *req);

/* Append a header copied into the arena (name lowercased).  0 or TG_E_NOMEM/TG_E_TOO_LARGE. */
int tg_hlist_add(struct tg_hlist *l, struct tg_arena *a, struct tg_iov name, struct tg_iov value);
/* First value of name (lowercase), or a NULL iov. */
struct tg_iov tg_hlist_get(const struct tg_hlist *l, const char *name);
/* Remove every field called name (lowercase); returns how many were removed. */
size_t tg_hlist_remove(struct tg_hlist *l, const char *name);

/* The head is complete: run the request-header phase of the chain. */
void tg_req_start(struct tg_req *req);
/* Resume the chain after a filter returned STOP (from that filter's successor). */
void tg_req_continue(struct tg_req *req);
/*
 * From a filter's on_request_headers, before it returns STOP: collect the
 * whole request body (bounded by max_body_bytes, else 413) and hand it to
 * this filter's on_request_data(whole, end=true) once complete, with the
 * chain still stopped, so the filter can decide (reply, or tg_req_continue)
 * before anything reaches an upstream.  After the chain continues, the held
 * body goes upstream as is (later filters' on_request_data do not see it).
 */
void tg_req_hold_body(struct tg_req *req, struct tg_filter *f);
/*
 * Request body bytes from the client (copied); end marks the last (n may be
 * 0).  Enforces max_body_bytes (413).  Returns 0, or TG_E_CLOSED when the
 * request was answered and the body is being discarded.
 */
int tg_req_body(struct tg_req *req, const char *p, size_t n, bool end);

/*
 * Answer locally with an OpenAI-shaped error:
 * {"error":{"message":message,"type":<from status>,"code":code}}.
 * reason is the audit reason (static string).  If the response head was
 * already sent, the exchange is aborted instead.
 */
void tg_req_reply_error(struct tg_req *req, int status, const char *code, const char *message,
                        const char *reason);
/* Remember a header (copied) for the next local reply (e.g. retry-after); at most 8. */
void tg_req_reply_extra(struct tg_req *req, const char *name, const char *value);
/* Add an extra header to a local reply or response (before the head is sent). */
int tg_req_resp_header_add(struct tg_req *req, const char *name, const char *value);

/* Upstream side: req->status/resp_headers are set; run response filters and send the head. */
int tg_req_response_head(struct tg_req *req, bool has_body);
/* Upstream side: response body bytes (copied by the session); end marks the last. */
int tg_req_response_data(struct tg_req *req, const char *p, size_t n, bool end);
/*
 * Send response bytes to the session, past req->resp_xform (the transform
 * uses it to pass on what it keeps).  end marks the last.  0 or an error.
 */
int tg_req_response_emit(struct tg_req *req, const char *p, size_t n, bool end);
/*
 * A filter ends the response early on purpose (a stream cut at its output
 * cap): end the client's response cleanly if not yet done, record reason
 * (static) when none is set, and let go of the upstream exchange (its
 * connection is closed, not reused).  Safe from inside resp_xform.
 */
void tg_req_response_cut(struct tg_req *req, const char *reason);
/*
 * Replace a held request body (from a filter's on_request_headers after
 * tg_req_hold_body delivered it, before the chain ends): the new bytes are
 * copied, the old ones wiped, and the length sent upstream becomes n.
 * 0, TG_E_NOMEM, or TG_E_CLOSED when no body is held.
 */
int tg_req_replace_body(struct tg_req *req, const char *p, size_t n);
/* Upstream side: the response broke after its head was sent; abort toward the client. */
void tg_req_response_abort(struct tg_req *req, const char *reason);
/* True when the client side has more than the high-water mark queued. */
bool tg_req_client_congested(struct tg_req *req);

/* Session side: queued response bytes fell under the low-water mark. */
void tg_req_client_drained(struct tg_req *req);
/* Session side: the client went away; cancels the upstream exchange. */
void tg_req_client_abort(struct tg_req *req);

/* Run every filter's on_complete once (idempotent). */
void tg_req_complete(struct tg_req *req);

/* Milliseconds since the request head arrived. */
double tg_req_elapsed_ms(const struct tg_req *req);

#endif
