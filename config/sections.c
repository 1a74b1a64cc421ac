/*
 * The section descriptor tables of SPEC §3 and their custom parsers.
 *
 * Arrays are allocated at their final size before their elements are parsed
 * and their count set at once: the elements start zeroed, so freeing a
 * half-parsed snapshot is safe (tg_config_free skips NULL fields).  Route
 * upstream pointers point into cfg->upstreams, which is never reallocated.
 */
#include "config/schema.h"

#include "proxy/err.h"
#include "proxy/log.h"
#include "proxy/mem.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>

#define NAME_MAX_BYTES 64     /* listener and upstream names (logs, metric labels) */
#define PREFIX_MAX_BYTES 1024 /* routes[].path_prefix */
#define MAX_WORKERS 1024
#define DAY_MS 86400000ull
#define HOUR_MS 3600000ull

/* ---- shared helpers ---- */

/*
 * Parse the numeric address text (the value of the key "address" under the
 * current path) with port into addr/addrlen.  Host names are refused: a
 * listener binds exactly what was written.
 */
int tg_config_numeric_addr(const char *text, uint16_t port, struct sockaddr_storage *addr,
                           socklen_t *addrlen)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)addr;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)addr;
    memset(addr, 0, sizeof(*addr));
    if (text && inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        *addrlen = sizeof(*sin);
        return 0;
    }
    if (text && inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        *addrlen = sizeof(*sin6);
        return 0;
    }
    return -1;
}

static int set_bind_addr(struct tg_cfg_ctx *ctx, const char *text, uint16_t port,
                         struct sockaddr_storage *addr, socklen_t *addrlen)
{
    if (tg_config_numeric_addr(text, port, addr, addrlen) == 0)
        return 0;
    size_t saved = tg_schema_push_key(ctx, "address");
    int rv = tg_schema_err(ctx, "expected a numeric IPv4 or IPv6 address");
    tg_schema_pop(ctx, saved);
    return rv;
}

/* A non-empty JSON array, or an error "expected a non-empty list of <what>". */
static int check_list(struct tg_cfg_ctx *ctx, json_t *v, const char *what)
{
    if (!json_is_array(v) || json_array_size(v) == 0)
        return tg_schema_err(ctx, "expected a non-empty list of %s", what);
    return 0;
}

/* ---- listeners[] ---- */

static const struct tg_field_enum tls_versions[] = {
    {"TLSv1.2", TLS1_2_VERSION},
    {"TLSv1.3", TLS1_3_VERSION},
    {NULL, 0},
};

static const struct tg_field listener_tls_fields[] = {
    TG_F_FILE(struct tg_cfg_tls, certificate_file, "certificate_file", true),
    TG_F_FILE(struct tg_cfg_tls, private_key_file, "private_key_file", true),
    TG_F_FILE(struct tg_cfg_tls, client_ca_file, "client_ca_file", false),
    TG_F_BOOL(struct tg_cfg_tls, require_client_cert, "require_client_cert", false),
    TG_F_STRING(struct tg_cfg_tls, client_cert_policy, "client_cert_policy", NAME_MAX_BYTES, NULL,
                false),
    TG_F_ENUM(struct tg_cfg_tls, min_version, "min_version", tls_versions, TLS1_2_VERSION),
};

static int parse_listener_tls(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_listener *l = obj;
    int rv;
    if (!v)
        return 0;
    if (!json_is_object(v))
        return tg_schema_err(ctx, "expected an object or null");
    l->tls = tg_mem_calloc(1, sizeof(*l->tls));
    if (!l->tls)
        return tg_schema_nomem(ctx);
    rv = tg_schema_apply(ctx, v, listener_tls_fields,
                         sizeof(listener_tls_fields) / sizeof(listener_tls_fields[0]), l->tls);
    if (rv)
        return rv;
    const char *bad = NULL;
    if (l->tls->require_client_cert && !l->tls->client_ca_file)
        bad = "require_client_cert";
    else if (l->tls->client_cert_policy && !l->tls->client_ca_file)
        bad = "client_cert_policy";
    if (bad) {
        size_t saved = tg_schema_push_key(ctx, bad);
        rv = tg_schema_err(ctx, "requires client_ca_file");
        tg_schema_pop(ctx, saved);
    }
    return rv;
}

