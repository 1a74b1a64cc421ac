/*
 * The audit filter (SPEC §7).  It is first in the chain, so its
 * on_complete runs last, after every other filter has said its word; it
 * reads what the request gathered (identity, route, upstream, outcome,
 * bytes, timings) and never a header value, body byte, key or token.
 *
 * Admission: with on_queue_full "reject", a request that arrives while the
 * writer's queue is full is answered 503 (audit.unavailable) before anything
 * else runs, so nothing unaudited is served; its own record may be refused
 * too and is then counted in the writer's "dropped" statistics.  With
 * "block", completion waits for room (the writer only ever lags, it never
 * stops, while its disk accepts writes).
 */
#include "filters/audit.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <uv.h>

#include "config/config.h"
#include "filters/audit_json.h"
#include "filters/audit_writer.h"
#include "filters/filters.h"
#include "proxy/buf.h"
#include "proxy/mem.h"
#include "proxy/req.h"
#include "proxy/worker.h"

static _Atomic(struct tg_audit_writer *) writer;

void tg_audit_set_writer(struct tg_audit_writer *w)
{
    atomic_store(&writer, w);
}

struct tg_audit_writer *tg_audit_get_writer(void)
{
    return atomic_load(&writer);
}

/* Main-thread records waiting for room (reload records; main thread only). */
#define MAIN_PENDING_MAX 64
static json_t *main_pending[MAIN_PENDING_MAX];
static size_t main_pending_n;

static json_t *ts_now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char buf[96];
    snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)tv.tv_usec);
    return json_string(buf);
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *base_record(const char *type)
{
    json_t *r = json_object();
    if (!r)
        return NULL;
    json_object_set_new(r, "type", json_string(type));
    json_object_set_new(r, "ts", ts_now());
    return r;
}

static void submit(json_t *r, bool block)
{
    struct tg_audit_writer *w = tg_audit_get_writer();
    if (!w || !r) {
        json_decref(r);
        return;
    }
    tg_audit_submit(w, r, block); /* a refusal is counted by the writer */
}

static void add_config(json_t *r, const struct tg_config *cfg)
{
    json_t *c = json_object();
    json_object_set_new(c, "version", json_integer((json_int_t)cfg->version));
    json_object_set_new(c, "sha256", json_string(cfg->sha256_hex));
    json_object_set_new(r, "config", c);
}

void tg_audit_process_record(const char *type, const struct tg_config *cfg)
{
    json_t *r = base_record(type);
    if (!r)
        return;
    add_config(r, cfg);
    json_object_set_new(r, "version", json_string(TG_VERSION));
    /* startup: the queue is empty; shutdown: every worker is done.  Never
     * wait: with a disk that stays full, the process must still exit. */
    submit(r, false);
}

void tg_audit_reload_record(bool accepted, const struct tg_config *cfg, const char *error)
{
    json_t *r = base_record("config_reload");
    if (!r)
        return;
    json_object_set_new(r, "result", json_string(accepted ? "accepted" : "rejected"));
    if (cfg)
        add_config(r, cfg);
    /* Loader messages name files and JSON paths, never secret values. */
    json_object_set_new(r, "error", str_or_null(error));
    /* Called on the main thread, which also serves the admin listener and
     * signals: never wait for a full queue here.  A record that finds no
     * room waits in a short main-thread list that tg_audit_main_retry()
     * (a main-loop timer) hands over once the writer has room. */
    if (!main_pending_n && tg_audit_submit(tg_audit_get_writer(), json_incref(r), false)) {
        json_decref(r);
        return;
    }
    if (main_pending_n < MAIN_PENDING_MAX)
        main_pending[main_pending_n++] = r;
    else
        submit(r, false); /* counted as dropped */
}

void tg_audit_main_retry(void)
{
    struct tg_audit_writer *w = tg_audit_get_writer();
    size_t done = 0;
    while (w && done < main_pending_n && tg_audit_submit(w, json_incref(main_pending[done]), false))
        json_decref(main_pending[done++]);
    memmove(main_pending, main_pending + done, (main_pending_n - done) * sizeof(json_t *));
    main_pending_n -= done;
}

