/*
 * test_quota_redis.c - the Redis scripts (admit, settle and renew from lua/, as embedded by the
 * build) driven through filters/quota_script.c against a real redis-server
 * this test starts on a free loopback port, and cross-checked against the
 * in-process backend (filters/quota_local.c) fed the same operations at
 * Redis's own clock.  Also: the argument builder's exact output and the
 * reply decoders on malformed replies.
 *
 * Redis time is real, so the scenarios use limits whose steps are seconds
 * apart while the test runs in milliseconds, and timing-dependent values
 * are compared with a small tolerance.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tg_test.h"

#include "filters/quota_common.h"
#include "filters/quota_local.h"
#include "filters/quota_script.h"
#include "lua/scripts.h"
#include "proxy/err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SLACK_MS 200 /* how much real time a scenario may take between two calls */

static pid_t redis_pid = -1;
static char redis_dir[64];
static redisContext *rc;
static char sha_admit[41], sha_settle[41], sha_renew[41];

/* ---- redis-server ---- */

static int free_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

static void load(const char *body, size_t len, char sha[41])
{
    const char *argv[] = {"SCRIPT", "LOAD", body};
    size_t argvlen[] = {6, 4, len};
    redisReply *r = redisCommandArgv(rc, 3, argv, argvlen);
    if (!r || r->type != REDIS_REPLY_STRING || r->len != 40)
        fail_msg("SCRIPT LOAD failed: %s", r && r->str ? r->str : "no reply");
    memcpy(sha, r->str, 40);
    sha[40] = '\0';
    freeReplyObject(r);
}

static int setup(void **state)
{
    char port[16];
    int p = free_port();
    if (p < 0)
        fail_msg("no free port");
    snprintf(port, sizeof(port), "%d", p);
    snprintf(redis_dir, sizeof(redis_dir), "/tmp/tg-quota-redis-XXXXXX");
    if (!mkdtemp(redis_dir))
        fail_msg("mkdtemp: %s", strerror(errno));
    redis_pid = fork();
    if (redis_pid == 0) {
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", "no", "--daemonize", "no", "--dir", redis_dir, "--logfile",
               "/dev/null", (char *)NULL);
        fprintf(stderr, "test_quota_redis: cannot run redis-server: %s\n", strerror(errno));
        _exit(127);
    }
    if (redis_pid < 0)
        fail_msg("fork: %s", strerror(errno));
    for (int i = 0; i < 100; i++) {
        int status;
        if (waitpid(redis_pid, &status, WNOHANG) == redis_pid) {
            redis_pid = -1;
            rmdir(redis_dir);
            fail_msg("redis-server is missing or exited at start (status %d); install redis-server",
                     status);
        }
        rc = redisConnect("127.0.0.1", p);
        if (rc && !rc->err)
            break;
        redisFree(rc);
        rc = NULL;
        usleep(50 * 1000);
    }
    if (!rc)
        fail_msg("redis-server did not accept connections on port %d", p);
    load(tg_lua_admit, tg_lua_admit_len, sha_admit);
    load(tg_lua_settle, tg_lua_settle_len, sha_settle);
    load(tg_lua_renew, tg_lua_renew_len, sha_renew);
    return 0;
}

static int teardown(void **state)
{
    redisFree(rc);
    rc = NULL;
    if (redis_pid > 0) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
        redis_pid = -1;
    }
    /* --save '' and no AOF: redis-server wrote nothing there. */
    if (rmdir(redis_dir) != 0)
        fprintf(stderr, "test_quota_redis: rmdir %s: %s\n", redis_dir, strerror(errno));
    return 0;
}

/* ---- helpers ---- */

static redisReply *cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    if (!r)
        fail_msg("redis command failed: %s", rc->errstr);
    return r;
}

static redisReply *evalsha(const char *sha, const struct tg_quota_argv *a)
{
    const char *argv[2 + TG_QUOTA_ARGV_MAX];
    size_t argvlen[2 + TG_QUOTA_ARGV_MAX];
    argv[0] = "EVALSHA";
    argvlen[0] = 7;
    argv[1] = sha;
    argvlen[1] = 40;
    for (int i = 0; i < a->argc; i++) {
        argv[2 + i] = a->argv[i];
        argvlen[2 + i] = a->argvlen[i];
    }
    redisReply *r = redisCommandArgv(rc, 2 + a->argc, argv, argvlen);
    if (!r)
        fail_msg("EVALSHA failed: %s", rc->errstr);
    return r;
}

static uint64_t redis_now_us(void)
{
    redisReply *r = cmd("TIME");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    uint64_t us = strtoull(r->element[0]->str, NULL, 10) * 1000000 +
                  strtoull(r->element[1]->str, NULL, 10);
    freeReplyObject(r);
    return us;
}