static const struct {
    const char *name;
    unsigned bit;
} proto_names[] = {
    {"h2", TG_PROTO_H2},
    {"h2c", TG_PROTO_H2C},
    {"http/1.1", TG_PROTO_HTTP11},
};

static int parse_protocol(struct tg_cfg_ctx *ctx, json_t *e, size_t i, void *arg)
{
    unsigned *bits = arg;
    const char *s = json_is_string(e) ? json_string_value(e) : "";
    for (size_t k = 0; k < sizeof(proto_names) / sizeof(proto_names[0]); k++) {
        if (strcmp(s, proto_names[k].name) != 0)
            continue;
        if (*bits & proto_names[k].bit)
            return tg_schema_err(ctx, "duplicate protocol \"%s\"", s);
        *bits |= proto_names[k].bit;
        return 0;
    }
    return tg_schema_err(ctx, "expected one of \"h2\", \"h2c\", \"http/1.1\"");
}

static int parse_protocols(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_listener *l = obj;
    int rv;
    if (!v)
        return 0; /* default chosen once tls is known */
    if ((rv = check_list(ctx, v, "\"h2\", \"h2c\", \"http/1.1\"")) != 0)
        return rv;
    return tg_schema_each(ctx, v, parse_protocol, &l->protocols);
}

static const struct tg_field listener_fields[] = {
    TG_F_STRING(struct tg_cfg_listener, name, "name", NAME_MAX_BYTES, NULL, true),
    TG_F_STRING(struct tg_cfg_listener, address, "address", INET6_ADDRSTRLEN, NULL, true),
    TG_F_UINT(struct tg_cfg_listener, port, "port", 1, 65535, 0, true),
    TG_F_CUSTOM("tls", parse_listener_tls, false),
    TG_F_CUSTOM("protocols", parse_protocols, false),
};

static int parse_listener(struct tg_cfg_ctx *ctx, json_t *e, size_t i, void *arg)
{
    struct tg_config *c = arg;
    struct tg_cfg_listener *l = &c->listeners[i];
    int rv = tg_schema_apply(ctx, e, listener_fields,
                             sizeof(listener_fields) / sizeof(listener_fields[0]), l);
    if (rv)
        return rv;
    if ((rv = set_bind_addr(ctx, l->address, l->port, &l->addr, &l->addrlen)) != 0)
        return rv;

    if (l->protocols == 0) {
        l->protocols = TG_PROTO_HTTP11 | (l->tls ? TG_PROTO_H2 : TG_PROTO_H2C);
        return 0;
    }
    size_t saved = tg_schema_push_key(ctx, "protocols");
    if ((l->protocols & TG_PROTO_H2) && !l->tls)
        rv = tg_schema_err(ctx, "\"h2\" requires tls (use \"h2c\" on a plaintext listener)");
    else if ((l->protocols & TG_PROTO_H2C) && l->tls)
        rv = tg_schema_err(ctx, "\"h2c\" is for plaintext listeners (use \"h2\" with tls)");
    tg_schema_pop(ctx, saved);
    return rv;
}

static int parse_listeners(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_config *c = obj;
    int rv;
    if ((rv = check_list(ctx, v, "listeners")) != 0)
        return rv;
    c->listeners = tg_mem_calloc(json_array_size(v), sizeof(*c->listeners));
    if (!c->listeners)
        return tg_schema_nomem(ctx);
    c->nlisteners = json_array_size(v);
    return tg_schema_each(ctx, v, parse_listener, c);
}

/* ---- admin ---- */

static const struct tg_field admin_fields[] = {
    TG_F_STRING(struct tg_cfg_admin, address, "address", INET6_ADDRSTRLEN, "127.0.0.1", false),
    TG_F_UINT(struct tg_cfg_admin, port, "port", 1, 65535, 9901, false),
    TG_F_ENV(struct tg_cfg_admin, token, "token_env"),
};

