"""limits: max_body_bytes, header/idle timeouts, max_connections and the h2
SETTINGS that tollgate advertises."""
import json
import socket
import time

import h2.settings
import pytest

from conftest import SLOW, base_config, curl
from helpers import H1Conn, H2Client, H2Stream, raw_exchange


def limited(fresh_demo, **limits):
    return base_config(fresh_demo, limits=limits)


def assert_413(code, body):
    assert int(code) == 413, body
    j = json.loads(body)
    assert j["error"]["code"] == "request_too_large"
    assert j["error"]["type"] == "invalid_request_error"


BODY = "b" * 2048


@pytest.mark.parametrize("flags,listener,scheme", [
    (["--http1.1"], "plain", "http"),
    (["--http1.1", "-H", "Transfer-Encoding: chunked"], "plain", "http"),
    (["--http2-prior-knowledge"], "plain", "http"),
    (["--http2", "-k"], "tls", "https"),
], ids=["h1-content-length", "h1-chunked", "h2c", "h2-tls"])
def test_max_body_bytes_413(start_tollgate, fresh_demo, flags, listener, scheme):
    t = start_tollgate(limited(fresh_demo, max_body_bytes=1024))
    r = curl(*flags, "-w", "\n%{http_code}", "--data-binary", BODY,
             t.url("/echo", listener, scheme))
    body, _, code = r.stdout.rpartition("\n")
    assert_413(code, body)


def test_max_body_bytes_413_h1_cl_not_forwarded(start_tollgate, fresh_demo):
    t = start_tollgate(limited(fresh_demo, max_body_bytes=1024))
    data, how = raw_exchange(
        t.port(), b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2048\r\n\r\n"
        + BODY.encode(), timeout=5)
    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert b"\r\nconnection: close\r\n" in data.lower()
    assert how in ("eof", "reset")
    assert fresh_demo.stats()["requests"] == 0


def test_max_body_bytes_413_h2_without_content_length(start_tollgate, fresh_demo):
    t = start_tollgate(limited(fresh_demo, max_body_bytes=1024))
    c = H2Client(t.port())
    try:
        sid = c.conn.get_next_available_stream_id()
        c.streams[sid] = H2Stream()
        c.conn.send_headers(sid, [(":method", "POST"), (":path", "/echo"), (":scheme", "http"),
                                  (":authority", "127.0.0.1")])
        c.conn.send_data(sid, BODY.encode()[:1000])
        c.conn.send_data(sid, BODY.encode()[1000:], end_stream=True)
        c.flush()
        st = c.wait(sid, timeout=10)
    finally:
        c.close()
    assert_413(st.status, bytes(st.data))


def test_body_at_limit_accepted(start_tollgate, fresh_demo):
    t = start_tollgate(limited(fresh_demo, max_body_bytes=1024))
    r = curl("-w", "\n%{http_code}", "--data-binary", "c" * 1024, t.url("/echo"))
    body, _, code = r.stdout.rpartition("\n")
    assert code == "200"
    assert json.loads(body)["body_bytes"] == 1024


