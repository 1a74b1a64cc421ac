/*
 * audit_verify.c - "tollgate audit verify": check the HMAC chain of audit
 * files written by audit_writer.c (SPEC §2, §7; THREATS §6).
 *
 * Each line is checked on its own first: the last 75 bytes must be exactly
 * ,"hmac":"<64 lowercase hex>"} and the HMAC over the line with that member
 * removed (the bytes before it plus the closing brace) must match.  Only then
 * is it parsed (duplicate keys rejected) for seq and prev, and checked
 * against the chain: seq = previous seq + 1 and prev = previous hmac, across
 * files.  A break is explained by looking one line ahead: whether the chain
 * resumes at the next line tells an inserted copy from a removed line and a
 * removed line from a swap.
 *
 * One kind of non-record is accepted: the torn line a crash leaves behind,
 * which the writer terminates with a newline at its next start and then
 * continues the chain from the record before it.  It is skipped with a note
 * only when the next line continues the chain across it; a torn line still at
 * the end of a file (no newline) is an error.
 */
#include "filters/audit_writer.h"

#include "config/config.h"
#include "proxy/mem.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#define HEX_LEN 64
#define SUFFIX_LEN 75              /* ,"hmac":"<64 hex>"} */
#define SUFFIX_HEAD ",\"hmac\":\"" /* its first 9 bytes */
#define READ_BLOCK 65536

static const char zero_prev[HEX_LEN + 1] =
    "0000000000000000000000000000000000000000000000000000000000000000";

/* Line reader over read(2) with the TG_AUDIT_LINE_MAX ceiling. */
struct reader {
    int fd;              /* the file */
    char *buf;           /* READ_BLOCK bytes read ahead */
    size_t pos, len;     /* unread part of buf */
    bool eof;            /* read returned 0 */
    char *line;          /* the current line, without its newline */
    size_t cap;          /* capacity of line */
    unsigned long lineno; /* 1-based number of the current line */
};

enum rd_status {
    RD_LINE = 0,    /* a line ending in '\n' */
    RD_TORN = 1,    /* a last line without '\n' */
    RD_EOF = 2,     /* nothing left */
    RD_TOOLONG = 3, /* over TG_AUDIT_LINE_MAX */
    RD_ERROR = 4,   /* read(2) failed (errno) or out of memory */
};

static enum rd_status rd_next(struct reader *r, size_t *len)
{
    size_t n = 0;
    r->lineno++;
    for (;;) {
        if (r->pos == r->len && !r->eof) {
            ssize_t k = read(r->fd, r->buf, READ_BLOCK);
            if (k < 0 && errno == EINTR)
                continue;
            if (k < 0)
                return RD_ERROR;
            r->pos = 0;
            r->len = (size_t)k;
            r->eof = k == 0;
        }
        if (r->pos == r->len) {
            *len = n;
            return n ? RD_TORN : RD_EOF;
        }
        const char *s = r->buf + r->pos;
        const char *nl = memchr(s, '\n', r->len - r->pos);
        size_t take = nl ? (size_t)(nl - s) : r->len - r->pos;
        if (n + take + 1 > TG_AUDIT_LINE_MAX) /* with its '\n' */
            return RD_TOOLONG;
        if (take > 0 && n + take > r->cap) {
            size_t ncap = r->cap ? r->cap : 4096;
            while (ncap < n + take)
                ncap *= 2;
            char *nb = tg_mem_realloc(r->line, ncap);
            if (!nb) {
                errno = ENOMEM;
                return RD_ERROR;
            }
            r->line = nb;
            r->cap = ncap;
        }
        if (take > 0)
            memcpy(r->line + n, s, take);
        n += take;
        r->pos += take + (nl ? 1 : 0);
        if (nl) {
            *len = n;
            return RD_LINE;
        }
    }
}

/* What a line is, and what it says about the chain. */
struct rec {
    uint64_t seq;            /* its seq */
    char prev[HEX_LEN + 1];  /* its prev */
    char hmac[HEX_LEN + 1];  /* its (verified) hmac */
};

