"""Graceful shutdown (SPEC §2): on SIGTERM tollgate stops accepting, lets
in-flight requests finish for up to shutdown_grace_ms, then exits 0."""
import signal
import socket
import threading
import time

import pytest

from conftest import SLOW, base_config
from helpers import Closed, H1Conn, H2Client, chat_body, sse_events


class StreamThread(threading.Thread):
    """Runs one slow SSE request; `first` is set when the first event arrived."""

    def __init__(self, t, proto, tokens, delay_ms):
        super().__init__(daemon=True)
        self.t, self.proto, self.tokens, self.delay = t, proto, tokens, delay_ms
        self.first = threading.Event()
        self.body = b""
        self.complete = False  # the framing said the response ended cleanly
        self.error = None
        self.h2_reset = None
        self.h2_goaway = None
        self.conn_closed_after = None
        self.ended_at = None

    def run(self):
        try:
            if self.proto == "h1":
                self.run_h1()
            else:
                self.run_h2()
        except Exception as e:  # reported by the test
            self.error = e
        self.ended_at = time.monotonic()

    def feed(self, data):
        self.body += data
        if b"\n\n" in self.body:
            self.first.set()

    def run_h1(self):
        c = H1Conn(self.t.port(), timeout=30)
        try:
            body = chat_body(self.tokens)
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"x-demo-mode: delay-between=%d\r\nContent-Length: %d\r\n\r\n"
                   % (self.delay, len(body)) + body)
            st, hdrs, _ = c.read_head()
            assert st == 200
            try:
                c.read_body(st, hdrs, timeout=30, on_data=self.feed)
                self.complete = True
            except Closed:
                self.complete = False
            self.conn_closed_after = c.wait_closed(5)
        finally:
            c.close()

    def run_h2(self):
        c = H2Client(self.t.port(), timeout=30)
        try:
            sid = c.request("POST", "/v1/chat/completions",
                            headers=[("x-demo-mode", f"delay-between={self.delay}")],
                            body=chat_body(self.tokens))
            st = c.streams[sid]
            deadline = time.monotonic() + 30 * SLOW
            while not st.ended and st.reset is None:
                if not c.pump(deadline - time.monotonic()):
                    break
                if b"\n\n" in st.data:
                    self.first.set()
            self.body = bytes(st.data)
            self.complete = st.ended and st.reset is None
            self.h2_reset = st.reset
            # Read on until tollgate closes the connection (or a bound).
            deadline = time.monotonic() + 5 * SLOW
            while not c.closed and time.monotonic() < deadline:
                try:
                    c.pump(deadline - time.monotonic())
                except TimeoutError:
                    break
            self.h2_goaway = c.goaway
            self.conn_closed_after = "eof" if c.closed else "timeout"
        finally:
            c.close()


def new_connections_refused(t, within):
    """True once a new connection is refused (or accepted and closed unanswered)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", t.port()), timeout=1)
        except (ConnectionRefusedError, ConnectionResetError):
            return True
        try:
            s.settimeout(1)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            if s.recv(100) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            pass
        finally:
            s.close()
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("proto", ["h1", "h2c"])
def test_sigterm_lets_inflight_stream_finish(start_tollgate, fresh_demo, proto):
    grace_ms = 5000
    t = start_tollgate(base_config(fresh_demo, limits={"shutdown_grace_ms": grace_ms}))
    th = StreamThread(t, proto, tokens=10, delay_ms=200)
    th.start()
    assert th.first.wait(10 * SLOW), f"no first event ({th.error})"
    t0 = time.monotonic()
    t.signal(signal.SIGTERM)
    assert new_connections_refused(t, 2.0 * SLOW), "new connections still served after SIGTERM"
    th.join(30 * SLOW)
    assert not th.is_alive()
    assert th.error is None, repr(th.error)
    # The stream completed fully, with its proper end.
    assert th.complete, "in-flight stream cut by a graceful shutdown"
    ev = sse_events(th.body)
    assert ev[-1] == "[DONE]" and len(ev) == 12, ev
    if proto == "h2c":
        assert th.h2_goaway == 0, "no GOAWAY(NO_ERROR) on the draining h2 connection"
    assert th.conn_closed_after == "eof"
    code = t.proc.wait(grace_ms / 1000 + 5 * SLOW)
    secs = time.monotonic() - t0
    assert code == 0, t.stderr()
    assert secs < grace_ms / 1000 + 3 * SLOW, f"exit {secs:.2f}s after SIGTERM"
    # It waited for the stream, not for the whole grace period.
    assert th.ended_at - t0 < grace_ms / 1000


@pytest.mark.parametrize("proto", ["h1", "h2c"])
def test_sigterm_grace_expiry_cuts_stream_and_exits_0(start_tollgate, fresh_demo, proto):
    grace_ms = 1000
    t = start_tollgate(base_config(fresh_demo, limits={"shutdown_grace_ms": grace_ms}))
    th = StreamThread(t, proto, tokens=40, delay_ms=200)  # ~8 s of stream
    th.start()
    assert th.first.wait(10 * SLOW), f"no first event ({th.error})"
    t0 = time.monotonic()
    t.signal(signal.SIGTERM)
    code = t.proc.wait(grace_ms / 1000 + 5 * SLOW)
    secs = time.monotonic() - t0
    assert code == 0, t.stderr()
    assert 0.9 <= secs < grace_ms / 1000 + 2 * SLOW, f"exit {secs:.2f}s after SIGTERM"
    th.join(10 * SLOW)
    assert not th.is_alive()
    # The client sees a cut stream, never a clean end.
    assert not th.complete
    assert "[DONE]" not in sse_events(th.body)


def test_sigterm_idle_exits_at_once(start_tollgate, fresh_demo):
    t = start_tollgate(base_config(fresh_demo, limits={"shutdown_grace_ms": 10000}))
    idle = H1Conn(t.port())
    try:
        assert idle.request("GET", "/healthz")[0] == 200
        t0 = time.monotonic()
        t.signal(signal.SIGTERM)
        code = t.proc.wait(5 * SLOW)
        secs = time.monotonic() - t0
        assert idle.wait_closed(2 * SLOW) in ("eof", "reset")
    finally:
        idle.close()
    assert code == 0
    assert secs < 2 * SLOW, f"idle keep-alive connection held shutdown for {secs:.2f}s"
