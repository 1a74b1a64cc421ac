"""Memory held by idle keep-alive connections: 1000 of them (half HTTP/1.1,
half h2c), each after one completed request, keep tollgate under 64 MiB RSS
(release build; under ASan only survival is checked)."""
import resource

from conftest import BUILD, SLOW, rss_kib
from helpers import H1Conn, H2Client

N = 1000
RSS_MAX_KIB = 64 * 1024
ASAN = "asan" in str(BUILD)


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_1000_idle_keepalive_connections_rss(start_tollgate, fresh_demo):
    from conftest import base_config
    # tollgate inherits the limit: client sockets + its own + slack.
    assert raise_fd_limit(2 * N + 512) >= 2 * N + 256
    t = start_tollgate(base_config(fresh_demo, limits={"idle_timeout_ms": 120000,
                                                        "max_connections": 10000}))
    h1, h2c = [], []
    try:
        for i in range(N):
            if i % 2 == 0:
                c = H1Conn(t.port())
                h1.append(c)
                status, _, _ = c.request("GET", "/healthz")
            else:
                c = H2Client(t.port())
                h2c.append(c)
                status = c.wait(c.request("GET", "/healthz"), timeout=10).status
            assert status == 200, f"request {i}"
        rss = rss_kib(t.pid)
        print(f"tollgate RSS with {N} idle connections: {rss} KiB")
        assert t.proc.poll() is None, "tollgate died"
        # All still open and usable: sample a few of each kind.
        for c in h1[:: N // 20]:
            assert c.request("GET", "/healthz")[0] == 200
        for c in h2c[:: N // 20]:
            assert c.wait(c.request("GET", "/healthz"), timeout=10).status == 200
        if not ASAN:
            assert rss < RSS_MAX_KIB, f"RSS {rss} KiB with {N} idle connections"
    finally:
        for c in h1 + h2c:
            c.close()
    assert fresh_demo.stats()["requests"] == N + 2 * len(h1[:: N // 20])
