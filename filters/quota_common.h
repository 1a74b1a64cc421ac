/*
 * quota_common.h - what the two quota backends (quota_local.c in process,
 * the scripts in lua/ in Redis, driven by quota_script.c) must agree on:
 * input bounds, key names, and the UTC calendar arithmetic of the day and
 * month budgets.
 *
 * The Lua scripts carry their own copy of every rule here (Redis Lua 5.1 has
 * no os.date and only doubles); test_quota_redis.c checks that both sides
 * give the same answers.
 *
 * Bounds.  Every amount (limits, tokens, micro-dollars, lease lifetime) is an
 * integer in [0, TG_QUOTA_VALUE_MAX].  1e14 is far above any real budget
 * ($100M in micro-dollars, 100 trillion tokens) and keeps every intermediate
 * value of the scripts' arithmetic an exact double (below 2^53).
 *
 * Keys.  A scope's keys share a base: "<prefix>{<principal>}:" for the
 * principal and "<prefix>{tenant:<tenant>}:" for the tenant, so Redis Cluster
 * hashes one scope's keys to one slot.  Names are escaped so that two
 * different scopes can never share a key: '%', '{', '}', ':' and bytes below
 * 0x21 or equal to 0x7f are written as "%XX" (upper-case hex).  Ordinary
 * names ("team-a", "acme", "alice@example.com") are unchanged.  Because ':'
 * is escaped, a principal literally named "tenant:acme" becomes
 * "{tenant%3Aacme}:" and cannot reach the tenant acme's counters.
 *
 * Suffixes after the base:
 *   rpm, tpm          GCRA theoretical arrival time, microseconds (string)
 *   tpd:<day>         tokens used on UTC day <day> (integer)
 *   cpd:<day>         micro-dollars used on UTC day <day> (integer)
 *   cpm:<month>       micro-dollars used in UTC month <month> (integer)
 *   conc              concurrency leases (sorted set: member lease id,
 *                     score expiry in ms since the epoch)
 *   settled:<lease>   settlement idempotency marker (principal base only;
 *                     lives TG_QUOTA_SETTLED_TTL_MS)
 */
#ifndef TG_QUOTA_COMMON_H
#define TG_QUOTA_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "filters/quota-t.h"

#define TG_QUOTA_VALUE_MAX 100000000000000ull /* 1e14: largest limit/amount accepted */
#define TG_QUOTA_NAME_MAX 256    /* principal / tenant length in bytes, before escaping */
#define TG_QUOTA_PREFIX_MAX 64   /* key prefix length ("tg:") */
#define TG_QUOTA_LEASE_MAX 128   /* lease id length in bytes */
/* Longest base: prefix, "{tenant:", a fully escaped name, "}:", NUL. */
#define TG_QUOTA_BASE_MAX (TG_QUOTA_PREFIX_MAX + 8 + 3 * TG_QUOTA_NAME_MAX + 2 + 1)
/* Longest key: a base plus "settled:" and a lease id (the longest suffix). */
#define TG_QUOTA_KEY_MAX (TG_QUOTA_BASE_MAX + 8 + TG_QUOTA_LEASE_MAX)

#define TG_QUOTA_WINDOW_US 60000000ull    /* the per-minute buckets' period and burst time */
#define TG_QUOTA_DAY_US 86400000000ull    /* one UTC day */
#define TG_QUOTA_DAY_MS 86400000ull
/*
 * How far ahead of now a TAT may go.  A settlement whose actual usage
 * overshoots the reservation is charged in full, which can push the TAT
 * past the one-minute burst (the principal then waits the debt off); the
 * debt is capped at 2^50 us (about 35 years), which keeps the arithmetic
 * exact and never matters in practice.
 */
#define TG_QUOTA_AHEAD_MAX_US 1125899906842624ull
/*
 * How long a settlement marker lives (10 min).  It only has to outlive the
 * settlement's retries (tollgate retries a failed settlement after 250 ms,
 * 500 ms and 1 s, then gives up); lua/settle.lua has the same constant.
 */
#define TG_QUOTA_SETTLED_TTL_MS 600000ull
#define TG_QUOTA_CONC_RETRY_MS 1000ull      /* retry hint when all leases are taken */

/*
 * Write the key base of one scope into out (outlen >= TG_QUOTA_BASE_MAX is
 * always enough): prefix, '{', "tenant:" for TG_QS_TENANT, the escaped name,
 * "}:".  Returns the length written (without the NUL), or TG_E_INVALID when
 * name is NULL/empty/longer than TG_QUOTA_NAME_MAX, the prefix is longer than
 * TG_QUOTA_PREFIX_MAX, or out is too small.
 */
int tg_quota_base(char *out, size_t outlen, const char *prefix, enum tg_quota_scope scope,
                  const char *name);

/*
 * Check an admission request against the bounds above: principal non-empty,
 * tenant NULL, "" (both: no tenant scope) or a name, lease 1..
 * TG_QUOTA_LEASE_MAX bytes, lease_ttl_ms in 1..TG_QUOTA_VALUE_MAX, every
 * other number <= TG_QUOTA_VALUE_MAX.  0 or TG_E_INVALID.
 */
int tg_quota_admit_check(const struct tg_quota_admit *a);
/* The same for a settlement (day and month too must be <= TG_QUOTA_VALUE_MAX). */
int tg_quota_settle_check(const struct tg_quota_settle *s);
/* What is left of an L-per-minute burst whose TAT is ahead_us past now. */
int64_t tg_quota_gcra_remaining(uint64_t ahead_us, uint64_t L);

/* True when the request names a tenant scope (tenant non-NULL and non-empty). */
static inline int tg_quota_has_tenant(const char *tenant)
{
    return tenant != NULL && tenant[0] != '\0';
}

/*
 * UTC calendar (proleptic Gregorian, days since 1970-01-01), after Howard
 * Hinnant's civil_from_days / days_from_civil.  Valid for day >= 0.
 */
/* Year, month (1..12) and day of month (1..31) of a day number. */
void tg_quota_civil_from_days(int64_t day, int64_t *year, unsigned *month, unsigned *mday);
/* Day number of year-month-mday (month 1..12). */
int64_t tg_quota_days_from_civil(int64_t year, unsigned month, unsigned mday);
/* The month window of a day: year * 12 + month - 1. */
int64_t tg_quota_month_of_day(int64_t day);
/* Day number of the first day of a month window (year * 12 + month - 1). */
int64_t tg_quota_month_first_day(int64_t month);

#endif
