/*
 * metrics.h - Prometheus metrics (SPEC §8).
 *
 * Each worker owns one shard and is its only writer; counters are relaxed
 * atomics written with a plain load+store (no locked instruction on the
 * request path).  A scrape sums the shards of every worker into Prometheus
 * text format 0.0.4.  No label holds a principal or key id.
 */
#ifndef TG_METRICS_H
#define TG_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/buf-t.h"

#define TG_METRICS_ROUTE_SLOTS 256  /* distinct (route, status) pairs per shard */
#define TG_METRICS_BUCKETS 14       /* histogram buckets (+Inf implied) */
#define TG_METRICS_REASONS 8        /* auth failure reasons */
#define TG_METRICS_QUOTA_SLOTS 13   /* quota refusals: 2 scopes x 6 limits + backend */
#define TG_METRICS_MODELS 32        /* distinct model labels of tokens_total per shard */
#define TG_METRICS_MODEL_MAX 64     /* longest model label kept (longer: "other") */

typedef atomic_uint_fast64_t tg_counter;

struct tg_histogram {
    tg_counter buckets[TG_METRICS_BUCKETS]; /* observations <= bound[i] (not cumulative) */
    tg_counter count;                       /* all observations */
    tg_counter sum_us;                      /* sum of observations in microseconds */
};

struct tg_route_counter {
    char route[128];    /* route prefix, "" for no route */
    int status;         /* response status (0: none sent) */
    tg_counter count;   /* requests */
    atomic_int used;    /* slot taken (published after route/status are written) */
};

/* tokens_total of one model (slot published by `used` after the name is written). */
struct tg_model_counter {
    char model[TG_METRICS_MODEL_MAX + 1]; /* model name */
    tg_counter prompt;                    /* prompt tokens */
    tg_counter completion;                /* completion tokens */
    atomic_int used;                      /* slot taken */
};

struct tg_metrics_shard {
    struct tg_route_counter routes[TG_METRICS_ROUTE_SLOTS]; /* requests_total */
    tg_counter routes_overflow;                 /* requests whose pair found no slot */
    tg_counter auth_failures[TG_METRICS_REASONS]; /* by reason index (tg_metrics_auth_reason) */
    struct tg_histogram duration;               /* request duration */
    struct tg_histogram first_byte;             /* upstream first byte */
    tg_counter upstream_errors;                 /* upstream.error outcomes */
    tg_counter upstream_timeouts;               /* upstream.timeout outcomes */
    tg_counter client_aborts;                   /* client.aborted outcomes */
    tg_counter connections_accepted;            /* client connections accepted */
    atomic_int_fast64_t connections_open;       /* client connections open now */
    tg_counter quota_denials[TG_METRICS_QUOTA_SLOTS]; /* by slot (tg_quota_limit_label) */
    tg_counter quota_backend_errors;            /* admissions Redis could not answer */
    struct tg_model_counter models[TG_METRICS_MODELS]; /* tokens_total by model */
    struct tg_model_counter models_other;       /* models past the table or too long */
};

/* Count tokens of model (NULL: "unknown") on the shard's worker thread. */
void tg_metrics_tokens(struct tg_metrics_shard *m, const char *model, uint64_t prompt,
                       uint64_t completion);

/* Count one finished request (called on the shard's worker thread). */
void tg_metrics_request(struct tg_metrics_shard *m, const char *route, int status,
                        uint64_t duration_us, int64_t first_byte_us, const char *reason);
/* Add v to a counter owned by this thread. */
static inline void tg_counter_add(tg_counter *c, uint64_t v)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

/* Values the server adds to a scrape besides the shards. */
struct tg_metrics_process {
    uint64_t config_version;        /* current snapshot version */
    const char *config_sha256;      /* its hash */
    uint64_t reload_failures;       /* rejected reloads */
    int audit_enabled;              /* 0: no audit metrics */
    uint64_t audit_last_seq;        /* last seq written */
    uint64_t audit_queue_depth;     /* records waiting */
    uint64_t audit_write_errors;    /* failed writes */
    uint64_t audit_dropped;         /* records refused (queue full) */
    uint64_t log_dropped;           /* error-log lines dropped */
};

/*
 * Render the sum of shards[0..n) plus p as Prometheus text into out
 * (appended; bounded by out's ceiling).  0 or TG_E_TOO_LARGE / TG_E_NOMEM.
 */
int tg_metrics_render(struct tg_metrics_shard *const *shards, size_t n,
                      const struct tg_metrics_process *p, struct tg_buf *out);

#endif
