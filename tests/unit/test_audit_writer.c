/*
 * test_audit_writer.c - the audit writer thread and the chain verifier
 * (filters/audit_writer.c, filters/audit_verify.c).
 *
 * Every case writes real files under a mkdtemp() directory in $TMPDIR (or
 * /tmp).  Tampering cases are a table of edits applied to a freshly written
 * 20-record log, each with the exact message verify must give.  The
 * fixtures in $TG_TEST_DATA/audit are made by make-fixtures.py with Python's
 * json and hmac modules, an implementation of the line format independent of
 * the writer.  Write errors are produced with RLIMIT_FSIZE (EFBIG) and
 * /dev/full (ENOSPC).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tg_test.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "filters/audit_json.h"
#include "filters/audit_writer.h"
#include "proxy/mem.h"

#define KEY "tollgate-audit-test-key-0123456789abcdef" /* as in make-fixtures.py */
#define KLEN (sizeof(KEY) - 1)
#define ERRMAX 1024

static char data_dir[PATH_MAX];
static char tmp_root[PATH_MAX];

/* ---- helpers ---- */

static void init_data_dir(void)
{
    const char *env = getenv("TG_TEST_DATA");
    if (env && *env) {
        snprintf(data_dir, sizeof(data_dir), "%s", env);
        return;
    }
    const char *slash = strrchr(__FILE__, '/');
    int dl = slash ? (int)(slash - __FILE__) : 1;
    snprintf(data_dir, sizeof(data_dir), "%.*s/../data", dl, slash ? __FILE__ : ".");
}

/* A fresh temporary directory for one case. */
static void make_dir(char *out, size_t n)
{
    int k = snprintf(out, n, "%s/tg-audit-XXXXXX", tmp_root);
    assert_true(k > 0 && (size_t)k < n);
    assert_non_null(mkdtemp(out));
}

static void data_file(char *out, size_t n, const char *name)
{
    int k = snprintf(out, n, "%s/audit/%s", data_dir, name);
    assert_true(k > 0 && (size_t)k < n);
}

static void path_in(char *out, size_t n, const char *dir, const char *name)
{
    int k = snprintf(out, n, "%s/%s", dir, name);
    assert_true(k > 0 && (size_t)k < n);
}

/* rm -r of a case directory (flat). */
static void remove_dir(const char *dir)
{
    static const char *const names[] = {"audit.log", "audit.log.1", "audit.log.2", "copy.log",
                                        "x.log"};
    char p[PATH_MAX];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        path_in(p, sizeof(p), dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

static struct tg_audit_writer *start(const char *path, enum tg_audit_fsync fs, size_t queue,
                                     char *err)
{
    struct tg_audit_settings s = {
        .path = path,
        .key = (const unsigned char *)KEY,
        .keylen = KLEN,
        .fsync = fs,
        .fsync_interval_ms = 20,
        .queue_records = queue,
    };
    err[0] = '\0';
    return tg_audit_writer_start(&s, err, ERRMAX);
}

static struct tg_audit_writer *start_ok(const char *path, enum tg_audit_fsync fs, size_t queue)
{
    char err[ERRMAX];
    struct tg_audit_writer *w = start(path, fs, queue, err);
    if (!w)
        fail_msg("start %s: %s", path, err);
    return w;
}

/* A request record: type and ts first, as filters/audit.c builds them. */
static json_t *rec(int i)
{
    char id[32];
    snprintf(id, sizeof(id), "r-%d", i);
    json_t *r = json_pack("{s:s, s:s, s:s, s:{s:s, s:i}, s:s, s:n, s:i, s:f}", "type", "request",
                          "ts", "2026-11-25T20:33:04.123456Z", "request_id", id, "client", "ip",
                          "203.0.113.7", "port", 51544, "decision", "allow", "reason", "status",
                          200, "cost", 0.000316);
    assert_non_null(r);
    return r;
}

static void submit_n(struct tg_audit_writer *w, int from, int n)
{
    for (int i = from; i < from + n; i++)
        assert_true(tg_audit_submit(w, rec(i), true));
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Wait (up to 10 s) until the stats satisfy pred. */
typedef bool stats_pred_fn(const struct tg_audit_stats *st, uint64_t arg);
static void wait_for(struct tg_audit_writer *w, stats_pred_fn *pred, uint64_t arg,
                     const char *what)
{
    struct tg_audit_stats st;
    uint64_t end = mono_ms() + 10000;
    for (;;) {
        tg_audit_stats(w, &st);
        if (pred(&st, arg))
            return;
        if (mono_ms() > end)
            fail_msg("timed out waiting for %s (written %" PRIu64 ", errors %" PRIu64
                     ", pending %" PRIu64 ")",
                     what, st.written, st.write_errors, st.pending);
        sleep_ms(5);
    }
}
static bool written_at_least(const struct tg_audit_stats *st, uint64_t n)
{
    return st->written >= n;
}
static bool has_errors(const struct tg_audit_stats *st, uint64_t n)
{
    return st->write_errors >= n;
}

/* Verify paths; returns the rc and leaves the message in err. */
static int verify(char *err, size_t n, ...)
{
    const char *paths[8];
    size_t np = 0;
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++)
        paths[np++] = va_arg(ap, const char *);
    va_end(ap);
    err[0] = '\0';
    return tg_audit_verify_files(paths, np, (const unsigned char *)KEY, KLEN, err, ERRMAX);
}

static void expect_ok(const char *summary, size_t n, ...)
{
    const char *paths[8];
    char err[ERRMAX];
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++)
        paths[i] = va_arg(ap, const char *);
    va_end(ap);
    int rc = tg_audit_verify_files(paths, n, (const unsigned char *)KEY, KLEN, err, sizeof(err));
    if (rc != 0)
        fail_msg("verify failed: %s", err);
    if (!strstr(err, summary))
        fail_msg("verify summary \"%s\", want \"%s\"", err, summary);
}

/* The whole file, NUL-terminated. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    b[n] = '\0';
    if (len)
        *len = (size_t)n;
    return b;
}

static void spit(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* Split into lines (each keeps its '\n'); returns the count. */
#define MAXLINES 256
struct lines {
    char *text;                  /* the file */
    const char *at[MAXLINES];    /* line starts */
    size_t len[MAXLINES];        /* line lengths with '\n' */
    size_t n;                    /* lines */
};
static void split_lines(const char *path, struct lines *ls)
{
    size_t len;
    ls->text = slurp(path, &len);
    ls->n = 0;
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(ls->text + i, '\n', len - i);
        size_t l = nl ? (size_t)(nl - (ls->text + i)) + 1 : len - i;
        assert_true(ls->n < MAXLINES);
        ls->at[ls->n] = ls->text + i;
        ls->len[ls->n++] = l;
        i += l;
    }
}