void tg_audit_main_flush(void)
{
    for (size_t i = 0; i < main_pending_n; i++)
        submit(main_pending[i], false);
    main_pending_n = 0;
}


struct tg_worker;
static void enqueue_unreserved(struct tg_worker *worker, const struct tg_config *cfg,
                               json_t *rec);

void tg_audit_raw_request(struct tg_worker *worker, const struct tg_config *cfg, const char *ip,
                          unsigned port, const char *tls_version, int status, const char *reason)
{
    if (!cfg->audit.enabled || !tg_audit_get_writer())
        return;
    json_t *r = base_record("request");
    if (!r)
        return;
    /* The same members as every request record; what was never parsed is null. */
    json_object_set_new(r, "request_id", json_null());
    json_object_set_new(r, "id", json_null());
    json_t *client = json_object();
    json_object_set_new(client, "ip", json_string(ip));
    json_object_set_new(client, "port", json_integer(port));
    json_object_set_new(r, "client", client);
    json_object_set_new(r, "tls", str_or_null(tls_version));
    json_object_set_new(r, "protocol", json_string("http/1.1"));
    json_object_set_new(r, "method", json_null());
    json_object_set_new(r, "path", json_null());
    json_object_set_new(r, "route", json_null());
    json_object_set_new(r, "config_version", json_integer((json_int_t)cfg->version));
    json_object_set_new(r, "auth", json_null());
    json_object_set_new(r, "model", json_null());
    json_object_set_new(r, "stream", json_null());
    json_object_set_new(r, "decision", json_string("deny"));
    json_object_set_new(r, "reason", json_string(reason));
    json_object_set_new(r, "status", json_integer(status));
    json_object_set_new(r, "upstream", json_null());
    json_t *usage = json_object();
    json_object_set_new(usage, "prompt_tokens", json_null());
    json_object_set_new(usage, "completion_tokens", json_null());
    json_object_set_new(usage, "source", json_string("none"));
    json_object_set_new(r, "usage", usage);
    json_object_set_new(r, "cost", json_null());
    json_t *bytes = json_object();
    json_object_set_new(bytes, "in", json_integer(0));
    json_object_set_new(bytes, "out", json_integer(0));
    json_object_set_new(r, "bytes", bytes);
    json_t *t = json_object();
    json_object_set_new(t, "total", json_null());
    json_object_set_new(t, "upstream_first_byte", json_null());
    json_object_set_new(r, "timing_ms", t);
    enqueue_unreserved(worker, cfg, r);
}

static uint64_t ns_between(uint64_t from_ns, uint64_t to_ns)
{
    return to_ns > from_ns ? to_ns - from_ns : 0;
}

/*
 * The facts of one request, copied on the event loop (a few memcpy), turned
 * into JSON on the writer thread (tg_audit_lazy): jansson never runs on a
 * worker for a request record.
 */
enum ev_str {
    EV_REQUEST_ID, EV_IP, EV_METHOD, EV_PATH, EV_ROUTE, EV_KEY_ID, EV_PRINCIPAL, EV_TENANT,
    EV_POLICY, EV_MODEL, EV_UPSTREAM, EV_NSTR
};

struct req_event {
    struct tg_audit_lazy lazy;  /* must be first: the writer hands it back */
    struct timeval tv;          /* completion time */
    uint64_t id;                /* internal request id */
    uint64_t config_version;    /* pinned snapshot version */
    uint64_t bytes_in, bytes_out;
    uint64_t total_ns;      /* head parsed to completion */
    uint64_t first_byte_ns; /* to the upstream's response head (has_first_byte) */
    bool has_first_byte;    /* an upstream response head arrived */
    const char *tls, *protocol, *auth_method, *reason; /* static strings or NULL */
    int status, stream, client_port;
    bool denied;
    struct tg_req_usage usage;  /* settled usage, cost, degraded, quota time */
    const char *str[EV_NSTR];   /* into data[] or NULL */
    char data[];
};

