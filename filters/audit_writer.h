/*
 * audit_writer.h - the tamper-evident audit log (SPEC §7).
 *
 * Event loops only enqueue: tg_audit_submit() copies a record into a bounded
 * queue (mutex + condition variable; the critical section is a pointer push)
 * and returns; workers hand over a loop turn's request records at once
 * (tg_audit_submit_batch) and promise slots in batches (tg_audit_reserve_n).
 * One writer thread takes records in order, assigns "seq", serialises each
 * (request records: the text emitter of audit_json.h, which writes the bytes
 * jansson would; other records: jansson, compact, keys in insertion order), chains it
 * with HMAC-SHA256 ("prev" = previous line's "hmac", the very first "prev" is
 * 64 zeros), appends the lines with write(2) on an O_APPEND descriptor in
 * batches, and fsyncs per policy (always: before the batch is acknowledged;
 * interval: at most every fsync_interval_ms; never).
 *
 * Chaining: hmac = HMAC-SHA256(key, the line's JSON text without its "hmac"
 * member, i.e. the exact bytes of the object serialised with "prev" as its
 * last member), written as lowercase hex; the line is that object with
 * ,"hmac":"<hex>" inserted before the closing brace.  At startup the chain
 * continues from the last complete line of an existing file (its seq and
 * hmac); a torn last line (no newline) is reported and left alone (the new
 * record starts on a fresh line after a newline is written).
 *
 * Line layout, exactly: the writer builds {"type","ts","seq",<the caller's
 * other members in insertion order>,"prev"} (a caller's own seq/prev/hmac are
 * ignored), dumps it with JSON_COMPACT | JSON_REAL_PRECISION(15), MACs those
 * bytes, and writes them with the final '}' replaced by
 * ,"hmac":"<64 lowercase hex>"}\n.  The verifier undoes exactly that: the
 * last 75 bytes of a line must be that member.
 */
#ifndef TG_AUDIT_WRITER_H
#define TG_AUDIT_WRITER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest line (record plus newline) the writer produces and the verifier reads. */
#define TG_AUDIT_LINE_MAX (1024 * 1024)

enum tg_audit_fsync {
    TG_AUDIT_FSYNC_ALWAYS = 0,
    TG_AUDIT_FSYNC_INTERVAL = 1,
    TG_AUDIT_FSYNC_NEVER = 2,
};

struct tg_audit_writer;

struct tg_jw;

/*
 * A record made on the writer thread: the event loop queues only a copy of
 * the facts (embedding this struct).  The writer calls emit() when it is
 * set, else build(), and then free().  emit() appends the record's text
 * from '{' through its last member -- "type", "ts", then "seq" (the value
 * given), then the rest, exactly as the compact jansson dump of the same
 * object would read -- with no "prev" and no closing brace; the writer adds
 * ,"prev":"..."} and the hmac.  Keeps JSON work off the event loops.
 */
struct tg_audit_lazy {
    void (*emit)(struct tg_audit_lazy *l, struct tg_jw *j, uint64_t seq); /* or NULL */
    json_t *(*build)(struct tg_audit_lazy *l); /* new object (type/ts set), or NULL */
    void (*free)(struct tg_audit_lazy *l);     /* release the container */
    struct tg_audit_lazy *next;                /* link while batched on a worker */
};

/* One queue slot: a ready record or a builder (internal to the writer). */
struct tg_audit_item {
    json_t *rec;                /* ready record, or NULL */
    struct tg_audit_lazy *lazy; /* builder not yet run, or NULL */
};

/* Settings (strings borrowed for the duration of tg_audit_writer_start). */
struct tg_audit_settings {
    const char *path;                 /* the log file */
    const unsigned char *key;         /* HMAC key bytes */
    size_t keylen;                    /* >= 32 */
    enum tg_audit_fsync fsync;        /* policy */
    uint64_t fsync_interval_ms;       /* for INTERVAL */
    size_t queue_records;             /* queue capacity (records) */
};

/*
 * Open (create, mode 0640) the file, recover the chain from its last line,
 * and start the writer thread.  NULL with a message in err on failure
 * (unreadable/unwritable file, a last line that is not a valid record of
 * this key's chain, thread creation).
 */
struct tg_audit_writer *tg_audit_writer_start(const struct tg_audit_settings *s, char *err,
                                              size_t errlen);
