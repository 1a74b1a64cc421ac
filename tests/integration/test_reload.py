"""Configuration reload on SIGHUP (SPEC §2, §4): valid reloads take effect
without a failed request, invalid ones change nothing and are counted and
logged, listeners are added, kept and removed without refusing a connection
on an unchanged address."""
import copy
import errno
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import threading
import time

import httpx
import pytest

from conftest import BUILD, CERTS, SLOW, base_config, free_port, wait_port
from helpers import H1Conn, H2Client, chat_body, client_ssl_context, sse_events


# ---------------------------------------------------------------------------------------------
# Helpers

def reload_config(demo, **over):
    cfg = base_config(demo, **over)
    cfg["admin"] = {"address": "127.0.0.1", "port": free_port()}
    return cfg


def start(start_tollgate, cfg, env=None):
    t = start_tollgate(cfg, env)
    wait_port(cfg["admin"]["port"], proc=t.proc)
    return t


def write_config(t, cfg=None, text=None):
    """Replace the config file atomically (a reload never sees half a file)."""
    if text is None:
        text = json.dumps(cfg, indent=2)
    tmp = t.path.with_name(t.path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, t.path)


def admin_get(t, path):
    c = http.client.HTTPConnection("127.0.0.1", t.cfg["admin"]["port"], timeout=5 * SLOW)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def readyz(t):
    st, body = admin_get(t, "/readyz")
    assert st == 200, body
    return json.loads(body)


def metrics(t):
    st, body = admin_get(t, "/metrics")
    assert st == 200, body
    out = {}
    for ln in body.decode().splitlines():
        if ln and not ln.startswith("#"):
            k, _, v = ln.rpartition(" ")
            out[k] = float(v)
    return out


def wait_version(t, version, timeout=3.0):
    deadline = time.monotonic() + timeout * SLOW
    while True:
        j = readyz(t)
        if j["config"]["version"] == version or time.monotonic() > deadline:
            return j
        time.sleep(0.02)


def wait_metric(t, name, want, timeout=3.0):
    deadline = time.monotonic() + timeout * SLOW
    while True:
        v = metrics(t).get(name)
        if v == want or time.monotonic() > deadline:
            return v
        time.sleep(0.02)


def file_hash(cfg_path, files):
    h = hashlib.sha256(cfg_path.read_bytes())
    for f in files:
        h.update(open(f, "rb").read())
    return h.hexdigest()


def get(port, path, tls=False):
    c = H1Conn(port, tls=tls, timeout=5)
    try:
        st, _, body = c.request("GET", path, headers=[("Connection", "close")], timeout=5)
        return st, body
    finally:
        c.close()


def is_route_not_found(st, body):
    return st == 404 and b"route_not_found" in body


def connect_refused(port):
    """True when a TCP connect to port is refused."""
    s = socket.socket()
    s.settimeout(2 * SLOW)
    try:
        s.connect(("127.0.0.1", port))
        return False
    except ConnectionRefusedError:
        return True
    finally:
        s.close()


def wait_until(pred, timeout):
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def plain_listener(name, port):
    return {"name": name, "address": "127.0.0.1", "port": port,
            "protocols": ["h2c", "http/1.1"]}


