/*
 * Route table: sorted once at load, longest prefix first, so the first match
 * of a linear scan is the longest.  Route tables are small (tens of entries);
 * a trie can replace the scan if that ever changes, behind the same API.
 */
#include "config/schema.h"

#include <string.h>

void tg_config_sort_routes(struct tg_config *c)
{
    /* Insertion sort: stable, allocation-free, and n is small. */
    for (size_t i = 1; i < c->nroutes; i++) {
        struct tg_cfg_route r = c->routes[i];
        size_t j = i;
        while (j > 0 && c->routes[j - 1].prefix_len < r.prefix_len) {
            c->routes[j] = c->routes[j - 1];
            j--;
        }
        c->routes[j] = r;
    }
}

const struct tg_cfg_route *tg_config_route_match(const struct tg_config *c, const char *path,
                                                 size_t len)
{
    if (!c || !path)
        return NULL;
    for (size_t i = 0; i < c->nroutes; i++) {
        const struct tg_cfg_route *r = &c->routes[i];
        if (r->prefix_len <= len && memcmp(r->path_prefix, path, r->prefix_len) == 0)
            return r;
    }
    return NULL;
}
