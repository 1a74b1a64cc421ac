/*
 * test_quota_local.c - the in-process quota backend (filters/quota_local.c)
 * and the shared helpers of filters/quota_common.c, with a clock the test
 * controls.  Every number asserted here is derived by hand from the rules
 * in lua/admit.lua and lua/settle.lua; test_quota_redis.c checks that
 * Redis gives the same answers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tg_test.h"

#include "filters/quota_common.h"
#include "filters/quota_local.h"
#include "proxy/err.h"
#include "proxy/mem.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SEC 1000000ull
#define MIN (60 * SEC)
#define DAY (86400 * SEC)

/* Microseconds since the epoch of a UTC date and time. */
static uint64_t at(int64_t y, unsigned mo, unsigned d, unsigned hh, unsigned mm, unsigned ss)
{
    int64_t day = tg_quota_days_from_civil(y, mo, d);
    return ((uint64_t)day * 86400 + hh * 3600u + mm * 60u + ss) * SEC;
}

/* A request with no limits; tests set the ones they need. */
static struct tg_quota_admit req(const char *principal, const char *tenant, const char *lease)
{
    struct tg_quota_admit a;
    memset(&a, 0, sizeof(a));
    a.principal = principal;
    a.tenant = tenant;
    a.lease = lease;
    a.lease_ttl_ms = 30000;
    return a;
}

/* The settlement of an admission a that was decided as d. */
static struct tg_quota_settle settle_of(const struct tg_quota_admit *a,
                                        const struct tg_quota_decision *d, uint64_t tokens,
                                        uint64_t cost)
{
    struct tg_quota_settle s;
    memset(&s, 0, sizeof(s));
    s.principal = a->principal;
    s.tenant = a->tenant;
    memcpy(s.lim, a->lim, sizeof(s.lim));
    s.lease = a->lease;
    s.tokens_reserved = a->tokens;
    s.tokens_actual = tokens;
    s.cost_reserved = a->cost;
    s.cost_actual = cost;
    s.day = d->day;
    s.month = d->month;
    return s;
}

static struct tg_quota_decision admit(struct tg_quota_local *q, uint64_t now,
                                      const struct tg_quota_admit *a)
{
    struct tg_quota_decision d;
    assert_int_equal(tg_quota_local_admit(q, now, a, &d), 0);
    return d;
}

static int64_t peek(struct tg_quota_local *q, uint64_t now, const char *key)
{
    int64_t v;
    (void)tg_quota_local_peek(q, now, key, &v);
    return v;
}

static const char *daykey(char *buf, size_t n, const char *base, const char *what, int64_t w)
{
    snprintf(buf, n, "%s%s:%" PRId64, base, what, w);
    return buf;
}

/* ---- calendar and keys ---- */

static void test_civil_vs_gmtime(void **state)
{
    /* Every day from 1970 to 2200 against the C library. */
    for (int64_t day = 0; day < 84000; day++) {
        time_t t = (time_t)(day * 86400);
        struct tm tm;
        int64_t y;
        unsigned m, d;
        assert_non_null(gmtime_r(&t, &tm));
        tg_quota_civil_from_days(day, &y, &m, &d);
        if (y != tm.tm_year + 1900 || m != (unsigned)tm.tm_mon + 1 || d != (unsigned)tm.tm_mday)
            fail_msg("day %" PRId64 ": %" PRId64 "-%u-%u, gmtime %d-%d-%d", day, y, m, d,
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
        assert_int_equal(tg_quota_days_from_civil(y, m, d), day);
        int64_t month = tg_quota_month_of_day(day);
        assert_int_equal(month, (int64_t)(tm.tm_year + 1900) * 12 + tm.tm_mon);
        assert_int_equal(tg_quota_month_first_day(month), day - (d - 1));
    }
    /* Month boundaries: Jan 31 -> Feb 1, Dec -> Jan, leap days. */
    int64_t jan31 = tg_quota_days_from_civil(2025, 1, 31);
    assert_int_equal(tg_quota_month_of_day(jan31) + 1, tg_quota_month_of_day(jan31 + 1));
    int64_t dec31 = tg_quota_days_from_civil(2024, 12, 31);
    assert_int_equal(tg_quota_month_of_day(dec31), 2024 * 12 + 11);
    assert_int_equal(tg_quota_month_of_day(dec31 + 1), 2025 * 12 + 0);
    assert_int_equal(tg_quota_days_from_civil(2024, 3, 1) - tg_quota_days_from_civil(2024, 2, 28), 2);
    assert_int_equal(tg_quota_days_from_civil(2023, 3, 1) - tg_quota_days_from_civil(2023, 2, 28), 1);
    assert_int_equal(tg_quota_days_from_civil(2100, 3, 1) - tg_quota_days_from_civil(2100, 2, 28), 1);
    assert_int_equal(tg_quota_days_from_civil(2000, 3, 1) - tg_quota_days_from_civil(2000, 2, 28), 2);
    assert_int_equal(tg_quota_month_first_day(2025 * 12 + 0), dec31 + 1);
}

static void test_key_base(void **state)
{
    static const struct {
        const char *prefix;
        enum tg_quota_scope scope;
        const char *name;
        const char *want; /* NULL: TG_E_INVALID */
    } cases[] = {
        {"tg:", TG_QS_PRINCIPAL, "team-a", "tg:{team-a}:"},
        {"tg:", TG_QS_TENANT, "acme", "tg:{tenant:acme}:"},
        {"", TG_QS_PRINCIPAL, "alice@example.com", "{alice@example.com}:"},
        /* A principal cannot impersonate a tenant, nor break the hash tag. */
        {"tg:", TG_QS_PRINCIPAL, "tenant:acme", "tg:{tenant%3Aacme}:"},
        {"tg:", TG_QS_PRINCIPAL, "a}b{c", "tg:{a%7Db%7Bc}:"},
        {"tg:", TG_QS_PRINCIPAL, "50% off", "tg:{50%25%20off}:"},
        {"tg:", TG_QS_PRINCIPAL, "spiffe://x/y", "tg:{spiffe%3A//x/y}:"},
        {"tg:", TG_QS_PRINCIPAL, "", NULL},
        {"tg:", TG_QS_PRINCIPAL, NULL, NULL},
    };
    char out[TG_QUOTA_BASE_MAX];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int n = tg_quota_base(out, sizeof(out), cases[i].prefix, cases[i].scope, cases[i].name);
        if (!cases[i].want) {
            assert_int_equal(n, TG_E_INVALID);
            continue;
        }
        assert_int_equal(n, (int)strlen(cases[i].want));
        assert_string_equal(out, cases[i].want);
    }
    /* Longest name, fully escaped, fits the documented ceiling. */
    char name[TG_QUOTA_NAME_MAX + 2];
    memset(name, ':', TG_QUOTA_NAME_MAX);
    name[TG_QUOTA_NAME_MAX] = '\0';
    char prefix[TG_QUOTA_PREFIX_MAX + 1];
    memset(prefix, 'p', TG_QUOTA_PREFIX_MAX);
    prefix[TG_QUOTA_PREFIX_MAX] = '\0';
    assert_int_equal(tg_quota_base(out, sizeof(out), prefix, TG_QS_TENANT, name),
                     TG_QUOTA_BASE_MAX - 1);
    name[TG_QUOTA_NAME_MAX] = 'x';
    name[TG_QUOTA_NAME_MAX + 1] = '\0';
    assert_int_equal(tg_quota_base(out, sizeof(out), "", TG_QS_PRINCIPAL, name), TG_E_INVALID);
}

