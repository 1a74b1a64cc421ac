/*
 * fuzz_audit_verify.c - tg_audit_verify_files() and the writer's tail
 * recovery on arbitrary files (THREATS §6, STYLE §23).
 *
 * The first byte holds mode flags, the rest is the file:
 *
 *   0x01  re-sign: every line shaped like a record (ending in
 *         ,"hmac":"<64 bytes>"}) gets its hmac recomputed under the test key,
 *         so the fuzzer gets past the MAC to the JSON, seq and chain rules;
 *   0x04  with 0x01, re-chain too: a ,"prev":"<64 bytes>" member just before
 *         the hmac gets the previous re-signed line's hmac (zeros first);
 *   0x02  split the file in two at its middle newline (rotation);
 *   0x08  writer: start a writer on the (single) file, append one record,
 *         stop.
 *
 * Files live in memfds, opened by the verifier as /proc/self/fd/N.
 * Oracles: no crash, leak or UB; a series that verifies verifies again with
 * the same summary; and (0x08) a file that verifies is accepted by the
 * writer's recovery, and after one appended record it still verifies, with
 * one record more.  The key is the one in tests/data/audit/make-fixtures.py,
 * whose seeds are in fuzz/corpus/audit_verify.
 *
 *   mkdir -p /tmp/corpus-av && build-fuzz/fuzz/fuzz_audit_verify /tmp/corpus-av \
 *       fuzz/corpus/audit_verify
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "filters/audit_writer.h"
#include "proxy/log.h"

#define KEY "tollgate-audit-test-key-0123456789abcdef"
#define KLEN (sizeof(KEY) - 1)
#define SUFFIX_LEN 75
#define PREV_LEN 74 /* ,"prev":"<64 hex>" */

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* The writer warns about every torn tail it repairs; keep errors only. */
    tg_log_set_level(TG_LOG_ERROR);
    return 0;
}

static void hex(const unsigned char *md, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = d[md[i] >> 4];
        out[2 * i + 1] = d[md[i] & 15];
    }
}

/* Re-sign (and re-chain) the record-shaped lines of buf in place. */
static void resign(char *buf, size_t len, bool rechain)
{
    char prev[64];
    memset(prev, '0', sizeof(prev));
    for (size_t i = 0; i < len;) {
        char *line = buf + i;
        char *nl = memchr(line, '\n', len - i);
        size_t n = nl ? (size_t)(nl - line) : len - i;
        i += n + (nl ? 1 : 0);
        if (n < SUFFIX_LEN + 1 || memcmp(line + n - SUFFIX_LEN, ",\"hmac\":\"", 9) != 0 ||
            memcmp(line + n - 2, "\"}", 2) != 0)
            continue;
        char *p = line + n - SUFFIX_LEN - PREV_LEN;
        if (rechain && n >= SUFFIX_LEN + PREV_LEN + 1 && memcmp(p, ",\"prev\":\"", 9) == 0 &&
            p[PREV_LEN - 1] == '"')
            memcpy(p + 9, prev, 64);
        /* The MAC input is the line up to the suffix, then '}'. */
        size_t blen = n - SUFFIX_LEN + 1;
        char *body = malloc(blen);
        CHECK(body);
        memcpy(body, line, blen - 1);
        body[blen - 1] = '}';
        unsigned char md[32];
        size_t mdlen = 0;
        CHECK(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, KEY, KLEN, (unsigned char *)body,
                        blen, md, sizeof(md), &mdlen));
        free(body);
        hex(md, line + n - 66);
        memcpy(prev, line + n - 66, 64);
    }
}

/* A memfd holding [p, p+n) and its /proc path; -1 on failure. */
static int mem_file(const char *p, size_t n, char path[64])
{
    int fd = (int)syscall(SYS_memfd_create, "audit", 0u);
    if (fd < 0)
        return -1;
    size_t off = 0;
    while (off < n) {
        ssize_t k = write(fd, p + off, n - off);
        if (k < 0 && errno == EINTR)
            continue;
        CHECK(k > 0);
        off += (size_t)k;
    }
    snprintf(path, 64, "/proc/self/fd/%d", fd);
    return fd;
}

static int verify(const char *const *paths, size_t n, char *err, size_t errlen)
{
    return tg_audit_verify_files(paths, n, (const unsigned char *)KEY, KLEN, err, errlen);
}

/* "N records, seq A..B..." -> N and B (0 and 0 for "0 records"). */
static void parse_summary(const char *s, uint64_t *count, uint64_t *last)
{
    char *end;
    *count = strtoull(s, &end, 10);
    *last = 0;
    const char *dots = strstr(s, "..");
    if (*count && dots)
        *last = strtoull(dots + 2, NULL, 10);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[1024], err2[1024], paths[2][64];
    const char *pv[2] = {paths[0], paths[1]};
    int fds[2] = {-1, -1};
    size_t nfiles = 1;

    if (size < 1)
        return 0;
    unsigned flags = data[0];
    size_t len = size - 1;
    char *buf = malloc(len + 1);
    CHECK(buf);
    memcpy(buf, data + 1, len);
    if (flags & 1)
        resign(buf, len, flags & 4);

    size_t cut = len;
    if (flags & 2) {
        const char *mid = len ? memchr(buf + len / 2, '\n', len - len / 2) : NULL;
        cut = mid ? (size_t)(mid - buf) + 1 : len;
        nfiles = 2;
    }
    if ((fds[0] = mem_file(buf, cut, paths[0])) < 0)
        goto out;
    if (nfiles == 2 && (fds[1] = mem_file(buf + cut, len - cut, paths[1])) < 0)
        goto out;

    int rc = verify(pv, nfiles, err, sizeof(err));
    CHECK(rc == 0 || rc == 1);
    CHECK(err[0] != '\0');
    if (rc == 0) {
        CHECK(verify(pv, nfiles, err2, sizeof(err2)) == 0);
        CHECK(strcmp(err, err2) == 0);
    }
    if ((flags & 8) && nfiles == 1) {
        uint64_t count = 0, last = 0;
        if (rc == 0)
            parse_summary(err, &count, &last);
        struct tg_audit_settings s = {.path = paths[0],
                                      .key = (const unsigned char *)KEY,
                                      .keylen = KLEN,
                                      .fsync = TG_AUDIT_FSYNC_NEVER,
                                      .queue_records = 4};
        struct tg_audit_writer *w = tg_audit_writer_start(&s, err2, sizeof(err2));
        if (rc == 0 && last < INT64_MAX - 1)
            CHECK(w != NULL);
        if (w) {
            json_t *r = json_pack("{s:s,s:s,s:i}", "type", "request", "ts", "fuzz", "n", 1);
            CHECK(r && tg_audit_submit(w, r, true));
            tg_audit_writer_stop(w);
            if (rc == 0) {
                uint64_t count2 = 0, last2 = 0;
                CHECK(verify(pv, 1, err2, sizeof(err2)) == 0);
                parse_summary(err2, &count2, &last2);
                CHECK(count2 == count + 1 && last2 == last + 1);
            }
        }
    }
out:
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(buf);
    return 0;
}