/*
 * Queue a record (takes ownership of rec, a JSON object without seq, prev
 * and hmac; "ts" and "type" are set by the caller).  Never blocks when
 * block is false: returns false (rec freed) when the queue is full.  With
 * block true, waits for room.  Thread-safe.
 */
bool tg_audit_submit(struct tg_audit_writer *w, json_t *rec, bool block);
/*
 * Admission control: promise one queue slot to a request (false when none is
 * free).  A promised slot is used by tg_audit_submit_reserved(), which then
 * never fails for lack of room, or given back by tg_audit_release().  Plain
 * submits only use slots nobody was promised.  Thread-safe.
 */
bool tg_audit_reserve(struct tg_audit_writer *w);
bool tg_audit_submit_reserved(struct tg_audit_writer *w, json_t *rec);
/*
 * Per-worker credit: promise up to want slots in one call (never more than
 * half of the free ones, rounded up, so a worker's credit shrinks to one
 * slot at a time as the queue fills and no worker can hoard what another
 * needs).  Returns how many were promised, 0 when none is free.  Give
 * unused ones back with tg_audit_release_n().  Thread-safe.
 */
size_t tg_audit_reserve_n(struct tg_audit_writer *w, size_t want);
void tg_audit_release_n(struct tg_audit_writer *w, size_t n);
/*
 * Queue a list of builders (linked by next, oldest first), each using a
 * promised slot, under one lock and with at most one wake-up of the writer.
 * *credit is the caller's count of promised slots it still holds: when the
 * queue is more than half full they are given back in the same lock and
 * *credit becomes 0.  Returns the number queued; the others (only while
 * stopping) are freed and counted as dropped.  Thread-safe.
 */
size_t tg_audit_submit_batch(struct tg_audit_writer *w, struct tg_audit_lazy *list, size_t *credit);
/* Queue a builder (reserved: uses a promised slot).  false (and freed) when refused. */
bool tg_audit_submit_lazy(struct tg_audit_writer *w, struct tg_audit_lazy *lazy, bool reserved);
void tg_audit_release(struct tg_audit_writer *w);
/* Ask the writer to reopen the file at its path (logrotate, SIGUSR1).  Thread-safe. */
void tg_audit_reopen(struct tg_audit_writer *w);
/*
 * Write everything queued, fsync, join the thread, free.  While writes fail
 * it keeps retrying for up to 5 s, then logs and counts what it could not
 * write.  No submit may start after (or race with) stop; blocked submitters
 * are woken and get false.  NULL is a no-op.
 */
void tg_audit_writer_stop(struct tg_audit_writer *w);

/* Counters for metrics and /readyz (all thread-safe snapshots). */
struct tg_audit_stats {
    uint64_t last_seq;       /* seq of the last record written */
    uint64_t written;        /* records written since start */
    uint64_t write_errors;   /* failed write(2)/fsync calls */
    uint64_t dropped;        /* records refused because the queue was full */
    uint64_t pending;        /* records queued or being written after an error */
    size_t queue_depth;      /* records waiting now */
    bool healthy;            /* the last write succeeded */
};
void tg_audit_stats(struct tg_audit_writer *w, struct tg_audit_stats *out);
/* True when the queue has room (for on_queue_full "reject" admission). */
bool tg_audit_has_room(struct tg_audit_writer *w);

/*
 * Verify a series of audit files (rotation order, oldest first) against
 * key: every line parses, carries seq/prev/hmac, seq increases by exactly 1,
 * prev equals the previous line's hmac (across files; the very first record
 * must have 64 zeros as prev when its seq is 1, and may have any prev when
 * its seq is larger: the series starts after an older, absent file), and the
 * hmac matches.  A torn last line (no newline) is an error; a torn line that
 * the writer repaired at restart (not a record, and the chain continues
 * across it) is skipped with a note.  Returns 0 when intact, with
 * "N records, seq A..B" (plus any note) in err; else 1 with
 * "FILE:LINE: reason" in err (the first problem found).
 */
int tg_audit_verify_files(const char *const *paths, size_t n, const unsigned char *key,
                          size_t keylen, char *err, size_t errlen);

/* "tollgate audit verify [-c FILE] LOG..." (argv[0] == "audit"); returns the exit code. */
int tg_cli_audit(int argc, char **argv);

#endif
