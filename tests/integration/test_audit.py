"""The audit log end to end (SPEC §2 `audit verify`, §7; THREATS §6).

Every test runs the real binary with an "audit" block (the file in tmp_path,
the HMAC key in an environment variable) and reads the file back, either
after tollgate stopped (the writer flushed and wrote its `shutdown` record)
or by polling it while tollgate runs.  The chain is checked twice: by an
independent re-implementation here (`check_chain`, the exact bytes of
docs/audit.md) and by `tollgate audit verify`.

Write failures are made real with a small tmpfs (mount -t tmpfs, as root):
a filler file takes the space, writes fail with ENOSPC, and removing the
filler gives the space back to the running process."""
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from authdata import (AUDIENCE, ISSUER, PEPPER, Client, Material, bearer, flip_char,
                      key_entry, new_api_key, write_keys)
from conftest import SLOW, TG_BIN, base_config, free_port
from helpers import H1Conn, H2Client, chat_body, raw_exchange

KEY = "audit-hmac-key-for-the-tests-" + "0123456789abcdef" * 2  # >= 32 bytes
ZEROS = "0" * 64
ENV = {"TG_AUDIT_KEY": KEY, "TG_PEPPER": PEPPER}

# Members every request record carries (SPEC §7 "at least", plus the chain).
REQUEST_FIELDS = ("type", "ts", "seq", "request_id", "client", "tls", "protocol", "method",
                  "path", "route", "config_version", "auth", "decision", "reason", "status",
                  "upstream", "usage", "bytes", "timing_ms", "prev", "hmac")
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------------------------------------
# Helpers

def audit_block(path, **over):
    a = {"file": str(path), "hmac_key_env": "TG_AUDIT_KEY", "fsync": "interval",
         "fsync_interval_ms": 200}
    a.update(over)
    return a


def audited_config(demo, path, **audit_over):
    cfg = base_config(demo)
    cfg["audit"] = audit_block(path, **audit_over)
    return cfg


def admin_block():
    return {"address": "127.0.0.1", "port": free_port()}


def lines_of(path):
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path} does not end with a newline: {data[-200:]!r}"
    return data.decode().split("\n")[:-1]


def records(path):
    return [json.loads(ln) for ln in lines_of(path)]


def requests_of(recs):
    return [r for r in recs if r["type"] == "request"]


def check_chain(paths, key=KEY):
    """Re-implements the chain of docs/audit.md: each line ends with
    ,"hmac":"<hex>"} and hex = HMAC-SHA256(key, the line without that member,
    i.e. the bytes before it plus "}"); prev = the previous hmac (zeros for
    seq 1); seq + 1 each line, across the files in order."""
    prev, seq = None, None
    for p in paths:
        for i, ln in enumerate(lines_of(p), 1):
            where = f"{p.name}:{i}"
            m = re.search(r',"hmac":"([0-9a-f]{64})"\}$', ln)
            assert m, f"{where}: no trailing hmac member: {ln[-120:]}"
            body = ln[:m.start()] + "}"
            want = hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()
            assert m.group(1) == want, f"{where}: hmac does not match"
            r = json.loads(ln)
            keys = list(r)
            assert keys[:3] == ["type", "ts", "seq"], (where, keys)
            assert keys[-2:] == ["prev", "hmac"], (where, keys)
            assert TS_RE.match(r["ts"]), (where, r["ts"])
            if seq is None:
                if r["seq"] == 1:
                    assert r["prev"] == ZEROS, where
            else:
                assert r["seq"] == seq + 1, f"{where}: seq {r['seq']} after {seq}"
                assert r["prev"] == prev, f"{where}: prev is not the previous hmac"
            prev, seq = r["hmac"], r["seq"]
    return seq


def verify(*files, key=KEY, config=None, env_extra=None):
    """Run `tollgate audit verify`; the key in TOLLGATE_AUDIT_KEY unless config is given."""
    env = {k: v for k, v in os.environ.items() if k not in ("TOLLGATE_AUDIT_KEY",)}
    args = [TG_BIN, "audit", "verify"]
    if config is not None:
        args += ["-c", str(config)]
        env.update(ENV)
    elif key is not None:
        env["TOLLGATE_AUDIT_KEY"] = key
    env.update(env_extra or {})
    return subprocess.run(args + [str(f) for f in files], capture_output=True, text=True,
                          env=env, timeout=30)