class Stream(threading.Thread):
    """One slow SSE chat stream (h1 or h2c) on a given port; checks it completes."""

    def __init__(self, port, proto="h1", tokens=40, delay_ms=100):
        super().__init__(daemon=True)
        self.port, self.proto, self.tokens, self.delay = port, proto, tokens, delay_ms
        self.first = threading.Event()
        self.events = None
        self.status = None
        self.error = None
        self.complete = False

    def run(self):
        try:
            body = chat_body(self.tokens)
            if self.proto == "h1":
                c = H1Conn(self.port, timeout=30)
                try:
                    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"x-demo-mode: delay-between=%d\r\nContent-Length: %d\r\n\r\n"
                           % (self.delay, len(body)) + body)
                    self.status, hdrs, _ = c.read_head()
                    data = bytearray()

                    def feed(d):
                        data.extend(d)
                        if b"\n\n" in data:
                            self.first.set()
                    c.read_body(self.status, hdrs, timeout=60, on_data=feed)
                    self.complete = True
                    self.events = sse_events(bytes(data))
                finally:
                    c.close()
            else:
                c = H2Client(self.port, timeout=30)
                try:
                    sid = c.request("POST", "/v1/chat/completions",
                                    headers=[("x-demo-mode", f"delay-between={self.delay}")],
                                    body=body)
                    st = c.streams[sid]
                    deadline = time.monotonic() + 60 * SLOW
                    while not st.ended and st.reset is None:
                        if not c.pump(deadline - time.monotonic()):
                            break
                        if b"\n\n" in st.data:
                            self.first.set()
                    self.status = st.status
                    self.complete = st.ended and st.reset is None
                    self.events = sse_events(bytes(st.data))
                finally:
                    c.close()
        except Exception as e:  # reported by the test
            self.error = e
        finally:
            self.first.set()

    def check(self):
        assert self.error is None, repr(self.error)
        assert self.status == 200, self.status
        assert self.complete, f"{self.proto} stream cut: {self.events}"
        assert self.events[-1] == "[DONE]", self.events
        assert len(self.events) == self.tokens + 2, self.events


class Loop(threading.Thread):
    """Calls one() until stopped; records every failure."""

    def __init__(self, name, one, setup=None, teardown=None):
        super().__init__(daemon=True, name=name)
        self.one, self.setup, self.teardown = one, setup, teardown
        self.stop_ev = threading.Event()
        self.ok = 0
        self.failures = []
        self.state = None

    def run(self):
        if self.setup:
            self.state = self.setup()
        try:
            while not self.stop_ev.is_set():
                try:
                    self.one(self)
                    self.ok += 1
                except Exception as e:
                    self.failures.append(f"{time.monotonic():.3f} {e!r}")
                    if self.setup:  # start over on a new connection
                        if self.teardown:
                            self.teardown(self.state)
                        self.state = self.setup()
        finally:
            if self.teardown:
                self.teardown(self.state)

    def stop(self):
        self.stop_ev.set()
        self.join(20 * SLOW)
        assert not self.is_alive(), f"{self.name} did not stop"


# ---------------------------------------------------------------------------------------------
# A valid reload

def test_reload_adds_route_and_bumps_version(start_tollgate, fresh_demo):
    cfg = reload_config(fresh_demo)
    cfg["routes"] = [r for r in cfg["routes"] if r["path_prefix"] != "/echo"]
    t = start(start_tollgate, cfg)
    p = t.port("plain")
    assert is_route_not_found(*get(p, "/echo/x"))
    j1 = readyz(t)
    assert j1["config"]["version"] == 1
    m = metrics(t)
    assert m["tollgate_config_version"] == 1
    assert m[f'tollgate_config_info{{sha256="{j1["config"]["sha256"]}"}}'] == 1

    cfg2 = copy.deepcopy(cfg)
    cfg2["routes"].append({"path_prefix": "/echo", "upstream": "demo"})
    write_config(t, cfg2)
    t0 = time.monotonic()
    t.signal(signal.SIGHUP)
    assert wait_until(lambda: get(p, "/echo/x")[0] == 200, 2.0), t.stderr()
    took = time.monotonic() - t0
    assert took < 2.0 * SLOW, f"the new route took {took:.2f}s"
    st, body = get(t.port("tls"), "/echo/y", tls=True)
    assert st == 200 and json.loads(body)["path"] == "/echo/y"
    j2 = readyz(t)
    assert j2["config"]["version"] == 2, j2
    assert j2["config"]["sha256"] != j1["config"]["sha256"]
    assert j2["config"]["sha256"] == file_hash(t.path, [CERTS / "server.crt",
                                                        CERTS / "server.key"])
    m = metrics(t)
    assert m["tollgate_config_version"] == 2
    assert m[f'tollgate_config_info{{sha256="{j2["config"]["sha256"]}"}}'] == 1
    assert not any(k.startswith("tollgate_config_info") and j1["config"]["sha256"] in k
                   for k in m), "the old hash is still reported"
    assert m["tollgate_config_reload_failures_total"] == 0
    assert "reload rejected" not in t.stderr()


