"""Back-pressure both ways: a client that stops reading pauses the upstream
(bounded memory in tollgate, and the upstream's writes stall), and a request
body going to an upstream that does not read pauses the client."""
import socket
import threading
import time

import hyperframe.frame
import pytest

from conftest import SLOW, base_config, rss_kib
from helpers import H1Conn, H2Client

BIG = 200 * 1024 * 1024
RSS_SLACK_KIB = 32 * 1024
UPSTREAM_MAX = 16 * 1024 * 1024
WATCH_S = 3.0


def baseline_rss(t):
    # One small exchange first so the steady-state allocations exist.
    c = H1Conn(t.port())
    try:
        assert c.request("GET", "/healthz")[0] == 200
    finally:
        c.close()
    return rss_kib(t.pid)


def watch(t, demo, seconds):
    """Sample tollgate's RSS and the demo's big_bytes_written for a while."""
    peak_rss, written = 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak_rss = max(peak_rss, rss_kib(t.pid))
        written.append(demo.stats()["big_bytes_written"])
        time.sleep(0.25)
    return peak_rss, written


def test_h1_client_stops_reading_pauses_upstream(tollgate, fresh_demo):
    base = baseline_rss(tollgate)
    fresh_demo.reset()
    c = H1Conn(tollgate.port(), rcvbuf=16384)
    try:
        c.send(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\nx-demo-mode: big=%d\r\n\r\n" % BIG)
        status, hdrs, _ = c.read_head()
        assert status == 200
        assert dict(hdrs)["content-length"] == str(BIG)
        # From here on the client reads nothing.
        peak, written = watch(tollgate, fresh_demo, WATCH_S)
        # Paused: the upstream's writes stopped growing (last ~second), far below 200 MB.
        assert written[-1] - written[-4] < 1024 * 1024, written
        assert written[-1] < UPSTREAM_MAX, f"upstream wrote {written[-1]} bytes"
        assert peak < base + RSS_SLACK_KIB, f"RSS {peak} KiB, baseline {base} KiB"
        assert written[-1] > 0
    finally:
        c.close()


def test_h1_slow_reader_gets_everything(tollgate, fresh_demo):
    """Pausing is not losing: a reader that stalls, then resumes, gets all bytes."""
    size = 8 * 1024 * 1024
    c = H1Conn(tollgate.port(), rcvbuf=16384)
    try:
        c.send(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\nx-demo-mode: big=%d\r\n\r\n" % size)
        status, hdrs, _ = c.read_head()
        assert status == 200
        time.sleep(1.0)
        body = c.read_body(status, hdrs, timeout=60)
    finally:
        c.close()
    assert len(body) == size
    assert body == b"x" * size


def test_h2_zero_window_pauses_upstream(tollgate, fresh_demo):
    base = baseline_rss(tollgate)
    fresh_demo.reset()
    # A small stream window and no WINDOW_UPDATE ever: the stream stalls after 16 KiB.
    c = H2Client(tollgate.port(), auto_window=False,
                 settings={hyperframe.frame.SettingsFrame.INITIAL_WINDOW_SIZE: 16384})
    try:
        sid = c.request("GET", "/big", headers=[("x-demo-mode", f"big={BIG}")])
        deadline = time.monotonic() + WATCH_S
        peak, written = base, []
        # Keep reading frames (so TCP is not what stalls), sampling as we go.
        while time.monotonic() < deadline:
            try:
                c.pump(0.25)
            except TimeoutError:
                pass
            peak = max(peak, rss_kib(tollgate.pid))
            written.append(fresh_demo.stats()["big_bytes_written"])
        st = c.streams[sid]
        assert st.status == 200
        assert len(st.data) <= 65535  # the connection window, never exceeded
        assert not c.closed
        assert written[-1] - written[-4] < 1024 * 1024, written
        assert written[-1] < UPSTREAM_MAX, f"upstream wrote {written[-1]} bytes"
        assert peak < base + RSS_SLACK_KIB, f"RSS {peak} KiB, baseline {base} KiB"
    finally:
        c.close()


def test_h2_window_opened_resumes_stream(tollgate, fresh_demo):
    """After a stall, WINDOW_UPDATEs resume the transfer to the last byte."""
    size = 4 * 1024 * 1024
    c = H2Client(tollgate.port(), auto_window=False,
                 settings={hyperframe.frame.SettingsFrame.INITIAL_WINDOW_SIZE: 16384})
    try:
        sid = c.request("GET", "/big", headers=[("x-demo-mode", f"big={size}")])
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                c.pump(0.2)
            except TimeoutError:
                pass
        st = c.streams[sid]
        stalled_at = len(st.data)
        assert stalled_at <= 65535
        c.auto_window = True
        c.conn.increment_flow_control_window(8 * 1024 * 1024)
        c.conn.increment_flow_control_window(8 * 1024 * 1024, stream_id=sid)
        c.conn.acknowledge_received_data(stalled_at, sid) if stalled_at else None
        c.flush()
        st = c.wait(sid, timeout=60)
    finally:
        c.close()
    assert st.ended and st.reset is None
    assert len(st.data) == size


class StuckUpstream:
    """Accepts connections and never reads from them."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.addr = "127.0.0.1:%d" % self.ls.getsockname()[1]
        self.conns = []
        self.stop = False
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def run(self):
        self.ls.settimeout(0.2)
        while not self.stop:
            try:
                s, _ = self.ls.accept()
            except OSError:
                continue
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            self.conns.append(s)

    def close(self):
        self.stop = True
        self.th.join(5)
        for s in self.conns:
            s.close()
        self.ls.close()


@pytest.fixture
def stuck_upstream():
    u = StuckUpstream()
    yield u
    u.close()


def kernel_buffer_bound():
    """Most bytes the kernel may hold on the client->tollgate->upstream path:
    tollgate's autotuned receive buffer plus its send buffer (tcp_rmem/wmem max)."""
    with open("/proc/sys/net/ipv4/tcp_rmem") as f:
        rmem = int(f.read().split()[2])
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        wmem = int(f.read().split()[2])
    return rmem + wmem


def test_h1_upload_to_stuck_upstream_pauses_client(start_tollgate, fresh_demo, stuck_upstream):
    total = 1 << 30
    cfg = base_config(fresh_demo, limits={"max_body_bytes": total, "body_timeout_ms": 30000})
    cfg["upstreams"].append({"name": "stuck", "servers": [stuck_upstream.addr],
                             "first_byte_timeout_ms": 60000})
    cfg["routes"].append({"path_prefix": "/upload", "upstream": "stuck"})
    t = start_tollgate(cfg)
    base = baseline_rss(t)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    s.connect(("127.0.0.1", t.port()))
    try:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % total)
        s.setblocking(False)
        chunk = b"u" * 65536
        sent, peak, samples = 0, base, []
        start = time.monotonic()
        # Kernel buffers on the path autotune upward for a while (up to tcp_rmem
        # max), so watch longer than for downloads before judging the stall.
        upload_watch_s = 2 * WATCH_S
        while time.monotonic() - start < upload_watch_s and sent < total:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.02)
            samples.append((time.monotonic() - start, sent))
            peak = max(peak, rss_kib(t.pid))
        # The client is (nearly) stalled: in the last second only kernel buffer
        # autotuning lets a little more through (a few MB/s at most, on loopback
        # an unpaused path moves GB/s),
        late = [n for (when, n) in samples if when >= upload_watch_s - 1.0]
        assert late and late[-1] - late[0] < 4 * 1024 * 1024, f"still sending: {late[0]}..{late[-1]}"
        # what it pushed fits in kernel buffers plus a small bound in tollgate,
        bound = kernel_buffer_bound() + 8 * 1024 * 1024
        assert sent < bound, f"client pushed {sent} bytes (kernel bound {bound})"
        # and tollgate's memory did not grow with it.
        assert peak < base + RSS_SLACK_KIB, f"RSS {peak} KiB, baseline {base} KiB"
    finally:
        s.close()
