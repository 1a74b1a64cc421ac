/*
 * redis_reply.h - the hiredis reply-object functions tollgate's Redis client
 * installs on every connection (proxy/redis.c).
 *
 * hiredis 0.14.1's default functions allocate whatever the server announces:
 * a multi-bulk header "*4000000000" makes the reader calloc gigabytes before
 * a single element arrives (0.14 has no maxelements; THREATS §0), and every
 * reply costs one malloc per element.  Ours build the same redisReply trees
 * (freeReplyObject-compatible layout and types) but
 *   - refuse arrays of more than TG_REDIS_REPLY_MAX_ELEMENTS elements, nested
 *     deeper than hiredis allows anyway, or bulk strings longer than
 *     TG_REDIS_REPLY_MAX_STRING: the reader then fails with "out of memory",
 *     which the client treats like a lost connection (every pending call
 *     fails, it reconnects);
 *   - take redisReply nodes from a small per-thread free list, so the
 *     11-node reply of an admission usually allocates nothing.
 * Replies must be freed with the reader's freeObject (hiredis does so after
 * each callback); never mix with freeReplyObject().
 */
#ifndef TG_REDIS_REPLY_H
#define TG_REDIS_REPLY_H

#include <hiredis/read.h>

#define TG_REDIS_REPLY_MAX_ELEMENTS 64           /* our scripts answer at most 9 */
#define TG_REDIS_REPLY_MAX_STRING (64u * 1024u)  /* error messages, status lines */

/* The function table (never modified; not const because hiredis keeps a plain pointer). */
extern redisReplyObjectFunctions tg_redis_reply_fns;

/* Free the calling thread's free list (at worker exit).  Safe to call twice. */
void tg_redis_reply_thread_exit(void);

#endif
