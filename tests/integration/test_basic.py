"""End-to-end requests through tollgate with real clients on every protocol
(HTTP/1.1, h2c, h2 and HTTP/1.1 over TLS), keep-alive, load with h2load, and
request-body integrity checked by the demo's /echo SHA-256."""
import json
import os
import re
import subprocess

import httpx
import pytest

from conftest import CERTS, SLOW, curl
from helpers import H1Conn, sha256_hex

# name, curl flags, listener, scheme, expected %{http_version}
MODES = [
    ("h1", ["--http1.1"], "plain", "http", "1.1"),
    ("h2c", ["--http2-prior-knowledge"], "plain", "http", "2"),
    ("tls-h2", ["--http2", "-k"], "tls", "https", "2"),
    ("tls-h1", ["--http1.1", "-k"], "tls", "https", "1.1"),
]


def curl_call(*args):
    """curl with the status and protocol version appended after a marker."""
    r = curl("-w", "\n@@%{http_code} %{http_version}", *args)
    assert r.returncode == 0, r.stderr
    body, _, tail = r.stdout.rpartition("\n@@")
    code, version = tail.split()
    return int(code), version, body


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
def test_get_end_to_end(tollgate, fresh_demo, mode):
    _, flags, lst, scheme, version = mode
    code, ver, body = curl_call(*flags, tollgate.url("/echo?x=1", lst, scheme))
    assert code == 200
    assert ver == version
    j = json.loads(body)
    assert j["method"] == "GET"
    assert j["path"] == "/echo?x=1"
    assert j["body_bytes"] == 0
    assert fresh_demo.stats()["by_path"] == {"/echo": 1}


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
def test_post_json_end_to_end(tollgate, fresh_demo, mode):
    _, flags, lst, scheme, version = mode
    payload = json.dumps({"model": "demo-model", "messages": [{"role": "user",
                                                               "content": "hello"}]})
    code, ver, body = curl_call(*flags, "-H", "content-type: application/json",
                                "--data-binary", payload, tollgate.url("/echo", lst, scheme))
    assert code == 200
    assert ver == version
    j = json.loads(body)
    assert j["method"] == "POST"
    assert j["body_bytes"] == len(payload)
    assert j["body_sha256"] == sha256_hex(payload.encode())
    # And a real completion through the passthrough route.
    code, ver, body = curl_call(*flags, "-H", "content-type: application/json",
                                "--data-binary", payload,
                                tollgate.url("/v1/chat/completions", lst, scheme))
    assert code == 200
    assert json.loads(body)["object"] == "chat.completion"


def test_httpx_h2_tls(tollgate):
    with httpx.Client(http2=True, verify=str(CERTS / "ca.crt"), timeout=10 * SLOW) as c:
        r = c.get(tollgate.url("/echo", "tls", "https"))
        assert r.status_code == 200
        assert r.http_version == "HTTP/2"
        assert r.json()["method"] == "GET"
        body = b'{"model":"demo-model","messages":[]}'
        r = c.post(tollgate.url("/echo", "tls", "https"), content=body,
                   headers={"content-type": "application/json"})
        assert r.status_code == 200
        assert r.http_version == "HTTP/2"
        assert r.json()["body_sha256"] == sha256_hex(body)


def test_nghttp_h2c(tollgate):
    r = subprocess.run(["nghttp", "-nv", "-t", f"{int(10 * SLOW)}s", tollgate.url("/echo")],
                       capture_output=True, text=True, timeout=20 * SLOW)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "recv SETTINGS frame" in r.stdout
    assert re.search(r":status: 200", r.stdout), r.stdout
    assert re.search(r"recv DATA frame .*\n.*END_STREAM", r.stdout), r.stdout


def h2load(*args):
    r = subprocess.run(["h2load", *args], capture_output=True, text=True, timeout=120 * SLOW)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def assert_all_2xx(out, n):
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored", out)
    assert m, out
    assert m.group(4) == str(n), out
    assert m.group(5) == "0" and m.group(6) == "0", out
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert m and m.group(1) == str(n), out