/* The value of "key":"..." or "key":N in a line, as text. */
static void field(const char *line, const char *key, char *out, size_t n)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(line, pat);
    assert_non_null(p);
    p += strlen(pat);
    if (*p == '"')
        p++;
    size_t k = strcspn(p, "\",}");
    assert_true(k < n);
    memcpy(out, p, k);
    out[k] = '\0';
}

/* ---- cases ---- */

static void test_write_and_verify(void **state)
{
    char dir[PATH_MAX], path[PATH_MAX], err[ERRMAX];
    make_dir(dir, sizeof(dir));
    path_in(path, sizeof(path), dir, "audit.log");
    struct tg_audit_writer *w = start_ok(path, TG_AUDIT_FSYNC_INTERVAL, 1024);

    /* The caller's own seq, prev and hmac are ignored. */
    json_t *r = rec(0);
    json_object_set_new(r, "seq", json_integer(999));
    json_object_set_new(r, "hmac", json_string("forged"));
    json_object_set_new(r, "prev", json_string("forged"));
    assert_true(tg_audit_submit(w, r, false));
    submit_n(w, 1, 99);
    tg_audit_writer_stop(w);
    expect_ok("100 records, seq 1..100", 1, path);

    struct lines ls;
    split_lines(path, &ls);
    assert_int_equal(ls.n, 100);
    /* Member order: type, ts, seq, the rest, prev, hmac. */
    const char *want = "{\"type\":\"request\",\"ts\":\"2026-11-25T20:33:04.123456Z\",\"seq\":1,"
                       "\"request_id\":\"r-0\",\"client\":{\"ip\":\"203.0.113.7\",\"port\":51544},"
                       "\"decision\":\"allow\",\"reason\":null,\"status\":200,\"cost\":0.000316,"
                       "\"prev\":\"0000000000000000000000000000000000000000000000000000000000000000\","
                       "\"hmac\":\"";
    assert_memory_equal(ls.at[0], want, strlen(want));
    assert_null(strstr(ls.text, "forged"));

    /* The hmac recomputed with a one-shot EVP_Q_mac over the line without it. */
    for (size_t i = 0; i < ls.n; i++) {
        size_t len = ls.len[i] - 1;
        char body[4096];
        assert_true(len > 75 && len - 75 + 1 < sizeof(body));
        memcpy(body, ls.at[i], len - 75);
        body[len - 75] = '}';
        unsigned char md[32];
        size_t mdlen = 0;
        assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, KEY, KLEN,
                                  (unsigned char *)body, len - 74, md, sizeof(md), &mdlen));
        char hex[65];
        for (size_t k = 0; k < 32; k++)
            snprintf(hex + 2 * k, 3, "%02x", md[k]);
        assert_memory_equal(ls.at[i] + len - 66, hex, 64);
        if (i > 0) { /* prev = previous hmac */
            char prev[80];
            field(ls.at[i], "prev", prev, sizeof(prev));
            assert_memory_equal(prev, ls.at[i - 1] + ls.len[i - 1] - 67, 64);
        }
    }
    free(ls.text);
    assert_int_equal(verify(err, 1, path), 0);
    remove_dir(dir);
}

static void test_fsync_policies(void **state)
{
    static const enum tg_audit_fsync policies[] = {TG_AUDIT_FSYNC_ALWAYS, TG_AUDIT_FSYNC_INTERVAL,
                                                   TG_AUDIT_FSYNC_NEVER};
    for (size_t i = 0; i < 3; i++) {
        char dir[PATH_MAX], path[PATH_MAX];
        make_dir(dir, sizeof(dir));
        path_in(path, sizeof(path), dir, "audit.log");
        struct tg_audit_writer *w = start_ok(path, policies[i], 64);
        submit_n(w, 0, 300); /* more than the queue: blocking submits */
        wait_for(w, written_at_least, 300, "300 written");
        sleep_ms(60); /* a quiet interval log is fsynced by the timed wait */
        submit_n(w, 300, 10);
        tg_audit_writer_stop(w);
        expect_ok("310 records, seq 1..310", 1, path);
        remove_dir(dir);
    }
}

