/*
 * fuzz_redis_reply (THREATS §8.4 A): bytes from "Redis" into the hiredis
 * reply reader with tollgate's reply functions (proxy/redis_reply.c: an
 * announced size past the bounds is refused, never allocated), then every
 * reply into the three quota script decoders.
 *
 * Oracle: no crash, no leak, no read past the reply (ASan); a decoder that
 * accepts a reply must hand back a decision that obeys its contract
 * (filters/quota_script.h): an admit decision is allowed with denied -1 or
 * refused with denied in 0..11, never negative times or windows; settle and
 * renew answer 0 or 1 only when accepting.
 */
#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "filters/quota_script.h"
#include "proxy/redis_reply.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    redisReader *r = redisReaderCreate();
    if (!r)
        return 0;
    r->fn = &tg_redis_reply_fns; /* what tollgate's client installs (bounded sizes) */
    /* Feed in two pieces, split where the first byte says: replies cross reads. */
    size_t cut = size ? data[0] % (size + 1) : 0;
    if (redisReaderFeed(r, (const char *)data, cut) != REDIS_OK ||
        redisReaderFeed(r, (const char *)data + cut, size - cut) != REDIS_OK) {
        redisReaderFree(r);
        return 0;
    }
    for (int n = 0; n < 64; n++) {
        void *reply = NULL;
        if (redisReaderGetReply(r, &reply) != REDIS_OK || !reply)
            break;
        const redisReply *rep = reply;
        struct tg_quota_decision d;
        if (tg_quota_script_admit_reply(rep, &d) == 0) {
            if (d.allowed ? d.denied != -1 : (d.denied < 0 || d.denied > 11))
                abort();
            if (d.day < 0 || d.month < 0 || d.remaining[0] < -1 || d.remaining[1] < -1)
                abort();
        } else if (d.allowed || d.denied != -1) {
            abort(); /* a refused reply reads as a refusal with denied -1 */
        }
        int s = tg_quota_script_settle_reply(rep);
        if (s != 0 && s != 1 && s >= 0)
            abort();
        int w = tg_quota_script_renew_reply(rep);
        if (w != 0 && w != 1 && w >= 0)
            abort();
        tg_redis_reply_fns.freeObject(reply);
    }
    redisReaderFree(r);
    return 0;
}