# ---------------------------------------------------------------------------------------------
# Invalid reloads

def test_invalid_reloads_change_nothing(start_tollgate, tmp_path, fresh_demo):
    cfg = reload_config(fresh_demo)
    t = start(start_tollgate, cfg)
    good_text = t.path.read_text()
    cfg_file = str(t.path.resolve())
    p = t.port("plain")
    v1 = readyz(t)["config"]
    assert v1["version"] == 1

    bad_pem = tmp_path / "bad.crt"
    bad_pem.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n"
                       "-----END CERTIFICATE-----\n")
    unknown = copy.deepcopy(cfg)
    unknown["routes"][1]["bogus_key"] = 1
    unknown["routes"].append({"path_prefix": "/new-route", "upstream": "demo"})
    missing = copy.deepcopy(cfg)
    missing["listeners"][1]["tls"]["certificate_file"] = str(tmp_path / "missing.crt")
    badcert = copy.deepcopy(cfg)
    badcert["listeners"][1]["tls"]["certificate_file"] = str(bad_pem)
    cases = [
        ("truncated JSON", good_text[:len(good_text) // 2], [r"line \d+ column \d+"]),
        ("unknown key", json.dumps(unknown, indent=2),
         [re.escape("routes[1].bogus_key"), "unknown key"]),
        ("missing file", json.dumps(missing, indent=2),
         [re.escape("listeners[1].tls.certificate_file"), "missing\\.crt"]),
        ("bad certificate PEM", json.dumps(badcert, indent=2),
         [re.escape("listeners[1].tls"), "bad\\.crt"]),
    ]
    for i, (what, text, patterns) in enumerate(cases, start=1):
        before = len(t.stderr())
        write_config(t, text=text)
        t.signal(signal.SIGHUP)
        v = wait_metric(t, "tollgate_config_reload_failures_total", i)
        assert v == i, f"{what}: reload_failures_total {v}, want {i}\n{t.stderr()}"
        # The error names the config file and where in it.
        assert wait_until(lambda: "reload rejected" in t.stderr()[before:], 2.0), what
        new = t.stderr()[before:]
        line = next(ln for ln in new.splitlines() if "reload rejected" in ln)
        assert " error " in line, line
        assert cfg_file in line, (what, line)
        for pat in patterns:
            assert re.search(pat, line), (what, pat, line)
        # Nothing changed.
        j = readyz(t)["config"]
        assert j == v1, (what, j)
        m = metrics(t)
        assert m["tollgate_config_version"] == 1, what
        assert m[f'tollgate_config_info{{sha256="{v1["sha256"]}"}}'] == 1, what
        assert get(p, "/echo/a")[0] == 200, what
        assert get(t.port("tls"), "/v1/models", tls=True)[0] == 200, what
        assert is_route_not_found(*get(p, "/new-route")), what
    # A good file again: the next version (rejected reloads use no version number).
    good = copy.deepcopy(cfg)
    good["routes"].append({"path_prefix": "/new-route", "upstream": "demo"})
    write_config(t, good)
    t.signal(signal.SIGHUP)
    j = wait_version(t, 2)
    assert j["config"]["version"] == 2, (j, t.stderr())
    assert not is_route_not_found(*get(p, "/new-route"))
    assert metrics(t)["tollgate_config_reload_failures_total"] == len(cases)


def test_reload_with_listener_address_in_use_is_rejected(start_tollgate, fresh_demo):
    cfg = reload_config(fresh_demo)
    t = start(start_tollgate, cfg)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    try:
        busy_port = squatter.getsockname()[1]
        bad = copy.deepcopy(cfg)
        bad["listeners"].append(plain_listener("extra", busy_port))
        bad["routes"].append({"path_prefix": "/new-route", "upstream": "demo"})
        write_config(t, bad)
        before = len(t.stderr())
        t.signal(signal.SIGHUP)
        v = wait_metric(t, "tollgate_config_reload_failures_total", 1)
        assert v == 1, t.stderr()
        assert wait_until(lambda: "reload rejected" in t.stderr()[before:], 2.0)
        line = next(ln for ln in t.stderr()[before:].splitlines() if "reload rejected" in ln)
        assert "listeners[2]" in line and str(busy_port) in line, line
        assert str(t.path.resolve()) in line, f"the error does not name the config file: {line}"
        assert readyz(t)["config"]["version"] == 1
        assert is_route_not_found(*get(t.port("plain"), "/new-route"))
        assert get(t.port("plain"), "/v1/models")[0] == 200
    finally:
        squatter.close()


# ---------------------------------------------------------------------------------------------
# No failed request through 20 reloads

def _h1_keepalive_setup(port):
    return lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=5 * SLOW)


def _h1_keepalive_one(loop):
    loop.state.request("GET", "/v1/models")
    r = loop.state.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body[:200])
    assert not r.will_close, "the server closed a keep-alive connection"


