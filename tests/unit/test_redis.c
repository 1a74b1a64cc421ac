/*
 * test_redis.c - the asynchronous Redis client (proxy/redis.c, redis_uv.c)
 * against a real redis-server.
 *
 * Each case starts its own redis-server on a free loopback port (fork/exec,
 * killed at teardown) and its own uv loop.  The loop only ever runs through
 * run_until(), which gives up after a deadline, so a bug fails the case
 * instead of hanging it.  A second, synchronous hiredis connection ("admin")
 * plays the operator: SCRIPT FLUSH, CLIENT PAUSE, INFO, GET.  Every case
 * ends with tg_redis_free() and asserts that uv_loop_close() succeeds (no
 * handle left); the ASan build checks for leaks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tg_test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "proxy/redis.h"

#define NCALLS 1000
#define RUN_MS 5000 /* default wait for a condition */

/* Scripts, by index. */
enum { S_ARRAY, S_SET, S_COUNT };
static const char s_array[] = "return {tonumber(ARGV[1]), 2, 3}";
static const char s_set[] = "redis.call('SET', KEYS[1], ARGV[1]) return 1";
static const struct tg_redis_script scripts[S_COUNT] = {
    {s_array, sizeof(s_array) - 1},
    {s_set, sizeof(s_set) - 1},
};

/* One callback's outcome. */
struct res {
    int calls;       /* times the callback ran */
    int status;      /* last status */
    int type;        /* reply type, -1 without a reply */
    long long v0;    /* first array element or the integer */
    size_t elements; /* array length */
    int seq;         /* global completion order */
    uint64_t at_ns;  /* uv_hrtime() at completion */
};

struct env {
    uv_loop_t loop;
    uv_timer_t tick;             /* keeps uv_run(ONCE) returning */
    struct tg_redis *r;          /* client under test */
    pid_t pid;                   /* redis-server, 0 when not running */
    pid_t pid2;                  /* a second redis-server (test_readonly) */
    int port;                    /* its port */
    int ups, downs;              /* on_state counts */
    int seq;                     /* completion counter */
    struct tg_redis *free_in_cb; /* free this client from the next callback */
};

static struct env *cur; /* the running case, for callbacks */