static json_t *ev_str(const struct req_event *e, enum ev_str k)
{
    return e->str[k] ? json_string(e->str[k]) : json_null();
}

static json_t *build_request(struct tg_audit_lazy *l)
{
    const struct req_event *e = (const struct req_event *)l;
    json_t *r = json_object();
    if (!r)
        return NULL;
    struct tm tm;
    gmtime_r(&e->tv.tv_sec, &tm);
    char ts[96];
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)e->tv.tv_usec);
    json_object_set_new(r, "type", json_string("request"));
    json_object_set_new(r, "ts", json_string(ts));
    json_object_set_new(r, "request_id", ev_str(e, EV_REQUEST_ID));
    json_object_set_new(r, "id", json_integer((json_int_t)e->id));
    json_t *client = json_object();
    json_object_set_new(client, "ip", ev_str(e, EV_IP));
    json_object_set_new(client, "port", json_integer(e->client_port));
    json_object_set_new(r, "client", client);
    json_object_set_new(r, "tls", str_or_null(e->tls));
    json_object_set_new(r, "protocol", json_string(e->protocol));
    json_object_set_new(r, "method", ev_str(e, EV_METHOD));
    json_object_set_new(r, "path", ev_str(e, EV_PATH));
    json_object_set_new(r, "route", ev_str(e, EV_ROUTE));
    json_object_set_new(r, "config_version", json_integer((json_int_t)e->config_version));
    if (e->auth_method) {
        json_t *a = json_object();
        json_object_set_new(a, "method", json_string(e->auth_method));
        json_object_set_new(a, "key_id", ev_str(e, EV_KEY_ID));
        json_object_set_new(a, "principal", ev_str(e, EV_PRINCIPAL));
        json_object_set_new(a, "tenant", ev_str(e, EV_TENANT));
        json_object_set_new(a, "policy", ev_str(e, EV_POLICY));
        json_object_set_new(r, "auth", a);
    } else {
        json_object_set_new(r, "auth", json_null());
    }
    json_object_set_new(r, "model", ev_str(e, EV_MODEL));
    json_object_set_new(r, "stream", e->stream < 0 ? json_null() : json_boolean(e->stream));
    json_object_set_new(r, "decision", json_string(e->denied ? "deny" : "allow"));
    json_object_set_new(r, "reason", str_or_null(e->reason));
    json_object_set_new(r, "status", json_integer(e->status));
    json_object_set_new(r, "upstream", ev_str(e, EV_UPSTREAM));
    static const char *const sources[] = {"none", "upstream", "observed"};
    const struct tg_req_usage *u = &e->usage;
    bool counted = u->source == 1 || u->source == 2;
    json_t *usage = json_object();
    json_object_set_new(usage, "prompt_tokens",
                        counted ? json_integer((json_int_t)u->prompt_tokens) : json_null());
    json_object_set_new(usage, "completion_tokens",
                        counted ? json_integer((json_int_t)u->completion_tokens) : json_null());
    json_object_set_new(usage, "source", json_string(sources[counted ? u->source : 0]));
    json_object_set_new(r, "usage", usage);
    /* Micro-dollars are exact; the record shows dollars (SPEC §3). */
    json_object_set_new(r, "cost", counted ? json_real((double)u->cost / 1e6) : json_null());
    if (u->degraded)
        json_object_set_new(r, "degraded", json_true());
    json_t *bytes = json_object();
    json_object_set_new(bytes, "in", json_integer((json_int_t)e->bytes_in));
    json_object_set_new(bytes, "out", json_integer((json_int_t)e->bytes_out));
    json_object_set_new(r, "bytes", bytes);
    json_t *t = json_object();
    json_object_set_new(t, "total", json_real((double)e->total_ns / 1e6));
    json_object_set_new(t, "quota", u->quota_ms >= 0 ? json_real(u->quota_ms) : json_null());
    json_object_set_new(t, "upstream_first_byte",
                        e->has_first_byte ? json_real((double)e->first_byte_ns / 1e6)
                                          : json_null());
    json_object_set_new(r, "timing_ms", t);
    return r;
}

