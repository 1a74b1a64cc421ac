/*
 * The main thread owns no client connection: it loads configuration, starts
 * the worker threads and handles signals.  A reload is loaded and validated
 * here, off every worker loop, and published to each worker through its
 * uv_async; each worker swaps its snapshot reference, and requests in flight
 * keep the snapshot they pinned.
 */
#include "proxy/server.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "config/config.h"
#include "proxy/err.h"
#include "proxy/log.h"
#include "proxy/mem.h"
#include "filters/audit.h"
#include "filters/quota.h"
#include "filters/audit_writer.h"
#include "proxy/admin.h"
#include "proxy/buf.h"
#include "proxy/metrics.h"
#include "proxy/tls.h"
#include "proxy/worker.h"

struct tg_server {
    uv_loop_t loop;                 /* main loop: signals only */
    uv_signal_t sig_term, sig_int, sig_hup, sig_usr1; /* signal watchers */
    char *path;                     /* config file */
    struct tg_config *cfg;          /* current snapshot */
    uint64_t version;               /* last version number handed out */
    struct tg_worker *workers;      /* array */
    unsigned nworkers;              /* count */
    uv_mutex_t mu;                  /* guards pending[] */
    struct tg_config **pending;     /* per worker: next snapshot, or NULL */
    bool stopping;                  /* a stop signal arrived */
    uint64_t reload_failures;       /* rejected reloads since start */
    struct tg_audit_writer *audit;  /* the audit log writer, or NULL */
    struct tg_admin *admin;         /* admin listener, or NULL */
    uv_timer_t drain_poll;          /* watches the workers finish after a stop signal */
    uv_timer_t audit_retry;         /* hands waiting reload records to the audit writer */
};

struct tg_config *tg_server_take_config(struct tg_server *s, unsigned i)
{
    uv_mutex_lock(&s->mu);
    struct tg_config *c = s->pending[i];
    s->pending[i] = NULL;
    uv_mutex_unlock(&s->mu);
    return c;
}

/*
 * Workers bind with SO_REUSEPORT, which would let a second tollgate (or a
 * stale one) silently share a port.  A plain bind first, without the option,
 * fails while any other socket holds the address.
 */
static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/* 0 when l's address can be bound (nobody holds it), else -errno. */
static int probe_one(const struct tg_cfg_listener *l)
{
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    int rv = bind(fd, (const struct sockaddr *)&l->addr, l->addrlen) == 0 ? 0 : -errno;
    close(fd);
    return rv;
}

static int probe_listeners(const struct tg_config *c)
{
    for (size_t i = 0; i < c->nlisteners; i++) {
        const struct tg_cfg_listener *l = &c->listeners[i];
        int rv = probe_one(l);
        if (rv < 0) {
            fprintf(stderr, "tollgate: listener %s: cannot bind %s:%u: %s\n", l->name,
                    l->address, l->port, strerror(-rv));
            return rv;
        }
    }
    return 0;
}

/* ---- admin callbacks (main loop) ---- */

static int admin_metrics(void *ud, struct tg_buf *out)
{
    struct tg_server *s = ud;
    struct tg_metrics_shard *shards[1024];
    size_t n = 0;
    for (unsigned i = 0; i < s->nworkers && n < 1024; i++)
        if (s->workers[i].metrics)
            shards[n++] = s->workers[i].metrics;
    struct tg_metrics_process p = {
        .config_version = s->cfg->version,
        .config_sha256 = s->cfg->sha256_hex,
        .reload_failures = s->reload_failures,
        .log_dropped = tg_log_dropped(),
    };
    if (s->audit) {
        struct tg_audit_stats st;
        tg_audit_stats(s->audit, &st);
        p.audit_enabled = 1;
        p.audit_last_seq = st.last_seq;
        p.audit_queue_depth = st.queue_depth;
        p.audit_write_errors = st.write_errors;
        p.audit_dropped = st.dropped;
    }
    return tg_metrics_render(shards, n, &p, out);
}