def test_header_timeout_closes_half_head(start_tollgate, fresh_demo):
    t = start_tollgate(limited(fresh_demo, header_timeout_ms=500))
    c = H1Conn(t.port())
    try:
        t0 = time.monotonic()
        c.send(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        how = c.wait_closed(2.0 * SLOW)
        secs = time.monotonic() - t0
    finally:
        c.close()
    assert how in ("eof", "reset"), "connection still open"
    assert 0.4 <= secs < 2.0 * SLOW, f"closed after {secs:.2f}s"
    if c.buf:
        assert c.buf.startswith(b"HTTP/1.1 408 "), c.buf[:200]
    assert fresh_demo.stats()["requests"] == 0


def test_header_timeout_slowloris_trickle(start_tollgate, fresh_demo):
    """Bytes that keep coming do not extend the head deadline."""
    t = start_tollgate(limited(fresh_demo, header_timeout_ms=500))
    c = H1Conn(t.port())
    closed_at = None
    try:
        t0 = time.monotonic()
        c.send(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for i in range(int(20 * SLOW)):
            try:
                c.send(b"X-%d: a\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - t0
                break
            if c.wait_closed(0.1) != "timeout":
                closed_at = time.monotonic() - t0
                break
    finally:
        c.close()
    assert closed_at is not None, "connection kept open by a trickle of header bytes"
    assert closed_at < 2.0 * SLOW


def test_header_timeout_no_bytes(start_tollgate, fresh_demo):
    t = start_tollgate(limited(fresh_demo, header_timeout_ms=500))
    c = H1Conn(t.port())
    try:
        t0 = time.monotonic()
        how = c.wait_closed(2.0 * SLOW)
        secs = time.monotonic() - t0
    finally:
        c.close()
    assert how in ("eof", "reset")
    assert secs < 2.0 * SLOW


def test_idle_timeout_closes_keepalive_h1(start_tollgate, fresh_demo):
    t = start_tollgate(limited(fresh_demo, idle_timeout_ms=500))
    c = H1Conn(t.port())
    try:
        assert c.request("GET", "/healthz")[0] == 200
        t0 = time.monotonic()
        how = c.wait_closed(2.0 * SLOW)
        secs = time.monotonic() - t0
    finally:
        c.close()
    assert how in ("eof", "reset"), "idle connection still open"
    assert 0.4 <= secs < 2.0 * SLOW, f"closed after {secs:.2f}s"
    assert c.buf == b""


def test_idle_timeout_closes_h2(start_tollgate, fresh_demo):
    t = start_tollgate(limited(fresh_demo, idle_timeout_ms=500))
    c = H2Client(t.port())
    try:
        assert c.wait(c.request("GET", "/healthz")).status == 200
        t0 = time.monotonic()
        deadline = t0 + 2.0 * SLOW
        while not c.closed and time.monotonic() < deadline:
            try:
                c.pump(deadline - time.monotonic())
            except TimeoutError:
                break
        secs = time.monotonic() - t0
    finally:
        c.close()
    assert c.closed, "idle h2 connection still open"
    assert c.goaway == 0  # GOAWAY NO_ERROR first
    assert 0.4 <= secs < 2.0 * SLOW


def test_idle_timeout_not_applied_to_active_stream(start_tollgate, fresh_demo):
    """A slow stream with gaps longer than idle_timeout_ms is not an idle connection."""
    t = start_tollgate(limited(fresh_demo, idle_timeout_ms=300))
    c = H1Conn(t.port())
    try:
        body = b'{"model":"m","stream":true,"max_tokens":3}'
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"x-demo-mode: delay-between=500\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        st, hdrs, _ = c.read_head()
        data = c.read_body(st, hdrs, timeout=20)
    finally:
        c.close()
    assert st == 200
    assert b"[DONE]" in data


def test_max_connections(start_tollgate, fresh_demo):
    t = start_tollgate(limited(fresh_demo, max_connections=5))
    first, extra = [], []
    try:
        # One by one, each proven accepted by a full exchange (the fixture's port
        # probes are closed by then).
        for _ in range(5):
            first.append(H1Conn(t.port()))
            assert first[-1].request("GET", "/healthz")[0] == 200
        for _ in range(5):
            extra.append(H1Conn(t.port()))
        for c in extra:
            try:
                c.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            how = c.wait_closed(2.0 * SLOW)
            assert how in ("eof", "reset"), "connection over max_connections was served"
            assert c.buf == b"", c.buf[:200]
        # The first five still work.
        for c in first:
            assert c.request("GET", "/healthz")[0] == 200
    finally:
        for c in first + extra:
            c.close()
    # Once they are gone, new connections are accepted again.
    deadline = time.monotonic() + 3 * SLOW
    while True:
        c = H1Conn(t.port())
        try:
            status = c.request("GET", "/healthz")[0]
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            c.close()
    assert status == 200


def test_max_concurrent_streams_advertised(start_tollgate, fresh_demo):
    t = start_tollgate(limited(fresh_demo, max_concurrent_streams=10))
    c = H2Client(t.port())
    try:
        s = c.wait_settings()
    finally:
        c.close()
    assert s.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS) == 10, s


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
def test_max_body_bytes_413_h2_declared_length(start_tollgate, fresh_demo, tls):
    """content-length over the limit: the 413 reaches the client (python-h2) and
    the upstream is never asked."""
    t = start_tollgate(limited(fresh_demo, max_body_bytes=1024))
    c = H2Client(t.port("tls" if tls else "plain"), tls=tls)
    try:
        st = c.wait(c.request("POST", "/echo", headers=[("content-length", "2048")],
                              body=BODY.encode()), timeout=10)
    finally:
        c.close()
    assert_413(st.status, bytes(st.data))
    assert st.ended
    assert fresh_demo.stats()["requests"] == 0
