/*
 * audit.h - the audit filter: one record per request, built at completion
 * (allowed, denied or aborted) and handed to the writer thread; plus the
 * process records (startup, shutdown, config_reload).
 */
#ifndef TG_AUDIT_H
#define TG_AUDIT_H

#include <stdbool.h>
#include <stdint.h>

struct tg_audit_writer;
struct tg_config;

/* Install the process-wide writer (NULL: auditing off).  Call before workers start. */
void tg_audit_set_writer(struct tg_audit_writer *w);
/* The installed writer, or NULL. */
struct tg_audit_writer *tg_audit_get_writer(void);

/* A "startup" / "shutdown" record with the snapshot's version and hash. */
void tg_audit_process_record(const char *type, const struct tg_config *cfg);
/* A "config_reload" record: accepted (cfg = new snapshot) or rejected (error text). */
void tg_audit_reload_record(bool accepted, const struct tg_config *cfg, const char *error);
/*
 * A record for a request refused before a tg_req existed (malformed HTTP/1.1
 * head): status, reason and the peer only.
 */
struct tg_worker;
void tg_audit_raw_request(struct tg_worker *worker, const struct tg_config *cfg, const char *ip,
                          unsigned port, const char *tls_version, int status,
                          const char *reason);

/* Main thread: retry handing waiting reload records to the writer (a timer calls it). */
void tg_audit_main_retry(void);
/* Main thread, at shutdown: submit what still waits (refusals are counted). */
void tg_audit_main_flush(void);
/* A worker thread is exiting: hand its backlog to the writer, close its timer. */
void tg_audit_thread_exit(void);

#endif
