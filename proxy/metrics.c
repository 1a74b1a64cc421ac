#include "proxy/metrics.h"

#include "filters/quota.h"

#include <stdio.h>
#include <string.h>

#include "proxy/buf.h"
#include "proxy/err.h"

/* Seconds: 5 ms .. 300 s, for inference latencies from cached hits to long generations. */
static const double bounds[TG_METRICS_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                  1,     2.5,  5,     10,   30,  120, 300};

static const char *const reasons[TG_METRICS_REASONS] = {
    "auth.missing",    "auth.invalid_key", "auth.expired", "auth.disabled",
    "auth.invalid_token", "auth.ip_blocked", "authz.denied", "other"};

static uint64_t rd(const tg_counter *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static void observe(struct tg_histogram *h, uint64_t us)
{
    double s = (double)us / 1e6;
    for (int i = 0; i < TG_METRICS_BUCKETS; i++)
        if (s <= bounds[i]) {
            tg_counter_add(&h->buckets[i], 1);
            break;
        }
    tg_counter_add(&h->count, 1);
    tg_counter_add(&h->sum_us, us);
}

static int reason_index(const char *reason)
{
    if (!reason)
        return -1;
    if (strncmp(reason, "authz.", 6) == 0)
        return 6;
    if (strncmp(reason, "auth.", 5) != 0)
        return -1;
    for (int i = 0; i < 6; i++)
        if (strcmp(reason, reasons[i]) == 0)
            return i;
    return 7;
}

static uint64_t fnv(const char *s, int status)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)status;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

void tg_metrics_request(struct tg_metrics_shard *m, const char *route, int status,
                        uint64_t duration_us, int64_t first_byte_us, const char *reason)
{
    if (!route)
        route = "";
    uint64_t h = fnv(route, status);
    bool counted = false;
    for (unsigned probe = 0; probe < 16 && !counted; probe++) {
        struct tg_route_counter *rc = &m->routes[(h + probe) % TG_METRICS_ROUTE_SLOTS];
        if (atomic_load_explicit(&rc->used, memory_order_acquire)) {
            if (rc->status == status && strcmp(rc->route, route) == 0) {
                tg_counter_add(&rc->count, 1);
                counted = true;
            }
            continue;
        }
        snprintf(rc->route, sizeof(rc->route), "%s", route);
        rc->status = status;
        atomic_store_explicit(&rc->count, 1, memory_order_relaxed);
        atomic_store_explicit(&rc->used, 1, memory_order_release);
        counted = true;
    }
    if (!counted)
        tg_counter_add(&m->routes_overflow, 1);
    observe(&m->duration, duration_us);
    if (first_byte_us >= 0)
        observe(&m->first_byte, (uint64_t)first_byte_us);
    int ri = reason_index(reason);
    if (ri >= 0)
        tg_counter_add(&m->auth_failures[ri], 1);
    if (reason && strcmp(reason, "upstream.error") == 0)
        tg_counter_add(&m->upstream_errors, 1);
    if (reason && strcmp(reason, "upstream.timeout") == 0)
        tg_counter_add(&m->upstream_timeouts, 1);
    if (reason && strcmp(reason, "client.aborted") == 0)
        tg_counter_add(&m->client_aborts, 1);
}

void tg_metrics_tokens(struct tg_metrics_shard *m, const char *model, uint64_t prompt,
                       uint64_t completion)
{
    struct tg_model_counter *c = &m->models_other;
    if (!model)
        model = "unknown";
    size_t len = strlen(model);
    /* Model names come from requests: a bounded table keeps the label set
     * bounded whatever clients send (the rest is "other"). */
    if (len <= TG_METRICS_MODEL_MAX) {
        for (size_t i = 0; i < TG_METRICS_MODELS; i++) {
            struct tg_model_counter *s = &m->models[i];
            if (!atomic_load_explicit(&s->used, memory_order_relaxed)) {
                memcpy(s->model, model, len + 1);
                atomic_store_explicit(&s->used, 1, memory_order_release);
                c = s;
                break;
            }
            if (strcmp(s->model, model) == 0) {
                c = s;
                break;
            }
        }
    }
    tg_counter_add(&c->prompt, prompt);
    tg_counter_add(&c->completion, completion);
}

