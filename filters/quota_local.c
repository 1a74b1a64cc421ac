/*
 * quota_local.c - in-process quota state with the semantics of the scripts in lua/.
 *
 * Every rule mirrors a line of the scripts; when one changes, so must the
 * other (test_quota_redis.c runs both side by side).  The state is a
 * chained hash table from the Redis key name to a small tagged entry.
 *
 * Atomicity.  A call holds the one mutex from start to end, so calls are
 * serialised exactly like Redis serialises scripts.  All or nothing also
 * has to survive allocation failure: admission first checks every limit
 * reading only, then allocates everything the charge needs (entries, lease
 * ids, lease slots), and only then writes.  An allocation failure leaves at
 * most a few empty (neutral) entries, which the sweep frees.
 *
 * Hashing.  FNV-1a without a secret seed: the keys are principal and
 * tenant names that passed authentication (from the operator's keys file or
 * a trusted identity provider) and lease ids tollgate generates, so nobody
 * outside can choose colliding keys; chains also keep a bad case linear
 * rather than fatal.
 */
#include "filters/quota_local.h"

#include "filters/quota_common.h"
#include "proxy/err.h"
#include "proxy/mem.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define BUCKETS_MIN 64  /* the table never shrinks below this */
#define SWEEP_STEP 8    /* buckets examined on each call */
#define SUFFIX_MAX 32   /* "tpd:" / "cpm:" plus a 20-digit number */
#define STEP_KEY_MAX (TG_QUOTA_BASE_MAX + SUFFIX_MAX)
#define STEPS_MAX (TG_QS_COUNT * TG_QL_COUNT)

enum kind {
    K_TAT = 1,  /* rpm, tpm: theoretical arrival time */
    K_COUNTER,  /* tpd, cpd, cpm: window counter */
    K_LEASES,   /* conc: lease set */
    K_MARKER,   /* settled:<lease> */
};

struct lease {
    char *id;           /* lease id (tg_mem) */
    uint64_t expiry_ms; /* live while now_ms < expiry_ms */
};

struct entry {
    struct entry *next;   /* bucket chain */
    uint64_t hash;        /* full hash of key */
    enum kind kind;       /* what the union-like fields below mean */
    uint64_t tat;         /* K_TAT: microseconds; neutral when <= now */
    int64_t value;        /* K_COUNTER: amount used in the window */
    uint64_t expire_ms;   /* K_COUNTER, K_MARKER: gone at this time (Redis TTL) */
    struct lease *leases; /* K_LEASES: array of nleases (capacity cap) */
    size_t nleases;       /* K_LEASES: leases held */
    size_t cap;           /* K_LEASES: array capacity */
    size_t keylen;        /* bytes of key */
    char key[];           /* key name, NUL-terminated */
};

struct tg_quota_local {
    pthread_mutex_t lock;   /* guards everything below */
    struct entry **buckets; /* nbuckets chains */
    size_t nbuckets;        /* power of two */
    size_t count;           /* entries in the table */
    size_t cursor;          /* next bucket of the amortised sweep */
};

/* ---- arithmetic, as in lua/admit.lua ---- */

/* a * 60e6 / L rounded down or up, saturated just past the TAT ceiling. */
static uint64_t units(uint64_t a, uint64_t L, bool round_up)
{
    unsigned __int128 x = (unsigned __int128)a * TG_QUOTA_WINDOW_US;
    unsigned __int128 q = x / L;
    if (round_up && x % L != 0)
        q++;
    return q > TG_QUOTA_AHEAD_MAX_US ? TG_QUOTA_AHEAD_MAX_US + 1 : (uint64_t)q;
}

static uint64_t ceil_ms(uint64_t us)
{
    return (us + 999) / 1000;
}

/* What is left of an L-per-minute burst when the TAT is d us ahead of now. */
static int64_t remaining(uint64_t d, uint64_t L)
{
    if (d >= TG_QUOTA_WINDOW_US)
        return 0;
    return (int64_t)((unsigned __int128)L * (TG_QUOTA_WINDOW_US - d) / TG_QUOTA_WINDOW_US);
}