static void test_restart_continues(void **state)
{
    char dir[PATH_MAX], path[PATH_MAX];
    make_dir(dir, sizeof(dir));
    path_in(path, sizeof(path), dir, "audit.log");
    for (int round = 0; round < 3; round++) {
        struct tg_audit_writer *w = start_ok(path, TG_AUDIT_FSYNC_ALWAYS, 16);
        struct tg_audit_stats st;
        tg_audit_stats(w, &st);
        assert_int_equal(st.last_seq, (uint64_t)round * 10);
        assert_int_equal(st.written, 0);
        assert_true(st.healthy);
        submit_n(w, round * 10, 10);
        tg_audit_writer_stop(w);
    }
    expect_ok("30 records, seq 1..30", 1, path);
    struct lines ls;
    split_lines(path, &ls);
    char seq[32], prev[80];
    field(ls.at[10], "seq", seq, sizeof(seq));
    assert_string_equal(seq, "11");
    field(ls.at[10], "prev", prev, sizeof(prev));
    assert_memory_equal(prev, ls.at[9] + ls.len[9] - 67, 64);
    free(ls.text);

    /* Another log (a writer that started on an empty file) glued on. */
    char other[PATH_MAX], copy[PATH_MAX], err[ERRMAX];
    path_in(other, sizeof(other), dir, "x.log");
    path_in(copy, sizeof(copy), dir, "copy.log");
    struct tg_audit_writer *w = start_ok(other, TG_AUDIT_FSYNC_NEVER, 16);
    submit_n(w, 0, 2);
    tg_audit_writer_stop(w);
    size_t la, lb;
    char *ta = slurp(path, &la), *tb = slurp(other, &lb);
    char *both = malloc(la + lb);
    assert_non_null(both);
    memcpy(both, ta, la);
    memcpy(both + la, tb, lb);
    spit(copy, both, la + lb);
    free(ta);
    free(tb);
    free(both);
    assert_int_equal(verify(err, 1, copy), 1);
    assert_non_null(strstr(err, "copy.log:31: seq 1 follows 30 (the chain starts again"));
    remove_dir(dir);
}

/* The 1 MiB line ceiling, on both sides. */
static void test_line_limit(void **state)
{
    char dir[PATH_MAX], path[PATH_MAX], copy[PATH_MAX], err[ERRMAX];
    make_dir(dir, sizeof(dir));
    path_in(path, sizeof(path), dir, "audit.log");
    path_in(copy, sizeof(copy), dir, "copy.log");
    struct tg_audit_writer *w = start_ok(path, TG_AUDIT_FSYNC_NEVER, 16);
    submit_n(w, 0, 2);
    size_t big = TG_AUDIT_LINE_MAX;
    char *huge = malloc(big + 1);
    assert_non_null(huge);
    memset(huge, 'a', big);
    huge[big] = '\0';
    json_t *r = rec(2);
    json_object_set_new(r, "ua", json_string(huge));
    assert_true(tg_audit_submit(w, r, true)); /* accepted, then dropped by the writer */
    submit_n(w, 3, 2);
    wait_for(w, written_at_least, 4, "4 written");
    struct tg_audit_stats st;
    tg_audit_stats(w, &st);
    assert_int_equal(st.dropped, 1);
    assert_int_equal(st.last_seq, 4); /* no hole in the chain */
    tg_audit_writer_stop(w);
    expect_ok("4 records, seq 1..4", 1, path);

    /* A line over the ceiling in a file. */
    size_t len;
    char *text = slurp(path, &len);
    char *buf = malloc(len + big + 2);
    assert_non_null(buf);
    memcpy(buf, text, len);
    memcpy(buf + len, huge, big);
    buf[len + big] = '\n';
    spit(copy, buf, len + big + 1);
    assert_int_equal(verify(err, 1, copy), 1);
    assert_non_null(strstr(err, "copy.log:5: line longer than 1048575 bytes"));
    free(buf);
    free(text);
    free(huge);
    remove_dir(dir);
}

static void test_reopen_rotation(void **state)
{
    char dir[PATH_MAX], path[PATH_MAX], old[PATH_MAX], older[PATH_MAX], err[ERRMAX];
    make_dir(dir, sizeof(dir));
    path_in(path, sizeof(path), dir, "audit.log");
    path_in(old, sizeof(old), dir, "audit.log.1");
    path_in(older, sizeof(older), dir, "audit.log.2");
    struct tg_audit_writer *w = start_ok(path, TG_AUDIT_FSYNC_INTERVAL, 64);
    submit_n(w, 0, 5);
    wait_for(w, written_at_least, 5, "5 written");
    assert_int_equal(rename(path, older), 0); /* logrotate: mv, then SIGUSR1 */
    tg_audit_reopen(w);
    submit_n(w, 5, 7);
    wait_for(w, written_at_least, 12, "12 written");
    assert_int_equal(rename(path, old), 0);
    tg_audit_reopen(w);
    tg_audit_reopen(w); /* twice: the second finds the same file */
    submit_n(w, 12, 3);
    tg_audit_writer_stop(w);

    expect_ok("15 records, seq 1..15", 3, older, old, path);
    expect_ok("5 records, seq 1..5", 1, older);
    expect_ok("7 records, seq 6..12", 1, old); /* a series may start after an absent file */
    assert_int_equal(verify(err, 2, old, older), 1);
    if (!strstr(err, "audit.log.2:1: seq 1 follows 12 at ") || !strstr(err, "files out of order"))
        fail_msg("got %s", err);
    assert_int_equal(verify(err, 2, older, path), 1); /* the middle file missing */
    if (!strstr(err, "audit.log:1: seq 13 follows 5 at "))
        fail_msg("got %s", err);
    assert_int_equal(verify(err, 3, older, path, old), 1);
    remove_dir(dir);
}

/* ---- tampering: one table row per edit of a 20-record log ---- */

