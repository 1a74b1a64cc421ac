"""Request smuggling and malformed requests (RFC 9112, RFC 9113; THREATS §2).
Every malformed HTTP/1.1 head gets an error status line with
"connection: close", the connection is closed afterwards, and the upstream
never sees a request. Malformed HTTP/2 requests get RST_STREAM PROTOCOL_ERROR
or a 400, and are never forwarded."""
import json
import re

import h2.errors
import pytest

from conftest import SLOW
from helpers import H1Conn, H2Client, H2Stream, raw_exchange

H = "Host: 127.0.0.1\r\n"

# id, raw request bytes, expected status
H1_CASES = [
    ("cl-and-te",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-and-cl",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("two-different-cl",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("cl-plus-sign",
     b"POST /echo HTTP/1.1\r\n" + H.encode() + b"Content-Length: +3\r\n\r\nabc", 400),
    ("cl-space-before-colon",
     b"POST /echo HTTP/1.1\r\n" + H.encode() + b"Content-Length : 3\r\n\r\nabc", 400),
    ("te-space-before-colon",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("obs-fold",
     b"GET /echo HTTP/1.1\r\n" + H.encode() + b"X-A: b\r\n c\r\n\r\n", 400),
    ("obs-fold-te",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    ("bare-lf",
     b"GET /echo HTTP/1.1\n" + H.encode().replace(b"\r\n", b"\n") + b"\n", 400),
    ("bare-lf-mixed",
     b"GET /echo HTTP/1.1\r\n" + H.encode() + b"X-A: b\n\r\n", 400),
    ("nul-in-value",
     b"GET /echo HTTP/1.1\r\n" + H.encode() + b"X-A: b\x00c\r\n\r\n", 400),
    ("cr-in-value",
     b"GET /echo HTTP/1.1\r\n" + H.encode() + b"X-A: b\rc\r\n\r\n", 400),
    ("cr-x-ends-head",  # "\r\n\rX" taken as the end of the head (CVE-2023-30589)
     b"GET /echo HTTP/1.1\r\n" + H.encode() + b"\rX-A: b\r\n\r\n", 400),
    ("te-gzip",
     b"POST /echo HTTP/1.1\r\n" + H.encode() + b"Transfer-Encoding: gzip\r\n\r\nabc", 501),
    ("te-identity-chunked",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-chunked-chunked",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("chunk-size-0x",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-data-without-crlf",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400),
    ("chunk-size-lf-only",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
    ("missing-host-1.1",
     b"GET /echo HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("two-hosts",
     b"GET /echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400),
    ("double-space-request-line",
     b"GET  /echo HTTP/1.1\r\n" + H.encode() + b"\r\n", 400),
    ("space-in-header-name",
     b"GET /echo HTTP/1.1\r\n" + H.encode() + b"X A: b\r\n\r\n", 400),
    ("whitespace-before-first-header",
     b"GET /echo HTTP/1.1\r\n X-A: b\r\n" + H.encode() + b"\r\n", 400),
    ("http10-with-te",
     b"POST /echo HTTP/1.0\r\n" + H.encode() +
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("head-70kib",
     b"GET /echo HTTP/1.1\r\n" + H.encode() + b"X-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n",
     431),
]


def parse_error_response(data):
    m = re.match(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n", data)
    assert m, f"no status line in {data[:200]!r}"
    head, _, body = data.partition(b"\r\n\r\n")
    hdrs = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        hdrs.setdefault(k.strip().lower().decode(), []).append(v.strip().decode())
    return int(m.group(1)), hdrs, body


@pytest.mark.parametrize("raw,status", [c[1:] for c in H1_CASES], ids=[c[0] for c in H1_CASES])
def test_h1_malformed_rejected_and_closed(tollgate, fresh_demo, raw, status):
    data, how = raw_exchange(tollgate.port(), raw, timeout=5)
    assert how in ("eof", "reset"), f"connection not closed ({how}); got {data[:300]!r}"
    got, hdrs, body = parse_error_response(data)
    assert got == status, data[:300]
    assert hdrs.get("connection") == ["close"], data[:300]
    j = json.loads(body)
    assert "code" in j["error"] and "message" in j["error"]
    # Exactly one response: nothing after the error (no second, smuggled answer).
    assert data.count(b"HTTP/1.1 ") == 1, data
    st = fresh_demo.stats()
    assert st["requests"] == 0, st


@pytest.mark.parametrize("raw,status",
                         [c[1:] for c in H1_CASES if c[0] != "head-70kib"],
                         ids=[c[0] for c in H1_CASES if c[0] != "head-70kib"])
def test_h1_malformed_after_good_request_on_warm_pool(tollgate, fresh_demo, raw, status):
    """The same heads after a good request on the same connection (and with a
    warm upstream pool): the good one is answered, the bad one rejected, and
    the upstream saw only the good one."""
    good = b"GET /echo/good HTTP/1.1\r\n" + H.encode() + b"\r\n"
    c = H1Conn(tollgate.port())
    try:
        c.send(good)
        st, hdrs, body = c.read_head()
        assert st == 200
        c.read_body(st, hdrs)
        try:
            c.send(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass
        how = c.wait_closed(5)
        assert how in ("eof", "reset"), f"connection not closed; got {c.buf[:300]!r}"
        got, hdrs, _ = parse_error_response(c.buf)
        assert got == status
        assert hdrs.get("connection") == ["close"]
    finally:
        c.close()
    st = fresh_demo.stats()
    assert st["by_path"] == {"/echo/good": 1}, st


SMUGGLED = b"GET /echo/smuggled HTTP/1.1\r\n" + H.encode() + b"\r\n"

SMUGGLE_CASES = [
    ("cl-te",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(SMUGGLED))
     + SMUGGLED),
    ("te-cl",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n%x\r\n" % len(SMUGGLED)
     + SMUGGLED + b"\r\n0\r\n\r\n"),
    ("te-space-colon",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Content-Length: %d\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n" % (5 + len(SMUGGLED))
     + SMUGGLED),
    ("te-obs-fold",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Content-Length: %d\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" % (5 + len(SMUGGLED))
     + SMUGGLED),
    ("te-identity-chunked",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("dup-cl",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED),
    ("chunk-no-crlf",
     b"POST /echo HTTP/1.1\r\n" + H.encode() +
     b"Transfer-Encoding: chunked\r\n\r\n1\r\nAXX0\r\n\r\n" + SMUGGLED),
]


@pytest.mark.parametrize("raw", [c[1] for c in SMUGGLE_CASES], ids=[c[0] for c in SMUGGLE_CASES])
def test_h1_smuggling_never_reaches_upstream(tollgate, fresh_demo, raw):
    # Warm the upstream pool first, so a forwarded head would be written at once.
    c = H1Conn(tollgate.port())
    try:
        assert c.request("GET", "/healthz")[0] == 200
    finally:
        c.close()
    fresh_demo.reset()
    data, how = raw_exchange(tollgate.port(), raw, timeout=5)
    assert how in ("eof", "reset")
    status, hdrs, _ = parse_error_response(data)
    assert 400 <= status < 600
    assert hdrs.get("connection") == ["close"]
    assert data.count(b"HTTP/1.1 ") == 1, data
    st = fresh_demo.stats()
    assert "/echo/smuggled" not in st["by_path"], st
    assert st["requests"] <= 1, st


# ---- HTTP/2 ----------------------------------------------------------------

def base_h2(path="/echo"):
    return [(":method", "GET"), (":path", path), (":scheme", "http"),
            (":authority", "127.0.0.1")]


H2_CASES = [
    ("uppercase-name", base_h2() + [("X-Upper", "a")]),
    ("connection-header", base_h2() + [("connection", "keep-alive")]),
    ("keep-alive-header", base_h2() + [("keep-alive", "timeout=5")]),
    ("upgrade-header", base_h2() + [("upgrade", "websocket")]),
    ("transfer-encoding-header", base_h2() + [("transfer-encoding", "chunked")]),
    ("te-gzip", base_h2() + [("te", "gzip")]),
    ("crlf-in-value", base_h2() + [("x-a", "b\r\nx-injected: 1")]),
    ("lf-in-value", base_h2() + [("x-a", "b\nx-injected: 1")]),
    ("nul-in-value", base_h2() + [("x-a", "b\x00c")]),
    ("missing-path", [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1")]),
    ("missing-method", [(":path", "/echo"), (":scheme", "http"), (":authority", "127.0.0.1")]),
    ("path-without-slash", [(":method", "GET"), (":path", "echo"), (":scheme", "http"),
                            (":authority", "127.0.0.1")]),
    ("duplicate-method", base_h2() + [(":method", "POST")]),
    ("pseudo-after-regular", [(":method", "GET"), (":scheme", "http"), ("x-a", "b"),
                              (":path", "/echo"), (":authority", "127.0.0.1")]),
    ("authority-differs-from-host", base_h2() + [("host", "evil.example")]),
    ("space-in-name", base_h2() + [("x a", "b")]),
]


@pytest.mark.parametrize("hdrs", [c[1] for c in H2_CASES], ids=[c[0] for c in H2_CASES])
def test_h2_malformed_rejected_not_forwarded(tollgate, fresh_demo, hdrs):
    c = H2Client(tollgate.port(), validate=False)
    try:
        sid = c.request(None, None, raw_headers=hdrs)
        st = c.wait(sid, timeout=5)
        # The connection must still serve a good request afterwards (a stream error,
        # not a connection error), unless tollgate chose to end it with GOAWAY.
        ok = None
        if not c.closed and c.goaway is None:
            ok = c.wait(c.request("GET", "/healthz"), timeout=5)
    finally:
        c.close()
    assert (st.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR) or st.status == 400, \
        f"status={st.status} reset={st.reset} goaway={c.goaway} data={bytes(st.data)[:200]!r}"
    stats = fresh_demo.stats()
    assert "/echo" not in stats["by_path"], stats
    if ok is not None:
        assert ok.status == 200
        assert stats["by_path"] == {"/healthz": 1}, stats
    else:
        assert stats["requests"] == 0, stats


@pytest.mark.parametrize("data", [b"abcdefgh", b"a", b""], ids=["longer", "shorter", "none"])
def test_h2_content_length_mismatch_rejected(tollgate, fresh_demo, data):
    """DATA that disagrees with the declared content-length makes the stream
    malformed (RFC 9113 §8.1.1): it is reset (or answered 400) and the upstream
    never gets a complete request, which /echo would have answered with 200."""
    c = H2Client(tollgate.port(), validate=False)
    try:
        sid = c.conn.get_next_available_stream_id()
        c.streams[sid] = H2Stream()
        c.conn.send_headers(sid, [(":method", "POST"), (":path", "/echo"), (":scheme", "http"),
                                  (":authority", "127.0.0.1"), ("content-length", "3")],
                            end_stream=not data)
        if data:
            c.conn.send_data(sid, data, end_stream=True)
        c.flush()
        st = c.wait(sid, timeout=5)
    finally:
        c.close()
    assert st.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR or st.status == 400, \
        f"status={st.status} reset={st.reset} data={bytes(st.data)[:200]!r}"
    assert st.status != 200