static struct tg_quota_decision r_admit(const struct tg_quota_admit *a)
{
    struct tg_quota_argv av;
    struct tg_quota_decision d;
    assert_int_equal(tg_quota_script_admit_args(a, "tg:", &av), 0);
    redisReply *r = evalsha(sha_admit, &av);
    if (tg_quota_script_admit_reply(r, &d) != 0)
        fail_msg("admit reply: type %d %s", r->type, r->str ? r->str : "");
    freeReplyObject(r);
    tg_quota_argv_dispose(&av);
    return d;
}

static int r_settle(const struct tg_quota_settle *s)
{
    struct tg_quota_argv av;
    assert_int_equal(tg_quota_script_settle_args(s, "tg:", &av), 0);
    redisReply *r = evalsha(sha_settle, &av);
    int rv = tg_quota_script_settle_reply(r);
    if (rv < 0)
        fail_msg("settle reply: type %d %s", r->type, r->str ? r->str : "");
    freeReplyObject(r);
    tg_quota_argv_dispose(&av);
    return rv;
}

static int r_renew(const char *p, const char *t, const char *lease, uint64_t ttl)
{
    struct tg_quota_argv av;
    assert_int_equal(tg_quota_script_renew_args(p, t, lease, ttl, "tg:", &av), 0);
    redisReply *r = evalsha(sha_renew, &av);
    int rv = tg_quota_script_renew_reply(r);
    assert_true(rv >= 0);
    freeReplyObject(r);
    tg_quota_argv_dispose(&av);
    return rv;
}

/* An integer key's value, 0 when missing. */
static int64_t r_get(const char *key)
{
    redisReply *r = cmd("GET %s", key);
    int64_t v = r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
    freeReplyObject(r);
    return v;
}