def _h1_fresh_one(port):
    def one(loop):
        st, body = get(port, "/echo/fresh")
        assert st == 200, (st, body[:200])
    return one


def _httpx_one(url):
    def one(loop):
        r = loop.state.get(url)
        assert r.status_code == 200, (r.status_code, r.text[:200])
        assert r.http_version == "HTTP/2", r.http_version
    return one


def test_no_failed_request_through_20_reloads(start_tollgate, fresh_demo):
    a = reload_config(fresh_demo, workers=2)
    a["routes"].append({"path_prefix": "/alt-a", "upstream": "demo"})
    b = copy.deepcopy(a)
    b["routes"][-1] = {"path_prefix": "/alt-b", "upstream": "demo"}
    t = start(start_tollgate, a)
    p, pt = t.port("plain"), t.port("tls")
    ca = str(CERTS / "ca.crt")
    loops = [
        Loop("h1-keepalive", _h1_keepalive_one, _h1_keepalive_setup(p), lambda c: c.close()),
        Loop("h1-fresh", _h1_fresh_one(p)),
        Loop("h1-fresh-tls", _h1_fresh_one_tls(pt)),
        Loop("h2c-httpx", _httpx_one(f"http://127.0.0.1:{p}/v1/models"),
             lambda: httpx.Client(http1=False, http2=True, timeout=5 * SLOW),
             lambda c: c.close()),
        Loop("h2-tls-httpx", _httpx_one(f"https://localhost:{pt}/v1/models"),
             lambda: httpx.Client(http2=True, verify=ca, timeout=5 * SLOW),
             lambda c: c.close()),
    ]
    streams = [Stream(p, "h1"), Stream(p, "h2c")]
    for s in streams:
        s.start()
    for lp in loops:
        lp.start()
    for s in streams:
        assert s.first.wait(10 * SLOW) and s.error is None, s.error
    time.sleep(0.2)
    for i in range(1, 21):
        write_config(t, b if i % 2 else a)
        t.signal(signal.SIGHUP)
        time.sleep(0.1)
    j = wait_version(t, 21)
    assert j["config"]["version"] == 21, (j, t.stderr())
    streams_alive_after_reloads = [s.is_alive() for s in streams]
    time.sleep(0.3)
    for lp in loops:
        lp.stop()
    for s in streams:
        s.join(30 * SLOW)
        assert not s.is_alive()
    for lp in loops:
        assert lp.failures == [], f"{lp.name}: {lp.ok} ok, failures: {lp.failures[:5]}"
        assert lp.ok >= 10, f"{lp.name}: only {lp.ok} requests"
    assert all(streams_alive_after_reloads), "a stream ended before the reloads did"
    for s in streams:
        s.check()
    # The last config (a) is in force.
    assert not is_route_not_found(*get(p, "/alt-a"))
    assert is_route_not_found(*get(p, "/alt-b"))
    assert "reload rejected" not in t.stderr()
    assert metrics(t)["tollgate_config_reload_failures_total"] == 0


def _h1_fresh_one_tls(port):
    def one(loop):
        st, body = get(port, "/v1/models", tls=True)
        assert st == 200, (st, body[:200])
    return one


# ---------------------------------------------------------------------------------------------
# Listener changes (SPEC §4: unchanged addresses keep their sockets)

