/*
 * tg_test.h - helpers shared by the unit tests.
 *
 * failmalloc (STYLE §12): install an allocator that fails the Nth
 * allocation, run a scenario, and check it failed cleanly; repeat for N = 1,
 * 2, ... until a run sees no injected failure.  Counting is atomic, so
 * scenarios that allocate on helper threads (the audit writer) count too.
 */
#ifndef TG_TEST_H
#define TG_TEST_H

#include <stdbool.h>

/* Count allocations from 0 and make the nth fail; installs the allocator. */
void tg_test_failmalloc_arm(unsigned long n);
/* True when the armed failure was injected (call after the scenario). */
bool tg_test_failmalloc_failed(void);
/* Restore the libc allocator. */
void tg_test_failmalloc_disarm(void);

#endif
