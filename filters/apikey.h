/*
 * apikey.h - hashed API keys: the keys file, lookup, and key generation.
 *
 * Only hashes are stored: "sha256:<64 hex>" (SHA-256 of the whole key) or
 * "hmac-sha256:<64 hex>" (HMAC-SHA256 keyed by the pepper from
 * auth.api_key_pepper_env), so a stolen keys file cannot be brute-forced
 * offline.  A presented key is hashed (both ways when a pepper is set), the
 * hash is looked up in a hash table, and the stored hash is compared with
 * CRYPTO_memcmp.  No plaintext key is kept anywhere after the request.
 */
#ifndef TG_APIKEY_H
#define TG_APIKEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TG_APIKEY_PREFIX "tg_"   /* recognisable by secret scanners */
#define TG_APIKEY_MAX_LEN 256    /* longer presented keys are refused unhashed */
#define TG_APIKEY_HASH_MAX 80    /* room for "hmac-sha256:" + 64 hex + NUL */

/* One entry of the keys file (strings owned by the keyring). */
struct tg_apikey {
    char *id;            /* key id, unique in the file ("team-a-1") */
    char *principal;     /* who the key belongs to */
    char *tenant;        /* tenant, or NULL */
    char *policy;        /* policy name */
    int64_t not_after_ms;/* expiry, ms since the epoch; 0 = none */
    bool disabled;       /* revoked without removing the entry */
};

struct tg_keyring;

/*
 * Load the keys file {"keys":[{"id","hash","principal","tenant","policy",
 * "not_after","disabled"}]}.  id, hash, principal and policy are required;
 * not_after is RFC 3339 UTC ("2027-01-01T00:00:00Z"); unknown keys, duplicate
 * ids and duplicate hashes are errors; an "hmac-sha256:" entry without a
 * pepper (pepper_len 0) is an error.  NULL with "PATH: keys[2].hash: ..." in
 * err on failure.  Blocking (file I/O).
 */
struct tg_keyring *tg_keyring_load(const char *path, const unsigned char *pepper,
                                   size_t pepper_len, char *err, size_t errlen);
/* Free (wipes the pepper copy).  NULL is a no-op. */
void tg_keyring_free(struct tg_keyring *kr);
/* Number of entries. */
size_t tg_keyring_count(const struct tg_keyring *kr);
/* Entry i (0 <= i < count), for listing and tests. */
const struct tg_apikey *tg_keyring_at(const struct tg_keyring *kr, size_t i);

enum tg_apikey_status {
    TG_APIKEY_OK = 0,
    TG_APIKEY_UNKNOWN,  /* no entry has this key's hash (or the key is malformed/too long) */
    TG_APIKEY_EXPIRED,  /* now_ms > not_after */
    TG_APIKEY_DISABLED, /* the entry is disabled */
};

/* Find the entry for a presented key; *out set when the key matched (also when expired/disabled). */
enum tg_apikey_status tg_keyring_lookup(const struct tg_keyring *kr, const char *key, size_t len,
                                        int64_t now_ms, const struct tg_apikey **out);

/*
 * Hash a key as stored in the keys file: "hmac-sha256:<hex>" when pepper_len
 * > 0, else "sha256:<hex>".  out must hold TG_APIKEY_HASH_MAX bytes.  0 or a
 * negative error.
 */
int tg_apikey_hash(const char *key, size_t len, const unsigned char *pepper, size_t pepper_len,
                   char out[TG_APIKEY_HASH_MAX]);
/*
 * A new key: "tg_" followed by 43 base64url characters of 32 random bytes
 * from RAND_bytes (256 bits).  out must hold at least 48 bytes.  0 or a
 * negative error.
 */
int tg_apikey_generate(char *out, size_t outlen);

/*
 * The "tollgate key ..." command line (argv[0] == "key"): "new --id ID [-c
 * FILE]" prints the new key on line 1 and its keys-file entry as one-line
 * JSON on line 2; "hash [-c FILE]" reads a key on stdin (one trailing newline
 * dropped) and prints its hash.  With -c, the config's api_key_pepper_env
 * selects hmac-sha256.  Returns the process exit code.
 */
int tg_cli_key(int argc, char **argv);

#endif