static int parse_admin(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_admin *a = &((struct tg_config *)obj)->admin;
    int rv;
    a->enabled = false;
    if (!v)
        return 0;
    if (!json_is_object(v))
        return tg_schema_err(ctx, "expected an object or null");
    rv = tg_schema_apply(ctx, v, admin_fields, sizeof(admin_fields) / sizeof(admin_fields[0]), a);
    if (rv)
        return rv;
    if ((rv = set_bind_addr(ctx, a->address, a->port, &a->addr, &a->addrlen)) != 0)
        return rv;
    a->enabled = true;
    return 0;
}

/* ---- limits ---- */

static const struct tg_field limits_fields[] = {
    TG_F_UINT(struct tg_cfg_limits, max_connections, "max_connections", 1, 10000000, 10000,
              false),
    TG_F_UINT(struct tg_cfg_limits, max_header_bytes, "max_header_bytes", 1024, 1048576, 65536,
              false),
    TG_F_UINT(struct tg_cfg_limits, max_body_bytes, "max_body_bytes", 1, 1ull << 40, 4194304,
              false),
    TG_F_UINT(struct tg_cfg_limits, max_concurrent_streams, "max_concurrent_streams", 1, 1000, 100,
              false),
    TG_F_UINT(struct tg_cfg_limits, header_timeout_ms, "header_timeout_ms", 1, DAY_MS, 10000,
              false),
    TG_F_UINT(struct tg_cfg_limits, body_timeout_ms, "body_timeout_ms", 1, DAY_MS, 30000, false),
    TG_F_UINT(struct tg_cfg_limits, idle_timeout_ms, "idle_timeout_ms", 1, DAY_MS, 120000, false),
    TG_F_UINT(struct tg_cfg_limits, shutdown_grace_ms, "shutdown_grace_ms", 1, DAY_MS, 30000,
              false),
};

static int parse_limits(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_config *c = obj;
    return tg_schema_apply(ctx, v, limits_fields, sizeof(limits_fields) / sizeof(limits_fields[0]),
                           &c->limits);
}

/* ---- upstreams[] ---- */

#define SERVER_FORMAT "expected \"host:port\" or \"[IPv6]:port\""

/*
 * One "host:port" or "[v6]:port", resolved now (we are off the loop).  The
 * first address is kept; the pool connects to it.
 */
static int parse_server(struct tg_cfg_ctx *ctx, json_t *e, size_t i, void *arg)
{
    struct tg_cfg_upstream *u = arg;
    struct tg_cfg_server *srv = &u->servers[i];
    struct addrinfo hints, *res = NULL;
    const char *s, *host, *port;
    size_t hlen;
    char q[300];

    if (!json_is_string(e))
        return tg_schema_err(ctx, SERVER_FORMAT);
    s = json_string_value(e);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return tg_schema_err(ctx, SERVER_FORMAT);
        host = s + 1;
        hlen = (size_t)(close - host);
        port = close + 2;
        hints.ai_family = AF_INET6;
        hints.ai_flags |= AI_NUMERICHOST;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon)
            return tg_schema_err(ctx, SERVER_FORMAT);
        host = s;
        hlen = (size_t)(colon - s);
        port = colon + 1;
        if (memchr(host, ':', hlen))
            return tg_schema_err(ctx, SERVER_FORMAT " (IPv6 addresses go in brackets)");
    }
    if (hlen == 0)
        return tg_schema_err(ctx, SERVER_FORMAT);
    for (size_t k = 0; k < hlen; k++) {
        unsigned char ch = (unsigned char)host[k];
        if (ch <= 0x20 || ch >= 0x7f || ch == '/' || ch == '@' || ch == '[' || ch == ']')
            return tg_schema_err(ctx, SERVER_FORMAT);
    }
    unsigned long pn = 0;
    size_t plen = strlen(port);
    if (plen == 0 || plen > 5 || strspn(port, "0123456789") != plen ||
        (pn = strtoul(port, NULL, 10)) < 1 || pn > 65535)
        return tg_schema_err(ctx, SERVER_FORMAT " with a port 1..65535");

    srv->text = tg_mem_strdup(s);
    srv->host = tg_mem_strndup(host, hlen);
    if (!srv->text || !srv->host)
        return tg_schema_nomem(ctx);
    srv->port = (uint16_t)pn;

    int gai = getaddrinfo(srv->host, port, &hints, &res);
    if (gai != 0) {
        int e2 = errno;
        return tg_schema_err(ctx, "cannot resolve %s: %s", tg_schema_quote(srv->host, q, sizeof(q)),
                             gai == EAI_SYSTEM ? strerror(e2) : gai_strerror(gai));
    }
    if (res->ai_addrlen > sizeof(srv->addr)) {
        freeaddrinfo(res);
        return tg_schema_err(ctx, "cannot resolve %s: address too long",
                             tg_schema_quote(srv->host, q, sizeof(q)));
    }
    memcpy(&srv->addr, res->ai_addr, res->ai_addrlen);
    srv->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int parse_servers(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_upstream *u = obj;
    int rv;
    if ((rv = check_list(ctx, v, "\"host:port\" strings")) != 0)
        return rv;
    u->servers = tg_mem_calloc(json_array_size(v), sizeof(*u->servers));
    if (!u->servers)
        return tg_schema_nomem(ctx);
    u->nservers = json_array_size(v);
    return tg_schema_each(ctx, v, parse_server, u);
}