static void test_invalid(void **state)
{
    struct tg_quota_local *q = tg_quota_local_new();
    struct tg_quota_decision d;
    struct tg_quota_admit a = req(NULL, NULL, "l1");
    assert_int_equal(tg_quota_local_admit(q, at(2025, 1, 1, 0, 0, 0), &a, &d), TG_E_INVALID);
    assert_false(d.allowed);
    assert_int_equal(d.denied, -1);
    a = req("p", NULL, "");
    assert_int_equal(tg_quota_local_admit(q, 0, &a, &d), TG_E_INVALID);
    a = req("p", NULL, "l");
    a.lim[0].v[TG_QL_RPM] = TG_QUOTA_VALUE_MAX + 1;
    assert_int_equal(tg_quota_local_admit(q, 0, &a, &d), TG_E_INVALID);
    a = req("p", NULL, "l");
    a.lease_ttl_ms = 0;
    assert_int_equal(tg_quota_local_admit(q, 0, &a, &d), TG_E_INVALID);
    assert_int_equal(tg_quota_local_renew(q, 0, "p", NULL, "l", 0), TG_E_INVALID);
    assert_int_equal(tg_quota_local_renew(q, 0, NULL, NULL, "l", 10), TG_E_INVALID);
    /* An empty tenant is no tenant. */
    a = req("p", "", "l");
    a.lim[1].v[TG_QL_RPM] = 1;
    d = admit(q, 0, &a);
    assert_true(d.allowed);
    d = admit(q, 0, &a);
    assert_true(d.allowed);
    tg_quota_local_free(q);
}

/* ---- per-minute buckets ---- */

static void test_rpm_burst_and_refill(void **state)
{
    struct tg_quota_local *q = tg_quota_local_new();
    uint64_t t = at(2025, 6, 1, 12, 0, 0);
    struct tg_quota_admit a = req("alice", NULL, "l");
    a.lim[0].v[TG_QL_RPM] = 10; /* one request per 6 s after a burst of 10 */

    for (int i = 0; i < 10; i++) {
        struct tg_quota_decision d = admit(q, t, &a);
        assert_true(d.allowed);
        assert_int_equal(d.denied, -1);
        assert_int_equal(d.remaining[0], 9 - i);
        assert_int_equal(d.reset_ms[0], 6000 * (uint64_t)(i + 1));
        assert_int_equal(d.remaining[1], -1); /* no tpm limit */
    }
    struct tg_quota_decision d = admit(q, t, &a);
    assert_false(d.allowed);
    assert_int_equal(d.denied, TG_QS_PRINCIPAL * TG_QL_COUNT + TG_QL_RPM);
    assert_int_equal(d.retry_after_ms, 6000);
    assert_int_equal(d.remaining[0], 0);
    assert_int_equal(d.reset_ms[0], 60000);

    /* 1 ms short of the refill: still refused, retry 1 ms. */
    d = admit(q, t + 6 * SEC - 1000, &a);
    assert_false(d.allowed);
    assert_int_equal(d.retry_after_ms, 1);
    /* After 60 s / L exactly one more passes. */
    d = admit(q, t + 6 * SEC, &a);
    assert_true(d.allowed);
    assert_int_equal(d.remaining[0], 0);
    d = admit(q, t + 6 * SEC, &a);
    assert_false(d.allowed);
    assert_int_equal(d.retry_after_ms, 6000);
    /* Half a minute later, five are back. */
    d = admit(q, t + 36 * SEC, &a);
    assert_true(d.allowed);
    assert_int_equal(d.remaining[0], 4);

    /*
     * A limit that does not divide a minute: each request costs
     * floor(60e6 / 7) = 8571428 us, so a burst of exactly 7 passes (SPEC §6:
     * burst = the per-minute limit) and the 8th waits one step.
     */
    a = req("bob", NULL, "l");
    a.lim[0].v[TG_QL_RPM] = 7;
    for (int i = 0; i < 7; i++)
        assert_true(admit(q, t, &a).allowed);
    d = admit(q, t, &a);
    assert_false(d.allowed);
    assert_int_equal(d.retry_after_ms, 8572); /* 7 * 8571428 + 8571428 - 60e6 us, rounded up */
    assert_false(admit(q, t + 8571428 - 5, &a).allowed);
    assert_true(admit(q, t + 8571428 - 4, &a).allowed);
    tg_quota_local_free(q);
}

