/*
 * quota_local.c - in-process quota state with the semantics of the scripts in lua/.
 *
 * Every rule mirrors a line of the scripts; when one changes, so must the
 * other (test_quota_redis.c runs both side by side).  The state is a
 * chained hash table from the Redis key name to a small tagged entry; a
 * lease set is itself a hash table of leases (O(1) per lease operation);
 * settlement markers live in a second table and a queue in creation order,
 * so they are freed as they expire without the sweep walking live ones.
 * Entries whose key fits POOL_KEY are recycled through a bounded pool, and
 * lease ids up to LEASE_INLINE bytes live in their slot: a steady stream
 * of requests allocates nothing once its first markers have expired.
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
#include "proxy/buf.h"
#include "proxy/err.h"
#include "proxy/mem.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define BUCKETS_MIN 64  /* a table never shrinks below this */
#define SWEEP_STEP 8    /* main-table buckets examined on each call */
#define MARK_POP 32     /* expired settlement markers freed on each call, at most */
#define SUFFIX_MAX 32   /* "tpd:" / "cpm:" plus a 20-digit number */
#define STEP_KEY_MAX (TG_QUOTA_BASE_MAX + SUFFIX_MAX)
#define STEPS_MAX (TG_QS_COUNT * TG_QL_COUNT)
#define POOL_KEY 104    /* keys up to this many bytes (NUL included) use pooled entries */
#define POOL_MAX 1024   /* freed pooled entries kept for reuse (tg_quota_local_sweep drops them) */
#define LEASE_INLINE 48 /* lease ids up to this long are stored in the slot (tollgate's: 33) */
#define LEASES_MIN 8    /* smallest lease table */

enum kind {
    K_TAT = 1,  /* rpm, tpm: theoretical arrival time */
    K_COUNTER,  /* tpd, cpd, cpm: window counter */
    K_LEASES,   /* conc: lease set */
    K_MARKER,   /* settled:<lease> (in the marker table) */
};

/*
 * A lease set is an open-addressing table (linear probing, backward-shift
 * deletion, load <= 0.7) of lease slots keyed by id, so admission, renewal
 * and settlement find a lease in O(1).  Expired leases are not removed on
 * every call: n counts the stored leases (live or expired), and since
 * live <= n, a set with n below the limit admits without looking further.
 * min_ms is a lower bound of the stored expiries (exact when min_exact);
 * while now < min_ms nothing has expired, so pruning (a full scan) runs
 * only when something may have expired and the set is at its limit, is
 * about to grow, or is visited by the sweep: at most once per lease
 * lifetime under steady traffic.
 */
struct lease {
    uint64_t expiry_ms; /* live while now_ms < expiry_ms; 0: empty slot */
    uint32_t hash;      /* hash of the id */
    uint32_t len;       /* id length */
    union {
        char in[LEASE_INLINE]; /* len <= LEASE_INLINE */
        char *heap;            /* longer ids (tg_mem) */
    } id;
};

struct entry {
    struct entry *next; /* bucket chain (or pool free list) */
    uint64_t hash;      /* full hash of key */
    uint32_t keylen;    /* bytes of key */
    uint8_t kind;       /* enum kind: which member of u is in use */
    bool pooled;        /* allocated with POOL_KEY bytes of key room */
    union {
        uint64_t tat; /* K_TAT: microseconds; neutral when <= now */
        struct {
            int64_t value;      /* amount used in the window */
            uint64_t expire_ms; /* gone at this time (Redis TTL) */
        } c;                    /* K_COUNTER */
        struct {
            uint64_t expire_ms; /* gone at this time (Redis TTL) */
            struct entry *qnext; /* next marker in creation order */
        } m;                     /* K_MARKER */
        struct {
            struct lease *slots; /* cap slots, or NULL when cap is 0 */
            uint32_t cap;        /* power of two, or 0 */
            uint32_t n;          /* leases stored (live or expired) */
            uint64_t min_ms;     /* <= every stored expiry */
            bool min_exact;      /* min_ms is a stored expiry */
        } l;                     /* K_LEASES */
    } u;
    char key[]; /* key name, NUL-terminated */
};