/* ---- the table ---- */

static uint64_t hash_key(const char *k, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)k[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static struct entry *find(struct tg_quota_local *q, const char *key, size_t len, uint64_t h)
{
    for (struct entry *e = q->buckets[h & (q->nbuckets - 1)]; e; e = e->next)
        if (e->hash == h && e->keylen == len && memcmp(e->key, key, len) == 0)
            return e;
    return NULL;
}

static void entry_free(struct entry *e)
{
    for (size_t i = 0; i < e->nleases; i++)
        tg_mem_free(e->leases[i].id);
    tg_mem_free(e->leases);
    tg_mem_free(e);
}

/* Rehash into n buckets; on allocation failure keep the old table (longer chains). */
static void resize(struct tg_quota_local *q, size_t n)
{
    struct entry **nb = tg_mem_calloc(n, sizeof(*nb));
    if (!nb)
        return;
    for (size_t i = 0; i < q->nbuckets; i++) {
        struct entry *e = q->buckets[i];
        while (e) {
            struct entry *next = e->next;
            e->next = nb[e->hash & (n - 1)];
            nb[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    tg_mem_free(q->buckets);
    q->buckets = nb;
    q->nbuckets = n;
    q->cursor = 0;
}

/* A new neutral entry of the given kind, inserted; NULL when out of memory. */
static struct entry *create(struct tg_quota_local *q, const char *key, size_t len, uint64_t h,
                            enum kind kind)
{
    struct entry *e = tg_mem_calloc(1, sizeof(*e) + len + 1);
    if (!e)
        return NULL;
    e->hash = h;
    e->kind = kind;
    e->keylen = len;
    memcpy(e->key, key, len);
    e->key[len] = '\0';
    e->next = q->buckets[h & (q->nbuckets - 1)];
    q->buckets[h & (q->nbuckets - 1)] = e;
    q->count++;
    if (q->count > 2 * q->nbuckets)
        resize(q, 2 * q->nbuckets);
    return e;
}

/* Drop the expired leases of a set (expiry <= now, as ZREMRANGEBYSCORE -inf now). */
static void prune(struct entry *e, uint64_t now_ms)
{
    size_t j = 0;
    for (size_t i = 0; i < e->nleases; i++) {
        if (e->leases[i].expiry_ms <= now_ms)
            tg_mem_free(e->leases[i].id);
        else
            e->leases[j++] = e->leases[i];
    }
    e->nleases = j;
}

static size_t lease_index(const struct entry *e, const char *id)
{
    for (size_t i = 0; i < e->nleases; i++)
        if (strcmp(e->leases[i].id, id) == 0)
            return i;
    return SIZE_MAX;
}

static void lease_remove(struct entry *e, size_t i)
{
    tg_mem_free(e->leases[i].id);
    e->leases[i] = e->leases[--e->nleases];
}

/* A counter that Redis would still hold (its TTL has not passed). */
static bool counter_live(const struct entry *e, uint64_t now_ms)
{
    return e && e->kind == K_COUNTER && now_ms < e->expire_ms;
}

/* True when the entry holds nothing a later call could observe. */
static bool neutral(struct entry *e, uint64_t now_us)
{
    uint64_t now_ms = now_us / 1000;
    switch (e->kind) {
    case K_TAT:
        return e->tat <= now_us;
    case K_COUNTER:
        return e->value <= 0 || !counter_live(e, now_ms);
    case K_LEASES:
        prune(e, now_ms);
        return e->nleases == 0;
    case K_MARKER:
        return now_ms >= e->expire_ms;
    }
    return true;
}

/* Free the neutral entries of n buckets from the cursor on. */
static void sweep_some(struct tg_quota_local *q, uint64_t now_us, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        struct entry **pp = &q->buckets[q->cursor];
        while (*pp) {
            struct entry *e = *pp;
            if (neutral(e, now_us)) {
                *pp = e->next;
                entry_free(e);
                q->count--;
            } else {
                pp = &e->next;
            }
        }
        q->cursor = (q->cursor + 1) & (q->nbuckets - 1);
    }
}

struct tg_quota_local *tg_quota_local_new(void)
{
    struct tg_quota_local *q = tg_mem_calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    q->buckets = tg_mem_calloc(BUCKETS_MIN, sizeof(*q->buckets));
    if (!q->buckets)
        goto fail_buckets;
    q->nbuckets = BUCKETS_MIN;
    if (pthread_mutex_init(&q->lock, NULL) != 0)
        goto fail_lock;
    return q;

fail_lock:
    tg_mem_free(q->buckets);
fail_buckets:
    tg_mem_free(q);
    return NULL;
}

void tg_quota_local_free(struct tg_quota_local *q)
{
    if (!q)
        return;
    for (size_t i = 0; i < q->nbuckets; i++) {
        struct entry *e = q->buckets[i];
        while (e) {
            struct entry *next = e->next;
            entry_free(e);
            e = next;
        }
    }
    tg_mem_free(q->buckets);
    pthread_mutex_destroy(&q->lock);
    tg_mem_free(q);
}

/* ---- admission ---- */

/* One pending write of an admission or settlement, with its key. */
struct step {
    char key[STEP_KEY_MAX]; /* Redis key without prefix */
    size_t keylen;          /* bytes of key */
    uint64_t hash;          /* hash_key(key) */
    struct entry *e;        /* existing entry, or NULL until created */
    enum kind kind;         /* entry kind to create */
    uint64_t tat;           /* K_TAT: the new TAT */
    int64_t add;            /* K_COUNTER: amount to add (admission: > 0) */
    uint64_t expire_ms;     /* K_COUNTER, K_MARKER: expiry to set */
    char *lease_copy;       /* K_LEASES: preallocated id to insert */
};

/* Build base + suffix into st and look it up. */
static void step_key(struct tg_quota_local *q, struct step *st, const char *base,
                     const char *suffix, enum kind kind)
{
    int n = snprintf(st->key, sizeof(st->key), "%s%s", base, suffix);
    st->keylen = n < 0 ? 0 : (size_t)n < sizeof(st->key) ? (size_t)n : sizeof(st->key) - 1;
    st->hash = hash_key(st->key, st->keylen);
    st->e = find(q, st->key, st->keylen, st->hash);
    st->kind = kind;
    st->lease_copy = NULL;
    if (st->e && st->e->kind != kind)
        st->e = NULL; /* cannot happen: the suffix fixes the kind */
}

/* The TAT a bucket starts from: the stored one if ahead of now, else now. */
static uint64_t tat_of(const struct entry *e, uint64_t now_us)
{
    return e && e->kind == K_TAT && e->tat > now_us ? e->tat : now_us;
}

/* Allocate what the steps need; on failure free the lease copies made. */
static int prepare(struct tg_quota_local *q, struct step *steps, size_t n, const char *lease)
{
    for (size_t i = 0; i < n; i++) {
        struct step *st = &steps[i];
        if (!st->e) {
            st->e = create(q, st->key, st->keylen, st->hash, st->kind);
            if (!st->e)
                goto fail;
        }
        if (st->kind == K_LEASES) {
            if (st->e->nleases == st->e->cap) {
                size_t cap = st->e->cap ? 2 * st->e->cap : 4;
                struct lease *nl = tg_mem_realloc(st->e->leases, cap * sizeof(*nl));
                if (!nl)
                    goto fail;
                st->e->leases = nl;
                st->e->cap = cap;
            }
            st->lease_copy = tg_mem_strdup(lease);
            if (!st->lease_copy)
                goto fail;
        }
    }
    return 0;

fail:
    for (size_t i = 0; i < n; i++) {
        tg_mem_free(steps[i].lease_copy);
        steps[i].lease_copy = NULL;
    }
    return TG_E_NOMEM;
}

static void deny_out(struct tg_quota_decision *out)
{
    memset(out, 0, sizeof(*out));
    out->allowed = false;
    out->denied = -1;
    out->remaining[0] = out->remaining[1] = -1;
}

int tg_quota_local_admit(struct tg_quota_local *q, uint64_t now_us,
                         const struct tg_quota_admit *req, struct tg_quota_decision *out)
{
    char base[TG_QS_COUNT][TG_QUOTA_BASE_MAX];
    struct step steps[STEPS_MAX];
    size_t nsteps = 0;
    int nscopes = 1, denied = -1, rv = 0;
    uint64_t retry = 0;
    uint64_t now_ms = now_us / 1000;
    int64_t day = (int64_t)(now_us / TG_QUOTA_DAY_US);
    int64_t month = tg_quota_month_of_day(day);
    uint64_t day_end_ms = (uint64_t)(day + 1) * TG_QUOTA_DAY_MS;
    uint64_t month_end_ms = (uint64_t)tg_quota_month_first_day(month + 1) * TG_QUOTA_DAY_MS;
    /* Principal rpm/tpm: TAT before (tat0) and after (tatn, 0 = not charged). */
    uint64_t tat0[2] = {now_us, now_us}, tatn[2] = {0, 0};
    bool seen[2] = {false, false};

    deny_out(out);
    if (tg_quota_admit_check(req) < 0)
        return TG_E_INVALID;
    if (tg_quota_base(base[0], sizeof(base[0]), "", TG_QS_PRINCIPAL, req->principal) < 0)
        return TG_E_INVALID;
    if (tg_quota_has_tenant(req->tenant)) {
        if (tg_quota_base(base[1], sizeof(base[1]), "", TG_QS_TENANT, req->tenant) < 0)
            return TG_E_INVALID;
        nscopes = 2;
    }

    pthread_mutex_lock(&q->lock);
    sweep_some(q, now_us, SWEEP_STEP);

    /* Phase 1: check in order, reading only (expired leases may be dropped). */
    for (int s = 0; s < nscopes && denied < 0; s++) {
        for (int l = 0; l < TG_QL_COUNT && denied < 0; l++) {
            uint64_t L = req->lim[s].v[l];
            struct step *st = &steps[nsteps];
            bool ok = true;
            uint64_t wait = 0;
            char suffix[SUFFIX_MAX];

            if (L == 0)
                continue;
            switch ((enum tg_quota_limit)l) {
            case TG_QL_RPM:
            case TG_QL_TPM: {
                uint64_t n = l == TG_QL_RPM ? 1 : req->tokens;
                step_key(q, st, base[s], l == TG_QL_RPM ? "rpm" : "tpm", K_TAT);
                uint64_t t0 = tat_of(st->e, now_us), tn = 0;
                if (n > 0) {
                    if (n > L) {
                        ok = false;
                        wait = 60000;
                    } else {
                        tn = t0 + units(n, L, false);
                        if (tn - now_us > TG_QUOTA_WINDOW_US) {
                            ok = false;
                            wait = ceil_ms(tn - TG_QUOTA_WINDOW_US - now_us);
                        }
                    }
                    if (ok) {
                        st->tat = tn;
                        nsteps++;
                    }
                }
                if (s == 0) {
                    tat0[l] = t0;
                    tatn[l] = ok ? tn : 0;
                    seen[l] = true;
                }
                break;
            }
            case TG_QL_TPD:
            case TG_QL_CPD:
            case TG_QL_CPM: {
                uint64_t charge = l == TG_QL_TPD ? req->tokens : req->cost;
                uint64_t wend = l == TG_QL_CPM ? month_end_ms : day_end_ms;
                snprintf(suffix, sizeof(suffix), "%s:%" PRId64,
                         l == TG_QL_TPD ? "tpd" : l == TG_QL_CPD ? "cpd" : "cpm",
                         l == TG_QL_CPM ? month : day);
                step_key(q, st, base[s], suffix, K_COUNTER);
                uint64_t c = counter_live(st->e, now_ms) && st->e->value > 0
                                 ? (uint64_t)st->e->value
                                 : 0;
                if (c >= L || c + charge > L) {
                    ok = false;
                    wait = ceil_ms(wend * 1000 - now_us);
                } else if (charge > 0) {
                    st->add = (int64_t)charge;
                    st->expire_ms = wend + TG_QUOTA_DAY_MS;
                    nsteps++;
                }
                break;
            }
            case TG_QL_CONC: {
                step_key(q, st, base[s], "conc", K_LEASES);
                if (st->e)
                    prune(st->e, now_ms);
                size_t held = st->e ? st->e->nleases : 0;
                if (held >= L) {
                    uint64_t first = UINT64_MAX;
                    for (size_t i = 0; i < held; i++)
                        if (st->e->leases[i].expiry_ms < first)
                            first = st->e->leases[i].expiry_ms;
                    wait = first - now_ms; /* >= 1: pruned leases are all in the future */
                    if (wait > TG_QUOTA_CONC_RETRY_MS)
                        wait = TG_QUOTA_CONC_RETRY_MS;
                    ok = false;
                } else {
                    st->expire_ms = now_ms + req->lease_ttl_ms;
                    nsteps++;
                }
                break;
            }
            case TG_QL_COUNT:
                break;
            }
            if (!ok) {
                denied = s * TG_QL_COUNT + l;
                retry = wait;
            }
        }
    }

    /* Phase 2: allocate everything, then charge everything. */
    if (denied < 0) {
        rv = prepare(q, steps, nsteps, req->lease);
        if (rv < 0)
            goto out;
        for (size_t i = 0; i < nsteps; i++) {
            struct step *st = &steps[i];
            struct entry *e = st->e;
            switch (st->kind) {
            case K_TAT:
                e->tat = st->tat;
                break;
            case K_COUNTER:
                if (!counter_live(e, now_ms))
                    e->value = 0; /* created now, or expired in Redis terms */
                e->value += st->add;
                e->expire_ms = st->expire_ms;
                break;
            case K_LEASES: {
                size_t at = lease_index(e, req->lease);
                if (at != SIZE_MAX) { /* same id again: ZADD updates the score */
                    e->leases[at].expiry_ms = st->expire_ms;
                    tg_mem_free(st->lease_copy);
                } else {
                    e->leases[e->nleases].id = st->lease_copy;
                    e->leases[e->nleases].expiry_ms = st->expire_ms;
                    e->nleases++;
                }
                st->lease_copy = NULL;
                break;
            }
            case K_MARKER:
                break;
            }
        }
    }

    /* The principal's per-minute buckets as they stand after this call. */
    for (int l = 0; l < 2; l++) {
        uint64_t L = req->lim[0].v[l];
        if (L == 0) {
            out->remaining[l] = -1;
            out->reset_ms[l] = 0;
            continue;
        }
        if (!seen[l]) { /* not reached: an earlier limit refused */
            struct step tmp;
            step_key(q, &tmp, base[0], l == TG_QL_RPM ? "rpm" : "tpm", K_TAT);
            tat0[l] = tat_of(tmp.e, now_us);
        }
        uint64_t tat = denied < 0 && tatn[l] ? tatn[l] : tat0[l];
        out->remaining[l] = denied == l ? 0 : remaining(tat - now_us, L);
        out->reset_ms[l] = ceil_ms(tat - now_us);
    }
    out->allowed = denied < 0;
    out->denied = denied;
    out->retry_after_ms = retry;
    out->day = day;
    out->month = month;

out:
    pthread_mutex_unlock(&q->lock);
    return rv;
}

/* ---- settlement ---- */

int tg_quota_local_settle(struct tg_quota_local *q, uint64_t now_us,
                          const struct tg_quota_settle *req)
{
    char base[TG_QS_COUNT][TG_QUOTA_BASE_MAX];
    char marker[TG_QUOTA_KEY_MAX];
    struct step steps[STEPS_MAX + 1];
    size_t nsteps = 0;
    int nscopes = 1, rv;
    uint64_t now_ms = now_us / 1000;
    int64_t dtok, dcost;
    uint64_t day_exp_ms, month_exp_ms;

    if (tg_quota_settle_check(req) < 0)
        return TG_E_INVALID;
    if (tg_quota_base(base[0], sizeof(base[0]), "", TG_QS_PRINCIPAL, req->principal) < 0)
        return TG_E_INVALID;
    if (tg_quota_has_tenant(req->tenant)) {
        if (tg_quota_base(base[1], sizeof(base[1]), "", TG_QS_TENANT, req->tenant) < 0)
            return TG_E_INVALID;
        nscopes = 2;
    }
    dtok = (int64_t)req->tokens_actual - (int64_t)req->tokens_reserved;
    dcost = (int64_t)req->cost_actual - (int64_t)req->cost_reserved;
    day_exp_ms = (uint64_t)(req->day + 2) * TG_QUOTA_DAY_MS;
    month_exp_ms = (uint64_t)(tg_quota_month_first_day(req->month + 1) + 1) * TG_QUOTA_DAY_MS;
    snprintf(marker, sizeof(marker), "%ssettled:%s", base[0], req->lease);

    pthread_mutex_lock(&q->lock);
    sweep_some(q, now_us, SWEEP_STEP);

    /* Idempotency: a live marker means this lease was settled already. */
    {
        size_t ml = strlen(marker);
        struct entry *m = find(q, marker, ml, hash_key(marker, ml));
        if (m && m->kind == K_MARKER && now_ms < m->expire_ms) {
            rv = 0;
            goto out;
        }
        struct step *st = &steps[nsteps++];
        memcpy(st->key, marker, ml + 1);
        st->keylen = ml;
        st->hash = hash_key(marker, ml);
        st->e = m && m->kind == K_MARKER ? m : NULL;
        st->kind = K_MARKER;
        st->lease_copy = NULL;
        st->expire_ms = now_ms + TG_QUOTA_SETTLED_TTL_MS;
    }

    /* Plan the writes (reading only). */
    for (int s = 0; s < nscopes; s++) {
        const struct tg_quota_limits *lim = &req->lim[s];
        char suffix[SUFFIX_MAX];

        if (lim->v[TG_QL_TPM] > 0 && dtok != 0) {
            uint64_t L = lim->v[TG_QL_TPM];
            struct step *st = &steps[nsteps];
            step_key(q, st, base[s], "tpm", K_TAT);
            if (dtok > 0) {
                uint64_t t = tat_of(st->e, now_us) + units((uint64_t)dtok, L, false);
                if (t - now_us > TG_QUOTA_AHEAD_MAX_US)
                    t = now_us + TG_QUOTA_AHEAD_MAX_US;
                st->tat = t;
                nsteps++;
            } else if (st->e) {
                uint64_t back = units((uint64_t)-dtok, L, false);
                uint64_t t = st->e->tat;
                st->tat = t > now_us && t - now_us > back ? t - back : now_us;
                nsteps++;
            }
        }
        for (int l = TG_QL_TPD; l <= TG_QL_CPM; l++) {
            int64_t d = l == TG_QL_TPD ? dtok : dcost;
            uint64_t exp = l == TG_QL_CPM ? month_exp_ms : day_exp_ms;
            if (lim->v[l] == 0 || d == 0 || exp <= now_ms)
                continue;
            snprintf(suffix, sizeof(suffix), "%s:%" PRId64,
                     l == TG_QL_TPD ? "tpd" : l == TG_QL_CPD ? "cpd" : "cpm",
                     l == TG_QL_CPM ? req->month : req->day);
            struct step *st = &steps[nsteps];
            step_key(q, st, base[s], suffix, K_COUNTER);
            bool live = counter_live(st->e, now_ms);
            if (d < 0 && !live)
                continue; /* a refund to a missing counter does nothing */
            st->add = d;
            st->expire_ms = d > 0 ? exp : st->e->expire_ms; /* a refund keeps the TTL */
            nsteps++;
        }
    }

    rv = prepare(q, steps, nsteps, req->lease);
    if (rv < 0)
        goto out;

    /* Apply: nothing below allocates or fails. */
    for (size_t i = 0; i < nsteps; i++) {
        struct step *st = &steps[i];
        struct entry *e = st->e;
        switch (st->kind) {
        case K_MARKER:
            e->expire_ms = st->expire_ms;
            break;
        case K_TAT:
            e->tat = st->tat;
            break;
        case K_COUNTER:
            if (!counter_live(e, now_ms))
                e->value = 0; /* created now, or expired in Redis terms */
            e->value += st->add;
            if (e->value < 0)
                e->value = 0;
            e->expire_ms = st->expire_ms;
            break;
        case K_LEASES:
            break;
        }
    }
    /* Release the lease in both scopes, whatever the limits say now. */
    for (int s = 0; s < nscopes; s++) {
        struct step tmp;
        step_key(q, &tmp, base[s], "conc", K_LEASES);
        if (tmp.e) {
            size_t at = lease_index(tmp.e, req->lease);
            if (at != SIZE_MAX)
                lease_remove(tmp.e, at);
        }
    }
    rv = 1;

out:
    pthread_mutex_unlock(&q->lock);
    return rv;
}

/* ---- renewal, sweep, introspection ---- */

int tg_quota_local_renew(struct tg_quota_local *q, uint64_t now_us, const char *principal,
                         const char *tenant, const char *lease, uint64_t ttl_ms)
{
    char base[TG_QS_COUNT][TG_QUOTA_BASE_MAX];
    size_t ll = lease ? strnlen(lease, TG_QUOTA_LEASE_MAX + 1) : 0;
    uint64_t now_ms = now_us / 1000;
    int nscopes = 1, found = 0;

    if (ll == 0 || ll > TG_QUOTA_LEASE_MAX || ttl_ms < 1 || ttl_ms > TG_QUOTA_VALUE_MAX)
        return TG_E_INVALID;
    if (tg_quota_base(base[0], sizeof(base[0]), "", TG_QS_PRINCIPAL, principal) < 0)
        return TG_E_INVALID;
    if (tg_quota_has_tenant(tenant)) {
        if (tg_quota_base(base[1], sizeof(base[1]), "", TG_QS_TENANT, tenant) < 0)
            return TG_E_INVALID;
        nscopes = 2;
    }

    pthread_mutex_lock(&q->lock);
    sweep_some(q, now_us, SWEEP_STEP);
    for (int s = 0; s < nscopes; s++) {
        struct step tmp;
        step_key(q, &tmp, base[s], "conc", K_LEASES);
        if (!tmp.e)
            continue;
        prune(tmp.e, now_ms);
        size_t at = lease_index(tmp.e, lease);
        if (at != SIZE_MAX) {
            tmp.e->leases[at].expiry_ms = now_ms + ttl_ms;
            found = 1;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return found;
}

size_t tg_quota_local_sweep(struct tg_quota_local *q, uint64_t now_us)
{
    size_t left;

    pthread_mutex_lock(&q->lock);
    q->cursor = 0;
    sweep_some(q, now_us, q->nbuckets);
    /* Give memory back after a burst of principals has gone quiet. */
    size_t n = q->nbuckets;
    while (n > BUCKETS_MIN && q->count < n / 8)
        n /= 2;
    if (n != q->nbuckets)
        resize(q, n);
    left = q->count;
    pthread_mutex_unlock(&q->lock);
    return left;
}

size_t tg_quota_local_count(struct tg_quota_local *q)
{
    size_t n;
    pthread_mutex_lock(&q->lock);
    n = q->count;
    pthread_mutex_unlock(&q->lock);
    return n;
}

int tg_quota_local_peek(struct tg_quota_local *q, uint64_t now_us, const char *key,
                        int64_t *value)
{
    size_t len = strlen(key);
    int rv = 0;

    *value = 0;
    pthread_mutex_lock(&q->lock);
    struct entry *e = find(q, key, len, hash_key(key, len));
    if (e && !neutral(e, now_us)) {
        rv = 1;
        switch (e->kind) {
        case K_TAT:
            *value = (int64_t)e->tat;
            break;
        case K_COUNTER:
            *value = e->value;
            break;
        case K_LEASES:
            *value = (int64_t)e->nleases;
            break;
        case K_MARKER:
            *value = 1;
            break;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return rv;
}
