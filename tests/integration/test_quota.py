"""Quotas end to end (SPEC §3 policies/pricing/quota, §5 request limits,
rate-limit headers and 429s, §6 quotas; THREATS §4 Redis faults).

Every test runs the real binary in front of the demo model server, with API
keys, and for the Redis backend a real redis-server started by the test.
What the demo server reports as usage is what the client sees in its JSON
body (or usage event): the tests sum those numbers and compare them with
what Redis holds (tokens_per_day counters are exact integers), so "charged
= used" is checked exactly, not approximately."""
import concurrent.futures
import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request

import httpx
import pytest

from authdata import key_entry, new_api_key, write_keys
from conftest import SLOW, RedisServer, Tollgate, base_config, free_port
from helpers import sse_events

MODEL = "demo-1"
DAY = 86400


# ---------------------------------------------------------------------------------------------
# Helpers

class Keys:
    """Two principals of tenant "acme", one of tenant "globex", all on policy "std"."""

    def __init__(self, d):
        self.a, self.b, self.c = new_api_key(), new_api_key(), new_api_key()
        self.path = write_keys(d / "keys.json", [
            key_entry("a-1", self.a, "team-a", "std", "acme"),
            key_entry("b-1", self.b, "team-b", "std", "acme"),
            key_entry("c-1", self.c, "team-c", "std", "globex"),
        ])


def quota_config(demo, keys, policy, quota=None, pricing=None, audit=None, admin=False):
    cfg = base_config(demo)
    cfg["routes"] += [
        {"path_prefix": "/v1/chat/", "upstream": "demo", "api": "openai"},
        {"path_prefix": "/v1/completions", "upstream": "demo", "api": "openai"},
        {"path_prefix": "/v1/embeddings", "upstream": "demo", "api": "openai"},
    ]
    cfg["auth"] = {"api_keys_file": str(keys.path), "failed_auth_per_minute_per_ip": 1000000}
    cfg["policies"] = {"std": {"models": ["demo-*"], **policy}}
    if quota is not None:
        cfg["quota"] = quota
    if pricing is not None:
        cfg["pricing"] = pricing
    if audit is not None:
        cfg["audit"] = {"file": str(audit), "hmac_key_env": "TG_AUDIT_KEY", "fsync": "never"}
    if admin or (quota or {}).get("backend") == "redis":
        cfg["admin"] = {"address": "127.0.0.1", "port": free_port()}
    return cfg


def redis_up(t, timeout=5):
    """Wait until every worker of t has its Redis connection up (/readyz)."""
    assert wait_for(lambda: readyz(t)[1]["quota_backend"] == "redis", timeout), readyz(t)
    return t


ENV = {"TG_AUDIT_KEY": "quota-audit-key-" + "0123456789abcdef" * 2}


def redis_quota(r, **over):
    q = {"backend": "redis",
         "redis": {"address": "127.0.0.1", "port": r.port, "timeout_ms": 200, "key_prefix": "tg:"},
         "on_backend_error": "deny"}
    q.update(over)
    return q


def chat(t, key, max_tokens=4, stream=False, headers=None, timeout=20, proto="h1", **extra):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": max_tokens, "stream": stream, **extra}
    if max_tokens is None:
        del body["max_tokens"]
    h = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    h.update(headers or {})
    with httpx.Client(http1=proto == "h1", http2=proto == "h2c", timeout=timeout * SLOW) as c:
        return c.post(t.url("/v1/chat/completions"), content=json.dumps(body).encode(), headers=h)


def get(t, key, path="/echo/x"):
    with httpx.Client(timeout=20 * SLOW) as c:
        return c.get(t.url(path), headers={"authorization": f"Bearer {key}"})


def usage_of(r):
    """prompt + completion tokens the client was told, from a JSON body or SSE events."""
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        for ev in sse_events(r.content):
            if ev != "[DONE]":
                u = json.loads(ev).get("usage")
                if u:
                    return u["prompt_tokens"] + u["completion_tokens"]
        return None
    u = r.json()["usage"]
    return u["prompt_tokens"] + u["completion_tokens"]


def assert_error(r, status, code, etype):
    assert r.status_code == status, (r.status_code, r.text)
    e = r.json()["error"]
    assert e["code"] == code and e["type"] == etype, r.text


def today():
    return int(time.time()) // DAY