enum edit_kind {
    EDIT_BYTE,   /* change byte `arg` of line a */
    EDIT_DELETE, /* delete lines a..b */
    EDIT_INSERT, /* insert a copy of line b after line a */
    EDIT_SWAP,   /* swap lines a and b */
    EDIT_TRUNC,  /* cut the file `arg` bytes short */
    EDIT_RAW,    /* insert the text `raw` as a line after line a */
    EDIT_NONL,   /* drop the final newline */
};
struct tamper_case {
    const char *name;    /* for messages */
    enum edit_kind kind; /* what to do */
    size_t a, b;         /* 1-based lines */
    size_t arg;          /* byte offset or count */
    const char *raw;     /* for EDIT_RAW */
    int rc;              /* expected verify result */
    const char *want;    /* expected message (substring; "audit.log" is the file) */
};

static const struct tamper_case tamper_cases[] = {
    {"untouched", EDIT_BYTE, 0, 0, 0, NULL, 0, "20 records, seq 1..20"},
    {"edit id", EDIT_BYTE, 10, 0, 80, NULL, 1, "copy.log:10: hmac mismatch (line edited)"},
    {"edit ts", EDIT_BYTE, 12, 0, 49, NULL, 1, "copy.log:12: hmac mismatch (line edited)"},
    {"edit seq", EDIT_BYTE, 7, 0, 59, NULL, 1, "copy.log:7: hmac mismatch (line edited)"},
    {"edit hmac", EDIT_BYTE, 20, 0, (size_t)-5, NULL, 1, "copy.log:20: hmac mismatch"},
    {"edit brace", EDIT_BYTE, 1, 0, 0, NULL, 1, "copy.log:1: not an audit record"},
    {"delete one", EDIT_DELETE, 10, 10, 0, NULL, 1,
     "copy.log:10: seq 11 follows 9 (line removed)"},
    {"delete three", EDIT_DELETE, 10, 12, 0, NULL, 1,
     "copy.log:10: seq 13 follows 9 (3 lines removed)"},
    {"delete last-but-one", EDIT_DELETE, 19, 19, 0, NULL, 1,
     "copy.log:19: seq 20 follows 18 (line removed)"},
    {"delete first", EDIT_DELETE, 1, 1, 0, NULL, 0, "19 records, seq 2..20"},
    {"insert copy", EDIT_INSERT, 7, 3, 0, NULL, 1,
     "copy.log:8: seq 3 follows 7 (line inserted: a copy of seq 3)"},
    {"insert dup", EDIT_INSERT, 7, 7, 0, NULL, 1,
     "copy.log:8: seq 7 follows 7 (line inserted: a copy of seq 7)"},
    {"insert at end", EDIT_INSERT, 20, 4, 0, NULL, 1,
     "copy.log:21: seq 4 follows 20 (line inserted or lines reordered)"},
    {"swap adjacent", EDIT_SWAP, 5, 6, 0, NULL, 1,
     "copy.log:5: seq 6 follows 4 (lines reordered: seq 5 comes after it)"},
    {"swap far", EDIT_SWAP, 3, 9, 0, NULL, 1,
     "copy.log:3: seq 9 follows 2 (lines removed or reordered)"},
    {"torn last", EDIT_TRUNC, 0, 0, 30, NULL, 1, "copy.log:20: torn last line (no newline"},
    {"no newline", EDIT_NONL, 0, 0, 0, NULL, 1,
     "copy.log:20: torn last line: record seq 20 lacks its newline"},
    {"blank line", EDIT_RAW, 4, 0, 0, "", 1, "copy.log:5: empty line"},
    {"garbage", EDIT_RAW, 4, 0, 0, "hello", 1, "copy.log:5: not an audit record"},
    {"fake record", EDIT_RAW, 4, 0, 0,
     "{\"type\":\"request\",\"seq\":5,\"prev\":\"00\",\"hmac\":"
     "\"0000000000000000000000000000000000000000000000000000000000000000\"}",
     1, "copy.log:5: hmac mismatch"},
    /* A non-record across which the chain continues is what a repaired torn
     * write looks like: skipped, with a note (it carries no record). */
    {"fragment", EDIT_RAW, 4, 0, 0, "{\"type\":\"req", 0,
     "copy.log:5: torn line skipped"},
};

static void apply_edit(const struct tamper_case *c, const struct lines *ls, const char *out)
{
    size_t total = 0;
    for (size_t i = 0; i < ls->n; i++)
        total += ls->len[i];
    char *buf = malloc(total * 2 + 256), *p = buf;
    assert_non_null(buf);
    for (size_t i = 1; i <= ls->n; i++) {
        size_t src = i;
        if (c->kind == EDIT_DELETE && i >= c->a && i <= c->b)
            continue;
        if (c->kind == EDIT_SWAP && (i == c->a || i == c->b))
            src = i == c->a ? c->b : c->a;
        memcpy(p, ls->at[src - 1], ls->len[src - 1]);
        if (c->kind == EDIT_BYTE && i == c->a) {
            size_t off = c->arg == (size_t)-5 ? ls->len[i - 1] - 5 : c->arg;
            p[off] = p[off] == '1' ? '2' : '1';
        }
        p += ls->len[src - 1];
        if (c->kind == EDIT_INSERT && i == c->a) {
            memcpy(p, ls->at[c->b - 1], ls->len[c->b - 1]);
            p += ls->len[c->b - 1];
        }
        if (c->kind == EDIT_RAW && i == c->a) {
            memcpy(p, c->raw, strlen(c->raw));
            p += strlen(c->raw);
            *p++ = '\n';
        }
    }
    if (c->kind == EDIT_TRUNC)
        p -= c->arg;
    if (c->kind == EDIT_NONL)
        p--;
    spit(out, buf, (size_t)(p - buf));
    free(buf);
}