enum line_status {
    LINE_OK = 0,       /* a verified record */
    LINE_NOT_REC = 1,  /* not shaped like a record at all (garbage, torn) */
    LINE_BAD_HMAC = 2, /* shaped like one, but the hmac does not match */
    LINE_BAD_REC = 3,  /* hmac verifies, the content does not make sense */
};

struct verifier {
    EVP_MAC_CTX *mctx;        /* HMAC with digest SHA256 */
    const unsigned char *key; /* borrowed */
    size_t keylen;            /* its length */
    char why[160];            /* detail of the last non-OK check_line */
};

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static enum line_status check_line(struct verifier *v, const char *line, size_t len,
                                   struct rec *out)
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    size_t mdlen = 0;
    char mac[HEX_LEN + 1];
    json_error_t jerr;
    enum line_status st = LINE_BAD_REC;

    v->why[0] = '\0';
    if (len == 0) {
        snprintf(v->why, sizeof(v->why), "empty line");
        return LINE_NOT_REC;
    }
    if (len < SUFFIX_LEN + 1 || line[0] != '{' ||
        memcmp(line + len - SUFFIX_LEN, SUFFIX_HEAD, 9) != 0 ||
        !is_lower_hex(line + len - 66, HEX_LEN) || memcmp(line + len - 2, "\"}", 2) != 0) {
        snprintf(v->why, sizeof(v->why), "not an audit record (no trailing \"hmac\" member)");
        return LINE_NOT_REC;
    }
    if (!EVP_MAC_init(v->mctx, v->key, v->keylen, NULL) ||
        !EVP_MAC_update(v->mctx, (const unsigned char *)line, len - SUFFIX_LEN) ||
        !EVP_MAC_update(v->mctx, (const unsigned char *)"}", 1) ||
        !EVP_MAC_final(v->mctx, md, &mdlen, sizeof(md)) || mdlen != HEX_LEN / 2) {
        snprintf(v->why, sizeof(v->why), "HMAC computation failed");
        return LINE_BAD_REC;
    }
    for (size_t i = 0; i < mdlen; i++) {
        mac[2 * i] = digits[md[i] >> 4];
        mac[2 * i + 1] = digits[md[i] & 15];
    }
    mac[HEX_LEN] = '\0';
    if (CRYPTO_memcmp(mac, line + len - 66, HEX_LEN) != 0) {
        snprintf(v->why, sizeof(v->why), "hmac mismatch (line edited)");
        return LINE_BAD_HMAC;
    }
    json_t *j = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *seq = json_object_get(j, "seq"), *prev = json_object_get(j, "prev"),
           *hm = json_object_get(j, "hmac");
    if (!j)
        snprintf(v->why, sizeof(v->why), "hmac verifies but the line is not JSON: %.100s (column %d)",
                 jerr.text, jerr.column);
    else if (!json_is_object(j))
        snprintf(v->why, sizeof(v->why), "not a JSON object");
    else if (!json_is_integer(seq) || json_integer_value(seq) < 1)
        snprintf(v->why, sizeof(v->why), "no \"seq\" (a positive integer)");
    else if (!json_is_string(prev) || json_string_length(prev) != HEX_LEN ||
             !is_lower_hex(json_string_value(prev), HEX_LEN))
        snprintf(v->why, sizeof(v->why), "no \"prev\" (64 lowercase hex digits)");
    else if (!json_is_string(hm) || strcmp(json_string_value(hm), mac) != 0)
        snprintf(v->why, sizeof(v->why), "\"hmac\" is not the last member");
    else {
        out->seq = (uint64_t)json_integer_value(seq);
        memcpy(out->prev, json_string_value(prev), HEX_LEN + 1);
        memcpy(out->hmac, mac, HEX_LEN + 1);
        st = LINE_OK;
    }
    json_decref(j);
    return st;
}

