/*
 * test_config.c - configuration loading, validation, hashing and route
 * matching (the config/ module).  Fixtures live in $TG_TEST_DATA/config and
 * $TG_TEST_DATA/certs; every invalid fixture is listed in bad_cases[] with
 * the message (file, JSON path, expectation) it must produce.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tg_test.h"

#include "config/config.h"
#include "proxy/log.h"
#include "proxy/mem.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ADMIN_SECRET "admin-secret-value-123"
#define UPSTREAM_SECRET "sk-upstream-secret-456"

static char data_dir[PATH_MAX];

/* $TG_TEST_DATA, else tests/data next to this file. */
static void init_data_dir(void)
{
    const char *env = getenv("TG_TEST_DATA");
    if (env && *env) {
        if (snprintf(data_dir, sizeof(data_dir), "%s", env) >= (int)sizeof(data_dir))
            data_dir[0] = '\0';
        return;
    }
    const char *slash = strrchr(__FILE__, '/');
    int dl = slash ? (int)(slash - __FILE__) : 1;
    if (snprintf(data_dir, sizeof(data_dir), "%.*s/../data", dl, slash ? __FILE__ : ".") < 0)
        data_dir[0] = '\0';
}

static void data_path(char *out, size_t n, const char *rel)
{
    int k = snprintf(out, n, "%s/%s", data_dir, rel);
    if (k < 0 || (size_t)k >= n)
        fail_msg("path too long: %s/%s", data_dir, rel);
}

static struct tg_config *load(const char *rel, char err[TG_CONFIG_ERR_MAX])
{
    char p[PATH_MAX];
    data_path(p, sizeof(p), rel);
    return tg_config_load(p, err);
}

