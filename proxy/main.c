/*
 * main.c - command-line dispatch (SPEC §2).
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "proxy/mem.h"
#include "proxy/tls.h"

#include "config/config.h"
#include "filters/apikey.h"
#include "filters/audit_writer.h"
#include "proxy/server.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: tollgate [-c FILE]            run (default FILE: ./tollgate.json)\n"
               "       tollgate --check -c FILE     validate FILE and what it references\n"
               "       tollgate key new --id ID [-c FILE]   print a new API key and its keys-file entry\n"
               "       tollgate key hash [-c FILE]  hash a key read on stdin\n"
               "       tollgate audit verify [-c FILE] LOG...   check an audit log's HMAC chain\n"
               "       tollgate --version\n");
}

int main(int argc, char **argv)
{
    const char *path = "tollgate.json";
    /* jansson allocates through the same hooks as the rest of tollgate. */
    json_set_alloc_funcs(tg_mem_malloc, tg_mem_free);
    bool check = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--version") == 0 || strcmp(a, "-v") == 0) {
            printf("tollgate %s\n", TG_VERSION);
            return 0;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--check") == 0) {
            check = true;
        } else if ((strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) && i + 1 < argc) {
            path = argv[++i];
        } else if (strcmp(a, "key") == 0 && i == 1) {
            return tg_cli_key(argc - 1, argv + 1);
        } else if (strcmp(a, "audit") == 0 && i == 1) {
            return tg_cli_audit(argc - 1, argv + 1);
        } else {
            fprintf(stderr, "tollgate: unknown argument \"%s\"\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (check) {
        char err[TG_CONFIG_ERR_MAX];
        struct tg_config *c = tg_config_load(path, err);
        if (!c) {
            fprintf(stderr, "tollgate: %s\n", err);
            return 1;
        }
        /* Load every certificate and key as the server would, so a broken
         * PEM fails here and not at startup or reload. */
        char terr[TG_CONFIG_ERR_MAX + 512];
        if (tg_tls_prepare_config(c, terr, sizeof(terr)) != 0) {
            fprintf(stderr, "tollgate: %s\n", terr);
            tg_config_unref(c);
            return 1;
        }
        printf("%s: configuration OK (sha256 %s)\n", c->path, c->sha256_hex);
        tg_config_unref(c);
        return 0;
    }
    return tg_server_run(path);
}
