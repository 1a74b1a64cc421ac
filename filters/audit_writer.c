/*
 * audit_writer.c - the audit log writer thread (SPEC §7, THREATS §6).
 *
 * Threads meet in one mutex: submitters push a json_t pointer into a ring of
 * queue_records slots and signal cv_work; the writer copies up to
 * BATCH_RECORDS pointers out, formats them outside the lock (seq, prev, HMAC),
 * and only then pops them, so a record leaves the queue exactly when it has
 * become bytes in the batch buffer.  Those bytes are written with one write(2)
 * per batch on an O_APPEND descriptor.
 *
 * Nothing formatted is ever thrown away while the writer runs: a failed or
 * short write keeps the batch and its offset (boff), and the next attempt
 * writes only the rest, after a backoff of 100 ms doubling to 1 s.  Meanwhile
 * the queue fills, and once it is full tg_audit_submit(block=false) refuses,
 * which is how on_queue_full "reject" turns a full disk into 503s instead of
 * unaudited traffic.  Seqs are assigned at formatting time, so a retried batch
 * keeps its seqs and none is ever reused.  Only stop() gives up, after
 * STOP_GRACE_MS of failures, and says so in the error log.
 *
 * Startup recovery reads the tail of the file (at most two maximal lines),
 * checks the last complete line's own hmac with the key and continues its
 * chain.  A torn tail (no final newline) is left in place and the first batch
 * starts with "\n"; if the torn tail happens to be a complete record of this
 * chain that only lost its newline, the chain continues from it instead, so
 * its seq is not issued twice.
 *
 * Every signal is blocked in the writer thread: a SIGXFSZ raised by a write
 * past RLIMIT_FSIZE stays pending on this thread instead of killing the
 * process, and the write fails with EFBIG like any other write error.
 */
#include "filters/audit_writer.h"

#include "filters/audit_json.h"

#include "proxy/log.h"
#include "proxy/mem.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#define BATCH_RECORDS 256          /* records formatted per wakeup */
#define BATCH_BYTES (256 * 1024)   /* stop adding records to a batch past this */
#define BACKOFF_MIN_MS 100         /* first retry after a write error */
#define BACKOFF_MAX_MS 1000        /* retries settle at this interval */
#define REOPEN_RETRY_MS 1000       /* a failed reopen is retried this often */
#define STOP_GRACE_MS 5000         /* stop() retries failing writes this long */
#define WAKE_BATCH 256 /* queued records that wake a napping writer at once */
#define HEX_LEN 64                 /* hex of an HMAC-SHA256 */
#define SUFFIX_LEN 75              /* ,"hmac":"<64 hex>"} */
#define SUFFIX_HEAD ",\"hmac\":\"" /* first 9 bytes of the suffix */
#define TAIL_MAX (2 * (size_t)TG_AUDIT_LINE_MAX + 2) /* last line + torn fragment */
#define MOD "audit"
/* Compact, insertion order; 15 significant digits keep a computed cost like
 * 0.000316 from printing as 0.00031599999999999998. */
#define DUMP_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))

static const char zero_prev[HEX_LEN + 1] =
    "0000000000000000000000000000000000000000000000000000000000000000";

struct tg_audit_writer {
    pthread_mutex_t mu;      /* guards everything down to the stats */
    pthread_cond_t cv_work;  /* the writer sleeps here (CLOCK_MONOTONIC) */
    bool sleeping;           /* the writer waits without a near deadline: submitters signal */
    uint64_t last_work_ms;   /* when the writer last took records */
    pthread_cond_t cv_room;  /* blocked submitters sleep here */
    struct tg_audit_item *q; /* ring of queued records */
    size_t cap;              /* ring slots (queue_records) */
    size_t head;             /* oldest record */
    size_t count;            /* records in the ring */
    size_t reserved;         /* slots promised to admitted requests (tg_audit_reserve) */
    size_t nblocked;         /* submitters waiting for room */
    bool stopping;           /* stop() was called */
    bool reopen_req;         /* reopen at the next chance */
    uint64_t stop_deadline;  /* give up on failing writes after this (ms) */
    uint64_t st_last_seq;    /* stats: seq of the last record written */
    uint64_t st_written;     /* stats: records written since start */
    uint64_t st_errors;      /* stats: failed write/fsync/reopen calls */
    uint64_t st_dropped;     /* stats: records refused or unwritable */
    size_t st_inflight;      /* stats: formatted records not yet written */
    bool st_healthy;         /* stats: the last write succeeded */