def wait_for(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout * SLOW
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def file_requests(path):
    """Request records in the file now (tollgate running; complete lines only)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    data = data[:data.rfind(b"\n") + 1]
    return [json.loads(x) for x in data.decode().split("\n")[:-1]
            if json.loads(x)["type"] == "request"]


def stop_ok(t):
    code = t.stop()
    assert code == 0, f"tollgate exited {code}\n{t.stderr()}"


def admin_get(port, path, timeout=5.0):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}",
                                    timeout=timeout * SLOW) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(port, name):
    _, text = admin_get(port, "/metrics")
    for ln in text.splitlines():
        if ln.startswith(name + " ") or ln.startswith(name + "{"):
            return float(ln.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def h1_get(port, path, headers=(), timeout=10.0):
    c = H1Conn(port, timeout=timeout)
    try:
        st, _, body = c.request("GET", path, headers=headers, timeout=timeout)
        return st, body
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# One record per request, whatever the outcome

@pytest.fixture(scope="module")
def mat():
    return Material()


@pytest.fixture(scope="module")
def keys():
    return {"std": new_api_key(), "open": new_api_key(), "peppered": new_api_key()}


def auth_setup(cfg, d, mat, keys):
    entries = [key_entry("std-1", keys["std"], "team-a", "standard", "acme"),
               key_entry("open-1", keys["open"], "team-o", "open", "globex"),
               key_entry("pep-1", keys["peppered"], "team-p", "standard", "pep",
                         hmac_pepper=PEPPER)]
    cfg["auth"] = {
        "api_keys_file": str(write_keys(d / "keys.json", entries)),
        "jwt": [{"issuer": ISSUER, "audiences": [AUDIENCE],
                 "jwks_file": str(mat.write_jwks(d / "jwks.json")),
                 "algorithms": ["RS256"], "principal_claim": "sub", "tenant_claim": "tenant",
                 "default_policy": "standard"}],
        "api_key_pepper_env": "TG_PEPPER",
        "failed_auth_per_minute_per_ip": 1000000,
    }
    cfg["policies"] = {"standard": {"models": ["demo-*"]}, "open": {}}
    return cfg


def outcome_config(demo, d, mat, keys, log):
    cfg = base_config(demo)
    dead = f"127.0.0.1:{free_port()}"
    cfg["upstreams"] = [
        {"name": "demo", "servers": [demo.addr], "first_byte_timeout_ms": 10000},
        {"name": "dead", "servers": [dead], "connect_timeout_ms": 2000},
        {"name": "slow", "servers": [demo.addr], "first_byte_timeout_ms": 400},
    ]
    cfg["routes"] = [
        {"path_prefix": "/v1/", "upstream": "demo", "api": "openai"},
        {"path_prefix": "/echo", "upstream": "demo"},
        {"path_prefix": "/echo/dead", "upstream": "dead"},
        {"path_prefix": "/echo/slow", "upstream": "slow"},
        {"path_prefix": "/echo/open-only", "upstream": "demo", "policies": ["open"]},
    ]
    cfg["limits"]["max_body_bytes"] = 4096
    cfg["admin"] = admin_block()
    cfg["audit"] = audit_block(log)
    return auth_setup(cfg, d, mat, keys), dead


def test_one_record_per_request_for_every_outcome(start_tollgate, fresh_demo, tmp_path, mat,
                                                  keys):
    log = tmp_path / "audit.log"
    cfg, dead = outcome_config(fresh_demo, tmp_path, mat, keys, log)
    t = start_tollgate(cfg, env=ENV)
    std = bearer(keys["std"])
    h1, h2c, h2 = Client(t, "h1"), Client(t, "h2c"), Client(t, "h2tls")
    sent = 0
    # path in the record -> what it must say
    want = {}

    def expect(path, **fields):
        want[path] = fields

    r = h1.get("/echo/ok-h1?q=1", headers=std + [("x-request-id", "trace-abc-123")])
    assert r.status == 200, r
    sent += 1
    expect("/echo/ok-h1", status=200, decision="allow", reason=None, protocol="http/1.1",
           tls=None, route="/echo", request_id="trace-abc-123", method="GET",
           bytes_out=len(r.body))
    r = h2c.get("/echo/ok-h2c", headers=std)
    assert r.status == 200, r
    sent += 1
    expect("/echo/ok-h2c", status=200, decision="allow", reason=None, protocol="h2c", tls=None,
           bytes_out=len(r.body))
    r = h2.get("/echo/ok-h2", headers=std)
    assert r.status == 200, r
    sent += 1
    expect("/echo/ok-h2", status=200, decision="allow", reason=None, protocol="h2",
           tls="TLSv1.3", bytes_out=len(r.body))
    body = chat_body(4, stream=False)
    r = h1.post("/v1/chat/completions", body, headers=std)
    assert r.status == 200, r
    sent += 1
    expect("/v1/chat/completions", status=200, decision="allow", reason=None, method="POST",
           model="demo-model", stream=False, route="/v1/", bytes_in=len(body),
           bytes_out=len(r.body))

    r = h1.get("/nowhere", headers=std)
    assert r.status == 404, r
    sent += 1
    expect("/nowhere", status=404, decision="deny", reason="route.not_found", route=None,
           upstream=None)
    r = h1.get("/echo/no-credentials")
    assert r.status == 401, r
    sent += 1
    expect("/echo/no-credentials", status=401, decision="deny", reason="auth.missing",
           auth=None, upstream=None)
    r = h2c.get("/echo/bad-key", headers=bearer(new_api_key()))
    assert r.status == 401, r
    sent += 1
    expect("/echo/bad-key", status=401, decision="deny", reason="auth.invalid_key", auth=None,
           upstream=None)
    r = h1.get("/echo/open-only/x", headers=std)
    assert r.status == 403, r
    sent += 1
    expect("/echo/open-only/x", status=403, decision="deny", reason="authz.route",
           route="/echo/open-only", upstream=None)
    r = h2c.post("/v1/completions", json.dumps({"model": "gpt-4", "prompt": "x"}).encode(),
                 headers=std)
    assert r.status == 403, r
    sent += 1
    expect("/v1/completions", status=403, decision="deny", reason="authz.model", model="gpt-4",
           upstream=None)
    c = H1Conn(t.port())
    try:
        st, _, _ = c.request("POST", "/echo/too-big", headers=std + [("Content-Length", "100000")])
    finally:
        c.close()
    assert st == 413
    sent += 1
    expect("/echo/too-big", status=413, decision="deny", reason="limits.body_size", upstream=None,
           bytes_in=0)

    r = h1.get("/echo/dead", headers=std)
    assert r.status == 502, r
    sent += 1
    expect("/echo/dead", status=502, decision="allow", reason="upstream.error")
    r = h1.get("/echo/slow", headers=std + [("x-demo-mode", "delay-first-byte=3000")])
    assert r.status == 504, r
    sent += 1
    expect("/echo/slow", status=504, decision="allow", reason="upstream.timeout",
           upstream=fresh_demo.addr)
    r = h1.get("/echo/upstream-status", headers=std + [("x-demo-mode", "status=503")])
    assert r.status == 503, r
    sent += 1
    expect("/echo/upstream-status", status=503, decision="allow", reason=None,
           upstream=fresh_demo.addr)

    # A client that goes away after the first event of a slow stream.
    c = H1Conn(t.port())
    try:
        body = chat_body(50)
        c.send(b"POST /v1/chat/completions?stream=abort HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"authorization: Bearer " + keys["std"].encode() + b"\r\n"
               b"x-demo-mode: delay-between=200\r\ncontent-type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status, _, _ = c.read_head()
        assert status == 200
        deadline = time.monotonic() + 5 * SLOW
        while b"\n\n" not in c.buf:
            assert c._recv_some(deadline)
    finally:
        c.close()
    sent += 1
    aborted_bytes_in = len(body)

    # A malformed head (raw socket): answered 400 before a request exists.
    resp, _ = raw_exchange(t.port(), b"GET /echo HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 400 "), resp[:100]
    sent += 1

    # The writer keeps tollgate_audit_last_seq at the last line it wrote.
    def settled():
        recs = file_requests(log)
        return len(recs) == sent and recs
    wait_for(settled, 10, "every request record to be written")
    last = records(log)[-1]["seq"]
    assert metric(cfg["admin"]["port"], "tollgate_audit_last_seq") == last
    assert metric(cfg["admin"]["port"], "tollgate_audit_write_errors_total") == 0
    stop_ok(t)

    recs = records(log)
    assert recs[0]["type"] == "startup" and recs[0]["seq"] == 1, recs[0]
    assert recs[-1]["type"] == "shutdown", recs[-1]
    assert [r["type"] for r in recs[1:-1]] == ["request"] * sent, [r["type"] for r in recs]
    assert check_chain([log]) == len(recs)

    reqs = requests_of(recs)
    raw = [r for r in reqs if r["status"] == 400]
    assert len(raw) == 1, raw
    assert raw[0]["decision"] == "deny" and raw[0]["reason"] == "limits.invalid_request", raw[0]
    assert raw[0]["protocol"] == "http/1.1" and raw[0]["client"]["ip"] == "127.0.0.1", raw[0]
    by_path = {}
    for r in reqs:
        if r is raw[0]:
            continue  # its schema has a test of its own below
        missing = [f for f in REQUEST_FIELDS if f not in r]
        assert not missing, f"record lacks {missing}: {r}"
        assert isinstance(r["client"]["port"], int) and r["client"]["ip"] == "127.0.0.1", r
        assert r["usage"]["source"] in ("upstream", "observed", "none"), r
        assert set(r["bytes"]) >= {"in", "out"}, r
        assert isinstance(r["timing_ms"]["total"], (int, float)), r
        assert r["timing_ms"]["total"] >= 0, r
        assert r["config_version"] == 1, r
        assert "?" not in r["path"], r
        by_path.setdefault(r["path"], []).append(r)

    aborted = [r for r in by_path.pop("/v1/chat/completions") if r["reason"] == "client.aborted"]
    chat_ok = [r for r in reqs if r.get("path") == "/v1/chat/completions"
               and r["reason"] is None]
    assert len(aborted) == 1 and len(chat_ok) == 1, reqs
    by_path["/v1/chat/completions"] = chat_ok
    a = aborted[0]
    assert a["decision"] == "allow" and a["status"] == 200, a
    assert a["bytes"]["out"] > 0 and a["bytes"]["in"] == aborted_bytes_in, a
    assert a["stream"] is True and a["model"] == "demo-model", a

    for path, fields in want.items():
        got = by_path.get(path)
        assert got and len(got) == 1, (path, got)
        rec = got[0]
        for k, v in fields.items():
            if k == "bytes_out":
                assert rec["bytes"]["out"] == v, (k, rec)
            elif k == "bytes_in":
                assert rec["bytes"]["in"] == v, (k, rec)
            else:
                assert rec[k] == v, (k, v, rec)
        if rec["decision"] == "allow" or rec["reason"] in ("authz.route", "authz.model"):
            assert rec["auth"] == {"method": "api_key", "key_id": "std-1",
                                   "principal": "team-a", "tenant": "acme",
                                   "policy": "standard"}, rec
    assert by_path["/echo/dead"][0]["upstream"] == dead
    assert by_path["/echo/ok-h1"][0]["timing_ms"]["upstream_first_byte"] is not None
    assert len({r["request_id"] for r in reqs if r is not raw[0]}) == sent - 1

    r = verify(log)
    assert r.returncode == 0, r
    assert r.stdout.strip() == f"OK: {len(recs)} records, seq 1..{len(recs)}", r


def test_malformed_head_record_has_the_request_schema(start_tollgate, fresh_demo, tmp_path):
    """A head refused before any request exists (h1.c raw_error) still makes
    a request record; SPEC §7 says a request record holds *at least* the
    listed members, so consumers can rely on every key being present (null
    where unknown)."""
    log = tmp_path / "audit.log"
    t = start_tollgate(audited_config(fresh_demo, log), env=ENV)
    resp, _ = raw_exchange(t.port(), b"GET /echo?secret=1 HTTP/1.1\r\nHost: x\r\nbad head\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 400 "), resp[:100]
    stop_ok(t)
    reqs = requests_of(records(log))
    assert len(reqs) == 1, reqs
    r = reqs[0]
    assert r["status"] == 400 and r["reason"] == "limits.invalid_request", r
    missing = [f for f in REQUEST_FIELDS if f not in r]
    assert not missing, f"the malformed-head record lacks {missing}: {r}"


# ---------------------------------------------------------------------------------------------
# Nothing secret

def test_no_secret_reaches_the_audit_log(start_tollgate, fresh_demo, tmp_path, mat, keys):
    log = tmp_path / "audit.log"
    cfg, _ = outcome_config(fresh_demo, tmp_path, mat, keys, log)
    t = start_tollgate(cfg, env=ENV)
    secret = f"SECRET-PROMPT-{uuid.uuid4()}"
    jwt_tok = mat.token(tenant="tenant-jwt")
    bad_key = new_api_key()
    bad_jwt = flip_char(jwt_tok, len(jwt_tok) - 5)
    h1, h2c, h2 = Client(t, "h1"), Client(t, "h2c"), Client(t, "h2tls")
    completions = []

    def chat(client, hdrs):
        b = json.dumps({"model": "demo-model", "max_tokens": 12, "stream": False,
                        "messages": [{"role": "user", "content": secret}]}).encode()
        r = client.post(f"/v1/chat/completions?prompt={secret}", b, headers=hdrs)
        assert r.status == 200, r
        completions.append(r.json()["choices"][0]["message"]["content"])

    chat(h1, bearer(keys["std"]))
    chat(h2c, bearer(jwt_tok))
    chat(h2, [("x-api-key", keys["peppered"])])
    r = h1.post(f"/echo/s?prompt={secret}", secret.encode(), headers=[("x-api-key", keys["open"])])
    assert r.status == 200 and secret.encode() in r.body, r  # the echo returned it
    r = h2c.get(f"/echo/s?prompt={secret}", headers=bearer(bad_key))
    assert r.status == 401, r
    r = h1.get(f"/echo/s?prompt={secret}", headers=bearer(bad_jwt))
    assert r.status == 401, r
    r = h1.get(f"/echo/s?{secret}", headers=[("authorization", f"Basic {secret}")])
    assert r.status == 401, r
    stop_ok(t)

    text = log.read_text()
    recs = records(log)
    assert len(requests_of(recs)) == 7
    # Sanity: the records are there and identify callers by key id only.
    ids = [r["auth"] and r["auth"]["key_id"] for r in requests_of(recs)]
    assert ids[:4] == ["std-1", None, "pep-1", "open-1"], ids
    assert requests_of(recs)[1]["auth"]["method"] == "jwt", recs
    assert requests_of(recs)[1]["auth"]["principal"] == "user-1", recs
    needles = {"prompt": secret, "api key": keys["std"], "peppered key": keys["peppered"],
               "x-api-key": keys["open"], "jwt": jwt_tok, "jwt signature":
               jwt_tok.rsplit(".", 1)[1], "jwt payload": jwt_tok.split(".")[1],
               "wrong key": bad_key, "wrong jwt": bad_jwt, "pepper": PEPPER, "hmac key": KEY,
               "Bearer": "Bearer", "Basic": "Basic"}
    for i, c in enumerate(completions):
        assert len(c) > 20, c
        needles[f"completion {i}"] = c
    for what, s in needles.items():
        assert s not in text, f"the {what} appears in the audit log"
    assert "SECRET-PROMPT" not in text


# ---------------------------------------------------------------------------------------------
# tollgate audit verify

@pytest.fixture
def small_log(start_tollgate, fresh_demo, tmp_path):
    """A finished log: startup, 6 requests, shutdown (8 lines)."""
    log = tmp_path / "audit.log"
    t = start_tollgate(audited_config(fresh_demo, log), env=ENV)
    for i in range(6):
        assert h1_get(t.port(), f"/echo/v{i}")[0] == 200
    stop_ok(t)
    assert len(lines_of(log)) == 8
    return t, log


def tampered(log, name, lines):
    p = log.with_name(name)
    p.write_text("".join(ln + "\n" for ln in lines))
    return p


def test_verify_untouched_log(small_log):
    t, log = small_log
    r = verify(log)
    assert r.returncode == 0, r
    assert r.stdout == "OK: 8 records, seq 1..8\n", r
    assert r.stderr == "", r
    # The key from the configuration's hmac_key_env instead of TOLLGATE_AUDIT_KEY.
    r = verify(log, config=t.path, key=None)
    assert r.returncode == 0, r
    assert r.stdout.startswith("OK: 8 records"), r
    check_chain([log])


def test_verify_names_the_edited_line(small_log):
    _, log = small_log
    ls = lines_of(log)
    i = ls[3].index('"path":"/echo/v2"') + len('"path":"/echo/')
    ls[3] = ls[3][:i] + "w" + ls[3][i + 1:]
    p = tampered(log, "edited.log", ls)
    r = verify(p)
    assert r.returncode == 1, r
    assert f"{p}:4: hmac mismatch" in r.stderr, r
    # One byte of the hmac itself.
    ls = lines_of(log)
    ls[4] = ls[4][:-3] + ("0" if ls[4][-3] != "0" else "1") + ls[4][-2:]
    p = tampered(log, "edited2.log", ls)
    r = verify(p)
    assert r.returncode == 1 and f"{p}:5: hmac mismatch" in r.stderr, r


def test_verify_names_a_deleted_line(small_log):
    _, log = small_log
    ls = lines_of(log)
    del ls[3]
    p = tampered(log, "deleted.log", ls)
    r = verify(p)
    assert r.returncode == 1, r
    assert f"{p}:4: seq 5 follows 3 (line removed)" in r.stderr, r


def test_verify_names_an_inserted_copy(small_log):
    _, log = small_log
    ls = lines_of(log)
    ls.insert(4, ls[3])
    p = tampered(log, "inserted.log", ls)
    r = verify(p)
    assert r.returncode == 1, r
    assert f"{p}:5: seq 4 follows 4 (line inserted" in r.stderr, r


def test_verify_names_swapped_lines(small_log):
    _, log = small_log
    ls = lines_of(log)
    ls[3], ls[4] = ls[4], ls[3]
    p = tampered(log, "swapped.log", ls)
    r = verify(p)
    assert r.returncode == 1, r
    assert f"{p}:4: seq 5 follows 3 (lines reordered" in r.stderr, r


def test_verify_wrong_key_and_usage(small_log, tmp_path):
    _, log = small_log
    r = verify(log, key="another-key-of-at-least-32-bytes-xxxxxxxx")
    assert r.returncode == 1, r
    assert f"{log}:1: hmac mismatch" in r.stderr, r
    r = verify(log, key="short")
    assert r.returncode == 1 and "shorter than 32 bytes" in r.stderr, r
    r = verify(log, key=None)
    assert r.returncode == 1 and "TOLLGATE_AUDIT_KEY is not set" in r.stderr, r
    r = verify(tmp_path / "absent.log")
    assert r.returncode == 1 and str(tmp_path / "absent.log") in r.stderr, r
    r = subprocess.run([TG_BIN, "audit", "verify"], capture_output=True, text=True)
    assert r.returncode == 2, r


def test_verify_tail_cut_is_invisible_but_a_torn_line_is_not(small_log):
    """What a chain cannot show: whole lines cut from the end.  The shutdown
    record (and tollgate_audit_last_seq) are the outside reference."""
    _, log = small_log
    ls = lines_of(log)
    p = tampered(log, "cut.log", ls[:-2])
    r = verify(p)
    assert r.returncode == 0 and "6 records, seq 1..6" in r.stdout, r
    assert json.loads(ls[-3])["type"] != "shutdown"  # what tells the cut
    torn = log.with_name("torn.log")
    torn.write_text("".join(ln + "\n" for ln in ls[:-1]) + ls[-1][:40])
    r = verify(torn)
    assert r.returncode == 1 and f"{torn}:8: torn last line" in r.stderr, r


# ---------------------------------------------------------------------------------------------
# Rotation, restart, reload

def test_rotation_keeps_one_chain(start_tollgate, fresh_demo, tmp_path):
    log = tmp_path / "audit.log"
    old = tmp_path / "audit.log.1"
    t = start_tollgate(audited_config(fresh_demo, log), env=ENV)
    for i in range(3):
        assert h1_get(t.port(), f"/echo/before{i}")[0] == 200
    wait_for(lambda: len(file_requests(log)) == 3, what="3 records")
    os.rename(log, old)
    t.signal(signal.SIGUSR1)
    wait_for(log.exists, what="the reopened audit.log")
    for i in range(4):
        assert h1_get(t.port(), f"/echo/after{i}")[0] == 200
    stop_ok(t)

    a, b = records(old), records(log)
    assert [r["type"] for r in a] == ["startup", "request", "request", "request"], a
    assert [r["type"] for r in b] == ["request"] * 4 + ["shutdown"], b
    assert b[0]["seq"] == a[-1]["seq"] + 1 and b[0]["prev"] == a[-1]["hmac"]
    assert [r["path"] for r in b[:4]] == [f"/echo/after{i}" for i in range(4)]
    assert oct(log.stat().st_mode & 0o777) == "0o640"
    check_chain([old, log])
    r = verify(old, log)
    assert r.returncode == 0 and "OK: 9 records, seq 1..9" in r.stdout, r
    r = verify(log, old)
    assert r.returncode == 1, r
    assert f"{old}:1: seq 1 follows 9 at {log}:5 (files out of order)" in r.stderr, r
    r = verify(log)  # the newest file alone: its series starts after an absent file
    assert r.returncode == 0 and "seq 5..9" in r.stdout, r


def test_restart_continues_the_chain(start_tollgate, fresh_demo, tmp_path):
    log = tmp_path / "audit.log"
    cfg = audited_config(fresh_demo, log)
    t = start_tollgate(cfg, env=ENV)
    assert h1_get(t.port(), "/echo/first")[0] == 200
    stop_ok(t)
    first = records(log)
    t = start_tollgate(cfg, env=ENV)
    assert h1_get(t.port(), "/echo/second")[0] == 200
    stop_ok(t)
    recs = records(log)
    assert recs[:len(first)] == first
    new = recs[len(first)]
    assert new["type"] == "startup", new
    assert new["seq"] == first[-1]["seq"] + 1 and new["prev"] == first[-1]["hmac"], new
    assert [r["type"] for r in recs] == ["startup", "request", "shutdown"] * 2
    assert check_chain([log]) == 6
    r = verify(log)
    assert r.returncode == 0 and "OK: 6 records, seq 1..6" in r.stdout, r


def test_restart_refuses_a_tampered_tail(start_tollgate, fresh_demo, tmp_path):
    """The writer checks the last line's hmac before continuing its chain."""
    log = tmp_path / "audit.log"
    cfg = audited_config(fresh_demo, log)
    t = start_tollgate(cfg, env=ENV)
    stop_ok(t)
    data = log.read_text()
    log.write_text(data.replace('"type":"shutdown"', '"type":"shutdowN"'))
    r = subprocess.run([TG_BIN, "-c", str(t.path)], capture_output=True, text=True, timeout=20,
                       env={**os.environ, **ENV})
    assert r.returncode == 1, r
    assert "refusing to continue its chain" in r.stderr, r


def test_reload_records(start_tollgate, fresh_demo, tmp_path):
    log = tmp_path / "audit.log"
    cfg = audited_config(fresh_demo, log)
    t = start_tollgate(cfg, env=ENV)
    assert h1_get(t.port(), "/new/x")[0] == 404

    def reloads():
        return [r for r in records(log) if r["type"] == "config_reload"] if log.exists() else []

    cfg["routes"].append({"path_prefix": "/new", "upstream": "demo"})
    t.path.write_text(json.dumps(cfg))
    t.signal(signal.SIGHUP)
    wait_for(lambda: len(reloads()) == 1, what="the accepted reload record")
    ok = reloads()[0]
    assert ok["result"] == "accepted" and ok["error"] is None, ok
    assert ok["config"]["version"] == 2 and HEX64.match(ok["config"]["sha256"]), ok
    # Now routed: the demo itself answers 404 for a path it does not know.
    st, body = h1_get(t.port(), "/new/x")
    assert st == 404 and b"route_not_found" not in body, body

    t.path.write_text('{"workers": 1, "listeners": [')
    t.signal(signal.SIGHUP)
    wait_for(lambda: len(reloads()) == 2, what="the rejected reload record")
    bad = reloads()[1]
    assert bad["result"] == "rejected", bad
    assert isinstance(bad["error"], str) and str(t.path) in bad["error"], bad
    assert "config" not in bad or bad["config"]["version"] == 2, bad
    assert h1_get(t.port(), "/echo/still")[0] == 200  # the old config keeps serving
    stop_ok(t)
    recs = records(log)
    assert recs[0]["config"]["version"] == 1 and recs[-1]["config"]["version"] == 2
    reqs = requests_of(recs)
    assert [r["config_version"] for r in reqs] == [1, 2, 2], reqs
    assert reqs[0]["reason"] == "route.not_found", reqs[0]
    assert reqs[1]["route"] == "/new" and reqs[1]["decision"] == "allow", reqs[1]
    assert reqs[1]["status"] == 404 and reqs[1]["reason"] is None, reqs[1]
    check_chain([log])
    assert verify(log).returncode == 0


# ---------------------------------------------------------------------------------------------
# A full disk

class SmallDisk:
    """A tmpfs of a few hundred KiB; fill() takes all its space with a filler
    file, free() gives it back."""

    def __init__(self, where, size="256k"):
        self.dir = where
        self.dir.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                            str(self.dir)], capture_output=True, text=True)
        assert r.returncode == 0, f"cannot mount a tmpfs (root is needed): {r.stderr}"
        self.filler = self.dir / "filler"

    def fill(self):
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        # Nothing more fits in a new page.
        with pytest.raises(OSError):
            with open(self.dir / "probe", "wb", buffering=0) as f:
                f.write(b"x" * 8192)
        (self.dir / "probe").unlink(missing_ok=True)

    def free(self):
        self.filler.unlink()

    def close(self):
        # Runs before start_tollgate's teardown stops tollgate: give the space
        # back first so a test that failed early does not leave it stuck.
        self.filler.unlink(missing_ok=True)
        r = subprocess.run(["umount", str(self.dir)], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True)