/* The chain so far: the last verified record and where it was. */
struct chain {
    bool have;            /* a record was seen */
    uint64_t seq;         /* its seq */
    char hmac[HEX_LEN + 1]; /* its hmac */
    const char *file;     /* its file (as given) */
    unsigned long line;   /* its line */
    uint64_t first_seq;   /* seq of the first record */
    uint64_t count;       /* records verified */
    unsigned long torn;   /* torn lines skipped */
    char note[200];       /* the first skipped torn line */
};

/* Does r continue c? The first record: any prev when seq > 1, else zeros. */
static bool continues(const struct chain *c, const struct rec *r)
{
    if (!c->have)
        return r->seq > 1 || memcmp(r->prev, zero_prev, HEX_LEN) == 0;
    return c->seq != UINT64_MAX && r->seq == c->seq + 1 &&
           memcmp(r->prev, c->hmac, HEX_LEN) == 0;
}

static void advance(struct chain *c, const struct rec *r, const char *file, unsigned long line)
{
    if (!c->have)
        c->first_seq = r->seq;
    c->have = true;
    c->seq = r->seq;
    memcpy(c->hmac, r->hmac, sizeof(c->hmac));
    c->file = file;
    c->line = line;
    c->count++;
}

static int fail(char *err, size_t errlen, const char *file, unsigned long line, const char *fmt,
                ...) __attribute__((format(printf, 5, 6)));
static int fail(char *err, size_t errlen, const char *file, unsigned long line, const char *fmt,
                ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (line)
        snprintf(err, errlen, "%s:%lu: %s", file, line, msg);
    else
        snprintf(err, errlen, "%s: %s", file, msg);
    return 1;
}

/*
 * Explain a verified record r at file:line that does not continue the chain.
 * Reads one line ahead from rd (which is then spent).
 */
static int explain_break(struct verifier *v, struct reader *rd, const struct chain *c,
                         const struct rec *r, const char *file, unsigned long line, char *err,
                         size_t errlen)
{
    if (!c->have)
        return fail(err, errlen, file, line,
                    "the first record (seq 1) has a prev that is not 64 zeros");
    bool boundary = c->file != file;
    char where[300] = "";
    if (boundary)
        snprintf(where, sizeof(where), " at %s:%lu", c->file, c->line);
    if (r->seq == c->seq + 1) {
        if (boundary)
            return fail(err, errlen, file, line,
                        "prev does not match the hmac of %s:%lu (files out of order or a line "
                        "removed)",
                        c->file, c->line);
        return fail(err, errlen, file, line,
                    "prev does not match the hmac of line %lu (a record from another chain)",
                    c->line);
    }
    if (boundary)
        return fail(err, errlen, file, line, "seq %" PRIu64 " follows %" PRIu64 "%s (%s)", r->seq,
                    c->seq, where,
                    r->seq <= c->seq ? "files out of order"
                                     : "a file or lines missing, or files out of order");
    if (r->seq == 1 && memcmp(r->prev, zero_prev, HEX_LEN) == 0)
        return fail(err, errlen, file, line,
                    "seq 1 follows %" PRIu64 " (the chain starts again: another log's records, "
                    "or the writer started on an empty file)",
                    c->seq);
    /* Look at the next line of this file. */
    struct rec nx;
    size_t nlen;
    enum rd_status rs = rd_next(rd, &nlen);
    bool have_next = rs == RD_LINE && check_line(v, rd->line, nlen, &nx) == LINE_OK;
    if (r->seq > c->seq) {
        uint64_t gap = r->seq - c->seq - 1;
        if (have_next && continues(c, &nx))
            return fail(err, errlen, file, line,
                        "seq %" PRIu64 " follows %" PRIu64 " (lines reordered: seq %" PRIu64
                        " comes after it)",
                        r->seq, c->seq, c->seq + 1);
        if (!have_next || (nx.seq == r->seq + 1 && memcmp(nx.prev, r->hmac, HEX_LEN) == 0)) {
            if (gap == 1)
                return fail(err, errlen, file, line,
                            "seq %" PRIu64 " follows %" PRIu64 " (line removed)", r->seq, c->seq);
            return fail(err, errlen, file, line,
                        "seq %" PRIu64 " follows %" PRIu64 " (%" PRIu64 " lines removed)", r->seq,
                        c->seq, gap);
        }
        return fail(err, errlen, file, line,
                    "seq %" PRIu64 " follows %" PRIu64 " (lines removed or reordered)", r->seq,
                    c->seq);
    }
    if (have_next && continues(c, &nx))
        return fail(err, errlen, file, line,
                    "seq %" PRIu64 " follows %" PRIu64 " (line inserted: a copy of seq %" PRIu64
                    ")",
                    r->seq, c->seq, r->seq);
    return fail(err, errlen, file, line,
                "seq %" PRIu64 " follows %" PRIu64 " (line inserted or lines reordered)", r->seq,
                c->seq);
}

