/*
 * quota.h - the quota filter's process and worker state (SPEC §3, §5, §6).
 *
 * The filter itself (tg_filter_quota, filters.h) runs after authorization:
 * it applies the request limits of OpenAI bodies (max_tokens cap, reject or
 * clamp; stream_options.include_usage injection), admits the request
 * against every limit of the caller's policy and tenant in ONE backend call,
 * reads the response's usage as it streams (filters/usage.c), and settles
 * the real usage in ONE backend call when the request completes.
 *
 * Backends: "local" is one process-wide store (filters/quota_local.c, shared
 * by the workers under a mutex).  "redis" is one connection per worker
 * (proxy/redis.c) running the scripts of lua/.  When Redis fails,
 * on_backend_error decides: deny (503), allow (admit, nothing charged), or
 * local (a second process-wide store holding 1/instances of the per-minute
 * and concurrency limits, started fresh at each failure; day/month and cost
 * budgets, which only Redis knows, answer 503).  Degraded decisions are
 * marked in req->usage.degraded for the audit record.
 */
#ifndef TG_QUOTA_H
#define TG_QUOTA_H

#include <stdbool.h>
#include <stdint.h>

struct tg_worker;
struct tg_config;
struct tg_quota_worker;

/* Create the process-wide stores (main thread, before workers start).  0 or TG_E_NOMEM. */
int tg_quota_global_init(void);
/* Free them (main thread, after every worker has exited). */
void tg_quota_global_free(void);

/*
 * Per-worker state for w's current config (w->cfg): the Redis connection when
 * the backend is redis.  Called on the worker's loop thread.  0 or an error.
 */
int tg_quota_worker_init(struct tg_worker *w);
/* w->cfg changed (reload): reconnect when the Redis settings changed. */
void tg_quota_worker_update(struct tg_worker *w);
/* True when no settlement is in flight (the worker may finish draining). */
bool tg_quota_worker_idle(const struct tg_worker *w);
/*
 * Let go of everything: pending settlements are abandoned (their
 * reservations stay charged; leases expire), the Redis connection is freed.
 * Handles close asynchronously on w's loop.  Idempotent.
 */
void tg_quota_worker_close(struct tg_worker *w);

/* Metric label of a refusal slot (scope * TG_QL_COUNT + limit; the last is the backend). */
const char *tg_quota_limit_label(unsigned i);

/* Backend state for /readyz: "local", "redis" or "degraded". */
const char *tg_quota_backend_state(const struct tg_config *cfg);
/* True when requests can be admitted (not: Redis down with on_backend_error "deny"). */
bool tg_quota_ready(const struct tg_config *cfg);

#endif