static void test_tpm(void **state)
{
    struct tg_quota_local *q = tg_quota_local_new();
    uint64_t t = at(2025, 6, 1, 12, 0, 0);
    struct tg_quota_admit a = req("alice", NULL, "l");
    a.lim[0].v[TG_QL_RPM] = 100;
    a.lim[0].v[TG_QL_TPM] = 1000;
    a.tokens = 400;

    struct tg_quota_decision d = admit(q, t, &a);
    assert_true(d.allowed);
    assert_int_equal(d.remaining[1], 600);
    assert_int_equal(d.reset_ms[1], 24000);
    assert_true(admit(q, t, &a).allowed);
    d = admit(q, t, &a);
    assert_false(d.allowed);
    assert_int_equal(d.denied, TG_QL_TPM);
    assert_int_equal(d.retry_after_ms, 12000); /* 1200 tokens' worth - one minute */
    assert_int_equal(d.remaining[1], 0);
    assert_int_equal(d.reset_ms[1], 48000);
    assert_int_equal(d.remaining[0], 98); /* rpm reported without this request */

    /* Nothing was charged by the refusal: 200 tokens still fit. */
    a.tokens = 200;
    d = admit(q, t, &a);
    assert_true(d.allowed);
    assert_int_equal(d.remaining[1], 0);
    /* A request with no token estimate skips tpm even when it is empty. */
    a.tokens = 0;
    d = admit(q, t, &a);
    assert_true(d.allowed);
    assert_int_equal(d.remaining[1], 0);
    assert_int_equal(d.reset_ms[1], 60000);
    /* More than the whole limit can never pass: 60 s. */
    a.principal = "carol";
    a.tokens = 1001;
    d = admit(q, t, &a);
    assert_false(d.allowed);
    assert_int_equal(d.denied, TG_QL_TPM);
    assert_int_equal(d.retry_after_ms, 60000);
    assert_int_equal(d.remaining[1], 0);
    assert_int_equal(d.remaining[0], 100);
    assert_int_equal(peek(q, t, "{carol}:rpm"), 0); /* rpm not charged */
    a.tokens = 1000;
    assert_true(admit(q, t, &a).allowed);
    tg_quota_local_free(q);
}

/* ---- day and month budgets ---- */

static void test_day_budget(void **state)
{
    struct tg_quota_local *q = tg_quota_local_new();
    uint64_t t = at(2025, 6, 1, 18, 0, 0);
    int64_t day = tg_quota_days_from_civil(2025, 6, 1);
    char k[128];
    struct tg_quota_admit a = req("alice", NULL, "l");
    a.lim[0].v[TG_QL_TPD] = 1000;
    a.tokens = 600;

    struct tg_quota_decision d = admit(q, t, &a);
    assert_true(d.allowed);
    assert_int_equal(d.day, day);
    assert_int_equal(d.month, 2025 * 12 + 5);
    d = admit(q, t, &a);
    assert_false(d.allowed);
    assert_int_equal(d.denied, TG_QL_TPD);
    assert_int_equal(d.retry_after_ms, 6 * 3600 * 1000); /* to midnight UTC */
    assert_int_equal(d.day, day);
    a.tokens = 400; /* exactly up to the limit */
    assert_true(admit(q, t, &a).allowed);
    assert_int_equal(peek(q, t, daykey(k, sizeof(k), "{alice}:", "tpd", day)), 1000);
    /* Spent: even a request reserving nothing is refused. */
    a.tokens = 0;
    d = admit(q, t + 500, &a);
    assert_false(d.allowed);
    assert_int_equal(d.retry_after_ms, 6 * 3600 * 1000); /* 21600000 - 0.5 ms, rounded up */
    /* The next UTC day starts from zero. */
    a.tokens = 1000;
    d = admit(q, at(2025, 6, 2, 0, 0, 0), &a);
    assert_true(d.allowed);
    assert_int_equal(d.day, day + 1);

    /* cost_per_day counts micro-dollars the same way. */
    a = req("bob", NULL, "l");
    a.lim[0].v[TG_QL_CPD] = 5000000; /* $5 */
    a.cost = 2500000;
    assert_true(admit(q, t, &a).allowed);
    assert_true(admit(q, t, &a).allowed);
    d = admit(q, t, &a);
    assert_false(d.allowed);
    assert_int_equal(d.denied, TG_QL_CPD);
    tg_quota_local_free(q);
}

