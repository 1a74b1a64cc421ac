"""The admin listener (SPEC §8): /healthz, /readyz, /metrics (Prometheus text
0.0.4), the optional bearer token on /metrics, and /readyz during a drain.

The admin listener closes each connection after one answer, so every call
here uses a fresh http.client connection."""
import hashlib
import http.client
import json
import re
import signal
import socket
import threading
import time

import pytest

from authdata import bearer, key_entry, new_api_key, write_keys
from conftest import CERTS, SLOW, base_config, free_port, wait_port
from helpers import H1Conn, H2Client, sse_events, chat_body


# ---------------------------------------------------------------------------------------------
# Helpers

def admin_config(demo, **over):
    cfg = base_config(demo, **over)
    cfg["admin"] = {"address": "127.0.0.1", "port": free_port(), **cfg.get("admin", {})}
    return cfg


def start_admin(start_tollgate, cfg, env=None):
    t = start_tollgate(cfg, env)
    wait_port(cfg["admin"]["port"], proc=t.proc)
    return t


def admin_req(t, path, method="GET", headers=None, timeout=5.0):
    """(status, {lowercase header: value}, body bytes) from the admin listener."""
    c = http.client.HTTPConnection("127.0.0.1", t.cfg["admin"]["port"], timeout=timeout * SLOW)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


def readyz(t):
    st, hdrs, body = admin_req(t, "/readyz")
    return st, json.loads(body)


def config_hash(t, files):
    """SHA-256 of the config file's bytes followed by each referenced file's bytes."""
    h = hashlib.sha256(t.path.read_bytes())
    for f in files:
        h.update(open(f, "rb").read())
    return h.hexdigest()


NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r"(?:[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?Inf|NaN)"
SAMPLE_RE = re.compile(rf"^({NAME})(\{{{LABEL}(?:,{LABEL})*\}})? ({VALUE})$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_metrics(text):
    """Parse Prometheus text 0.0.4 strictly. Returns (families, samples):
    families {name: type}, samples {(name, frozenset(labels.items())): float}.
    Every sample line must parse, belong to a family with # HELP and # TYPE
    given before it, and appear once."""
    assert text.endswith("\n"), "exposition must end with a newline"
    helps, types, samples = {}, {}, {}
    order = []
    for ln in text.split("\n")[:-1]:
        assert ln.strip() == ln and ln, f"blank or padded line: {ln!r}"
        if ln.startswith("#"):
            parts = ln.split(" ", 3)
            if parts[1] == "HELP":
                assert len(parts) == 4 and parts[3], ln
                assert parts[2] not in helps, f"second HELP for {parts[2]}"
                helps[parts[2]] = parts[3]
            elif parts[1] == "TYPE":
                assert len(parts) == 4, ln
                assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), ln
                assert parts[2] not in types, f"second TYPE for {parts[2]}"
                assert parts[2] not in {n for n, _ in samples}, f"TYPE after samples: {ln}"
                types[parts[2]] = parts[3]
            continue
        m = SAMPLE_RE.match(ln)
        assert m, f"not a Prometheus sample line: {ln!r}"
        name, labels, value = m.group(1), m.group(2), m.group(3)
        family = name
        for suf in ("_bucket", "_sum", "_count"):
            if name.endswith(suf) and types.get(name[:-len(suf)]) == "histogram":
                family = name[:-len(suf)]
        assert family in types, f"sample without # TYPE: {ln!r}"
        assert family in helps, f"sample without # HELP: {ln!r}"
        assert name.startswith("tollgate_"), ln
        lab = dict(LABEL_RE.findall(labels or ""))
        key = (name, frozenset(lab.items()))
        assert key not in samples, f"duplicate series: {ln!r}"
        samples[key] = float(value.replace("Inf", "inf"))
        order.append(key)
    assert set(helps) == set(types), (set(helps) ^ set(types))
    return types, samples


def get_metrics(t, headers=None):
    st, hdrs, body = admin_req(t, "/metrics", headers=headers)
    assert st == 200, (st, body)
    assert hdrs["content-type"].startswith("text/plain"), hdrs
    assert "version=0.0.4" in hdrs["content-type"], hdrs
    return body.decode()


