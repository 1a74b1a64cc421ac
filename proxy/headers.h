/*
 * headers.h - header fields: syntax checks (RFC 9110 §5, RFC 9113 §8.2),
 * hop-by-hop classification and small token helpers.
 *
 * All functions are pure, take borrowed ranges and never allocate.
 */
#ifndef TG_HEADERS_H
#define TG_HEADERS_H

#include <stdbool.h>
#include <stddef.h>

#include "proxy/buf-t.h"

/* One header field; both ranges borrowed.  Names are lowercase once stored in a tg_req. */
struct tg_header {
    struct tg_iov name;  /* field name */
    struct tg_iov value; /* field value, without surrounding whitespace */
};

/* True when name is a non-empty RFC 9110 token (tchar only). */
bool tg_header_name_valid(struct tg_iov name);
/* True when name is a valid token with no uppercase letter (HTTP/2 rule). */
bool tg_header_name_valid_lower(struct tg_iov name);
/*
 * True when value holds only field-vchar, SP and HTAB, and neither starts
 * nor ends with SP/HTAB (empty is valid).  CR, LF, NUL and other CTLs fail.
 */
bool tg_header_value_valid(struct tg_iov value);
/* True when method is a non-empty token. */
bool tg_method_valid(struct tg_iov method);
/*
 * True when target is an origin-form request target: starts with '/', and
 * holds only visible ASCII (no SP, CTL, DEL, or bytes >= 0x80), or is "*"
 * (the caller checks that the method is OPTIONS).
 */
bool tg_target_valid(struct tg_iov target);
/*
 * True when a host[:port] authority is syntactically sane (reg-name, IPv4 or
 * [IPv6]).  Stricter than RFC 3986: the reg-name (at most 255 bytes) allows
 * only unreserved characters and %XX, not sub-delims or userinfo; an IP literal
 * must parse as IPv6 (no zone id, no IPvFuture); a port, when present, is 1-5
 * digits and at most 65535 (an empty port after ':' is refused).
 */
bool tg_authority_valid(struct tg_iov authority);

/*
 * True for connection-specific fields that a proxy must never forward
 * (compared case-insensitively): connection, keep-alive, proxy-connection,
 * transfer-encoding, te, upgrade, trailer, proxy-authenticate,
 * proxy-authorization, http2-settings, host (rebuilt by tollgate).
 */
bool tg_header_is_hop_by_hop(struct tg_iov name);
/*
 * True when the comma-separated token list (a Connection value) names
 * name, case-insensitively, with optional whitespace around elements.
 */
bool tg_token_list_has(struct tg_iov list, struct tg_iov name);
/*
 * True when an x-request-id value is sane enough to keep: 1..128 chars of
 * [A-Za-z0-9._:-].
 */
bool tg_request_id_sane(struct tg_iov id);
/*
 * True when the path part of target (up to '?') is in a form every server
 * reads the same way: no "." or ".." segment, no backslash, and no
 * percent-encoded '.', '/' or '\\' (%2e %2f %5c, any case).  Routing
 * matches the raw path, so a path an upstream would normalise differently
 * ("/open/../admin") could reach a route it does not match; such paths are
 * refused instead.
 */
bool tg_path_is_normal(struct tg_iov target);
/* Lowercase n ASCII bytes from src into dst (may alias). */
void tg_lowercase(char *dst, const char *src, size_t n);

#endif
