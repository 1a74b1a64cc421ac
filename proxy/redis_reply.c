/*
 * Bounded, pooled reply objects for hiredis (see redis_reply.h).  The layout
 * follows hiredis's own createReplyObject & co. so that the replies look the
 * same to every reader of a redisReply; only the allocation differs.
 */
#include "proxy/redis_reply.h"

#include <hiredis/hiredis.h>
#include <string.h>

#include "proxy/mem.h"

#define POOL_MAX 256 /* nodes kept per thread */

/* Free nodes of this thread, linked through their `element` pointer. */
static __thread redisReply *pool;
static __thread unsigned pooled;

static redisReply *node_new(int type)
{
    redisReply *r = pool;
    if (r) {
        pool = (redisReply *)(void *)r->element;
        pooled--;
        memset(r, 0, sizeof(*r));
    } else if (!(r = tg_mem_calloc(1, sizeof(*r)))) {
        return NULL;
    }
    r->type = type;
    return r;
}

static void node_free(redisReply *r)
{
    if (pooled >= POOL_MAX) {
        tg_mem_free(r);
        return;
    }
    r->element = (redisReply **)(void *)pool;
    pool = r;
    pooled++;
}

static void free_object(void *obj)
{
    redisReply *r = obj;
    if (!r)
        return;
    switch (r->type) {
    case REDIS_REPLY_ARRAY:
        if (r->element) {
            for (size_t i = 0; i < r->elements; i++)
                free_object(r->element[i]);
            tg_mem_free(r->element);
        }
        break;
    case REDIS_REPLY_ERROR:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_STRING:
        tg_mem_free(r->str);
        break;
    default: break;
    }
    node_free(r);
}

/* Hang r under its parent array, as hiredis does. */
static void *attach(const redisReadTask *task, redisReply *r)
{
    if (task->parent) {
        redisReply *parent = task->parent->obj;
        if (!parent || parent->type != REDIS_REPLY_ARRAY || task->idx < 0 ||
            (size_t)task->idx >= parent->elements) {
            free_object(r);
            return NULL;
        }
        parent->element[task->idx] = r;
    }
    return r;
}

static void *create_string(const redisReadTask *task, char *str, size_t len)
{
    if (len > TG_REDIS_REPLY_MAX_STRING)
        return NULL; /* the reader reports out of memory: the connection is dropped */
    redisReply *r = node_new(task->type);
    if (!r)
        return NULL;
    if (!(r->str = tg_mem_malloc(len + 1))) {
        node_free(r);
        return NULL;
    }
    memcpy(r->str, str, len);
    r->str[len] = '\0';
    r->len = (int)len;
    return attach(task, r);
}

static void *create_array(const redisReadTask *task, int elements)
{
    if (elements < 0 || elements > TG_REDIS_REPLY_MAX_ELEMENTS)
        return NULL; /* never allocate what a hostile "*4000000000" announces */
    redisReply *r = node_new(REDIS_REPLY_ARRAY);
    if (!r)
        return NULL;
    if (elements > 0 && !(r->element = tg_mem_calloc((size_t)elements, sizeof(*r->element)))) {
        node_free(r);
        return NULL;
    }
    r->elements = (size_t)elements;
    return attach(task, r);
}

static void *create_integer(const redisReadTask *task, long long value)
{
    redisReply *r = node_new(REDIS_REPLY_INTEGER);
    if (!r)
        return NULL;
    r->integer = value;
    return attach(task, r);
}

static void *create_nil(const redisReadTask *task)
{
    redisReply *r = node_new(REDIS_REPLY_NIL);
    return r ? attach(task, r) : NULL;
}

redisReplyObjectFunctions tg_redis_reply_fns = {
    .createString = create_string,
    .createArray = create_array,
    .createInteger = create_integer,
    .createNil = create_nil,
    .freeObject = free_object,
};

void tg_redis_reply_thread_exit(void)
{
    while (pool) {
        redisReply *r = pool;
        pool = (redisReply *)(void *)r->element;
        tg_mem_free(r);
    }
    pooled = 0;
}