def test_h2load_h2c(tollgate):
    assert_all_2xx(h2load("-n", "2000", "-c", "10", "-m", "10", tollgate.url("/healthz")), 2000)


def test_h2load_tls_h2(tollgate):
    out = h2load("-n", "2000", "-c", "10", "-m", "10",
                 tollgate.url("/healthz", "tls", "https"))
    assert "Application protocol: h2" in out, out
    assert_all_2xx(out, 2000)


def test_h2load_h1(tollgate):
    assert_all_2xx(h2load("--h1", "-n", "2000", "-c", "10", "-m", "1", tollgate.url("/healthz")),
                   2000)


def test_keepalive_curl_reuses_connection(tollgate, fresh_demo):
    u = tollgate.url("/healthz")
    r = curl("-v", "--http1.1", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
             "-w", "%{http_code} %{num_connects}\n", u, u, u)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines == ["200", "1", "200", "0", "200", "0"], r.stdout
    assert r.stderr.count("Re-using existing connection") == 2, r.stderr
    assert fresh_demo.stats()["requests"] == 3


def test_keepalive_raw_socket_sequential_requests(tollgate, fresh_demo):
    c = H1Conn(tollgate.port())
    try:
        for i in range(5):
            status, hdrs, body = c.request("GET", f"/echo/{i}")
            assert status == 200
            assert json.loads(body)["path"] == f"/echo/{i}"
            assert ("connection", "close") not in hdrs
    finally:
        c.close()
    assert fresh_demo.stats()["requests"] == 5


@pytest.fixture
def mib_file(tmp_path):
    data = os.urandom(1024 * 1024)
    p = tmp_path / "body.bin"
    p.write_bytes(data)
    return p, sha256_hex(data)


BODY_MODES = [
    ("h1-content-length", ["--http1.1"], "plain", "http"),
    ("h1-chunked", ["--http1.1", "-H", "Transfer-Encoding: chunked"], "plain", "http"),
    ("h2c", ["--http2-prior-knowledge"], "plain", "http"),
    ("tls-h2", ["--http2", "-k"], "tls", "https"),
]


@pytest.mark.parametrize("mode", BODY_MODES, ids=[m[0] for m in BODY_MODES])
def test_request_body_integrity_1mib(tollgate, mib_file, mode):
    _, flags, lst, scheme = mode
    path, digest = mib_file
    code, _, body = curl_call(*flags, "-H", "content-type: application/octet-stream",
                              "--data-binary", f"@{path}", tollgate.url("/echo", lst, scheme))
    assert code == 200, body
    j = json.loads(body)
    assert j["body_bytes"] == 1024 * 1024
    assert j["body_sha256"] == digest


def test_pipelined_requests_answered_in_order(tollgate, fresh_demo):
    c = H1Conn(tollgate.port())
    try:
        c.send(b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % i
                        for i in range(3)))
        paths = []
        for _ in range(3):
            status, hdrs = c.read_head()[:2]
            assert status == 200
            paths.append(json.loads(c.read_body(status, hdrs))["path"])
    finally:
        c.close()
    assert paths == ["/echo/0", "/echo/1", "/echo/2"]


def test_head_request_has_no_body(tollgate):
    c = H1Conn(tollgate.port())
    try:
        status, hdrs, body = c.request("HEAD", "/healthz")
        assert status == 200 and body == b""
        # The connection is still in sync: a GET right after works.
        status, _, body = c.request("GET", "/healthz")
        assert status == 200 and body == b"ok"
    finally:
        c.close()


def test_upstream_connections_reused(tollgate, fresh_demo):
    """Sequential requests share one pooled upstream connection."""
    c = H1Conn(tollgate.port())
    try:
        for _ in range(10):
            assert c.request("GET", "/healthz")[0] == 200
    finally:
        c.close()
    st = fresh_demo.stats()
    assert st["requests"] == 10
    assert st["connections"] == 2, st  # one from tollgate, one for this stats call