static struct tg_config *load_ok(const char *rel)
{
    char err[TG_CONFIG_ERR_MAX];
    struct tg_config *c = load(rel, err);
    if (!c)
        fail_msg("%s: unexpected error: %s", rel, err);
    return c;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Lowercase hex SHA-256 of the concatenation of the files rels[] (under data_dir). */
static void sha256_of(const char *const *rels, size_t n, char hex[65])
{
    unsigned char md[32], buf[4096];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL), 1);
    for (size_t i = 0; i < n; i++) {
        char p[PATH_MAX];
        data_path(p, sizeof(p), rels[i]);
        FILE *fp = fopen(p, "rb");
        assert_non_null(fp);
        size_t k;
        while ((k = fread(buf, 1, sizeof(buf), fp)) > 0)
            EVP_DigestUpdate(ctx, buf, k);
        fclose(fp);
    }
    assert_int_equal(EVP_DigestFinal_ex(ctx, md, &mdlen), 1);
    EVP_MD_CTX_free(ctx);
    for (size_t i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

static int group_setup(void **state)
{
    init_data_dir();
    setenv("TG_TEST_ADMIN_TOKEN", ADMIN_SECRET, 1);
    setenv("TG_TEST_UPSTREAM_KEY", UPSTREAM_SECRET, 1);
    setenv("TG_TEST_EMPTY_VAR", "", 1);
    setenv("TG_TEST_SHORT_PEPPER", "too-short", 1);
    unsetenv("TG_TEST_UNSET_VAR");
    return 0;
}

/* ---- valid files ---- */

static void test_minimal_defaults(void **state)
{
    struct tg_config *c = load_ok("config/valid-minimal.json");
    char real[PATH_MAX], want[65];
    char p[PATH_MAX];

    assert_int_equal(atomic_load(&c->refcnt), 1);
    assert_int_equal(c->version, 0);
    data_path(p, sizeof(p), "config/valid-minimal.json");
    assert_non_null(realpath(p, real));
    assert_string_equal(c->path, real);
    assert_true(ends_with(c->dir, "/config"));
    assert_true(c->dir[0] == '/');
    assert_true(c->workers >= 1);

    assert_int_equal(c->nlisteners, 1);
    assert_string_equal(c->listeners[0].name, "a");
    assert_int_equal(c->listeners[0].port, 18080);
    assert_null(c->listeners[0].tls);
    assert_int_equal(c->listeners[0].protocols, TG_PROTO_H2C | TG_PROTO_HTTP11);
    assert_int_equal(c->listeners[0].addr.ss_family, AF_INET);
    assert_int_equal(c->listeners[0].addrlen, sizeof(struct sockaddr_in));
    assert_int_equal(ntohs(((struct sockaddr_in *)&c->listeners[0].addr)->sin_port), 18080);

    assert_false(c->admin.enabled);
    assert_int_equal(c->limits.max_connections, 10000);
    assert_int_equal(c->limits.max_header_bytes, 65536);
    assert_int_equal(c->limits.max_body_bytes, 4194304);
    assert_int_equal(c->limits.max_concurrent_streams, 100);
    assert_int_equal(c->limits.header_timeout_ms, 10000);
    assert_int_equal(c->limits.body_timeout_ms, 30000);
    assert_int_equal(c->limits.idle_timeout_ms, 120000);
    assert_int_equal(c->limits.shutdown_grace_ms, 30000);
    assert_int_equal(c->nupstreams, 0);
    assert_int_equal(c->nroutes, 0);
    assert_null(c->error_log_file);
    assert_int_equal(c->error_log_level, TG_LOG_INFO);

    /* No referenced file: the hash is the file's own. */
    const char *files[] = {"config/valid-minimal.json"};
    sha256_of(files, 1, want);
    assert_string_equal(c->sha256_hex, want);
    tg_config_unref(c);
}

static void test_full(void **state)
{
    struct tg_config *c = load_ok("config/valid-full.json");
    char want[65];

    assert_int_equal(c->workers, 3);
    assert_int_equal(c->nlisteners, 3);
    const struct tg_cfg_listener *pub = &c->listeners[0];
    assert_string_equal(pub->name, "public");
    assert_non_null(pub->tls);
    assert_true(pub->tls->certificate_file[0] == '/');
    assert_true(ends_with(pub->tls->certificate_file, "/certs/server.crt"));
    assert_true(ends_with(pub->tls->private_key_file, "/certs/server.key"));
    assert_true(ends_with(pub->tls->client_ca_file, "/certs/ca.crt"));
    assert_true(pub->tls->require_client_cert);
    assert_null(pub->tls->client_cert_policy);
    assert_int_equal(pub->tls->min_version, TLS1_3_VERSION);
    assert_int_equal(pub->protocols, TG_PROTO_H2 | TG_PROTO_HTTP11);
    const struct tg_cfg_listener *loc = &c->listeners[1];
    assert_int_equal(loc->addr.ss_family, AF_INET6);
    assert_int_equal(loc->addrlen, sizeof(struct sockaddr_in6));
    assert_int_equal(loc->protocols, TG_PROTO_H2C | TG_PROTO_HTTP11);
    assert_int_equal(c->listeners[2].protocols, TG_PROTO_HTTP11);

    assert_true(c->admin.enabled);
    assert_string_equal(c->admin.address, "127.0.0.1");
    assert_int_equal(c->admin.port, 19901);
    assert_string_equal(c->admin.token, ADMIN_SECRET);

    assert_int_equal(c->limits.max_connections, 500);
    assert_int_equal(c->limits.max_header_bytes, 1024);
    assert_int_equal(c->limits.max_body_bytes, 1048576);
    assert_int_equal(c->limits.max_concurrent_streams, 1000);
    assert_int_equal(c->limits.header_timeout_ms, 1);
    assert_int_equal(c->limits.body_timeout_ms, 2);
    assert_int_equal(c->limits.idle_timeout_ms, 3);
    assert_int_equal(c->limits.shutdown_grace_ms, 4);

    assert_int_equal(c->nupstreams, 2);
    const struct tg_cfg_upstream *u = &c->upstreams[0];
    assert_string_equal(u->name, "vllm");
    assert_int_equal(u->nservers, 3);
    assert_string_equal(u->servers[0].text, "127.0.0.1:8000");
    assert_string_equal(u->servers[0].host, "127.0.0.1");
    assert_int_equal(u->servers[0].port, 8000);
    assert_int_equal(u->servers[0].addr.ss_family, AF_INET);
    assert_string_equal(u->servers[1].text, "[::1]:8001");
    assert_string_equal(u->servers[1].host, "::1");
    assert_int_equal(u->servers[1].port, 8001);
    assert_int_equal(u->servers[1].addr.ss_family, AF_INET6);
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&u->servers[1].addr)->sin6_port), 8001);
    assert_string_equal(u->servers[2].host, "localhost");
    assert_true(u->servers[2].addrlen > 0);
    assert_null(u->tls); /* upstream TLS is refused until the client side is built */
    assert_int_equal(u->connect_timeout_ms, 1500);
    assert_int_equal(u->first_byte_timeout_ms, 90000);
    assert_int_equal(u->idle_timeout_ms, 30000);
    assert_int_equal(u->max_idle_connections, 0);
    assert_string_equal(u->authorization, UPSTREAM_SECRET);
    const struct tg_cfg_upstream *plain = &c->upstreams[1];
    assert_null(plain->tls);
    assert_null(plain->authorization);
    assert_int_equal(plain->connect_timeout_ms, 2000);
    assert_int_equal(plain->first_byte_timeout_ms, 120000);
    assert_int_equal(plain->idle_timeout_ms, 60000);
    assert_int_equal(plain->max_idle_connections, 64);

    /* Sorted longest first; upstream pointers into the snapshot. */
    assert_int_equal(c->nroutes, 3);
    assert_string_equal(c->routes[0].path_prefix, "/v1/chat/");
    assert_string_equal(c->routes[1].path_prefix, "/v1/");
    assert_string_equal(c->routes[2].path_prefix, "/");
    assert_ptr_equal(c->routes[0].upstream, &c->upstreams[0]);
    assert_ptr_equal(c->routes[2].upstream, &c->upstreams[1]);
    assert_int_equal(c->routes[1].api, TG_API_OPENAI);
    assert_int_equal(c->routes[0].api, TG_API_PASSTHROUGH);
    assert_null(c->routes[1].policies);
    assert_int_equal(c->routes[1].prefix_len, 4);

    assert_true(ends_with(c->error_log_file, "/config/logs/tollgate.log"));
    assert_int_equal(c->error_log_level, TG_LOG_DEBUG);

    /* Config bytes, then referenced files in document order, each once. */
    const char *files[] = {"config/valid-full.json", "certs/server.crt", "certs/server.key",
                           "certs/ca.crt"};
    sha256_of(files, sizeof(files) / sizeof(files[0]), want);
    assert_string_equal(c->sha256_hex, want);
    for (size_t i = 0; i < 32; i++) {
        char two[3];
        snprintf(two, sizeof(two), "%02x", c->sha256[i]);
        assert_memory_equal(two, c->sha256_hex + 2 * i, 2);
    }
    tg_config_unref(c);
}

