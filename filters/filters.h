/*
 * filters.h - the built-in filters (each defined in its own file).
 */
#ifndef TG_FILTERS_H
#define TG_FILTERS_H

#include "proxy/filter-t.h"

/* audit.c: one record per request at completion; 503 when the audit queue is full. */
extern const struct tg_filter_ops tg_filter_audit;
/* route.c: longest-prefix route from the pinned snapshot; 404 route_not_found. */
extern const struct tg_filter_ops tg_filter_route;
/* authn.c: damping, then API key / JWT / client certificate; 401 / 429. */
extern const struct tg_filter_ops tg_filter_authn;
/* authz.c: route policies and model globs; 403 (and 400 for a body without a model). */
extern const struct tg_filter_ops tg_filter_authz;
/*
 * quota.c: request limits of OpenAI bodies (max_tokens 400 or clamp,
 * include_usage injection), admission against the caller's quotas (429 with
 * retry-after; 503 when the backend is down and on_backend_error says so),
 * x-ratelimit-* headers, usage reading and settlement.
 */
extern const struct tg_filter_ops tg_filter_quota;
/*
 * forward.c: drops hop-by-hop fields (and those named by Connection),
 * client credentials (authorization, x-api-key) and client-sent x-tollgate-*
 * and x-forwarded-* fields, keeps a sane x-request-id or makes one,
 * appends x-forwarded-for, sets x-forwarded-proto, and sets the upstream's own
 * Authorization when configured.  On the response: drops hop-by-hop fields
 * and echoes x-request-id.
 */
extern const struct tg_filter_ops tg_filter_forward;

struct tg_req;
/*
 * Set req->request_id: the client's x-request-id when sane, else a new one.
 * Called first thing by the route filter, so every answer (404 included)
 * carries it.  0, or -1 when out of memory.
 */
int tg_req_assign_id(struct tg_req *req);

#endif