def test_reload_adds_and_removes_listener(start_tollgate, fresh_demo):
    cfg = reload_config(fresh_demo, workers=2)
    t = start(start_tollgate, cfg)
    p = t.port("plain")
    extra = free_port()
    assert connect_refused(extra)

    added = copy.deepcopy(cfg)
    added["listeners"].append(plain_listener("extra", extra))
    write_config(t, added)
    t.signal(signal.SIGHUP)
    assert wait_version(t, 2)["config"]["version"] == 2
    ok = wait_until(lambda: not connect_refused(extra), 2.0)
    assert ok, f"the added listener does not accept connections\n{t.stderr()}"
    for _ in range(10):  # every worker serves it
        st, _ = get(extra, "/v1/models")
        assert st == 200
    h2 = H2Client(extra)
    try:
        sid = h2.request("GET", "/v1/models")
        assert h2.wait(sid).status == 200
    finally:
        h2.close()

    # A slow stream in flight on the listener about to be removed.
    s1, s2 = Stream(extra, "h1", tokens=25), Stream(extra, "h2c", tokens=25)
    s1.start()
    s2.start()
    assert s1.first.wait(10 * SLOW) and s2.first.wait(10 * SLOW), (s1.error, s2.error)
    write_config(t, cfg)
    t.signal(signal.SIGHUP)
    assert wait_version(t, 3)["config"]["version"] == 3
    refused = wait_until(lambda: connect_refused(extra), 2.0)
    assert refused, f"the removed listener still accepts connections\n{t.stderr()}"
    assert s1.is_alive() and s2.is_alive(), "a stream ended before the check"
    # Refused for good (no worker kept its socket).
    for _ in range(20):
        assert connect_refused(extra)
    s1.join(30 * SLOW)
    s2.join(30 * SLOW)
    s1.check()
    s2.check()
    # The unchanged listeners served throughout.
    assert get(p, "/v1/models")[0] == 200
    assert get(t.port("tls"), "/v1/models", tls=True)[0] == 200


def test_removed_listener_drains_its_connections(start_tollgate, fresh_demo):
    """Connections of a removed listener are drained like on SIGTERM: an idle
    keep-alive one is closed, one with a request in flight is closed after it."""
    extra = free_port()
    cfg = reload_config(fresh_demo)
    cfg["listeners"].append(plain_listener("extra", extra))
    t = start(start_tollgate, cfg)
    idle = H1Conn(extra)
    busy = H1Conn(extra, timeout=30)
    keep = H1Conn(t.port("plain"))
    try:
        assert idle.request("GET", "/v1/models")[0] == 200
        assert keep.request("GET", "/v1/models")[0] == 200
        body = chat_body(15)
        busy.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"x-demo-mode: delay-between=100\r\nContent-Length: %d\r\n\r\n"
                  % len(body) + body)
        st, hdrs, _ = busy.read_head()
        assert st == 200
        removed = copy.deepcopy(cfg)
        removed["listeners"].pop()
        write_config(t, removed)
        t.signal(signal.SIGHUP)
        assert wait_version(t, 2)["config"]["version"] == 2
        data = busy.read_body(st, hdrs, timeout=30)
        assert sse_events(data)[-1] == "[DONE]"
        assert idle.wait_closed(3) in ("eof", "reset"), "idle connection kept on a removed listener"
        assert busy.wait_closed(3) in ("eof", "reset"), \
            "connection on a removed listener kept open after its request"
        # A connection on an unchanged listener is kept.
        assert keep.request("GET", "/v1/models")[0] == 200
    finally:
        idle.close()
        busy.close()
        keep.close()