static int parse_upstream_protocol(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    if (!v)
        return 0;
    if (!json_is_string(v))
        return tg_schema_err(ctx, "expected \"http/1.1\"");
    if (strcmp(json_string_value(v), "http/1.1") != 0)
        return tg_schema_err(ctx, "only http/1.1 upstreams are supported");
    return 0;
}

static const struct tg_field upstream_tls_fields[] = {
    TG_F_FILE(struct tg_cfg_upstream_tls, ca_file, "ca_file", false),
    TG_F_STRING(struct tg_cfg_upstream_tls, server_name, "server_name", 253, NULL, false),
    TG_F_FILE(struct tg_cfg_upstream_tls, certificate_file, "certificate_file", false),
    TG_F_FILE(struct tg_cfg_upstream_tls, private_key_file, "private_key_file", false),
};

static int parse_upstream_tls(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_upstream *u = obj;
    int rv;
    if (!v)
        return 0;
    if (!json_is_object(v))
        return tg_schema_err(ctx, "expected an object or null");
    u->tls = tg_mem_calloc(1, sizeof(*u->tls));
    if (!u->tls)
        return tg_schema_nomem(ctx);
    rv = tg_schema_apply(ctx, v, upstream_tls_fields,
                         sizeof(upstream_tls_fields) / sizeof(upstream_tls_fields[0]), u->tls);
    if (rv)
        return rv;
    if (!u->tls->certificate_file != !u->tls->private_key_file)
        return tg_schema_err(ctx, "certificate_file and private_key_file go together "
                                  "(give both or neither)");
    /* Validated above so the files are checked, but the client side of TLS
     * is not built yet: refuse rather than send plaintext to a server the
     * operator believes is reached over verified TLS. */
    return tg_schema_err(ctx, "TLS to upstreams is not supported by this version of tollgate "
                              "yet (use null)");
}

static const struct tg_field upstream_fields[] = {
    TG_F_STRING(struct tg_cfg_upstream, name, "name", NAME_MAX_BYTES, NULL, true),
    TG_F_CUSTOM("servers", parse_servers, true),
    TG_F_CUSTOM("protocol", parse_upstream_protocol, false),
    TG_F_CUSTOM("tls", parse_upstream_tls, false),
    TG_F_UINT(struct tg_cfg_upstream, connect_timeout_ms, "connect_timeout_ms", 1, HOUR_MS, 2000,
              false),
    TG_F_UINT(struct tg_cfg_upstream, first_byte_timeout_ms, "first_byte_timeout_ms", 1, DAY_MS,
              120000, false),
    TG_F_UINT(struct tg_cfg_upstream, idle_timeout_ms, "idle_timeout_ms", 1, DAY_MS, 60000, false),
    TG_F_UINT(struct tg_cfg_upstream, max_idle_connections, "max_idle_connections", 0, 100000, 64,
              false),
    TG_F_ENV(struct tg_cfg_upstream, authorization, "authorization_env"),
};