/* Verify one file against the chain; 0 or 1 with err set. */
static int verify_file(struct verifier *v, struct reader *rd, const char *file, struct chain *c,
                       char *err, size_t errlen)
{
    for (;;) {
        size_t len;
        struct rec r;
        enum rd_status rs = rd_next(rd, &len);
        unsigned long line = rd->lineno;
        switch (rs) {
        case RD_EOF:
            return 0;
        case RD_ERROR:
            return fail(err, errlen, file, line, "read error: %s", strerror(errno));
        case RD_TOOLONG:
            return fail(err, errlen, file, line, "line longer than %d bytes",
                        TG_AUDIT_LINE_MAX - 1);
        case RD_TORN: {
            enum line_status ts = check_line(v, rd->line, len, &r);
            if (ts == LINE_OK && continues(c, &r))
                return fail(err, errlen, file, line,
                            "torn last line: record seq %" PRIu64
                            " lacks its newline (an interrupted write)",
                            r.seq);
            return fail(err, errlen, file, line,
                        "torn last line (no newline: an interrupted write; tollgate ends it with "
                        "a newline at its next start)");
        }
        case RD_LINE:
            break;
        }
        enum line_status st = check_line(v, rd->line, len, &r);
        if (st == LINE_NOT_REC && len > 0 && rd->line[0] == '{') {
            /* A torn line the writer repaired?  Only if the chain resumes. */
            char why[sizeof(v->why)];
            memcpy(why, v->why, sizeof(why));
            size_t nlen;
            struct rec nx;
            if (rd_next(rd, &nlen) == RD_LINE && check_line(v, rd->line, nlen, &nx) == LINE_OK &&
                continues(c, &nx)) {
                if (c->torn++ == 0)
                    snprintf(c->note, sizeof(c->note),
                             "%s:%lu: torn line skipped (an interrupted write, repaired at "
                             "restart)",
                             file, line);
                advance(c, &nx, file, rd->lineno);
                continue;
            }
            return fail(err, errlen, file, line, "%s", why);
        }
        if (st != LINE_OK)
            return fail(err, errlen, file, line, "%s", v->why);
        if (!continues(c, &r))
            return explain_break(v, rd, c, &r, file, line, err, errlen);
        advance(c, &r, file, line);
    }
}