def test_unchanged_listener_never_refuses_during_reload(start_tollgate, fresh_demo):
    cfg = reload_config(fresh_demo, workers=2)
    t = start(start_tollgate, cfg)
    p, pt = t.port("plain"), t.port("tls")
    extra = free_port()
    # The extra listener goes in first, so the unchanged ones change position.
    with_extra = copy.deepcopy(cfg)
    with_extra["listeners"].insert(0, plain_listener("extra", extra))
    with_extra["routes"].append({"path_prefix": "/alt", "upstream": "demo"})

    stats = {"connects": 0, "refused": 0, "other": []}
    stop = threading.Event()

    def connect_loop():
        while not stop.is_set():
            s = socket.socket()
            s.settimeout(2 * SLOW)
            try:
                s.connect(("127.0.0.1", p))
                stats["connects"] += 1
            except ConnectionRefusedError:
                stats["refused"] += 1
            except OSError as e:
                stats["other"].append(repr(e))
            finally:
                s.close()

    def request_one(loop):
        st, _ = get(p, "/v1/models")
        assert st == 200, st

    def tls_one(loop):
        st, _ = get(pt, "/v1/models", tls=True)
        assert st == 200, st

    keep = H1Conn(p)
    th = threading.Thread(target=connect_loop, daemon=True)
    loops = [Loop("plain-requests", request_one), Loop("tls-requests", tls_one)]
    th.start()
    for lp in loops:
        lp.start()
    try:
        for i in range(1, 11):
            write_config(t, with_extra if i % 2 else cfg)
            t.signal(signal.SIGHUP)
            time.sleep(0.1)
            assert keep.request("GET", "/v1/models")[0] == 200, "kept-alive connection lost"
        assert wait_version(t, 11)["config"]["version"] == 11
        time.sleep(0.2)
    finally:
        stop.set()
        th.join(10 * SLOW)
        for lp in loops:
            lp.stop()
        keep.close()
    assert stats["refused"] == 0, f"{stats['refused']} of {stats['connects']} connects refused"
    assert stats["other"] == [], stats["other"][:5]
    assert stats["connects"] > 100, stats
    for lp in loops:
        assert lp.failures == [], f"{lp.name}: {lp.ok} ok, {lp.failures[:5]}"
        assert lp.ok > 10, lp.ok
    # The last reload (10, even) removed the extra listener again.
    assert wait_until(lambda: connect_refused(extra), 2.0)


# ---------------------------------------------------------------------------------------------
# 100 reloads under AddressSanitizer

# Sanitizer-specific: only the ASan build reports leaks and memory errors. The
# same behaviour minus leak detection is covered on the release build by
# test_no_failed_request_through_20_reloads and the listener tests above.
@pytest.mark.skipif(not str(BUILD).rstrip("/").endswith("build-asan"),
                    reason="leak check for the ASan build (TG_BUILD=.../build-asan) only")
def test_100_reloads_asan_clean(start_tollgate, fresh_demo):
    a = reload_config(fresh_demo, workers=2)
    a["routes"].append({"path_prefix": "/alt-a", "upstream": "demo"})
    b = copy.deepcopy(a)
    b["routes"][-1] = {"path_prefix": "/alt-b", "upstream": "demo"}
    b["listeners"].append(plain_listener("extra", free_port()))
    t = start(start_tollgate, a)
    p = t.port("plain")
    loops = [
        Loop("h1-keepalive", _h1_keepalive_one, _h1_keepalive_setup(p), lambda c: c.close()),
        Loop("h1-fresh", _h1_fresh_one(p)),
        Loop("h2c-httpx", _httpx_one(f"http://127.0.0.1:{p}/v1/models"),
             lambda: httpx.Client(http1=False, http2=True, timeout=5 * SLOW),
             lambda c: c.close()),
    ]
    stream = Stream(p, "h1", tokens=30, delay_ms=100)
    stream.start()
    for lp in loops:
        lp.start()
    assert stream.first.wait(10 * SLOW)
    try:
        for i in range(1, 101):
            write_config(t, b if i % 2 else a)
            t.signal(signal.SIGHUP)
            time.sleep(0.06)
        j = wait_version(t, 101, timeout=5)
        assert j["config"]["version"] == 101, (j, t.stderr()[-2000:])
    finally:
        for lp in loops:
            lp.stop()
        stream.join(30 * SLOW)
    for lp in loops:
        assert lp.failures == [], f"{lp.name}: {lp.ok} ok, {lp.failures[:5]}"
        assert lp.ok > 10
    stream.check()
    code = t.stop(timeout=30)
    log = t.stderr()
    assert code == 0, log[-3000:]
    assert "ERROR: AddressSanitizer" not in log, log[-5000:]
    assert "ERROR: LeakSanitizer" not in log, log[-5000:]
    assert "runtime error:" not in log, log[-5000:]
