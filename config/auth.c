/*
 * The "auth" and "policies" sections (SPEC §3).  Key material is loaded here,
 * off the event loop, so a snapshot carries ready-to-use key sets: the API
 * keyring (filters/apikey.c) and one JWKS per issuer (filters/jwt.c).
 */
#include "config/schema.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "filters/apikey.h"
#include "filters/jwt.h"
#include "proxy/mem.h"

#define POLICY_NAME_MAX 64
#define CLAIM_NAME_MAX 128

/* ---- policies ---- */

static int parse_model_glob(struct tg_cfg_ctx *ctx, json_t *e, size_t i, void *arg)
{
    struct tg_cfg_policy *p = arg;
    if (!json_is_string(e) || json_string_length(e) == 0 || json_string_length(e) > 256)
        return tg_schema_err(ctx, "expected a model name or glob (1..256 characters)");
    p->models[i] = tg_mem_strdup(json_string_value(e));
    return p->models[i] ? 0 : tg_schema_nomem(ctx);
}

int tg_config_parse_models(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_policy *p = obj;
    if (!v)
        return 0; /* any model */
    if (!json_is_array(v) || json_array_size(v) == 0)
        return tg_schema_err(ctx, "expected a non-empty list of model globs, or null");
    p->models = tg_mem_calloc(json_array_size(v), sizeof(*p->models));
    if (!p->models)
        return tg_schema_nomem(ctx);
    p->nmodels = json_array_size(v);
    return tg_schema_each(ctx, v, parse_model_glob, p);
}