/* "YYYY-MM-DDTHH:MM:SS.ffffffZ" (27 bytes) of tv; the date and time part is
 * cached per second (this runs on the writer thread only). */
static void format_ts(const struct timeval *tv, char out[27])
{
    static _Thread_local time_t cached_sec = (time_t)-1;
    static _Thread_local char cached[20];
    if (tv->tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&tv->tv_sec, &tm);
        char buf[64];
        snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        memcpy(cached, buf, 19);
        cached_sec = tv->tv_sec;
    }
    memcpy(out, cached, 19);
    out[19] = '.';
    unsigned long us = (unsigned long)tv->tv_usec % 1000000u;
    for (int i = 25; i >= 20; i--) {
        out[i] = (char)('0' + us % 10);
        us /= 10;
    }
    out[26] = 'Z';
}

static void emit_str(struct tg_jw *j, const struct req_event *e, enum ev_str k)
{
    tg_jw_cstr(j, e->str[k]);
}

/*
 * The request record as text: the same members, order and types as
 * build_request() (tests/unit/test_audit_json.c compares the two byte for
 * byte), written straight into the writer's batch.
 */
static void emit_request(struct tg_audit_lazy *l, struct tg_jw *j, uint64_t seq)
{
    const struct req_event *e = (const struct req_event *)l;
    const struct tg_req_usage *u = &e->usage;
    static const char *const sources[] = {"none", "upstream", "observed"};
    bool counted = u->source == 1 || u->source == 2;
    char ts[27];
    format_ts(&e->tv, ts);
    TG_JW_LIT(j, "{\"type\":\"request\",\"ts\":\"");
    tg_jw_raw(j, ts, sizeof(ts));
    TG_JW_LIT(j, "\",\"seq\":");
    tg_jw_int(j, (int64_t)seq);
    TG_JW_LIT(j, ",\"request_id\":");
    emit_str(j, e, EV_REQUEST_ID);
    TG_JW_LIT(j, ",\"id\":");
    tg_jw_int(j, (int64_t)e->id);
    TG_JW_LIT(j, ",\"client\":{\"ip\":");
    emit_str(j, e, EV_IP);
    TG_JW_LIT(j, ",\"port\":");
    tg_jw_int(j, e->client_port);
    TG_JW_LIT(j, "},\"tls\":");
    tg_jw_cstr(j, e->tls);
    TG_JW_LIT(j, ",\"protocol\":");
    tg_jw_cstr(j, e->protocol);
    TG_JW_LIT(j, ",\"method\":");
    emit_str(j, e, EV_METHOD);
    TG_JW_LIT(j, ",\"path\":");
    emit_str(j, e, EV_PATH);
    TG_JW_LIT(j, ",\"route\":");
    emit_str(j, e, EV_ROUTE);
    TG_JW_LIT(j, ",\"config_version\":");
    tg_jw_int(j, (int64_t)e->config_version);
    if (e->auth_method) {
        TG_JW_LIT(j, ",\"auth\":{\"method\":");
        tg_jw_cstr(j, e->auth_method);
        TG_JW_LIT(j, ",\"key_id\":");
        emit_str(j, e, EV_KEY_ID);
        TG_JW_LIT(j, ",\"principal\":");
        emit_str(j, e, EV_PRINCIPAL);
        TG_JW_LIT(j, ",\"tenant\":");
        emit_str(j, e, EV_TENANT);
        TG_JW_LIT(j, ",\"policy\":");
        emit_str(j, e, EV_POLICY);
        TG_JW_LIT(j, "}");
    } else {
        TG_JW_LIT(j, ",\"auth\":null");
    }
    TG_JW_LIT(j, ",\"model\":");
    emit_str(j, e, EV_MODEL);
    if (e->stream < 0)
        TG_JW_LIT(j, ",\"stream\":null");
    else if (e->stream)
        TG_JW_LIT(j, ",\"stream\":true");
    else
        TG_JW_LIT(j, ",\"stream\":false");
    if (e->denied)
        TG_JW_LIT(j, ",\"decision\":\"deny\",\"reason\":");
    else
        TG_JW_LIT(j, ",\"decision\":\"allow\",\"reason\":");
    tg_jw_cstr(j, e->reason);
    TG_JW_LIT(j, ",\"status\":");
    tg_jw_int(j, e->status);
    TG_JW_LIT(j, ",\"upstream\":");
    emit_str(j, e, EV_UPSTREAM);
    if (counted) {
        TG_JW_LIT(j, ",\"usage\":{\"prompt_tokens\":");
        tg_jw_int(j, (int64_t)u->prompt_tokens);
        TG_JW_LIT(j, ",\"completion_tokens\":");
        tg_jw_int(j, (int64_t)u->completion_tokens);
        TG_JW_LIT(j, ",\"source\":");
        tg_jw_cstr(j, sources[u->source]);
        /* Micro-dollars are exact; the record shows dollars (SPEC §3). */
        TG_JW_LIT(j, "},\"cost\":");
        tg_jw_micro(j, u->cost);
    } else {
        TG_JW_LIT(j, ",\"usage\":{\"prompt_tokens\":null,\"completion_tokens\":null,"
                     "\"source\":\"none\"},\"cost\":null");
    }
    if (u->degraded)
        TG_JW_LIT(j, ",\"degraded\":true");
    TG_JW_LIT(j, ",\"bytes\":{\"in\":");
    tg_jw_int(j, (int64_t)e->bytes_in);
    TG_JW_LIT(j, ",\"out\":");
    tg_jw_int(j, (int64_t)e->bytes_out);
    TG_JW_LIT(j, "},\"timing_ms\":{\"total\":");
    tg_jw_micro(j, e->total_ns);
    TG_JW_LIT(j, ",\"quota\":");
    if (u->quota_ms >= 0)
        tg_jw_real(j, u->quota_ms);
    else
        TG_JW_LIT(j, "null");
    TG_JW_LIT(j, ",\"upstream_first_byte\":");
    if (e->has_first_byte)
        tg_jw_micro(j, e->first_byte_ns);
    else
        TG_JW_LIT(j, "null");
    TG_JW_LIT(j, "}");
}