@pytest.fixture
def disk(tmp_path):
    d = SmallDisk(tmp_path / "disk")
    yield d
    d.close()


def disk_full_tollgate(start_tollgate, demo, disk, mode, queue=16):
    log = disk.dir / "audit.log"
    cfg = audited_config(demo, log, queue_records=queue, on_queue_full=mode, fsync="always")
    cfg["admin"] = admin_block()
    cfg["limits"]["shutdown_grace_ms"] = 500
    t = start_tollgate(cfg, env=ENV)
    wait_for(lambda: log.exists() and log.stat().st_size > 0, what="the startup record")
    disk.fill()
    return t, log, cfg["admin"]["port"]


def test_full_disk_reject_answers_503_and_recovers(start_tollgate, fresh_demo, disk):
    """on_queue_full "reject", queue_records 16, the disk full after the
    startup record.  Requests are sent one at a time.  Asserted:
    - the answers are some 200s, then only 503 audit.unavailable (once the
      queue is full nothing is served unaudited); at least 16 are 200;
    - meanwhile /readyz is 503 not_ready and the write-error counter grows;
    - after the filler is removed, every request that was answered 200 has
      its record, in order, nothing else was written for the 503s (their
      records were refused by the full queue and counted in
      tollgate_audit_dropped_total, one per 503), and the chain verifies;
    - new requests are served and recorded again, /readyz is ready."""
    t, log, admin = disk_full_tollgate(start_tollgate, fresh_demo, disk, "reject")
    statuses = []
    for i in range(40):
        st, body = h1_get(t.port(), f"/echo/full{i}")
        statuses.append(st)
        if st == 503:
            assert json.loads(body)["error"]["code"] == "unavailable", body
    served = [i for i, s in enumerate(statuses) if s == 200]
    refused = [i for i, s in enumerate(statuses) if s == 503]
    assert len(served) + len(refused) == 40, statuses
    assert len(served) >= 16 and refused, statuses
    assert served == list(range(len(served))), f"a 200 after a 503: {statuses}"
    st, body = admin_get(admin, "/readyz")
    assert st == 503 and json.loads(body)["status"] == "not_ready", (st, body)
    assert "audit" in json.loads(body)["reason"], body
    assert metric(admin, "tollgate_audit_write_errors_total") >= 1
    assert metric(admin, "tollgate_audit_dropped_total") == len(refused)
    assert metric(admin, "tollgate_audit_queue_depth") == 16

    disk.free()
    wait_for(lambda: len(file_requests(log)) == len(served), 5, "the held records to land")
    wait_for(lambda: admin_get(admin, "/readyz")[0] == 200, 5, "/readyz ready")
    assert h1_get(t.port(), "/echo/after")[0] == 200
    wait_for(lambda: len(file_requests(log)) == len(served) + 1, what="the new record")
    stop_ok(t)

    recs = records(log)
    assert recs[0]["type"] == "startup" and recs[-1]["type"] == "shutdown"
    paths = [r["path"] for r in requests_of(recs)]
    assert paths == [f"/echo/full{i}" for i in served] + ["/echo/after"], paths
    assert not [r for r in requests_of(recs) if r["reason"] == "audit.unavailable"]
    check_chain([log])
    r = verify(log)
    assert r.returncode == 0 and f"OK: {len(recs)} records" in r.stdout, r


