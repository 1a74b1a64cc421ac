/*
 * req-t.h - one request/response exchange through the filter chain (types).
 */
#ifndef TG_REQ_T_H
#define TG_REQ_T_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config/config-t.h"
#include "proxy/buf-t.h"
#include "proxy/filter-t.h"
#include "proxy/headers.h"
#include "proxy/mem.h"

#define TG_REQ_MAX_FILTERS 16
#define TG_REQ_MAX_HEADERS 128

struct tg_req;
struct tg_worker;
struct tg_upstream;
struct json_t;

/* What the OpenAI body inspection found (authz reads it, quota rewrites it). */
struct tg_req_openai {
    struct json_t *doc;        /* the parsed body (owned, freed with the request), or NULL */
    int api;                   /* enum tg_usage_api of the endpoint */
    bool inspected;            /* an OpenAI endpoint whose body was parsed */
    bool include_usage;        /* the client itself asked for stream_options.include_usage */
    bool strip_usage;          /* tollgate injected include_usage: strip the event it causes */
    int64_t max_tokens;        /* the request's effective output cap (after a clamp), -1 none */
    uint64_t prompt_estimate;  /* ceil(body bytes / 4), the admission's prompt estimate */
};

/* Usage and quota facts of a finished request, for the audit record and metrics. */
struct tg_req_usage {
    int source;                /* enum: 0 none, 1 upstream, 2 observed */
    uint64_t prompt_tokens;    /* charged prompt tokens */
    uint64_t completion_tokens;/* charged completion tokens */
    uint64_t cost;             /* charged micro-dollars */
    bool degraded;             /* the quota decision was made without the shared backend */
    double quota_ms;           /* admission time in ms, < 0 when there was none */
};

/* How a request reached tollgate. */
enum tg_req_proto {
    TG_REQ_HTTP11 = 0, /* "http/1.1" */
    TG_REQ_H2 = 1,     /* "h2" over TLS */
    TG_REQ_H2C = 2,    /* "h2c" prior knowledge */
};

/* An ordered, growable header list whose strings live in the request arena. */
struct tg_hlist {
    struct tg_header *v; /* fields in order; names lowercase */
    size_t n;            /* fields in use */
    size_t cap;          /* fields allocated */
};

/*
 * What the client-side session (h1 or h2) provides to a request.  All calls
 * copy what they are given; none calls back into the request synchronously.
 */
struct tg_req_sess_ops {
    /* Send req->status and req->resp_headers.  has_body false: the response is complete. */
    int (*send_head)(struct tg_req *req, bool has_body);
    /* Queue response body bytes; end marks the last (n may be 0). */
    int (*send_data)(struct tg_req *req, const char *p, size_t n, bool end);
    /* Bytes queued toward the client for this request and not yet written. */
    size_t (*pending)(struct tg_req *req);
    /* The response cannot be completed: reset the stream / close the connection. */
    void (*abort)(struct tg_req *req);
    /* n request body bytes have left tollgate (flow control: h2 consume, h1 resume). */
    void (*body_consumed)(struct tg_req *req, size_t n);
};

/* Who the caller is, set by the authentication filter. */
struct tg_req_identity {
    const char *method;                  /* "api_key", "jwt" or "mtls"; NULL: anonymous */
    const char *key_id;                  /* API key id, or NULL */
    const char *principal;               /* caller (arena string) */
    const char *tenant;                  /* tenant, or NULL */
    const struct tg_cfg_policy *policy;  /* the caller's policy (from the pinned snapshot) */
};

/* Outcome fields an audit record will need, filled as the exchange runs. */
struct tg_req_outcome {
    const char *reason;   /* deny reason or outcome ("route.not_found", "upstream.error") */
    bool denied;          /* a filter answered instead of the upstream */
    bool client_aborted;  /* the client went away before the end */
    bool upstream_failed; /* the upstream failed or timed out */
};

struct tg_req {
    struct tg_arena arena;                 /* per-request memory, freed at the end */
    struct tg_config *cfg;                 /* pinned snapshot (one reference) */
    struct tg_worker *worker;              /* owning worker (loop thread) */
    const struct tg_req_sess_ops *sess_ops;/* client session callbacks */
    void *sess;                            /* the session's stream or connection */
    uint64_t id;                           /* tollgate's internal id (settlement key) */
    uint64_t start_ns;                     /* uv_hrtime() at request head */

