"""Upstream faults (THREATS §5): down, refusing, slow first byte, connect
timeout, and the upstream's own error statuses passing through."""
import json
import socket
import time

import httpx
import pytest

from conftest import SLOW, base_config, free_port
from helpers import H1Conn, H2Client


def get(t, path, headers=(), proto="h1"):
    """(status, headers, body, seconds)."""
    t0 = time.monotonic()
    if proto == "h1":
        c = H1Conn(t.port())
        try:
            st, hdrs, body = c.request("GET", path, headers=headers)
        finally:
            c.close()
    else:
        c = H2Client(t.port())
        try:
            s = c.wait(c.request("GET", path, headers=list(headers)))
            st, hdrs, body = s.status, s.headers, bytes(s.data)
        finally:
            c.close()
    return st, hdrs, body, time.monotonic() - t0


def error_code(body):
    j = json.loads(body)
    return j["error"]["code"], j["error"]["type"]


@pytest.mark.parametrize("proto", ["h1", "h2c"])
def test_upstream_down_502_quickly(start_tollgate, fresh_demo, proto):
    dead = f"127.0.0.1:{free_port()}"
    cfg = base_config(fresh_demo, upstreams=[{"name": "demo", "servers": [dead],
                                              "connect_timeout_ms": 2000}])
    t = start_tollgate(cfg)
    st, _, body, secs = get(t, "/echo", proto=proto)
    assert st == 502
    assert error_code(body) == ("upstream_error", "server_error")
    assert secs < 1.0 * SLOW, f"took {secs:.2f}s"


def test_first_server_refuses_round_robin_skips_it(start_tollgate, fresh_demo):
    dead = f"127.0.0.1:{free_port()}"
    cfg = base_config(fresh_demo, upstreams=[{"name": "demo",
                                              "servers": [dead, fresh_demo.addr]}])
    t = start_tollgate(cfg)
    with httpx.Client(timeout=10 * SLOW) as c:
        codes = [c.get(t.url(f"/echo/{i}")).status_code for i in range(10)]
    assert codes == [200] * 10
    assert fresh_demo.stats()["requests"] == 10


def test_both_servers_used_round_robin(start_tollgate, fresh_demo):
    from conftest import Demo
    other = Demo()
    try:
        cfg = base_config(fresh_demo, upstreams=[{"name": "demo",
                                                  "servers": [fresh_demo.addr, other.addr]}])
        t = start_tollgate(cfg)
        with httpx.Client(timeout=10 * SLOW) as c:
            codes = [c.get(t.url("/healthz")).status_code for _ in range(10)]
        assert codes == [200] * 10
        a, b = fresh_demo.stats()["requests"], other.stats()["requests"]
        assert a + b == 10 and a > 0 and b > 0, (a, b)
    finally:
        other.stop()


@pytest.mark.parametrize("proto", ["h1", "h2c"])
def test_first_byte_timeout_504(start_tollgate, fresh_demo, proto):
    cfg = base_config(fresh_demo)
    cfg["upstreams"][0]["first_byte_timeout_ms"] = 500
    t = start_tollgate(cfg)
    st, _, body, secs = get(t, "/echo", [("x-demo-mode", "delay-first-byte=5000")], proto)
    assert st == 504
    assert error_code(body) == ("upstream_timeout", "server_error")
    assert 0.45 <= secs < 0.5 + 2.0 * SLOW, f"took {secs:.2f}s"


def test_first_byte_within_timeout_ok(start_tollgate, fresh_demo):
    cfg = base_config(fresh_demo)
    cfg["upstreams"][0]["first_byte_timeout_ms"] = 1500
    t = start_tollgate(cfg)
    st, _, _, _ = get(t, "/echo", [("x-demo-mode", "delay-first-byte=300")])
    assert st == 200


class Blackhole:
    """A listener whose accept queue is full: further SYNs are dropped, so a
    connect to it neither succeeds nor fails (Linux, loopback)."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(0)
        self.port = self.ls.getsockname()[1]
        self.fill = []
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fill.append(s)
        time.sleep(0.1)
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", self.port))
            self.works = False
        except socket.timeout:
            self.works = True
        except OSError:
            self.works = False
        probe.close()

    def close(self):
        for s in self.fill:
            s.close()
        self.ls.close()


def test_connect_timeout_504(start_tollgate, fresh_demo):
    bh = Blackhole()
    try:
        assert bh.works, "could not build a blackholed listener on loopback"
        cfg = base_config(fresh_demo, upstreams=[{
            "name": "demo", "servers": [f"127.0.0.1:{bh.port}"], "connect_timeout_ms": 500,
            "first_byte_timeout_ms": 10000}])
        t = start_tollgate(cfg)
        st, _, body, secs = get(t, "/echo")
        assert st == 504
        assert error_code(body) == ("upstream_timeout", "server_error")
        assert 0.45 <= secs < 0.5 + 2.0 * SLOW, f"took {secs:.2f}s"
    finally:
        bh.close()


@pytest.mark.parametrize("proto", ["h1", "h2c"])
@pytest.mark.parametrize("code", [503, 429, 500, 401])
def test_upstream_error_status_passes_through(tollgate, proto, code):
    st, hdrs, body, _ = get(tollgate, "/v1/chat/completions",
                            [("x-demo-mode", f"status={code}")], proto)
    assert st == code
    # The demo's own body, not one made by tollgate.
    assert f"injected status {code}".encode() in body, body
    assert dict(hdrs).get("server") == "demo-upstream"
