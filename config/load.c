/*
 * Reading the config file, referenced files and environment secrets, and the
 * top of tg_config_load().  Runs off the event loop: it blocks on file I/O
 * and getaddrinfo().
 *
 * The snapshot hash is SHA-256 over the config file's bytes followed by the
 * bytes of every referenced file in the order it first appears in the
 * document (SPEC §4); a file named twice (same device and inode) is hashed
 * once.
 */
#include "config/schema.h"

#include "proxy/err.h"
#include "proxy/mem.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

/* A config file larger than this is surely a mistake. */
#define CONFIG_MAX_BYTES (16u << 20)

char *tg_config_resolve_path(struct tg_cfg_ctx *ctx, const char *p)
{
    if (p[0] == '/')
        return tg_mem_strdup(p);
    const char *dir = ctx->cfg->dir;
    size_t dl = strlen(dir), pl = strlen(p);
    bool slash = dl == 0 || dir[dl - 1] != '/';
    char *s = tg_mem_malloc(dl + slash + pl + 1);
    if (!s)
        return NULL;
    memcpy(s, dir, dl);
    if (slash)
        s[dl] = '/';
    memcpy(s + dl + slash, p, pl + 1);
    return s;
}

int tg_config_hash_file(struct tg_cfg_ctx *ctx, const char *abs)
{
    char q[300];
    unsigned char chunk[16384];
    struct stat st;
    int rv = TG_E_INVALID;
    FILE *fp = fopen(abs, "rb");
    if (!fp) {
        int e = errno;
        return tg_schema_err(ctx, "cannot open %s: %s", tg_schema_quote(abs, q, sizeof(q)),
                             strerror(e));
    }
    if (fstat(fileno(fp), &st) != 0) {
        int e = errno;
        rv = tg_schema_err(ctx, "cannot stat %s: %s", tg_schema_quote(abs, q, sizeof(q)),
                           strerror(e));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rv = tg_schema_err(ctx, "%s is not a regular file", tg_schema_quote(abs, q, sizeof(q)));
        goto out;
    }
    for (size_t i = 0; i < ctx->nfiles; i++) {
        if (ctx->files[i].dev == st.st_dev && ctx->files[i].ino == st.st_ino) {
            rv = 0; /* readable, and already in the hash */
            goto out;
        }
    }
    if (ctx->nfiles == ctx->capfiles) {
        size_t cap = ctx->capfiles ? ctx->capfiles * 2 : 8;
        struct tg_schema_file_id *f = tg_mem_realloc(ctx->files, cap * sizeof(*f));
        if (!f) {
            rv = tg_schema_nomem(ctx);
            goto out;
        }
        ctx->files = f;
        ctx->capfiles = cap;
    }
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), fp)) > 0) {
        if (EVP_DigestUpdate(ctx->md, chunk, n) != 1) {
            rv = tg_schema_err(ctx, "cannot hash %s", tg_schema_quote(abs, q, sizeof(q)));
            goto out;
        }
    }
    if (ferror(fp)) {
        int e = errno;
        rv = tg_schema_err(ctx, "cannot read %s: %s", tg_schema_quote(abs, q, sizeof(q)),
                           strerror(e));
        goto out;
    }
    ctx->files[ctx->nfiles].dev = st.st_dev;
    ctx->files[ctx->nfiles].ino = st.st_ino;
    ctx->nfiles++;
    rv = 0;
out:
    OPENSSL_cleanse(chunk, sizeof(chunk)); /* it may have held a private key */
    fclose(fp);
    return rv;
}

int tg_config_getenv(struct tg_cfg_ctx *ctx, const char *name, char **out)
{
    char q[300];
    const char *val = getenv(name);
    if (!val)
        return tg_schema_err(ctx, "environment variable %s is not set",
                             tg_schema_quote(name, q, sizeof(q)));
    if (!*val)
        return tg_schema_err(ctx, "environment variable %s is empty",
                             tg_schema_quote(name, q, sizeof(q)));
    *out = tg_mem_strdup(val);
    return *out ? 0 : tg_schema_nomem(ctx);
}

/* Fill cfg->path (realpath of path) and cfg->dir. */
static int set_paths(struct tg_cfg_ctx *ctx, const char *path)
{
    char abs[PATH_MAX];
    if (!realpath(path, abs)) {
        int e = errno;
        return tg_schema_err(ctx, "cannot open: %s", strerror(e));
    }
    char *slash = strrchr(abs, '/');
    size_t dl = slash == abs ? 1 : (size_t)(slash - abs);
    ctx->cfg->path = tg_mem_strdup(abs);
    ctx->cfg->dir = tg_mem_strndup(abs, dl);
    if (!ctx->cfg->path || !ctx->cfg->dir)
        return tg_schema_nomem(ctx);
    return 0;
}