static void test_defaults(void **state)
{
    struct tg_config *c = load_ok("config/valid-defaults.json");
    assert_int_equal(c->listeners[0].protocols, TG_PROTO_H2C | TG_PROTO_HTTP11);
    assert_int_equal(c->listeners[1].protocols, TG_PROTO_H2 | TG_PROTO_HTTP11);
    assert_int_equal(c->listeners[1].tls->min_version, TLS1_2_VERSION);
    assert_false(c->listeners[1].tls->require_client_cert);
    assert_null(c->listeners[1].tls->client_ca_file);
    assert_true(c->admin.enabled);
    assert_string_equal(c->admin.address, "127.0.0.1");
    assert_int_equal(c->admin.port, 9901);
    assert_null(c->admin.token);
    assert_int_equal(c->admin.addr.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&c->admin.addr)->sin_port), 9901);
    assert_int_equal(c->limits.max_header_bytes, 65536);
    assert_int_equal(c->routes[0].api, TG_API_PASSTHROUGH);
    assert_int_equal(c->error_log_level, TG_LOG_INFO);
    tg_config_unref(c);
}

static void test_hash_dedupes_files(void **state)
{
    struct tg_config *c = load_ok("config/valid-dup-files.json");
    char want[65];
    const char *files[] = {"config/valid-dup-files.json", "certs/server.crt", "certs/server.key",
                           "certs/ca.crt"};
    sha256_of(files, sizeof(files) / sizeof(files[0]), want);
    assert_string_equal(c->sha256_hex, want);
    tg_config_unref(c);
}

/* Document order, not the order of the descriptor tables, decides the hash. */
static void test_hash_document_order(void **state)
{
    struct tg_config *c = load_ok("config/valid-order.json");
    char want[65];
    const char *files[] = {"config/valid-order.json", "certs/client.key", "certs/client.crt",
                           "certs/server.key", "certs/server.crt"};
    sha256_of(files, sizeof(files) / sizeof(files[0]), want);
    assert_string_equal(c->sha256_hex, want);
    assert_ptr_equal(c->routes[0].upstream, &c->upstreams[0]); /* routes before upstreams */
    tg_config_unref(c);
}

