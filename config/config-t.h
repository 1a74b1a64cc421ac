/*
 * config-t.h - the immutable configuration snapshot (types only).
 *
 * A snapshot is built whole by tg_config_load() (off the event loop), never
 * modified afterwards, and shared by reference count: every worker holds one
 * reference to the current snapshot and every request pins the snapshot it
 * started with (STYLE §19).  All strings and arrays are owned by the snapshot.
 */
#ifndef TG_CONFIG_T_H
#define TG_CONFIG_T_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "filters/quota-t.h"

/* Protocol bits of listeners[].protocols. */
enum tg_proto_bits {
    TG_PROTO_HTTP11 = 1u << 0, /* "http/1.1" */
    TG_PROTO_H2 = 1u << 1,     /* "h2" (TLS listeners, chosen by ALPN) */
    TG_PROTO_H2C = 1u << 2,    /* "h2c" (plaintext, prior knowledge) */
};

/* routes[].api */
enum tg_api {
    TG_API_PASSTHROUGH = 0, /* "passthrough": no body inspection */
    TG_API_OPENAI = 1,      /* "openai": body inspection and usage accounting */
};

/* listeners[].tls; all paths are absolute (resolved against the config dir). */
struct tg_cfg_tls {
    char *certificate_file;   /* PEM chain, required */
    char *private_key_file;   /* PEM key, required */
    char *client_ca_file;     /* PEM CA bundle for client certificates, or NULL */
    bool require_client_cert; /* refuse the handshake without a verified client cert */
    char *client_cert_policy; /* policy name for mTLS callers, or NULL */
    int min_version;          /* OpenSSL constant: TLS1_2_VERSION or TLS1_3_VERSION */
    struct ssl_ctx_st *ctx;   /* server context, built by tg_tls_prepare_config() off the
                                 event loop before the snapshot is published; freed with it */
};

struct tg_cfg_listener {
    char *name;                          /* unique name, for logs and metrics */
    char *address;                       /* numeric IPv4/IPv6 address as written */
    uint16_t port;                       /* 1..65535 */
    struct sockaddr_storage addr;        /* parsed address+port */
    socklen_t addrlen;                   /* length of addr */
    struct tg_cfg_tls *tls;              /* NULL for plaintext */
    unsigned protocols;                  /* enum tg_proto_bits; default h2c|http/1.1 or h2|http/1.1 */
};

struct tg_cfg_admin {
    bool enabled;                 /* false when the "admin" block is absent or null */
    char *address;                /* default "127.0.0.1" */
    uint16_t port;                /* default 9901 */
    struct sockaddr_storage addr; /* parsed address+port */
    socklen_t addrlen;            /* length of addr */
    char *token;                  /* bearer token value read from token_env, or NULL */
};

struct tg_cfg_limits {
    uint32_t max_connections;        /* default 10000 */
    uint32_t max_header_bytes;       /* default 65536, min 1024 */
    uint64_t max_body_bytes;         /* default 4194304 */
    uint32_t max_concurrent_streams; /* default 100, 1..1000 */
    uint64_t header_timeout_ms;      /* default 10000 */
    uint64_t body_timeout_ms;        /* default 30000 */
    uint64_t idle_timeout_ms;        /* default 120000 */
    uint64_t shutdown_grace_ms;      /* default 30000 */
};

/* upstreams[].tls (parsed and validated; see tg_config_load for support). */
struct tg_cfg_upstream_tls {
    char *ca_file;          /* PEM CA bundle, or NULL for the system store */
    char *server_name;      /* SNI and name to verify, or NULL (use the host) */
    char *certificate_file; /* client certificate for mTLS, or NULL */
    char *private_key_file; /* its key, or NULL (both or neither) */
};

/* One "host:port" of upstreams[].servers, resolved at load (off the loop). */
struct tg_cfg_server {
    char *text;                   /* "127.0.0.1:8000" as written (for logs, audit) */
    char *host;                   /* host part without [ ] (resolver, SNI); Host header: text */
    uint16_t port;                /* port part */
    struct sockaddr_storage addr; /* first resolved address */
    socklen_t addrlen;            /* length of addr */
};

struct tg_cfg_upstream {
    char *name;                       /* unique name referenced by routes */
    struct tg_cfg_server *servers;    /* at least one */
    size_t nservers;                  /* count of servers */
    struct tg_cfg_upstream_tls *tls;  /* NULL for plaintext */
    uint64_t connect_timeout_ms;      /* default 2000 */
    uint64_t first_byte_timeout_ms;   /* default 120000 */
    uint64_t idle_timeout_ms;         /* pooled idle connection lifetime, default 60000 */
    uint32_t max_idle_connections;    /* per worker per server, default 64 */
    char *authorization;              /* secret read from authorization_env, or NULL */
};

struct tg_cfg_route {
    char *path_prefix;               /* starts with '/' */
    size_t prefix_len;               /* strlen(path_prefix) */
    struct tg_cfg_upstream *upstream;/* resolved reference into the snapshot */
    enum tg_api api;                 /* default passthrough */
    char **policies;                 /* allowed policy names, or NULL for any */
    size_t npolicies;                /* count of policies */
};

struct tg_jwks;
struct tg_keyring;

