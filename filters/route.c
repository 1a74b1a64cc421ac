#include <string.h>

#include "config/config.h"
#include "filters/filters.h"
#include "proxy/headers.h"
#include "proxy/req.h"

static enum tg_filter_status on_request_headers(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    if (tg_req_assign_id(req) != 0) {
        tg_req_reply_error(req, 503, "unavailable", "out of memory", "server.nomem");
        return TG_FILTER_REPLIED;
    }
    if (!tg_path_is_normal(req->path)) {
        tg_req_reply_error(req, 400, "invalid_request",
                           "the request path has dot-segments or encoded separators",
                           "limits.invalid_request");
        return TG_FILTER_REPLIED;
    }
    const char *q = memchr(req->path.base, '?', req->path.len);
    size_t len = q ? (size_t)(q - req->path.base) : req->path.len;
    req->route = tg_config_route_match(req->cfg, req->path.base, len);
    if (!req->route) {
        tg_req_reply_error(req, 404, "route_not_found", "no route matches this path",
                           "route.not_found");
        return TG_FILTER_REPLIED;
    }
    return TG_FILTER_CONTINUE;
}

const struct tg_filter_ops tg_filter_route = {
    .name = "route",
    .on_request_headers = on_request_headers,
};