static void test_example_config(void **state)
{
    char err[TG_CONFIG_ERR_MAX];
    struct tg_config *c = load("../../config/tollgate.example.json", err);
    if (!c)
        fail_msg("example config: %s", err);
    assert_int_equal(c->nlisteners, 2);
    assert_non_null(c->listeners[1].tls);
    assert_true(c->admin.enabled);
    assert_int_equal(c->nroutes, 2);
    assert_string_equal(c->routes[0].path_prefix, "/v1/");
    assert_int_equal(c->routes[0].api, TG_API_OPENAI);
    /* The quick start shows authentication and quotas on the local backend. */
    assert_true(c->auth.enabled);
    const struct tg_cfg_policy *p = tg_config_find_policy(c, "demo");
    assert_non_null(p);
    assert_true(p->has_limits);
    assert_int_equal(p->lim[TG_QS_PRINCIPAL].v[TG_QL_RPM], 60);
    assert_int_equal(c->quota.backend, TG_QUOTA_LOCAL);
    assert_non_null(tg_config_find_price(c, "demo-model"));
    tg_config_unref(c);
}

static void test_ref_unref(void **state)
{
    struct tg_config *c = load_ok("config/valid-minimal.json");
    assert_ptr_equal(tg_config_ref(c), c);
    assert_int_equal(atomic_load(&c->refcnt), 2);
    tg_config_unref(c);
    assert_int_equal(atomic_load(&c->refcnt), 1);
    tg_config_unref(c); /* freed: ASan reports any use or leak */
    tg_config_unref(NULL);
}

/* ---- invalid files: one per message class ---- */

struct bad_case {
    const char *file;    /* under config/ */
    const char *expect;  /* substring of the message, after the file's directory */
    const char *expect2; /* a second substring, or NULL */
};

