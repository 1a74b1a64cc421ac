/*
 * schema.h - internal to config/: the field-descriptor engine and the load
 * context shared by load.c, validate.c, routes.c and config.c.
 *
 * A section is described by a table of struct tg_field (STYLE §19): name,
 * type, where the value is stored, its range, default and whether it is
 * required.  tg_schema_apply() walks a JSON object in document order (so that
 * referenced files are hashed in the order they appear in the file), rejects
 * unknown keys, checks each value against its descriptor and stores it, then
 * applies defaults (or reports "required") for the keys that were absent.
 * For an optional field, JSON null means the same as absent.
 *
 * Every error is written to ctx->err as "FILE: JSON.PATH: what was expected"
 * and reported as TG_E_INVALID (or TG_E_NOMEM with "FILE: out of memory").
 * Nothing here is used outside config/.
 */
#ifndef TG_CONFIG_SCHEMA_H
#define TG_CONFIG_SCHEMA_H

#include "config/config.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Longest JSON path kept for messages ("upstreams[3].tls.certificate_file"). */
#define TG_SCHEMA_JPATH_MAX 256

/* One referenced file already hashed (dedupe by device and inode). */
struct tg_schema_file_id {
    dev_t dev; /* st_dev of the file */
    ino_t ino; /* st_ino of the file */
};

/* State of one tg_config_load() call. */
struct tg_cfg_ctx {
    const char *file;                  /* config path as the caller gave it, for messages */
    char *err;                         /* caller's TG_CONFIG_ERR_MAX message buffer */
    char jpath[TG_SCHEMA_JPATH_MAX];   /* JSON path of the value being checked */
    size_t jlen;                       /* strlen(jpath) */
    struct tg_config *cfg;             /* the snapshot being built (owned by load.c) */
    EVP_MD_CTX *md;                    /* SHA-256 over the config and referenced files */
    struct tg_schema_file_id *files;   /* files hashed so far, in document order */
    size_t nfiles;                     /* count of files */
    size_t capfiles;                   /* allocated entries of files */
    json_t *routes;                    /* "routes" value, parsed after upstreams (borrowed) */
};

/* Value types of a field. */
enum tg_field_type {
    TG_FT_UINT,   /* JSON integer in [min, max], stored as an unsigned of size 1, 2, 4 or 8 */
    TG_FT_BOOL,   /* true / false, stored as bool; default def != 0 */
    TG_FT_STRING, /* non-empty string without control characters, owned char *; default def_str */
    TG_FT_ENUM,   /* one of names[], stored as int; default def */
    TG_FT_FILE,   /* path: resolved against the config dir, must be readable; hashed; char * */
    TG_FT_ENV,    /* variable name: must be set and non-empty; its value stored as char * */
    TG_FT_CUSTOM, /* parse() is called with the value, or NULL when absent or null */
};

/* Name and value of one choice of a TG_FT_ENUM field; tables end with a NULL name. */
struct tg_field_enum {
    const char *name; /* spelling in the JSON file */
    int value;        /* stored value */
};

struct tg_cfg_ctx;

/*
 * Parser of a TG_FT_CUSTOM field: v is the JSON value (NULL when absent or
 * null), obj the struct being filled.  ctx->jpath already names the field.
 * 0 or a negative error with ctx->err set.
 */
typedef int tg_field_parse_fn(struct tg_cfg_ctx *ctx, json_t *v, void *obj);

/* Descriptor of one key of a JSON object. */
struct tg_field {
    const char *name;                  /* JSON key */
    enum tg_field_type type;           /* value type */
    size_t offset;                     /* offset of the destination in the struct */
    size_t size;                       /* size of the destination (checked for UINT/ENUM) */
    uint64_t min;                      /* UINT: smallest value */
    uint64_t max;                      /* UINT: largest value; STRING: longest length (0: any) */
    uint64_t def;                      /* UINT/BOOL/ENUM: value when absent */
    const char *def_str;               /* STRING: value when absent, or NULL */
    bool required;                     /* absent is an error ("required") */
    const struct tg_field_enum *names; /* ENUM: the choices */
    tg_field_parse_fn *parse;          /* CUSTOM: the parser */
};

