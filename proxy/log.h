/*
 * log.h - the error log.
 *
 * One line per event: "2026-11-25T20:33:04.123Z LEVEL module: message".
 * Callers on an event loop never block: tg_log() formats into a bounded
 * in-memory queue and a writer thread does the write(2).  When the queue is
 * full the line is dropped and counted, and the count is reported by the next
 * line that gets through.
 *
 * There is deliberately no API that takes a header, body or credential: log
 * messages are built from fixed strings, numbers, addresses and ids only.
 */
#ifndef TG_LOG_H
#define TG_LOG_H

#include <stdbool.h>

enum tg_log_level {
    TG_LOG_DEBUG = 0,
    TG_LOG_INFO = 1,
    TG_LOG_WARN = 2,
    TG_LOG_ERROR = 3,
};

/*
 * Start the log writer.  path NULL means stderr.  Until this is called (and
 * after tg_log_stop) lines are written synchronously to stderr, which is what
 * the command-line tools want.  0 or a negative error (the file could not be
 * opened).
 */
int tg_log_start(const char *path, enum tg_log_level level);
/* Flush every queued line and join the writer thread. */
void tg_log_stop(void);
/* Ask the writer to reopen its file (SIGUSR1); safe from any thread. */
void tg_log_reopen(void);
/* Change the minimum level (reload). */
void tg_log_set_level(enum tg_log_level level);
/* Parse "debug" / "info" / "warn" / "error"; -1 when unknown. */
int tg_log_level_parse(const char *s);
/* True when a line at this level would be kept (skip expensive formatting). */
bool tg_log_enabled(enum tg_log_level level);
/* Number of lines dropped because the queue was full, since start. */
unsigned long tg_log_dropped(void);

void tg_log(enum tg_log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define tg_log_debug(mod, ...) tg_log(TG_LOG_DEBUG, mod, __VA_ARGS__)
#define tg_log_info(mod, ...) tg_log(TG_LOG_INFO, mod, __VA_ARGS__)
#define tg_log_warn(mod, ...) tg_log(TG_LOG_WARN, mod, __VA_ARGS__)
#define tg_log_error(mod, ...) tg_log(TG_LOG_ERROR, mod, __VA_ARGS__)

#endif