def test_full_disk_reject_never_serves_more_than_it_can_record(start_tollgate, fresh_demo,
                                                               disk):
    """SPEC §7: with "reject" a write error leads to 503s rather than
    unaudited traffic.  Concurrent requests admitted while the queue still
    had room must all be recorded, so admission has to account for the
    records of requests already in flight.  40 concurrent slow requests
    (300 ms at the upstream) against a 16-record queue on a full disk:
    every request answered 200 must have its record once space returns."""
    t, log, admin = disk_full_tollgate(start_tollgate, fresh_demo, disk, "reject")
    statuses = [None] * 40

    def one(i):
        try:
            statuses[i] = h1_get(t.port(), f"/echo/c{i}",
                                 headers=[("x-demo-mode", "delay-first-byte=300")])[0]
        except Exception as e:  # noqa: BLE001 - reported below
            statuses[i] = repr(e)

    th = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for x in th:
        x.start()
    for x in th:
        x.join(30 * SLOW)
    assert all(s in (200, 503) for s in statuses), statuses
    served = {f"/echo/c{i}" for i, s in enumerate(statuses) if s == 200}
    dropped = metric(admin, "tollgate_audit_dropped_total")
    disk.free()
    wait_for(lambda: admin_get(admin, "/readyz")[0] == 200, 5, "/readyz ready")
    stop_ok(t)
    recorded = {r["path"] for r in requests_of(records(log)) if r["status"] == 200}
    assert verify(log).returncode == 0
    assert served <= recorded, (
        f"{len(served - recorded)} of {len(served)} requests were served 200 without an audit "
        f"record (tollgate_audit_dropped_total was {dropped:.0f})")


