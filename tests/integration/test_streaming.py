"""Streaming responses: each SSE event reaches the client as soon as the
upstream sends it (no buffering), over HTTP/1.1 and HTTP/2; and an upstream
that breaks mid-stream gives the client a visibly truncated response, never a
clean end."""
import json
import time

import h2.errors
import httpx
import pytest

from conftest import CERTS, SLOW, curl
from helpers import Closed, EventClock, H1Conn, H2Client, chat_body, sse_events

DELAY_MS = 300
TOKENS = 5
# 5 content events, the finish_reason event and [DONE]; the demo waits DELAY_MS
# before every event but the first.
N_EVENTS = TOKENS + 2
MODE = f"delay-between={DELAY_MS}"


def check_timing(head_t, times):
    assert len(times) == N_EVENTS, times
    first = times[0] - head_t
    total = times[-1] - head_t
    assert first < 1.0 * SLOW, f"first event {first:.3f}s after the head"
    assert total >= 1.2, f"whole stream in {total:.3f}s: the delays did not happen"
    assert times[-1] - times[0] >= 1.0, "events arrived together"
    gaps = [b - a for a, b in zip(times, times[1:])]
    # Buffering would deliver consecutive events in one read (gap ~ 0).
    assert all(g >= DELAY_MS / 1000 / 3 for g in gaps), [round(g, 3) for g in gaps]


def check_events(body):
    ev = sse_events(body)
    assert len(ev) == N_EVENTS, ev
    assert ev[-1] == "[DONE]"
    content = [json.loads(e)["choices"][0]["delta"].get("content") for e in ev[:TOKENS]]
    assert content == [f"tok{i} " for i in range(TOKENS)]


def test_sse_streams_per_event_h1(tollgate):
    c = H1Conn(tollgate.port())
    clock = EventClock()
    try:
        body = chat_body(TOKENS)
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nx-demo-mode: " + MODE.encode() +
               b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        status, hdrs, _ = c.read_head()
        head_t = time.monotonic()
        assert status == 200
        assert dict(hdrs)["content-type"].startswith("text/event-stream")
        assert dict(hdrs).get("transfer-encoding") == "chunked"
        c.read_body(status, hdrs, on_data=clock.feed)
    finally:
        c.close()
    check_events(clock.body)
    check_timing(head_t, clock.times)


@pytest.mark.parametrize("proto", ["h2-tls", "h2c", "h1-tls"])
def test_sse_streams_per_event_httpx(tollgate, proto):
    if proto == "h2c":
        client = httpx.Client(http1=False, http2=True, timeout=20 * SLOW)
        url = tollgate.url("/v1/chat/completions")
    else:
        client = httpx.Client(http2=proto == "h2-tls", verify=str(CERTS / "ca.crt"),
                              timeout=20 * SLOW)
        url = tollgate.url("/v1/chat/completions", "tls", "https")
    clock = EventClock()
    with client:
        with client.stream("POST", url, content=chat_body(TOKENS),
                           headers={"content-type": "application/json",
                                    "x-demo-mode": MODE}) as r:
            head_t = time.monotonic()
            assert r.status_code == 200
            assert r.http_version == ("HTTP/1.1" if proto == "h1-tls" else "HTTP/2")
            for chunk in r.iter_raw():
                clock.feed(chunk)
    check_events(clock.body)
    check_timing(head_t, clock.times)


def test_sse_streams_per_event_h2_raw_frames(tollgate):
    c = H2Client(tollgate.port())
    try:
        sid = c.request("POST", "/v1/chat/completions",
                        headers=[("content-type", "application/json"), ("x-demo-mode", MODE)],
                        body=chat_body(TOKENS))
        deadline = time.monotonic() + 20 * SLOW
        st = c.streams[sid]
        while st.status is None and c.pump(deadline - time.monotonic()):
            pass
        head_t = time.monotonic()
        st = c.wait(sid)
    finally:
        c.close()
    assert st.status == 200 and st.ended and st.reset is None
    clock = EventClock()
    for when, data in st.chunks:
        clock.feed(data, when)
    check_events(clock.body)
    check_timing(head_t, clock.times)


RESET_MODE = "reset-after=3"


def test_upstream_reset_midstream_h1_curl_sees_truncation(tollgate):
    r = curl("--http1.1", "-N", "-H", "content-type: application/json",
             "-H", f"x-demo-mode: {RESET_MODE}", "--data-binary", chat_body(TOKENS).decode(),
             tollgate.url("/v1/chat/completions"))
    # 18: transfer closed with outstanding read data remaining (no final chunk);
    # 56: the same seen as a receive failure.
    assert r.returncode in (18, 56), (r.returncode, r.stderr)
    assert "[DONE]" not in sse_events(r.stdout)