static void test_tampering(void **state)
{
    char dir[PATH_MAX], path[PATH_MAX], copy[PATH_MAX], err[ERRMAX];
    make_dir(dir, sizeof(dir));
    path_in(path, sizeof(path), dir, "audit.log");
    path_in(copy, sizeof(copy), dir, "copy.log");
    struct tg_audit_writer *w = start_ok(path, TG_AUDIT_FSYNC_NEVER, 64);
    submit_n(w, 1000, 20);
    tg_audit_writer_stop(w);
    struct lines ls;
    split_lines(path, &ls);
    assert_int_equal(ls.n, 20);
    for (size_t i = 0; i < sizeof(tamper_cases) / sizeof(tamper_cases[0]); i++) {
        const struct tamper_case *c = &tamper_cases[i];
        apply_edit(c, &ls, copy);
        int rc = verify(err, 1, copy);
        if (rc != c->rc || !strstr(err, c->want))
            fail_msg("%s: rc %d \"%s\", want rc %d \"%s\"", c->name, rc, err, c->rc, c->want);
    }
    free(ls.text);
    remove_dir(dir);
}

/* The Python-made fixtures: the format as an independent implementation writes it. */
static void test_fixtures(void **state)
{
    char a[PATH_MAX], b[PATH_MAX], err[ERRMAX];
    const char *p = a;
    data_file(a, sizeof(a), "good.log");
    expect_ok("8 records, seq 1..8", 1, a);
    /* A different key fails on the first line. */
    assert_int_equal(tg_audit_verify_files(&p, 1, (const unsigned char *)KEY "x", KLEN + 1, err,
                                           sizeof(err)),
                     1);
    assert_non_null(strstr(err, "good.log:1: hmac mismatch"));
    data_file(a, sizeof(a), "rot.0");
    data_file(b, sizeof(b), "rot.1");
    expect_ok("8 records, seq 1..8", 2, a, b);
    assert_int_equal(verify(err, 2, b, a), 1);
    if (!strstr(err, "rot.0:1: seq 1 follows 8 at ") || !strstr(err, "rot.1:3 (files out of order)"))
        fail_msg("got %s", err);
    data_file(a, sizeof(a), "mid-chain.log");
    expect_ok("5 records, seq 4..8", 1, a);
    data_file(a, sizeof(a), "repaired.log");
    expect_ok("8 records, seq 1..8; note: ", 1, a);
    assert_int_equal(verify(err, 1, a), 0);
    assert_non_null(strstr(err, "repaired.log:4: torn line skipped"));
}

/* Crash in the middle of a write: the tail is torn. */
static void test_torn_tail_recovery(void **state)
{
    char dir[PATH_MAX], path[PATH_MAX], err[ERRMAX];
    make_dir(dir, sizeof(dir));
    path_in(path, sizeof(path), dir, "audit.log");
    struct tg_audit_writer *w = start_ok(path, TG_AUDIT_FSYNC_ALWAYS, 16);
    submit_n(w, 0, 5);
    tg_audit_writer_stop(w);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(truncate(path, st.st_size - 40), 0); /* record 5 cut short */
    assert_int_equal(verify(err, 1, path), 1);
    assert_non_null(strstr(err, "audit.log:5: torn last line"));

    w = start_ok(path, TG_AUDIT_FSYNC_ALWAYS, 16);
    struct tg_audit_stats s;
    tg_audit_stats(w, &s);
    assert_int_equal(s.last_seq, 4); /* continues from the last complete line */
    submit_n(w, 5, 3);
    tg_audit_writer_stop(w);
    expect_ok("7 records, seq 1..7; note: ", 1, path);
    assert_int_equal(verify(err, 1, path), 0);
    assert_non_null(strstr(err, "audit.log:5: torn line skipped"));
    struct lines ls;
    split_lines(path, &ls);
    assert_int_equal(ls.n, 8); /* the fragment stays, as line 5 */
    char seq[32];
    field(ls.at[5], "seq", seq, sizeof(seq));
    assert_string_equal(seq, "5");
    free(ls.text);

    /* Only the newline lost: the record counts, its seq is not reissued. */
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(truncate(path, st.st_size - 1), 0);
    w = start_ok(path, TG_AUDIT_FSYNC_ALWAYS, 16);
    tg_audit_stats(w, &s);
    assert_int_equal(s.last_seq, 7);
    submit_n(w, 8, 2);
    tg_audit_writer_stop(w);
    expect_ok("9 records, seq 1..9", 1, path);

    /* A file that is nothing but a fragment. */
    spit(path, "{\"type\":\"req", 12);
    w = start_ok(path, TG_AUDIT_FSYNC_ALWAYS, 16);
    submit_n(w, 0, 2);
    tg_audit_writer_stop(w);
    expect_ok("2 records, seq 1..2; note: ", 1, path);
    remove_dir(dir);
}