def test_full_disk_block_delays_instead_of_refusing(start_tollgate, fresh_demo, disk):
    """on_queue_full "block": once the queue is full a request is not
    refused; it waits until the disk accepts writes again, then completes.
    One client sends 60 requests one after the other while the disk is
    full: progress stops (no answer for a second) after the queue filled,
    nothing is answered 503, and once the filler is removed the rest are
    served and every request has its record, in order."""
    t, log, admin = disk_full_tollgate(start_tollgate, fresh_demo, disk, "block")
    done = []  # (index, status)

    def sender():
        for i in range(60):
            try:
                st = h1_get(t.port(), f"/echo/b{i}", timeout=30)[0]
            except Exception as e:  # noqa: BLE001 - reported below
                st = repr(e)
            done.append((i, st))

    th = threading.Thread(target=sender)
    th.start()
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + 15 * SLOW
    while True:
        n = len(done)
        assert n < 60, f"all 60 requests were answered while the disk was full: {done}"
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > 1.0 * SLOW:
            break
        assert time.monotonic() < deadline, "requests never stalled"
        time.sleep(0.05)
    stalled = len(done)
    assert stalled >= 16, done
    assert all(st == 200 for _, st in done), done
    assert metric(admin, "tollgate_audit_queue_depth") == 16
    disk.free()
    th.join(30 * SLOW)
    assert [st for _, st in done] == [200] * 60, done
    stop_ok(t)
    recs = records(log)
    paths = [r["path"] for r in requests_of(recs)]
    assert paths == [f"/echo/b{i}" for i in range(60)], paths
    check_chain([log])
    r = verify(log)
    assert r.returncode == 0 and f"OK: {len(recs)} records" in r.stdout, r