static void test_month_budget(void **state)
{
    static const struct {
        int64_t y;
        unsigned m, d, hh, mm, ss;
        uint64_t retry_ms; /* to the first of next month, 00:00 UTC */
        int64_t ny;        /* the next month's year and month */
        unsigned nm;
    } cases[] = {
        {2025, 1, 31, 23, 59, 59, 1000, 2025, 2},
        {2024, 12, 31, 23, 0, 0, 3600000, 2025, 1},
        {2024, 2, 28, 12, 0, 0, (12 + 24) * 3600000ull, 2024, 3}, /* leap year */
        {2023, 2, 28, 12, 0, 0, 12 * 3600000ull, 2023, 3},
        {2100, 2, 28, 0, 0, 0, 24 * 3600000ull, 2100, 3},         /* not a leap year */
        {2025, 4, 1, 0, 0, 0, 30 * 24 * 3600000ull, 2025, 5},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tg_quota_local *q = tg_quota_local_new();
        uint64_t t = at(cases[i].y, cases[i].m, cases[i].d, cases[i].hh, cases[i].mm, cases[i].ss);
        struct tg_quota_admit a = req("alice", NULL, "l");
        a.lim[0].v[TG_QL_CPM] = 1000;
        a.cost = 1000;
        struct tg_quota_decision d = admit(q, t, &a);
        assert_true(d.allowed);
        assert_int_equal(d.month, cases[i].y * 12 + cases[i].m - 1);
        d = admit(q, t, &a);
        assert_false(d.allowed);
        assert_int_equal(d.denied, TG_QL_CPM);
        assert_int_equal(d.retry_after_ms, cases[i].retry_ms);
        uint64_t retry_us = d.retry_after_ms * 1000;
        d = admit(q, t + retry_us - 1, &a);
        assert_false(d.allowed);
        d = admit(q, t + retry_us, &a);
        assert_true(d.allowed);
        assert_int_equal(d.month, cases[i].ny * 12 + cases[i].nm - 1);
        tg_quota_local_free(q);
    }
}

/* ---- all or nothing ---- */

static void test_all_or_nothing(void **state)
{
    struct tg_quota_local *q = tg_quota_local_new();
    uint64_t t = at(2025, 6, 1, 12, 0, 0);
    int64_t day = tg_quota_days_from_civil(2025, 6, 1);
    char k[128];
    struct tg_quota_admit a = req("alice", "acme", "l1");
    for (int l = 0; l < TG_QL_COUNT; l++)
        a.lim[0].v[l] = 1000000;
    a.lim[1].v[TG_QL_CPD] = 150; /* the tenant's day budget */
    a.tokens = 100;
    a.cost = 100;

    struct tg_quota_decision d = admit(q, t, &a);
    assert_true(d.allowed);
    int64_t rpm_tat = peek(q, t, "{alice}:rpm");
    int64_t tpm_tat = peek(q, t, "{alice}:tpm");
    assert_int_equal(rpm_tat, (int64_t)(t + 60));
    a.lease = "l2";
    d = admit(q, t, &a);
    assert_false(d.allowed);
    assert_int_equal(d.denied, TG_QS_TENANT * TG_QL_COUNT + TG_QL_CPD);
    assert_int_equal(d.retry_after_ms, 12 * 3600 * 1000);
    assert_int_equal(d.remaining[0], 999999); /* as before the refused request */
    /* The principal was charged nothing. */
    assert_int_equal(peek(q, t, "{alice}:rpm"), rpm_tat);
    assert_int_equal(peek(q, t, "{alice}:tpm"), tpm_tat);
    assert_int_equal(peek(q, t, daykey(k, sizeof(k), "{alice}:", "tpd", day)), 100);
    assert_int_equal(peek(q, t, daykey(k, sizeof(k), "{alice}:", "cpd", day)), 100);
    assert_int_equal(peek(q, t, daykey(k, sizeof(k), "{alice}:", "cpm", 2025 * 12 + 5)), 100);
    assert_int_equal(peek(q, t, "{alice}:conc"), 1);
    assert_int_equal(peek(q, t, daykey(k, sizeof(k), "{tenant:acme}:", "cpd", day)), 100);
    /* Another principal of the same tenant is refused by the shared budget. */
    a.principal = "bob";
    d = admit(q, t, &a);
    assert_int_equal(d.denied, TG_QS_TENANT * TG_QL_COUNT + TG_QL_CPD);
    a.cost = 50;
    assert_true(admit(q, t, &a).allowed);
    tg_quota_local_free(q);
}

/* ---- concurrency ---- */

static void test_concurrency(void **state)
{
    struct tg_quota_local *q = tg_quota_local_new();
    uint64_t t = at(2025, 6, 1, 12, 0, 0);
    struct tg_quota_admit a = req("alice", "acme", "l1");
    a.lim[0].v[TG_QL_CONC] = 2;
    a.lim[1].v[TG_QL_CONC] = 5;
    a.lease_ttl_ms = 1000;

    struct tg_quota_decision d1 = admit(q, t, &a);
    assert_true(d1.allowed);
    a.lease = "l2";
    assert_true(admit(q, t + 100 * 1000, &a).allowed);
    a.lease = "l3";
    struct tg_quota_decision d = admit(q, t + 300 * 1000, &a);
    assert_false(d.allowed);
    assert_int_equal(d.denied, TG_QL_CONC);
    assert_int_equal(d.retry_after_ms, 700); /* l1 expires at +1000 ms */
    assert_int_equal(peek(q, t, "{tenant:acme}:conc"), 2); /* nothing charged to the tenant */

    /* Renew l1 to +1300; at +1050 l1 lives, l2 still lives: full. */
    assert_int_equal(tg_quota_local_renew(q, t + 300 * 1000, "alice", "acme", "l1", 1000), 1);
    d = admit(q, t + 1050 * 1000, &a);
    assert_false(d.allowed);
    assert_int_equal(d.retry_after_ms, 50); /* l2 expires at +1100 */
    /* At +1100 l2 has expired: one slot. */
    assert_true(admit(q, t + 1100 * 1000, &a).allowed);
    assert_int_equal(peek(q, t + 1100 * 1000, "{alice}:conc"), 2);
    /* An expired lease is not renewed. */
    assert_int_equal(tg_quota_local_renew(q, t + 1100 * 1000, "alice", "acme", "l2", 1000), 0);
    assert_int_equal(tg_quota_local_renew(q, t + 1100 * 1000, "alice", "acme", "nope", 1000), 0);

    /* Settling releases the slot in both scopes. */
    a.lease = "l1";
    struct tg_quota_settle s = settle_of(&a, &d1, 0, 0);
    assert_int_equal(tg_quota_local_settle(q, t + 1200 * 1000, &s), 1);
    assert_int_equal(peek(q, t + 1200 * 1000, "{alice}:conc"), 1);
    assert_int_equal(peek(q, t + 1200 * 1000, "{tenant:acme}:conc"), 1);
    a.lease = "l4";
    assert_true(admit(q, t + 1200 * 1000, &a).allowed);
    /* Renew of a lease held only by the tenant scope still counts. */
    a = req("dave", "acme", "l5");
    a.lim[1].v[TG_QL_CONC] = 5;
    assert_true(admit(q, t + 1200 * 1000, &a).allowed);
    assert_int_equal(tg_quota_local_renew(q, t + 1200 * 1000, "dave", "acme", "l5", 1000), 1);
    /* At most 1 s is suggested, and never less than 1 ms. */
    a = req("erin", NULL, "m1");
    a.lim[0].v[TG_QL_CONC] = 1;
    a.lease_ttl_ms = 60000;
    assert_true(admit(q, t, &a).allowed);
    a.lease = "m2";
    d = admit(q, t, &a);
    assert_int_equal(d.retry_after_ms, 1000);
    d = admit(q, t + 59999999, &a);
    assert_int_equal(d.retry_after_ms, 1);
    tg_quota_local_free(q);
}