    /* Owned by the writer thread once it runs (set up before). */
    pthread_t thread;                  /* the writer */
    char *path;                        /* copy of the log path */
    unsigned char *key;                /* copy of the key, wiped at stop */
    size_t keylen;                     /* its length */
    EVP_MAC *mac;                      /* HMAC, fetched once */
    EVP_MAC_CTX *mctx;                 /* digest set to SHA256 once */
    int fd;                            /* O_RDWR|O_APPEND log descriptor */
    enum tg_audit_fsync fsync;         /* policy */
    uint64_t interval_ms;              /* for INTERVAL */
    uint64_t seq;                      /* seq of the last formatted record */
    char prev[HEX_LEN + 1];            /* hmac of the last formatted record */
    char *batch;                       /* formatted, not yet written bytes */
    size_t blen;                       /* bytes in batch */
    size_t bcap;                       /* its capacity */
    size_t boff;                       /* bytes of batch already written */
    size_t bn;                         /* records in batch */
    uint64_t bfirst_seq, blast_seq;    /* their seqs (bn > 0) */
    const json_t *dump_failed;         /* the record whose dump failed once */
    bool dump_oom;                     /* on_dump could not grow batch */
    bool dump_long;                    /* on_dump passed TG_AUDIT_LINE_MAX */
    size_t dump_start;                 /* where the record being dumped starts */
    bool dirty;                        /* written since the last fsync */
    uint64_t last_sync;                /* ms of the last fsync (or start) */
    uint64_t retry_at;                 /* no write/fsync before this (backoff) */
    uint64_t reopen_at;                /* no reopen attempt before this */
    unsigned backoff_ms;               /* next backoff */
    bool failing;                      /* in an error streak (log once) */
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Wait on cv_work until woken or until the monotonic time deadline (ms). */
static void wait_until(struct tg_audit_writer *w, uint64_t deadline)
{
    struct timespec ts = {.tv_sec = (time_t)(deadline / 1000u),
                          .tv_nsec = (long)(deadline % 1000u) * 1000000L};
    pthread_cond_timedwait(&w->cv_work, &w->mu, &ts);
}

static void to_hex(const unsigned char *md, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[md[i] >> 4];
        out[2 * i + 1] = digits[md[i] & 15];
    }
    out[2 * n] = '\0';
}

/* hex(HMAC-SHA256(key, a || b)); 0 or -1 (OpenSSL failure). */
static int mac_hex(struct tg_audit_writer *w, const char *a, size_t alen, const char *b,
                   size_t blen, char out[HEX_LEN + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    size_t mdlen = 0;
    /* The key was set once at start: a NULL key re-initialises the HMAC
     * from its saved inner/outer states instead of hashing the key again. */
    if (!EVP_MAC_init(w->mctx, NULL, 0, NULL) ||
        !EVP_MAC_update(w->mctx, (const unsigned char *)a, alen) ||
        (blen && !EVP_MAC_update(w->mctx, (const unsigned char *)b, blen)) ||
        !EVP_MAC_final(w->mctx, md, &mdlen, sizeof(md)) || mdlen != HEX_LEN / 2)
        return -1;
    to_hex(md, mdlen, out);
    OPENSSL_cleanse(md, sizeof(md));
    return 0;
}

/* Last '\n' in [p, p+n), or NULL (memrchr is a GNU extension). */
static const char *last_nl(const char *p, size_t n)
{
    while (n > 0)
        if (p[--n] == '\n')
            return p + n;
    return NULL;
}

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/*
 * Check one line (without its newline) as a record of this key's chain and
 * return its seq, prev and hmac; NULL, or the reason it is not one.  The same
 * rules as audit_verify.c's check_line(), which reports in more detail.
 */
static const char *check_tail_line(struct tg_audit_writer *w, const char *line, size_t len,
                                   uint64_t *seq, char prev[HEX_LEN + 1], char hmac[HEX_LEN + 1])
{
    char mac[HEX_LEN + 1];
    json_error_t jerr;
    const char *why = NULL;
    if (len < SUFFIX_LEN + 1 || line[0] != '{' || memcmp(line + len - SUFFIX_LEN, SUFFIX_HEAD, 9) ||
        !is_lower_hex(line + len - 66, HEX_LEN) || memcmp(line + len - 2, "\"}", 2))
        return "is not an audit record (no trailing \"hmac\" member)";
    if (mac_hex(w, line, len - SUFFIX_LEN, "}", 1, mac) != 0)
        return "could not be checked (HMAC failed)";
    if (CRYPTO_memcmp(mac, line + len - 66, HEX_LEN) != 0)
        return "does not verify with this key (the tail was edited, or the key changed)";
    json_t *j = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *s = j ? json_object_get(j, "seq") : NULL;
    json_t *p = j ? json_object_get(j, "prev") : NULL;
    if (!json_is_object(j) || !json_is_integer(s) || json_integer_value(s) < 1 ||
        !json_is_string(p) || json_string_length(p) != HEX_LEN ||
        !is_lower_hex(json_string_value(p), HEX_LEN))
        why = "verifies but lacks a valid seq or prev";
    else {
        *seq = (uint64_t)json_integer_value(s);
        memcpy(prev, json_string_value(p), HEX_LEN + 1);
    }
    json_decref(j);
    if (!why) {
        memcpy(hmac, line + len - 66, HEX_LEN);
        hmac[HEX_LEN] = '\0';
    }
    return why;
}

static int pread_full(int fd, char *buf, size_t n, off_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r < 0 ? -errno : -EIO;
        got += (size_t)r;
    }
    return 0;
}

/*
 * The chain state file "<path>.chain": "tollgate-audit-chain <seq> <prev>
 * <mac>\n", mac = HMAC(key, "<seq> <prev>").  Written at stop, it lets the
 * chain (seq and prev) continue into an empty log when the file was rotated
 * away while tollgate was stopped (SPEC §7: seq never restarts).
 */
static void state_path(const struct tg_audit_writer *w, char *out, size_t n)
{
    snprintf(out, n, "%s.chain", w->path);
}

static void state_write(struct tg_audit_writer *w)
{
    char path[4200], tmp[4300], body[128], mac[HEX_LEN + 1], line[256];
    state_path(w, path, sizeof(path));
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int bl = snprintf(body, sizeof(body), "%llu %s", (unsigned long long)w->seq, w->prev);
    if (bl <= 0 || mac_hex(w, body, (size_t)bl, NULL, 0, mac) != 0)
        return;
    int ll = snprintf(line, sizeof(line), "tollgate-audit-chain %s %s\n", body, mac);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return;
    bool ok = write(fd, line, (size_t)ll) == ll && fsync(fd) == 0;
    close(fd);
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        tg_log_error(MOD, "%s: cannot write the chain state", path);
    }
}