def fill_queue_reject(t, limit=80):
    """Sequential requests until the first 503 (the queue is full)."""
    for i in range(limit):
        st, _ = h1_get(t.port(), f"/echo/fill{i}")
        if st == 503:
            return i
        assert st == 200, st
    raise AssertionError(f"no 503 after {limit} requests on a full disk")


def test_full_disk_reload_does_not_freeze_the_admin_listener(start_tollgate, fresh_demo, disk):
    """A SIGHUP while the disk is full and the queue is full: the reload is
    done by the main loop, which also serves the admin listener; its
    config_reload record must not stop /readyz and /metrics from answering
    (SPEC §7: records are written by a dedicated thread, never by an event
    loop).  The record lands once space returns."""
    t, log, admin = disk_full_tollgate(start_tollgate, fresh_demo, disk, "reject")
    fill_queue_reject(t)
    t.cfg["routes"].append({"path_prefix": "/new", "upstream": "demo"})
    t.path.write_text(json.dumps(t.cfg))
    t.signal(signal.SIGHUP)
    time.sleep(0.3)
    try:
        st, body = admin_get(admin, "/readyz", timeout=2.0)
        answered = (st, body)
    except OSError as e:  # socket.timeout is an OSError
        answered = repr(e)
    disk.free()
    assert isinstance(answered, tuple), (
        f"/readyz did not answer after a SIGHUP with a full audit queue: {answered}")
    st, body = answered
    assert st == 503 and json.loads(body)["status"] == "not_ready", answered
    def reload_recorded():
        # While the writer retries after the disk came back (backoff up to
        # 1 s), the file may end in the part of a batch written so far.
        try:
            return any(r["type"] == "config_reload" for r in records(log))
        except AssertionError:
            return False
    wait_for(reload_recorded, 5, "the config_reload record")
    stop_ok(t)
    rel = [r for r in records(log) if r["type"] == "config_reload"]
    assert len(rel) == 1 and rel[0]["result"] == "accepted", rel
    assert verify(log).returncode == 0


