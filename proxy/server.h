/*
 * server.h - process life: load the configuration, start the workers, handle
 * signals (HUP reload, USR1 reopen logs, TERM/INT graceful drain) and exit.
 */
#ifndef TG_SERVER_H
#define TG_SERVER_H

struct tg_config;
struct tg_server;

/*
 * Run tollgate with the configuration at path until a stop signal and the
 * drain that follows.  Returns the process exit code (0 after a clean stop,
 * 1 when startup failed).
 */
int tg_server_run(const char *path);

/*
 * Worker side of a reload: the snapshot published for worker i since its
 * last call (the caller takes the reference), or NULL.
 */
struct tg_config *tg_server_take_config(struct tg_server *s, unsigned i);

#endif
