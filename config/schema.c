/*
 * The field-descriptor engine.  Objects are walked in document order so that
 * files are hashed in the order they appear (SPEC §4); absent keys are
 * handled afterwards in table order.  The engine never frees what it stored:
 * on error the partly built snapshot is freed whole by tg_config_free().
 */
#include "config/schema.h"

#include "proxy/err.h"
#include "proxy/mem.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

size_t tg_schema_push_key(struct tg_cfg_ctx *ctx, const char *key)
{
    size_t saved = ctx->jlen;
    size_t i = ctx->jlen;
    if (i > 0 && i + 1 < sizeof(ctx->jpath))
        ctx->jpath[i++] = '.';
    /* Keys come from the file: keep messages printable. */
    for (const char *k = key; *k && i + 1 < sizeof(ctx->jpath); k++) {
        unsigned char ch = (unsigned char)*k;
        ctx->jpath[i++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    ctx->jpath[i] = '\0';
    ctx->jlen = i;
    return saved;
}

size_t tg_schema_push_index(struct tg_cfg_ctx *ctx, size_t idx)
{
    size_t saved = ctx->jlen;
    int n = snprintf(ctx->jpath + ctx->jlen, sizeof(ctx->jpath) - ctx->jlen, "[%zu]", idx);
    if (n > 0)
        ctx->jlen += (size_t)n;
    if (ctx->jlen >= sizeof(ctx->jpath))
        ctx->jlen = sizeof(ctx->jpath) - 1;
    return saved;
}

void tg_schema_pop(struct tg_cfg_ctx *ctx, size_t len)
{
    ctx->jlen = len;
    ctx->jpath[len] = '\0';
}

int tg_schema_err(struct tg_cfg_ctx *ctx, const char *fmt, ...)
{
    int n;
    if (ctx->jlen)
        n = snprintf(ctx->err, TG_CONFIG_ERR_MAX, "%s: %s: ", ctx->file, ctx->jpath);
    else
        n = snprintf(ctx->err, TG_CONFIG_ERR_MAX, "%s: ", ctx->file);
    if (n >= 0 && n < TG_CONFIG_ERR_MAX) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->err + n, TG_CONFIG_ERR_MAX - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return TG_E_INVALID;
}

int tg_schema_nomem(struct tg_cfg_ctx *ctx)
{
    snprintf(ctx->err, TG_CONFIG_ERR_MAX, "%s: out of memory", ctx->file);
    return TG_E_NOMEM;
}

const char *tg_schema_quote(const char *s, char *out, size_t outsz)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    out[o++] = '"';
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        char tmp[4];
        size_t n = 0;
        if (ch == '"' || ch == '\\') {
            tmp[n++] = '\\';
            tmp[n++] = (char)ch;
        } else if (ch >= 0x20 && ch < 0x7f) {
            tmp[n++] = (char)ch;
        } else {
            tmp[n++] = '\\';
            tmp[n++] = 'x';
            tmp[n++] = hex[ch >> 4];
            tmp[n++] = hex[ch & 15];
        }
        /* Keep room for `..."` and the NUL. */
        if (o + n + 5 > outsz) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(out + o, tmp, n);
        o += n;
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

/* A non-empty string without control characters, or an error naming what was expected. */
static int check_string(struct tg_cfg_ctx *ctx, json_t *v, uint64_t maxlen, const char *what)
{
    if (!json_is_string(v) || json_string_length(v) == 0)
        return tg_schema_err(ctx, "expected %s", what);
    size_t len = json_string_length(v);
    const unsigned char *s = (const unsigned char *)json_string_value(v);
    for (size_t i = 0; i < len; i++)
        if (s[i] < 0x20 || s[i] == 0x7f)
            return tg_schema_err(ctx, "expected %s without control characters", what);
    if (maxlen && len > maxlen)
        return tg_schema_err(ctx, "expected %s of at most %llu bytes", what,
                             (unsigned long long)maxlen);
    return 0;
}

static void store_uint(void *dst, size_t size, uint64_t v)
{
    switch (size) {
    case 1: { uint8_t x = (uint8_t)v; memcpy(dst, &x, 1); break; }
    case 2: { uint16_t x = (uint16_t)v; memcpy(dst, &x, 2); break; }
    case 4: { uint32_t x = (uint32_t)v; memcpy(dst, &x, 4); break; }
    default: memcpy(dst, &v, 8); break;
    }
}

static int apply_enum(struct tg_cfg_ctx *ctx, const struct tg_field *f, json_t *v, void *dst)
{
    int value = (int)f->def;
    if (v) {
        const struct tg_field_enum *e = NULL;
        if (json_is_string(v))
            for (e = f->names; e->name && strcmp(e->name, json_string_value(v)) != 0; e++)
                ;
        if (!e || !e->name) {
            char list[200];
            size_t o = 0;
            list[0] = '\0';
            for (e = f->names; e->name; e++) {
                int n = snprintf(list + o, sizeof(list) - o, "%s\"%s\"", o ? ", " : "", e->name);
                if (n < 0 || (size_t)n >= sizeof(list) - o)
                    break;
                o += (size_t)n;
            }
            return tg_schema_err(ctx, "expected one of %s", list);
        }
        value = e->value;
    }
    memcpy(dst, &value, sizeof(value));
    return 0;
}

static int apply_field(struct tg_cfg_ctx *ctx, const struct tg_field *f, json_t *v, void *target)
{
    char *dst = (char *)target + f->offset;
    char *s = NULL;
    int rv;

    /* For optional keys null means absent (the SPEC writes "tls": null). */
    if (v && json_is_null(v) && !f->required)
        v = NULL;

    switch (f->type) {
    case TG_FT_UINT: {
        uint64_t val = f->def;
        if (v) {
            json_int_t i = json_is_integer(v) ? json_integer_value(v) : -1;
            if (i < 0 || (uint64_t)i < f->min || (uint64_t)i > f->max)
                return tg_schema_err(ctx, "expected an integer %llu..%llu",
                                     (unsigned long long)f->min, (unsigned long long)f->max);
            val = (uint64_t)i;
        }
        store_uint(dst, f->size, val);
        return 0;
    }
    case TG_FT_BOOL: {
        bool b = f->def != 0;
        if (v) {
            if (!json_is_boolean(v))
                return tg_schema_err(ctx, "expected true or false");
            b = json_is_true(v);
        }
        memcpy(dst, &b, sizeof(b));
        return 0;
    }
    case TG_FT_ENUM:
        return apply_enum(ctx, f, v, dst);
    case TG_FT_STRING:
        if (!v && !f->def_str)
            return 0;
        if (v && (rv = check_string(ctx, v, f->max, "a non-empty string")) != 0)
            return rv;
        s = tg_mem_strdup(v ? json_string_value(v) : f->def_str);
        if (!s)
            return tg_schema_nomem(ctx);
        memcpy(dst, &s, sizeof(s));
        return 0;
    case TG_FT_FILE:
        if (!v)
            return 0;
        if ((rv = check_string(ctx, v, 4096, "a file path")) != 0)
            return rv;
        s = tg_config_resolve_path(ctx, json_string_value(v));
        if (!s)
            return tg_schema_nomem(ctx);
        memcpy(dst, &s, sizeof(s)); /* owned by the snapshot from here on */
        return tg_config_hash_file(ctx, s);
    case TG_FT_ENV:
        if (!v)
            return 0;
        if ((rv = check_string(ctx, v, 255, "an environment variable name")) != 0)
            return rv;
        if (strchr(json_string_value(v), '='))
            return tg_schema_err(ctx, "expected an environment variable name (no '=')");
        if ((rv = tg_config_getenv(ctx, json_string_value(v), &s)) != 0)
            return rv;
        memcpy(dst, &s, sizeof(s));
        return 0;
    case TG_FT_CUSTOM:
        return f->parse(ctx, v, target);
    }
    return tg_schema_err(ctx, "internal error: bad field type");
}

int tg_schema_apply(struct tg_cfg_ctx *ctx, json_t *obj, const struct tg_field *fields, size_t n,
                    void *target)
{
    uint64_t seen = 0;
    const char *key;
    json_t *v;
    int rv;

    if (obj && !json_is_object(obj))
        return tg_schema_err(ctx, "expected an object");
    if (n > 64)
        return tg_schema_err(ctx, "internal error: too many fields");

    if (obj) {
        json_object_foreach(obj, key, v) {
            size_t i = 0;
            while (i < n && strcmp(fields[i].name, key) != 0)
                i++;
            size_t saved = tg_schema_push_key(ctx, key);
            if (i == n)
                rv = tg_schema_err(ctx, "unknown key");
            else
                rv = apply_field(ctx, &fields[i], v, target);
            tg_schema_pop(ctx, saved);
            if (rv)
                return rv;
            seen |= (uint64_t)1 << i;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (seen & ((uint64_t)1 << i))
            continue;
        size_t saved = tg_schema_push_key(ctx, fields[i].name);
        if (fields[i].required)
            rv = tg_schema_err(ctx, "required key is missing");
        else
            rv = apply_field(ctx, &fields[i], NULL, target);
        tg_schema_pop(ctx, saved);
        if (rv)
            return rv;
    }
    return 0;
}

int tg_schema_each(struct tg_cfg_ctx *ctx, json_t *v,
                   int (*fn)(struct tg_cfg_ctx *ctx, json_t *elem, size_t i, void *arg), void *arg)
{
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        size_t saved = tg_schema_push_index(ctx, i);
        int rv = fn(ctx, e, i, arg);
        tg_schema_pop(ctx, saved);
        if (rv)
            return rv;
    }
    return 0;
}