def test_full_disk_shutdown_gives_up_after_its_grace(start_tollgate, fresh_demo, disk):
    """SIGTERM while the disk is full and the queue is full: SPEC §2 says
    in-flight requests get shutdown_grace_ms and then tollgate exits 0; the
    writer documents that it retries failing writes for 5 s at stop, then
    logs what it could not write.  So the process must be gone within
    grace + 5 s (plus slack), not wait for the disk for ever."""
    t, log, admin = disk_full_tollgate(start_tollgate, fresh_demo, disk, "reject")
    fill_queue_reject(t)
    grace = t.cfg["limits"]["shutdown_grace_ms"] / 1000.0
    t0 = time.monotonic()
    t.signal(signal.SIGTERM)
    limit = grace + 5.0 + 2.0 * SLOW
    try:
        t.proc.wait(limit)
        secs, hung = time.monotonic() - t0, False
    except subprocess.TimeoutExpired:
        hung = True
        disk.free()  # let it finish so the rest of the test can look at the file
        t.proc.wait(15 * SLOW)
        secs = time.monotonic() - t0
    assert not hung, (f"tollgate did not exit within {limit:.1f}s of SIGTERM while the audit "
                      f"disk was full (exited {secs:.1f}s later, once space returned)")
    assert t.proc.returncode == 0, t.stderr()
    assert "lost" in t.stderr(), t.stderr()
    r = verify(log)
    assert r.returncode == 0, r  # what did reach the file is an intact chain