/* ---- redis-server ---- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static redisContext *admin_connect(int port, const char *password)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    if (password) {
        redisReply *rep = redisCommand(c, "AUTH %s", password);
        assert_non_null(rep);
        assert_int_equal(rep->type, REDIS_REPLY_STATUS);
        freeReplyObject(rep);
    }
    return c;
}

/* Start redis-server on port (extra: more "--opt value" pairs) and wait until it answers. */
static pid_t redis_start(int port, const char *bind, const char *const *extra)
{
    if (access("/usr/bin/redis-server", X_OK) != 0 && access("/usr/local/bin/redis-server", X_OK))
        fail_msg("redis-server is not installed (apt-get install redis-server)");
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    const char *argv[32] = {"redis-server", "--port",           ps,  "--bind",
                            bind,           "--save",           "",  "--appendonly",
                            "no",           "--protected-mode", "no"};
    int n = 11;
    for (int i = 0; extra && extra[i] && n < 30; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int dn = open("/dev/null", O_RDWR);
        if (dn >= 0) {
            dup2(dn, 0);
            dup2(dn, 1);
            dup2(dn, 2);
        }
        execvp("redis-server", (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            fail_msg("redis-server exited at start (status %d): missing, or port %d taken", st,
                     port);
        struct timeval tv = {0, 200000};
        redisContext *c = redisConnectWithTimeout(bind, port, tv);
        if (c && !c->err) {
            redisSetTimeout(c, tv);
            redisReply *rep = redisCommand(c, "PING");
            bool ok = rep != NULL;
            if (rep)
                freeReplyObject(rep);
            redisFree(c);
            if (ok)
                return pid;
        } else if (c) {
            redisFree(c);
        }
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fail_msg("redis-server on port %d did not answer within 5 s", port);
    return -1;
}

static void kill_pid(pid_t *pid)
{
    if (*pid > 0) {
        kill(*pid, SIGKILL);
        waitpid(*pid, NULL, 0);
        *pid = 0;
    }
}

/* Both servers, so a failed assertion leaves no redis-server behind. */
static void redis_kill(struct env *e)
{
    kill_pid(&e->pid);
    kill_pid(&e->pid2);
}

/* ---- loop ---- */

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void on_state(void *arg, bool up)
{
    struct env *e = arg;
    if (up)
        e->ups++;
    else
        e->downs++;
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

/* Run the loop until pred(arg) holds or ms pass; returns pred's final value. */
static bool run_until(struct env *e, bool (*pred)(void *), void *arg, uint64_t ms)
{
    uint64_t end = now_ms() + ms;
    while (!(pred && pred(arg)) && now_ms() < end)
        uv_run(&e->loop, UV_RUN_ONCE);
    return pred && pred(arg);
}

static void run_for(struct env *e, uint64_t ms)
{
    run_until(e, NULL, NULL, ms);
}

static bool is_up(void *arg)
{
    return tg_redis_up(arg);
}

static bool calls_at_least(void *arg)
{
    struct res *x = arg;
    return x->calls >= 1;
}

static bool no_inflight(void *arg)
{
    struct tg_redis_stats st;
    tg_redis_stats(arg, &st);
    return st.inflight == 0;
}

static void opts_init(struct tg_redis_opts *o, const char *ip, int port)
{
    memset(o, 0, sizeof(*o));
    if (strchr(ip, ':')) {
        assert_int_equal(uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&o->addr), 0);
        o->addrlen = sizeof(struct sockaddr_in6);
    } else {
        assert_int_equal(uv_ip4_addr(ip, port, (struct sockaddr_in *)&o->addr), 0);
        o->addrlen = sizeof(struct sockaddr_in);
    }
    o->timeout_ms = 2000;
    o->connect_timeout_ms = 500;
    o->on_state = on_state;
    o->state_arg = cur;
}

static void client_new(struct env *e, const struct tg_redis_opts *o)
{
    assert_int_equal(tg_redis_new(&e->loop, o, scripts, S_COUNT, &e->r), 0);
    assert_non_null(e->r);
}

static void client_up(struct env *e, const struct tg_redis_opts *o)
{
    client_new(e, o);
    assert_true(run_until(e, is_up, e->r, RUN_MS));
}

static void on_res(void *arg, int status, const redisReply *reply)
{
    struct res *x = arg;
    x->calls++;
    x->status = status;
    x->seq = cur->seq++;
    x->at_ns = uv_hrtime();
    x->type = reply ? reply->type : -1;
    if (reply && reply->type == REDIS_REPLY_ARRAY) {
        x->elements = reply->elements;
        if (reply->elements && reply->element[0]->type == REDIS_REPLY_INTEGER)
            x->v0 = reply->element[0]->integer;
    } else if (reply && reply->type == REDIS_REPLY_INTEGER) {
        x->v0 = reply->integer;
    }
    if (cur->free_in_cb) {
        struct tg_redis *r = cur->free_in_cb;
        cur->free_in_cb = NULL;
        tg_redis_free(r);
        /* Anything after free from inside a callback fails synchronously. */
        const char *argv[] = {"0", "1"};
        size_t lens[] = {1, 1};
        assert_int_equal(tg_redis_eval(r, S_ARRAY, 2, argv, lens, on_res, x, NULL),
                         TG_REDIS_E_CLOSED);
    }
}

/* EVALSHA s_array with ARGV[1] = v. */
static int eval_array(struct env *e, long v, struct res *x, struct tg_redis_call **out)
{
    char buf[24];
    int n = snprintf(buf, sizeof(buf), "%ld", v);
    const char *argv[] = {"0", buf};
    size_t lens[] = {1, (size_t)n};
    return tg_redis_eval(e->r, S_ARRAY, 2, argv, lens, on_res, x, out);
}

static long cmdstat_calls(redisContext *adm, const char *cmd)
{
    redisReply *rep = redisCommand(adm, "INFO commandstats");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    char key[64];
    snprintf(key, sizeof(key), "cmdstat_%s:calls=", cmd);
    const char *p = strstr(rep->str, key);
    long v = p ? strtol(p + strlen(key), NULL, 10) : 0;
    freeReplyObject(rep);
    return v;
}

static void admin_cmd(redisContext *adm, const char *cmd)
{
    redisReply *rep = redisCommand(adm, cmd);
    assert_non_null(rep);
    if (rep->type == REDIS_REPLY_ERROR)
        fail_msg("%s: %s", cmd, rep->str);
    freeReplyObject(rep);
}

/* ---- fixtures ---- */

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    assert_int_equal(uv_loop_init(&e->loop), 0);
    assert_int_equal(uv_timer_init(&e->loop, &e->tick), 0);
    assert_int_equal(uv_timer_start(&e->tick, on_tick, 5, 5), 0);
    e->port = free_port();
    cur = e;
    *state = e;
    return 0;
}

/* The default: a plain redis-server already running. */
static int setup_redis(void **state)
{
    setup(state);
    struct env *e = *state;
    e->pid = redis_start(e->port, "127.0.0.1", NULL);
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    tg_redis_free(e->r);
    e->r = NULL;
    uv_close((uv_handle_t *)&e->tick, NULL);
    /* Only closing handles should remain; bounded, so a leaked active handle
     * fails the case instead of hanging it. */
    uint64_t end = now_ms() + 2000;
    while (uv_run(&e->loop, UV_RUN_NOWAIT) != 0 && now_ms() < end)
        usleep(1000);
    int rv = uv_loop_close(&e->loop);
    redis_kill(e);
    cur = NULL;
    free(e);
    assert_int_equal(rv, 0);
    return 0;
}

/* ---- cases ---- */

/* 1. An array of integers; then 1000 pipelined evals complete in order. */
static void test_eval_pipeline(void **state)
{
    struct env *e = *state;
    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    client_up(e, &o);
    assert_int_equal(e->ups, 1);

    struct res one = {0};
    assert_int_equal(eval_array(e, 7, &one, NULL), 0);
    assert_int_equal(one.calls, 0); /* never before eval returns */
    assert_true(run_until(e, calls_at_least, &one, RUN_MS));
    assert_int_equal(one.status, TG_REDIS_OK);
    assert_int_equal(one.type, REDIS_REPLY_ARRAY);
    assert_int_equal(one.elements, 3);
    assert_int_equal(one.v0, 7);

    static struct res many[NCALLS];
    memset(many, 0, sizeof(many));
    int base = e->seq;
    for (int i = 0; i < NCALLS; i++)
        assert_int_equal(eval_array(e, i, &many[i], NULL), 0);
    struct tg_redis_stats st;
    tg_redis_stats(e->r, &st);
    assert_int_equal(st.inflight, NCALLS);
    assert_true(run_until(e, no_inflight, e->r, RUN_MS));
    for (int i = 0; i < NCALLS; i++) {
        assert_int_equal(many[i].calls, 1);
        assert_int_equal(many[i].status, TG_REDIS_OK);
        assert_int_equal(many[i].v0, i);
        assert_int_equal(many[i].seq, base + i);
    }
    tg_redis_stats(e->r, &st);
    assert_int_equal(st.errors, 0);
    assert_int_equal(st.timeouts, 0);
    assert_int_equal(st.noscript, 1); /* only the very first eval on a fresh server */
}

/*
 * 1b. Writes larger than the socket buffer: the adapter writes once per loop
 * iteration and, when output is left over, waits for POLLOUT until it is
 * all out; then small commands go out through the coalesced path again.
 */
#define BIG_CALLS 64
#define BIG_LEN (256 * 1024)
static void test_large_writes(void **state)
{
    struct env *e = *state;
    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    client_up(e, &o);
    char *big = malloc(BIG_LEN);
    assert_non_null(big);
    static struct res many[BIG_CALLS];
    memset(many, 0, sizeof(many));
    for (int i = 0; i < BIG_CALLS; i++) {
        /* tonumber("000...0<i>") == i */
        memset(big, '0', BIG_LEN);
        int n = snprintf(big + BIG_LEN - 8, 8, "%07d", i);
        assert_int_equal(n, 7);
        const char *argv[] = {"0", big};
        size_t lens[] = {1, BIG_LEN - 1};
        assert_int_equal(tg_redis_eval(e->r, S_ARRAY, 2, argv, lens, on_res, &many[i], NULL), 0);
    }
    free(big);
    assert_true(run_until(e, no_inflight, e->r, RUN_MS));
    for (int i = 0; i < BIG_CALLS; i++) {
        assert_int_equal(many[i].calls, 1);
        assert_int_equal(many[i].status, TG_REDIS_OK);
        assert_int_equal(many[i].v0, i);
    }
    for (int k = 0; k < 3; k++) {
        struct res x = {0};
        assert_int_equal(eval_array(e, 40 + k, &x, NULL), 0);
        assert_true(run_until(e, calls_at_least, &x, RUN_MS));
        assert_int_equal(x.status, TG_REDIS_OK);
        assert_int_equal(x.v0, 40 + k);
    }
    struct tg_redis_stats st;
    tg_redis_stats(e->r, &st);
    assert_int_equal(st.timeouts, 0);
    assert_int_equal(st.disconnects, 0);
}

/* 2. SCRIPT FLUSH: one EVAL per affected call, then EVALSHA again. */
static void test_noscript(void **state)
{
    struct env *e = *state;
    redisContext *adm = admin_connect(e->port, NULL);
    assert_non_null(adm);
    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    client_up(e, &o);

    struct res x[12];
    memset(x, 0, sizeof(x));
    assert_int_equal(eval_array(e, 1, &x[0], NULL), 0); /* fresh server: NOSCRIPT */
    assert_true(run_until(e, calls_at_least, &x[0], RUN_MS));
    assert_int_equal(eval_array(e, 2, &x[1], NULL), 0); /* cached now */
    assert_true(run_until(e, calls_at_least, &x[1], RUN_MS));
    struct tg_redis_stats st;
    tg_redis_stats(e->r, &st);
    assert_int_equal(st.noscript, 1);
    assert_int_equal(cmdstat_calls(adm, "eval"), 1);

    admin_cmd(adm, "SCRIPT FLUSH");
    for (int i = 2; i < 12; i++) /* ten calls hit the empty cache, pipelined */
        assert_int_equal(eval_array(e, i, &x[i], NULL), 0);
    assert_true(run_until(e, no_inflight, e->r, RUN_MS));
    for (int i = 0; i < 12; i++) {
        assert_int_equal(x[i].calls, 1);
        assert_int_equal(x[i].status, TG_REDIS_OK);
        assert_int_equal(x[i].v0, i < 2 ? i + 1 : i);
    }
    tg_redis_stats(e->r, &st);
    assert_int_equal(st.noscript, 11);
    assert_int_equal(st.errors, 0);
    assert_int_equal(cmdstat_calls(adm, "eval"), 11);

    long sha_before = cmdstat_calls(adm, "evalsha");
    struct res y = {0};
    assert_int_equal(eval_array(e, 99, &y, NULL), 0);
    assert_true(run_until(e, calls_at_least, &y, RUN_MS));
    assert_int_equal(y.status, TG_REDIS_OK);
    assert_int_equal(y.v0, 99);
    assert_int_equal(cmdstat_calls(adm, "evalsha"), sha_before + 1);
    assert_int_equal(cmdstat_calls(adm, "eval"), 11);
    tg_redis_stats(e->r, &st);
    assert_int_equal(st.noscript, 11);
    redisFree(adm);
}

/* 3. CLIENT PAUSE: TIMEOUT for the oldest call, DOWN for the rest, then recovery. */
static void test_timeout(void **state)
{
    struct env *e = *state;
    redisContext *adm = admin_connect(e->port, NULL);
    assert_non_null(adm);
    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    o.timeout_ms = 50;
    client_up(e, &o);
    struct res warm = {0};
    assert_int_equal(eval_array(e, 1, &warm, NULL), 0); /* load the script */
    assert_true(run_until(e, calls_at_least, &warm, RUN_MS));

    admin_cmd(adm, "CLIENT PAUSE 1500 ALL");
    uint64_t t0 = uv_hrtime();
    struct res x[3];
    memset(x, 0, sizeof(x));
    for (int i = 0; i < 3; i++)
        assert_int_equal(eval_array(e, i, &x[i], NULL), 0);
    assert_true(run_until(e, calls_at_least, &x[2], RUN_MS));
    uint64_t ms = (x[0].at_ns - t0) / 1000000;
    assert_int_equal(x[0].calls, 1);
    assert_int_equal(x[0].status, TG_REDIS_E_TIMEOUT);
    assert_true(ms >= 45 && ms <= 300);
    for (int i = 1; i < 3; i++) {
        assert_int_equal(x[i].calls, 1);
        assert_int_equal(x[i].status, TG_REDIS_E_DOWN);
    }
    struct tg_redis_stats st;
    tg_redis_stats(e->r, &st);
    assert_int_equal(st.timeouts, 1);
    assert_int_equal(st.inflight, 0);
    assert_false(st.up);
    assert_int_equal(e->downs, 1);

    /* Down: fail fast, no callback. */
    struct res f = {0};
    assert_int_equal(eval_array(e, 5, &f, NULL), TG_REDIS_E_DOWN);

    /* The pause ends; the client comes back by itself and works. */
    assert_true(run_until(e, is_up, e->r, RUN_MS));
    assert_true((uv_hrtime() - t0) / 1000000 >= 1000);
    struct res y = {0};
    assert_int_equal(eval_array(e, 42, &y, NULL), 0);
    assert_true(run_until(e, calls_at_least, &y, RUN_MS));
    assert_int_equal(y.status, TG_REDIS_OK);
    assert_int_equal(y.v0, 42);
    assert_int_equal(f.calls, 0);
    tg_redis_stats(e->r, &st);
    assert_true(st.reconnects >= 1);
    assert_int_equal(e->ups, 2);
    redisFree(adm);
}

/* 4. SIGKILL with calls in flight; down fails fast; restart on the same port. */
static void test_killed(void **state)
{
    struct env *e = *state;
    redisContext *adm = admin_connect(e->port, NULL);
    assert_non_null(adm);
    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    o.timeout_ms = 5000;
    client_up(e, &o);

    admin_cmd(adm, "CLIENT PAUSE 3000 ALL"); /* keeps the calls in flight */
    redisFree(adm);
    struct res x[5];
    memset(x, 0, sizeof(x));
    for (int i = 0; i < 5; i++)
        assert_int_equal(eval_array(e, i, &x[i], NULL), 0);
    run_for(e, 50); /* written, unanswered */
    for (int i = 0; i < 5; i++)
        assert_int_equal(x[i].calls, 0);
    kill_pid(&e->pid);
    assert_true(run_until(e, calls_at_least, &x[4], RUN_MS));
    for (int i = 0; i < 5; i++) {
        assert_int_equal(x[i].calls, 1);
        assert_int_equal(x[i].status, TG_REDIS_E_DOWN);
    }
    assert_false(tg_redis_up(e->r));
    assert_int_equal(e->downs, 1);
    struct res f = {0};
    assert_int_equal(eval_array(e, 1, &f, NULL), TG_REDIS_E_DOWN);

    run_for(e, 400); /* a few refused reconnects */
    struct tg_redis_stats st;
    tg_redis_stats(e->r, &st);
    assert_true(st.connect_failures >= 1);
    e->pid = redis_start(e->port, "127.0.0.1", NULL);
    uint64_t t0 = now_ms();
    assert_true(run_until(e, is_up, e->r, 6000)); /* within the 5 s backoff ceiling */
    assert_true(now_ms() - t0 <= 5500);
    struct res y = {0};
    assert_int_equal(eval_array(e, 3, &y, NULL), 0);
    assert_true(run_until(e, calls_at_least, &y, RUN_MS));
    assert_int_equal(y.status, TG_REDIS_OK);
    assert_int_equal(y.v0, 3);
    assert_int_equal(f.calls, 0);
    tg_redis_stats(e->r, &st);
    assert_int_equal(st.disconnects, 1);
    assert_int_equal(e->ups, 2);
}

/* 5. No server at start: no crash, fail fast, connect when it appears. */
static void test_absent_at_start(void **state)
{
    struct env *e = *state;
    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    client_new(e, &o);
    struct res f = {0};
    assert_int_equal(eval_array(e, 1, &f, NULL), TG_REDIS_E_DOWN);
    run_for(e, 300);
    assert_false(tg_redis_up(e->r));
    assert_int_equal(eval_array(e, 1, &f, NULL), TG_REDIS_E_DOWN);
    struct tg_redis_stats st;
    tg_redis_stats(e->r, &st);
    assert_true(st.connect_failures >= 2);
    assert_int_equal(e->ups + e->downs, 0);

    e->pid = redis_start(e->port, "127.0.0.1", NULL);
    assert_true(run_until(e, is_up, e->r, 6000));
    struct res y = {0};
    assert_int_equal(eval_array(e, 5, &y, NULL), 0);
    assert_true(run_until(e, calls_at_least, &y, RUN_MS));
    assert_int_equal(y.status, TG_REDIS_OK);
    assert_int_equal(f.calls, 0);
}

static int eval_set(struct env *e, const char *key, const char *val, struct res *x)
{
    const char *argv[] = {"1", key, val};
    size_t lens[] = {1, strlen(key), strlen(val)};
    return tg_redis_eval(e->r, S_SET, 3, argv, lens, on_res, x, NULL);
}

/* 6. requirepass + SELECT; a wrong password stays down and is counted. */
static void test_auth_select(void **state)
{
    struct env *e = *state;
    static const char *const extra[] = {"--requirepass", "s3cret-pw", NULL};
    e->pid = redis_start(e->port, "127.0.0.1", extra);
    redisContext *adm = admin_connect(e->port, "s3cret-pw");
    assert_non_null(adm);

    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    o.password = "s3cret-pw";
    o.database = 5;
    client_up(e, &o);
    struct res x = {0};
    assert_int_equal(eval_set(e, "tg:k", "in-db-5", &x), 0);
    assert_true(run_until(e, calls_at_least, &x, RUN_MS));
    assert_int_equal(x.status, TG_REDIS_OK);
    redisReply *rep = redisCommand(adm, "GET tg:k"); /* db 0 */
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_NIL);
    freeReplyObject(rep);
    admin_cmd(adm, "SELECT 5");
    rep = redisCommand(adm, "GET tg:k");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, "in-db-5");
    freeReplyObject(rep);
    redisFree(adm);
    tg_redis_free(e->r);
    e->r = NULL;

    /* Wrong password: never up, never calls on_state, errors counted, retries. */
    e->ups = e->downs = 0;
    o.password = "wrong";
    client_new(e, &o);
    run_for(e, 800);
    assert_false(tg_redis_up(e->r));
    struct tg_redis_stats st;
    tg_redis_stats(e->r, &st);
    assert_true(st.errors >= 2);
    assert_true(st.connect_failures >= 2);
    assert_true(st.reconnects >= 1);
    assert_int_equal(e->ups + e->downs, 0);
    struct res f = {0};
    assert_int_equal(eval_set(e, "a", "b", &f), TG_REDIS_E_DOWN);

    /* A bad database number: SELECT fails the same way. */
    tg_redis_free(e->r);
    e->r = NULL;
    o.password = "s3cret-pw";
    o.database = 100000;
    client_new(e, &o);
    run_for(e, 300);
    assert_false(tg_redis_up(e->r));
    tg_redis_stats(e->r, &st);
    assert_true(st.errors >= 1);
}