static void test_tail_edited_refused(void **state)
{
    char dir[PATH_MAX], path[PATH_MAX], err[ERRMAX];
    make_dir(dir, sizeof(dir));
    path_in(path, sizeof(path), dir, "audit.log");
    struct tg_audit_writer *w = start_ok(path, TG_AUDIT_FSYNC_NEVER, 16);
    submit_n(w, 0, 5);
    tg_audit_writer_stop(w);

    size_t len;
    char *text = slurp(path, &len);
    char *last = text + len - 2;
    while (last > text && last[-1] != '\n')
        last--;
    char *id = strstr(last, "\"r-4\"");
    assert_non_null(id);
    id[3] = '9';
    spit(path, text, len);
    assert_null(start(path, TG_AUDIT_FSYNC_NEVER, 16, err));
    if (!strstr(err, path) || !strstr(err, "last line") ||
        !strstr(err, "does not verify with this key"))
        fail_msg("got %s", err);
    id[3] = '4';
    spit(path, text, len);
    free(text);

    /* The right file, a different key. */
    struct tg_audit_settings s = {.path = path,
                                  .key = (const unsigned char *)"another-key-0123456789abcdef-0123",
                                  .keylen = 33,
                                  .fsync = TG_AUDIT_FSYNC_NEVER,
                                  .queue_records = 4};
    assert_null(tg_audit_writer_start(&s, err, sizeof(err)));
    assert_non_null(strstr(err, "does not verify with this key"));
    /* Not an audit log at all. */
    spit(path, "hello\n", 6);
    assert_null(start(path, TG_AUDIT_FSYNC_NEVER, 16, err));
    assert_non_null(strstr(err, "not an audit record"));
    /* Settings checked. */
    s.keylen = 31;
    assert_null(tg_audit_writer_start(&s, err, sizeof(err)));
    assert_non_null(strstr(err, "invalid settings"));
    /* Unwritable path. */
    path_in(path, sizeof(path), dir, "no/such/dir");
    assert_null(start(path, TG_AUDIT_FSYNC_NEVER, 16, err));
    assert_non_null(strstr(err, "No such file"));
    path_in(path, sizeof(path), dir, "audit.log");
    unlink(path);
    remove_dir(dir);
}

static void set_fsize_limit(rlim_t cur)
{
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &rl), 0);
    rl.rlim_cur = cur;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

/*
 * EFBIG from RLIMIT_FSIZE: the batch in flight is cut short, the writer
 * counts errors and goes unhealthy, the queue fills and non-blocking submits
 * are refused; once the limit is lifted every accepted record lands, in order.
 */
static void test_write_error_nothing_lost(void **state)
{
    char dir[PATH_MAX], path[PATH_MAX];
    struct rlimit saved;
    struct tg_audit_stats st;
    make_dir(dir, sizeof(dir));
    path_in(path, sizeof(path), dir, "audit.log");
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);

    struct tg_audit_writer *w = start_ok(path, TG_AUDIT_FSYNC_INTERVAL, 8);
    submit_n(w, 0, 5);
    wait_for(w, written_at_least, 5, "5 written");
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    off_t limit = sb.st_size + 150;
    set_fsize_limit((rlim_t)limit); /* room for part of one more line */

    int accepted = 5, refused = 0;
    for (int i = 5; i < 40; i++) {
        if (tg_audit_submit(w, rec(i), false))
            accepted++;
        else
            refused++;
        if (i == 5)
            wait_for(w, has_errors, 1, "a write error");
    }
    tg_audit_stats(w, &st);
    assert_true(st.write_errors > 0);
    assert_false(st.healthy);
    assert_int_equal(st.written, 5);
    assert_true(refused > 0);
    assert_int_equal(st.dropped, (uint64_t)refused);
    assert_int_equal(st.pending, (uint64_t)(accepted - 5));
    assert_int_equal(st.queue_depth, 8); /* full */
    assert_false(tg_audit_has_room(w));
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_size, limit); /* a short write: a torn line, for now */

    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
    wait_for(w, written_at_least, (uint64_t)accepted, "every accepted record");
    tg_audit_stats(w, &st);
    assert_true(st.healthy);
    assert_int_equal(st.last_seq, (uint64_t)accepted);
    assert_true(tg_audit_has_room(w));
    submit_n(w, 100, 3);
    tg_audit_writer_stop(w);

    char want[64];
    snprintf(want, sizeof(want), "%d records, seq 1..%d", accepted + 3, accepted + 3);
    expect_ok(want, 1, path); /* no torn line: the cut batch was completed */
    struct lines ls;
    split_lines(path, &ls);
    assert_int_equal(ls.n, (size_t)accepted + 3);
    /* In submission order: the accepted ids, increasing. */
    int last = -1;
    for (size_t i = 0; i < ls.n; i++) {
        char id[32];
        field(ls.at[i], "request_id", id, sizeof(id));
        int n = (int)strtol(id + 2, NULL, 10);
        assert_true(n > last);
        last = n;
    }
    free(ls.text);
    remove_dir(dir);
}

struct blocked_arg {
    struct tg_audit_writer *w; /* the writer */
    int n;                     /* records to submit with block=true */
    int ok;                    /* how many were accepted */
};
static void *blocked_submitter(void *p)
{
    struct blocked_arg *a = p;
    for (int i = 0; i < a->n; i++)
        if (tg_audit_submit(a->w, rec(500 + i), true))
            __atomic_add_fetch(&a->ok, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

/*
 * ENOSPC from /dev/full: block=true submitters wait while the queue is full;
 * stop() wakes them (false), retries for its grace period, then gives up and
 * counts what it could not write.
 */
static void test_disk_full_stop(void **state)
{
    char err[ERRMAX];
    struct tg_audit_stats st;
    if (access("/dev/full", W_OK) != 0)
        skip();
    struct tg_audit_writer *w = start("/dev/full", TG_AUDIT_FSYNC_ALWAYS, 4, err);
    if (!w)
        fail_msg("start /dev/full: %s", err);
    assert_true(tg_audit_submit(w, rec(0), false));
    wait_for(w, has_errors, 1, "ENOSPC");
    for (int i = 1; i <= 4; i++)
        assert_true(tg_audit_submit(w, rec(i), false));
    assert_false(tg_audit_submit(w, rec(5), false));
    tg_audit_stats(w, &st);
    assert_false(st.healthy);
    assert_int_equal(st.dropped, 1);
    assert_int_equal(st.pending, 5);

    struct blocked_arg a = {.w = w, .n = 1};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, blocked_submitter, &a), 0);
    sleep_ms(50);
    uint64_t t0 = mono_ms();
    tg_audit_writer_stop(w);
    uint64_t took = mono_ms() - t0;
    pthread_join(t, NULL);
    assert_int_equal(a.ok, 0);
    assert_true(took >= 4000 && took < 9000);
}

