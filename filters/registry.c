/* The built-in filters, in request order.  Response phases run in reverse. */
#include "filters/filters.h"
#include "proxy/filter.h"

const struct tg_filter_ops *const tg_filter_registry[] = {
    &tg_filter_audit, /* first, so its on_complete runs last */
    &tg_filter_route,
    &tg_filter_authn,
    &tg_filter_authz,
    &tg_filter_quota,
    &tg_filter_forward,
    NULL,
};