/* auth.jwt[] */
struct tg_cfg_jwt {
    char *issuer;             /* required "iss" */
    char **audiences;         /* accepted "aud" values */
    size_t naudiences;        /* count (0: no audience check) */
    char *jwks_file;          /* absolute path */
    struct tg_jwks *jwks;     /* loaded key set (owned) */
    unsigned algorithms;      /* bit (1u << enum tg_jwt_alg) per allowed alg */
    char *principal_claim;    /* default "sub" */
    char *tenant_claim;       /* or NULL */
    char *policy_claim;       /* or NULL */
    char *default_policy;     /* policy when the token has no policy claim, or NULL */
    uint64_t leeway_ms;       /* default 30000 */
};

/* auth */
struct tg_cfg_auth {
    bool enabled;                      /* an "auth" block is present */
    char *api_keys_file;               /* absolute path, or NULL */
    struct tg_keyring *keyring;        /* loaded keys (owned), or NULL */
    struct tg_cfg_jwt *jwt;            /* issuers */
    size_t njwt;                       /* count */
    unsigned char *pepper;             /* secret from api_key_pepper_env, or NULL */
    size_t pepper_len;                 /* its length */
    uint32_t failed_auth_per_minute_per_ip; /* damping threshold, default 30; 0 = off */
};

/* policies.<name> */
struct tg_cfg_policy {
    char *name;                   /* the key in "policies" */
    char **models;                /* model globs; NULL = any model */
    size_t nmodels;               /* count */
    struct tg_quota_limits lim[TG_QS_COUNT]; /* [principal], [tenant] ("tenant" block);
                                     0 = unlimited; costs in micro-dollars */
    bool has_limits;              /* some limit above is non-zero */
    uint64_t max_tokens;          /* cap on max_tokens & co.; 0 = none */
    bool max_tokens_clamp;        /* max_tokens_action "clamp" (else "reject") */
};

/* pricing.<glob>: prices in micro-dollars per million tokens. */
struct tg_cfg_price {
    char *glob;                   /* model name or fnmatch glob */
    size_t literal;               /* characters that are not glob syntax (specificity) */
    bool exact;                   /* no glob syntax at all */
    uint64_t input_per_million;   /* micro-dollars per 1e6 prompt tokens */
    uint64_t output_per_million;  /* micro-dollars per 1e6 completion tokens */
};

/* quota.backend */
enum tg_quota_backend {
    TG_QUOTA_LOCAL = 0, /* in-process counters (default) */
    TG_QUOTA_REDIS = 1, /* shared through Redis */
};

/* quota.on_backend_error */
enum tg_quota_fail {
    TG_QUOTA_FAIL_LOCAL = 0, /* in-process rate limits at 1/instances; budgets 503 (default) */
    TG_QUOTA_FAIL_DENY = 1,  /* 503 */
    TG_QUOTA_FAIL_ALLOW = 2, /* admit without limits */
};

/* quota */
struct tg_cfg_quota {
    int backend;                       /* enum tg_quota_backend */
    char *redis_address;               /* numeric IP as written (redis backend) */
    uint16_t redis_port;               /* default 6379 */
    struct sockaddr_storage redis_addr;/* parsed address+port */
    socklen_t redis_addrlen;           /* length of redis_addr */
    char *redis_password;              /* secret from password_env, or NULL */
    uint32_t redis_database;           /* SELECT index, default 0 */
    uint64_t redis_timeout_ms;         /* per call, default 50 */
    char *key_prefix;                  /* default "tg:" */
    int on_backend_error;              /* enum tg_quota_fail */
    uint32_t instances;                /* divisor of per-minute limits when degraded, >= 1 */
    uint64_t default_output_reservation; /* default 1024 */
};

/* audit */
struct tg_cfg_audit {
    bool enabled;                 /* an "audit" block is present */
    char *file;                   /* absolute path of the log */
    int fsync;                    /* enum tg_audit_fsync: always, interval (default), never */
    uint64_t fsync_interval_ms;   /* default 1000 */
    unsigned char *hmac_key;      /* secret from hmac_key_env (>= 32 bytes), wiped on free */
    size_t hmac_key_len;          /* its length */
    uint32_t queue_records;       /* default 65536 */
    bool on_queue_full_block;     /* "block" (true) or "reject" (false, default) */
};

struct tg_config {
    atomic_uint refcnt;                /* references held; freed at zero */
    uint64_t version;                  /* set by the server: 1, 2, ... per successful load */
    unsigned char sha256[32];          /* SHA-256 of config bytes + referenced files */
    char sha256_hex[65];               /* the same, lowercase hex */
    char *path;                        /* absolute path of the config file */
    char *dir;                         /* its directory (base of relative paths) */
    unsigned workers;                  /* resolved: >= 1 (0 in the file = one per CPU) */
    struct tg_cfg_listener *listeners; /* at least one */
    size_t nlisteners;                 /* count */
    struct tg_cfg_admin admin;         /* admin listener */
    struct tg_cfg_limits limits;       /* connection and request limits */
    struct tg_cfg_upstream *upstreams; /* array */
    size_t nupstreams;                 /* count */
    struct tg_cfg_route *routes;       /* sorted by prefix_len, longest first */
    size_t nroutes;                    /* count */
    struct tg_cfg_auth auth;           /* authentication (auth.enabled false: none) */
    struct tg_cfg_audit audit;         /* audit log (audit.enabled false: none) */
    struct tg_cfg_policy *policies;    /* named policies */
    size_t npolicies;                  /* count */
    struct tg_cfg_price *prices;       /* pricing table */
    size_t nprices;                    /* count */
    struct tg_cfg_quota quota;         /* quota backend */
    char *error_log_file;              /* NULL for stderr */
    int error_log_level;               /* enum tg_log_level */
};

#endif