#define TG_FSIZE(st, fld) sizeof(((st *)0)->fld)
#define TG_F_UINT(st, fld, key, lo, hi, dflt, req)                                                 \
    {.name = key, .type = TG_FT_UINT, .offset = offsetof(st, fld), .size = TG_FSIZE(st, fld),      \
     .min = lo, .max = hi, .def = dflt, .required = req}
#define TG_F_BOOL(st, fld, key, dflt)                                                              \
    {.name = key, .type = TG_FT_BOOL, .offset = offsetof(st, fld), .size = TG_FSIZE(st, fld),      \
     .def = dflt}
#define TG_F_STRING(st, fld, key, maxlen, dflt, req)                                               \
    {.name = key, .type = TG_FT_STRING, .offset = offsetof(st, fld), .size = TG_FSIZE(st, fld),    \
     .max = maxlen, .def_str = dflt, .required = req}
#define TG_F_ENUM(st, fld, key, tbl, dflt)                                                         \
    {.name = key, .type = TG_FT_ENUM, .offset = offsetof(st, fld), .size = TG_FSIZE(st, fld),      \
     .def = dflt, .names = tbl}
#define TG_F_FILE(st, fld, key, req)                                                               \
    {.name = key, .type = TG_FT_FILE, .offset = offsetof(st, fld), .size = TG_FSIZE(st, fld),      \
     .required = req}
#define TG_F_ENV(st, fld, key)                                                                     \
    {.name = key, .type = TG_FT_ENV, .offset = offsetof(st, fld), .size = TG_FSIZE(st, fld)}
#define TG_F_CUSTOM(key, fn, req) {.name = key, .type = TG_FT_CUSTOM, .parse = fn, .required = req}

/*
 * Check the JSON object obj (NULL: every key absent) against fields[0..n)
 * (n <= 64) and store into the struct at target, as described above.  Keys
 * are visited in document order, then absent keys in table order.  0 or a
 * negative error with ctx->err set.
 */
int tg_schema_apply(struct tg_cfg_ctx *ctx, json_t *obj, const struct tg_field *fields, size_t n,
                    void *target);

/*
 * Run fn on every element of the JSON array v, with ctx->jpath extended by
 * "[i]".  fn gets the element, its index and arg.  Stops at the first error.
 */
int tg_schema_each(struct tg_cfg_ctx *ctx, json_t *v,
                   int (*fn)(struct tg_cfg_ctx *ctx, json_t *elem, size_t i, void *arg), void *arg);

/* Append ".key" (or "key" at the top) to ctx->jpath; returns the length to restore. */
size_t tg_schema_push_key(struct tg_cfg_ctx *ctx, const char *key);
/* Append "[i]" to ctx->jpath; returns the length to restore. */
size_t tg_schema_push_index(struct tg_cfg_ctx *ctx, size_t i);
/* Restore ctx->jpath to a length returned by a push. */
void tg_schema_pop(struct tg_cfg_ctx *ctx, size_t len);

/*
 * Write "FILE: JSON.PATH: message" (or "FILE: message" at the top) into
 * ctx->err and return TG_E_INVALID.
 */