/* ---- settlement ---- */

static void test_settle(void **state)
{
    struct tg_quota_local *q = tg_quota_local_new();
    uint64_t t = at(2025, 6, 1, 12, 0, 0);
    int64_t day = tg_quota_days_from_civil(2025, 6, 1), month = 2025 * 12 + 5;
    char k[128];
    struct tg_quota_admit a = req("alice", "acme", "l1");
    a.lim[0].v[TG_QL_TPM] = 1000;
    a.lim[0].v[TG_QL_TPD] = 100000;
    a.lim[0].v[TG_QL_CPD] = 100000;
    a.lim[0].v[TG_QL_CPM] = 100000;
    a.lim[1].v[TG_QL_TPD] = 100000;
    a.tokens = 500;
    a.cost = 500;

    struct tg_quota_decision d = admit(q, t, &a);
    assert_true(d.allowed);
    assert_int_equal(peek(q, t, "{alice}:tpm"), (int64_t)(t + 30 * SEC));
    /* Used more than reserved: charged in full. */
    struct tg_quota_settle s = settle_of(&a, &d, 800, 900);
    assert_int_equal(tg_quota_local_settle(q, t, &s), 1);
    assert_int_equal(peek(q, t, "{alice}:tpm"), (int64_t)(t + 48 * SEC));
    assert_int_equal(peek(q, t, daykey(k, sizeof(k), "{alice}:", "tpd", day)), 800);
    assert_int_equal(peek(q, t, daykey(k, sizeof(k), "{alice}:", "cpd", day)), 900);
    assert_int_equal(peek(q, t, daykey(k, sizeof(k), "{alice}:", "cpm", month)), 900);
    assert_int_equal(peek(q, t, daykey(k, sizeof(k), "{tenant:acme}:", "tpd", day)), 800);
    /* Idempotent: the same lease again changes nothing. */
    s.tokens_actual = 5000;
    assert_int_equal(tg_quota_local_settle(q, t, &s), 0);
    assert_int_equal(peek(q, t, daykey(k, sizeof(k), "{alice}:", "tpd", day)), 800);
    assert_int_equal(peek(q, t, "{alice}:tpm"), (int64_t)(t + 48 * SEC));

    /* Used less: refunded (tpm: 300 tokens = 18 s back). */
    uint64_t t2 = t + 30 * SEC;
    a.lease = "l2";
    d = admit(q, t2, &a); /* tpm + 30 s, tpd 1300, cpd 1400 */
    assert_true(d.allowed);
    assert_int_equal(peek(q, t2, "{alice}:tpm"), (int64_t)(t + 78 * SEC));
    s = settle_of(&a, &d, 200, 100);
    assert_int_equal(tg_quota_local_settle(q, t2, &s), 1);
    assert_int_equal(peek(q, t2, "{alice}:tpm"), (int64_t)(t + 60 * SEC));
    assert_int_equal(peek(q, t2, daykey(k, sizeof(k), "{alice}:", "tpd", day)), 1000);
    assert_int_equal(peek(q, t2, daykey(k, sizeof(k), "{alice}:", "cpd", day)), 1000);

    /* A refund never goes below now, nor a counter below 0. */
    a.lease = "l3";
    a.principal = "bob";
    a.lim[1].v[TG_QL_TPD] = 0;
    d = admit(q, t, &a);
    s = settle_of(&a, &d, 0, 0);
    s.tokens_reserved = 100000; /* claims a larger reservation than was charged */
    s.cost_reserved = 100000;
    assert_int_equal(tg_quota_local_settle(q, t + SEC, &s), 1);
    int64_t v;
    assert_int_equal(tg_quota_local_peek(q, t + SEC, "{bob}:tpm", &v), 0);
    assert_int_equal(tg_quota_local_peek(q, t + SEC, daykey(k, sizeof(k), "{bob}:", "tpd", day), &v), 0);
    assert_int_equal(v, 0);
    /* A refund to a counter that does not exist creates nothing. */
    s.lease = "l4";
    s.principal = "carol";
    assert_int_equal(tg_quota_local_settle(q, t + SEC, &s), 1);
    assert_int_equal(tg_quota_local_peek(q, t + SEC, "{carol}:tpm", &v), 0);
    assert_int_equal(tg_quota_local_peek(q, t + SEC, daykey(k, sizeof(k), "{carol}:", "cpd", day), &v), 0);

    /* Settling after midnight charges the admission's day, not today. */
    a = req("dave", NULL, "l5");
    a.lim[0].v[TG_QL_TPD] = 1000;
    a.tokens = 100;
    d = admit(q, at(2025, 6, 1, 23, 59, 59), &a);
    s = settle_of(&a, &d, 300, 0);
    assert_int_equal(tg_quota_local_settle(q, at(2025, 6, 2, 0, 0, 5), &s), 1);
    assert_int_equal(peek(q, at(2025, 6, 2, 0, 0, 5), daykey(k, sizeof(k), "{dave}:", "tpd", day)), 300);
    assert_int_equal(tg_quota_local_peek(q, at(2025, 6, 2, 0, 0, 5), daykey(k, sizeof(k), "{dave}:", "tpd", day + 1), &v), 0);
    /* ... unless that window ended more than a day ago (its key is gone in Redis). */
    s.lease = "l6";
    assert_int_equal(tg_quota_local_settle(q, at(2025, 6, 3, 0, 0, 0), &s), 1);
    assert_int_equal(tg_quota_local_peek(q, at(2025, 6, 3, 0, 0, 0), daykey(k, sizeof(k), "{dave}:", "tpd", day), &v), 0);

    /* The marker lives TG_QUOTA_SETTLED_TTL_MS (10 min). */
    assert_int_equal(TG_QUOTA_SETTLED_TTL_MS, 600000);
    s.lease = "l7";
    assert_int_equal(tg_quota_local_settle(q, t, &s), 1);
    assert_int_equal(tg_quota_local_peek(q, t, "{dave}:settled:l7", &v), 1);
    assert_int_equal(tg_quota_local_settle(q, t + 10 * MIN - 1000, &s), 0);
    assert_int_equal(tg_quota_local_peek(q, t + 10 * MIN, "{dave}:settled:l7", &v), 0);
    assert_int_equal(tg_quota_local_settle(q, t + 10 * MIN, &s), 1);
    /* Re-armed in place: alive another 10 min from then. */
    assert_int_equal(tg_quota_local_settle(q, t + 20 * MIN - 1000, &s), 0);
    assert_int_equal(tg_quota_local_settle(q, t + 20 * MIN, &s), 1);
    tg_quota_local_free(q);
}

