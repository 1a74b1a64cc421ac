/*
 * Authorization (SPEC §3 routes[].policies, policies.*.models; §5): a route
 * restricted to some policies refuses the others (403 authz.route); on
 * "openai" routes the JSON body is read whole (bounded by max_body_bytes)
 * before anything reaches an upstream: a missing or non-string "model" is
 * 400, and with authentication on it must match one of the caller's policy
 * globs (403 authz.model).
 */
#include <fnmatch.h>
#include <jansson.h>
#include <string.h>

#include "config/config.h"
#include "filters/filters.h"
#include "filters/usage.h"
#include "proxy/buf.h"
#include "proxy/req.h"

struct authz_ctx {
    bool holding; /* the body is being held for the model check */
};

static bool attach(struct tg_filter *f, struct tg_req *req)
{
    (void)f;
    (void)req;
    return true; /* the route is not known yet: decided per request below */
}

static bool model_allowed(const struct tg_cfg_policy *p, const char *model)
{
    if (p->nmodels == 0)
        return true;
    for (size_t i = 0; i < p->nmodels; i++)
        if (fnmatch(p->models[i], model, 0) == 0)
            return true;
    return false;
}

/*
 * SPEC §3: on "openai" routes the OpenAI endpoints' bodies are inspected
 * (POST .../chat/completions, .../completions, .../embeddings, .../responses);
 * other requests under the prefix (GET /v1/models ...) pass as they are.
 */
/*
 * SPEC §3: on "openai" routes the OpenAI endpoints' bodies are inspected
 * (POST .../chat/completions, .../completions, .../embeddings, .../responses);
 * other requests under the prefix (GET /v1/models ...) pass as they are.
 * Returns the endpoint's enum tg_usage_api, or -1.
 */
static int openai_endpoint(const struct tg_req *req)
{
    static const struct {
        const char *end;
        int api;
    } ends[] = {{"/chat/completions", TG_USAGE_CHAT},
                {"/completions", TG_USAGE_COMPLETIONS},
                {"/embeddings", TG_USAGE_EMBEDDINGS},
                {"/responses", TG_USAGE_RESPONSES}};
    if (!tg_iov_eq(req->method, TG_IOV_LIT("POST")))
        return -1;
    size_t len = 0;
    while (len < req->path.len && req->path.base[len] != '?')
        len++;
    for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++) {
        size_t n = strlen(ends[i].end);
        if (len >= n && memcmp(req->path.base + len - n, ends[i].end, n) == 0)
            return ends[i].api;
    }
    return -1;
}

static enum tg_filter_status on_request_headers(struct tg_filter *f, struct tg_req *req)
{
    struct authz_ctx *ctx = f->ctx;
    const struct tg_cfg_policy *p = req->identity.policy;
    const struct tg_cfg_route *r = req->route;
    int api = r->api == TG_API_OPENAI ? openai_endpoint(req) : -1;
    bool inspect = api >= 0;
    if (inspect) {
        req->openai.inspected = true;
        req->openai.api = api;
    }
    if (!req->cfg->auth.enabled) {
        if (!inspect)
            return TG_FILTER_CONTINUE;
        /* No callers to tell apart, but an OpenAI body still needs its model. */
        ctx->holding = true;
        tg_req_hold_body(req, f);
        return TG_FILTER_STOP;
    }
    if (!p) {
        /* authn always sets a policy or answers; refuse rather than guess */
        tg_req_reply_error(req, 403, "permission_denied", "no policy", "authz.policy");
        return TG_FILTER_REPLIED;
    }
    if (r->policies) {
        bool ok = false;
        for (size_t i = 0; i < r->npolicies && !ok; i++)
            ok = strcmp(r->policies[i], p->name) == 0;
        if (!ok) {
            tg_req_reply_error(req, 403, "permission_denied",
                               "the caller's policy may not use this route", "authz.route");
            return TG_FILTER_REPLIED;
        }
    }
    if (inspect) {
        ctx->holding = true;
        tg_req_hold_body(req, f);
        return TG_FILTER_STOP;
    }
    return TG_FILTER_CONTINUE;
}

static enum tg_filter_status on_request_data(struct tg_filter *f, struct tg_req *req,
                                             struct tg_iov body, bool end)
{
    struct authz_ctx *ctx = f->ctx;
    if (!ctx->holding || !end)
        return TG_FILTER_CONTINUE;
    ctx->holding = false;
    json_error_t jerr;
    json_t *doc = body.len ? json_loadb(body.base, body.len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    json_t *m = json_is_object(doc) ? json_object_get(doc, "model") : NULL;
    if (!json_is_string(m) || json_string_length(m) == 0 || json_string_length(m) > 256) {
        json_decref(doc);
        tg_req_reply_error(req, 400, "invalid_request",
                           "the request body must be a JSON object with a model string",
                           "limits.invalid_request");
        return TG_FILTER_REPLIED;
    }
    const char *model = json_string_value(m);
    req->model = tg_arena_strndup(&req->arena, model, strlen(model));
    json_t *st = json_object_get(doc, "stream");
    if (json_is_boolean(st))
        req->stream = json_is_true(st) ? 1 : 0;
    json_t *so = json_object_get(doc, "stream_options");
    req->openai.include_usage = json_is_object(so) && json_is_true(json_object_get(so, "include_usage"));
    req->openai.doc = doc; /* the quota filter reads and may rewrite it; freed with req */
    req->openai.prompt_estimate = (body.len + 3) / 4;
    if (req->identity.policy && !model_allowed(req->identity.policy, model)) {
        tg_req_reply_error(req, 403, "model_not_allowed",
                           "the caller's policy does not allow this model", "authz.model");
        return TG_FILTER_REPLIED;
    }
    tg_req_continue(req);
    return TG_FILTER_CONTINUE;
}

const struct tg_filter_ops tg_filter_authz = {
    .name = "authz",
    .ctx_size = sizeof(struct authz_ctx),
    .attach = attach,
    .on_request_headers = on_request_headers,
    .on_request_data = on_request_data,
};
