/*
 * config.h - loading, validating and sharing configuration snapshots.
 */
#ifndef TG_CONFIG_H
#define TG_CONFIG_H

#include "config/config-t.h"

#include <stddef.h>

/* Room for one error message: "FILE: JSON.PATH: what was expected". */
#define TG_CONFIG_ERR_MAX 512

/*
 * Read, parse and validate the JSON file at path (and every file it
 * references), returning a new snapshot with refcnt 1 and version 0, or NULL
 * with a message in err (which names the file and the JSON path or
 * line:column).  Unknown keys are errors.  Blocking: call it off the event
 * loop.  Secrets named by *_env are read from the environment here.
 */
struct tg_config *tg_config_load(const char *path, char err[TG_CONFIG_ERR_MAX]);

/* Take one more reference; returns c. */
struct tg_config *tg_config_ref(struct tg_config *c);
/* Drop a reference; the snapshot is freed (secrets wiped) at zero.  NULL is a no-op. */
void tg_config_unref(struct tg_config *c);

/*
 * Longest path_prefix route matching path[0..len), or NULL (deny by default).
 * The match is a plain byte prefix of the path (without the query string: the
 * caller passes the path up to '?').
 */
const struct tg_cfg_route *tg_config_route_match(const struct tg_config *c, const char *path,
                                                 size_t len);


/* The policy called name, or NULL. */
const struct tg_cfg_policy *tg_config_find_policy(const struct tg_config *c, const char *name);
/*
 * The price of model (SPEC §3 pricing): an exact name wins, else the glob
 * with the most literal characters; NULL when none matches (cost 0).
 */
const struct tg_cfg_price *tg_config_find_price(const struct tg_config *c, const char *model);
/* Micro-dollars for the tokens at price p (NULL: 0), rounded up to the micro-dollar. */
uint64_t tg_config_cost(const struct tg_cfg_price *p, uint64_t prompt, uint64_t completion);

#endif
