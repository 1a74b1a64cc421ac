/*
 * quota_script.h - the arguments and replies of the Redis quota scripts
 * (lua/admit.lua, lua/settle.lua, lua/renew.lua; their bodies are in
 * lua/scripts.h).  This module only encodes and decodes; the Redis client
 * (quota_redis.c) sends the command and owns the connection:
 *
 *     struct tg_quota_argv a;
 *     if (tg_quota_script_admit_args(&admit, "tg:", &a) == 0) {
 *         // argv for redisAsyncCommandArgv: "EVALSHA", sha, then a.argv[0..a.argc)
 *         ...
 *         tg_quota_argv_dispose(&a);
 *     }
 *     ... on the reply: tg_quota_script_admit_reply(reply, &decision)
 *
 * Encoding (see the header comment of each script for the full contract):
 *   argv[0]            numkeys: "1" without a tenant, "2" with one
 *   argv[1], argv[2]   KEYS: principal base, tenant base (quota_common.h)
 *   the rest           ARGV, decimal integers and the lease id:
 *     admit   tokens cost lease lease_ttl_ms, principal limits (rpm tpm tpd
 *             cpd cpm conc), tenant limits
 *     settle  lease tokens_reserved tokens_actual cost_reserved cost_actual
 *             day month, principal limits, tenant limits
 *     renew   lease ttl_ms
 *
 * The scripts answer integers only (see each reply function).  An error
 * reply (NOSCRIPT, OOM, READONLY, BUSY, LOADING, a script's own "ERR tg
 * ...") is the caller's to inspect before decoding; given to a decoder it is
 * just a malformed reply.
 */
#ifndef TG_QUOTA_SCRIPT_H
#define TG_QUOTA_SCRIPT_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "filters/quota-t.h"
#include "filters/quota_common.h"

/* numkeys + 2 keys + 19 ARGV (settle with a tenant) is the longest call. */
#define TG_QUOTA_ARGV_MAX 22
/* Every piece has a ceiling: two bases, a lease, numbers of at most 20 digits, NULs. */
#define TG_QUOTA_ARGV_BUF (2 * TG_QUOTA_BASE_MAX + TG_QUOTA_LEASE_MAX + 1 + TG_QUOTA_ARGV_MAX * 21)

/*
 * One script call's arguments after "EVALSHA <sha>".  Caller-provided
 * storage (a few KiB, meant for the stack) filled by a *_args function; the
 * strings live in the struct itself, so building arguments never allocates,
 * and the struct must not be copied while argv is in use (argv points into
 * buf).  Valid until tg_quota_argv_dispose() or the next *_args call.
 */
struct tg_quota_argv {
    int argc;                            /* entries used in argv/argvlen */
    const char *argv[TG_QUOTA_ARGV_MAX]; /* NUL-terminated strings inside buf */
    size_t argvlen[TG_QUOTA_ARGV_MAX];   /* their lengths (hiredis argvlen) */
    char buf[TG_QUOTA_ARGV_BUF];         /* backing storage */
};

/* Reset the struct (argc 0).  Safe on a zeroed or disposed struct; nothing to free. */
void tg_quota_argv_dispose(struct tg_quota_argv *a);

/*
 * Fill out with the arguments of admit.lua for req under key prefix
 * ("tg:"; NULL means "").  0, or TG_E_INVALID (tg_quota_admit_check() failed
 * or prefix too long); on failure out is left empty (argc 0) and disposing
 * it is harmless.  Never allocates.
 */
int tg_quota_script_admit_args(const struct tg_quota_admit *req, const char *prefix,
                               struct tg_quota_argv *out);
/* The same for settle.lua (tg_quota_settle_check() must pass). */
int tg_quota_script_settle_args(const struct tg_quota_settle *req, const char *prefix,
                                struct tg_quota_argv *out);
/*
 * The same for renew.lua: extend lease of principal (and tenant, NULL or ""
 * for none) to now + ttl_ms (1..TG_QUOTA_VALUE_MAX).
 */
int tg_quota_script_renew_args(const char *principal, const char *tenant, const char *lease,
                               uint64_t ttl_ms, const char *prefix, struct tg_quota_argv *out);

/*
 * Decode admit.lua's reply (an array of 9 integers, see lua/admit.lua) into
 * out.  0, or TG_E_PROTO when r is NULL, not an array of exactly 9
 * integers, or the values are inconsistent (allowed not 0/1, denied outside
 * -1..11 or not -1 exactly when allowed, negative times, remaining < -1,
 * negative day/month).  out is fully written only on success; on failure
 * it is set to a refusal with denied -1.  Never reads past the reply.
 */
int tg_quota_script_admit_reply(const redisReply *r, struct tg_quota_decision *out);
/* settle.lua's reply: 1 settled, 0 already settled, TG_E_PROTO otherwise. */
int tg_quota_script_settle_reply(const redisReply *r);
/* renew.lua's reply: 1 extended, 0 no such live lease, TG_E_PROTO otherwise. */
int tg_quota_script_renew_reply(const redisReply *r);

#endif