/* 7. A connect that never completes: the connect timer fires, retries, no hang. */
static void test_blackhole(void **state)
{
    struct env *e = *state;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(lfd, 0), 0); /* never accept()ed */
    socklen_t len = sizeof(a);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
    int fill[8];
    for (int i = 0; i < 8; i++) { /* fill the accept queue: later SYNs are dropped */
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        assert_true(fill[i] >= 0);
        (void)connect(fill[i], (struct sockaddr *)&a, sizeof(a));
    }
    usleep(20000);

    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", ntohs(a.sin_port));
    o.connect_timeout_ms = 150;
    o.password = "x"; /* even a connect that lands in the queue waits for AUTH */
    uint64_t t0 = now_ms();
    client_new(e, &o);
    run_for(e, 260);
    struct tg_redis_stats st;
    tg_redis_stats(e->r, &st);
    assert_int_equal(st.connect_failures, 1); /* the 150 ms timer, not a 2-minute SYN */
    run_for(e, 600);
    tg_redis_stats(e->r, &st);
    assert_true(st.connect_failures >= 2);
    assert_true(st.reconnects >= 1);
    assert_false(tg_redis_up(e->r));
    struct res f = {0};
    assert_int_equal(eval_array(e, 1, &f, NULL), TG_REDIS_E_DOWN);
    tg_redis_free(e->r); /* while connecting */
    e->r = NULL;
    assert_true(now_ms() - t0 < 2000);
    for (int i = 0; i < 8; i++)
        close(fill[i]);
    close(lfd);
}

