/*
 * scripts.h - the Redis Lua scripts of lua/, built into the binary.
 *
 * cmake/embed_lua.cmake turns lua/<name>.lua into the array tg_lua_<name>
 * (the file's bytes plus a terminating NUL) and tg_lua_<name>_len (the byte
 * count without the NUL).  Send exactly _len bytes with SCRIPT LOAD (or EVAL
 * after NOSCRIPT); the SHA-1 Redis answers is the SHA-1 of the file.  The
 * KEYS/ARGV contract and the reply of each script are in its header comment
 * and in filters/quota_script.h.
 */
#ifndef TG_LUA_SCRIPTS_H
#define TG_LUA_SCRIPTS_H

#include <stddef.h>

extern const char tg_lua_admit[];    /* lua/admit.lua: admission, all limits, all or nothing */
extern const size_t tg_lua_admit_len;
extern const char tg_lua_settle[];   /* lua/settle.lua: reservation -> actual, release lease */
extern const size_t tg_lua_settle_len;
extern const char tg_lua_renew[];    /* lua/renew.lua: extend a live concurrency lease */
extern const size_t tg_lua_renew_len;

#endif
