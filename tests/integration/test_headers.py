"""Request and response header handling, observed through the demo's /echo
(which returns the exact header list it received)."""
import re

import pytest

from conftest import base_config
from helpers import H1Conn, H2Client, echo_headers, header_values

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def echo_h1(t, headers, name=None, tls=False):
    c = H1Conn(t.port(name), tls=tls)
    try:
        status, hdrs, body = c.request("GET", "/echo", headers=headers)
    finally:
        c.close()
    assert status == 200, body
    return hdrs, echo_headers(body)


def echo_h2(t, headers, name=None, tls=False):
    c = H2Client(t.port(name), tls=tls)
    try:
        st = c.wait(c.request("GET", "/echo", headers=headers))
    finally:
        c.close()
    assert st.status == 200, bytes(st.data)
    return st.headers, echo_headers(bytes(st.data))


def names(hlist):
    return [k for k, _ in hlist]


def test_hop_by_hop_headers_not_forwarded(tollgate):
    _, up = echo_h1(tollgate, [
        ("Connection", "x-foo, keep-alive"),
        ("X-Foo", "must-go"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Upgrade", "websocket"),
        ("Proxy-Connection", "keep-alive"),
        ("X-Keep", "stays"),
    ])
    n = names(up)
    for h in ["x-foo", "keep-alive", "te", "upgrade", "proxy-connection"]:
        assert h not in n, up
    for v in header_values(up, "connection"):
        assert "x-foo" not in v.lower(), up
    assert header_values(up, "x-keep") == ["stays"]


def test_connection_named_header_removed_case_insensitive(tollgate):
    _, up = echo_h1(tollgate, [("Connection", "X-Secret-Hop"), ("x-secret-hop", "1"),
                               ("X-Other", "2")])
    assert "x-secret-hop" not in names(up), up
    assert header_values(up, "x-other") == ["2"]


@pytest.mark.parametrize("proto", ["h1", "h2c"])
def test_x_forwarded_for_is_client_ip(tollgate, proto):
    _, up = (echo_h1 if proto == "h1" else echo_h2)(tollgate, [])
    assert header_values(up, "x-forwarded-for") == ["127.0.0.1"]


@pytest.mark.parametrize("proto", ["h1", "h2c"])
def test_x_forwarded_for_appends_to_client_value(tollgate, proto):
    _, up = (echo_h1 if proto == "h1" else echo_h2)(
        tollgate, [("x-forwarded-for", "203.0.113.9")])
    assert header_values(up, "x-forwarded-for") == ["203.0.113.9, 127.0.0.1"]


@pytest.mark.parametrize("proto,listener,tls,expect", [
    ("h1", "plain", False, "http"),
    ("h2c", "plain", False, "http"),
    ("h1", "tls", True, "https"),
    ("h2", "tls", True, "https"),
])
def test_x_forwarded_proto(tollgate, proto, listener, tls, expect):
    fn = echo_h1 if proto == "h1" else echo_h2
    _, up = fn(tollgate, [("x-forwarded-proto", "gopher")], name=listener, tls=tls)
    assert header_values(up, "x-forwarded-proto") == [expect]


@pytest.mark.parametrize("proto", ["h1", "h2c"])
def test_client_x_tollgate_principal_removed(tollgate, proto):
    _, up = (echo_h1 if proto == "h1" else echo_h2)(
        tollgate, [("x-tollgate-principal", "admin"), ("x-tollgate-tenant", "evil")])
    for k, v in up:
        assert v not in ("admin", "evil"), up


@pytest.mark.parametrize("proto", ["h1", "h2c"])
def test_sane_request_id_kept(tollgate, proto):
    resp, up = (echo_h1 if proto == "h1" else echo_h2)(tollgate, [("x-request-id", "abc-123")])
    assert header_values(up, "x-request-id") == ["abc-123"]
    assert header_values(resp, "x-request-id") == ["abc-123"]


@pytest.mark.parametrize("proto", ["h1", "h2c"])
@pytest.mark.parametrize("bad", ["abc 123", "x" * 200], ids=["space", "200chars"])
def test_insane_request_id_replaced(tollgate, proto, bad):
    resp, up = (echo_h1 if proto == "h1" else echo_h2)(tollgate, [("x-request-id", bad)])
    ids = header_values(up, "x-request-id")
    assert len(ids) == 1 and HEX32.match(ids[0]), up
    assert header_values(resp, "x-request-id") == ids


@pytest.mark.parametrize("proto", ["h1", "h2c"])
def test_response_carries_generated_request_id(tollgate, proto):
    resp, up = (echo_h1 if proto == "h1" else echo_h2)(tollgate, [])
    ids = header_values(up, "x-request-id")
    assert len(ids) == 1 and HEX32.match(ids[0]), up
    assert header_values(resp, "x-request-id") == ids


def test_generated_request_ids_differ(tollgate):
    seen = set()
    for _ in range(5):
        resp, _ = echo_h1(tollgate, [])
        seen.update(header_values(resp, "x-request-id"))
    assert len(seen) == 5


@pytest.mark.parametrize("proto", ["h1", "h2c"])
def test_upstream_authorization_from_env(start_tollgate, fresh_demo, proto):
    cfg = base_config(fresh_demo)
    cfg["upstreams"][0]["authorization_env"] = "TG_TEST_UPSTREAM_TOKEN"
    t = start_tollgate(cfg, env={"TG_TEST_UPSTREAM_TOKEN": "upstream-s3cret"})
    _, up = (echo_h1 if proto == "h1" else echo_h2)(
        t, [("authorization", "Bearer client-key-123")])
    assert header_values(up, "authorization") == ["Bearer upstream-s3cret"], up
    assert all("client-key-123" not in v for _, v in up), up