static bool name_ok(const char *s, size_t n)
{
    if (n == 0 || n > POLICY_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

int tg_config_parse_policies(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_config *c = obj;
    if (!v)
        return 0;
    if (!json_is_object(v))
        return tg_schema_err(ctx, "expected an object of named policies");
    size_t n = json_object_size(v);
    if (n == 0)
        return 0;
    c->policies = tg_mem_calloc(n, sizeof(*c->policies));
    if (!c->policies)
        return tg_schema_nomem(ctx);
    c->npolicies = n;
    size_t i = 0;
    const char *name;
    json_t *pv;
    json_object_foreach(v, name, pv)
    {
        size_t saved = tg_schema_push_key(ctx, name);
        struct tg_cfg_policy *p = &c->policies[i++];
        int rv;
        if (!name_ok(name, strlen(name)))
            rv = tg_schema_err(ctx, "expected a policy name of 1..64 characters "
                                    "[A-Za-z0-9._-]");
        else if (!json_is_object(pv))
            rv = tg_schema_err(ctx, "expected an object");
        else if (!(p->name = tg_mem_strdup(name)))
            rv = tg_schema_nomem(ctx);
        else
            rv = tg_schema_apply(ctx, pv, tg_config_policy_fields, tg_config_npolicy_fields, p);
        if (!rv)
            tg_config_policy_finish(p);
        tg_schema_pop(ctx, saved);
        if (rv)
            return rv;
    }
    return 0;
}

const struct tg_cfg_policy *tg_config_find_policy(const struct tg_config *c, const char *name)
{
    for (size_t i = 0; i < c->npolicies; i++)
        if (strcmp(c->policies[i].name, name) == 0)
            return &c->policies[i];
    return NULL;
}

/* ---- auth.jwt[] ---- */

static int parse_audience(struct tg_cfg_ctx *ctx, json_t *e, size_t i, void *arg)
{
    struct tg_cfg_jwt *j = arg;
    if (!json_is_string(e) || json_string_length(e) == 0)
        return tg_schema_err(ctx, "expected an audience string");
    j->audiences[i] = tg_mem_strdup(json_string_value(e));
    return j->audiences[i] ? 0 : tg_schema_nomem(ctx);
}

static int parse_audiences(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_jwt *j = obj;
    if (!v)
        return 0;
    if (!json_is_array(v) || json_array_size(v) == 0)
        return tg_schema_err(ctx, "expected a non-empty list of audiences, or null");
    j->audiences = tg_mem_calloc(json_array_size(v), sizeof(*j->audiences));
    if (!j->audiences)
        return tg_schema_nomem(ctx);
    j->naudiences = json_array_size(v);
    return tg_schema_each(ctx, v, parse_audience, j);
}

static int parse_alg(struct tg_cfg_ctx *ctx, json_t *e, size_t i, void *arg)
{
    (void)i;
    struct tg_cfg_jwt *j = arg;
    int alg = json_is_string(e) ? tg_jwt_alg_parse(json_string_value(e)) : -1;
    if (alg < 0)
        return tg_schema_err(ctx, "expected one of RS256, RS384, RS512, PS256, ES256, ES384, "
                                  "EdDSA, HS256");
    j->algorithms |= 1u << alg;
    return 0;
}

static int parse_algorithms(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    if (!v || !json_is_array(v) || json_array_size(v) == 0)
        return tg_schema_err(ctx, "expected a non-empty list of algorithms");
    return tg_schema_each(ctx, v, parse_alg, obj);
}

static const struct tg_field jwt_fields[] = {
    TG_F_STRING(struct tg_cfg_jwt, issuer, "issuer", 1024, NULL, true),
    TG_F_CUSTOM("audiences", parse_audiences, false),
    TG_F_FILE(struct tg_cfg_jwt, jwks_file, "jwks_file", true),
    TG_F_CUSTOM("algorithms", parse_algorithms, true),
    TG_F_STRING(struct tg_cfg_jwt, principal_claim, "principal_claim", CLAIM_NAME_MAX, "sub",
                false),
    TG_F_STRING(struct tg_cfg_jwt, tenant_claim, "tenant_claim", CLAIM_NAME_MAX, NULL, false),
    TG_F_STRING(struct tg_cfg_jwt, policy_claim, "policy_claim", CLAIM_NAME_MAX, NULL, false),
    TG_F_STRING(struct tg_cfg_jwt, default_policy, "default_policy", POLICY_NAME_MAX, NULL,
                false),
    TG_F_UINT(struct tg_cfg_jwt, leeway_ms, "leeway_ms", 0, 600000, 30000, false),
};

static int parse_jwt_issuer(struct tg_cfg_ctx *ctx, json_t *e, size_t i, void *arg)
{
    struct tg_cfg_auth *a = arg;
    struct tg_cfg_jwt *j = &a->jwt[i];
    int rv = tg_schema_apply(ctx, e, jwt_fields, sizeof(jwt_fields) / sizeof(jwt_fields[0]), j);
    if (rv)
        return rv;
    for (size_t k = 0; k < i; k++)
        if (strcmp(a->jwt[k].issuer, j->issuer) == 0) {
            size_t saved = tg_schema_push_key(ctx, "issuer");
            rv = tg_schema_err(ctx, "duplicate issuer (also auth.jwt[%zu])", k);
            tg_schema_pop(ctx, saved);
            return rv;
        }
    char jerr[TG_CONFIG_ERR_MAX];
    j->jwks = tg_jwks_load(j->jwks_file, jerr, sizeof(jerr));
    if (!j->jwks) {
        size_t saved = tg_schema_push_key(ctx, "jwks_file");
        rv = tg_schema_err(ctx, "%s", jerr);
        tg_schema_pop(ctx, saved);
        return rv;
    }
    return 0;
}

static int parse_jwt(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_auth *a = obj;
    if (!v)
        return 0;
    if (!json_is_array(v))
        return tg_schema_err(ctx, "expected a list of issuers");
    if (json_array_size(v) == 0)
        return 0;
    if (json_array_size(v) > 16)
        return tg_schema_err(ctx, "at most 16 issuers are supported");
    a->jwt = tg_mem_calloc(json_array_size(v), sizeof(*a->jwt));
    if (!a->jwt)
        return tg_schema_nomem(ctx);
    a->njwt = json_array_size(v);
    return tg_schema_each(ctx, v, parse_jwt_issuer, a);
}

/* The pepper is a secret: kept as bytes, wiped on free. */
static int parse_pepper(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_auth *a = obj;
    if (!v)
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0)
        return tg_schema_err(ctx, "expected the name of an environment variable");
    char *val = NULL;
    int rv = tg_config_getenv(ctx, json_string_value(v), &val);
    if (rv)
        return rv;
    if (strlen(val) < 16) {
        OPENSSL_cleanse(val, strlen(val));
        tg_mem_free(val);
        return tg_schema_err(ctx, "the pepper in $%s must be at least 16 bytes",
                             json_string_value(v));
    }
    a->pepper_len = strlen(val);
    a->pepper = (unsigned char *)val;
    return 0;
}

static const struct tg_field auth_fields[] = {
    TG_F_FILE(struct tg_cfg_auth, api_keys_file, "api_keys_file", false),
    TG_F_CUSTOM("jwt", parse_jwt, false),
    TG_F_CUSTOM("api_key_pepper_env", parse_pepper, false),
    TG_F_UINT(struct tg_cfg_auth, failed_auth_per_minute_per_ip, "failed_auth_per_minute_per_ip",
              0, 1000000, 30, false),
};

int tg_config_parse_auth(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_config *c = obj;
    struct tg_cfg_auth *a = &c->auth;
    if (!v)
        return 0;
    if (!json_is_object(v))
        return tg_schema_err(ctx, "expected an object");
    int rv = tg_schema_apply(ctx, v, auth_fields, sizeof(auth_fields) / sizeof(auth_fields[0]), a);
    if (rv)
        return rv;
    a->enabled = true;
    if (a->api_keys_file) {
        /* After the whole block: the pepper may come after the file in the document. */
        char kerr[TG_CONFIG_ERR_MAX];
        a->keyring = tg_keyring_load(a->api_keys_file, a->pepper, a->pepper_len, kerr,
                                     sizeof(kerr));
        if (!a->keyring) {
            size_t saved = tg_schema_push_key(ctx, "api_keys_file");
            rv = tg_schema_err(ctx, "%s", kerr);
            tg_schema_pop(ctx, saved);
            return rv;
        }
    }
    return 0;
}

void tg_config_free_auth(struct tg_config *c)
{
    struct tg_cfg_auth *a = &c->auth;
    tg_keyring_free(a->keyring);
    tg_mem_free(a->api_keys_file);
    for (size_t i = 0; i < a->njwt; i++) {
        struct tg_cfg_jwt *j = &a->jwt[i];
        tg_mem_free(j->issuer);
        for (size_t k = 0; k < j->naudiences; k++)
            tg_mem_free(j->audiences[k]);
        tg_mem_free(j->audiences);
        tg_mem_free(j->jwks_file);
        tg_jwks_free(j->jwks);
        tg_mem_free(j->principal_claim);
        tg_mem_free(j->tenant_claim);
        tg_mem_free(j->policy_claim);
        tg_mem_free(j->default_policy);
    }
    tg_mem_free(a->jwt);
    if (a->pepper) {
        OPENSSL_cleanse(a->pepper, a->pepper_len);
        tg_mem_free(a->pepper);
    }
    for (size_t i = 0; i < c->npolicies; i++) {
        struct tg_cfg_policy *p = &c->policies[i];
        tg_mem_free(p->name);
        for (size_t k = 0; k < p->nmodels; k++)
            tg_mem_free(p->models[k]);
        tg_mem_free(p->models);
    }
    tg_mem_free(c->policies);
    memset(a, 0, sizeof(*a));
    c->policies = NULL;
    c->npolicies = 0;
}

/* ---- audit ---- */

static const struct tg_field_enum fsync_names[] = {
    {"always", 0},
    {"interval", 1},
    {"never", 2},
    {NULL, 0},
};

static const struct tg_field_enum queue_full_names[] = {
    {"reject", 0},
    {"block", 1},
    {NULL, 0},
};

/* The log is written, not read: its directory must exist; the file may not yet. */
static int parse_audit_file(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_audit *a = obj;
    if (!v || !json_is_string(v) || json_string_length(v) == 0)
        return tg_schema_err(ctx, "expected the path of the audit log file");
    a->file = tg_config_resolve_path(ctx, json_string_value(v));
    if (!a->file)
        return tg_schema_nomem(ctx);
    char *slash = strrchr(a->file, '/');
    char dir[4096];
    size_t dl = slash == a->file ? 1 : (size_t)(slash - a->file);
    if (dl >= sizeof(dir))
        return tg_schema_err(ctx, "path too long");
    memcpy(dir, a->file, dl);
    dir[dl] = '\0';
    if (access(dir, W_OK | X_OK) != 0) {
        char q[300];
        return tg_schema_err(ctx, "directory %s is not writable: %s",
                             tg_schema_quote(dir, q, sizeof(q)), strerror(errno));
    }
    return 0;
}

static int parse_audit_key(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_cfg_audit *a = obj;
    if (!v || !json_is_string(v) || json_string_length(v) == 0)
        return tg_schema_err(ctx, "expected the name of an environment variable");
    char *val = NULL;
    int rv = tg_config_getenv(ctx, json_string_value(v), &val);
    if (rv)
        return rv;
    if (strlen(val) < 32) {
        OPENSSL_cleanse(val, strlen(val));
        tg_mem_free(val);
        return tg_schema_err(ctx, "the key in $%s must be at least 32 bytes",
                             json_string_value(v));
    }
    a->hmac_key_len = strlen(val);
    a->hmac_key = (unsigned char *)val;
    return 0;
}

static const struct tg_field audit_fields[] = {
    TG_F_CUSTOM("file", parse_audit_file, true),
    TG_F_ENUM(struct tg_cfg_audit, fsync, "fsync", fsync_names, 1),
    TG_F_UINT(struct tg_cfg_audit, fsync_interval_ms, "fsync_interval_ms", 1, 60000, 1000, false),
    TG_F_CUSTOM("hmac_key_env", parse_audit_key, true),
    TG_F_UINT(struct tg_cfg_audit, queue_records, "queue_records", 16, 10000000, 65536, false),
    TG_F_ENUM(struct tg_cfg_audit, on_queue_full_block, "on_queue_full", queue_full_names, 0),
};

int tg_config_parse_audit(struct tg_cfg_ctx *ctx, json_t *v, void *obj)
{
    struct tg_config *c = obj;
    if (!v)
        return 0;
    if (!json_is_object(v))
        return tg_schema_err(ctx, "expected an object");
    int rv = tg_schema_apply(ctx, v, audit_fields, sizeof(audit_fields) / sizeof(audit_fields[0]),
                             &c->audit);
    if (rv)
        return rv;
    c->audit.enabled = true;
    return 0;
}

void tg_config_free_audit(struct tg_config *c)
{
    struct tg_cfg_audit *a = &c->audit;
    tg_mem_free(a->file);
    if (a->hmac_key) {
        OPENSSL_cleanse(a->hmac_key, a->hmac_key_len);
        tg_mem_free(a->hmac_key);
    }
    memset(a, 0, sizeof(*a));
}