/* Label values are route prefixes from the config: escape \, " and newlines anyway. */
static int put_label(struct tg_buf *b, const char *v)
{
    int rv = 0;
    for (; *v && !rv; v++) {
        if (*v == '\\' || *v == '"')
            rv = tg_buf_appendf(b, "\\%c", *v);
        else if (*v == '\n')
            rv = tg_buf_append(b, "\\n", 2);
        else
            rv = tg_buf_append(b, v, 1);
    }
    return rv;
}

static int render_hist(struct tg_buf *b, const char *name, const char *help,
                       struct tg_metrics_shard *const *sh, size_t n, size_t off)
{
    int rv = tg_buf_appendf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0, count = 0, sum = 0;
    for (int i = 0; i < TG_METRICS_BUCKETS && !rv; i++) {
        for (size_t k = 0; k < n; k++) {
            const struct tg_histogram *h = (const void *)((const char *)sh[k] + off);
            cum += rd(&h->buckets[i]);
        }
        rv = tg_buf_appendf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i],
                            (unsigned long long)cum);
    }
    for (size_t k = 0; k < n; k++) {
        const struct tg_histogram *h = (const void *)((const char *)sh[k] + off);
        count += rd(&h->count);
        sum += rd(&h->sum_us);
    }
    if (!rv)
        rv = tg_buf_appendf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                            (unsigned long long)count, name, (double)sum / 1e6, name,
                            (unsigned long long)count);
    return rv;
}

static uint64_t sum_field(struct tg_metrics_shard *const *sh, size_t n, size_t off)
{
    uint64_t v = 0;
    for (size_t k = 0; k < n; k++)
        v += rd((const tg_counter *)(const void *)((const char *)sh[k] + off));
    return v;
}

/* tollgate_tokens_total{model,kind}: equal model names summed across shards. */
static int render_tokens(struct tg_buf *b, struct tg_metrics_shard *const *sh, size_t n)
{
    int rv = tg_buf_appendf(b, "# HELP tollgate_tokens_total Tokens charged, by model and kind "
                               "(prompt, completion).\n# TYPE tollgate_tokens_total counter\n");
    for (size_t k = 0; k < n && !rv; k++) {
        for (size_t i = 0; i < TG_METRICS_MODELS && !rv; i++) {
            const struct tg_model_counter *mc = &sh[k]->models[i];
            if (!atomic_load_explicit(&mc->used, memory_order_acquire))
                continue;
            bool seen = false;
            for (size_t j = 0; j < k && !seen; j++)
                for (size_t q = 0; q < TG_METRICS_MODELS && !seen; q++) {
                    const struct tg_model_counter *o = &sh[j]->models[q];
                    seen = atomic_load_explicit(&o->used, memory_order_acquire) &&
                           strcmp(o->model, mc->model) == 0;
                }
            if (seen)
                continue;
            uint64_t pr = 0, co = 0;
            for (size_t j = k; j < n; j++)
                for (size_t q = 0; q < TG_METRICS_MODELS; q++) {
                    const struct tg_model_counter *o = &sh[j]->models[q];
                    if (atomic_load_explicit(&o->used, memory_order_acquire) &&
                        strcmp(o->model, mc->model) == 0) {
                        pr += rd(&o->prompt);
                        co += rd(&o->completion);
                    }
                }
            for (int kind = 0; kind < 2 && !rv; kind++) {
                rv = tg_buf_appendf(b, "tollgate_tokens_total{model=\"");
                rv = rv ? rv : put_label(b, mc->model);
                rv = rv ? rv
                        : tg_buf_appendf(b, "\",kind=\"%s\"} %llu\n",
                                         kind ? "completion" : "prompt",
                                         (unsigned long long)(kind ? co : pr));
            }
        }
    }
    uint64_t pr = sum_field(sh, n, offsetof(struct tg_metrics_shard, models_other.prompt));
    uint64_t co = sum_field(sh, n, offsetof(struct tg_metrics_shard, models_other.completion));
    if (!rv && (pr || co))
        rv = tg_buf_appendf(b,
                            "tollgate_tokens_total{model=\"other\",kind=\"prompt\"} %llu\n"
                            "tollgate_tokens_total{model=\"other\",kind=\"completion\"} %llu\n",
                            (unsigned long long)pr, (unsigned long long)co);
    return rv;
}