int tg_schema_err(struct tg_cfg_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Write "FILE: out of memory" and return TG_E_NOMEM. */
int tg_schema_nomem(struct tg_cfg_ctx *ctx);

/*
 * Copy s into out (outsz >= 8) as a double-quoted string, escaping quotes,
 * backslashes and non-printable bytes, and ending it with "..." when it does
 * not fit, so that text taken from the file is safe in messages and logs.
 * Returns out.
 */
const char *tg_schema_quote(const char *s, char *out, size_t outsz);

/* ---- load.c: paths, referenced files and environment secrets ---- */

/*
 * Absolute path of p: p itself when it starts with '/', else ctx->cfg->dir
 * joined with p.  Returns a new tg_mem string, or NULL when out of memory.
 */
char *tg_config_resolve_path(struct tg_cfg_ctx *ctx, const char *p);

/*
 * Check that the file at abs (the value of the field named by ctx->jpath)
 * can be opened and read, and add its bytes to the snapshot hash unless the
 * same file (device and inode) was hashed before.  0 or a negative error
 * with ctx->err set ("cannot open \"PATH\": reason").
 */
int tg_config_hash_file(struct tg_cfg_ctx *ctx, const char *abs);

/*
 * Read the environment variable name (the value of the field named by
 * ctx->jpath) into a new tg_mem string *out.  Unset or empty is an error
 * naming the field and the variable, never the value.  0 or a negative error.
 */
int tg_config_getenv(struct tg_cfg_ctx *ctx, const char *name, char **out);

/* ---- sections.c, validate.c, routes.c, config.c ---- */

/*
 * Parse the top-level object root into ctx->cfg: every section in document
 * order, then the routes (which refer to upstreams).  0 or a negative error.
 */
int tg_config_parse_root(struct tg_cfg_ctx *ctx, json_t *root);

/*
 * Cross-reference checks over the parsed (not yet sorted) snapshot: unique
 * listener names and addresses (admin included), unique upstream names and
 * route prefixes, known policy names.  0 or TG_E_INVALID with ctx->err set.
 */
int tg_config_validate(struct tg_cfg_ctx *ctx);

/* The upstream of c named name, or NULL. */
struct tg_cfg_upstream *tg_config_find_upstream(struct tg_config *c, const char *name);

/* Sort c->routes by prefix length, longest first (stable, no allocation). */
void tg_config_sort_routes(struct tg_config *c);

/* auth.c: the "auth" section (obj is the tg_config); loads keys and JWKS. */
int tg_config_parse_auth(struct tg_cfg_ctx *ctx, json_t *v, void *obj);
/* auth.c: policies.*.models (obj is the tg_cfg_policy). */
int tg_config_parse_models(struct tg_cfg_ctx *ctx, json_t *v, void *obj);
/* quota.c: every field of one policy (models, limits, tenant limits, max_tokens). */
extern const struct tg_field tg_config_policy_fields[];
extern const size_t tg_config_npolicy_fields;
/* quota.c: derived fields of a parsed policy (has_limits). */
void tg_config_policy_finish(struct tg_cfg_policy *p);
/* quota.c: the "pricing" section (obj is the tg_config). */
int tg_config_parse_pricing(struct tg_cfg_ctx *ctx, json_t *v, void *obj);
/* quota.c: the "quota" section (obj is the tg_config); absent gives the local backend. */
int tg_config_parse_quota(struct tg_cfg_ctx *ctx, json_t *v, void *obj);
/* quota.c: free pricing and quota (wipes the Redis password). */
void tg_config_free_quota(struct tg_config *c);
/* config.c: wipe and free a secret string.  NULL ok. */
void tg_config_free_secret(char *s);
/* sections.c: numeric IPv4/IPv6 text + port into addr.  0, or -1 when not numeric. */
int tg_config_numeric_addr(const char *text, uint16_t port, struct sockaddr_storage *addr,
                           socklen_t *addrlen);
/* auth.c: the "policies" section (obj is the tg_config). */
int tg_config_parse_policies(struct tg_cfg_ctx *ctx, json_t *v, void *obj);
/* auth.c: the "audit" section (obj is the tg_config). */
int tg_config_parse_audit(struct tg_cfg_ctx *ctx, json_t *v, void *obj);
/* auth.c: free the audit section (wipes the HMAC key). */
void tg_config_free_audit(struct tg_config *c);
/* auth.c: free what the two sections above allocated (wipes the pepper). */
void tg_config_free_auth(struct tg_config *c);

/* Free a snapshot, complete or partly built, wiping secrets.  NULL is a no-op. */
void tg_config_free(struct tg_config *c);

#endif