def test_block_mode_malformed_head_does_not_freeze_the_worker(start_tollgate, fresh_demo, disk):
    """on_queue_full "block" waits for room without blocking the event
    loop (filters/audit.c).  A malformed HTTP/1.1 head refused while the
    queue is full makes a record too; the worker must still answer it (400)
    and go on serving its other connections (an h2c connection gets its
    SETTINGS) while that record waits for room."""
    t, log, admin = disk_full_tollgate(start_tollgate, fresh_demo, disk, "block")
    for i in range(80):
        try:
            st, _ = h1_get(t.port(), f"/echo/fill{i}", timeout=1.0)
        except (TimeoutError, OSError):
            break  # waiting at admission: the queue is full
        assert st == 200, st
    else:
        raise AssertionError("requests never waited on a full disk")
    resp, _ = raw_exchange(t.port(), b"GET /echo HTTP/1.1\r\nHost: x\r\nbad head\r\n\r\n",
                           timeout=2.0)
    try:
        c = H2Client(t.port(), timeout=2.0)
        try:
            settings = c.wait_settings(2.0)
        finally:
            c.close()
    except (TimeoutError, OSError) as e:
        settings = repr(e)
    disk.free()
    assert resp.startswith(b"HTTP/1.1 400 "), f"no 400 for a malformed head: {resp[:100]!r}"
    assert isinstance(settings, dict) and settings, (
        f"the worker stopped serving other connections: {settings}")
    wait_for(lambda: admin_get(admin, "/readyz")[0] == 200, 5, "/readyz ready")
    stop_ok(t)
    assert [r for r in requests_of(records(log)) if r["status"] == 400]
    assert verify(log).returncode == 0


def test_rotation_while_stopped_keeps_the_chain(start_tollgate, fresh_demo, tmp_path):
    """logrotate may run while tollgate is stopped (its postrotate signal
    then finds no process): the file is renamed and an empty one created.
    SPEC §7: the chain runs across rotated files and seq never restarts, so
    the next start must continue from the renamed file's last record."""
    log = tmp_path / "audit.log"
    old = tmp_path / "audit.log.1"
    cfg = audited_config(fresh_demo, log)
    t = start_tollgate(cfg, env=ENV)
    assert h1_get(t.port(), "/echo/one")[0] == 200
    stop_ok(t)
    os.rename(log, old)
    log.touch(mode=0o640)  # logrotate's "create"
    t = start_tollgate(cfg, env=ENV)
    assert h1_get(t.port(), "/echo/two")[0] == 200
    stop_ok(t)
    a, b = records(old), records(log)
    assert b[0]["type"] == "startup", b[0]
    assert b[0]["seq"] == a[-1]["seq"] + 1 and b[0]["prev"] == a[-1]["hmac"], (
        f"the chain started again after a rotation while stopped: {b[0]}")
    r = verify(old, log)
    assert r.returncode == 0, r