/* A chained hash table of entries. */
struct table {
    struct entry **buckets; /* nbuckets chains */
    size_t nbuckets;        /* power of two */
    size_t count;           /* entries in the table */
};

struct tg_quota_local {
    pthread_mutex_t lock;         /* guards everything below */
    struct table main;            /* rpm, tpm, counters, lease sets */
    struct table marks;           /* settlement markers */
    struct entry *qhead, *qtail;  /* every marker, in creation order */
    size_t cursor;                /* next main bucket of the amortised sweep */
    struct entry *pool;           /* free pooled entries */
    size_t npool;                 /* entries in pool */
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

/* ---- the tables ---- */

static uint64_t hash_key(const char *k, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)k[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static struct entry *find(const struct table *t, const char *key, size_t len, uint64_t h)
{
    for (struct entry *e = t->buckets[h & (t->nbuckets - 1)]; e; e = e->next)
        if (e->hash == h && e->keylen == len && memcmp(e->key, key, len) == 0)
            return e;
    return NULL;
}

/* Rehash into n buckets; on allocation failure keep the old table (longer chains). */
static void resize(struct table *t, size_t n)
{
    struct entry **nb = tg_mem_calloc(n, sizeof(*nb));
    if (!nb)
        return;
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct entry *e = t->buckets[i];
        while (e) {
            struct entry *next = e->next;
            e->next = nb[e->hash & (n - 1)];
            nb[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    tg_mem_free(t->buckets);
    t->buckets = nb;
    t->nbuckets = n;
}

/* Remove e from its chain (it must be in t). */
static void unlink_entry(struct table *t, struct entry *e)
{
    struct entry **pp = &t->buckets[e->hash & (t->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    t->count--;
}

/* Halve t while it is mostly empty (memory back after a burst). */
static void maybe_shrink(struct table *t)
{
    size_t n = t->nbuckets;
    while (n > BUCKETS_MIN && t->count < n / 8)
        n /= 2;
    if (n != t->nbuckets)
        resize(t, n);
}

static const char *lease_id(const struct lease *l)
{
    return l->len <= LEASE_INLINE ? l->id.in : l->id.heap;
}

/* Free an entry's own allocations and the entry (or keep it in the pool). */
static void entry_release(struct tg_quota_local *q, struct entry *e)
{
    if (e->kind == K_LEASES) {
        for (uint32_t i = 0; i < e->u.l.cap; i++)
            if (e->u.l.slots[i].expiry_ms && e->u.l.slots[i].len > LEASE_INLINE)
                tg_mem_free(e->u.l.slots[i].id.heap);
        tg_mem_free(e->u.l.slots);
    }
    if (e->pooled && q->npool < POOL_MAX) {
        e->next = q->pool;
        q->pool = e;
        q->npool++;
    } else {
        tg_mem_free(e);
    }
}

static void pool_drain(struct tg_quota_local *q)
{
    while (q->pool) {
        struct entry *e = q->pool;
        q->pool = e->next;
        tg_mem_free(e);
    }
    q->npool = 0;
}

/* A new neutral entry of the given kind, inserted; NULL when out of memory. */
static struct entry *create(struct tg_quota_local *q, const char *key, size_t len, uint64_t h,
                            enum kind kind)
{
    struct table *t = kind == K_MARKER ? &q->marks : &q->main;
    struct entry *e;
    bool pooled = len + 1 <= POOL_KEY;

    if (pooled && q->pool) {
        e = q->pool;
        q->pool = e->next;
        q->npool--;
    } else {
        e = tg_mem_malloc(sizeof(*e) + (pooled ? POOL_KEY : len + 1));
        if (!e)
            return NULL;
    }
    memset(e, 0, sizeof(*e));
    e->pooled = pooled;
    e->hash = h;
    e->kind = (uint8_t)kind;
    e->keylen = (uint32_t)len;
    memcpy(e->key, key, len);
    e->key[len] = '\0';
    e->next = t->buckets[h & (t->nbuckets - 1)];
    t->buckets[h & (t->nbuckets - 1)] = e;
    t->count++;
    if (kind == K_MARKER) { /* every marker is queued, even one a failed call left neutral */
        if (q->qtail)
            q->qtail->u.m.qnext = e;
        else
            q->qhead = e;
        q->qtail = e;
    }
    if (t->count > 2 * t->nbuckets)
        resize(t, 2 * t->nbuckets);
    return e;
}

/* ---- lease sets ---- */

static size_t lease_find(const struct entry *e, const char *id, size_t len, uint32_t h)
{
    if (e->u.l.cap == 0)
        return SIZE_MAX;
    size_t mask = e->u.l.cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const struct lease *l = &e->u.l.slots[i];
        if (!l->expiry_ms)
            return SIZE_MAX;
        if (l->hash == h && l->len == len && memcmp(lease_id(l), id, len) == 0)
            return i;
    }
}

/* Keep min_ms a lower bound after a lease got expiry exp. */
static void lease_min_note(struct entry *e, uint64_t exp)
{
    if (e->u.l.n == 1 || exp <= e->u.l.min_ms) {
        e->u.l.min_ms = exp;
        e->u.l.min_exact = true;
    }
}

/* Insert a lease that is not in the set; room must have been made (lease_room). */
static void lease_put(struct entry *e, const char *id, uint32_t len, uint32_t h, uint64_t exp,
                      char *heap)
{
    size_t mask = e->u.l.cap - 1, i = h & mask;
    while (e->u.l.slots[i].expiry_ms)
        i = (i + 1) & mask;
    struct lease *l = &e->u.l.slots[i];
    l->expiry_ms = exp;
    l->hash = h;
    l->len = len;
    if (len <= LEASE_INLINE)
        memcpy(l->id.in, id, len);
    else
        l->id.heap = heap;
    e->u.l.n++;
    lease_min_note(e, exp);
}

static void lease_set_expiry(struct entry *e, size_t i, uint64_t exp)
{
    struct lease *l = &e->u.l.slots[i];
    if (l->expiry_ms == e->u.l.min_ms && exp > l->expiry_ms)
        e->u.l.min_exact = false;
    l->expiry_ms = exp;
    lease_min_note(e, exp);
}

/* Remove slot i (backward-shift deletion keeps every probe chain intact). */
static void lease_del(struct entry *e, size_t i)
{
    struct lease *s = e->u.l.slots;
    size_t mask = e->u.l.cap - 1, j = i;

    if (s[i].len > LEASE_INLINE)
        tg_mem_free(s[i].id.heap);
    if (s[i].expiry_ms == e->u.l.min_ms)
        e->u.l.min_exact = false;
    e->u.l.n--;
    for (;;) {
        j = (j + 1) & mask;
        if (!s[j].expiry_ms)
            break;
        size_t home = s[j].hash & mask;
        /* s[j] may fill the hole unless its home lies cyclically in (i, j]. */
        bool stay = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!stay) {
            s[i] = s[j];
            i = j;
        }
    }
    s[i].expiry_ms = 0;
}

/* Move the leases into a table of cap slots (0: none); false when out of memory. */
static bool lease_rehash(struct entry *e, uint32_t cap)
{
    struct lease *ns = NULL;
    if (cap) {
        ns = tg_mem_calloc(cap, sizeof(*ns));
        if (!ns)
            return false;
        for (uint32_t i = 0; i < e->u.l.cap; i++) {
            const struct lease *l = &e->u.l.slots[i];
            if (!l->expiry_ms)
                continue;
            size_t k = l->hash & (cap - 1);
            while (ns[k].expiry_ms)
                k = (k + 1) & (cap - 1);
            ns[k] = *l;
        }
    }
    tg_mem_free(e->u.l.slots);
    e->u.l.slots = ns;
    e->u.l.cap = cap;
    return true;
}

/*
 * Drop the expired leases (expiry <= now, as ZREMRANGEBYSCORE -inf now) when
 * some may have expired; with exact, also make min_ms exact.  A scan, done
 * at most once per lease lifetime unless the set sits at its limit; gives a
 * mostly empty table's memory back (a failed shrink keeps the table).
 */
static void lease_prune(struct entry *e, uint64_t now_ms, bool exact)
{
    if (e->u.l.n == 0 || (e->u.l.min_ms > now_ms && (e->u.l.min_exact || !exact)))
        return;
    uint64_t m = UINT64_MAX;
    for (size_t i = 0; i < e->u.l.cap;) {
        uint64_t x = e->u.l.slots[i].expiry_ms;
        if (x && x <= now_ms) {
            lease_del(e, i); /* slot i may now hold a later lease: look again */
            continue;
        }
        if (x && x < m)
            m = x;
        i++;
    }
    e->u.l.min_ms = m;
    e->u.l.min_exact = true;
    if (e->u.l.n == 0)
        (void)lease_rehash(e, 0);
    else if (e->u.l.cap > LEASES_MIN && (size_t)e->u.l.n * 8 < e->u.l.cap) {
        uint32_t cap = e->u.l.cap;
        while (cap > LEASES_MIN && (size_t)e->u.l.n * 4 < cap)
            cap /= 2;
        (void)lease_rehash(e, cap);
    }
}

/* Make room for one more lease; false when out of memory (nothing lost). */
static bool lease_room(struct entry *e, uint64_t now_ms)
{
    if (((size_t)e->u.l.n + 1) * 10 <= (size_t)e->u.l.cap * 7)
        return true;
    lease_prune(e, now_ms, false);
    if (((size_t)e->u.l.n + 1) * 10 <= (size_t)e->u.l.cap * 7)
        return true;
    if (e->u.l.cap >= (1u << 30))
        return false;
    return lease_rehash(e, e->u.l.cap ? 2 * e->u.l.cap : LEASES_MIN);
}

/* A counter that Redis would still hold (its TTL has not passed). */
static bool counter_live(const struct entry *e, uint64_t now_ms)
{
    return e && e->kind == K_COUNTER && now_ms < e->u.c.expire_ms;
}

/* True when the entry holds nothing a later call could observe. */
static bool neutral(struct entry *e, uint64_t now_us)
{
    uint64_t now_ms = now_us / 1000;
    switch ((enum kind)e->kind) {
    case K_TAT:
        return e->u.tat <= now_us;
    case K_COUNTER:
        return e->u.c.value <= 0 || !counter_live(e, now_ms);
    case K_LEASES:
        lease_prune(e, now_ms, false);
        return e->u.l.n == 0;
    case K_MARKER:
        return now_ms >= e->u.m.expire_ms;
    }
    return true;
}

/* Free the neutral entries of n main buckets from the cursor on. */
static void sweep_some(struct tg_quota_local *q, uint64_t now_us, size_t n)
{
    struct table *t = &q->main;
    for (size_t k = 0; k < n; k++) {
        struct entry **pp = &t->buckets[q->cursor & (t->nbuckets - 1)];
        while (*pp) {
            struct entry *e = *pp;
            if (neutral(e, now_us)) {
                *pp = e->next;
                entry_release(q, e);
                t->count--;
            } else {
                pp = &e->next;
            }
        }
        q->cursor = (q->cursor + 1) & (t->nbuckets - 1);
    }
}

/*
 * Free up to max expired markers from the head of the creation queue.  The
 * marker lifetime is a constant, so under a steady clock the queue is in
 * expiry order and this frees each marker soon after it expires without
 * scanning live ones; a marker re-armed in place or a clock step back only
 * delays the ones behind it (tg_quota_local_sweep frees them all).
 */
static void marks_expire(struct tg_quota_local *q, uint64_t now_ms, size_t max)
{
    while (q->qhead && max-- > 0) {
        struct entry *e = q->qhead;
        if (now_ms < e->u.m.expire_ms)
            break;
        q->qhead = e->u.m.qnext;
        if (!q->qhead)
            q->qtail = NULL;
        unlink_entry(&q->marks, e);
        entry_release(q, e);
    }
    if (q->marks.count < q->marks.nbuckets / 8)
        maybe_shrink(&q->marks);
}

/* The amortised housekeeping every call does. */
static void housekeep(struct tg_quota_local *q, uint64_t now_us)
{
    sweep_some(q, now_us, SWEEP_STEP);
    marks_expire(q, now_us / 1000, MARK_POP);
}

static bool table_init(struct table *t)
{
    t->buckets = tg_mem_calloc(BUCKETS_MIN, sizeof(*t->buckets));
    t->nbuckets = BUCKETS_MIN;
    t->count = 0;
    return t->buckets != NULL;
}

struct tg_quota_local *tg_quota_local_new(void)
{
    struct tg_quota_local *q = tg_mem_calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    if (!table_init(&q->main))
        goto fail;
    if (!table_init(&q->marks))
        goto fail;
    if (pthread_mutex_init(&q->lock, NULL) != 0)
        goto fail;
    return q;

fail:
    tg_mem_free(q->main.buckets);
    tg_mem_free(q->marks.buckets);
    tg_mem_free(q);
    return NULL;
}

static void table_free(struct tg_quota_local *q, struct table *t)
{
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct entry *e = t->buckets[i];
        while (e) {
            struct entry *next = e->next;
            entry_release(q, e);
            e = next;
        }
    }
    tg_mem_free(t->buckets);
}

void tg_quota_local_free(struct tg_quota_local *q)
{
    if (!q)
        return;
    table_free(q, &q->main);
    table_free(q, &q->marks);
    pool_drain(q);
    pthread_mutex_destroy(&q->lock);
    tg_mem_free(q);
}

/* ---- keys ---- */

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
    uint64_t expire_ms;     /* K_COUNTER, K_MARKER, K_LEASES: expiry to set */
    char *lease_copy;       /* K_LEASES: preallocated copy of a long lease id */
};

/* A scope's key base and its length. */
struct base {
    char s[TG_QUOTA_BASE_MAX];
    size_t len;
};

/* Build base + suffix (+ a decimal number when num >= 0) into st and look it up. */
static void step_key(struct tg_quota_local *q, struct step *st, const struct base *b,
                     const char *suffix, int64_t num, enum kind kind)
{
    size_t sl = strlen(suffix), n = b->len;
    memcpy(st->key, b->s, n);
    memcpy(st->key + n, suffix, sl);
    n += sl;
    if (num >= 0) {
        st->key[n++] = ':';
        n = (size_t)(tg_u64_dec(st->key + n, (uint64_t)num) - st->key);
    }
    st->key[n] = '\0';
    st->keylen = n;
    st->hash = hash_key(st->key, n);
    st->e = find(&q->main, st->key, n, st->hash);
    st->kind = kind;
    st->lease_copy = NULL;
    if (st->e && st->e->kind != kind)
        st->e = NULL; /* cannot happen: the suffix fixes the kind */
}

static int scope_bases(struct base b[TG_QS_COUNT], const char *principal, const char *tenant,
                       int *nscopes)
{
    int n = tg_quota_base(b[0].s, sizeof(b[0].s), "", TG_QS_PRINCIPAL, principal);
    if (n < 0)
        return TG_E_INVALID;
    b[0].len = (size_t)n;
    *nscopes = 1;
    if (tg_quota_has_tenant(tenant)) {
        n = tg_quota_base(b[1].s, sizeof(b[1].s), "", TG_QS_TENANT, tenant);
        if (n < 0)
            return TG_E_INVALID;
        b[1].len = (size_t)n;
        *nscopes = 2;
    }
    return 0;
}

/* The TAT a bucket starts from: the stored one if ahead of now, else now. */
static uint64_t tat_of(const struct entry *e, uint64_t now_us)
{
    return e && e->kind == K_TAT && e->u.tat > now_us ? e->u.tat : now_us;
}

/* Allocate what the steps need; on failure free the lease copies made. */
static int prepare(struct tg_quota_local *q, struct step *steps, size_t n, const char *lease,
                   size_t ll, uint32_t lh, uint64_t now_ms)
{
    for (size_t i = 0; i < n; i++) {
        struct step *st = &steps[i];
        if (!st->e) {
            st->e = create(q, st->key, st->keylen, st->hash, st->kind);
            if (!st->e)
                goto fail;
        }
        if (st->kind == K_LEASES && lease_find(st->e, lease, ll, lh) == SIZE_MAX) {
            if (!lease_room(st->e, now_ms))
                goto fail;
            if (ll > LEASE_INLINE) {
                st->lease_copy = tg_mem_strndup(lease, ll);
                if (!st->lease_copy)
                    goto fail;
            }
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

static const char *const counter_name[3] = {"tpd", "cpd", "cpm"};

int tg_quota_local_admit(struct tg_quota_local *q, uint64_t now_us,
                         const struct tg_quota_admit *req, struct tg_quota_decision *out)
{
    struct base base[TG_QS_COUNT];
    struct step steps[STEPS_MAX];
    size_t nsteps = 0, ll;
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
    uint32_t lh;

    deny_out(out);
    if (tg_quota_admit_check(req) < 0)
        return TG_E_INVALID;
    if (scope_bases(base, req->principal, req->tenant, &nscopes) < 0)
        return TG_E_INVALID;
    ll = strlen(req->lease);
    lh = (uint32_t)hash_key(req->lease, ll);

    pthread_mutex_lock(&q->lock);
    housekeep(q, now_us);

    /* Phase 1: check in order, reading only (expired leases may be dropped). */
    for (int s = 0; s < nscopes && denied < 0; s++) {
        for (int l = 0; l < TG_QL_COUNT && denied < 0; l++) {
            uint64_t L = req->lim[s].v[l];
            struct step *st = &steps[nsteps];
            bool ok = true;
            uint64_t wait = 0;

            if (L == 0)
                continue;
            switch ((enum tg_quota_limit)l) {
            case TG_QL_RPM:
            case TG_QL_TPM: {
                uint64_t n = l == TG_QL_RPM ? 1 : req->tokens;
                step_key(q, st, &base[s], l == TG_QL_RPM ? "rpm" : "tpm", -1, K_TAT);
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
                step_key(q, st, &base[s], counter_name[l - TG_QL_TPD],
                         l == TG_QL_CPM ? month : day, K_COUNTER);
                uint64_t c = counter_live(st->e, now_ms) && st->e->u.c.value > 0
                                 ? (uint64_t)st->e->u.c.value
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
                step_key(q, st, &base[s], "conc", -1, K_LEASES);
                /* Stored leases bound the live ones: prune only at the limit. */
                size_t held = st->e ? st->e->u.l.n : 0;
                if (held >= L) {
                    lease_prune(st->e, now_ms, true);
                    held = st->e->u.l.n;
                }
                if (held >= L) {
                    /* All live, min_ms exact: the first to expire. */
                    wait = st->e->u.l.min_ms - now_ms; /* >= 1 */
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
        rv = prepare(q, steps, nsteps, req->lease, ll, lh, now_ms);
        if (rv < 0)
            goto out;
        for (size_t i = 0; i < nsteps; i++) {
            struct step *st = &steps[i];
            struct entry *e = st->e;
            switch (st->kind) {
            case K_TAT:
                e->u.tat = st->tat;
                break;
            case K_COUNTER:
                if (!counter_live(e, now_ms))
                    e->u.c.value = 0; /* created now, or expired in Redis terms */
                e->u.c.value += st->add;
                e->u.c.expire_ms = st->expire_ms;
                break;
            case K_LEASES: {
                size_t at = lease_find(e, req->lease, ll, lh);
                if (at != SIZE_MAX) /* same id again: ZADD updates the score */
                    lease_set_expiry(e, at, st->expire_ms);
                else
                    lease_put(e, req->lease, (uint32_t)ll, lh, st->expire_ms, st->lease_copy);
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
            step_key(q, &tmp, &base[0], l == TG_QL_RPM ? "rpm" : "tpm", -1, K_TAT);
            tat0[l] = tat_of(tmp.e, now_us);
        }
        uint64_t tat = denied < 0 && tatn[l] ? tatn[l] : tat0[l];
        out->remaining[l] = denied == l ? 0 : tg_quota_gcra_remaining(tat - now_us, L);
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

/* Drop lease id from a scope's set, if held. */
static void release_lease(struct tg_quota_local *q, const struct base *b, const char *lease,
                          size_t ll, uint32_t lh)
{
    struct step tmp;
    step_key(q, &tmp, b, "conc", -1, K_LEASES);
    if (tmp.e) {
        size_t at = lease_find(tmp.e, lease, ll, lh);
        if (at != SIZE_MAX)
            lease_del(tmp.e, at);
    }
}

int tg_quota_local_settle(struct tg_quota_local *q, uint64_t now_us,
                          const struct tg_quota_settle *req)
{
    struct base base[TG_QS_COUNT];
    struct step steps[STEPS_MAX + 1];
    size_t nsteps = 0, ll;
    int nscopes = 1, rv;
    uint64_t now_ms = now_us / 1000;
    int64_t dtok, dcost;
    uint64_t day_exp_ms, month_exp_ms;
    uint32_t lh;

    if (tg_quota_settle_check(req) < 0)
        return TG_E_INVALID;
    if (scope_bases(base, req->principal, req->tenant, &nscopes) < 0)
        return TG_E_INVALID;
    ll = strlen(req->lease);
    lh = (uint32_t)hash_key(req->lease, ll);
    dtok = (int64_t)req->tokens_actual - (int64_t)req->tokens_reserved;
    dcost = (int64_t)req->cost_actual - (int64_t)req->cost_reserved;
    day_exp_ms = (uint64_t)(req->day + 2) * TG_QUOTA_DAY_MS;
    month_exp_ms = (uint64_t)(tg_quota_month_first_day(req->month + 1) + 1) * TG_QUOTA_DAY_MS;

    /* The marker key: principal base, "settled:", lease id. */
    {
        struct step *st = &steps[nsteps++];
        size_t n = base[0].len;
        memcpy(st->key, base[0].s, n);
        memcpy(st->key + n, "settled:", 8);
        memcpy(st->key + n + 8, req->lease, ll + 1);
        st->keylen = n + 8 + ll;
        st->hash = hash_key(st->key, st->keylen);
        st->kind = K_MARKER;
        st->lease_copy = NULL;
        st->expire_ms = now_ms + TG_QUOTA_SETTLED_TTL_MS;
    }

    pthread_mutex_lock(&q->lock);
    housekeep(q, now_us);

    /* Idempotency: a live marker means this lease was settled already. */
    steps[0].e = find(&q->marks, steps[0].key, steps[0].keylen, steps[0].hash);
    if (steps[0].e && now_ms < steps[0].e->u.m.expire_ms) {
        rv = 0;
        goto out;
    }

    /* Plan the writes (reading only). */
    for (int s = 0; s < nscopes; s++) {
        const struct tg_quota_limits *lim = &req->lim[s];

        if (lim->v[TG_QL_TPM] > 0 && dtok != 0) {
            uint64_t L = lim->v[TG_QL_TPM];
            struct step *st = &steps[nsteps];
            step_key(q, st, &base[s], "tpm", -1, K_TAT);
            if (dtok > 0) {
                uint64_t t = tat_of(st->e, now_us) + units((uint64_t)dtok, L, false);
                if (t - now_us > TG_QUOTA_AHEAD_MAX_US)
                    t = now_us + TG_QUOTA_AHEAD_MAX_US;
                st->tat = t;
                nsteps++;
            } else if (st->e) {
                uint64_t back = units((uint64_t)-dtok, L, false);
                uint64_t t = st->e->u.tat;
                st->tat = t > now_us && t - now_us > back ? t - back : now_us;
                nsteps++;
            }
        }
        for (int l = TG_QL_TPD; l <= TG_QL_CPM; l++) {
            int64_t d = l == TG_QL_TPD ? dtok : dcost;
            uint64_t exp = l == TG_QL_CPM ? month_exp_ms : day_exp_ms;
            if (lim->v[l] == 0 || d == 0 || exp <= now_ms)
                continue;
            struct step *st = &steps[nsteps];
            step_key(q, st, &base[s], counter_name[l - TG_QL_TPD],
                     l == TG_QL_CPM ? req->month : req->day, K_COUNTER);
            bool live = counter_live(st->e, now_ms);
            if (d < 0 && !live)
                continue; /* a refund to a missing counter does nothing */
            st->add = d;
            st->expire_ms = d > 0 ? exp : st->e->u.c.expire_ms; /* a refund keeps the TTL */
            nsteps++;
        }
    }

    rv = prepare(q, steps, nsteps, req->lease, ll, lh, now_ms);
    if (rv < 0)
        goto out;

    /* Apply: nothing below allocates or fails. */
    for (size_t i = 0; i < nsteps; i++) {
        struct step *st = &steps[i];
        struct entry *e = st->e;
        switch (st->kind) {
        case K_MARKER:
            e->u.m.expire_ms = st->expire_ms;
            break;
        case K_TAT:
            e->u.tat = st->tat;
            break;
        case K_COUNTER:
            if (!counter_live(e, now_ms))
                e->u.c.value = 0; /* created now, or expired in Redis terms */
            e->u.c.value += st->add;
            if (e->u.c.value < 0)
                e->u.c.value = 0;
            e->u.c.expire_ms = st->expire_ms;
            break;
        case K_LEASES:
            break;
        }
    }
    /* Release the lease in both scopes, whatever the limits say now. */
    for (int s = 0; s < nscopes; s++)
        release_lease(q, &base[s], req->lease, ll, lh);
    rv = 1;

out:
    pthread_mutex_unlock(&q->lock);
    return rv;
}

/* ---- renewal, sweep, introspection ---- */

int tg_quota_local_renew(struct tg_quota_local *q, uint64_t now_us, const char *principal,
                         const char *tenant, const char *lease, uint64_t ttl_ms)
{
    struct base base[TG_QS_COUNT];
    size_t ll = lease ? strnlen(lease, TG_QUOTA_LEASE_MAX + 1) : 0;
    uint64_t now_ms = now_us / 1000;
    int nscopes = 1, found = 0;

    if (ll == 0 || ll > TG_QUOTA_LEASE_MAX || ttl_ms < 1 || ttl_ms > TG_QUOTA_VALUE_MAX)
        return TG_E_INVALID;
    if (scope_bases(base, principal, tenant, &nscopes) < 0)
        return TG_E_INVALID;
    uint32_t lh = (uint32_t)hash_key(lease, ll);

    pthread_mutex_lock(&q->lock);
    housekeep(q, now_us);
    for (int s = 0; s < nscopes; s++) {
        struct step tmp;
        step_key(q, &tmp, &base[s], "conc", -1, K_LEASES);
        if (!tmp.e)
            continue;
        size_t at = lease_find(tmp.e, lease, ll, lh);
        if (at == SIZE_MAX)
            continue;
        if (tmp.e->u.l.slots[at].expiry_ms <= now_ms) {
            lease_del(tmp.e, at); /* expired: as if pruned, never revived */
        } else {
            lease_set_expiry(tmp.e, at, now_ms + ttl_ms);
            found = 1;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return found;
}

size_t tg_quota_local_sweep(struct tg_quota_local *q, uint64_t now_us)
{
    size_t left;
    uint64_t now_ms = now_us / 1000;

    pthread_mutex_lock(&q->lock);
    q->cursor = 0;
    sweep_some(q, now_us, q->main.nbuckets);
    maybe_shrink(&q->main);
    /* Every expired marker, wherever it sits in the queue. */
    for (struct entry **pp = &q->qhead, *prev = NULL; *pp;) {
        struct entry *e = *pp;
        if (now_ms >= e->u.m.expire_ms) {
            *pp = e->u.m.qnext;
            if (q->qtail == e)
                q->qtail = prev;
            unlink_entry(&q->marks, e);
            entry_release(q, e);
        } else {
            prev = e;
            pp = &e->u.m.qnext;
        }
    }
    maybe_shrink(&q->marks);
    pool_drain(q);
    left = q->main.count + q->marks.count;
    pthread_mutex_unlock(&q->lock);
    return left;
}

size_t tg_quota_local_count(struct tg_quota_local *q)
{
    size_t n;
    pthread_mutex_lock(&q->lock);
    n = q->main.count + q->marks.count;
    pthread_mutex_unlock(&q->lock);
    return n;
}

int tg_quota_local_peek(struct tg_quota_local *q, uint64_t now_us, const char *key,
                        int64_t *value)
{
    size_t len = strlen(key);
    uint64_t h = hash_key(key, len);
    int rv = 0;

    *value = 0;
    pthread_mutex_lock(&q->lock);
    struct entry *e = find(&q->main, key, len, h);
    if (!e)
        e = find(&q->marks, key, len, h);
    if (e && !neutral(e, now_us)) {
        rv = 1;
        switch ((enum kind)e->kind) {
        case K_TAT:
            *value = (int64_t)e->u.tat;
            break;
        case K_COUNTER:
            *value = e->u.c.value;
            break;
        case K_LEASES:
            *value = (int64_t)e->u.l.n;
            break;
        case K_MARKER:
            *value = 1;
            break;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return rv;
}