static long long r_int(const char *fmt, const char *key)
{
    redisReply *r = cmd(fmt, key);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* Live leases of a conc key (expired ones may linger until the next call). */
static long long r_live(const char *key, uint64_t now_ms)
{
    redisReply *r = cmd("ZCOUNT %s (%" PRIu64 " +inf", key, now_ms);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* Names unique to this run, so reruns against one server cannot collide. */
static const char *uniq(char *buf, size_t n, const char *what)
{
    static unsigned seq;
    snprintf(buf, n, "%s-%d-%u", what, (int)getpid(), ++seq);
    return buf;
}

/* Wait if UTC midnight is under 10 s away, so a scenario stays in one day. */
static void avoid_midnight(void)
{
    uint64_t now = redis_now_us();
    uint64_t into = now % TG_QUOTA_DAY_US;
    if (TG_QUOTA_DAY_US - into < 10 * 1000000ull)
        usleep((useconds_t)(TG_QUOTA_DAY_US - into + 1000000));
}

static struct tg_quota_admit mk(const char *p, const char *t, const char *lease)
{
    struct tg_quota_admit a;
    memset(&a, 0, sizeof(a));
    a.principal = p;
    a.tenant = t;
    a.lease = lease;
    a.lease_ttl_ms = 30000;
    return a;
}

/* ---- scripts against Redis ---- */

static void test_sha_is_file_sha1(void **state)
{
    unsigned char md[20];
    char hex[41];
    unsigned int mdlen;
    assert_int_equal(EVP_Digest(tg_lua_admit, tg_lua_admit_len, md, &mdlen, EVP_sha1(), NULL), 1);
    for (unsigned i = 0; i < 20; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    assert_string_equal(hex, sha_admit);
    assert_int_equal(strlen(tg_lua_settle), tg_lua_settle_len);
    assert_int_equal(strlen(tg_lua_renew), tg_lua_renew_len);
}

static void test_burst_then_refusal(void **state)
{
    char p[64];
    struct tg_quota_admit a = mk(uniq(p, sizeof(p), "burst"), NULL, "l");
    a.lim[0].v[TG_QL_RPM] = 5; /* 12 s per request */
    uint64_t t0 = redis_now_us();
    for (int i = 0; i < 5; i++) {
        struct tg_quota_decision d = r_admit(&a);
        assert_true(d.allowed);
        assert_int_equal(d.remaining[0], 4 - i);
        assert_int_equal(d.day, (int64_t)(t0 / TG_QUOTA_DAY_US));
    }
    struct tg_quota_decision d = r_admit(&a);
    assert_false(d.allowed);
    assert_int_equal(d.denied, TG_QL_RPM);
    assert_true(d.retry_after_ms <= 12000 && d.retry_after_ms >= 12000 - SLACK_MS);
    assert_int_equal(d.remaining[0], 0);
    assert_int_equal(d.remaining[1], -1);

    /* The TAT key lives until the bucket is full again, plus 1 s. */
    char key[128];
    snprintf(key, sizeof(key), "tg:{%s}:rpm", p);
    long long pttl = r_int("PTTL %s", key);
    assert_true(pttl <= 61000 && pttl >= 61000 - SLACK_MS);

    /* More tokens than the whole limit: 60 s, and nothing charged. */
    a.lim[0].v[TG_QL_TPM] = 100;
    a.tokens = 101;
    a.principal = uniq(p, sizeof(p), "big");
    d = r_admit(&a);
    assert_int_equal(d.denied, TG_QL_TPM);
    assert_int_equal(d.retry_after_ms, 60000);
    snprintf(key, sizeof(key), "tg:{%s}:rpm", p);
    assert_int_equal(r_int("EXISTS %s", key), 0);
}

static void test_key_expiry(void **state)
{
    char p[64], t[64], key[256];
    avoid_midnight();
    struct tg_quota_admit a = mk(uniq(p, sizeof(p), "ttl"), uniq(t, sizeof(t), "ten"), "lease-1");
    a.lim[0].v[TG_QL_TPD] = 1000;
    a.lim[0].v[TG_QL_CPM] = 1000;
    a.lim[1].v[TG_QL_CONC] = 2;
    a.tokens = 10;
    a.cost = 10;
    struct tg_quota_decision d = r_admit(&a);
    assert_true(d.allowed);
    snprintf(key, sizeof(key), "tg:{%s}:tpd:%" PRId64, p, d.day);
    assert_int_equal(r_get(key), 10);
    assert_int_equal(r_int("PEXPIRETIME %s", key), (d.day + 2) * 86400000ll);
    snprintf(key, sizeof(key), "tg:{%s}:cpm:%" PRId64, p, d.month);
    assert_int_equal(r_int("PEXPIRETIME %s", key),
                     (tg_quota_month_first_day(d.month + 1) + 1) * 86400000ll);
    snprintf(key, sizeof(key), "tg:{tenant:%s}:conc", t);
    long long exp = r_int("PEXPIRETIME %s", key);
    uint64_t now_ms = redis_now_us() / 1000;
    assert_true(exp > (long long)(now_ms + 30000 - SLACK_MS) && exp <= (long long)(now_ms + 30000));

    struct tg_quota_settle s;
    memset(&s, 0, sizeof(s));
    s.principal = p;
    s.tenant = t;
    memcpy(s.lim, a.lim, sizeof(s.lim));
    s.lease = a.lease;
    s.tokens_reserved = 10;
    s.tokens_actual = 10;
    s.day = d.day;
    s.month = d.month;
    assert_int_equal(r_settle(&s), 1);
    snprintf(key, sizeof(key), "tg:{%s}:settled:lease-1", p);
    long long pttl = r_int("PTTL %s", key);
    /* The marker outlives the settlement retries (10 min), both backends alike. */
    assert_int_equal(TG_QUOTA_SETTLED_TTL_MS, 600000);
    assert_true(pttl <= (long long)TG_QUOTA_SETTLED_TTL_MS &&
                pttl > (long long)TG_QUOTA_SETTLED_TTL_MS - SLACK_MS);
    snprintf(key, sizeof(key), "tg:{tenant:%s}:conc", t);
    assert_int_equal(r_int("EXISTS %s", key), 0); /* the last lease went, so did the set */
}

static void test_bad_arguments(void **state)
{
    static const char *const bad[][13] = {
        {"0"},                                   /* no keys */
        {"1", "tg:{x}:", "1", "2"},              /* too few ARGV */
        {"1", "tg:{x}:", "1", "1", "l", "1", "1", "1", "1", "1", "1", "-1"}, /* negative */
        {"1", "tg:{x}:", "1", "1", "l", "0", "1", "1", "1", "1", "1", "1"},  /* ttl 0 */
        {"1", "tg:{x}:", "x", "1", "l", "9", "1", "1", "1", "1", "1", "1"},
        {"1", "tg:{x}:", "1.5", "1", "l", "9", "1", "1", "1", "1", "1", "1"},
        {"1", "tg:{x}:", "1e15", "1", "l", "9", "1", "1", "1", "1", "1", "1"}, /* > 1e14 */
        {"1", "tg:{x}:", "1", "1", "", "9", "1", "1", "1", "1", "1", "1"},    /* empty lease */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct tg_quota_argv a;
        memset(&a, 0, sizeof(a));
        while (a.argc < 13 && bad[i][a.argc]) {
            a.argv[a.argc] = bad[i][a.argc];
            a.argvlen[a.argc] = strlen(bad[i][a.argc]);
            a.argc++;
        }
        redisReply *r = evalsha(sha_admit, &a);
        struct tg_quota_decision d;
        if (i > 0 && (r->type != REDIS_REPLY_ERROR || !strstr(r->str, "tg admit")))
            fail_msg("case %zu: want a script error, got type %d", i, r->type);
        assert_int_equal(tg_quota_script_admit_reply(r, &d), TG_E_PROTO);
        assert_false(d.allowed);
        freeReplyObject(r);
    }
    /* Wrong counts to settle and renew: error replies, decoded as malformed. */
    struct tg_quota_argv a;
    memset(&a, 0, sizeof(a));
    a.argv[0] = "1";
    a.argvlen[0] = 1;
    a.argv[1] = "tg:{x}:";
    a.argvlen[1] = 7;
    a.argv[2] = "lease";
    a.argvlen[2] = 5;
    a.argc = 3;
    redisReply *r = evalsha(sha_settle, &a);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(r->str, "tg settle"));
    assert_int_equal(tg_quota_script_settle_reply(r), TG_E_PROTO);
    freeReplyObject(r);
    r = evalsha(sha_renew, &a);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_int_equal(tg_quota_script_renew_reply(r), TG_E_PROTO);
    freeReplyObject(r);
}

/* ---- cross-check: the same operations on Redis and on quota_local ---- */

enum op_kind { OP_ADMIT, OP_SETTLE, OP_RENEW };

struct op {
    enum op_kind kind;
    int lease;            /* lease number */
    uint64_t tokens;      /* admit: reserved; settle: actual */
    uint64_t cost;        /* admit: reserved; settle: actual */
    int want;             /* admit: expected denied (-1 allowed); settle/renew: return */
};

static void compare_state(struct tg_quota_local *q, uint64_t now, const char *base_r,
                          const char *base_l, int64_t day, int64_t month, const char *where)
{
    char kr[256], kl[256];
    static const char *const ctr[] = {"tpd", "cpd", "cpm"};
    for (int i = 0; i < 3; i++) {
        int64_t w = i == 2 ? month : day, lv;
        snprintf(kr, sizeof(kr), "%s%s:%" PRId64, base_r, ctr[i], w);
        snprintf(kl, sizeof(kl), "%s%s:%" PRId64, base_l, ctr[i], w);
        (void)tg_quota_local_peek(q, now, kl, &lv);
        int64_t rv = r_get(kr);
        if (rv != lv)
            fail_msg("%s: %s redis %" PRId64 " local %" PRId64, where, kl, rv, lv);
    }
    int64_t lv;
    snprintf(kr, sizeof(kr), "%sconc", base_r);
    snprintf(kl, sizeof(kl), "%sconc", base_l);
    (void)tg_quota_local_peek(q, now, kl, &lv);
    long long rv = r_live(kr, now / 1000);
    if (rv != lv)
        fail_msg("%s: %s redis %lld local %" PRId64, where, kl, rv, lv);
    /* TATs agree up to the time between the two clocks reading. */
    snprintf(kr, sizeof(kr), "%stpm", base_r);
    snprintf(kl, sizeof(kl), "%stpm", base_l);
    (void)tg_quota_local_peek(q, now, kl, &lv);
    int64_t rt = r_get(kr);
    /* A TAT at (or a hair past) now is a full bucket on either side. */
    if (rt <= (int64_t)now + SLACK_MS * 1000)
        rt = 0;
    if (lv <= (int64_t)now + SLACK_MS * 1000)
        lv = 0;
    if ((rt == 0) != (lv == 0) || llabs(rt - lv) > SLACK_MS * 1000)
        fail_msg("%s: %s redis %" PRId64 " local %" PRId64, where, kl, rt, lv);
}

static void test_cross_check(void **state)
{
    char p[64], t[64], pb_r[128], tb_r[128], pb_l[128], tb_l[128];
    avoid_midnight();
    uniq(p, sizeof(p), "xp");
    uniq(t, sizeof(t), "xt");
    snprintf(pb_r, sizeof(pb_r), "tg:{%s}:", p);
    snprintf(tb_r, sizeof(tb_r), "tg:{tenant:%s}:", t);
    snprintf(pb_l, sizeof(pb_l), "{%s}:", p);
    snprintf(tb_l, sizeof(tb_l), "{tenant:%s}:", t);

    struct tg_quota_limits plim = {{6, 10000, 20000, 100000, 80000, 3}};
    struct tg_quota_limits tlim = {{0, 0, 30000, 50000, 0, 4}};
    /* Expected outcomes, derived from the rules; both backends must agree too. */
    static const struct op ops[] = {
        {OP_ADMIT, 1, 4000, 10000, -1},
        {OP_ADMIT, 2, 4000, 10000, -1},
        {OP_ADMIT, 3, 4000, 10000, TG_QL_TPM},                 /* 12000 > 10000 tpm */
        {OP_ADMIT, 3, 2000, 10000, -1},                        /* tpm full now */
        {OP_ADMIT, 4, 0, 1000, TG_QL_CONC},                    /* 3 leases held */
        {OP_SETTLE, 1, 1000, 2000, 1},                         /* refund 3000 tokens */
        {OP_SETTLE, 1, 9999, 9999, 0},                         /* duplicate: nothing */
        {OP_ADMIT, 4, 2500, 10000, -1},
        {OP_ADMIT, 5, 0, 9000, TG_QL_CONC},
        {OP_RENEW, 2, 0, 0, 1},
        {OP_RENEW, 1, 0, 0, 0},                                /* settled: gone */
        {OP_SETTLE, 2, 9000, 30000, 1},                        /* overshoot: charged in full */
        {OP_ADMIT, 5, 100, 1, TG_QL_TPM},                      /* tpm pushed past the burst */
        {OP_ADMIT, 5, 0, 1, TG_QS_TENANT * TG_QL_COUNT + TG_QL_CPD}, /* tenant cpd 52000/50000 */
        {OP_ADMIT, 5, 0, 0, TG_QS_TENANT * TG_QL_COUNT + TG_QL_CPD}, /* spent: even 0 */
        {OP_SETTLE, 3, 0, 0, 1},                               /* refunds bring it back */
        {OP_SETTLE, 4, 0, 0, 1},
        {OP_ADMIT, 5, 0, 0, -1},
        {OP_ADMIT, 6, 0, 0, -1},
        {OP_ADMIT, 7, 0, 0, TG_QL_RPM},                        /* the 7th admission of 6 rpm */
    };
    struct tg_quota_local *q = tg_quota_local_new();
    struct tg_quota_decision dec[8];
    uint64_t reserved_tok[8] = {0}, reserved_cost[8] = {0};
    char lease[8][16];
    int rpm_used = 0;

    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        const struct op *o = &ops[i];
        char where[64];
        snprintf(where, sizeof(where), "op %zu", i);
        snprintf(lease[o->lease], sizeof(lease[o->lease]), "lease-%d", o->lease);
        uint64_t now = redis_now_us();
        if (o->kind == OP_ADMIT) {
            struct tg_quota_admit a = mk(p, t, lease[o->lease]);
            a.lim[0] = plim;
            a.lim[1] = tlim;
            a.tokens = o->tokens;
            a.cost = o->cost;
            struct tg_quota_decision dl, dr;
            assert_int_equal(tg_quota_local_admit(q, now, &a, &dl), 0);
            dr = r_admit(&a);
            if (dl.denied != dr.denied || dl.denied != o->want)
                fail_msg("%s: denied local %d redis %d want %d", where, dl.denied, dr.denied,
                         o->want);
            assert_int_equal(dl.allowed, dr.allowed);
            /* Values that depend on the instant agree up to the clocks' skew. */
            if (llabs(dl.remaining[0] - dr.remaining[0]) > 1 ||
                llabs(dl.remaining[1] - dr.remaining[1]) > 1)
                fail_msg("%s: remaining local %" PRId64 "/%" PRId64 " redis %" PRId64 "/%" PRId64,
                         where, dl.remaining[0], dl.remaining[1], dr.remaining[0],
                         dr.remaining[1]);
            if (llabs((long long)dr.retry_after_ms - (long long)dl.retry_after_ms) > SLACK_MS ||
                llabs((long long)dr.reset_ms[0] - (long long)dl.reset_ms[0]) > SLACK_MS ||
                llabs((long long)dr.reset_ms[1] - (long long)dl.reset_ms[1]) > SLACK_MS)
                fail_msg("%s: times local %" PRIu64 "/%" PRIu64 " redis %" PRIu64 "/%" PRIu64,
                         where, dl.retry_after_ms, dl.reset_ms[0], dr.retry_after_ms,
                         dr.reset_ms[0]);
            assert_int_equal(dl.day, dr.day);
            assert_int_equal(dl.month, dr.month);
            if (dl.allowed) {
                dec[o->lease] = dl;
                reserved_tok[o->lease] = o->tokens;
                reserved_cost[o->lease] = o->cost;
                rpm_used++;
            } else if (o->want != TG_QL_RPM) {
                /* remaining rpm is what is left after the admitted ones */
                assert_int_equal(dl.remaining[0], 6 - rpm_used);
            } else {
                assert_int_equal(dl.remaining[0], 0);
            }
        } else if (o->kind == OP_SETTLE) {
            struct tg_quota_settle s;
            memset(&s, 0, sizeof(s));
            s.principal = p;
            s.tenant = t;
            s.lim[0] = plim;
            s.lim[1] = tlim;
            s.lease = lease[o->lease];
            s.tokens_reserved = reserved_tok[o->lease];
            s.cost_reserved = reserved_cost[o->lease];
            s.tokens_actual = o->tokens;
            s.cost_actual = o->cost;
            s.day = dec[o->lease].day;
            s.month = dec[o->lease].month;
            int rl = tg_quota_local_settle(q, now, &s);
            int rr = r_settle(&s);
            if (rl != rr || rl != o->want)
                fail_msg("%s: settle local %d redis %d want %d", where, rl, rr, o->want);
        } else {
            int rl = tg_quota_local_renew(q, now, p, t, lease[o->lease], 30000);
            int rr = r_renew(p, t, lease[o->lease], 30000);
            if (rl != rr || rl != o->want)
                fail_msg("%s: renew local %d redis %d want %d", where, rl, rr, o->want);
        }
        int64_t day = (int64_t)(now / TG_QUOTA_DAY_US);
        int64_t month = tg_quota_month_of_day(day);
        compare_state(q, now, pb_r, pb_l, day, month, where);
        compare_state(q, now, tb_r, tb_l, day, month, where);
    }
    tg_quota_local_free(q);
}

/*
 * Expired leases are pruned only at the limit (both backends), which must
 * not change a decision; the set's key expires with its last lease.
 */
static void test_lazy_prune(void **state)
{
    char p[64], key[256];
    uniq(p, sizeof(p), "lazy");
    snprintf(key, sizeof(key), "tg:{%s}:conc", p);
    struct tg_quota_local *q = tg_quota_local_new();
    struct tg_quota_admit a = mk(p, NULL, "s1");
    a.lim[0].v[TG_QL_CONC] = 2;
    a.lease_ttl_ms = 100;
    struct tg_quota_decision dl, dr;
    uint64_t now = redis_now_us();
    assert_int_equal(tg_quota_local_admit(q, now, &a, &dl), 0);
    dr = r_admit(&a);
    assert_true(dl.allowed && dr.allowed);
    long long exp1 = r_int("PEXPIRETIME %s", key);
    a.lease = "s2";
    a.lease_ttl_ms = 30000;
    assert_int_equal(tg_quota_local_admit(q, now, &a, &dl), 0);
    dr = r_admit(&a);
    assert_true(dl.allowed && dr.allowed);
    long long exp2 = r_int("PEXPIRETIME %s", key);
    assert_true(exp2 > exp1 + 20000); /* moved later with the longer lease */
    a.lease = "s3";
    now = redis_now_us();
    assert_int_equal(tg_quota_local_admit(q, now, &a, &dl), 0);
    dr = r_admit(&a);
    assert_int_equal(dl.denied, TG_QL_CONC);
    assert_int_equal(dr.denied, TG_QL_CONC);
    assert_true(dl.retry_after_ms <= 100 && dr.retry_after_ms <= 100);
    usleep(150 * 1000); /* s1 expires */
    now = redis_now_us();
    assert_int_equal(tg_quota_local_admit(q, now, &a, &dl), 0);
    dr = r_admit(&a);
    assert_true(dl.allowed && dr.allowed);
    assert_int_equal(r_int("ZCARD %s", key), 2); /* s1 was pruned at the limit */
    int64_t lv;
    assert_int_equal(tg_quota_local_peek(q, now, "{lazy}:conc", &lv), 0);
    char kl[128];
    snprintf(kl, sizeof(kl), "{%s}:conc", p);
    (void)tg_quota_local_peek(q, now, kl, &lv);
    assert_int_equal(lv, 2);
    /* A shorter lease never pulls the key's expiry earlier. */
    a.lim[0].v[TG_QL_CONC] = 10;
    a.lease = "s4";
    a.lease_ttl_ms = 1000;
    dr = r_admit(&a);
    assert_true(dr.allowed);
    assert_true(r_int("PEXPIRETIME %s", key) >= exp2);
    /* Renewal: live leases only, and the key follows the latest lease. */
    assert_int_equal(r_renew(p, NULL, "s1", 30000), 0);
    assert_int_equal(tg_quota_local_renew(q, now, p, NULL, "s1", 30000), 0);
    assert_int_equal(r_renew(p, NULL, "s4", 60000), 1);
    long long exp4 = r_int("PEXPIRETIME %s", key);
    uint64_t now_ms = redis_now_us() / 1000;
    assert_true(exp4 > (long long)(now_ms + 60000 - SLACK_MS) && exp4 <= (long long)(now_ms + 60000));
    tg_quota_local_free(q);
}

/* ---- argument builder and reply decoders (no Redis needed) ---- */

static void test_args_exact(void **state)
{
    struct tg_quota_admit a = mk("alice", "acme", "req-1");
    struct tg_quota_argv av;
    a.tokens = 1500;
    a.cost = 2000;
    a.lim[0].v[TG_QL_RPM] = 600;
    a.lim[1].v[TG_QL_CPD] = 200000000;
    assert_int_equal(tg_quota_script_admit_args(&a, "tg:", &av), 0);
    static const char *const want[] = {
        "2", "tg:{alice}:", "tg:{tenant:acme}:", "1500", "2000", "req-1", "30000",
        "600", "0", "0", "0", "0", "0", "0", "0", "0", "200000000", "0", "0"};
    assert_int_equal(av.argc, (int)(sizeof(want) / sizeof(want[0])));
    for (int i = 0; i < av.argc; i++) {
        assert_string_equal(av.argv[i], want[i]);
        assert_int_equal(av.argvlen[i], strlen(want[i]));
    }
    tg_quota_argv_dispose(&av);
    tg_quota_argv_dispose(&av); /* twice is harmless */

    a.tenant = NULL;
    assert_int_equal(tg_quota_script_admit_args(&a, NULL, &av), 0);
    assert_int_equal(av.argc, 1 + 1 + 4 + 6);
    assert_string_equal(av.argv[0], "1");
    assert_string_equal(av.argv[1], "{alice}:");
    tg_quota_argv_dispose(&av);

    struct tg_quota_settle s;
    memset(&s, 0, sizeof(s));
    s.principal = "alice";
    s.lease = "req-1";
    s.tokens_reserved = 10;
    s.tokens_actual = 12;
    s.day = 20000;
    s.month = 24300;
    assert_int_equal(tg_quota_script_settle_args(&s, "tg:", &av), 0);
    assert_int_equal(av.argc, 1 + 1 + 7 + 6);
    assert_string_equal(av.argv[2], "req-1");
    assert_string_equal(av.argv[7], "20000");
    assert_string_equal(av.argv[8], "24300");
    tg_quota_argv_dispose(&av);

    assert_int_equal(tg_quota_script_renew_args("alice", "acme", "req-1", 5000, "tg:", &av), 0);
    assert_int_equal(av.argc, 5);
    assert_string_equal(av.argv[4], "5000");
    tg_quota_argv_dispose(&av);

    /* Invalid requests leave the struct empty. */
    a.principal = "";
    assert_int_equal(tg_quota_script_admit_args(&a, "tg:", &av), TG_E_INVALID);
    assert_int_equal(av.argc, 0);
    a.principal = "alice";
    char prefix[TG_QUOTA_PREFIX_MAX + 2];
    memset(prefix, 'p', sizeof(prefix) - 1);
    prefix[sizeof(prefix) - 1] = '\0';
    assert_int_equal(tg_quota_script_admit_args(&a, prefix, &av), TG_E_INVALID);
    assert_int_equal(tg_quota_script_renew_args("alice", NULL, "", 5000, "tg:", &av),
                     TG_E_INVALID);
    assert_int_equal(tg_quota_script_renew_args("alice", NULL, "l", 0, "tg:", &av), TG_E_INVALID);
    s.day = -1;
    assert_int_equal(tg_quota_script_settle_args(&s, "tg:", &av), TG_E_INVALID);

    /* Building never allocates: it works with every allocation failing. */
    tg_test_failmalloc_arm(1);
    int rv = tg_quota_script_admit_args(&a, "tg:", &av);
    tg_test_failmalloc_disarm();
    assert_int_equal(rv, 0);
    assert_string_equal(av.argv[1], "tg:{alice}:");
    tg_quota_argv_dispose(&av);
    assert_int_equal(av.argc, 0);

    /* The largest accepted amounts, in decimal. */
    s.day = 20000;
    s.tokens_reserved = TG_QUOTA_VALUE_MAX;
    s.cost_actual = 9;
    assert_int_equal(tg_quota_script_settle_args(&s, "tg:", &av), 0);
    assert_string_equal(av.argv[3], "100000000000000");
    assert_int_equal(av.argvlen[3], 15);
    assert_string_equal(av.argv[6], "9");
    tg_quota_argv_dispose(&av);
}

/* Synthetic replies: build with these, never from Redis. */
static redisReply mkint(long long v)
{
    redisReply r;
    memset(&r, 0, sizeof(r));
    r.type = REDIS_REPLY_INTEGER;
    r.integer = v;
    return r;
}

static void test_reply_decoders(void **state)
{
    redisReply ints[9], *elems[9], arr, other, nested;
    struct tg_quota_decision d;
    static const long long good[9] = {0, 7, 1234, 5, 6000, -1, 0, 20000, 24300};

    for (int i = 0; i < 9; i++) {
        ints[i] = mkint(good[i]);
        elems[i] = &ints[i];
    }
    memset(&arr, 0, sizeof(arr));
    arr.type = REDIS_REPLY_ARRAY;
    arr.elements = 9;
    arr.element = elems;
    assert_int_equal(tg_quota_script_admit_reply(&arr, &d), 0);
    assert_false(d.allowed);
    assert_int_equal(d.denied, 7);
    assert_int_equal(d.retry_after_ms, 1234);
    assert_int_equal(d.remaining[0], 5);
    assert_int_equal(d.reset_ms[0], 6000);
    assert_int_equal(d.remaining[1], -1);
    assert_int_equal(d.day, 20000);
    assert_int_equal(d.month, 24300);

    /* Wrong shapes. */
    assert_int_equal(tg_quota_script_admit_reply(NULL, &d), TG_E_PROTO);
    memset(&other, 0, sizeof(other));
    static const int types[] = {REDIS_REPLY_NIL, REDIS_REPLY_ERROR, REDIS_REPLY_STATUS,
                                REDIS_REPLY_STRING, REDIS_REPLY_INTEGER};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        other.type = types[i];
        other.str = (char *)"NOSCRIPT No matching script";
        other.len = strlen(other.str);
        assert_int_equal(tg_quota_script_admit_reply(&other, &d), TG_E_PROTO);
        assert_int_equal(d.denied, -1);
        assert_false(d.allowed);
        assert_int_equal(tg_quota_script_settle_reply(&other), other.type == REDIS_REPLY_INTEGER
                                                                  ? 0 : TG_E_PROTO);
        assert_int_equal(tg_quota_script_renew_reply(&other), other.type == REDIS_REPLY_INTEGER
                                                                 ? 0 : TG_E_PROTO);
    }
    arr.elements = 8;
    assert_int_equal(tg_quota_script_admit_reply(&arr, &d), TG_E_PROTO);
    arr.elements = 0;
    arr.element = NULL;
    assert_int_equal(tg_quota_script_admit_reply(&arr, &d), TG_E_PROTO);
    arr.elements = 9;
    assert_int_equal(tg_quota_script_admit_reply(&arr, &d), TG_E_PROTO); /* NULL vector */
    arr.element = elems;
    /* One element replaced by a string, a nil, a nested array, or NULL. */
    memset(&nested, 0, sizeof(nested));
    nested.type = REDIS_REPLY_ARRAY;
    nested.elements = 9;
    nested.element = elems;
    redisReply str;
    memset(&str, 0, sizeof(str));
    str.type = REDIS_REPLY_STRING;
    str.str = (char *)"1";
    str.len = 1;
    redisReply nil;
    memset(&nil, 0, sizeof(nil));
    nil.type = REDIS_REPLY_NIL;
    redisReply *subs[] = {&str, &nil, &nested, NULL};
    for (int pos = 0; pos < 9; pos++) {
        for (size_t k = 0; k < sizeof(subs) / sizeof(subs[0]); k++) {
            elems[pos] = subs[k];
            assert_int_equal(tg_quota_script_admit_reply(&arr, &d), TG_E_PROTO);
        }
        elems[pos] = &ints[pos];
    }
    /* Inconsistent values. */
    static const struct {
        int pos;
        long long v;
    } badv[] = {{0, 2}, {0, -1}, {0, 1} /* allowed with denied 7 */, {1, 12}, {1, -2},
                {2, -1}, {3, -2}, {4, -1}, {5, -5}, {6, -1}, {7, -1}, {8, -1}};
    for (size_t i = 0; i < sizeof(badv) / sizeof(badv[0]); i++) {
        ints[badv[i].pos].integer = badv[i].v;
        assert_int_equal(tg_quota_script_admit_reply(&arr, &d), TG_E_PROTO);
        ints[badv[i].pos].integer = good[badv[i].pos];
    }
    assert_int_equal(tg_quota_script_admit_reply(&arr, &d), 0);
    /* allowed 1 with denied 7 is bad; allowed 1 with denied -1 is good. */
    ints[0].integer = 1;
    ints[1].integer = -1;
    assert_int_equal(tg_quota_script_admit_reply(&arr, &d), 0);
    assert_true(d.allowed);

    /* settle / renew: integers 0 or 1 only. */
    redisReply one = mkint(1), two = mkint(2), neg = mkint(-1);
    assert_int_equal(tg_quota_script_settle_reply(&one), 1);
    assert_int_equal(tg_quota_script_settle_reply(&two), TG_E_PROTO);
    assert_int_equal(tg_quota_script_settle_reply(&neg), TG_E_PROTO);
    assert_int_equal(tg_quota_script_settle_reply(NULL), TG_E_PROTO);
    assert_int_equal(tg_quota_script_renew_reply(&arr), TG_E_PROTO);
    assert_int_equal(tg_quota_script_renew_reply(&one), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_args_exact),
        cmocka_unit_test(test_reply_decoders),
        cmocka_unit_test(test_sha_is_file_sha1),
        cmocka_unit_test(test_burst_then_refusal),
        cmocka_unit_test(test_key_expiry),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_cross_check),
        cmocka_unit_test(test_lazy_prune),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