/* ---- memory ---- */

static void test_reclaim(void **state)
{
    struct tg_quota_local *q = tg_quota_local_new();
    uint64_t t = at(2025, 6, 1, 12, 0, 0);
    char name[32], lease[32];

    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof(name), "p%d", i);
        snprintf(lease, sizeof(lease), "l%d", i);
        struct tg_quota_admit a = req(name, "acme", lease);
        for (int l = 0; l < TG_QL_COUNT; l++)
            a.lim[0].v[l] = a.lim[1].v[l] = 1000000;
        a.tokens = 10;
        a.cost = 10;
        struct tg_quota_decision d = admit(q, t, &a);
        assert_true(d.allowed);
        if (i % 2 == 0) {
            struct tg_quota_settle s = settle_of(&a, &d, 10, 10);
            assert_int_equal(tg_quota_local_settle(q, t, &s), 1);
        }
    }
    size_t n = tg_quota_local_count(q);
    assert_true(n >= 5000 * 6);
    /* Two minutes later the buckets are full again; leases (30 s) expired. */
    size_t left = tg_quota_local_sweep(q, t + 2 * MIN);
    assert_true(left < n);
    /* Markers live 10 min; counters until a day after their window. */
    left = tg_quota_local_sweep(q, at(2025, 7, 3, 0, 0, 0));
    assert_int_equal(left, 0);

    /* The amortised sweep alone also gets there, by calls on other keys. */
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof(name), "x%d", i);
        struct tg_quota_admit a = req(name, NULL, "l");
        a.lim[0].v[TG_QL_RPM] = 10;
        assert_true(admit(q, t, &a).allowed);
    }
    assert_int_equal(tg_quota_local_count(q), 300);
    struct tg_quota_admit a = req("other", NULL, "l");
    for (int i = 0; i < 64; i++)
        (void)admit(q, t + 2 * MIN, &a); /* no limits: creates nothing */
    assert_int_equal(tg_quota_local_count(q), 0);
    tg_quota_local_free(q);
}

/* ---- many leases ---- */

/* Every allocation the backend makes, live: proves memory goes back. */
static atomic_long live_allocs;
static void *cnt_malloc(size_t n)
{
    void *p = malloc(n);
    if (p)
        atomic_fetch_add(&live_allocs, 1);
    return p;
}
static void *cnt_calloc(size_t n, size_t m)
{
    void *p = calloc(n, m);
    if (p)
        atomic_fetch_add(&live_allocs, 1);
    return p;
}
static void *cnt_realloc(void *p, size_t n)
{
    void *r = realloc(p, n);
    if (r && !p)
        atomic_fetch_add(&live_allocs, 1);
    return r;
}
static void cnt_free(void *p)
{
    if (p)
        atomic_fetch_sub(&live_allocs, 1);
    free(p);
}
static const struct tg_allocator counting = {cnt_malloc, cnt_calloc, cnt_realloc, cnt_free};

#define MANY 10000