def tpd(r, principal="team-a"):
    """tokens_per_day counter of today in Redis (0 when absent)."""
    v = r.client().get(f"tg:{{{principal}}}:tpd:{today()}")
    return int(v) if v is not None else 0


def wait_for(cond, timeout, step=0.05):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def audit_requests(path):
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln]
    return [r for r in recs if r["type"] == "request"]


def scrape(t):
    with urllib.request.urlopen(f"http://127.0.0.1:{t.cfg['admin']['port']}/metrics",
                                timeout=5) as r:
        return r.read().decode()


def readyz(t):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{t.cfg['admin']['port']}/readyz",
                                    timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metric(text, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pat = re.escape(name + ("{" + want + "}" if labels else "")) + r" (\S+)"
    m = re.search(r"^" + pat + "$", text, re.M)
    return float(m.group(1)) if m else None


@pytest.fixture
def keys(tmp_path):
    return Keys(tmp_path)


# ---------------------------------------------------------------------------------------------
# Per-minute limits, headers and 429s (local backend)

def test_requests_per_minute_local(start_tollgate, fresh_demo, keys):
    t = start_tollgate(quota_config(fresh_demo, keys, {"requests_per_minute": 3}))
    before = fresh_demo.stats()["requests"]
    remaining = []
    for _ in range(3):
        r = get(t, keys.a)
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
        assert re.fullmatch(r"(\d+m)?\d+(\.\d+)?s|\d+ms", r.headers["x-ratelimit-reset-requests"])
        assert "x-ratelimit-limit-tokens" not in r.headers  # no tokens_per_minute limit
    assert remaining == [2, 1, 0]
    r = get(t, keys.a)
    assert_error(r, 429, "rate_limit_exceeded", "rate_limit_error")
    # GCRA: one request every 20 s; the first came less than a few seconds ago.
    assert 14 <= int(r.headers["retry-after"]) <= 20, r.headers
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert fresh_demo.stats()["requests"] == before + 3  # the 429 never reached the upstream
    # Another principal has its own bucket.
    assert get(t, keys.c).status_code == 200


def test_tokens_per_minute_and_reset_header(start_tollgate, fresh_demo, keys):
    t = start_tollgate(quota_config(fresh_demo, keys, {"tokens_per_minute": 1000}))
    r = chat(t, keys.a, max_tokens=100)
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit-tokens"] == "1000"
    rem = int(r.headers["x-ratelimit-remaining-tokens"])
    assert 850 <= rem < 1000 - 100, r.headers
    # A reservation above the whole per-minute limit can never pass.
    r = chat(t, keys.a, max_tokens=5000)
    assert_error(r, 429, "rate_limit_exceeded", "rate_limit_error")
    assert int(r.headers["retry-after"]) >= 1


def test_tenant_limit_shared_by_its_principals(start_tollgate, fresh_demo, keys):
    t = start_tollgate(quota_config(fresh_demo, keys, {"tenant": {"requests_per_minute": 2}}))
    assert get(t, keys.a).status_code == 200
    assert get(t, keys.b).status_code == 200
    r = get(t, keys.a)
    assert_error(r, 429, "rate_limit_exceeded", "rate_limit_error")
    assert get(t, keys.c).status_code == 200  # tenant globex is another bucket


def test_concurrency_lease_released_at_the_end(start_tollgate, fresh_demo, keys):
    t = start_tollgate(quota_config(fresh_demo, keys, {"concurrency": 2}))
    slow = {"x-demo-mode": f"delay-first-byte={int(1500 * SLOW)}"}
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        futs = [ex.submit(chat, t, keys.a, 2, False, slow) for _ in range(2)]
        time.sleep(0.5 * SLOW)
        third = chat(t, keys.a, 2)
        codes = sorted(f.result().status_code for f in futs)
    assert codes == [200, 200]
    assert_error(third, 429, "rate_limit_exceeded", "rate_limit_error")
    # Both leases were released: two more run side by side.
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        futs = [ex.submit(chat, t, keys.a, 2, False, slow) for _ in range(2)]
        assert sorted(f.result().status_code for f in futs) == [200, 200]


def test_day_budget_insufficient_quota_until_midnight(start_tollgate, fresh_demo, keys):
    t = start_tollgate(quota_config(fresh_demo, keys, {"tokens_per_day": 150}))
    used, r = 0, None
    for _ in range(40):
        r = chat(t, keys.a, max_tokens=10)
        if r.status_code != 200:
            break
        used += usage_of(r)
    # Settled usage (not the larger reservations) fills the day: more than the
    # 150 / 35-token reservations would allow, never more than the budget.
    assert 150 - 40 < used <= 150, used
    assert_error(r, 429, "insufficient_quota", "rate_limit_error")
    to_midnight = DAY - int(time.time()) % DAY
    assert abs(int(r.headers["retry-after"]) - to_midnight) <= 5, r.headers


def test_cost_budget_with_pricing(start_tollgate, fresh_demo, keys, tmp_path):
    audit = tmp_path / "audit.jsonl"
    # $1000 per million tokens: every token costs $0.001; $0.10 a day is ~100 tokens.
    t = start_tollgate(quota_config(
        fresh_demo, keys, {"cost_per_day": 0.10},
        pricing={"demo-*": {"input_per_million": 1000, "output_per_million": 1000},
                 "*": {"input_per_million": 0, "output_per_million": 0}},
        audit=audit), env=ENV)
    got = [chat(t, keys.a, max_tokens=10) for _ in range(8)]
    ok = [r for r in got if r.status_code == 200]
    assert ok and len(ok) < 8
    denied = [r for r in got if r.status_code == 429]
    assert_error(denied[0], 429, "insufficient_quota", "rate_limit_error")
    t.stop()
    recs = audit_requests(audit)
    allowed = [r for r in recs if r["status"] == 200]
    assert len(allowed) == len(ok)
    for rec, resp in zip(allowed, ok):
        u = resp.json()["usage"]
        assert rec["usage"] == {"prompt_tokens": u["prompt_tokens"],
                                "completion_tokens": u["completion_tokens"], "source": "upstream"}
        assert rec["cost"] == pytest.approx((u["prompt_tokens"] + u["completion_tokens"]) * 0.001)
        assert rec["timing_ms"]["quota"] is not None
    refused = [r for r in recs if r["status"] == 429]
    assert refused and all(r["reason"] == "quota.cost_per_day" for r in refused)
    assert all(r["decision"] == "deny" and r["usage"]["source"] == "none" for r in refused)


# ---------------------------------------------------------------------------------------------
# Request limits of OpenAI bodies (SPEC §3 max_tokens, §5)

def test_max_tokens_reject(start_tollgate, fresh_demo, keys):
    t = start_tollgate(quota_config(fresh_demo, keys, {"max_tokens": 50}))
    before = fresh_demo.stats()["requests"]
    r = chat(t, keys.a, max_tokens=51)
    assert_error(r, 400, "invalid_request", "invalid_request_error")
    assert "50" in r.json()["error"]["message"]
    r = chat(t, keys.a, max_tokens=None, max_completion_tokens=80)
    assert_error(r, 400, "invalid_request", "invalid_request_error")
    assert fresh_demo.stats()["requests"] == before
    assert chat(t, keys.a, max_tokens=50).status_code == 200


@pytest.mark.parametrize("value", ["12", 1.5, True, -1, [3]])
def test_max_tokens_not_an_integer_is_400(start_tollgate, fresh_demo, keys, value):
    t = start_tollgate(quota_config(fresh_demo, keys, {}))
    r = chat(t, keys.a, max_tokens=value)
    assert_error(r, 400, "invalid_request", "invalid_request_error")


def test_max_tokens_null_is_absent(start_tollgate, fresh_demo, keys):
    t = start_tollgate(quota_config(fresh_demo, keys, {"max_tokens": 6}))
    r = chat(t, keys.a, max_tokens=None)
    assert r.status_code == 200, r.text
    # A request without a limit gets the policy's cap: the demo server
    # (16 tokens by default) generated exactly 6.
    assert r.json()["usage"]["completion_tokens"] == 6
    body = {"model": MODEL, "messages": [], "max_tokens": None}
    with httpx.Client(timeout=20) as c:
        r = c.post(t.url("/v1/chat/completions"), content=json.dumps(body),
                   headers={"authorization": f"Bearer {keys.a}"})
    assert r.status_code == 200, r.text


def test_max_tokens_clamp_rewrites_the_body(start_tollgate, fresh_demo, keys):
    t = start_tollgate(quota_config(fresh_demo, keys,
                                    {"max_tokens": 7, "max_tokens_action": "clamp"}))
    for proto in ("h1", "h2c"):
        r = chat(t, keys.a, max_tokens=500, proto=proto)
        assert r.status_code == 200, r.text
        # The demo server generates exactly max_tokens tokens: it saw the clamped value.
        assert r.json()["usage"]["completion_tokens"] == 7
    r = chat(t, keys.a, max_tokens=None, max_completion_tokens=900)
    assert r.json()["usage"]["completion_tokens"] == 7
    # Streaming too: the cap is also the stream's output limit.
    r = chat(t, keys.a, max_tokens=500, stream=True)
    content = [e for e in sse_events(r.content) if e != "[DONE]" and
               json.loads(e)["choices"] and json.loads(e)["choices"][0]["delta"].get("content")]
    assert len(content) == 7


# ---------------------------------------------------------------------------------------------
# Streams: include_usage injection, stripping, cuts

def test_include_usage_injected_and_stripped(start_tollgate, fresh_demo, keys, tmp_path):
    audit = tmp_path / "audit.jsonl"
    t = start_tollgate(quota_config(fresh_demo, keys, {"requests_per_minute": 100},
                                    audit=audit), env=ENV)
    r = chat(t, keys.a, max_tokens=5, stream=True)
    assert r.status_code == 200
    evs = sse_events(r.content)
    assert evs[-1] == "[DONE]"
    assert not any(json.loads(e).get("usage") for e in evs[:-1]), evs  # stripped
    assert len([e for e in evs[:-1] if json.loads(e)["choices"]]) == 6  # 5 tokens + final
    # A client that asks gets its usage event.
    r2 = chat(t, keys.a, max_tokens=5, stream=True, stream_options={"include_usage": True})
    u = [json.loads(e)["usage"] for e in sse_events(r2.content)[:-1] if json.loads(e).get("usage")]
    assert len(u) == 1 and u[0]["completion_tokens"] == 5
    t.stop()
    recs = [r for r in audit_requests(audit) if r["path"] == "/v1/chat/completions"]
    assert len(recs) == 2
    for rec in recs:
        # Counted from the usage event even when the client never saw it.
        assert rec["usage"]["source"] == "upstream"
        assert rec["usage"]["completion_tokens"] == 5
        assert rec["usage"]["prompt_tokens"] == u[0]["prompt_tokens"]


@pytest.mark.parametrize("proto", ["h1", "h2c"])
def test_stream_beyond_max_tokens_is_cut(start_tollgate, fresh_demo, keys, tmp_path, proto):
    audit = tmp_path / "audit.jsonl"
    t = start_tollgate(quota_config(fresh_demo, keys, {"requests_per_minute": 100},
                                    audit=audit), env=ENV)
    r = chat(t, keys.a, max_tokens=5, stream=True, proto=proto,
             headers={"x-demo-mode": "events=200,delay-between=5"},
             stream_options={"include_usage": True})
    assert r.status_code == 200
    evs = sse_events(r.content)
    assert evs[-1] == "[DONE]"
    js = [json.loads(e) for e in evs[:-1]]
    content = [j for j in js if j["choices"] and j["choices"][0]["delta"].get("content")]
    assert len(content) == 5
    final = [j for j in js if j["choices"] and j["choices"][0].get("finish_reason")]
    assert [f["choices"][0]["finish_reason"] for f in final] == ["length"]
    usage = [j["usage"] for j in js if j.get("usage")]
    assert len(usage) == 1 and usage[0]["completion_tokens"] >= 5
    assert final[0]["id"] == content[0]["id"] and final[0]["model"] == content[0]["model"]
    t.stop()
    rec = [x for x in audit_requests(audit) if x["path"] == "/v1/chat/completions"][0]
    assert rec["reason"] == "stream.cut" and rec["decision"] == "allow"
    assert rec["usage"]["source"] == "observed"
    assert rec["usage"]["completion_tokens"] == usage[0]["completion_tokens"]


def test_client_gone_midstream_is_charged_what_it_saw(start_tollgate, fresh_demo, keys, tmp_path):
    audit = tmp_path / "audit.jsonl"
    t = start_tollgate(quota_config(fresh_demo, keys, {"requests_per_minute": 100},
                                    audit=audit), env=ENV)
    body = json.dumps({"model": MODEL, "messages": [], "max_tokens": 200, "stream": True})
    with httpx.Client(timeout=20) as c:
        with c.stream("POST", t.url("/v1/chat/completions"), content=body,
                      headers={"authorization": f"Bearer {keys.a}",
                               "x-demo-mode": "delay-between=20"}) as r:
            seen = 0
            for chunk in r.iter_raw():
                seen += chunk.count(b'"content"')
                if seen >= 5:
                    break
    t.stop()
    rec = [x for x in audit_requests(audit) if x["path"] == "/v1/chat/completions"][0]
    assert rec["reason"] == "client.aborted"
    assert rec["usage"]["source"] == "observed"
    assert rec["usage"]["completion_tokens"] >= 5  # "tok<n> " events: 2 tokens each, at least
    assert rec["usage"]["prompt_tokens"] >= 1


# ---------------------------------------------------------------------------------------------
# Redis backend

def test_redis_settles_the_real_usage_exactly(start_tollgate, fresh_demo, keys, shared_redis):
    t = start_tollgate(quota_config(fresh_demo, keys,
                                    {"tokens_per_day": 10 ** 9, "tokens_per_minute": 10 ** 8},
                                    quota=redis_quota(shared_redis)))
    redis_up(t)
    total = 0
    for i, stream in enumerate([False, True, False, True]):
        r = chat(t, keys.a, max_tokens=3 + i, stream=stream,
                 stream_options={"include_usage": True} if stream else None)
        assert r.status_code == 200, r.text
        total += usage_of(r)
    assert wait_for(lambda: tpd(shared_redis) == total, 5), (tpd(shared_redis), total)
    # The settlement markers exist (idempotency) and no lease is left.
    cl = shared_redis.client()
    assert len(cl.keys("tg:{team-a}:settled:*")) == 4
    assert cl.zcard("tg:{team-a}:conc") == 0


def test_redis_rate_limit_and_headers(start_tollgate, fresh_demo, keys, shared_redis):
    t = start_tollgate(quota_config(fresh_demo, keys, {"requests_per_minute": 2},
                                    quota=redis_quota(shared_redis)))
    redis_up(t)
    assert [get(t, keys.a).status_code for _ in range(2)] == [200, 200]
    r = get(t, keys.a)
    assert_error(r, 429, "rate_limit_exceeded", "rate_limit_error")
    assert r.headers["x-ratelimit-limit-requests"] == "2"
    assert 25 <= int(r.headers["retry-after"]) <= 30


def test_two_instances_share_one_budget(start_tollgate, fresh_demo, keys, shared_redis, tmp_path):
    policy = {"requests_per_minute": 10, "tokens_per_day": 10 ** 9}
    t1 = start_tollgate(quota_config(fresh_demo, keys, policy, quota=redis_quota(shared_redis)))
    t2 = start_tollgate(quota_config(fresh_demo, keys, policy, quota=redis_quota(shared_redis)))
    redis_up(t1)
    redis_up(t2)
    with concurrent.futures.ThreadPoolExecutor(24) as ex:
        futs = [ex.submit(chat, t1 if i % 2 else t2, keys.a, 3) for i in range(120)]
        res = [f.result() for f in futs]
    ok = [r for r in res if r.status_code == 200]
    assert len(ok) == 10, sorted(r.status_code for r in res)
    assert all(r.status_code == 429 for r in res if r.status_code != 200)
    used = sum(usage_of(r) for r in ok)
    assert wait_for(lambda: tpd(shared_redis) == used, 5), (tpd(shared_redis), used)


def test_redis_key_prefix_database_and_password(start_tollgate, fresh_demo, keys, tmp_path):
    r = RedisServer(tmp_path, extra=["--requirepass", "s3cret-pw"])
    try:
        q = redis_quota(r)
        q["redis"].update({"password_env": "TG_REDIS_PW", "database": 3, "key_prefix": "qa:"})
        t = start_tollgate(quota_config(fresh_demo, keys, {"requests_per_minute": 50}, quota=q),
                           env={"TG_REDIS_PW": "s3cret-pw"})
        redis_up(t)
        assert get(t, keys.a).status_code == 200
        c = r.client(password="s3cret-pw", db=3)
        assert c.exists("qa:{team-a}:rpm") == 1
        assert "s3cret-pw" not in t.stderr()
    finally:
        r.stop()


# ---------------------------------------------------------------------------------------------
# Redis faults: every fail mode, no crash, no stuck request

def test_redis_down_at_start_deny_then_recovers(start_tollgate, fresh_demo, keys, tmp_path):
    port = free_port()
    cfg = quota_config(fresh_demo, keys, {"requests_per_minute": 100},
                       quota=redis_quota(type("R", (), {"port": port})()), admin=True)
    t = start_tollgate(cfg)
    t0 = time.time()
    r = get(t, keys.a)
    assert time.time() - t0 < 2 * SLOW
    assert_error(r, 503, "unavailable", "server_error")
    st, body = readyz(t)
    assert st == 503 and body["quota_backend"] == "degraded", body
    assert metric(scrape(t), "tollgate_quota_backend_errors_total") >= 1
    red = RedisServer(tmp_path, port=port)
    try:
        assert wait_for(lambda: get(t, keys.a).status_code == 200, 10), t.stderr()
        st, body = readyz(t)
        assert st == 200 and body["quota_backend"] == "redis", body
    finally:
        red.stop()


def test_redis_down_allow_admits_and_audits_degraded(start_tollgate, fresh_demo, keys, tmp_path):
    audit = tmp_path / "audit.jsonl"
    cfg = quota_config(fresh_demo, keys, {"requests_per_minute": 1},
                       quota=redis_quota(type("R", (), {"port": free_port()})(),
                                         on_backend_error="allow"),
                       audit=audit, admin=True)
    t = start_tollgate(cfg, env=ENV)
    assert [get(t, keys.a).status_code for _ in range(3)] == [200, 200, 200]
    st, body = readyz(t)
    assert st == 200 and body["quota_backend"] == "degraded"
    t.stop()
    recs = [r for r in audit_requests(audit) if r["path"] == "/echo/x"]
    assert len(recs) == 3 and all(r.get("degraded") is True for r in recs)


def test_redis_down_local_keeps_a_share_and_refuses_budgets(start_tollgate, fresh_demo, keys,
                                                             tmp_path):
    q = redis_quota(type("R", (), {"port": free_port()})(), on_backend_error="local", instances=2)
    cfg = quota_config(fresh_demo, keys, {"requests_per_minute": 4}, quota=q)
    t = start_tollgate(cfg)
    # 1/instances of the per-minute limit: 2 requests, then 429.
    assert [get(t, keys.a).status_code for _ in range(3)] == [200, 200, 429]
    t.stop()
    cfg = quota_config(fresh_demo, keys, {"requests_per_minute": 4, "tokens_per_day": 1000},
                       quota=q)
    t = start_tollgate(cfg)
    r = get(t, keys.a)
    assert_error(r, 503, "unavailable", "server_error")


# What each fail mode answers while Redis is away (rpm is far from its limit).
DURING_OUTAGE = {"deny": {200, 503}, "allow": {200}, "local": {200}}


@pytest.mark.parametrize("mode", ["deny", "allow", "local"])
def test_redis_killed_mid_traffic_and_restarted(start_tollgate, fresh_demo, keys, redis_server,
                                                mode):
    t = start_tollgate(quota_config(fresh_demo, keys, {"requests_per_minute": 100000},
                                    quota=redis_quota(redis_server, on_backend_error=mode)))
    results, stop = [], threading.Event()

    def loop():
        with httpx.Client(timeout=10 * SLOW) as c:
            while not stop.is_set():
                t0 = time.time()
                r = c.get(t.url("/echo/x"), headers={"authorization": f"Bearer {keys.a}"})
                results.append((r.status_code, time.time() - t0))

    th = threading.Thread(target=loop)
    th.start()
    time.sleep(0.5 * SLOW)
    redis_server.kill()
    n_before = len(results)
    time.sleep(1.0 * SLOW)
    n_down = len(results) - n_before
    redis_server.start()
    ok_after = wait_for(lambda: redis_server.client().exists("tg:{team-a}:rpm") == 1, 10)
    stop.set()
    th.join(20)
    assert not th.is_alive()
    assert ok_after, results[-10:]  # admissions reach Redis again
    assert n_down > 10  # requests kept being answered while Redis was gone
    statuses = {s for s, _ in results}
    assert statuses <= DURING_OUTAGE[mode], statuses
    if mode == "deny":
        assert 503 in statuses
    assert max(d for _, d in results) < 3 * SLOW  # nothing stuck


@pytest.mark.parametrize("mode", ["deny", "allow", "local"])
def test_redis_paused_past_timeout(start_tollgate, fresh_demo, keys, redis_server, mode):
    q = redis_quota(redis_server, on_backend_error=mode)
    q["redis"]["timeout_ms"] = 50
    t = start_tollgate(quota_config(fresh_demo, keys, {"requests_per_minute": 1000}, quota=q))
    assert get(t, keys.a).status_code == 200
    redis_server.client().execute_command("CLIENT", "PAUSE", str(int(1500 * SLOW)), "ALL")
    t0 = time.time()
    r = get(t, keys.a)
    took = time.time() - t0
    if mode == "deny":
        assert_error(r, 503, "unavailable", "server_error")
    else:
        assert r.status_code == 200, r.text
    assert took < 1.0 * SLOW, took  # the 50 ms deadline, not the 1.5 s pause
    assert wait_for(lambda: get(t, keys.a).status_code == 200 and
                    redis_server.client().exists("tg:{team-a}:rpm") == 1, 10)


def test_scripts_flushed_no_double_charge(start_tollgate, fresh_demo, keys, shared_redis):
    t = start_tollgate(quota_config(fresh_demo, keys, {"tokens_per_day": 10 ** 9},
                                    quota=redis_quota(shared_redis)))
    redis_up(t)
    total = 0
    for i in range(6):
        if i in (2, 4):
            shared_redis.client().script_flush()
        r = chat(t, keys.a, max_tokens=2)
        assert r.status_code == 200, r.text
        total += usage_of(r)
    assert wait_for(lambda: tpd(shared_redis) == total, 5), (tpd(shared_redis), total)


def test_redis_restarted_empty_after_flush(start_tollgate, fresh_demo, keys, redis_server):
    t = start_tollgate(quota_config(fresh_demo, keys, {"requests_per_minute": 1000},
                                    quota=redis_quota(redis_server, on_backend_error="deny")))
    redis_up(t)
    assert get(t, keys.a).status_code == 200
    redis_server.kill()
    redis_server.start()  # a new process: empty script cache
    assert wait_for(lambda: get(t, keys.a).status_code == 200, 10)


# ---------------------------------------------------------------------------------------------
# Metrics

def test_quota_metrics(start_tollgate, fresh_demo, keys):
    t = start_tollgate(quota_config(fresh_demo, keys, {"requests_per_minute": 2}, admin=True))
    r = chat(t, keys.a, max_tokens=4)
    assert r.status_code == 200
    u = r.json()["usage"]
    chat(t, keys.a, max_tokens=4)
    assert chat(t, keys.a, max_tokens=4).status_code == 429
    text = scrape(t)
    assert metric(text, "tollgate_quota_denials_total", limit="requests_per_minute") == 1
    assert metric(text, "tollgate_tokens_total", model=MODEL, kind="completion") == 8
    assert metric(text, "tollgate_tokens_total", model=MODEL, kind="prompt") == 2 * u["prompt_tokens"]
    assert metric(text, "tollgate_quota_backend_errors_total") == 0
    st, body = readyz(t)
    assert st == 200 and body["quota_backend"] == "local"


def test_redis_oom_is_a_backend_failure(start_tollgate, fresh_demo, keys, shared_redis, tmp_path):
    audit = tmp_path / "audit.jsonl"
    t = start_tollgate(quota_config(fresh_demo, keys, {"requests_per_minute": 1000},
                                    quota=redis_quota(shared_redis, on_backend_error="allow"),
                                    audit=audit), env=ENV)
    redis_up(t)
    assert get(t, keys.a).status_code == 200
    cl = shared_redis.client()
    cl.config_set("maxmemory", "1")
    try:
        # Write scripts fail with -OOM: admitted per on_backend_error "allow", audited as degraded.
        assert get(t, keys.a).status_code == 200
        # The error log is written by its own thread: wait for the line.
        assert wait_for(lambda: "OOM" in t.stderr(), 5), t.stderr()[-2000:]
    finally:
        cl.config_set("maxmemory", "0")
    assert wait_for(lambda: get(t, keys.a).status_code == 200, 5)
    t.stop()
    recs = [r for r in audit_requests(audit) if r["path"] == "/echo/x"]
    assert [bool(r.get("degraded")) for r in recs[:2]] == [False, True]


def test_reload_switches_backend_and_limits(start_tollgate, fresh_demo, keys, shared_redis):
    cfg = quota_config(fresh_demo, keys, {"requests_per_minute": 2})
    t = start_tollgate(cfg)
    assert [get(t, keys.a).status_code for _ in range(3)] == [200, 200, 429]
    # Same policy, now on Redis: Redis has its own (empty) counters.
    cfg["quota"] = redis_quota(shared_redis)
    t.path.write_text(json.dumps(cfg))
    t.signal(signal.SIGHUP)
    assert wait_for(lambda: get(t, keys.a).status_code == 200, 5)
    assert shared_redis.client().exists("tg:{team-a}:rpm") == 1
    # A higher limit applies at once to new requests.
    cfg["policies"]["std"]["requests_per_minute"] = 100
    t.path.write_text(json.dumps(cfg))
    t.signal(signal.SIGHUP)
    assert wait_for(lambda: get(t, keys.a).headers.get("x-ratelimit-limit-requests") == "100", 5)


def test_client_gone_before_the_answer_pays_the_prompt(start_tollgate, fresh_demo, keys,
                                                       tmp_path):
    audit = tmp_path / "audit.jsonl"
    t = start_tollgate(quota_config(fresh_demo, keys, {"requests_per_minute": 100},
                                    audit=audit), env=ENV)
    body = json.dumps({"model": MODEL, "messages": [], "max_tokens": 50}).encode()
    with pytest.raises(httpx.TimeoutException):
        with httpx.Client(timeout=0.3) as c:
            c.post(t.url("/v1/chat/completions"), content=body,
                   headers={"authorization": f"Bearer {keys.a}",
                            "x-demo-mode": "delay-first-byte=1500"})
    # An error status from the upstream costs nothing, by contrast.
    r = chat(t, keys.a, headers={"x-demo-mode": "status=500"})
    assert r.status_code == 500
    time.sleep(0.2 * SLOW)
    t.stop()
    recs = [x for x in audit_requests(audit) if x["path"] == "/v1/chat/completions"]
    assert recs[0]["reason"] == "client.aborted"
    assert recs[0]["usage"] == {"prompt_tokens": (len(body) + 3) // 4, "completion_tokens": 0,
                                "source": "observed"}
    assert recs[1]["usage"]["source"] == "none" and recs[1]["cost"] is None


@pytest.mark.parametrize("backend", ["local", "redis"])
def test_ratelimit_headers_on_answers_refused_before_admission(start_tollgate, fresh_demo, keys,
                                                               shared_redis, backend):
    quota = redis_quota(shared_redis) if backend == "redis" else None
    t = start_tollgate(quota_config(fresh_demo, keys, {"requests_per_minute": 3,
                                                       "max_tokens": 10}, quota=quota))
    if backend == "redis":
        redis_up(t)
    assert get(t, keys.a).status_code == 200
    # Refused by authorization (model) and by the request limits: nothing is
    # charged, and the answer still says how much is left.
    h = {"authorization": f"Bearer {keys.a}"}
    with httpx.Client(timeout=20) as c:
        r1 = c.post(t.url("/v1/chat/completions"), headers=h,
                    content=json.dumps({"model": "other-model", "messages": []}))
    r2 = chat(t, keys.a, max_tokens=11)
    for r, status in ((r1, 403), (r2, 400)):
        assert r.status_code == status, r.text
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert r.headers["x-ratelimit-remaining-requests"] == "2", r.headers
        assert re.fullmatch(r"1\d(\.\d+)?s|20s", r.headers["x-ratelimit-reset-requests"])
        assert "x-ratelimit-limit-tokens" not in r.headers
    # Not an identified caller: no headers.
    with httpx.Client(timeout=20) as c:
        r3 = c.get(t.url("/echo/x"))
    assert r3.status_code == 401 and "x-ratelimit-limit-requests" not in r3.headers
    # Both refusals were free: two more requests pass, the third is refused.
    assert [get(t, keys.a).status_code for _ in range(3)] == [200, 200, 429]