static int admin_ready(void *ud, struct tg_buf *out)
{
    struct tg_server *s = ud;
    const char *why = NULL;
    if (s->stopping)
        why = "shutting down";
    if (!why && s->audit && !s->cfg->audit.on_queue_full_block) {
        struct tg_audit_stats st;
        tg_audit_stats(s->audit, &st);
        if (!st.healthy)
            why = "the audit log cannot be written";
    }
    if (!why && !tg_quota_ready(s->cfg))
        why = "the quota backend is unreachable and on_backend_error is deny";
    const char *qb = tg_quota_backend_state(s->cfg);
    if (why) {
        tg_buf_appendf(out,
                       "{\"status\":\"not_ready\",\"reason\":\"%s\",\"config\":{\"version\":%llu,"
                       "\"sha256\":\"%s\"},\"quota_backend\":\"%s\"}\n",
                       why, (unsigned long long)s->cfg->version, s->cfg->sha256_hex, qb);
        return 503;
    }
    tg_buf_appendf(out,
                   "{\"status\":\"ready\",\"config\":{\"version\":%llu,\"sha256\":\"%s\"},"
                   "\"quota_backend\":\"%s\"}\n",
                   (unsigned long long)s->cfg->version, s->cfg->sha256_hex, qb);
    return 200;
}

static const char *admin_token(void *ud)
{
    struct tg_server *s = ud;
    return s->cfg->admin.token;
}

static const struct tg_admin_ops admin_ops = {admin_metrics, admin_ready, admin_token};


static void reload(struct tg_server *s)
{
    char err[TG_CONFIG_ERR_MAX];
    struct tg_config *next = tg_config_load(s->path, err);
    if (!next) {
        tg_log_error("server", "reload rejected: %s", err);
        s->reload_failures++;
        tg_audit_reload_record(false, NULL, err);
        return;
    }
    char terr[TG_CONFIG_ERR_MAX + 512];
    if (tg_tls_prepare_config(next, terr, sizeof(terr)) != 0) {
        tg_log_error("server", "reload rejected: %s", terr);
        s->reload_failures++;
        tg_audit_reload_record(false, NULL, terr);
        tg_config_unref(next);
        return;
    }
    if (next->audit.enabled != s->cfg->audit.enabled ||
        (next->audit.enabled &&
         (strcmp(next->audit.file, s->cfg->audit.file) != 0 ||
          next->audit.hmac_key_len != s->cfg->audit.hmac_key_len ||
          CRYPTO_memcmp(next->audit.hmac_key, s->cfg->audit.hmac_key,
                        next->audit.hmac_key_len) != 0)))
        tg_log_warn("server", "reload: audit file and key changes take effect only after a "
                              "restart");
    /* A new address must be free (another process may hold it). */
    for (size_t i = 0; i < next->nlisteners; i++) {
        bool known = false;
        for (size_t k = 0; k < s->cfg->nlisteners && !known; k++)
            known = same_addr(&next->listeners[i].addr, &s->cfg->listeners[k].addr);
        if (!known && probe_one(&next->listeners[i]) < 0) {
            tg_log_error("server", "reload rejected: %s: listeners[%zu]: %s:%u is in use",
                         next->path, i, next->listeners[i].address, next->listeners[i].port);
            s->reload_failures++;
            tg_audit_reload_record(false, NULL, "a new listener address is in use");
            tg_config_unref(next);
            return;
        }
    }
    if (s->cfg->workers != next->workers)
        tg_log_warn("server", "reload: \"workers\" changes take effect only after a restart");
    if ((s->cfg->error_log_file == NULL) != (next->error_log_file == NULL) ||
        (s->cfg->error_log_file && strcmp(s->cfg->error_log_file, next->error_log_file) != 0))
        tg_log_warn("server", "reload: error_log.file changes take effect only after a restart");
    next->version = ++s->version;
    uv_mutex_lock(&s->mu);
    for (unsigned i = 0; i < s->nworkers; i++) {
        tg_config_unref(s->pending[i]);
        s->pending[i] = tg_config_ref(next);
    }
    uv_mutex_unlock(&s->mu);
    for (unsigned i = 0; i < s->nworkers; i++)
        uv_async_send(&s->workers[i].wakeup);
    tg_config_unref(s->cfg);
    s->cfg = next;
    tg_log_set_level((enum tg_log_level)next->error_log_level);
    tg_log_info("server", "configuration reloaded: version %llu sha256 %s",
                (unsigned long long)next->version, next->sha256_hex);
    tg_audit_reload_record(true, next, NULL);
}