static const struct bad_case bad_cases[] = {
    {"bad-syntax.json", "bad-syntax.json: line 4 column 3: ", NULL},
    {"bad-dup-key.json", "bad-dup-key.json: line 3 column ", "duplicate object key"},
    {"bad-empty-file.json", "bad-empty-file.json: line 1 column 0: ", NULL},
    {"bad-top-array.json", "bad-top-array.json: expected a JSON object at the top level", NULL},
    {"bad-unknown-key.json", "bad-unknown-key.json: listeners[0].protcols: unknown key", NULL},
    {"bad-unknown-top.json", "bad-unknown-top.json: listner: unknown key", NULL},
    {"bad-unknown-nested.json", "bad-unknown-nested.json: listeners[0].tls.cert: unknown key",
     NULL},
    {"bad-type-port.json", "bad-type-port.json: listeners[0].port: expected an integer 1..65535",
     NULL},
    {"bad-range-port.json", "bad-range-port.json: listeners[0].port: expected an integer 1..65535",
     NULL},
    {"bad-real-port.json", "listeners[0].port: expected an integer 1..65535", NULL},
    {"bad-range-header.json", "limits.max_header_bytes: expected an integer 1024..1048576", NULL},
    {"bad-range-streams.json", "limits.max_concurrent_streams: expected an integer 1..1000", NULL},
    {"bad-range-timeout.json", "limits.header_timeout_ms: expected an integer 1..86400000", NULL},
    {"bad-type-bool.json", "listeners[0].tls.require_client_cert: expected true or false", NULL},
    {"bad-type-object.json", "bad-type-object.json: limits: expected an object", NULL},
    {"bad-type-string.json", "listeners[0].name: expected a non-empty string", NULL},
    {"bad-listener-not-object.json", "listeners[0]: expected an object", NULL},
    {"bad-workers.json", "bad-workers.json: workers: expected an integer 0..1024", NULL},
    {"bad-missing-required.json", "listeners[0].port: required key is missing", NULL},
    {"bad-no-listeners.json", "bad-no-listeners.json: listeners: required key is missing", NULL},
    {"bad-empty-listeners.json", "listeners: expected a non-empty list of listeners", NULL},
    {"bad-dup-listener-name.json",
     "listeners[1].name: duplicate listener name \"a\" (also listeners[0])", NULL},
    {"bad-dup-listener-addr.json",
     "listeners[1].port: address \"127.0.0.1\" port 18080 is already used by listeners[0]", NULL},
    {"bad-admin-collision.json",
     "admin.port: address \"127.0.0.1\" port 9901 is already used by listeners[0]", NULL},
    {"bad-address-hostname.json", "listeners[0].address: expected a numeric IPv4 or IPv6 address",
     NULL},
    {"bad-h2-without-tls.json", "listeners[0].protocols: \"h2\" requires tls", NULL},
    {"bad-h2c-with-tls.json", "listeners[0].protocols: \"h2c\" is for plaintext listeners", NULL},
    {"bad-protocol-unknown.json",
     "listeners[0].protocols[1]: expected one of \"h2\", \"h2c\", \"http/1.1\"", NULL},
    {"bad-protocol-dup.json", "listeners[0].protocols[1]: duplicate protocol \"http/1.1\"", NULL},
    {"bad-protocols-empty.json", "listeners[0].protocols: expected a non-empty list", NULL},
    {"bad-tls-missing-key.json", "listeners[0].tls.private_key_file: required key is missing",
     NULL},
    {"bad-require-client-cert.json",
     "listeners[0].tls.require_client_cert: requires client_ca_file", NULL},
    {"bad-min-version.json",
     "listeners[0].tls.min_version: expected one of \"TLSv1.2\", \"TLSv1.3\"", NULL},
    {"bad-client-cert-policy.json",
     "listeners[0].tls.client_cert_policy: unknown policy \"mtls\"", NULL},
    {"bad-missing-file.json", "listeners[0].tls.certificate_file: cannot open \"/",
     "/config/missing.crt\": No such file or directory"},
    {"bad-file-is-dir.json", "listeners[0].tls.private_key_file: \"/",
     "/certs\" is not a regular file"},
    {"bad-missing-env.json",
     "upstreams[0].authorization_env: environment variable \"TG_TEST_UNSET_VAR\" is not set",
     NULL},
    {"bad-empty-env.json",
     "admin.token_env: environment variable \"TG_TEST_EMPTY_VAR\" is empty", NULL},
    {"bad-unknown-upstream.json",
     "bad-unknown-upstream.json: routes[2].upstream: unknown upstream \"vlm\"", NULL},
    {"bad-routes-no-upstreams.json", "upstreams: expected a non-empty list", NULL},
    {"bad-dup-upstream.json", "upstreams[1].name: duplicate upstream name \"a\"", NULL},
    {"bad-dup-prefix.json", "routes[1].path_prefix: duplicate path_prefix \"/v1/\"", NULL},
    {"bad-prefix-slash.json", "routes[0].path_prefix: expected a path starting with \"/\"", NULL},
    {"bad-prefix-query.json", "routes[0].path_prefix: expected a path without '?'", NULL},
    {"bad-api.json", "routes[0].api: expected one of \"passthrough\", \"openai\"", NULL},
    {"bad-route-policy.json", "routes[0].policies[0]: unknown policy \"gold\"", NULL},
    {"bad-upstream-protocol.json", "upstreams[0].protocol: only http/1.1 upstreams are supported",
     NULL},
    {"bad-server-format.json", "upstreams[0].servers[0]: expected \"host:port\"", NULL},
    {"bad-server-port.json", "upstreams[0].servers[1]: expected \"host:port\"",
     "with a port 1..65535"},
    {"bad-server-v6.json", "upstreams[0].servers[0]: expected \"host:port\"",
     "IPv6 addresses go in brackets"},
    {"bad-server-resolve.json",
     "upstreams[0].servers[0]: cannot resolve \"no-such-host.invalid\": ", NULL},
    {"bad-servers-empty.json", "upstreams[0].servers: expected a non-empty list", NULL},
    {"unsupported-upstream-tls.json",
     "upstreams[0].tls: TLS to upstreams is not supported by this version of tollgate yet", NULL},
    {"bad-upstream-tls-pair.json",
     "upstreams[0].tls: certificate_file and private_key_file go together", NULL},
    {"bad-auth-no-source.json",
     "bad-auth-no-source.json: auth: expected api_keys_file, jwt, or a TLS listener with "
     "client_ca_file",
     NULL},
    {"bad-auth-key-policy.json", "auth.api_keys_file: key \"alpha\": unknown policy standard",
     NULL},
    {"bad-policy-zero-limit.json",
     "policies.standard.requests_per_minute: expected an integer 1..1000000000000, or null for "
     "no limit",
     NULL},
    {"bad-policy-action.json",
     "policies.p.max_tokens_action: expected one of \"reject\", \"clamp\"", NULL},
    {"bad-policy-tenant-field.json", "policies.p.tenant.max_tokens: unknown key", NULL},
    {"bad-policy-name.json", "policies.bad name: expected a policy name of 1..64 characters",
     NULL},
    {"bad-auth-short-pepper.json",
     "auth.api_key_pepper_env: the pepper in $TG_TEST_SHORT_PEPPER must be at least 16 bytes",
     NULL},
    {"bad-pricing-missing.json", "pricing.m-*.output_per_million: required key is missing", NULL},
    {"bad-pricing-negative.json", "pricing.m-*.input_per_million: expected an amount in dollars",
     NULL},
    {"bad-audit-no-key.json", "audit.hmac_key_env: required key is missing", NULL},
    {"bad-quota-address.json", "quota.redis.address: cannot resolve \"no-such-host.invalid\": ",
     NULL},
    {"bad-quota-fail-mode.json",
     "quota.on_backend_error: expected one of \"local\", \"deny\", \"allow\"", NULL},
    {"bad-log-level.json",
     "error_log.level: expected one of \"debug\", \"info\", \"warn\", \"error\"", NULL},
    {"bad-after-secret.json", "routes[0].upstream: unknown upstream \"down\"", NULL},
};