/* 8. Cancel before the reply: the callback never runs; memory freed (ASan). */
static void test_cancel(void **state)
{
    struct env *e = *state;
    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    client_up(e, &o);
    struct res x[3];
    memset(x, 0, sizeof(x));
    struct tg_redis_call *c[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(eval_array(e, i, &x[i], &c[i]), 0);
    tg_redis_call_cancel(c[1]);
    tg_redis_call_cancel(NULL);
    assert_true(run_until(e, no_inflight, e->r, RUN_MS));
    assert_int_equal(x[0].calls, 1);
    assert_int_equal(x[1].calls, 0);
    assert_int_equal(x[2].calls, 1);
    assert_int_equal(x[2].status, TG_REDIS_OK);

    /* Cancelled and still pending when the client is freed. */
    struct res y = {0};
    struct tg_redis_call *cy;
    assert_int_equal(eval_array(e, 9, &y, &cy), 0);
    tg_redis_call_cancel(cy);
    tg_redis_free(e->r);
    e->r = NULL;
    assert_int_equal(y.calls, 0);
}

/* 9. Free with calls pending: CLOSED once each, inside free; clean loop close. */
static void test_free_pending(void **state)
{
    struct env *e = *state;
    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    client_up(e, &o);
    struct res x[10];
    memset(x, 0, sizeof(x));
    for (int i = 0; i < 10; i++)
        assert_int_equal(eval_array(e, i, &x[i], NULL), 0);
    tg_redis_free(e->r);
    e->r = NULL;
    for (int i = 0; i < 10; i++) {
        assert_int_equal(x[i].calls, 1);
        assert_int_equal(x[i].status, TG_REDIS_E_CLOSED);
    }
    assert_int_equal(e->downs, 0); /* free does not call on_state */
    run_for(e, 50);
    for (int i = 0; i < 10; i++)
        assert_int_equal(x[i].calls, 1);
}

/* 9b. Free from inside a reply callback: the rest get CLOSED; hiredis frees later. */
static void test_free_in_callback(void **state)
{
    struct env *e = *state;
    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    client_up(e, &o);
    struct res warm = {0};
    assert_int_equal(eval_array(e, 0, &warm, NULL), 0);
    assert_true(run_until(e, calls_at_least, &warm, RUN_MS));
    struct res x[10];
    memset(x, 0, sizeof(x));
    for (int i = 0; i < 10; i++)
        assert_int_equal(eval_array(e, i, &x[i], NULL), 0);
    e->free_in_cb = e->r;
    e->r = NULL;
    assert_true(run_until(e, calls_at_least, &x[9], RUN_MS));
    assert_int_equal(x[0].status, TG_REDIS_OK);
    for (int i = 1; i < 10; i++) {
        assert_int_equal(x[i].calls, 1);
        assert_int_equal(x[i].status, TG_REDIS_E_CLOSED);
    }
}

/* 10. max_inflight: BUSY synchronously, no callback; room again after replies. */
static void test_busy(void **state)
{
    struct env *e = *state;
    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    o.max_inflight = 4;
    client_up(e, &o);
    struct res x[5];
    memset(x, 0, sizeof(x));
    for (int i = 0; i < 4; i++)
        assert_int_equal(eval_array(e, i, &x[i], NULL), 0);
    assert_int_equal(eval_array(e, 4, &x[4], NULL), TG_REDIS_E_BUSY);
    assert_true(run_until(e, no_inflight, e->r, RUN_MS));
    for (int i = 0; i < 4; i++)
        assert_int_equal(x[i].status, TG_REDIS_OK);
    assert_int_equal(x[4].calls, 0);
    assert_int_equal(eval_array(e, 4, &x[4], NULL), 0);
    assert_true(run_until(e, calls_at_least, &x[4], RUN_MS));
    assert_int_equal(x[4].status, TG_REDIS_OK);
}

/* Argument checks and error replies that reach the caller. */
static void test_errors(void **state)
{
    struct env *e = *state;
    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    struct tg_redis *bad;
    o.addrlen = 0;
    assert_int_equal(tg_redis_new(&e->loop, &o, scripts, S_COUNT, &bad), TG_E_INVALID);
    assert_null(bad);
    opts_init(&o, "127.0.0.1", e->port);
    client_up(e, &o);
    const char *argv[] = {"0"};
    size_t lens[] = {1};
    struct res x = {0};
    assert_int_equal(tg_redis_eval(e->r, S_COUNT, 1, argv, lens, on_res, &x, NULL), TG_E_INVALID);
    assert_int_equal(tg_redis_eval(e->r, S_ARRAY, 0, argv, lens, on_res, &x, NULL), TG_E_INVALID);
    /* numkeys "x" is an error reply from Redis. */
    const char *bargv[] = {"x"};
    assert_int_equal(tg_redis_eval(e->r, S_ARRAY, 1, bargv, lens, on_res, &x, NULL), 0);
    assert_true(run_until(e, calls_at_least, &x, RUN_MS));
    assert_int_equal(x.status, TG_REDIS_E_REPLY);
    assert_int_equal(x.type, REDIS_REPLY_ERROR);
    struct tg_redis_stats st;
    tg_redis_stats(e->r, &st);
    assert_int_equal(st.errors, 1);
    assert_true(tg_redis_up(e->r)); /* an ordinary error keeps the connection */
    assert_string_equal(tg_redis_strerror(TG_REDIS_E_BUSY), "redis: too many commands in flight");
}

/* READONLY (a demoted master) reaches the caller and forces a reconnect. */
static void test_readonly(void **state)
{
    struct env *e = *state;
    int mport = free_port();
    e->pid2 = redis_start(mport, "127.0.0.1", NULL);
    redisContext *adm = admin_connect(e->port, NULL);
    assert_non_null(adm);
    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    client_up(e, &o);
    redisReply *rep = redisCommand(adm, "REPLICAOF 127.0.0.1 %d", mport);
    assert_non_null(rep);
    freeReplyObject(rep);
    struct res x = {0};
    assert_int_equal(eval_set(e, "k", "v", &x), 0);
    assert_true(run_until(e, calls_at_least, &x, RUN_MS));
    assert_int_equal(x.status, TG_REDIS_E_REPLY);
    assert_int_equal(e->downs, 1); /* dropped on READONLY */
    assert_true(run_until(e, is_up, e->r, RUN_MS));
    assert_int_equal(e->ups, 2);
    admin_cmd(adm, "REPLICAOF NO ONE");
    redisFree(adm);
}

static bool connect_failed(void *arg)
{
    struct tg_redis_stats st;
    tg_redis_stats(arg, &st);
    return st.connect_failures >= 1;
}

/* failmalloc (STYLE §12): every allocation of ours fails cleanly, without a leak. */
static void test_failmalloc(void **state)
{
    struct env *e = *state;
    struct tg_redis_opts o;
    opts_init(&o, "127.0.0.1", e->port);
    o.password = "pw-not-needed";
    for (unsigned long n = 1;; n++) {
        tg_test_failmalloc_arm(n);
        struct tg_redis *r = NULL;
        int rv = tg_redis_new(&e->loop, &o, scripts, S_COUNT, &r);
        bool injected = tg_test_failmalloc_failed();
        tg_test_failmalloc_disarm();
        if (rv == 0)
            tg_redis_free(r);
        else
            assert_int_equal(rv, TG_E_NOMEM);
        if (!injected) {
            assert_int_equal(rv, 0);
            break;
        }
        assert_true(n < 20);
    }
    run_for(e, 10); /* let the freed clients' handles close */

    /* The adapter's allocation fails: that connect fails, a later one works. */
    o.password = NULL;
    client_new(e, &o);
    tg_test_failmalloc_arm(1);
    bool failed = run_until(e, connect_failed, e->r, RUN_MS);
    tg_test_failmalloc_disarm();
    assert_true(failed);
    assert_true(run_until(e, is_up, e->r, RUN_MS));

    /* eval's allocation fails: TG_E_NOMEM, no callback, nothing pending. */
    struct res x = {0};
    tg_test_failmalloc_arm(1);
    int rv = eval_array(e, 1, &x, NULL);
    tg_test_failmalloc_disarm();
    assert_int_equal(rv, TG_E_NOMEM);
    run_for(e, 50);
    assert_int_equal(x.calls, 0);
    struct tg_redis_stats st;
    tg_redis_stats(e->r, &st);
    assert_int_equal(st.inflight, 0);
}

/* IPv6 loopback, when this machine has it. */
static void test_ipv6(void **state)
{
    struct env *e = *state;
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool have = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (fd >= 0)
        close(fd);
    if (!have)
        skip();
    e->pid = redis_start(e->port, "::1", NULL);
    struct tg_redis_opts o;
    opts_init(&o, "::1", e->port);
    client_up(e, &o);
    struct res x = {0};
    assert_int_equal(eval_array(e, 6, &x, NULL), 0);
    assert_true(run_until(e, calls_at_least, &x, RUN_MS));
    assert_int_equal(x.status, TG_REDIS_OK);
    assert_int_equal(x.v0, 6);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as server.c does: writes to a killed Redis */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_eval_pipeline, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_large_writes, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_noscript, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_timeout, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_killed, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_absent_at_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_select, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blackhole, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_free_pending, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_free_in_callback, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_busy, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_readonly, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_failmalloc, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_ipv6, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
