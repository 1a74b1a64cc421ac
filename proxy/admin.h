/*
 * admin.h - the admin listener (SPEC §8): GET /metrics, /healthz, /readyz.
 *
 * It runs on the main thread's loop, never on a worker, so a scrape cannot
 * slow traffic.  Each connection carries one request and is closed after the
 * answer.  When a token is configured, /metrics requires
 * "Authorization: Bearer <token>" (compared in constant time); /healthz and
 * /readyz stay open for probes.
 */
#ifndef TG_ADMIN_H
#define TG_ADMIN_H

#include <uv.h>

#include "proxy/buf-t.h"

struct tg_admin;
struct tg_cfg_admin;

/* What the server provides to the admin listener (called on the main loop). */
struct tg_admin_ops {
    /* Append the Prometheus text to out.  0 or a negative error. */
    int (*metrics)(void *ud, struct tg_buf *out);
    /* Append the /readyz JSON to out; returns the HTTP status (200 or 503). */
    int (*ready)(void *ud, struct tg_buf *out);
    /* The bearer token /metrics requires now, or NULL. */
    const char *(*token)(void *ud);
};

/* Listen on cfg's address.  NULL with a message in err on failure. */
struct tg_admin *tg_admin_start(uv_loop_t *loop, const struct tg_cfg_admin *cfg,
                                const struct tg_admin_ops *ops, void *ud, char *err,
                                size_t errlen);
/* Close the listener and every admin connection (asynchronously).  NULL ok. */
void tg_admin_stop(struct tg_admin *a);

#endif