/* Read the whole file at ctx->cfg->path into a new tg_mem buffer. */
static int read_config(struct tg_cfg_ctx *ctx, char **out, size_t *outlen)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0, cap;
    int rv = TG_E_INVALID;
    FILE *fp = fopen(ctx->cfg->path, "rb");
    if (!fp) {
        int e = errno;
        return tg_schema_err(ctx, "cannot open: %s", strerror(e));
    }
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        rv = tg_schema_err(ctx, "not a regular file");
        goto out;
    }
    if ((uint64_t)st.st_size > CONFIG_MAX_BYTES) {
        rv = tg_schema_err(ctx, "larger than %u bytes", CONFIG_MAX_BYTES);
        goto out;
    }
    /* The size may change under us; read to EOF, growing within the limit. */
    cap = (size_t)st.st_size + 1;
    buf = tg_mem_malloc(cap);
    if (!buf) {
        rv = tg_schema_nomem(ctx);
        goto out;
    }
    for (;;) {
        if (len == cap) {
            if (cap > CONFIG_MAX_BYTES) {
                rv = tg_schema_err(ctx, "larger than %u bytes", CONFIG_MAX_BYTES);
                goto out;
            }
            char *nb = tg_mem_realloc(buf, cap * 2);
            if (!nb) {
                rv = tg_schema_nomem(ctx);
                goto out;
            }
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len, fp);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(fp)) {
        int e = errno;
        rv = tg_schema_err(ctx, "cannot read: %s", strerror(e));
        goto out;
    }
    *out = buf;
    *outlen = len;
    buf = NULL;
    rv = 0;
out:
    tg_mem_free(buf);
    fclose(fp);
    return rv;
}

static int finish_hash(struct tg_cfg_ctx *ctx)
{
    static const char hex[] = "0123456789abcdef";
    struct tg_config *c = ctx->cfg;
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(ctx->md, c->sha256, &n) != 1 || n != sizeof(c->sha256))
        return tg_schema_err(ctx, "SHA-256 failed");
    for (size_t i = 0; i < sizeof(c->sha256); i++) {
        c->sha256_hex[2 * i] = hex[c->sha256[i] >> 4];
        c->sha256_hex[2 * i + 1] = hex[c->sha256[i] & 15];
    }
    c->sha256_hex[64] = '\0';
    return 0;
}

struct tg_config *tg_config_load(const char *path, char err[TG_CONFIG_ERR_MAX])
{
    struct tg_cfg_ctx ctx;
    struct tg_config *c = NULL;
    char *bytes = NULL;
    size_t len = 0;
    json_t *root = NULL;
    json_error_t je;
    bool ok = false;

    memset(&ctx, 0, sizeof(ctx));
    err[0] = '\0';
    ctx.err = err;
    ctx.file = path && *path ? path : "(no file)";
    if (!path || !*path) {
        tg_schema_err(&ctx, "no configuration file given");
        return NULL;
    }

    c = tg_mem_calloc(1, sizeof(*c));
    if (!c) {
        tg_schema_nomem(&ctx);
        return NULL;
    }
    atomic_init(&c->refcnt, 1);
    c->version = 0;
    ctx.cfg = c;

    if (set_paths(&ctx, path) != 0 || read_config(&ctx, &bytes, &len) != 0)
        goto out;

    ctx.md = EVP_MD_CTX_new();
    if (!ctx.md) {
        tg_schema_nomem(&ctx);
        goto out;
    }
    if (EVP_DigestInit_ex(ctx.md, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(ctx.md, bytes, len) != 1) {
        tg_schema_err(&ctx, "SHA-256 failed");
        goto out;
    }

    root = json_loadb(bytes, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (je.line > 0)
            snprintf(err, TG_CONFIG_ERR_MAX, "%s: line %d column %d: %s", ctx.file, je.line,
                     je.column, je.text);
        else
            snprintf(err, TG_CONFIG_ERR_MAX, "%s: %s", ctx.file, je.text);
        goto out;
    }
    if (!json_is_object(root)) {
        tg_schema_err(&ctx, "expected a JSON object at the top level");
        goto out;
    }

    if (tg_config_parse_root(&ctx, root) != 0 || tg_config_validate(&ctx) != 0 ||
        finish_hash(&ctx) != 0)
        goto out;
    tg_config_sort_routes(c);
    ok = true;

out:
    json_decref(root);
    tg_mem_free(bytes);
    EVP_MD_CTX_free(ctx.md);
    tg_mem_free(ctx.files);
    if (!ok) {
        tg_config_free(c);
        c = NULL;
    }
    return c;
}