static void test_invalid_configs(void **state)
{
    int failures = 0;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *bc = &bad_cases[i];
        char rel[PATH_MAX], err[TG_CONFIG_ERR_MAX];
        snprintf(rel, sizeof(rel), "config/%s", bc->file);
        struct tg_config *c = load(rel, err);
        if (c) {
            print_error("%s: loaded, expected \"%s\"\n", bc->file, bc->expect);
            tg_config_unref(c);
            failures++;
            continue;
        }
        /* Every message starts with the path of the file it is about. */
        char p[PATH_MAX];
        data_path(p, sizeof(p), rel);
        bool ok = strncmp(err, p, strlen(p)) == 0 && strstr(err, bc->expect) &&
                  (!bc->expect2 || strstr(err, bc->expect2));
        /* No message may carry a secret value. */
        ok = ok && !strstr(err, ADMIN_SECRET) && !strstr(err, UPSTREAM_SECRET);
        if (!ok) {
            print_error("%s:\n   got: %s\n  want: %s%s%s\n", bc->file, err, bc->expect,
                        bc->expect2 ? " ... " : "", bc->expect2 ? bc->expect2 : "");
            failures++;
        }
    }
    assert_int_equal(failures, 0);
}

static void test_missing_config_file(void **state)
{
    char err[TG_CONFIG_ERR_MAX];
    assert_null(load("config/does-not-exist.json", err));
    assert_non_null(strstr(err, "does-not-exist.json: cannot open: No such file or directory"));
    assert_null(tg_config_load("", err));
    assert_non_null(strstr(err, "no configuration file given"));
}

/* ---- route matching ---- */

struct match_case {
    const char *path; /* request path */
    size_t len;       /* bytes of path to match (0: strlen) */
    const char *want; /* expected path_prefix, or NULL for no route */
};

static void run_matches(const char *file, const struct match_case *cases, size_t n)
{
    struct tg_config *c = load_ok(file);
    for (size_t i = 1; i < c->nroutes; i++)
        assert_true(c->routes[i - 1].prefix_len >= c->routes[i].prefix_len);
    int failures = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].path);
        const struct tg_cfg_route *r = tg_config_route_match(c, cases[i].path, len);
        const char *got = r ? r->path_prefix : NULL;
        bool ok = (!got && !cases[i].want) ||
                  (got && cases[i].want && strcmp(got, cases[i].want) == 0);
        if (!ok) {
            print_error("%s: \"%.*s\" matched %s, want %s\n", file, (int)len, cases[i].path,
                        got ? got : "(none)", cases[i].want ? cases[i].want : "(none)");
            failures++;
        }
    }
    assert_int_equal(failures, 0);
    tg_config_unref(c);
}

