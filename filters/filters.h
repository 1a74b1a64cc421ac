/*
 * filters.h - the built-in filters (each defined in its own file).
 */
#ifndef TG_FILTERS_H
#define TG_FILTERS_H

#include "proxy/filter-t.h"

/* route.c: longest-prefix route from the pinned snapshot; 404 route_not_found. */
extern const struct tg_filter_ops tg_filter_route;
/*
 * forward.c: drops hop-by-hop fields (and those named by Connection),
 * client credentials (authorization, x-api-key) and client-sent x-tollgate-*
 * and x-forwarded-* fields, keeps a sane x-request-id or makes one,
 * appends x-forwarded-for, sets x-forwarded-proto, and sets the upstream's own
 * Authorization when configured.  On the response: drops hop-by-hop fields
 * and echoes x-request-id.
 */
extern const struct tg_filter_ops tg_filter_forward;

#endif