static int parse_upstream(struct tg_cfg_ctx *ctx, json_t *e, size_t i, void *arg)
{
    struct tg_config *c = arg;
    return tg_schema_apply(ctx, e, upstream_fields,
                           sizeof(upstream_fields) / sizeof(upstream_fields[0]),
                           &c->upstreams[i]);
}

static int parse_upstreams(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_config *c = obj;
    if (!v)
        return 0;
    if (!json_is_array(v))
        return tg_schema_err(ctx, "expected a list of upstreams");
    if (json_array_size(v) == 0)
        return 0; /* allowed only without routes: checked with the routes */
    c->upstreams = tg_mem_calloc(json_array_size(v), sizeof(*c->upstreams));
    if (!c->upstreams)
        return tg_schema_nomem(ctx);
    c->nupstreams = json_array_size(v);
    return tg_schema_each(ctx, v, parse_upstream, c);
}

/* ---- routes[] (parsed after every other section) ---- */

static const struct tg_field_enum api_names[] = {
    {"passthrough", TG_API_PASSTHROUGH},
    {"openai", TG_API_OPENAI},
    {NULL, 0},
};

static int parse_route_upstream(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_route *r = obj;
    char q[100];
    if (!json_is_string(v) || json_string_length(v) == 0)
        return tg_schema_err(ctx, "expected the name of an upstream");
    r->upstream = tg_config_find_upstream(ctx->cfg, json_string_value(v));
    if (!r->upstream)
        return tg_schema_err(ctx, "unknown upstream %s",
                             tg_schema_quote(json_string_value(v), q, sizeof(q)));
    return 0;
}

static int parse_policy_name(struct tg_cfg_ctx *ctx, json_t *e, size_t i, void *arg)
{
    struct tg_cfg_route *r = arg;
    if (!json_is_string(e) || json_string_length(e) == 0)
        return tg_schema_err(ctx, "expected a policy name");
    r->policies[i] = tg_mem_strdup(json_string_value(e));
    return r->policies[i] ? 0 : tg_schema_nomem(ctx);
}

static int parse_route_policies(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_route *r = obj;
    int rv;
    if (!v)
        return 0;
    if ((rv = check_list(ctx, v, "policy names, or null")) != 0)
        return rv;
    r->policies = tg_mem_calloc(json_array_size(v), sizeof(*r->policies));
    if (!r->policies)
        return tg_schema_nomem(ctx);
    r->npolicies = json_array_size(v);
    return tg_schema_each(ctx, v, parse_policy_name, r);
}

static const struct tg_field route_fields[] = {
    TG_F_STRING(struct tg_cfg_route, path_prefix, "path_prefix", PREFIX_MAX_BYTES, NULL, true),
    TG_F_CUSTOM("upstream", parse_route_upstream, true),
    TG_F_ENUM(struct tg_cfg_route, api, "api", api_names, TG_API_PASSTHROUGH),
    TG_F_CUSTOM("policies", parse_route_policies, false),
};

static int parse_route(struct tg_cfg_ctx *ctx, json_t *e, size_t i, void *arg)
{
    struct tg_config *c = arg;
    struct tg_cfg_route *r = &c->routes[i];
    int rv = tg_schema_apply(ctx, e, route_fields, sizeof(route_fields) / sizeof(route_fields[0]),
                             r);
    if (rv)
        return rv;
    r->prefix_len = strlen(r->path_prefix);
    /* Matching sees the path without its query, byte for byte. */
    const char *why = NULL;
    if (r->path_prefix[0] != '/')
        why = "expected a path starting with \"/\"";
    else if (strpbrk(r->path_prefix, "?# "))
        why = "expected a path without '?', '#' or spaces";
    if (why) {
        size_t saved = tg_schema_push_key(ctx, "path_prefix");
        rv = tg_schema_err(ctx, "%s", why);
        tg_schema_pop(ctx, saved);
    }
    return rv;
}