int tg_audit_verify_files(const char *const *paths, size_t n, const unsigned char *key,
                          size_t keylen, char *err, size_t errlen)
{
    struct verifier v = {.key = key, .keylen = keylen};
    struct chain c = {0};
    struct reader rd = {.fd = -1};
    EVP_MAC *mac = NULL;
    int rv = 1;

    if (errlen)
        err[0] = '\0';
    if (!key || keylen == 0) {
        snprintf(err, errlen, "no HMAC key");
        return 1;
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (!(mac = EVP_MAC_fetch(NULL, "HMAC", NULL)) || !(v.mctx = EVP_MAC_CTX_new(mac)) ||
        !EVP_MAC_CTX_set_params(v.mctx, params)) {
        snprintf(err, errlen, "HMAC-SHA256 is not available from OpenSSL");
        goto out;
    }
    if (!(rd.buf = tg_mem_malloc(READ_BLOCK))) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        rd.fd = open(paths[i], O_RDONLY | O_CLOEXEC);
        if (rd.fd < 0) {
            fail(err, errlen, paths[i], 0, "%s", strerror(errno));
            goto out;
        }
        rd.pos = rd.len = 0;
        rd.eof = false;
        rd.lineno = 0;
        int r = verify_file(&v, &rd, paths[i], &c, err, errlen);
        close(rd.fd);
        rd.fd = -1;
        if (r != 0)
            goto out;
    }
    if (c.count == 0)
        snprintf(err, errlen, "0 records");
    else
        snprintf(err, errlen, "%" PRIu64 " records, seq %" PRIu64 "..%" PRIu64 "%s%s%s", c.count,
                 c.first_seq, c.seq, c.torn ? "; note: " : "", c.torn ? c.note : "",
                 c.torn > 1 ? " (and more)" : "");
    rv = 0;
out:
    EVP_MAC_CTX_free(v.mctx);
    EVP_MAC_free(mac);
    tg_mem_free(rd.buf);
    tg_mem_free(rd.line);
    return rv;
}

static void cli_usage(FILE *f)
{
    fprintf(f, "usage: tollgate audit verify [-c FILE] LOG...\n"
               "  LOGs in rotation order, oldest first.  The HMAC key comes from the\n"
               "  config's audit.hmac_key_env with -c, else from TOLLGATE_AUDIT_KEY.\n");
}

int tg_cli_audit(int argc, char **argv)
{
    const char *cfgpath = NULL;
    struct tg_config *cfg = NULL;
    const unsigned char *key;
    size_t keylen;
    int first = -1, rv = 1;

    if (argc < 2 || strcmp(argv[1], "verify") != 0) {
        if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
            cli_usage(stdout);
            return 0;
        }
        if (argc >= 2)
            fprintf(stderr, "tollgate: audit: unknown command \"%s\"\n", argv[1]);
        cli_usage(stderr);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            cli_usage(stdout);
            return 0;
        } else if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "tollgate: audit verify: %s needs a value\n", a);
                return 2;
            }
            if (cfgpath) {
                fprintf(stderr, "tollgate: audit verify: %s given twice\n", a);
                return 2;
            }
            cfgpath = argv[++i];
        } else if (strcmp(a, "--") == 0) {
            first = i + 1 < argc ? i + 1 : -1;
            break;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "tollgate: audit verify: unknown option \"%s\"\n", a);
            cli_usage(stderr);
            return 2;
        } else {
            first = i;
            break;
        }
    }
    if (first < 0) {
        fprintf(stderr, "tollgate: audit verify: no LOG given\n");
        cli_usage(stderr);
        return 2;
    }
    if (cfgpath) {
        char cerr[TG_CONFIG_ERR_MAX];
        if (!(cfg = tg_config_load(cfgpath, cerr))) {
            fprintf(stderr, "tollgate: %s\n", cerr);
            return 1;
        }
        if (!cfg->audit.enabled || !cfg->audit.hmac_key) {
            fprintf(stderr, "tollgate: audit verify: %s has no \"audit\" section with a key\n",
                    cfgpath);
            goto out;
        }
        key = cfg->audit.hmac_key;
        keylen = cfg->audit.hmac_key_len;
    } else {
        const char *env = getenv("TOLLGATE_AUDIT_KEY");
        if (!env || !*env) {
            fprintf(stderr, "tollgate: audit verify: TOLLGATE_AUDIT_KEY is not set\n");
            return 1;
        }
        key = (const unsigned char *)env;
        keylen = strlen(env);
    }
    if (keylen < 32) {
        fprintf(stderr, "tollgate: audit verify: the HMAC key is shorter than 32 bytes\n");
        goto out;
    }
    char err[1024];
    rv = tg_audit_verify_files((const char *const *)(argv + first), (size_t)(argc - first), key,
                               keylen, err, sizeof(err));
    if (rv == 0)
        printf("OK: %s\n", err);
    else
        fprintf(stderr, "tollgate: audit verify: %s\n", err);
out:
    tg_config_unref(cfg);
    return rv;
}