#define COUNTER(b, name, help, value)                                                              \
    tg_buf_appendf(b, "# HELP " name " " help "\n# TYPE " name " counter\n" name " %llu\n",        \
                   (unsigned long long)(value))
#define GAUGE(b, name, help, value)                                                                \
    tg_buf_appendf(b, "# HELP " name " " help "\n# TYPE " name " gauge\n" name " %lld\n",          \
                   (long long)(value))

int tg_metrics_render(struct tg_metrics_shard *const *sh, size_t n,
                      const struct tg_metrics_process *p, struct tg_buf *b)
{
    int rv = tg_buf_appendf(b, "# HELP tollgate_requests_total Requests answered, by route "
                               "prefix and status.\n# TYPE tollgate_requests_total counter\n");
    /* Sum equal (route, status) pairs across shards: shards are small, n*slots is fine. */
    for (size_t k = 0; k < n && !rv; k++) {
        for (size_t i = 0; i < TG_METRICS_ROUTE_SLOTS && !rv; i++) {
            const struct tg_route_counter *rc = &sh[k]->routes[i];
            if (!atomic_load_explicit(&rc->used, memory_order_acquire))
                continue;
            bool seen = false; /* already printed from an earlier shard? */
            for (size_t j = 0; j < k && !seen; j++)
                for (size_t q = 0; q < TG_METRICS_ROUTE_SLOTS && !seen; q++) {
                    const struct tg_route_counter *o = &sh[j]->routes[q];
                    seen = atomic_load_explicit(&o->used, memory_order_acquire) &&
                           o->status == rc->status && strcmp(o->route, rc->route) == 0;
                }
            if (seen)
                continue;
            uint64_t total = 0;
            for (size_t j = k; j < n; j++)
                for (size_t q = 0; q < TG_METRICS_ROUTE_SLOTS; q++) {
                    const struct tg_route_counter *o = &sh[j]->routes[q];
                    if (atomic_load_explicit(&o->used, memory_order_acquire) &&
                        o->status == rc->status && strcmp(o->route, rc->route) == 0)
                        total += rd(&o->count);
                }
            rv = tg_buf_append(b, "tollgate_requests_total{route=\"", 31);
            rv = rv ? rv : put_label(b, rc->route);
            rv = rv ? rv : tg_buf_appendf(b, "\",status=\"%d\"} %llu\n", rc->status,
                                          (unsigned long long)total);
        }
    }
    uint64_t overflow = sum_field(sh, n, offsetof(struct tg_metrics_shard, routes_overflow));
    if (!rv && overflow)
        rv = tg_buf_appendf(b, "tollgate_requests_total{route=\"other\",status=\"other\"} %llu\n",
                            (unsigned long long)overflow);
    rv = rv ? rv : tg_buf_appendf(b, "# HELP tollgate_auth_failures_total Refused "
                                     "authentications and authorizations, by reason.\n"
                                     "# TYPE tollgate_auth_failures_total counter\n");
    for (int i = 0; i < TG_METRICS_REASONS && !rv; i++)
        rv = tg_buf_appendf(
            b, "tollgate_auth_failures_total{reason=\"%s\"} %llu\n", reasons[i],
            (unsigned long long)sum_field(sh, n,
                                          offsetof(struct tg_metrics_shard, auth_failures) +
                                              (size_t)i * sizeof(tg_counter)));
    rv = rv ? rv
            : render_hist(b, "tollgate_request_duration_seconds",
                          "Time from the request head to the end of the exchange.", sh, n,
                          offsetof(struct tg_metrics_shard, duration));
    rv = rv ? rv
            : render_hist(b, "tollgate_upstream_first_byte_seconds",
                          "Time from the request head to the upstream's response head.", sh, n,
                          offsetof(struct tg_metrics_shard, first_byte));
    rv = rv ? rv
            : COUNTER(b, "tollgate_upstream_errors_total",
                      "Upstream failures (refused, reset, malformed).",
                      sum_field(sh, n, offsetof(struct tg_metrics_shard, upstream_errors)));
    rv = rv ? rv
            : COUNTER(b, "tollgate_upstream_timeouts_total", "Upstream connect/first-byte timeouts.",
                      sum_field(sh, n, offsetof(struct tg_metrics_shard, upstream_timeouts)));
    rv = rv ? rv
            : COUNTER(b, "tollgate_client_aborts_total", "Clients gone before the end.",
                      sum_field(sh, n, offsetof(struct tg_metrics_shard, client_aborts)));
    rv = rv ? rv
            : COUNTER(b, "tollgate_connections_accepted_total", "Client connections accepted.",
                      sum_field(sh, n, offsetof(struct tg_metrics_shard, connections_accepted)));
    int64_t open = 0;
    for (size_t k = 0; k < n; k++)
        open += atomic_load_explicit(&sh[k]->connections_open, memory_order_relaxed);
    rv = rv ? rv : GAUGE(b, "tollgate_connections_open", "Client connections open.", open);
    rv = rv ? rv
            : tg_buf_appendf(b, "# HELP tollgate_quota_denials_total Requests refused by a "
                                "quota, by limit.\n# TYPE tollgate_quota_denials_total counter\n");
    for (unsigned i = 0; i < TG_METRICS_QUOTA_SLOTS && !rv; i++)
        rv = tg_buf_appendf(
            b, "tollgate_quota_denials_total{limit=\"%s\"} %llu\n", tg_quota_limit_label(i),
            (unsigned long long)sum_field(sh, n,
                                          offsetof(struct tg_metrics_shard, quota_denials) +
                                              (size_t)i * sizeof(tg_counter)));
    rv = rv ? rv
            : COUNTER(b, "tollgate_quota_backend_errors_total",
                      "Admissions the quota backend (Redis) could not answer.",
                      sum_field(sh, n, offsetof(struct tg_metrics_shard, quota_backend_errors)));
    rv = rv ? rv : render_tokens(b, sh, n);
    rv = rv ? rv
            : GAUGE(b, "tollgate_config_version", "Version of the loaded configuration.",
                    (long long)p->config_version);
    rv = rv ? rv
            : tg_buf_appendf(b, "# HELP tollgate_config_info The loaded configuration's hash.\n"
                                "# TYPE tollgate_config_info gauge\n"
                                "tollgate_config_info{sha256=\"%s\"} 1\n",
                             p->config_sha256);
    rv = rv ? rv
            : COUNTER(b, "tollgate_config_reload_failures_total", "Rejected reloads.",
                      p->reload_failures);
    rv = rv ? rv
            : COUNTER(b, "tollgate_log_dropped_total", "Error-log lines dropped (queue full).",
                      p->log_dropped);
    if (p->audit_enabled) {
        rv = rv ? rv
                : GAUGE(b, "tollgate_audit_last_seq", "seq of the last audit record written.",
                        (long long)p->audit_last_seq);
        rv = rv ? rv
                : GAUGE(b, "tollgate_audit_queue_depth", "Audit records waiting to be written.",
                        (long long)p->audit_queue_depth);
        rv = rv ? rv
                : COUNTER(b, "tollgate_audit_write_errors_total", "Failed audit log writes.",
                          p->audit_write_errors);
        rv = rv ? rv
                : COUNTER(b, "tollgate_audit_dropped_total",
                          "Audit records refused because the queue was full.", p->audit_dropped);
    }
    return rv;
}