    /* Request head, as validated by the session. */
    enum tg_req_proto proto;               /* client protocol */
    bool tls;                              /* client connection is TLS */
    char client_ip[48];                    /* peer address text */
    uint16_t client_port;                  /* peer port */
    struct tg_iov method;                  /* e.g. "POST" */
    struct tg_iov path;                    /* target incl. query */
    struct tg_iov authority;               /* Host or :authority */
    struct tg_hlist headers;               /* request headers (no pseudo, no host) */
    int64_t content_length;                /* declared body length, -1 if unknown */
    bool has_body;                         /* a body follows the head */
    bool head_only;                        /* HEAD request: response has no body */

    const char *mtls_principal;            /* verified client certificate identity, or NULL */
    const char *listener;                  /* name of the listener the request came in on */
    struct tg_req_identity identity;       /* set by the authn filter */
    struct tg_header reply_extra[8];       /* extra headers for a local reply */
    unsigned nreply_extra;                 /* count */

    /* Routing, set by the route filter. */
    const struct tg_cfg_route *route;      /* matched route */
    struct tg_iov request_id;              /* x-request-id sent upstream */

    /* Filter chain. */
    struct tg_filter filters[TG_REQ_MAX_FILTERS]; /* attached filters in order */
    unsigned nfilters;                     /* count */
    unsigned fcur;                         /* index of the filter that stopped */
    bool headers_done;                     /* the request-header phase finished */
    bool in_chain;                         /* re-entrancy guard for the chain */
    void (*on_chain_done)(struct tg_req *req); /* called at the chain's end (upstream start) */
    struct tg_defer *start_defer;          /* pending deferred upstream start, or NULL */

    /* Request body. */
    struct tg_bufq body_in;                /* received, not yet through the data filters */
    struct tg_bufq body_out;               /* ready to send upstream */
    struct tg_buf body_buffered;           /* whole body held for a BUFFER filter */
    int buffer_filter;                     /* index of the buffering filter, -1 if none */
    int hold_filter;                       /* filter reading the whole body while the chain
                                              is stopped (tg_req_hold_body), -1 if none */
    bool held_delivered;                   /* the held body went to its filter */
    uint64_t body_received;                /* body bytes received from the client */
    bool body_in_end;                      /* the client finished the body */
    bool body_out_end;                     /* the end is in body_out */

    /* Response. */
    int status;                            /* response status */
    struct tg_hlist resp_headers;          /* response headers to send */
    int64_t resp_content_length;           /* from upstream, -1 if unknown */
    bool resp_head_sent;                   /* headers went to the session */
    bool resp_end_sent;                    /* the last byte went to the session */
    uint64_t bytes_out;                    /* response body bytes sent */

    struct tg_upstream *upstream;          /* current upstream exchange, or NULL */
    const char *upstream_addr;             /* "host:port" of the server used (snapshot string) */
    uint64_t upstream_first_byte_ns;       /* uv_hrtime() when the response head arrived */
    const char *tls_version;               /* client TLS version ("TLSv1.3") or NULL */
    const char *model;                     /* "model" of an OpenAI body, when read */
    int stream;                            /* "stream" of an OpenAI body: -1 unknown, 0, 1 */
    struct tg_req_openai openai;           /* body inspection results */
    struct tg_req_usage usage;             /* settled usage (set by the quota filter) */
    /* Response body transform (quota filter: usage stripping, cuts), or NULL:
     * gets every upstream chunk instead of the session and passes bytes on
     * with tg_req_response_emit(). */
    int (*resp_xform)(struct tg_req *req, const char *p, size_t n, bool end);
    void *resp_xform_arg;                  /* its state */
    /* Called once by tg_req_reply_error before a local reply's head is built
     * (the quota filter adds x-ratelimit-* for callers refused before
     * admission), or NULL. */
    void (*before_reply)(struct tg_req *req, void *arg);
    void *before_reply_arg;                /* its argument */
    struct tg_req_outcome outcome;         /* for the audit record */
    bool replied;                          /* answered locally (tg_req_reply_*) */
    bool completed;                        /* on_complete has run */
    bool aborted;                          /* tg_req_abort was called */
};

#endif