static void test_many_leases(void **state)
{
    tg_mem_set(&counting);
    long base_allocs = atomic_load(&live_allocs);
    struct tg_quota_local *q = tg_quota_local_new();
    long empty_allocs = atomic_load(&live_allocs);
    uint64_t t = at(2025, 6, 1, 12, 0, 0);
    static struct tg_quota_decision dec[MANY];
    char lease[MANY][40], k[128];
    int64_t day = tg_quota_days_from_civil(2025, 6, 1);

    /* 10 000 in flight for one principal and one tenant (ids as tollgate makes them). */
    for (int i = 0; i < MANY; i++) {
        snprintf(lease[i], sizeof(lease[i]), "0123456789abcdef-%x", i);
        struct tg_quota_admit a = req("alice", "acme", lease[i]);
        a.lim[0].v[TG_QL_CONC] = MANY;
        a.lim[1].v[TG_QL_CONC] = MANY + 1;
        a.lim[0].v[TG_QL_TPD] = 1000000;
        a.tokens = 10;
        dec[i] = admit(q, t + (uint64_t)i, &a);
        assert_true(dec[i].allowed);
    }
    assert_int_equal(peek(q, t + MANY, "{alice}:conc"), MANY);
    assert_int_equal(peek(q, t + MANY, "{tenant:acme}:conc"), MANY);
    /* At the limit: refused, retry when the first lease expires (30 s), capped at 1 s. */
    struct tg_quota_admit x = req("alice", "acme", "one-more");
    x.lim[0].v[TG_QL_CONC] = MANY;
    struct tg_quota_decision d = admit(q, t + MANY, &x);
    assert_false(d.allowed);
    assert_int_equal(d.denied, TG_QL_CONC);
    assert_int_equal(d.retry_after_ms, 1000);
    d = admit(q, t + 29999 * 1000ull, &x);
    assert_int_equal(d.retry_after_ms, 1);
    /* The same id again is one lease (ZADD updates the score). */
    struct tg_quota_admit again = req("bob", NULL, "dup");
    again.lim[0].v[TG_QL_CONC] = 2;
    assert_true(admit(q, t, &again).allowed);
    assert_true(admit(q, t, &again).allowed);
    assert_int_equal(peek(q, t, "{bob}:conc"), 1);
    assert_int_equal(tg_quota_local_renew(q, t, "alice", "acme", lease[MANY / 2], 60000), 1);

    /* Settle them all, in a scattered order: every lease goes, in both scopes. */
    for (int k2 = 0; k2 < MANY; k2++) {
        int i = (int)(((uint64_t)k2 * 7919) % MANY);
        struct tg_quota_admit a = req("alice", "acme", lease[i]);
        a.lim[0].v[TG_QL_CONC] = MANY;
        a.lim[1].v[TG_QL_CONC] = MANY + 1;
        a.lim[0].v[TG_QL_TPD] = 1000000;
        a.tokens = 10;
        struct tg_quota_settle s = settle_of(&a, &dec[i], 10, 0);
        assert_int_equal(tg_quota_local_settle(q, t + MANY, &s), 1);
        if (k2 == MANY / 2) {
            /* Half settled: a settled lease is gone, a held one still renews. */
            assert_int_equal(tg_quota_local_renew(q, t + MANY, "alice", NULL, lease[i], 1000), 0);
        }
    }
    assert_int_equal(peek(q, t + MANY, "{alice}:conc"), 0);
    assert_int_equal(peek(q, t + MANY, "{tenant:acme}:conc"), 0);
    assert_int_equal(peek(q, t + MANY, daykey(k, sizeof(k), "{alice}:", "tpd", day)), 10 * MANY);
    /* A free slot is there at once. */
    assert_true(admit(q, t + MANY, &x).allowed);

    /* Leases that are never settled expire (30 s) and their memory goes back. */
    for (int i = 0; i < MANY; i++) {
        struct tg_quota_admit a = req("carol", NULL, lease[i]);
        a.lim[0].v[TG_QL_CONC] = MANY;
        assert_true(admit(q, t, &a).allowed);
    }
    /* Expired ones do not count against the limit. */
    struct tg_quota_admit c = req("carol", NULL, "late");
    c.lim[0].v[TG_QL_CONC] = MANY;
    assert_true(admit(q, t + 30 * SEC, &c).allowed);
    assert_int_equal(peek(q, t + 30 * SEC, "{carol}:conc"), 1);

    /* Markers expire 10 min later; then nothing is left, not even table memory. */
    assert_int_equal(tg_quota_local_sweep(q, t + 2 * DAY), 0);
    assert_int_equal(atomic_load(&live_allocs), empty_allocs);
    tg_quota_local_free(q);
    assert_int_equal(atomic_load(&live_allocs), base_allocs);
    tg_mem_set(NULL);
}

/* Under steady traffic the amortised work alone keeps memory bounded. */
static void test_steady_state(void **state)
{
    tg_mem_set(&counting);
    struct tg_quota_local *q = tg_quota_local_new();
    uint64_t t = at(2025, 6, 1, 12, 0, 0);
    long peak = 0;
    /* 256 in flight, 1000 requests a second for 30 simulated minutes. */
    for (int i = 0; i < 30 * 60 * 1000 + 256; i++) {
        char lease[40];
        uint64_t now = t + (uint64_t)i * 1000;
        snprintf(lease, sizeof(lease), "0123456789abcdef-%x", i);
        struct tg_quota_admit a = req("alice", NULL, lease);
        a.lim[0].v[TG_QL_RPM] = 1000000000000ull;
        a.lim[0].v[TG_QL_CONC] = 1000000;
        struct tg_quota_decision d = admit(q, now, &a);
        assert_true(d.allowed);
        if (i >= 256) {
            snprintf(lease, sizeof(lease), "0123456789abcdef-%x", i - 256);
            a.lease = lease;
            struct tg_quota_settle s = settle_of(&a, &d, 0, 0);
            assert_int_equal(tg_quota_local_settle(q, now, &s), 1);
        }
        if (i == 20 * 60 * 1000)
            peak = atomic_load(&live_allocs);
    }
    /* About 10 min of markers (600 000) plus a few entries, not 30 min's worth. */
    size_t n = tg_quota_local_count(q);
    assert_true(n > 590000 && n < 610000);
    assert_true(atomic_load(&live_allocs) < peak + 20000);
    tg_quota_local_free(q);
    tg_mem_set(NULL);
}