/* 1 when a valid state was read into w, 0 when there is none, -1 when it is forged. */
static int state_read(struct tg_audit_writer *w, char *err, size_t errlen)
{
    char path[4200], line[256];
    state_path(w, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, line, sizeof(line) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    line[n] = '\0';
    unsigned long long seq = 0;
    char prev[HEX_LEN + 1], mac[HEX_LEN + 1], want[HEX_LEN + 1], body[128];
    if (sscanf(line, "tollgate-audit-chain %llu %64[0-9a-f] %64[0-9a-f]", &seq, prev, mac) != 3 ||
        strlen(prev) != HEX_LEN || strlen(mac) != HEX_LEN) {
        snprintf(err, errlen, "%s: malformed chain state", path);
        return -1;
    }
    int bl = snprintf(body, sizeof(body), "%llu %s", seq, prev);
    if (mac_hex(w, body, (size_t)bl, NULL, 0, want) != 0 ||
        CRYPTO_memcmp(want, mac, HEX_LEN) != 0) {
        snprintf(err, errlen, "%s: chain state does not match the audit key (edited?)", path);
        return -1;
    }
    w->seq = seq;
    memcpy(w->prev, prev, sizeof(w->prev));
    return 1;
}

/*
 * Continue the chain of the file open on w->fd: w->seq/prev from its last
 * complete line (0 and zeros for an empty file).  A torn tail makes the first
 * batch begin with "\n".  0, or -1 with a message in err.
 */
static int recover(struct tg_audit_writer *w, char *err, size_t errlen)
{
    struct stat st;
    char *buf = NULL;
    int rv = -1;

    w->seq = 0;
    memcpy(w->prev, zero_prev, sizeof(w->prev));
    if (fstat(w->fd, &st) != 0) {
        snprintf(err, errlen, "%s: %s", w->path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode))
        return 0; /* nothing to continue (/dev/full in a test) */
    if (st.st_size == 0)
        return state_read(w, err, errlen) < 0 ? -1 : 0; /* rotated away while stopped */
    size_t size = (size_t)st.st_size;
    size_t tail = size < TAIL_MAX ? size : TAIL_MAX;
    bool whole = tail == size;
    off_t base = (off_t)(size - tail);
    if (!(buf = tg_mem_malloc(tail))) {
        snprintf(err, errlen, "%s: out of memory reading its tail", w->path);
        return -1;
    }
    int r = pread_full(w->fd, buf, tail, base);
    if (r != 0) {
        snprintf(err, errlen, "%s: %s", w->path, strerror(-r));
        goto out;
    }
    const char *end = buf + tail, *frag = NULL, *line_end = NULL;
    if (end[-1] == '\n') {
        line_end = end - 1;
    } else {
        const char *nl = last_nl(buf, tail);
        if (!nl && !whole) {
            snprintf(err, errlen, "%s: the last line is longer than %d bytes: not an audit log",
                     w->path, TG_AUDIT_LINE_MAX);
            goto out;
        }
        frag = nl ? nl + 1 : buf;
        line_end = nl;
    }
    if (line_end) {
        const char *p = last_nl(buf, (size_t)(line_end - buf));
        const char *start = p ? p + 1 : buf;
        if ((!p && !whole) || (size_t)(line_end - start) >= TG_AUDIT_LINE_MAX) {
            snprintf(err, errlen, "%s: the last line is longer than %d bytes: not an audit log",
                     w->path, TG_AUDIT_LINE_MAX);
            goto out;
        }
        char lprev[HEX_LEN + 1];
        const char *why =
            check_tail_line(w, start, (size_t)(line_end - start), &w->seq, lprev, w->prev);
        if (why) {
            snprintf(err, errlen,
                     "%s: last line (at byte %" PRIu64 ") %s; refusing to continue its chain",
                     w->path, (uint64_t)base + (uint64_t)(start - buf), why);
            goto out;
        }
    }
    if (w->seq >= (uint64_t)INT64_MAX - 1) { /* JSON integers end at INT64_MAX */
        snprintf(err, errlen, "%s: seq %" PRIu64 " leaves no room for another record", w->path,
                 w->seq);
        goto out;
    }
    if (frag) {
        size_t flen = (size_t)(end - frag);
        uint64_t fseq = 0;
        char fprev[HEX_LEN + 1], fmac[HEX_LEN + 1];
        /* A complete record of this chain that only lost its newline. */
        if (flen < TG_AUDIT_LINE_MAX && !check_tail_line(w, frag, flen, &fseq, fprev, fmac) &&
            fseq == w->seq + 1 && memcmp(fprev, w->prev, HEX_LEN) == 0) {
            w->seq = fseq;
            memcpy(w->prev, fmac, sizeof(w->prev));
            frag = NULL;
        }
        if (frag)
            tg_log_warn(MOD,
                        "%s: torn last line (%zu bytes at byte %" PRIu64
                        " without a newline) left in place; the chain continues from seq %" PRIu64,
                        w->path, flen, (uint64_t)base + (uint64_t)(frag - buf), w->seq);
        else
            tg_log_warn(MOD, "%s: last record (seq %" PRIu64 ") lacked its newline; adding it",
                        w->path, w->seq);
        w->batch[0] = '\n';
        w->blen = 1;
    }
    rv = 0;
out:
    tg_mem_free(buf);
    return rv;
}

static bool batch_reserve(struct tg_audit_writer *w, size_t more)
{
    if (w->bcap - w->blen >= more)
        return true;
    size_t ncap = w->bcap ? w->bcap : 65536;
    while (ncap - w->blen < more)
        ncap *= 2;
    char *nb = tg_mem_realloc(w->batch, ncap);
    if (!nb)
        return false;
    w->batch = nb;
    w->bcap = ncap;
    return true;
}

static int on_dump(const char *buf, size_t size, void *data)
{
    struct tg_audit_writer *w = data;
    if (w->blen - w->dump_start + size + SUFFIX_LEN > TG_AUDIT_LINE_MAX) {
        w->dump_long = true;
        return -1;
    }
    if (!batch_reserve(w, size)) {
        w->dump_oom = true;
        return -1;
    }
    memcpy(w->batch + w->blen, buf, size);
    w->blen += size;
    return 0;
}

static bool is_writer_key(const char *k, size_t n)
{
    static const char *const own[] = {"type", "ts", "seq", "prev", "hmac"};
    for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++)
        if (strlen(own[i]) == n && memcmp(own[i], k, n) == 0)
            return true;
    return false;
}