static void free_event(struct tg_audit_lazy *l)
{
    tg_mem_free(l);
}

static struct req_event *request_event(struct tg_req *req)
{
    static const char *protos[] = {"http/1.1", "h2", "h2c"};
    struct tg_iov v[EV_NSTR] = {0};
    v[EV_REQUEST_ID] = req->request_id;
    v[EV_IP] = tg_iov_make(req->client_ip, strlen(req->client_ip));
    v[EV_METHOD] = req->method;
    if (req->path.base) {
        /* The query string can carry anything (even credentials): not recorded. */
        const char *q = memchr(req->path.base, '?', req->path.len);
        v[EV_PATH] = tg_iov_make(req->path.base, q ? (size_t)(q - req->path.base) : req->path.len);
        if (v[EV_PATH].len > 1024)
            v[EV_PATH].len = 1024;
    }
    if (req->route)
        v[EV_ROUTE] = tg_iov_make(req->route->path_prefix, req->route->prefix_len);
    const struct tg_req_identity *id = &req->identity;
    if (id->method) {
        if (id->key_id)
            v[EV_KEY_ID] = tg_iov_make(id->key_id, strlen(id->key_id));
        if (id->principal)
            v[EV_PRINCIPAL] = tg_iov_make(id->principal, strlen(id->principal));
        if (id->tenant)
            v[EV_TENANT] = tg_iov_make(id->tenant, strlen(id->tenant));
        if (id->policy)
            v[EV_POLICY] = tg_iov_make(id->policy->name, strlen(id->policy->name));
    }
    if (req->model)
        v[EV_MODEL] = tg_iov_make(req->model, strlen(req->model));
    if (req->upstream_addr)
        v[EV_UPSTREAM] = tg_iov_make(req->upstream_addr, strlen(req->upstream_addr));
    if (v[EV_REQUEST_ID].len > 159)
        v[EV_REQUEST_ID].len = 159;
    size_t total = 0;
    for (int i = 0; i < EV_NSTR; i++)
        total += v[i].base ? v[i].len + 1 : 0;
    struct req_event *e = tg_mem_malloc(sizeof(*e) + total);
    if (!e)
        return NULL;
    char *p = e->data;
    for (int i = 0; i < EV_NSTR; i++) {
        if (!v[i].base || (i == EV_REQUEST_ID && v[i].len == 0)) {
            e->str[i] = NULL;
            continue;
        }
        memcpy(p, v[i].base, v[i].len);
        p[v[i].len] = '\0';
        e->str[i] = p;
        p += v[i].len + 1;
    }
    e->lazy.emit = emit_request;
    e->lazy.build = build_request;
    e->lazy.free = free_event;
    e->lazy.next = NULL;
    gettimeofday(&e->tv, NULL);
    e->id = req->id;
    e->config_version = req->cfg->version;
    e->bytes_in = req->body_received;
    e->bytes_out = req->bytes_out;
    uint64_t now = uv_hrtime();
    e->total_ns = ns_between(req->start_ns, now);
    e->has_first_byte = req->upstream_first_byte_ns != 0;
    e->first_byte_ns =
        e->has_first_byte ? ns_between(req->start_ns, req->upstream_first_byte_ns) : 0;
    e->tls = req->tls_version;
    e->protocol = protos[req->proto];
    e->auth_method = id->method;
    e->reason = req->outcome.reason;
    e->status = req->resp_head_sent ? req->status : 0;
    e->stream = req->stream;
    e->client_port = req->client_port;
    e->denied = req->outcome.denied;
    e->usage = req->usage;
    return e;
}

