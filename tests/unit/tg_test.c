#include "tg_test.h"

#include <stdatomic.h>
#include <stdlib.h>

#include "proxy/mem.h"

static atomic_ulong count, fail_at;
static atomic_bool failed;

static bool should_fail(void)
{
    if (atomic_fetch_add(&count, 1) + 1 == atomic_load(&fail_at)) {
        atomic_store(&failed, true);
        return true;
    }
    return false;
}

static void *fm_malloc(size_t n)
{
    return should_fail() ? NULL : malloc(n);
}

static void *fm_calloc(size_t n, size_t m)
{
    return should_fail() ? NULL : calloc(n, m);
}

static void *fm_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : realloc(p, n);
}

static void fm_free(void *p)
{
    free(p);
}

static const struct tg_allocator fm_allocator = {fm_malloc, fm_calloc, fm_realloc, fm_free};

void tg_test_failmalloc_arm(unsigned long n)
{
    atomic_store(&count, 0);
    atomic_store(&fail_at, n);
    atomic_store(&failed, false);
    tg_mem_set(&fm_allocator);
}

bool tg_test_failmalloc_failed(void)
{
    return atomic_load(&failed);
}

void tg_test_failmalloc_disarm(void)
{
    tg_mem_set(NULL);
}
