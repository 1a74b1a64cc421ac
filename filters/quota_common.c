/*
 * quota_common.c - bounds, key bases and UTC calendar shared by the quota
 * backends.  lua/admit.lua and lua/settle.lua repeat the calendar and the
 * escaping rule; keep them in step (test_quota_redis.c cross-checks).
 */
#include "filters/quota_common.h"

#include "proxy/err.h"

#include <stdbool.h>
#include <string.h>

static const char hexdigits[] = "0123456789ABCDEF";

static bool must_escape(unsigned char c)
{
    return c < 0x21 || c == 0x7f || c == '%' || c == '{' || c == '}' || c == ':';
}

int tg_quota_base(char *out, size_t outlen, const char *prefix, enum tg_quota_scope scope,
                  const char *name)
{
    size_t plen = prefix ? strlen(prefix) : 0;
    size_t nlen = name ? strlen(name) : 0;
    size_t o = 0;

    if (nlen == 0 || nlen > TG_QUOTA_NAME_MAX || plen > TG_QUOTA_PREFIX_MAX)
        return TG_E_INVALID;
    /* Worst case: every name byte escaped. */
    if (outlen < plen + 8 + 3 * nlen + 2 + 1)
        return TG_E_INVALID;
    memcpy(out + o, prefix, plen);
    o += plen;
    out[o++] = '{';
    if (scope == TG_QS_TENANT) {
        memcpy(out + o, "tenant:", 7);
        o += 7;
    }
    for (size_t i = 0; i < nlen; i++) {
        unsigned char c = (unsigned char)name[i];
        if (must_escape(c)) {
            out[o++] = '%';
            out[o++] = hexdigits[c >> 4];
            out[o++] = hexdigits[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '}';
    out[o++] = ':';
    out[o] = '\0';
    return (int)o;
}

static bool name_ok(const char *s)
{
    size_t n = s ? strnlen(s, TG_QUOTA_NAME_MAX + 1) : 0;
    return n > 0 && n <= TG_QUOTA_NAME_MAX;
}

static bool tenant_ok(const char *s)
{
    return !tg_quota_has_tenant(s) || name_ok(s);
}

static bool lease_ok(const char *s)
{
    size_t n = s ? strnlen(s, TG_QUOTA_LEASE_MAX + 1) : 0;
    return n > 0 && n <= TG_QUOTA_LEASE_MAX;
}

static bool limits_ok(const struct tg_quota_limits lim[TG_QS_COUNT])
{
    for (int s = 0; s < TG_QS_COUNT; s++)
        for (int l = 0; l < TG_QL_COUNT; l++)
            if (lim[s].v[l] > TG_QUOTA_VALUE_MAX)
                return false;
    return true;
}

int tg_quota_admit_check(const struct tg_quota_admit *a)
{
    if (!a || !name_ok(a->principal) || !tenant_ok(a->tenant) || !lease_ok(a->lease) ||
        !limits_ok(a->lim) || a->tokens > TG_QUOTA_VALUE_MAX || a->cost > TG_QUOTA_VALUE_MAX ||
        a->lease_ttl_ms < 1 || a->lease_ttl_ms > TG_QUOTA_VALUE_MAX)
        return TG_E_INVALID;
    return 0;
}

int tg_quota_settle_check(const struct tg_quota_settle *s)
{
    if (!s || !name_ok(s->principal) || !tenant_ok(s->tenant) || !lease_ok(s->lease) ||
        !limits_ok(s->lim) || s->tokens_reserved > TG_QUOTA_VALUE_MAX ||
        s->tokens_actual > TG_QUOTA_VALUE_MAX || s->cost_reserved > TG_QUOTA_VALUE_MAX ||
        s->cost_actual > TG_QUOTA_VALUE_MAX || s->day < 0 ||
        (uint64_t)s->day > TG_QUOTA_VALUE_MAX || s->month < 0 ||
        (uint64_t)s->month > TG_QUOTA_VALUE_MAX)
        return TG_E_INVALID;
    return 0;
}

/* Floor division for the calendar (numerators may be negative before 0000-03-01). */
static int64_t fdiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* Hinnant: the year starts on March 1 so the leap day is the year's last. */
void tg_quota_civil_from_days(int64_t day, int64_t *year, unsigned *month, unsigned *mday)
{
    int64_t z = day + 719468;
    int64_t era = fdiv(z, 146097);
    int64_t doe = z - era * 146097;                                      /* [0, 146096] */
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* [0, 399] */
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);               /* [0, 365] */
    int64_t mp = (5 * doy + 2) / 153;                                    /* [0, 11] */
    unsigned m = (unsigned)(mp < 10 ? mp + 3 : mp - 9);

    *mday = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
    *month = m;
    *year = yoe + era * 400 + (m <= 2);
}

int64_t tg_quota_days_from_civil(int64_t year, unsigned month, unsigned mday)
{
    int64_t y = year - (month <= 2);
    int64_t era = fdiv(y, 400);
    int64_t yoe = y - era * 400;
    int64_t mp = month > 2 ? (int64_t)month - 3 : (int64_t)month + 9;
    int64_t doy = (153 * mp + 2) / 5 + (int64_t)mday - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int64_t tg_quota_month_of_day(int64_t day)
{
    int64_t y;
    unsigned m, d;
    tg_quota_civil_from_days(day, &y, &m, &d);
    return y * 12 + (int64_t)m - 1;
}

int64_t tg_quota_month_first_day(int64_t month)
{
    int64_t y = fdiv(month, 12);
    return tg_quota_days_from_civil(y, (unsigned)(month - y * 12 + 1), 1);
}

int64_t tg_quota_gcra_remaining(uint64_t ahead_us, uint64_t L)
{
    if (ahead_us >= TG_QUOTA_WINDOW_US)
        return 0;
    return (int64_t)((unsigned __int128)L * (TG_QUOTA_WINDOW_US - ahead_us) / TG_QUOTA_WINDOW_US);
}