/* Blocking submitters proceed as the writer catches up. */
static void test_block_waits_for_room(void **state)
{
    char dir[PATH_MAX], path[PATH_MAX];
    struct rlimit saved;
    make_dir(dir, sizeof(dir));
    path_in(path, sizeof(path), dir, "audit.log");
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
    struct tg_audit_writer *w = start_ok(path, TG_AUDIT_FSYNC_NEVER, 2);
    set_fsize_limit(0); /* nothing can be written */
    struct blocked_arg a = {.w = w, .n = 20};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, blocked_submitter, &a), 0);
    wait_for(w, has_errors, 2, "write errors");
    sleep_ms(50);
    int ok = __atomic_load_n(&a.ok, __ATOMIC_SEQ_CST);
    assert_true(ok >= 3 && ok <= 4); /* one batch of one or two, and a full queue */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
    pthread_join(t, NULL);
    assert_int_equal(a.ok, 20);
    tg_audit_writer_stop(w);
    expect_ok("20 records, seq 1..20", 1, path);
    remove_dir(dir);
}

/* An emitting builder, as filters/audit.c queues for a request. */
struct emit_rec {
    struct tg_audit_lazy lazy; /* first */
    int i;                     /* its number */
};

static void emit_rec(struct tg_audit_lazy *l, struct tg_jw *j, uint64_t seq)
{
    const struct emit_rec *e = (const struct emit_rec *)l;
    TG_JW_LIT(j, "{\"type\":\"request\",\"ts\":\"2026-11-25T20:33:04.123456Z\",\"seq\":");
    tg_jw_int(j, (int64_t)seq);
    TG_JW_LIT(j, ",\"n\":");
    tg_jw_int(j, e->i);
    TG_JW_LIT(j, ",\"path\":");
    tg_jw_str(j, "/bad\xff", 5);
}

static void free_rec(struct tg_audit_lazy *l)
{
    tg_mem_free(l);
}

/* A list of n emitting builders numbered from. */
static struct tg_audit_lazy *emit_list(int from, int n)
{
    struct tg_audit_lazy *head = NULL, **tail = &head;
    for (int i = from; i < from + n; i++) {
        struct emit_rec *e = tg_mem_calloc(1, sizeof(*e));
        assert_non_null(e);
        e->lazy.emit = emit_rec;
        e->lazy.free = free_rec;
        e->i = i;
        *tail = &e->lazy;
        tail = &e->lazy.next;
    }
    return head;
}

/* Worker credit: promises come in batches of at most half the free slots;
 * a batch hand-over uses them, in order, and gives credit back once the
 * queue is more than half full. */
static void test_credit_and_batches(void **state)
{
    (void)state;
    char dir[PATH_MAX], path[PATH_MAX];
    struct rlimit saved;
    make_dir(dir, sizeof(dir));
    path_in(path, sizeof(path), dir, "audit.log");
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
    struct tg_audit_writer *w = start_ok(path, TG_AUDIT_FSYNC_NEVER, 16);
    set_fsize_limit(0); /* hold everything in the queue */
    /* 16 free: 8, then 4, 2, 1, 1, and nothing once all 16 are promised. */
    static const size_t grants[] = {8, 4, 2, 1, 1, 0};
    size_t total = 0;
    for (size_t i = 0; i < sizeof(grants) / sizeof(grants[0]); i++) {
        size_t got = tg_audit_reserve_n(w, 32);
        assert_int_equal(got, grants[i]);
        total += got;
    }
    assert_int_equal(total, 16);
    assert_false(tg_audit_reserve(w));
    assert_false(tg_audit_has_room(w));
    /* Use 6 of them in one batch; the 10 left are still promised. */
    size_t credit = 10;
    assert_int_equal(tg_audit_submit_batch(w, emit_list(1, 6), &credit), 6);
    /* 6 queued + 10 promised > half: the credit went back. */
    assert_int_equal(credit, 0);
    struct tg_audit_stats st;
    tg_audit_stats(w, &st);
    assert_true(st.queue_depth + st.pending >= 6 - 2); /* the writer may hold a batch */
    assert_true(tg_audit_has_room(w));
    /* Release then reserve again: the slots are back. */
    size_t got = tg_audit_reserve_n(w, 32);
    assert_true(got >= 1 && got <= 5);
    tg_audit_release_n(w, got);
    credit = 0;
    assert_int_equal(tg_audit_reserve_n(w, 4), 4);
    assert_int_equal(tg_audit_submit_batch(w, emit_list(7, 4), &credit), 4);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
    wait_for(w, written_at_least, 10, "10 records");
    tg_audit_writer_stop(w);
    expect_ok("10 records, seq 1..10", 1, path);
    /* In order, and the bad byte came out as \ufffd. */
    struct lines ls;
    split_lines(path, &ls);
    assert_int_equal(ls.n, 10);
    for (size_t i = 0; i < ls.n; i++) {
        char line[512], n[32];
        assert_true(ls.len[i] < sizeof(line));
        memcpy(line, ls.at[i], ls.len[i]);
        line[ls.len[i]] = '\0';
        field(line, "n", n, sizeof(n));
        assert_int_equal(strtol(n, NULL, 10), (long)i + 1);
        assert_non_null(strstr(line, "\"path\":\"/bad\\ufffd\""));
    }
    free(ls.text);
    remove_dir(dir);
}