static void on_audit_retry(uv_timer_t *t)
{
    (void)t;
    tg_audit_main_retry();
}

static void on_drain_poll(uv_timer_t *t)
{
    struct tg_server *s = t->data;
    for (unsigned i = 0; i < s->nworkers; i++)
        if (!atomic_load(&s->workers[i].finished))
            return;
    uv_timer_stop(t);
    uv_stop(&s->loop);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct tg_server *s = h->data;
    switch (signum) {
    case SIGHUP:
        reload(s);
        break;
    case SIGUSR1:
        tg_log_reopen();
        if (tg_audit_get_writer())
            tg_audit_reopen(tg_audit_get_writer());
        break;
    case SIGTERM:
    case SIGINT:
        if (s->stopping)
            break;
        s->stopping = true;
        tg_log_info("server", "stopping: draining in-flight requests (grace %llu ms)",
                    (unsigned long long)s->cfg->limits.shutdown_grace_ms);
        for (unsigned i = 0; i < s->nworkers; i++)
            tg_worker_stop(&s->workers[i]);
        /* The main loop (admin: /readyz says not_ready) runs until every worker is done. */
        uv_timer_start(&s->drain_poll, on_drain_poll, 50, 50);
        break;
    default:
        break;
    }
}

int tg_server_run(const char *path)
{
    struct tg_server srv, *s = &srv;
    memset(s, 0, sizeof(*s));
    char err[TG_CONFIG_ERR_MAX];
    int code = 1;
    s->cfg = tg_config_load(path, err);
    if (!s->cfg) {
        fprintf(stderr, "tollgate: %s\n", err);
        return 1;
    }
    s->cfg->version = s->version = 1;
    if (probe_listeners(s->cfg) < 0)
        goto out_cfg;
    if (tg_tls_prepare_config(s->cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "tollgate: %s\n", err);
        goto out_cfg;
    }
    s->path = tg_mem_strdup(s->cfg->path);
    signal(SIGPIPE, SIG_IGN);
    if (tg_log_start(s->cfg->error_log_file, (enum tg_log_level)s->cfg->error_log_level) < 0) {
        fprintf(stderr, "tollgate: cannot open error log %s\n", s->cfg->error_log_file);
        goto out_cfg;
    }
    if (s->cfg->audit.enabled) {
        struct tg_audit_settings as = {
            .path = s->cfg->audit.file,
            .key = s->cfg->audit.hmac_key,
            .keylen = s->cfg->audit.hmac_key_len,
            .fsync = (enum tg_audit_fsync)s->cfg->audit.fsync,
            .fsync_interval_ms = s->cfg->audit.fsync_interval_ms,
            .queue_records = s->cfg->audit.queue_records,
        };
        char aerr[512];
        s->audit = tg_audit_writer_start(&as, aerr, sizeof(aerr));
        if (!s->audit) {
            fprintf(stderr, "tollgate: audit log: %s\n", aerr);
            tg_log_stop();
            goto out_cfg;
        }
        tg_audit_set_writer(s->audit);
        tg_audit_process_record("startup", s->cfg);
    }
    bool quota_ok = tg_quota_global_init() == 0;
    if (!quota_ok)
        fprintf(stderr, "tollgate: cannot initialise the quota stores\n");
    uv_loop_init(&s->loop);
    uv_mutex_init(&s->mu);
    s->nworkers = s->cfg->workers;
    s->workers = tg_mem_calloc(s->nworkers, sizeof(*s->workers));
    s->pending = tg_mem_calloc(s->nworkers, sizeof(*s->pending));
    if (!s->workers || !s->pending || !s->path || !quota_ok)
        goto out_loop;
    unsigned started = 0, inited = 0;
    for (; inited < s->nworkers; inited++)
        if (tg_worker_init(&s->workers[inited], s, inited, s->cfg) < 0) {
            inited++;
            goto out_workers;
        }
    for (; started < s->nworkers; started++)
        if (tg_worker_start(&s->workers[started]) < 0)
            goto out_workers;

    uv_timer_init(&s->loop, &s->drain_poll);
    s->drain_poll.data = s;
    uv_timer_init(&s->loop, &s->audit_retry);
    uv_unref((uv_handle_t *)&s->audit_retry);
    if (s->audit)
        uv_timer_start(&s->audit_retry, on_audit_retry, 100, 100);
    uv_signal_t *sigs[] = {&s->sig_term, &s->sig_int, &s->sig_hup, &s->sig_usr1};
    int nums[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1};
    for (int i = 0; i < 4; i++) {
        uv_signal_init(&s->loop, sigs[i]);
        sigs[i]->data = s;
        uv_signal_start(sigs[i], on_signal, nums[i]);
    }
    if (s->cfg->admin.enabled) {
        char aerr[256];
        s->admin = tg_admin_start(&s->loop, &s->cfg->admin, &admin_ops, s, aerr, sizeof(aerr));
        if (!s->admin) {
            tg_log_error("server", "%s", aerr);
            fprintf(stderr, "tollgate: %s\n", aerr);
            code = 1;
            for (int i = 0; i < 4; i++)
                uv_close((uv_handle_t *)sigs[i], NULL);
            uv_close((uv_handle_t *)&s->drain_poll, NULL);
            uv_close((uv_handle_t *)&s->audit_retry, NULL);
            uv_run(&s->loop, UV_RUN_DEFAULT);
            goto out_workers;
        }
        tg_log_info("server", "admin listening on %s:%u", s->cfg->admin.address,
                    s->cfg->admin.port);
    }
    for (size_t i = 0; i < s->cfg->nlisteners; i++)
        tg_log_info("server", "listening on %s:%u (%s%s) as \"%s\"", s->cfg->listeners[i].address,
                    s->cfg->listeners[i].port, s->cfg->listeners[i].tls ? "tls" : "plaintext",
                    "", s->cfg->listeners[i].name);
    tg_log_info("server", "tollgate %s started: %u worker(s), config version 1 sha256 %s",
                TG_VERSION, s->nworkers, s->cfg->sha256_hex);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    /* Every worker is done: the admin listener and the signal watchers go. */
    tg_admin_stop(s->admin);
    s->admin = NULL;
    for (int i = 0; i < 4; i++)
        uv_close((uv_handle_t *)sigs[i], NULL);
    uv_close((uv_handle_t *)&s->drain_poll, NULL);
    uv_close((uv_handle_t *)&s->audit_retry, NULL);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    code = 0;

out_workers:
    if (code != 0)
        for (unsigned i = 0; i < started; i++)
            tg_worker_stop(&s->workers[i]);
    for (unsigned i = 0; i < started; i++)
        tg_worker_join(&s->workers[i]);
    for (unsigned i = 0; i < inited; i++)
        tg_worker_dispose(&s->workers[i]);
    if (s->audit) {
        /* Every worker has finished: the shutdown record is the last line. */
        tg_audit_main_flush();
        tg_audit_process_record("shutdown", s->cfg);
        tg_audit_set_writer(NULL);
        tg_audit_writer_stop(s->audit);
        s->audit = NULL;
    }
    if (code == 0)
        tg_log_info("server", "stopped");
out_loop:
    for (unsigned i = 0; s->pending && i < s->nworkers; i++)
        tg_config_unref(s->pending[i]);
    tg_mem_free(s->pending);
    tg_mem_free(s->workers);
    tg_quota_global_free();
    uv_mutex_destroy(&s->mu);
    uv_loop_close(&s->loop);
    tg_log_stop();
out_cfg:
    tg_config_unref(s->cfg);
    tg_mem_free(s->path);
    return code;
}
