/*
 * authn.h - failed-authentication damping shared by every worker (SPEC §5).
 * The table is process-wide, fixed-size and guarded by one mutex; it is
 * touched on each authenticated route's request (a lookup) and on each
 * failure (an increment).
 */
#ifndef TG_AUTHN_H
#define TG_AUTHN_H

#include <stdbool.h>
#include <stdint.h>

/* True when ip has at least limit failures in the calendar minute of now_ms (limit 0: never). */
bool tg_authn_ip_blocked(const char *ip, uint32_t limit, int64_t now_ms);
/* Count one failed authentication for ip in the minute of now_ms. */
void tg_authn_note_failure(const char *ip, int64_t now_ms);
/* Free this thread's verified-token cache (a worker thread calls it as it exits). */
void tg_authn_thread_exit(void);
/* Forget every count (tests). */
void tg_authn_reset_damping(void);

#endif
