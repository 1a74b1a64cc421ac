#!/usr/bin/python3
"""
make-fixtures.py - regenerate the audit-log fixtures used by
tests/unit/test_audit_writer.c (an interop check of filters/audit_verify.c
against an independent implementation of the line format: Python's json and
hmac modules) and the seeds of fuzz/fuzz_audit_verify.c.

The line format (filters/audit_writer.h): the record serialised compactly with
"prev" as its last member, HMAC-SHA256 over exactly those bytes with the key,
then ,"hmac":"<lowercase hex>" inserted before the closing brace, then "\\n".

Deterministic; run from anywhere:

    /usr/bin/python3 tests/data/audit/make-fixtures.py

Writes:
    tests/data/audit/good.log        8 records, seq 1..8 (non-ASCII text, nesting, null, reals)
    tests/data/audit/rot.0 rot.1     the same chain split in two files (rotation)
    tests/data/audit/mid-chain.log   records 4..8 only (the series starts after an absent file)
    tests/data/audit/repaired.log    a torn line that a restart ended with "\\n" (verifies, with a note)
    fuzz/corpus/audit_verify/*       seeds: first byte = fuzz_audit_verify's mode flags, then the file
"""
import hashlib
import hmac
import json
import os

KEY = b"tollgate-audit-test-key-0123456789abcdef"  # also in test_audit_writer.c and the fuzzer
HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.normpath(os.path.join(HERE, "..", "..", "..", "fuzz", "corpus", "audit_verify"))


def line(rec, seq, prev):
    obj = {"type": rec["type"], "ts": rec["ts"], "seq": seq}
    obj.update({k: v for k, v in rec.items() if k not in ("type", "ts")})
    obj["prev"] = prev
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    mac = hmac.new(KEY, body, hashlib.sha256).hexdigest()
    return body[:-1] + b',"hmac":"' + mac.encode() + b'"}\n', mac


def chain(recs, first_seq=1, prev="0" * 64):
    out = []
    for i, r in enumerate(recs):
        ln, prev = line(r, first_seq + i, prev)
        out.append(ln)
    return out


RECS = [
    {"type": "startup", "ts": "2026-11-25T20:33:00.000001Z", "version": "0.1.0", "config_version": 1},
    {"type": "request", "ts": "2026-11-25T20:33:04.123456Z", "request_id": "r-1",
     "client": {"ip": "203.0.113.7", "port": 51544}, "tls": None, "protocol": "http/1.1",
     "method": "POST", "path": "/v1/chat/completions", "decision": "allow", "reason": None,
     "status": 200, "usage": {"prompt_tokens": 812, "completion_tokens": 256, "source": "upstream"},
     "cost": 0.000316, "timing_ms": {"total": 1834.2, "auth": 0.01}},
    {"type": "request", "ts": "2026-11-25T20:33:05.000000Z", "request_id": "r-2",
     "decision": "deny", "reason": "auth.invalid_key", "status": 401},
    {"type": "request", "ts": "2026-11-25T20:33:06.000000Z", "request_id": "r-3 \u00e9\u4e2d\U0001f600",
     "path": "/v1/models?q=\"x\"\\n", "decision": "allow", "status": 200},
    {"type": "config_reload", "ts": "2026-11-25T20:34:00.000000Z", "accepted": False,
     "error": "routes[2].upstream: unknown upstream \"b\""},
    {"type": "request", "ts": "2026-11-25T20:35:00.000000Z", "request_id": "r-4",
     "decision": "deny", "reason": "quota.tokens_per_minute", "status": 429, "degraded": True},
    {"type": "request", "ts": "2026-11-25T20:35:01.000000Z", "request_id": "r-5", "bytes": {"in": 0, "out": 0},
     "list": [1, 2.5, -3, "x", None, {}]},
    {"type": "shutdown", "ts": "2026-11-25T20:36:00.000000Z", "seq_note": "last"},
]


def write(path, lines):
    with open(path, "wb") as f:
        f.write(b"".join(lines))


def main():
    lines = chain(RECS)
    write(os.path.join(HERE, "good.log"), lines)
    write(os.path.join(HERE, "rot.0"), lines[:5])
    write(os.path.join(HERE, "rot.1"), lines[5:])
    write(os.path.join(HERE, "mid-chain.log"), lines[3:])
    # A crash cut record 4 short; the restart ended it with "\n" and wrote
    # record 4 again (same seq, same prev) and the rest.
    write(os.path.join(HERE, "repaired.log"), lines[:3] + [lines[3][:40] + b"\n"] + lines[3:])

    os.makedirs(CORPUS, exist_ok=True)
    seeds = {
        "good": b"\x00" + b"".join(lines),
        "good-resign": b"\x01" + b"".join(lines),
        "good-rechain": b"\x05" + b"".join(lines),
        "split": b"\x02" + b"".join(lines),
        "repaired": b"\x00" + b"".join(lines[:3] + [lines[3][:40] + b"\n"] + lines[3:]),
        "torn-end": b"\x00" + b"".join(lines[:-1]) + lines[-1][:50],
        "swap": b"\x00" + b"".join(lines[:4] + [lines[5], lines[4]] + lines[6:]),
        "dup": b"\x00" + b"".join(lines[:4] + [lines[2]] + lines[4:]),
        "removed": b"\x00" + b"".join(lines[:4] + lines[5:]),
        "edited-rechain": b"\x05" + b"".join(lines[:2] + [lines[2].replace(b"r-2", b"r-9")] + lines[3:]),
        "mid-chain": b"\x00" + b"".join(lines[3:]),
        "empty": b"\x00",
        "writer-good": b"\x08" + b"".join(lines),
        "writer-torn": b"\x08" + b"".join(lines[:-1]) + lines[-1][:50],
        "writer-rechain": b"\x0d" + b"".join(lines[3:]),
        "writer-empty": b"\x08",
    }
    for name, data in seeds.items():
        write(os.path.join(CORPUS, name), [data])


if __name__ == "__main__":
    main()