/* ---- failmalloc ---- */

/* One scenario: returns false when an injected failure surfaced as NOMEM. */
static bool scenario(unsigned long *nomem)
{
    uint64_t t = at(2025, 6, 1, 12, 0, 0);
    struct tg_quota_local *q = tg_quota_local_new();
    if (!q) {
        (*nomem)++;
        return false;
    }
    struct tg_quota_admit a = req("alice", "acme", "l1");
    for (int l = 0; l < TG_QL_COUNT; l++)
        a.lim[0].v[l] = a.lim[1].v[l] = 1000;
    a.tokens = 10;
    a.cost = 10;
    uint64_t charged = 0; /* admissions that went through */
    for (int i = 0; i < 3; i++) {
        char lease[8];
        snprintf(lease, sizeof(lease), "l%d", i);
        a.lease = lease;
        struct tg_quota_decision d;
        int rv = tg_quota_local_admit(q, t, &a, &d);
        if (rv == TG_E_NOMEM) {
            (*nomem)++;
            assert_false(d.allowed);
            assert_int_equal(d.denied, -1);
            /* Nothing charged: the rpm bucket holds only the earlier requests. */
            int64_t v;
            int found = tg_quota_local_peek(q, t, "{alice}:rpm", &v);
            assert_int_equal(found ? v : (int64_t)t, (int64_t)(t + charged * 60000));
            continue;
        }
        assert_int_equal(rv, 0);
        assert_true(d.allowed);
        charged++;
        struct tg_quota_settle s = settle_of(&a, &d, 20, 5);
        rv = tg_quota_local_settle(q, t, &s);
        if (rv == TG_E_NOMEM) {
            (*nomem)++;
            /* Not applied: the lease is still held and a retry settles. */
            rv = tg_quota_local_settle(q, t, &s);
            if (rv == TG_E_NOMEM)
                continue;
        }
        assert_int_equal(rv, 1);
        assert_int_equal(tg_quota_local_settle(q, t, &s), 0);
        (void)tg_quota_local_renew(q, t, "alice", "acme", lease, 1000);
    }
    (void)tg_quota_local_sweep(q, t + DAY * 40);
    tg_quota_local_free(q);
    return true;
}

static void test_failmalloc(void **state)
{
    unsigned long n, nomem_seen = 0;
    for (n = 1;; n++) {
        unsigned long nomem = 0;
        tg_test_failmalloc_arm(n);
        (void)scenario(&nomem);
        tg_test_failmalloc_disarm();
        if (!tg_test_failmalloc_failed())
            break;
        nomem_seen += nomem;
    }
    print_message("quota_local: %lu allocations, each failed once (%lu NOMEM)\n", n - 1,
                  nomem_seen);
    assert_true(n > 10);
    assert_true(nomem_seen > 0);
}

/* ---- threads ---- */

#define THREADS 4
#define PER_THREAD 2000
#define HAMMER_RPM 1000

struct hammer {
    struct tg_quota_local *q; /* shared backend */
    int id;                   /* thread number, for lease ids */
    int allowed;              /* admissions this thread got */
};

static void *hammer_run(void *arg)
{
    struct hammer *h = arg;
    uint64_t t = at(2025, 6, 1, 12, 0, 0); /* the clock never moves */
    for (int i = 0; i < PER_THREAD; i++) {
        char lease[32];
        snprintf(lease, sizeof(lease), "t%d-%d", h->id, i);
        struct tg_quota_admit a = req("shared", "acme", lease);
        a.lim[0].v[TG_QL_RPM] = HAMMER_RPM;
        a.lim[1].v[TG_QL_TPD] = 1000000000;
        a.tokens = 3;
        struct tg_quota_decision d;
        if (tg_quota_local_admit(h->q, t, &a, &d) == 0 && d.allowed)
            h->allowed++;
    }
    return NULL;
}

static void test_threads(void **state)
{
    struct tg_quota_local *q = tg_quota_local_new();
    pthread_t th[THREADS];
    struct hammer h[THREADS];
    for (int i = 0; i < THREADS; i++) {
        h[i] = (struct hammer){q, i, 0};
        assert_int_equal(pthread_create(&th[i], NULL, hammer_run, &h[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        total += h[i].allowed;
    }
    assert_int_equal(total, HAMMER_RPM);
    char k[128];
    int64_t day = tg_quota_days_from_civil(2025, 6, 1);
    assert_int_equal(peek(q, at(2025, 6, 1, 12, 0, 0),
                          daykey(k, sizeof(k), "{tenant:acme}:", "tpd", day)),
                     3 * HAMMER_RPM);
    tg_quota_local_free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_civil_vs_gmtime),
        cmocka_unit_test(test_key_base),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_rpm_burst_and_refill),
        cmocka_unit_test(test_tpm),
        cmocka_unit_test(test_day_budget),
        cmocka_unit_test(test_month_budget),
        cmocka_unit_test(test_all_or_nothing),
        cmocka_unit_test(test_concurrency),
        cmocka_unit_test(test_settle),
        cmocka_unit_test(test_reclaim),
        cmocka_unit_test(test_many_leases),
        cmocka_unit_test(test_steady_state),
        cmocka_unit_test(test_failmalloc),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