/*
 * on_queue_full "block", without blocking the event loop: a record that
 * finds the queue full waits in this worker's backlog (in order), and new
 * requests wait at admission (their chain is stopped) until the backlog has
 * drained into the writer; a 20 ms timer retries.  Nothing is dropped and
 * nothing unaudited is served.
 */
struct audit_ctx {
    bool reserved;                /* a writer queue slot is promised to this request */
    struct tg_req *req;           /* the request (while waiting at admission) */
    struct audit_ctx *next_wait;  /* admission wait list */
    bool waiting;                 /* on the wait list */
};

struct backlog_rec {
    struct backlog_rec *next; /* FIFO */
    json_t *rec;              /* the record */
};

struct worker_audit {
    uv_timer_t timer;             /* retry tick */
    bool timer_init;              /* timer initialised on this loop */
    struct backlog_rec *head, *tail; /* records waiting for room */
    struct audit_ctx *waiters;    /* requests waiting at admission */
    size_t credit;                /* writer slots promised to this worker, not yet to a request */
    struct tg_audit_lazy *bhead, *btail; /* completed records of this loop turn, oldest first */
    size_t bn;                           /* records in that batch (each holds a promised slot) */
    struct tg_defer flush;    /* hands the batch to the writer when the turn's callbacks end */
    struct tg_worker *worker; /* the worker whose loop runs flush */
};

static _Thread_local struct worker_audit wa;

/*
 * The event loop's side of the queue, made cheap per request (bench/audit.sh):
 * admission takes a slot from this worker's credit, refilled CREDIT_BATCH
 * at a time under one lock (tg_audit_reserve_n, which never hands out more
 * than half of the free slots, so near a full queue it is one at a time and
 * "reject"/"block" behave as with a slot per request); completed records
 * collect in a worker-local batch that one deferred call per loop turn
 * hands to the writer under one lock with at most one wake-up.  A record
 * waits at most until its loop turn ends (or FLUSH_AT records), and every
 * record in the batch holds a promised slot, so it always fits.
 */
#define CREDIT_BATCH 32 /* slots promised per lock */
#define CREDIT_MAX 64   /* credit above this goes back to the writer at once */
#define FLUSH_AT 256    /* a batch this long is handed over without waiting for the turn */