def metric(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def scrape(t, headers=None):
    return parse_metrics(get_metrics(t, headers))


def wait_metric(t, name, want, labels=None, timeout=5.0, headers=None):
    """Scrape until the sample equals want (a request is counted when it is freed,
    which may be a moment after the client saw the response)."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        types, samples = scrape(t, headers)
        v = metric(samples, name, **(labels or {}))
        if v == want or time.monotonic() > deadline:
            return types, samples, v
        time.sleep(0.05)


def check_histogram(samples, name):
    buckets = sorted(((float(dict(l)["le"].replace("Inf", "inf")), v)
                      for (n, l), v in samples.items() if n == name + "_bucket"))
    assert buckets, f"{name}: no buckets"
    assert buckets[-1][0] == float("inf"), f"{name}: no +Inf bucket"
    les = [le for le, _ in buckets]
    assert len(set(les)) == len(les)
    counts = [v for _, v in buckets]
    assert all(a <= b for a, b in zip(counts, counts[1:])), f"{name}: not cumulative {buckets}"
    count = metric(samples, name + "_count")
    total = metric(samples, name + "_sum")
    assert count is not None and total is not None, name
    assert buckets[-1][1] == count, f"{name}: +Inf {buckets[-1][1]} != _count {count}"
    assert total >= 0
    return count


def h1_get(port, path, headers=(), tls=False):
    c = H1Conn(port, tls=tls)
    try:
        return c.request("GET", path, headers=headers)
    finally:
        c.close()


def h2_get(port, path, headers=(), tls=False):
    c = H2Client(port, tls=tls)
    try:
        sid = c.request("GET", path, headers=list(headers))
        st = c.wait(sid)
        assert st.ended and st.reset is None, (st.status, st.reset)
        return st.status, st.headers, bytes(st.data)
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# Probes

def test_healthz_readyz_and_errors(start_tollgate, fresh_demo):
    t = start_admin(start_tollgate, admin_config(fresh_demo))
    st, hdrs, body = admin_req(t, "/healthz")
    assert st == 200 and body.strip() == b"ok", (st, body)

    st, hdrs, body = admin_req(t, "/readyz")
    assert st == 200, body
    assert hdrs["content-type"].startswith("application/json"), hdrs
    j = json.loads(body)
    assert j["status"] == "ready", j
    assert j["quota_backend"] == "local", j
    assert j["config"]["version"] == 1, j
    assert re.fullmatch(r"[0-9a-f]{64}", j["config"]["sha256"]), j
    # base_config references the TLS certificate, then its key.
    want = config_hash(t, [CERTS / "server.crt", CERTS / "server.key"])
    assert j["config"]["sha256"] == want, (j, want)

    st, _, _ = admin_req(t, "/nope")
    assert st == 404
    st, _, _ = admin_req(t, "/metricsx")
    assert st == 404
    for path in ("/metrics", "/healthz", "/readyz"):
        st, _, _ = admin_req(t, path, method="POST")
        assert st == 405, path
    # A query string does not change the answer.
    assert admin_req(t, "/healthz?x=1")[0] == 200


def test_readyz_hash_follows_document_order(start_tollgate, tmp_path, fresh_demo):
    """The hash covers referenced files in order of first appearance in the
    document (SPEC §4), and a file named twice is hashed once: the key is
    written before the certificate here, and a second TLS listener repeats
    them, behind the keys file of an auth block that comes first."""
    key = new_api_key()
    keys_path = write_keys(tmp_path / "keys.json", [key_entry("k1", key, "p1")])
    base = admin_config(fresh_demo)
    tls = {"private_key_file": str(CERTS / "server.key"),
           "certificate_file": str(CERTS / "server.crt")}
    cfg = {"auth": {"api_keys_file": str(keys_path)},
           "policies": {"standard": {}}}
    cfg.update(base)
    cfg["listeners"][1]["tls"] = dict(tls)
    cfg["listeners"].append({"name": "tls2", "address": "127.0.0.1", "port": free_port(),
                             "tls": dict(tls), "protocols": ["http/1.1"]})
    t = start_admin(start_tollgate, cfg)
    st, j = readyz(t)
    assert st == 200, j
    want = config_hash(t, [keys_path, CERTS / "server.key", CERTS / "server.crt"])
    assert j["config"]["sha256"] == want, j


# ---------------------------------------------------------------------------------------------
# Metrics

def test_metrics_counts_and_format(start_tollgate, fresh_demo):
    cfg = admin_config(fresh_demo, workers=2)
    t = start_admin(start_tollgate, cfg)
    # Format and the process-wide values before any traffic.
    types, samples = scrape(t)
    assert types["tollgate_requests_total"] == "counter"
    assert types["tollgate_request_duration_seconds"] == "histogram"
    assert types["tollgate_upstream_first_byte_seconds"] == "histogram"
    assert types["tollgate_config_version"] == "gauge"
    assert types["tollgate_connections_open"] == "gauge"
    assert types["tollgate_config_reload_failures_total"] == "counter"
    assert metric(samples, "tollgate_config_version") == 1
    _, ready = readyz(t)
    assert metric(samples, "tollgate_config_info", sha256=ready["config"]["sha256"]) == 1
    assert metric(samples, "tollgate_config_reload_failures_total") == 0

    # N requests to /v1/ over fresh connections (spread over both workers'
    # SO_REUSEPORT sockets), mixing HTTP/1.1, h2c and h2 over TLS.
    n = 0
    for i in range(8):
        assert h1_get(t.port("plain"), "/v1/models")[0] == 200
        assert h2_get(t.port("plain"), "/v1/models")[0] == 200
        assert h2_get(t.port("tls"), "/v1/models", tls=True)[0] == 200
        n += 3
    for i in range(4):
        assert h1_get(t.port("tls"), "/v1/models", tls=True)[0] == 200
        n += 1
    # Two requests with no route: 404 before any upstream.
    st, _, body = h1_get(t.port("plain"), "/no/such/route")
    assert st == 404 and b"route_not_found" in body, body
    st, _, body = h2_get(t.port("plain"), "/nothing-here")
    assert st == 404 and b"route_not_found" in body, body
    # An upstream's own 404 is counted under its route.
    assert h1_get(t.port("plain"), "/v1/unknown-endpoint")[0] == 404

    types, samples, v = wait_metric(t, "tollgate_requests_total", n,
                                    {"route": "/v1/", "status": "200"})
    assert v == n, f"requests_total /v1/ 200: {v}, want {n}"
    # Requests without a route are counted with an empty route label.
    _, samples, v = wait_metric(t, "tollgate_requests_total", 2, {"route": "", "status": "404"})
    assert v == 2, [(k, x) for k, x in samples.items() if k[0] == "tollgate_requests_total"]
    assert metric(samples, "tollgate_requests_total", route="/v1/", status="404") == 1
    # No other route/status pair appeared.
    req_series = {k: x for k, x in samples.items() if k[0] == "tollgate_requests_total"}
    assert sum(req_series.values()) == n + 3, req_series

    # Histograms: cumulative buckets, +Inf == _count; one duration per request.
    dur = check_histogram(samples, "tollgate_request_duration_seconds")
    fb = check_histogram(samples, "tollgate_upstream_first_byte_seconds")
    assert dur == n + 3, dur
    assert fb == n + 1, fb  # the two unrouted 404s never reached an upstream
    assert metric(samples, "tollgate_config_version") == 1
    assert metric(samples, "tollgate_connections_accepted_total") >= n + 3


def test_metrics_connections_open_gauge(start_tollgate, fresh_demo):
    t = start_admin(start_tollgate, admin_config(fresh_demo, workers=2))
    _, samples, v = wait_metric(t, "tollgate_connections_open", 0)
    assert v == 0
    conns = [H1Conn(t.port("plain")) for _ in range(3)] + [H1Conn(t.port("tls"), tls=True)]
    try:
        for c in conns:
            assert c.request("GET", "/v1/models")[0] == 200  # kept alive
        _, samples, v = wait_metric(t, "tollgate_connections_open", 4)
        assert v == 4, "the gauge does not count the 4 open client connections"
    finally:
        for c in conns:
            c.close()
    _, _, v = wait_metric(t, "tollgate_connections_open", 0)
    assert v == 0, "the gauge did not come back to 0 after the clients closed"


def test_metrics_auth_failures_and_no_principal_labels(start_tollgate, tmp_path, fresh_demo):
    good = new_api_key()
    keys_path = write_keys(tmp_path / "keys.json",
                           [key_entry("keyid-XYZ", good, "principal-XYZ", "standard",
                                      "tenant-XYZ")])
    cfg = admin_config(fresh_demo)
    cfg["auth"] = {"api_keys_file": str(keys_path), "failed_auth_per_minute_per_ip": 1000000}
    cfg["policies"] = {"standard": {}}
    t = start_admin(start_tollgate, cfg)
    p = t.port("plain")
    for _ in range(3):
        assert h1_get(p, "/v1/models", bearer(new_api_key()))[0] == 401
    assert h2_get(p, "/v1/models", bearer(new_api_key()))[0] == 401
    for _ in range(2):
        assert h1_get(p, "/v1/models")[0] == 401
    for _ in range(3):
        assert h1_get(p, "/v1/models", bearer(good))[0] == 200
        assert h2_get(p, "/v1/models", [("x-api-key", good)])[0] == 200
        assert h1_get(t.port("tls"), "/v1/models", bearer(good), tls=True)[0] == 200

    _, samples, v = wait_metric(t, "tollgate_requests_total", 9,
                                {"route": "/v1/", "status": "200"})
    assert v == 9
    _, samples, v = wait_metric(t, "tollgate_auth_failures_total", 4,
                                {"reason": "auth.invalid_key"})
    assert v == 4, "auth.invalid_key does not count the refused keys"
    assert metric(samples, "tollgate_auth_failures_total", reason="auth.missing") == 2
    # Refused requests were routed first, so they count under their route.
    assert metric(samples, "tollgate_requests_total", route="/v1/", status="401") == 6

    text = get_metrics(t)
    for secret_or_id in ("principal-XYZ", "keyid-XYZ", "XYZ", good, good[3:20]):
        assert secret_or_id not in text, f"{secret_or_id!r} appears in /metrics"
    # And no label value anywhere is a principal, key id or tenant.
    for (name, labels), _ in samples.items():
        for k, v in labels:
            assert "XYZ" not in v and k not in ("principal", "key_id", "key", "tenant"), (name, k)


# ---------------------------------------------------------------------------------------------
# Token

TOKEN = "admin-token-0123456789abcdef"


def test_metrics_token(start_tollgate, fresh_demo):
    cfg = admin_config(fresh_demo)
    cfg["admin"]["token_env"] = "TG_TEST_ADMIN_TOKEN"
    t = start_admin(start_tollgate, cfg, env={"TG_TEST_ADMIN_TOKEN": TOKEN})

    st, hdrs, body = admin_req(t, "/metrics")
    assert st == 401, body
    assert hdrs.get("www-authenticate", "").split()[0].lower() == "bearer", hdrs
    assert b"tollgate_" not in body
    for bad in ("Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ",
                f"Basic {TOKEN}", TOKEN, f"Bearer  {TOKEN}"):
        st, hdrs, body = admin_req(t, "/metrics", headers={"Authorization": bad})
        assert st == 401, (bad, st)
        assert b"tollgate_" not in body, bad
    st, _, body = admin_req(t, "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert st == 200 and b"tollgate_config_version 1" in body, body
    parse_metrics(body.decode())
    # Probes stay open.
    assert admin_req(t, "/healthz")[0] == 200
    st, j = readyz(t)
    assert st == 200 and j["status"] == "ready", j
    # The token never appears in the error log.
    t.signal(signal.SIGHUP)  # logs a reload line
    deadline = time.monotonic() + 3 * SLOW
    while readyz(t)[1]["config"]["version"] != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert TOKEN not in t.stderr()


def test_admin_not_served_on_public_listener(start_tollgate, fresh_demo):
    t = start_admin(start_tollgate, admin_config(fresh_demo))
    for path in ("/metrics", "/readyz"):
        for port, tls in ((t.port("plain"), False), (t.port("tls"), True)):
            st, _, body = h1_get(port, path, tls=tls)
            assert st == 404, (path, st, body)
            assert b"route_not_found" in body, body
            assert b"tollgate_" not in body and b"quota_backend" not in body, body
        st, _, body = h2_get(t.port("plain"), path)
        assert st == 404 and b"tollgate_" not in body, body
    # /healthz on the public listener is a configured route to the upstream.
    st, _, body = h1_get(t.port("plain"), "/healthz")
    assert st == 200
    assert fresh_demo.stats()["by_path"].get("/healthz") == 1


# ---------------------------------------------------------------------------------------------
# Drain

def test_readyz_not_ready_during_drain(start_tollgate, fresh_demo):
    t = start_admin(start_tollgate, admin_config(fresh_demo, limits={"shutdown_grace_ms": 10000}))
    assert readyz(t)[0] == 200
    result = {}
    first = threading.Event()

    def stream():
        c = H1Conn(t.port(), timeout=30)
        try:
            body = chat_body(20)
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"x-demo-mode: delay-between=150\r\nContent-Length: %d\r\n\r\n"
                   % len(body) + body)
            st, hdrs, _ = c.read_head()
            result["status"] = st
            data = b""

            def feed(d):
                nonlocal data
                data += d
                if b"\n\n" in data:
                    first.set()
            c.read_body(st, hdrs, timeout=30, on_data=feed)
            result["events"] = sse_events(data)
        except Exception as e:  # reported below
            result["error"] = e
        finally:
            result["ended"] = time.monotonic()
            first.set()
            c.close()

    th = threading.Thread(target=stream, daemon=True)
    th.start()
    assert first.wait(10 * SLOW) and "error" not in result, result
    t.signal(signal.SIGTERM)
    seen = None
    deadline = time.monotonic() + 2 * SLOW
    while time.monotonic() < deadline:
        st, hdrs, body = admin_req(t, "/readyz")
        if st != 200:
            seen = (st, hdrs, body, time.monotonic())
            break
        time.sleep(0.01)
    assert seen is not None, "/readyz stayed 200 after SIGTERM"
    st, hdrs, body, when = seen
    assert st == 503, body
    j = json.loads(body)
    assert j["status"] == "not_ready" and j.get("reason"), j
    assert "ended" not in result or result["ended"] > when, "the stream ended before the check"
    # Still not ready while the stream drains.
    assert admin_req(t, "/readyz")[0] == 503
    assert admin_req(t, "/healthz")[0] == 200
    th.join(20 * SLOW)
    assert "error" not in result, result
    assert result["status"] == 200
    assert result["events"][-1] == "[DONE]" and len(result["events"]) == 22, result
    assert t.proc.wait(10 * SLOW) == 0
