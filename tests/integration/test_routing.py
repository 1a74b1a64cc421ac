"""Routing: deny by default (404 before any upstream is touched) and the
longest path_prefix wins whatever the order of the routes in the config."""
import json

import httpx
import pytest

from conftest import SLOW, Demo, base_config, curl
from helpers import H1Conn, H2Client


def assert_route_not_found(status, body):
    assert status == 404
    j = json.loads(body)
    assert j["error"]["code"] == "route_not_found"
    assert j["error"]["type"] == "invalid_request_error"
    assert isinstance(j["error"]["message"], str) and j["error"]["message"]


@pytest.mark.parametrize("path", ["/nope", "/v1", "/", "/ech", "/V1/chat/completions"])
def test_unrouted_path_404_h1_and_upstream_untouched(tollgate, fresh_demo, path):
    c = H1Conn(tollgate.port())
    try:
        status, hdrs, body = c.request("POST", path, body=b'{"model":"m"}')
    finally:
        c.close()
    assert_route_not_found(status, body)
    assert dict(hdrs)["content-type"] == "application/json"
    st = fresh_demo.stats()
    # "connections" counts the stats request's own connection: 1 means tollgate made none.
    assert st["requests"] == 0 and st["connections"] == 1, st


def test_unrouted_path_404_h2_and_upstream_untouched(tollgate, fresh_demo):
    c = H2Client(tollgate.port())
    try:
        st = c.wait(c.request("GET", "/not/routed"))
    finally:
        c.close()
    assert_route_not_found(st.status, bytes(st.data))
    stats = fresh_demo.stats()
    assert stats["requests"] == 0 and stats["connections"] == 1, stats


def test_unrouted_path_404_curl_tls(tollgate, fresh_demo):
    r = curl("-k", "--http2", "-w", "\n%{http_code}", tollgate.url("/missing", "tls", "https"))
    body, _, code = r.stdout.rpartition("\n")
    assert_route_not_found(int(code), body)
    assert fresh_demo.stats()["requests"] == 0


@pytest.fixture
def demo_b():
    d = Demo()
    yield d
    d.stop()


@pytest.mark.parametrize("order", ["short-first", "long-first"])
def test_longest_prefix_wins(start_tollgate, fresh_demo, demo_b, order):
    demo_a = fresh_demo
    routes = [{"path_prefix": "/v1/", "upstream": "a"},
              {"path_prefix": "/v1/special", "upstream": "b"}]
    if order == "long-first":
        routes.reverse()
    cfg = base_config(demo_a, upstreams=[
        {"name": "a", "servers": [demo_a.addr]},
        {"name": "b", "servers": [demo_b.addr]},
    ], routes=routes)
    t = start_tollgate(cfg)
    with httpx.Client(timeout=10 * SLOW) as c:
        for p in ["/v1/special", "/v1/special/x", "/v1/specialist"]:
            c.get(t.url(p))
        for p in ["/v1/models", "/v1/spec", "/v1/other/special"]:
            c.get(t.url(p))
    a, b = demo_a.stats()["by_path"], demo_b.stats()["by_path"]
    assert b == {"/v1/special": 1, "/v1/special/x": 1, "/v1/specialist": 1}, b
    assert a == {"/v1/models": 1, "/v1/spec": 1, "/v1/other/special": 1}, a