static void test_route_match(void **state)
{
    static const struct match_case cases[] = {
        {"/v1/chat/completions", 0, "/v1/chat/completions"},
        {"/v1/chat/completions?stream=1", 20, "/v1/chat/completions"},
        {"/v1/chat/completionsX", 0, "/v1/chat/completions"}, /* plain byte prefix */
        {"/v1/chat/other", 0, "/v1/chat/"},
        {"/v1/chat/", 0, "/v1/chat/"},
        {"/v1/chat", 0, "/v1/"},
        {"/v1/models", 0, "/v1/"},
        {"/v1", 0, "/"}, /* "/v1/" is longer than the path */
        {"/v1/models", 3, "/"},
        {"/api", 0, "/api"},
        {"/apifoo", 0, "/api"}, /* no segment boundary */
        {"/api/x", 0, "/api"},
        {"/generate", 0, "/generate"},
        {"/", 0, "/"},
        {"/anything/else", 0, "/"},
        {"V1/", 0, NULL},
        {"", 0, NULL},
    };
    run_matches("config/valid-routes.json", cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_route_no_catchall(void **state)
{
    static const struct match_case cases[] = {
        {"/v1/", 0, "/v1/"},
        {"/v1/embeddings", 0, "/v1/"},
        {"/v1", 0, NULL},
        {"/v2/x", 0, NULL},
        {"/", 0, NULL},
    };
    run_matches("config/valid-no-catchall.json", cases, sizeof(cases) / sizeof(cases[0]));
    assert_null(tg_config_route_match(NULL, "/", 1));
}

/* ---- failmalloc: fail the Nth allocation, for every N ---- */


/*
 * Load file with allocation N failing, for N = 1, 2, ... until a run sees no
 * injected failure.  A failed run must return NULL with a message (either
 * "out of memory" or, for an invalid file, its own error) and leak nothing.
 * Returns the number of allocations of the clean run.
 */
static unsigned long failmalloc_run(const char *rel, const char *final_err)
{
    char err[TG_CONFIG_ERR_MAX];
    /* jansson allocates through tg_mem too, so its failures are covered. */
    json_set_alloc_funcs(tg_mem_malloc, tg_mem_free);
    for (unsigned long n = 1;; n++) {
        tg_test_failmalloc_arm(n);
        struct tg_config *c = load(rel, err);
        tg_test_failmalloc_disarm();
        if (!tg_test_failmalloc_failed()) {
            if (final_err) {
                assert_null(c);
                assert_non_null(strstr(err, final_err));
            } else if (!c) {
                fail_msg("%s: clean run failed: %s", rel, err);
            }
            tg_config_unref(c);
            json_set_alloc_funcs(malloc, free);
            return n - 1;
        }
        if (c)
            fail_msg("%s: allocation %lu failed but the load succeeded", rel, n);
        if (err[0] == '\0')
            fail_msg("%s: allocation %lu failed without a message", rel, n);
    }
}

static void test_failmalloc_valid(void **state)
{
    unsigned long n = failmalloc_run("config/valid-full.json", NULL);
    print_message("valid-full.json: %lu allocations, each failed once\n", n);
    assert_true(n > 20);
}

static void test_failmalloc_invalid(void **state)
{
    failmalloc_run("config/bad-after-secret.json", "unknown upstream \"down\"");
    failmalloc_run("config/bad-syntax.json", "line 4 column 3");
}

static void test_auth_policies(void **state)
{
    (void)state;
    struct tg_config *c = load_ok("config/valid-auth.json");
    assert_true(c->auth.enabled);
    assert_non_null(c->auth.keyring);
    assert_int_equal(c->auth.failed_auth_per_minute_per_ip, 30);
    assert_int_equal(c->npolicies, 1);
    const struct tg_cfg_policy *p = tg_config_find_policy(c, "standard");
    assert_non_null(p);
    assert_int_equal(p->nmodels, 2);
    assert_string_equal(p->models[1], "llama-3.1-8b*");
    assert_null(tg_config_find_policy(c, "gold"));
    tg_config_unref(c);
}

static void test_quota_section(void **state)
{
    (void)state;
    struct tg_config *c = load_ok("config/valid-quota.json");
    const struct tg_cfg_policy *p = tg_config_find_policy(c, "standard");
    assert_non_null(p);
    assert_true(p->has_limits);
    assert_int_equal(p->lim[TG_QS_PRINCIPAL].v[TG_QL_RPM], 600);
    assert_int_equal(p->lim[TG_QS_PRINCIPAL].v[TG_QL_TPM], 200000);
    assert_int_equal(p->lim[TG_QS_PRINCIPAL].v[TG_QL_TPD], 5000000);
    assert_int_equal(p->lim[TG_QS_PRINCIPAL].v[TG_QL_CPD], 25000000);
    assert_int_equal(p->lim[TG_QS_PRINCIPAL].v[TG_QL_CPM], 500500000);
    assert_int_equal(p->lim[TG_QS_PRINCIPAL].v[TG_QL_CONC], 16);
    assert_int_equal(p->lim[TG_QS_TENANT].v[TG_QL_RPM], 0);
    assert_int_equal(p->lim[TG_QS_TENANT].v[TG_QL_TPM], 1000000);
    assert_int_equal(p->lim[TG_QS_TENANT].v[TG_QL_CPD], 200000000);
    assert_int_equal(p->max_tokens, 4096);
    assert_true(p->max_tokens_clamp);
    const struct tg_cfg_policy *f = tg_config_find_policy(c, "free");
    assert_false(f->has_limits);
    assert_int_equal(f->max_tokens, 0);

    /* An exact name wins, then the glob with the most literal characters. */
    assert_int_equal(tg_config_find_price(c, "llama-3.1-8b-instruct")->input_per_million, 100000);
    assert_int_equal(tg_config_find_price(c, "llama-3.1-8b-chat")->input_per_million, 200000);
    assert_int_equal(tg_config_find_price(c, "llama-2")->input_per_million, 500000);
    assert_int_equal(tg_config_find_price(c, "mistral")->output_per_million, 3000000);
    assert_null(tg_config_find_price(c, NULL));
    /* SPEC §7's example: 812 prompt + 256 completion tokens of llama-3.1-8b = $0.000316. */
    assert_int_equal(tg_config_cost(tg_config_find_price(c, "llama-3.1-8b"), 812, 256), 316);
    /* Rounded up to the micro-dollar: one token at $0.20/M costs 1 micro-dollar, not 0. */
    assert_int_equal(tg_config_cost(tg_config_find_price(c, "llama-3.1-8b"), 1, 0), 1);
    assert_int_equal(tg_config_cost(NULL, 1000, 1000), 0);

    assert_int_equal(c->quota.backend, TG_QUOTA_REDIS);
    assert_int_equal(c->quota.redis_addr.ss_family, AF_INET6);
    assert_int_equal(c->quota.redis_port, 6380);
    assert_int_equal(c->quota.redis_database, 2);
    assert_int_equal(c->quota.redis_timeout_ms, 75);
    assert_string_equal(c->quota.key_prefix, "tgx:");
    assert_int_equal(c->quota.on_backend_error, TG_QUOTA_FAIL_DENY);
    assert_int_equal(c->quota.instances, 4);
    assert_int_equal(c->quota.default_output_reservation, 512);
    tg_config_unref(c);

    /* A host name is resolved at load time (never by hiredis on a loop). */
    struct tg_config *h = load_ok("config/valid-quota-hostname.json");
    assert_int_equal(h->quota.redis_port, 6390);
    assert_true(h->quota.redis_addr.ss_family == AF_INET || h->quota.redis_addr.ss_family == AF_INET6);
    tg_config_unref(h);

    /* No quota block: the local backend with the defaults. */
    c = load_ok("config/valid-auth.json");
    assert_int_equal(c->quota.backend, TG_QUOTA_LOCAL);
    assert_int_equal(c->quota.default_output_reservation, 1024);
    assert_int_equal(c->quota.instances, 1);
    assert_string_equal(c->quota.key_prefix, "tg:");
    assert_int_equal(c->nprices, 0);
    tg_config_unref(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_defaults),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_hash_dedupes_files),
        cmocka_unit_test(test_hash_document_order),
        cmocka_unit_test(test_example_config),
        cmocka_unit_test(test_ref_unref),
        cmocka_unit_test(test_invalid_configs),
        cmocka_unit_test(test_missing_config_file),
        cmocka_unit_test(test_route_match),
        cmocka_unit_test(test_auth_policies),
        cmocka_unit_test(test_quota_section),
        cmocka_unit_test(test_route_no_catchall),
        cmocka_unit_test(test_failmalloc_valid),
        cmocka_unit_test(test_failmalloc_invalid),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