/* Many threads submitting at once: one chain, every record once. */
static void test_concurrent_submitters(void **state)
{
    char dir[PATH_MAX], path[PATH_MAX];
    make_dir(dir, sizeof(dir));
    path_in(path, sizeof(path), dir, "audit.log");
    struct tg_audit_writer *w = start_ok(path, TG_AUDIT_FSYNC_INTERVAL, 32);
    struct blocked_arg a[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (struct blocked_arg){.w = w, .n = 250};
        assert_int_equal(pthread_create(&t[i], NULL, blocked_submitter, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(a[i].ok, 250);
    }
    tg_audit_reopen(w); /* same file: a no-op */
    tg_audit_writer_stop(w);
    expect_ok("1000 records, seq 1..1000", 1, path);
    remove_dir(dir);
}

static void test_cli(void **state)
{
    char a[PATH_MAX], b[PATH_MAX];
    data_file(a, sizeof(a), "rot.0");
    data_file(b, sizeof(b), "rot.1");
    char *ok[] = {"audit", "verify", a, b, NULL};
    char *swapped[] = {"audit", "verify", b, a, NULL};
    char *dashdash[] = {"audit", "verify", "--", a, NULL};
    char *none[] = {"audit", "verify", NULL};
    char *bad_opt[] = {"audit", "verify", "-x", a, NULL};
    char *bad_cmd[] = {"audit", "check", a, NULL};
    char *no_c[] = {"audit", "verify", "-c", NULL};
    char *missing[] = {"audit", "verify", "/nonexistent/audit.log", NULL};

    setenv("TOLLGATE_AUDIT_KEY", KEY, 1);
    assert_int_equal(tg_cli_audit(4, ok), 0);
    assert_int_equal(tg_cli_audit(4, swapped), 1);
    assert_int_equal(tg_cli_audit(4, dashdash), 0);
    assert_int_equal(tg_cli_audit(2, none), 2);
    assert_int_equal(tg_cli_audit(4, bad_opt), 2);
    assert_int_equal(tg_cli_audit(3, bad_cmd), 2);
    assert_int_equal(tg_cli_audit(3, no_c), 2);
    assert_int_equal(tg_cli_audit(3, missing), 1);
    setenv("TOLLGATE_AUDIT_KEY", "short", 1);
    assert_int_equal(tg_cli_audit(4, ok), 1);
    unsetenv("TOLLGATE_AUDIT_KEY");
    assert_int_equal(tg_cli_audit(4, ok), 1);
}

/* ---- failmalloc: the verifier and writer start, failing allocation N ---- */


static void test_failmalloc(void **state)
{
    char dir[PATH_MAX], path[PATH_MAX], good[PATH_MAX], err[ERRMAX];
    make_dir(dir, sizeof(dir));
    path_in(path, sizeof(path), dir, "audit.log");
    data_file(good, sizeof(good), "repaired.log");
    json_set_alloc_funcs(tg_mem_malloc, tg_mem_free);

    /* The verifier: a failure is an error with a message, never a pass. */
    for (unsigned long n = 1;; n++) {
        tg_test_failmalloc_arm(n);
        int rc = verify(err, 1, good);
        tg_test_failmalloc_disarm();
        if (!tg_test_failmalloc_failed()) {
            assert_int_equal(rc, 0);
            print_message("verify: %lu allocations, each failed once\n", n - 1);
            break;
        }
        assert_true(err[0] != '\0');
    }
    /* Writer start (with recovery of an existing tail), a few records, stop. */
    struct tg_audit_writer *w = start_ok(path, TG_AUDIT_FSYNC_NEVER, 8);
    submit_n(w, 0, 3);
    tg_audit_writer_stop(w);
    for (unsigned long n = 1;; n++) {
        tg_test_failmalloc_arm(n);
        w = start(path, TG_AUDIT_FSYNC_NEVER, 8, err);
        bool failed_in_start = tg_test_failmalloc_failed();
        if (w) {
            json_t *r = json_pack("{s:s,s:s,s:i}", "type", "request", "ts", "t", "n", (int)n);
            if (r)
                tg_audit_submit(w, r, true);
            tg_audit_writer_stop(w);
        } else {
            assert_true(failed_in_start);
            assert_true(err[0] != '\0');
        }
        tg_test_failmalloc_disarm();
        if (!tg_test_failmalloc_failed()) {
            print_message("writer: %lu allocations, each failed once\n", n - 1);
            break;
        }
        assert_true(n < 1000);
    }
    json_set_alloc_funcs(malloc, free);
    expect_ok("records, seq 1..", 1, path); /* whatever got in, one unbroken chain */
    remove_dir(dir);
}

static int group_setup(void **state)
{
    (void)state;
    init_data_dir();
    const char *t = getenv("TMPDIR");
    snprintf(tmp_root, sizeof(tmp_root), "%s", t && *t ? t : "/tmp");
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_and_verify),
        cmocka_unit_test(test_fsync_policies),
        cmocka_unit_test(test_restart_continues),
        cmocka_unit_test(test_reopen_rotation),
        cmocka_unit_test(test_line_limit),
        cmocka_unit_test(test_tampering),
        cmocka_unit_test(test_fixtures),
        cmocka_unit_test(test_torn_tail_recovery),
        cmocka_unit_test(test_tail_edited_refused),
        cmocka_unit_test(test_write_error_nothing_lost),
        cmocka_unit_test(test_block_waits_for_room),
        cmocka_unit_test(test_concurrent_submitters),
        cmocka_unit_test(test_credit_and_batches),
        cmocka_unit_test(test_cli),
        cmocka_unit_test(test_failmalloc),
        cmocka_unit_test(test_disk_full_stop),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