static bool take_slot(struct tg_audit_writer *w, const struct tg_worker *worker)
{
    if (!worker) /* not on a worker's loop: no thread exit gives credit back */
        return tg_audit_reserve(w);
    if (wa.credit) {
        wa.credit--;
        return true;
    }
    size_t got = tg_audit_reserve_n(w, CREDIT_BATCH);
    if (!got)
        return false;
    wa.credit = got - 1;
    return true;
}

static void give_slot(struct tg_audit_writer *w, const struct tg_worker *worker)
{
    if (!worker) {
        tg_audit_release(w);
        return;
    }
    if (++wa.credit > CREDIT_MAX) {
        tg_audit_release_n(w, wa.credit - CREDIT_BATCH);
        wa.credit = CREDIT_BATCH;
    }
}

static void flush_batch(void)
{
    if (!wa.bhead)
        return;
    struct tg_audit_lazy *list = wa.bhead;
    wa.bhead = wa.btail = NULL;
    wa.bn = 0;
    if (wa.worker)
        tg_worker_cancel(wa.worker, &wa.flush);
    tg_audit_submit_batch(tg_audit_get_writer(), list, &wa.credit);
}

static void on_flush(struct tg_defer *d)
{
    (void)d;
    flush_batch();
}

/* Queue a record whose slot is promised: into this loop turn's batch. */
static void batch_add(struct tg_worker *worker, struct tg_audit_lazy *l)
{
    if (!worker || uv_is_closing((uv_handle_t *)&worker->check)) {
        tg_audit_submit_lazy(tg_audit_get_writer(), l, true);
        return;
    }
    l->next = NULL;
    if (wa.btail)
        wa.btail->next = l;
    else
        wa.bhead = l;
    wa.btail = l;
    wa.worker = worker;
    if (++wa.bn >= FLUSH_AT)
        flush_batch();
    else
        tg_worker_defer(worker, &wa.flush, on_flush);
}

static bool backlog_flush(struct tg_audit_writer *w)
{
    while (wa.head) {
        if (!tg_audit_submit(w, json_incref(wa.head->rec), false))
            return false; /* json_incref: a refused submit frees its reference only */
        struct backlog_rec *b = wa.head;
        wa.head = b->next;
        if (!wa.head)
            wa.tail = NULL;
        json_decref(b->rec);
        tg_mem_free(b);
    }
    return true;
}

static void on_tick(uv_timer_t *t)
{
    struct tg_audit_writer *w = tg_audit_get_writer();
    if (!w || !backlog_flush(w))
        return;
    /* Admit waiting requests (oldest first: the list is newest first, so
     * from its tail) while slots can be promised. */
    while (wa.waiters) {
        struct audit_ctx *c = wa.waiters, *prev = NULL;
        while (c->next_wait) {
            prev = c;
            c = c->next_wait;
        }
        if (!take_slot(w, c->req->worker))
            break;
        if (prev)
            prev->next_wait = NULL;
        else
            wa.waiters = NULL;
        c->waiting = false;
        c->reserved = true;
        tg_req_continue(c->req);
    }
    if (!wa.head && !wa.waiters)
        uv_timer_stop(t);
}


void tg_audit_thread_exit(void)
{
    /* The writer outlives the workers: hand it what is left, waiting if need be. */
    struct tg_audit_writer *w = tg_audit_get_writer();
    flush_batch();
    tg_audit_release_n(w, wa.credit);
    wa.credit = 0;
    wa.worker = NULL;
    /* Wait for room, but not forever: a writer whose disk stays full must not
     * hold the process; what cannot be queued in 5 s is counted as dropped. */
    uint64_t deadline = uv_hrtime() + 5000000000ull;
    while (wa.head) {
        struct backlog_rec *b = wa.head;
        bool late = uv_hrtime() >= deadline;
        /* A refused submit frees only the extra reference; late ones are counted as dropped. */
        if (w && !tg_audit_submit(w, json_incref(b->rec), false) && !late) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        wa.head = b->next;
        json_decref(b->rec);
        tg_mem_free(b);
    }
    wa.tail = NULL;
    if (wa.timer_init) {
        uv_close((uv_handle_t *)&wa.timer, NULL);
        wa.timer_init = false;
    }
}