def test_upstream_reset_midstream_h1_httpx_raises(tollgate):
    with httpx.Client(timeout=20 * SLOW) as c:
        got = b""
        with pytest.raises(httpx.RemoteProtocolError):
            with c.stream("POST", tollgate.url("/v1/chat/completions"), content=chat_body(TOKENS),
                          headers={"x-demo-mode": RESET_MODE}) as r:
                assert r.status_code == 200
                for chunk in r.iter_raw():
                    got += chunk
    assert b"[DONE]" not in got


def h1_reset_stream(t):
    """(status, headers, body bytes received, how the body ended)."""
    c = H1Conn(t.port())
    try:
        body = chat_body(TOKENS)
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"x-demo-mode: " + RESET_MODE.encode() +
               b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        status, hdrs, _ = c.read_head()
        got = bytearray()
        try:
            c.read_body(status, hdrs, on_data=got.extend)
            how = "complete"
        except Closed:
            how = c.eof
    finally:
        c.close()
    return status, hdrs, bytes(got), how


def test_upstream_reset_midstream_h1_raw_no_last_chunk(tollgate):
    status, hdrs, got, how = h1_reset_stream(tollgate)
    assert status == 200
    assert dict(hdrs).get("transfer-encoding") == "chunked"
    assert how in ("eof", "reset"), "a cut upstream stream was ended with the last chunk"
    assert b"[DONE]" not in got


def test_upstream_reset_midstream_h1_delivers_events_before_close(tollgate):
    """What the upstream sent before breaking (3 events) reaches the client."""
    status, _, got, _ = h1_reset_stream(tollgate)
    assert status == 200
    assert len(sse_events(got)) == 3


def h2_reset_stream(t, tls):
    c = H2Client(t.port("tls" if tls else "plain"), tls=tls)
    try:
        sid = c.request("POST", "/v1/chat/completions",
                        headers=[("x-demo-mode", RESET_MODE)], body=chat_body(TOKENS))
        st = c.wait(sid)
        # The connection itself survives: another request on it works.
        ok = c.wait(c.request("GET", "/healthz"))
    finally:
        c.close()
    return st, ok


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
def test_upstream_reset_midstream_h2_rst_internal_error(tollgate, tls):
    st, ok = h2_reset_stream(tollgate, tls)
    assert st.reset == h2.errors.ErrorCodes.INTERNAL_ERROR, (st.reset, st.ended)
    assert not st.ended
    assert b"[DONE]" not in bytes(st.data)
    assert ok.status == 200 and ok.ended


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
def test_upstream_reset_midstream_h2_delivers_events_before_rst(tollgate, tls):
    """What the upstream sent before breaking (the 200 head and 3 events) still
    reaches the h2 client, as it does on HTTP/1.1, before the RST_STREAM."""
    st, _ = h2_reset_stream(tollgate, tls)
    assert st.status == 200, f"no response head before RST_STREAM (reset={st.reset})"
    assert len(sse_events(bytes(st.data))) == 3
    assert st.reset == h2.errors.ErrorCodes.INTERNAL_ERROR


def demo_open(demo):
    return demo.stats()["open_connections"]


def wait_open(demo, want, within):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if demo_open(demo) == want:
            return True
        time.sleep(0.05)
    return demo_open(demo) == want


def test_client_close_midstream_h1_cancels_upstream(tollgate, fresh_demo):
    base = demo_open(fresh_demo)
    c = H1Conn(tollgate.port())
    try:
        body = chat_body(50)
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"x-demo-mode: delay-between=200\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        status, hdrs, _ = c.read_head()
        assert status == 200
        assert demo_open(fresh_demo) == base + 1
    finally:
        c.close()
    assert wait_open(fresh_demo, base, 2.0 * SLOW), "upstream request not cancelled"


def test_client_rst_stream_midstream_h2_cancels_upstream(tollgate, fresh_demo):
    base = demo_open(fresh_demo)
    c = H2Client(tollgate.port())
    try:
        sid = c.request("POST", "/v1/chat/completions",
                        headers=[("x-demo-mode", "delay-between=200")], body=chat_body(50))
        deadline = time.monotonic() + 10 * SLOW
        while not c.streams[sid].data and c.pump(deadline - time.monotonic()):
            pass
        assert c.streams[sid].status == 200
        assert demo_open(fresh_demo) == base + 1
        c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        c.flush()
        assert wait_open(fresh_demo, base, 2.0 * SLOW), "upstream request not cancelled"
        # The h2 connection itself goes on.
        ok = c.wait(c.request("GET", "/healthz"))
        assert ok.status == 200
    finally:
        c.close()
