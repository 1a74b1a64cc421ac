/*
 * session.h - the HTTP sessions that run on a tg_conn.
 */
#ifndef TG_SESSION_H
#define TG_SESSION_H

struct tg_conn;

/*
 * Attach an HTTP/1.1 session to c (sets c->sess_ops and c->sess).  0 or
 * TG_E_NOMEM.  The conn calls on_read with the first bytes next.
 */
int tg_h1_attach(struct tg_conn *c);
/*
 * Attach an HTTP/2 server session to c and queue the server's SETTINGS.
 * 0 or a negative error.  h2c marks prior-knowledge plaintext.
 */
int tg_h2_attach(struct tg_conn *c, int h2c);

#endif