enum fmt_status {
    FMT_OK = 0,    /* appended to the batch */
    FMT_RETRY = 1, /* out of memory: leave it queued and try again later */
    FMT_DROP = 2,  /* cannot be serialised or too long: count it and drop it */
};

/*
 * batch[start..blen) holds the record's object, ending with '}' and "prev"
 * as its last member: MAC it, put the hmac member before the brace, end the
 * line, and make it the chain's newest link.  0, or -1 (the batch is then
 * to be cut back to start by the caller).
 */
static int finish_line(struct tg_audit_writer *w, size_t start, uint64_t seq)
{
    char mac[HEX_LEN + 1];
    if (mac_hex(w, w->batch + start, w->blen - start, NULL, 0, mac) != 0)
        return -1;
    if (!batch_reserve(w, SUFFIX_LEN))
        return -1;
    w->blen--; /* the closing brace comes back after the hmac member */
    memcpy(w->batch + w->blen, SUFFIX_HEAD, 9);
    memcpy(w->batch + w->blen + 9, mac, HEX_LEN);
    memcpy(w->batch + w->blen + 9 + HEX_LEN, "\"}\n", 3);
    w->blen += 9 + HEX_LEN + 3;
    w->seq = seq;
    memcpy(w->prev, mac, sizeof(w->prev));
    if (w->bn++ == 0)
        w->bfirst_seq = seq;
    w->blast_seq = seq;
    return 0;
}

/*
 * Append the record of an emitting builder as the next line of the chain:
 * its text comes straight into the batch, with no JSON object in between.
 * On anything but FMT_OK the batch, seq and prev are unchanged.
 */
static enum fmt_status format_emit(struct tg_audit_writer *w, struct tg_audit_lazy *l)
{
    uint64_t seq = w->seq + 1;
    size_t start = w->blen;
    struct tg_jw j = {.base = w->batch,
                      .len = w->blen,
                      .cap = w->bcap,
                      .max = start + TG_AUDIT_LINE_MAX - SUFFIX_LEN};
    l->emit(l, &j, seq);
    TG_JW_LIT(&j, ",\"prev\":\"");
    tg_jw_raw(&j, w->prev, HEX_LEN);
    TG_JW_LIT(&j, "\"}");
    w->batch = j.base;
    w->bcap = j.cap;
    w->blen = j.failed ? start : j.len;
    if (j.too_long) {
        tg_log_error(MOD,
                     "%s: a record could not be kept under the 1 MiB line limit and was "
                     "dropped",
                     w->path);
        return FMT_DROP;
    }
    if (j.failed || finish_line(w, start, seq) != 0) {
        w->blen = start;
        return FMT_RETRY;
    }
    return FMT_OK;
}

/*
 * Append rec as the next line of the chain (see the layout in the header).
 * On anything but FMT_OK the batch, seq and prev are unchanged.
 */
static enum fmt_status format_one(struct tg_audit_writer *w, json_t *rec)
{
    enum fmt_status rv = FMT_RETRY;
    uint64_t seq = w->seq + 1;
    size_t start = w->blen;
    const char *k;
    size_t klen;
    json_t *v, *o = json_object();

    if (!o)
        return FMT_RETRY;
    if ((v = json_object_get(rec, "type")) && json_object_set(o, "type", v) != 0)
        goto out;
    if ((v = json_object_get(rec, "ts")) && json_object_set(o, "ts", v) != 0)
        goto out;
    if (json_object_set_new(o, "seq", json_integer((json_int_t)seq)) != 0)
        goto out;
    json_object_keylen_foreach(rec, k, klen, v)
    {
        if (!is_writer_key(k, klen) && json_object_setn(o, k, klen, v) != 0)
            goto out;
    }
    if (json_object_set_new(o, "prev", json_string(w->prev)) != 0)
        goto out;
    w->dump_oom = w->dump_long = false;
    w->dump_start = start;
    if (json_dump_callback(o, on_dump, w, DUMP_FLAGS) != 0) {
        /* Not our buffer: jansson refused the value (invalid UTF-8 put in
         * with a _nocheck call, nesting too deep) or ran out of memory
         * inside.  The same record failing twice is not transient. */
        if (w->dump_long)
            rv = FMT_DROP;
        else if (w->dump_oom || w->dump_failed != rec)
            rv = FMT_RETRY;
        else
            rv = FMT_DROP;
        w->dump_failed = rec;
        goto out;
    }
    w->dump_failed = NULL;
    if (w->blen - start < 2 || w->batch[w->blen - 1] != '}')
        goto out; /* cannot happen: a compact object ends with '}' */
    if (finish_line(w, start, seq) != 0)
        goto out;
    rv = FMT_OK;
out:
    if (rv != FMT_OK)
        w->blen = start;
    if (rv == FMT_DROP)
        tg_log_error(MOD, "%s: a record could not be %s and was dropped", w->path,
                     w->dump_long ? "kept under the 1 MiB line limit" : "serialised");
    json_decref(o);
    return rv;
}