static void arm_loop(uv_loop_t *loop)
{
    if (!wa.timer_init) {
        uv_timer_init(loop, &wa.timer);
        uv_unref((uv_handle_t *)&wa.timer); /* never keeps a draining loop alive by itself */
        wa.timer_init = true;
    }
    if (!uv_is_active((uv_handle_t *)&wa.timer))
        uv_timer_start(&wa.timer, on_tick, 20, 20);
}

/* A record without a promised slot: in block mode it waits in the worker's backlog. */
static void enqueue_unreserved(struct tg_worker *worker, const struct tg_config *cfg, json_t *rec)
{
    struct tg_audit_writer *w = tg_audit_get_writer();
    if (!cfg->audit.on_queue_full_block || !worker) {
        submit(rec, false);
        return;
    }
    if (!wa.head && tg_audit_submit(w, json_incref(rec), false)) {
        json_decref(rec);
        return;
    }
    struct backlog_rec *b = tg_mem_malloc(sizeof(*b));
    if (!b) {
        submit(rec, false);
        return;
    }
    b->rec = rec;
    b->next = NULL;
    if (wa.tail)
        wa.tail->next = b;
    else
        wa.head = b;
    wa.tail = b;
    arm_loop(&worker->loop);
}

static bool attach(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    return req->cfg->audit.enabled && tg_audit_get_writer();
}

static enum tg_filter_status on_request_headers(struct tg_filter *f, struct tg_req *req)
{
    struct audit_ctx *ctx = f->ctx;
    struct tg_audit_writer *w = tg_audit_get_writer();
    /* A request is admitted only with a promised slot for its record, so
     * nothing admitted can go unaudited (SPEC §7). */
    if (!wa.waiters && take_slot(w, req->worker)) {
        ctx->reserved = true;
        return TG_FILTER_CONTINUE;
    }
    if (!req->cfg->audit.on_queue_full_block || !req->worker) {
        tg_req_reply_error(req, 503, "unavailable", "the audit log is not keeping up",
                           "audit.unavailable");
        return TG_FILTER_REPLIED;
    }
    ctx->req = req;
    ctx->waiting = true;
    ctx->next_wait = wa.waiters;
    wa.waiters = ctx;
    arm_loop(&req->worker->loop);
    return TG_FILTER_STOP;
}

static void on_complete(struct tg_filter *f, struct tg_req *req)
{
    struct audit_ctx *ctx = f->ctx;
    struct tg_audit_writer *w = tg_audit_get_writer();
    if (ctx->reserved) {
        ctx->reserved = false;
        struct req_event *e = request_event(req);
        if (e)
            batch_add(req->worker, &e->lazy);
        else
            give_slot(w, req->worker);
        return;
    }
    /* Not admitted (503 audit.unavailable) or answered before admission:
     * recorded if a slot is free, else counted as dropped (block mode: it
     * waits in the worker's backlog as a built record). */
    struct req_event *e = request_event(req);
    if (!e)
        return;
    if (!req->cfg->audit.on_queue_full_block || !req->worker) {
        tg_audit_submit_lazy(w, &e->lazy, false);
        return;
    }
    json_t *rec = build_request(&e->lazy);
    free_event(&e->lazy);
    if (rec)
        enqueue_unreserved(req->worker, req->cfg, rec);
}

static void on_destroy(struct tg_filter *f, struct tg_req *req)
{
    struct audit_ctx *ctx = f->ctx;
    if (ctx->reserved) {
        ctx->reserved = false;
        give_slot(tg_audit_get_writer(), req->worker);
    }
    if (!ctx->waiting)
        return;
    for (struct audit_ctx **pp = &wa.waiters; *pp; pp = &(*pp)->next_wait)
        if (*pp == ctx) {
            *pp = ctx->next_wait;
            break;
        }
    ctx->waiting = false;
}

const struct tg_filter_ops tg_filter_audit = {
    .name = "audit",
    .ctx_size = sizeof(struct audit_ctx),
    .attach = attach,
    .on_request_headers = on_request_headers,
    .on_complete = on_complete,
    .on_destroy = on_destroy,
};
