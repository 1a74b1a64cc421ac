/*
 * quota_local.h - the in-process quota backend: the same algorithm as the
 * Redis scripts (lua/admit.lua, lua/settle.lua, lua/renew.lua), for a single
 * instance (quota.backend "local") and as the fallback while Redis is
 * unreachable.  One object serves the whole process: every worker thread
 * calls it, and a single mutex guards it for a few microseconds per call.
 *
 * What the limits mean to an operator (0 = unlimited: nothing is checked
 * or stored for that limit):
 *  - requests_per_minute (rpm), tokens_per_minute (tpm): smooth GCRA
 *    buckets.  A principal may burst up to the limit at once, then earns
 *    capacity back continuously at limit/60 s per second (an rpm of 60 gives
 *    one request per second after a burst of 60).  A request reserves 1
 *    request and its token estimate; a reservation larger than the whole
 *    limit can never pass (retry after 60 s).
 *  - tokens_per_day (tpd), cost_per_day (cpd), cost_per_month (cpm): budgets
 *    of the UTC calendar day / month the request was admitted in.  A request
 *    passes while counter + reservation <= limit; once the counter reaches
 *    the limit even a request reserving nothing is refused until the window
 *    ends (the retry time is the time to the next UTC midnight / the first
 *    of next month).
 *  - concurrency (conc): at most that many admitted, unsettled requests at
 *    once.  Each holds a lease that expires after lease_ttl_ms unless
 *    renewed, so requests lost by a crash free their slots by themselves.
 * Each admission checks principal rpm, tpm, tpd, cpd, cpm, conc, then the
 * tenant's in the same order; the first refusal decides and nothing at all
 * is charged (all or nothing).  The exact arithmetic is in lua/admit.lua.
 *
 * Time is a parameter (microseconds since the epoch, UTC), so tests drive
 * the clock; the caller passes its wall clock.  Keys are those of the Redis
 * backend without a prefix (quota_common.h), so the same request touches
 * the same-named state in both.
 *
 * Memory: state that is back at its neutral value (a TAT in the past, a
 * counter at 0 or a day after its window ended, an empty lease set, a
 * settlement marker older than TG_QUOTA_SETTLED_TTL_MS = 10 min) is freed:
 * every call sweeps a few hash buckets and frees the markers that expired
 * (in creation order), and tg_quota_local_sweep() frees them all.  Live
 * state is bounded by the active principals and tenants, their leases, plus
 * one settlement marker (about 200 bytes) per request settled in the last
 * 10 minutes: the price of idempotent settlement, the same as in Redis.
 * Lease operations cost O(1) whatever the number of leases in flight.
 */
#ifndef TG_QUOTA_LOCAL_H
#define TG_QUOTA_LOCAL_H

#include <stddef.h>
#include <stdint.h>

#include "filters/quota-t.h"

struct tg_quota_local;

/* A new, empty backend (tg_mem); NULL when out of memory. */
struct tg_quota_local *tg_quota_local_new(void);
/* Free it and all its state.  NULL is a no-op.  No call may be in progress. */
void tg_quota_local_free(struct tg_quota_local *q);

/*
 * Admit or refuse req at time now_us; the decision goes to out (always fully
 * written).  Returns 0 when out holds a decision (allowed or denied), or,
 * with out->allowed false, out->denied -1 and nothing charged:
 *   TG_E_INVALID  req fails tg_quota_admit_check() (quota_common.h);
 *   TG_E_NOMEM    state for the request could not be allocated.
 * The caller treats a negative return as a backend failure
 * (quota.on_backend_error), never as a 429.  Thread-safe.
 */
int tg_quota_local_admit(struct tg_quota_local *q, uint64_t now_us,
                         const struct tg_quota_admit *req, struct tg_quota_decision *out);

/*
 * Settle an allowed admission (rules in lua/settle.lua): tpm, tpd, cpd and
 * cpm take actual - reserved (charged in full above the reservation,
 * refunded below it, counters never under 0), the lease is released in both
 * scopes.  Returns 1 when applied, 0 when this lease was already settled in
 * the last 10 minutes (TG_QUOTA_SETTLED_TTL_MS) (nothing changes), TG_E_INVALID (tg_quota_settle_check()),
 * or TG_E_NOMEM (nothing applied, the settlement may be retried).
 * Thread-safe.
 */
int tg_quota_local_settle(struct tg_quota_local *q, uint64_t now_us,
                          const struct tg_quota_settle *req);

/*
 * Extend a live lease of principal (and tenant; NULL or "" for none) to
 * now + ttl_ms.  Returns 1 when the lease was live in at least one scope,
 * 0 when it expired or was settled (it is not re-created: its slot may be
 * someone else's by now), TG_E_INVALID on bad arguments.  Never allocates.
 * Thread-safe.
 */
int tg_quota_local_renew(struct tg_quota_local *q, uint64_t now_us, const char *principal,
                         const char *tenant, const char *lease, uint64_t ttl_ms);

/* Free every neutral entry now (see Memory above); returns the entries left.  Thread-safe. */
size_t tg_quota_local_sweep(struct tg_quota_local *q, uint64_t now_us);
/* Entries currently held (live or not yet swept).  Thread-safe. */
size_t tg_quota_local_count(struct tg_quota_local *q);

/*
 * Read one key's state as of now_us, for tests and diagnostics: a counter's
 * value, a TAT in microseconds, the number of live leases of a "conc" set,
 * or 1 for a live settlement marker.  Returns 1 and sets *value when the key
 * holds non-neutral state, 0 when it is absent or neutral (*value 0).
 * key is the Redis key without prefix ("{alice}:tpd:20000").  Thread-safe.
 */
int tg_quota_local_peek(struct tg_quota_local *q, uint64_t now_us, const char *key,
                        int64_t *value);

#endif