/* Write the rest of the batch; 0, or -errno with boff at what got through. */
static int write_rest(struct tg_audit_writer *w)
{
    while (w->boff < w->blen) {
        ssize_t n = write(w->fd, w->batch + w->boff, w->blen - w->boff);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EIO;
        w->boff += (size_t)n;
    }
    return 0;
}

/*
 * Open path again (after a rename by logrotate).  The old descriptor is
 * fsynced and closed; the chain simply continues into the new file.  0 or
 * -errno (the old descriptor stays in use).
 */
static int reopen_file(struct tg_audit_writer *w)
{
    struct stat a, b;
    int nfd = open(w->path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (nfd < 0)
        return -errno;
    if (fstat(nfd, &b) == 0 && fstat(w->fd, &a) == 0 && a.st_dev == b.st_dev &&
        a.st_ino == b.st_ino) {
        close(nfd); /* not renamed: nothing to do */
        return 0;
    }
    if (w->dirty && fdatasync(w->fd) != 0)
        tg_log_error(MOD, "%s: fdatasync before reopen: %s", w->path, strerror(errno));
    if (b.st_size > 0) {
        /* Not the empty file logrotate creates: keep the chain, but say so,
         * and do not glue our first line onto a torn one. */
        char c = '\n';
        if (pread_full(nfd, &c, 1, b.st_size - 1) == 0 && c != '\n' && w->boff == 0 &&
            batch_reserve(w, 1)) {
            memmove(w->batch + 1, w->batch, w->blen);
            w->batch[0] = '\n';
            w->blen++;
        }
        tg_log_warn(MOD, "%s: reopened file is not empty; the chain continues from seq %" PRIu64,
                    w->path, w->seq);
    }
    close(w->fd);
    w->fd = nfd;
    w->dirty = false;
    w->last_sync = now_ms();
    return 0;
}

/* Count one failure and schedule the next attempt.  Called with mu held. */
static void failed(struct tg_audit_writer *w, const char *what, int e)
{
    w->st_errors++;
    w->st_healthy = false;
    if (!w->failing)
        tg_log_error(MOD, "%s: %s: %s (retrying; records are held in memory)", w->path, what,
                     strerror(e));
    w->failing = true;
    w->retry_at = now_ms() + w->backoff_ms;
    w->backoff_ms = w->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : w->backoff_ms * 2;
}

/* Free one queued item (a record or a lazy builder that never ran). */
static void item_free(struct tg_audit_item *it)
{
    json_decref(it->rec);
    if (it->lazy)
        it->lazy->free(it->lazy);
    it->rec = NULL;
    it->lazy = NULL;
}

static void recovered(struct tg_audit_writer *w)
{
    if (w->failing)
        tg_log_info(MOD, "%s: writes succeed again", w->path);
    w->failing = false;
    w->st_healthy = true;
    w->backoff_ms = BACKOFF_MIN_MS;
    w->retry_at = 0;
}

/* stop() ran out of patience: count and log what never reached the file.  mu held. */
static void give_up(struct tg_audit_writer *w)
{
    uint64_t lost = w->bn + w->count;
    if (w->bn)
        tg_log_error(MOD, "%s: audit records seq %" PRIu64 "..%" PRIu64 " were not written",
                     w->path, w->bfirst_seq, w->blast_seq);
    if (lost)
        tg_log_error(MOD, "%s: %" PRIu64 " audit records lost at shutdown", w->path, lost);
    w->st_dropped += lost;
    if (w->boff > 0 && w->fd >= 0) {
        /* Part of the batch reached the file: cut it off again so the file
         * ends with a complete line of an intact chain (those records were
         * logged above as not written). */
        struct stat sb;
        if (fstat(w->fd, &sb) == 0 && (uint64_t)sb.st_size >= w->boff &&
            ftruncate(w->fd, sb.st_size - (off_t)w->boff) != 0)
            tg_log_error(MOD, "%s: cannot cut the partial batch: %s", w->path, strerror(errno));
    }
    w->blen = w->boff = w->bn = 0;
    w->st_inflight = 0;
    while (w->count) {
        item_free(&w->q[w->head]);
        w->head = (w->head + 1) % w->cap;
        w->count--;
    }
    w->dirty = false;
}

static void *writer_main(void *arg)
{
    struct tg_audit_writer *w = arg;
    json_t *recs[BATCH_RECORDS];

    prctl(PR_SET_NAME, "tg-audit", 0, 0, 0); /* per-thread CPU in /proc, top, perf */

    pthread_mutex_lock(&w->mu);
    for (;;) {
        uint64_t now = now_ms();
        bool partial = w->boff > 0 && w->boff < w->blen;
        bool failing_past_deadline = w->stopping && w->failing && now >= w->stop_deadline;

        if (failing_past_deadline) {
            give_up(w);
            break;
        }
        /* Reopen between batches: a half-written batch is finished on the
         * old file first, so no file begins or ends with a torn line. */
        if (w->reopen_req && !partial && now >= w->reopen_at) {
            w->reopen_req = false;
            pthread_mutex_unlock(&w->mu);
            int r = reopen_file(w);
            pthread_mutex_lock(&w->mu);
            if (r < 0) {
                w->st_errors++;
                tg_log_error(MOD, "%s: reopen: %s (still writing to the old file)", w->path,
                             strerror(-r));
                w->reopen_req = true;
                w->reopen_at = now_ms() + REOPEN_RETRY_MS;
            }
            continue;
        }
        bool need_sync = w->dirty && (w->fsync == TG_AUDIT_FSYNC_ALWAYS ||
                                      (w->fsync == TG_AUDIT_FSYNC_INTERVAL &&
                                       now >= w->last_sync + w->interval_ms) ||
                                      (w->stopping && w->count == 0 && w->blen == w->boff));
        if (w->boff < w->blen || need_sync) {
            if (now < w->retry_at) {
                wait_until(w, w->stopping && w->stop_deadline < w->retry_at ? w->stop_deadline
                                                                            : w->retry_at);
                continue;
            }
            if (w->boff < w->blen) {
                pthread_mutex_unlock(&w->mu);
                int r = write_rest(w);
                pthread_mutex_lock(&w->mu);
                if (r < 0) {
                    failed(w, "write", -r);
                    continue;
                }
                recovered(w);
                w->st_written += w->bn;
                if (w->bn)
                    w->st_last_seq = w->blast_seq;
                w->blen = w->boff = w->bn = 0;
                w->st_inflight = 0;
                w->dirty = true;
            } else {
                pthread_mutex_unlock(&w->mu);
                int r = fdatasync(w->fd) == 0 ? 0 : -errno;
                pthread_mutex_lock(&w->mu);
                if (r < 0 && r != -EINVAL && r != -EROFS) { /* EINVAL: not syncable */
                    failed(w, "fdatasync", -r);
                    continue;
                }
                recovered(w);
                w->dirty = false;
                w->last_sync = now_ms();
            }
            continue;
        }
        if (w->count > 0) {
            if (now < w->retry_at) { /* formatting ran out of memory */
                wait_until(w, w->retry_at);
                continue;
            }
            w->last_work_ms = now;
            size_t n = w->count < BATCH_RECORDS ? w->count : BATCH_RECORDS;
            size_t taken = 0, dropped = 0;
            bool retry = false;
            struct tg_audit_lazy *lazies[BATCH_RECORDS];
            size_t nbuild = 0;
            for (size_t i = 0; i < n; i++) {
                struct tg_audit_item *it = &w->q[(w->head + i) % w->cap];
                recs[i] = it->rec;
                lazies[i] = it->lazy;
                if (lazies[i] && !lazies[i]->emit) {
                    it->lazy = NULL; /* taken: built below, its record written back */
                    nbuild++;
                }
            }
            pthread_mutex_unlock(&w->mu);
            if (nbuild) {
                /* Records queued as builders are made here, off the event loops. */
                for (size_t i = 0; i < n; i++) {
                    if (!lazies[i] || lazies[i]->emit)
                        continue;
                    recs[i] = lazies[i]->build(lazies[i]);
                    lazies[i]->free(lazies[i]);
                    lazies[i] = NULL;
                    if (!recs[i])
                        recs[i] = json_object(); /* out of memory: dropped below as unformattable */
                }
                pthread_mutex_lock(&w->mu);
                for (size_t i = 0; i < n; i++)
                    w->q[(w->head + i) % w->cap].rec = recs[i];
                pthread_mutex_unlock(&w->mu);
            }
            /* The ring slots stay ours: submitters only append behind them.
             * Emitting builders stay in their slots until formatted, so a
             * stop that gives up frees them with the rest of the queue. */
            while (taken < n && w->blen < BATCH_BYTES) {
                enum fmt_status st =
                    lazies[taken] ? format_emit(w, lazies[taken]) : format_one(w, recs[taken]);
                if (st == FMT_RETRY) {
                    retry = true;
                    break;
                }
                dropped += st == FMT_DROP;
                taken++;
            }
            pthread_mutex_lock(&w->mu);
            w->head = (w->head + taken) % w->cap;
            w->count -= taken;
            w->st_dropped += dropped;
            w->st_inflight = w->bn;
            if (taken)
                pthread_cond_broadcast(&w->cv_room);
            if (retry && taken == 0)
                failed(w, "formatting a record", ENOMEM);
            for (size_t i = 0; i < taken; i++) {
                struct tg_audit_item *it = &w->q[(w->head + w->cap - taken + i) % w->cap];
                it->rec = NULL;
                it->lazy = NULL;
            }
            pthread_mutex_unlock(&w->mu);
            for (size_t i = 0; i < taken; i++) {
                json_decref(recs[i]);
                if (lazies[i])
                    lazies[i]->free(lazies[i]);
            }
            pthread_mutex_lock(&w->mu);
            continue;
        }
        if (w->stopping)
            break;
        /* Wake-up coalescing: while records keep coming (the last batch was
         * under 100 ms ago) the writer naps 1 ms and submitters do not signal,
         * so a busy event loop pays no futex wake per record; an idle writer
         * sleeps until signalled. */
        uint64_t t = now_ms();
        if (w->reopen_req) {
            wait_until(w, w->reopen_at);
        } else if (t - w->last_work_ms < 100) {
            wait_until(w, t + 1);
        } else {
            w->sleeping = true;
            if (w->dirty && w->fsync == TG_AUDIT_FSYNC_INTERVAL)
                wait_until(w, w->last_sync + w->interval_ms);
            else
                pthread_cond_wait(&w->cv_work, &w->mu);
            w->sleeping = false;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Free whatever start() managed to set up (the thread is not running). */
static void writer_free(struct tg_audit_writer *w, bool sync_ready)
{
    if (!w)
        return;
    if (sync_ready) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv_work);
        pthread_cond_destroy(&w->cv_room);
    }
    if (w->q) {
        for (size_t i = 0; i < w->count; i++)
            item_free(&w->q[(w->head + i) % w->cap]);
        tg_mem_free(w->q);
    }
    if (w->fd >= 0)
        close(w->fd);
    EVP_MAC_CTX_free(w->mctx);
    EVP_MAC_free(w->mac);
    if (w->key) {
        OPENSSL_cleanse(w->key, w->keylen);
        tg_mem_free(w->key);
    }
    tg_mem_free(w->path);
    tg_mem_free(w->batch);
    tg_mem_free(w);
}

struct tg_audit_writer *tg_audit_writer_start(const struct tg_audit_settings *s, char *err,
                                              size_t errlen)
{
    struct tg_audit_writer *w = NULL;
    pthread_condattr_t ca;
    sigset_t all, old;
    bool sync_ready = false;

    if (!s || !s->path || !*s->path || !s->key || s->keylen < 32 || s->queue_records == 0 ||
        (s->fsync != TG_AUDIT_FSYNC_ALWAYS && s->fsync != TG_AUDIT_FSYNC_INTERVAL &&
         s->fsync != TG_AUDIT_FSYNC_NEVER)) {
        snprintf(err, errlen, "audit: invalid settings (path, a key of >= 32 bytes, "
                              "queue_records >= 1 and an fsync policy are required)");
        return NULL;
    }
    if (!(w = tg_mem_calloc(1, sizeof(*w))))
        goto oom;
    w->fd = -1;
    w->fsync = s->fsync;
    w->interval_ms = s->fsync_interval_ms;
    w->cap = s->queue_records;
    w->st_healthy = true;
    w->backoff_ms = BACKOFF_MIN_MS;
    if (!(w->q = tg_mem_calloc(w->cap, sizeof(*w->q))) || !(w->path = tg_mem_strdup(s->path)) ||
        !(w->key = tg_mem_malloc(s->keylen)) || !batch_reserve(w, 65536))
        goto oom;
    memcpy(w->key, s->key, s->keylen);
    w->keylen = s->keylen;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (!(w->mac = EVP_MAC_fetch(NULL, "HMAC", NULL)) || !(w->mctx = EVP_MAC_CTX_new(w->mac)) ||
        !EVP_MAC_CTX_set_params(w->mctx, params) ||
        !EVP_MAC_init(w->mctx, w->key, w->keylen, NULL)) {
        snprintf(err, errlen, "audit: HMAC-SHA256 is not available from OpenSSL");
        goto fail;
    }
    if ((w->fd = open(w->path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640)) < 0) {
        snprintf(err, errlen, "%s: %s", w->path, strerror(errno));
        goto fail;
    }
    if (recover(w, err, errlen) != 0)
        goto fail;
    w->st_last_seq = w->seq;
    w->last_sync = now_ms();

    if (pthread_mutex_init(&w->mu, NULL) != 0)
        goto oom;
    if (pthread_condattr_init(&ca) != 0) {
        pthread_mutex_destroy(&w->mu);
        goto oom;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int r1 = pthread_cond_init(&w->cv_work, &ca);
    int r2 = pthread_cond_init(&w->cv_room, NULL);
    pthread_condattr_destroy(&ca);
    if (r1 || r2) {
        if (!r1)
            pthread_cond_destroy(&w->cv_work);
        if (!r2)
            pthread_cond_destroy(&w->cv_room);
        pthread_mutex_destroy(&w->mu);
        goto oom;
    }
    sync_ready = true;

    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int r = pthread_create(&w->thread, NULL, writer_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0) {
        snprintf(err, errlen, "audit: cannot start the writer thread: %s", strerror(r));
        goto fail;
    }
    return w;

oom:
    snprintf(err, errlen, "audit: out of memory");
fail:
    writer_free(w, sync_ready);
    return NULL;
}

/* Append an item behind the queued ones and wake the writer if it sleeps.  mu held, room checked. */
static void push_locked(struct tg_audit_writer *w, struct tg_audit_item it)
{
    w->q[(w->head + w->count) % w->cap] = it;
    w->count++;
    if (w->sleeping || w->count >= WAKE_BATCH)
        pthread_cond_signal(&w->cv_work);
}

bool tg_audit_submit(struct tg_audit_writer *w, json_t *rec, bool block)
{
    if (!w || !json_is_object(rec)) {
        json_decref(rec);
        if (w) {
            pthread_mutex_lock(&w->mu);
            w->st_dropped++;
            pthread_mutex_unlock(&w->mu);
        }
        return false;
    }
    pthread_mutex_lock(&w->mu);
    while (!w->stopping && w->count + w->reserved >= w->cap && block) {
        w->nblocked++;
        pthread_cond_wait(&w->cv_room, &w->mu);
        w->nblocked--;
    }
    if (w->stopping || w->count + w->reserved >= w->cap) {
        w->st_dropped++;
        if (w->stopping && w->nblocked == 0)
            pthread_cond_broadcast(&w->cv_room); /* stop() may wait for us */
        pthread_mutex_unlock(&w->mu);
        json_decref(rec);
        return false;
    }
    push_locked(w, (struct tg_audit_item){rec, NULL});
    pthread_mutex_unlock(&w->mu);
    return true;
}

bool tg_audit_reserve(struct tg_audit_writer *w)
{
    if (!w)
        return false;
    pthread_mutex_lock(&w->mu);
    bool ok = !w->stopping && w->count + w->reserved < w->cap;
    if (ok)
        w->reserved++;
    pthread_mutex_unlock(&w->mu);
    return ok;
}

size_t tg_audit_reserve_n(struct tg_audit_writer *w, size_t want)
{
    if (!w || !want)
        return 0;
    pthread_mutex_lock(&w->mu);
    size_t used = w->count + w->reserved, got = 0;
    if (!w->stopping && used < w->cap) {
        size_t half = (w->cap - used + 1) / 2;
        got = want < half ? want : half;
        w->reserved += got;
    }
    pthread_mutex_unlock(&w->mu);
    return got;
}

void tg_audit_release_n(struct tg_audit_writer *w, size_t n)
{
    if (!w || !n)
        return;
    pthread_mutex_lock(&w->mu);
    w->reserved -= n < w->reserved ? n : w->reserved;
    pthread_cond_broadcast(&w->cv_room);
    pthread_mutex_unlock(&w->mu);
}

size_t tg_audit_submit_batch(struct tg_audit_writer *w, struct tg_audit_lazy *list, size_t *credit)
{
    size_t queued = 0, dropped = 0;
    if (!w) {
        while (list) {
            struct tg_audit_lazy *next = list->next;
            list->free(list);
            list = next;
        }
        return 0;
    }
    struct tg_audit_lazy *refused = NULL;
    pthread_mutex_lock(&w->mu);
    size_t count0 = w->count;
    for (struct tg_audit_lazy *l = list, *next; l; l = next) {
        next = l->next;
        l->next = NULL;
        if (w->reserved)
            w->reserved--;
        if (w->stopping || w->count >= w->cap) { /* the latter cannot happen with promises kept */
            l->next = refused;
            refused = l;
            dropped++;
            continue;
        }
        w->q[(w->head + w->count) % w->cap] = (struct tg_audit_item){NULL, l};
        w->count++;
        queued++;
    }
    w->st_dropped += dropped;
    /* One wake-up per batch, and only when the writer sleeps or has a batch's worth. */
    if (queued && (w->sleeping || (count0 < WAKE_BATCH && w->count >= WAKE_BATCH)))
        pthread_cond_signal(&w->cv_work);
    if (credit && *credit && (w->stopping || 2 * (w->count + w->reserved) > w->cap)) {
        w->reserved -= *credit < w->reserved ? *credit : w->reserved;
        *credit = 0;
        pthread_cond_broadcast(&w->cv_room);
    }
    pthread_mutex_unlock(&w->mu);
    while (refused) {
        struct tg_audit_lazy *next = refused->next;
        refused->free(refused);
        refused = next;
    }
    return queued;
}

void tg_audit_release(struct tg_audit_writer *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    if (w->reserved)
        w->reserved--;
    pthread_cond_signal(&w->cv_room);
    pthread_mutex_unlock(&w->mu);
}

bool tg_audit_submit_reserved(struct tg_audit_writer *w, json_t *rec)
{
    if (!w) {
        json_decref(rec);
        return false;
    }
    pthread_mutex_lock(&w->mu);
    if (w->reserved)
        w->reserved--;
    if (!json_is_object(rec) || w->count >= w->cap) {
        /* Cannot happen while reservations are honoured; counted if it does. */
        w->st_dropped++;
        pthread_mutex_unlock(&w->mu);
        json_decref(rec);
        return false;
    }
    push_locked(w, (struct tg_audit_item){rec, NULL});
    pthread_mutex_unlock(&w->mu);
    return true;
}

bool tg_audit_submit_lazy(struct tg_audit_writer *w, struct tg_audit_lazy *lazy, bool reserved)
{
    if (!w) {
        lazy->free(lazy);
        return false;
    }
    pthread_mutex_lock(&w->mu);
    if (reserved && w->reserved)
        w->reserved--;
    bool room = !w->stopping && (reserved ? w->count < w->cap
                                          : w->count + w->reserved < w->cap);
    if (!room) {
        w->st_dropped++;
        pthread_mutex_unlock(&w->mu);
        lazy->free(lazy);
        return false;
    }
    push_locked(w, (struct tg_audit_item){NULL, lazy});
    pthread_mutex_unlock(&w->mu);
    return true;
}

void tg_audit_reopen(struct tg_audit_writer *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->reopen_req = true;
    w->reopen_at = 0;
    pthread_cond_signal(&w->cv_work);
    pthread_mutex_unlock(&w->mu);
}

void tg_audit_writer_stop(struct tg_audit_writer *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stopping = true;
    w->stop_deadline = now_ms() + STOP_GRACE_MS;
    pthread_cond_broadcast(&w->cv_work);
    pthread_cond_broadcast(&w->cv_room);
    /* Blocked submitters must be out of the mutex before it is destroyed. */
    while (w->nblocked > 0)
        pthread_cond_wait(&w->cv_room, &w->mu);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    if (w->dirty && fdatasync(w->fd) != 0)
        tg_log_error(MOD, "%s: final fdatasync: %s", w->path, strerror(errno));
    state_write(w);
    writer_free(w, true);
}

void tg_audit_stats(struct tg_audit_writer *w, struct tg_audit_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    out->last_seq = w->st_last_seq;
    out->written = w->st_written;
    out->write_errors = w->st_errors;
    out->dropped = w->st_dropped;
    out->pending = (uint64_t)w->count + w->st_inflight;
    out->queue_depth = w->count;
    out->healthy = w->st_healthy;
    pthread_mutex_unlock(&w->mu);
}

bool tg_audit_has_room(struct tg_audit_writer *w)
{
    if (!w)
        return false;
    pthread_mutex_lock(&w->mu);
    bool room = !w->stopping && w->count + w->reserved < w->cap;
    pthread_mutex_unlock(&w->mu);
    return room;
}