static int parse_routes(struct tg_cfg_ctx *ctx, json_t *v)
{
    struct tg_config *c = ctx->cfg;
    int rv = 0;
    if (!v || json_is_null(v))
        return 0; /* no routes: every request is 404 */
    size_t saved = tg_schema_push_key(ctx, "routes");
    if (!json_is_array(v)) {
        rv = tg_schema_err(ctx, "expected a list of routes");
        goto out;
    }
    if (json_array_size(v) == 0)
        goto out;
    if (c->nupstreams == 0) {
        tg_schema_pop(ctx, saved);
        saved = tg_schema_push_key(ctx, "upstreams");
        rv = tg_schema_err(ctx, "expected a non-empty list (routes refer to upstreams)");
        goto out;
    }
    c->routes = tg_mem_calloc(json_array_size(v), sizeof(*c->routes));
    if (!c->routes) {
        rv = tg_schema_nomem(ctx);
        goto out;
    }
    c->nroutes = json_array_size(v);
    rv = tg_schema_each(ctx, v, parse_route, c);
out:
    tg_schema_pop(ctx, saved);
    return rv;
}

static int defer_routes(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    ctx->routes = v;
    return 0;
}

/* ---- error_log, quota, unsupported sections ---- */

static const struct tg_field_enum log_levels[] = {
    {"debug", TG_LOG_DEBUG},
    {"info", TG_LOG_INFO},
    {"warn", TG_LOG_WARN},
    {"error", TG_LOG_ERROR},
    {NULL, 0},
};

/* error_log.file is written, not read: resolved but neither opened nor hashed. */
static int parse_log_file(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_config *c = obj;
    if (!v)
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0)
        return tg_schema_err(ctx, "expected a file path or null");
    c->error_log_file = tg_config_resolve_path(ctx, json_string_value(v));
    return c->error_log_file ? 0 : tg_schema_nomem(ctx);
}

static const struct tg_field error_log_fields[] = {
    TG_F_CUSTOM("file", parse_log_file, false),
    TG_F_ENUM(struct tg_config, error_log_level, "level", log_levels, TG_LOG_INFO),
};

static int parse_error_log(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    return tg_schema_apply(ctx, v, error_log_fields,
                           sizeof(error_log_fields) / sizeof(error_log_fields[0]), obj);
}

/* ---- the top level ---- */

static const struct tg_field root_fields[] = {
    TG_F_UINT(struct tg_config, workers, "workers", 0, MAX_WORKERS, 0, false),
    TG_F_CUSTOM("listeners", parse_listeners, true),
    TG_F_CUSTOM("admin", parse_admin, false),
    TG_F_CUSTOM("limits", parse_limits, false),
    TG_F_CUSTOM("upstreams", parse_upstreams, false),
    TG_F_CUSTOM("routes", defer_routes, false),
    TG_F_CUSTOM("auth", tg_config_parse_auth, false),
    TG_F_CUSTOM("policies", tg_config_parse_policies, false),
    TG_F_CUSTOM("pricing", tg_config_parse_pricing, false),
    TG_F_CUSTOM("quota", tg_config_parse_quota, false),
    TG_F_CUSTOM("audit", tg_config_parse_audit, false),
    TG_F_CUSTOM("error_log", parse_error_log, false),
};

int tg_config_parse_root(struct tg_cfg_ctx *ctx, json_t *root)
{
    struct tg_config *c = ctx->cfg;
    int rv = tg_schema_apply(ctx, root, root_fields, sizeof(root_fields) / sizeof(root_fields[0]),
                             c);
    if (rv)
        return rv;
    if (c->workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->workers = n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (unsigned)n;
    }
    return parse_routes(ctx, ctx->routes);
}
