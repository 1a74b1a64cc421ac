/*
 * quota-t.h - types shared by the quota filter and its two backends (the
 * in-process one, quota_local.c, and the Redis scripts in lua/, driven by
 * quota_script.c).  Both backends implement exactly the same algorithm,
 * described in docs/quotas.md:
 *
 *  - requests_per_minute and tokens_per_minute are GCRA buckets whose burst
 *    is the per-minute limit: a unit costs 60 s / limit of "theoretical
 *    arrival time" (TAT, microseconds); a reservation of n units is allowed
 *    when max(TAT, now) + n * 60 s / limit - now <= 60 s.
 *  - tokens_per_day, cost_per_day and cost_per_month are counters of the UTC
 *    calendar window (day = days since 1970-01-01, month = year * 12 +
 *    month - 1) the admission happened in; a reservation is allowed when
 *    counter + reservation <= limit.
 *  - concurrency is a set of leases (one per admitted request) with an
 *    expiry, so a crashed instance's leases free themselves.
 *
 * Admission checks every limit of the principal and the tenant and either
 * charges all of them or none.  Settlement replaces the reservation with the
 * actual amounts (idempotent per lease id) and drops the lease.
 */
#ifndef TG_QUOTA_T_H
#define TG_QUOTA_T_H

#include <stdbool.h>
#include <stdint.h>

/* The limits of one scope, in this order everywhere (scripts, arrays, audit). */
enum tg_quota_limit {
    TG_QL_RPM = 0,  /* requests_per_minute */
    TG_QL_TPM = 1,  /* tokens_per_minute */
    TG_QL_TPD = 2,  /* tokens_per_day */
    TG_QL_CPD = 3,  /* cost_per_day (micro-dollars) */
    TG_QL_CPM = 4,  /* cost_per_month (micro-dollars) */
    TG_QL_CONC = 5, /* concurrency */
    TG_QL_COUNT = 6,
};

/* Scopes: the principal's own limits and the limits shared by its tenant. */
enum tg_quota_scope {
    TG_QS_PRINCIPAL = 0,
    TG_QS_TENANT = 1,
    TG_QS_COUNT = 2,
};

/* One scope's limits; 0 means unlimited.  Costs are integer micro-dollars. */
struct tg_quota_limits {
    uint64_t v[TG_QL_COUNT]; /* indexed by enum tg_quota_limit */
};

/* What an admission asks for. */
struct tg_quota_admit {
    const char *principal;            /* principal scope name (non-empty) */
    const char *tenant;               /* tenant scope name, or NULL: no tenant limits */
    struct tg_quota_limits lim[TG_QS_COUNT]; /* limits per scope */
    uint64_t tokens;                  /* tokens reserved (prompt estimate + output) */
    uint64_t cost;                    /* micro-dollars reserved */
    const char *lease;                /* unique request id: lease member, settlement key */
    uint64_t lease_ttl_ms;            /* concurrency lease lifetime */
};

/* What an admission answered. */
struct tg_quota_decision {
    bool allowed;             /* every limit had room; all were charged */
    int denied;               /* -1, or scope * TG_QL_COUNT + limit of the first refusal */
    uint64_t retry_after_ms;  /* when denied: time until the same request could pass */
    int64_t remaining[2];     /* after this request: principal rpm, tpm; -1 unlimited */
    uint64_t reset_ms[2];     /* time until rpm / tpm are fully replenished */
    int64_t day;              /* calendar day the reservation went to (days since epoch) */
    int64_t month;            /* calendar month: year * 12 + month - 1 */
};

/* What a settlement reports. */
struct tg_quota_settle {
    const char *principal;            /* as admitted */
    const char *tenant;               /* as admitted */
    struct tg_quota_limits lim[TG_QS_COUNT]; /* as admitted (the bucket rates) */
    const char *lease;                /* as admitted */
    uint64_t tokens_reserved;         /* as admitted */
    uint64_t tokens_actual;           /* from usage (or observed) */
    uint64_t cost_reserved;           /* as admitted, micro-dollars */
    uint64_t cost_actual;             /* from usage and pricing, micro-dollars */
    int64_t day;                      /* from the decision */
    int64_t month;                    /* from the decision */
};

#endif
