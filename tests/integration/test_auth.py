"""Authentication and authorization end to end (SPEC §2 key commands, §3 auth /
policies / routes[].policies / listeners[].tls client certificates, §5
credential handling; THREATS §3.2 negative tokens).

Every refusal is checked for its status, its OpenAI error body (code and
type), WWW-Authenticate: Bearer on 401, and, through the demo's request
counter, that nothing reached the upstream."""
import hashlib
import json
import re
import signal
import socket
import ssl
import subprocess
import time

import jwt
import pytest

from authdata import (AUDIENCE, ISSUER, PEPPER, Client, Material, b64u, bearer, curl_raw,
                      flip_char, hmac_hash, hs256_raw, key_entry, mtls_args, new_api_key,
                      pub_jwk, raw_token, sha256_hash, valid_claims, write_keys)
from conftest import CERTS, SLOW, TG_BIN, Tollgate, base_config, free_port
from helpers import echo_headers

PROTO_IDS = ["h1", "h2c", "h2tls"]


# ---------------------------------------------------------------------------------------------
# Fixtures

@pytest.fixture(scope="module")
def mat():
    return Material()


@pytest.fixture(scope="module")
def keys():
    """name -> plaintext API key."""
    return {n: new_api_key() for n in ("std", "open", "hmac", "expired", "disabled", "notyet")}


def key_entries(keys):
    return [
        key_entry("std-1", keys["std"], "team-a", "standard", "acme"),
        key_entry("open-1", keys["open"], "team-o", "open", "globex"),
        key_entry("hmac-1", keys["hmac"], "team-h", "standard", "hm", hmac_pepper=PEPPER),
        key_entry("expired-1", keys["expired"], "team-x", not_after="2020-01-01T00:00:00Z"),
        key_entry("disabled-1", keys["disabled"], "team-d", disabled=True),
    ]


def auth_config(demo, d, mat, entries, **auth_over):
    """base_config plus the auth routes, the auth block and two policies."""
    cfg = base_config(demo)
    cfg["routes"] += [
        {"path_prefix": "/v1/chat/", "upstream": "demo", "api": "openai"},
        {"path_prefix": "/echo/openai", "upstream": "demo", "api": "openai"},
        {"path_prefix": "/echo/open-only", "upstream": "demo", "policies": ["open"]},
    ]
    keys_path = write_keys(d / "keys.json", entries)
    jwks_path = mat.write_jwks(d / "jwks.json")
    cfg["auth"] = {
        "api_keys_file": str(keys_path),
        "jwt": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": str(jwks_path),
                 "algorithms": ["RS256", "ES256", "EdDSA", "HS256"],
                 "principal_claim": "sub", "tenant_claim": "tenant", "policy_claim": "tier",
                 "default_policy": "standard", "leeway_ms": 30000}],
        "api_key_pepper_env": "TG_PEPPER",
        # The negative tests fail on purpose many times: damping has its own test.
        "failed_auth_per_minute_per_ip": 1000000,
    }
    cfg["auth"].update(auth_over)
    cfg["policies"] = {"standard": {"models": ["demo-*"]}, "open": {}}
    return cfg


def check_log_and_stop(t):
    code = t.stop()
    log = t.stderr()
    assert "ERROR: AddressSanitizer" not in log, log
    assert "runtime error:" not in log, log
    assert "ERROR: LeakSanitizer" not in log, log
    assert code == 0, f"tollgate exited {code}\n{log}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, demo, mat, keys):
    """One tollgate for every test that does not change its configuration."""
    d = tmp_path_factory.mktemp("auth")
    t = Tollgate(d, auth_config(demo, d, mat, key_entries(keys)), env={"TG_PEPPER": PEPPER})
    yield t
    check_log_and_stop(t)


@pytest.fixture(params=PROTO_IDS)
def cl(request, shared):
    return Client(shared, request.param)


@pytest.fixture
def h1(shared):
    return Client(shared, "h1")


# ---------------------------------------------------------------------------------------------
# Assertions

def upstream_requests(demo):
    return demo.stats()["requests"]


def assert_error(r, status, code, etype):
    assert r.status == status, r
    try:
        j = r.json()
    except ValueError as exc:
        raise AssertionError(f"the error body is not valid JSON ({exc}): {r.body!r}") from None
    assert set(j) == {"error"}, r
    e = j["error"]
    assert e.get("code") == code, r
    assert e.get("type") == etype, r
    assert isinstance(e.get("message"), str) and e["message"], r
    assert r.header("content-type").startswith("application/json"), r
    if status == 401:
        assert r.header("www-authenticate") is not None, r
        assert r.header("www-authenticate").split()[0].lower() == "bearer", r
    return e


def refused(demo, send, status, code, etype):
    """send() is refused with status/code/type and never reaches the upstream."""
    before = upstream_requests(demo)
    r = send()
    assert r.status == status, r
    assert upstream_requests(demo) == before, f"a refused request reached the upstream: {r}"
    return r, assert_error(r, status, code, etype)


def refused_401(demo, send):
    return refused(demo, send, 401, "invalid_api_key", "authentication_error")


def echo_values(r, name):
    assert r.status == 200, r
    return [v for k, v in echo_headers(r.body) if k == name]


def chat(model="demo-model", **extra):
    b = {"model": model, "messages": [{"role": "user", "content": "hello there"}],
         "max_tokens": 3, "stream": False}
    b.update(extra)
    return json.dumps(b).encode()


# ---------------------------------------------------------------------------------------------
# API keys

def test_api_key_bearer(cl, keys):
    r = cl.get("/echo", bearer(keys["std"]))
    assert echo_values(r, "x-tollgate-principal") == ["team-a"], r
    assert echo_values(r, "x-tollgate-tenant") == ["acme"], r


def test_api_key_x_api_key(cl, keys):
    r = cl.get("/echo", [("x-api-key", keys["std"])])
    assert echo_values(r, "x-tollgate-principal") == ["team-a"], r


def test_authorization_wins_over_x_api_key(h1, demo, keys):
    refused_401(demo, lambda: h1.get("/echo", [("x-api-key", keys["std"]),
                                               *bearer(new_api_key())]))
    # and the other way round: a valid bearer wins over a bad x-api-key
    r = h1.get("/echo", [("x-api-key", new_api_key()), *bearer(keys["open"])])
    assert echo_values(r, "x-tollgate-principal") == ["team-o"], r


def test_unknown_key(cl, demo):
    refused_401(demo, lambda: cl.get("/echo", bearer(new_api_key())))
    refused_401(demo, lambda: cl.get("/echo", [("x-api-key", new_api_key())]))


@pytest.mark.parametrize("case", ["expired", "disabled", "last_char_changed", "prefix_only",
                                  "with_trailing_junk"])
def test_refused_keys(h1, demo, keys, case):
    key = {"expired": keys["expired"], "disabled": keys["disabled"],
           "last_char_changed": flip_char(keys["std"], len(keys["std"]) - 1),
           "prefix_only": keys["std"][:20],
           "with_trailing_junk": keys["std"] + "x"}[case]
    refused_401(demo, lambda: h1.get("/echo", bearer(key)))
    refused_401(demo, lambda: h1.get("/echo", [("x-api-key", key)]))


def test_hmac_key_with_pepper(h1, keys):
    r = h1.get("/echo", bearer(keys["hmac"]))
    assert echo_values(r, "x-tollgate-principal") == ["team-h"], r
    assert echo_values(r, "x-tollgate-tenant") == ["hm"], r


def test_hmac_key_without_pepper_fails_check(tmp_path, demo, mat, keys):
    cfg = auth_config(demo, tmp_path, mat, key_entries(keys))
    del cfg["auth"]["api_key_pepper_env"]
    p = tmp_path / "nopepper.json"
    p.write_text(json.dumps(cfg))
    r = subprocess.run([TG_BIN, "--check", "-c", str(p)], capture_output=True, text=True,
                       timeout=20 * SLOW)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "keys.json" in r.stderr, r.stderr
    # the same file with a pepper is fine
    cfg["auth"]["api_key_pepper_env"] = "TG_PEPPER"
    p.write_text(json.dumps(cfg))
    r = subprocess.run([TG_BIN, "--check", "-c", str(p)], capture_output=True, text=True,
                       timeout=20 * SLOW, env={"TG_PEPPER": PEPPER})
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert PEPPER not in r.stdout + r.stderr


def test_missing_credentials(cl, demo):
    refused_401(demo, lambda: cl.get("/echo"))
    refused_401(demo, lambda: cl.get("/echo", [("x-api-key", "")]))
    refused_401(demo, lambda: cl.get("/v1/models"))


def test_non_bearer_scheme(h1, demo, keys):
    refused_401(demo, lambda: h1.get("/echo", [("authorization", f"Basic {keys['std']}")]))


# ---------------------------------------------------------------------------------------------
# What the upstream sees

def test_credentials_not_forwarded(cl, keys):
    r = cl.get("/echo", [*bearer(keys["std"]), ("x-api-key", keys["open"]),
                         ("x-tollgate-principal", "admin"), ("x-tollgate-tenant", "evil"),
                         ("X-Tollgate-Principal", "admin2")])
    up = echo_headers(r.body)
    names = [k for k, _ in up]
    assert "authorization" not in names, up
    assert "x-api-key" not in names, up
    assert keys["std"].encode() not in r.body and keys["open"].encode() not in r.body, up
    assert echo_values(r, "x-tollgate-principal") == ["team-a"], up
    assert echo_values(r, "x-tollgate-tenant") == ["acme"], up


def test_jwt_not_forwarded(h1, mat):
    tok = mat.token("rsa1")
    r = h1.get("/echo", bearer(tok))
    assert "authorization" not in [k for k, _ in echo_headers(r.body)], r
    assert tok.encode() not in r.body


def test_upstream_authorization_env(start_tollgate, tmp_path, fresh_demo, mat, keys):
    cfg = auth_config(fresh_demo, tmp_path, mat, key_entries(keys))
    cfg["upstreams"][0]["authorization_env"] = "TG_UPSTREAM_TOKEN"
    t = start_tollgate(cfg, env={"TG_PEPPER": PEPPER, "TG_UPSTREAM_TOKEN": "upstream-secret-42"})
    for proto in PROTO_IDS:
        c = Client(t, proto)
        r = c.get("/echo", [*bearer(keys["std"]), ("x-api-key", keys["open"])])
        assert echo_values(r, "authorization") == ["Bearer upstream-secret-42"], r
        assert echo_values(r, "x-api-key") == [], r
        assert keys["std"].encode() not in r.body and keys["open"].encode() not in r.body
        assert echo_values(r, "x-tollgate-principal") == ["team-a"], r
    assert "upstream-secret-42" not in t.stderr()


# ---------------------------------------------------------------------------------------------
# JWT

@pytest.mark.parametrize("kid", ["rsa1", "ec1", "ed1", "hs1"])
def test_jwt_valid_each_alg(h1, mat, kid):
    tok = mat.token(kid, sub=f"user-{kid}", tenant=f"tenant-{kid}")
    assert jwt.get_unverified_header(tok)["alg"] == mat.by_kid[kid][0]
    r = h1.get("/echo", bearer(tok))
    assert echo_values(r, "x-tollgate-principal") == [f"user-{kid}"], r
    assert echo_values(r, "x-tollgate-tenant") == [f"tenant-{kid}"], r


def test_jwt_valid_protocols(cl, mat):
    r = cl.get("/echo", bearer(mat.token("ec1", sub="proto-user")))
    assert echo_values(r, "x-tollgate-principal") == ["proto-user"], r


def test_jwt_without_tenant(h1, mat):
    r = h1.get("/echo", bearer(mat.token("rsa1", drop=("tenant",))))
    assert echo_values(r, "x-tollgate-principal") == ["user-1"], r
    assert echo_values(r, "x-tollgate-tenant") == [], r


def test_jwt_same_token_twice(h1, mat):
    tok = mat.token("rsa1", sub="cached-user")
    for _ in range(3):
        r = h1.get("/echo", bearer(tok))
        assert echo_values(r, "x-tollgate-principal") == ["cached-user"], r


def test_jwt_policy_claim(h1, demo, mat):
    open_tok = mat.token("rsa1", tier="open")
    std_tok = mat.token("rsa1", tier="standard")
    default_tok = mat.token("rsa1")  # no "tier": default_policy "standard"
    assert h1.get("/echo/open-only", bearer(open_tok)).status == 200
    for tok in (std_tok, default_tok):
        refused(demo, lambda: h1.get("/echo/open-only", bearer(tok)), 403, "permission_denied",
                "permission_error")
        assert h1.get("/echo", bearer(tok)).status == 200
    # the policy's models apply too: "open" allows any model, "standard" only demo-*
    assert h1.post("/v1/chat/completions", chat("gpt-4"), bearer(open_tok)).status == 200
    refused(demo, lambda: h1.post("/v1/chat/completions", chat("gpt-4"), bearer(default_tok)),
            403, "model_not_allowed", "permission_error")


def test_jwt_unknown_policy_403(h1, demo, mat):
    refused(demo, lambda: h1.get("/echo", bearer(mat.token("rsa1", tier="platinum"))), 403,
            "permission_denied", "permission_error")


def _now():
    return int(time.time())


def _large(m):
    base = m.token("rsa1", pad="")
    n = (9000 - len(base)) * 3 // 4
    tok = m.token("rsa1", pad="x" * n)
    assert 8192 < len(tok) <= 9100, len(tok)
    return tok


def _sig_flipped(m, kid):
    tok = m.token(kid)
    h, p, s = tok.split(".")
    return f"{h}.{p}.{flip_char(s, len(s) // 2)}"


def _payload_swapped(m):
    h, _, s = m.token("rsa1").split(".")
    return f"{h}.{b64u(json.dumps(valid_claims(sub='admin')).encode())}.{s}"


def _none_keeping_sig(m):
    _, p, s = m.token("rsa1").split(".")
    return f"{b64u(json.dumps({'alg': 'none', 'kid': 'rsa1'}).encode())}.{p}.{s}"


def _dup_alg(m):
    hdr = b'{"alg":"RS256","kid":"rsa1","alg":"none"}'
    return raw_token(hdr, valid_claims(), alg="RS256", key=m.rsa)


def _dup_sub(m):
    c = valid_claims()
    body = json.dumps(c)[:-1] + ', "sub": "admin"}'
    return raw_token({"alg": "RS256", "kid": "rsa1"}, body.encode(), alg="RS256", key=m.rsa)


NEGATIVE = {
    # THREATS J2-J4: alg none in every spelling, with or without a signature
    "alg_none": lambda m: jwt.encode(valid_claims(), None, algorithm="none"),
    "alg_nOnE": lambda m: raw_token({"alg": "nOnE", "kid": "rsa1"}, valid_claims(), sig=b""),
    "alg_none_keeps_rs_sig": _none_keeping_sig,
    # J5: RS256 key re-used as an HS256 secret (the public PEM)
    "hs256_rsa_pem_confusion": lambda m: hs256_raw({"alg": "HS256", "typ": "JWT", "kid": "rsa1"},
                                                   valid_claims(), m.rsa_pub_pem),
    "hs256_rsa_pem_confusion_nokid": lambda m: hs256_raw({"alg": "HS256", "typ": "JWT"},
                                                         valid_claims(), m.rsa_pub_pem),
    # alg not in "algorithms" (RS384 with the right RSA key)
    "alg_not_allowed_rs384": lambda m: m.token("rsa1", alg="RS384"),
    "alg_not_allowed_ps256": lambda m: m.token("rsa1", alg="PS256"),
    # J7: alg that does not fit the key's type
    "rs256_header_on_ec_key": lambda m: raw_token({"alg": "RS256", "kid": "ec1"}, valid_claims(),
                                                  alg="ES256", key=m.ec),
    "es256_header_on_rsa_key": lambda m: raw_token({"alg": "ES256", "kid": "rsa1"},
                                                   valid_claims(), alg="RS256", key=m.rsa),
    # J10, J11: keys from the token itself
    "jwk_header_attacker_key": lambda m: jwt.encode(
        valid_claims(), m.attacker, algorithm="RS256",
        headers={"jwk": pub_jwk(m.attacker.public_key())}),
    "jwk_header_valid_sig": lambda m: m.token(
        "rsa1", headers={"jwk": pub_jwk(m.attacker.public_key(), "rsa1")}),
    "jku_header": lambda m: m.token("rsa1", headers={"jku": "http://127.0.0.1:9/jwks.json"}),
    "x5u_header": lambda m: m.token("rsa1", headers={"x5u": "http://127.0.0.1:9/cert.pem"}),
    # J19
    "crit_unknown": lambda m: m.token("rsa1", headers={"crit": ["x-unknown"], "x-unknown": 1}),
    "unknown_kid": lambda m: m.token("rsa1", headers={"kid": "nope"}),
    "kid_path": lambda m: m.token("rsa1", headers={"kid": "../../../../dev/null"}),
    # J12, J13, J15
    "missing_exp": lambda m: m.token("rsa1", drop=("exp",)),
    "expired": lambda m: m.token("rsa1", exp=_now() - 3600, iat=_now() - 7200,
                                 nbf=_now() - 7200),
    "expired_beyond_leeway": lambda m: m.token("rsa1", exp=_now() - 61, iat=_now() - 600,
                                               nbf=_now() - 600),
    "exp_as_string": lambda m: m.token("rsa1", exp=str(_now() + 300)),
    "nbf_future": lambda m: m.token("rsa1", nbf=_now() + 3600),
    # J17, J18
    "wrong_aud": lambda m: m.token("rsa1", aud="tollgateX"),
    "wrong_aud_list": lambda m: m.token("rsa1", aud=["other", "another"]),
    "wrong_iss": lambda m: m.token("rsa1", iss=ISSUER + ".evil"),
    "iss_prefix": lambda m: m.token("rsa1", iss=ISSUER[:-1]),
    "missing_iss": lambda m: m.token("rsa1", drop=("iss",)),
    # J21, J22
    "dup_alg_header": _dup_alg,
    "dup_sub_claim": _dup_sub,
    # J30: signatures
    "bad_sig_rs256": lambda m: _sig_flipped(m, "rsa1"),
    "bad_sig_es256": lambda m: _sig_flipped(m, "ec1"),
    "bad_sig_eddsa": lambda m: _sig_flipped(m, "ed1"),
    "bad_sig_hs256": lambda m: _sig_flipped(m, "hs1"),
    "payload_swapped": _payload_swapped,
    "es256_zero_sig": lambda m: raw_token({"alg": "ES256", "kid": "ec1"}, valid_claims(),
                                          sig=b"\0" * 64),
    "empty_sig": lambda m: m.token("rsa1").rsplit(".", 1)[0] + ".",
    # J23, J28: size and encoding
    "too_large_9000": _large,
    "malformed_base64": lambda m: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIi*!$.c2ln",
    "malformed_base64_header": lambda m: "eyJ%%%." + m.token("rsa1").split(".", 1)[1],
    "base64_padding": lambda m: (lambda h, p, s: f"{h}==.{p}.{s}")(*m.token("rsa1").split(".")),
    "header_not_json": lambda m: raw_token(b'{"alg":"RS256","kid":"rsa1"', valid_claims(),
                                           alg="RS256", key=m.rsa),
    "payload_not_object": lambda m: raw_token({"alg": "RS256", "kid": "rsa1"}, b'["sub"]',
                                              alg="RS256", key=m.rsa),
    "four_segments": lambda m: m.token("rsa1") + ".eyJ9",
    "two_segments": lambda m: m.token("rsa1").rsplit(".", 1)[0],
}


@pytest.mark.parametrize("case", list(NEGATIVE))
def test_jwt_rejected(h1, demo, mat, case):
    tok = NEGATIVE[case](mat)
    _, e = refused_401(demo, lambda: h1.get("/echo", bearer(tok)))
    if case.startswith("expired"):
        assert "expire" in e["message"].lower(), e


def test_jwt_rejected_over_h2(cl, demo, mat):
    for case in ("alg_none", "hs256_rsa_pem_confusion", "bad_sig_rs256", "expired"):
        refused_401(demo, lambda: cl.get("/echo", bearer(NEGATIVE[case](mat))))


def test_jwt_wrong_issuer_key(h1, demo, mat):
    """A token signed by a key that is not in the JWKS, claiming a known kid."""
    tok = jwt.encode(valid_claims(), mat.attacker, algorithm="RS256", headers={"kid": "rsa1"})
    refused_401(demo, lambda: h1.get("/echo", bearer(tok)))


# ---------------------------------------------------------------------------------------------
# Authorization: routes and models

def test_route_policy(cl, demo, keys):
    refused(demo, lambda: cl.get("/echo/open-only", bearer(keys["std"])), 403,
            "permission_denied", "permission_error")
    r = cl.get("/echo/open-only", bearer(keys["open"]))
    assert echo_values(r, "x-tollgate-principal") == ["team-o"], r


def test_model_allowed(cl, keys):
    r = cl.post("/v1/chat/completions", chat("demo-model"), bearer(keys["std"]))
    assert r.status == 200, r
    assert r.json()["model"] == "demo-model", r


def test_model_not_allowed(cl, demo, keys):
    refused(demo, lambda: cl.post("/v1/chat/completions", chat("gpt-4"), bearer(keys["std"])),
            403, "model_not_allowed", "permission_error")


@pytest.mark.parametrize("body", [
    b'{"messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"","messages":[]}',
    b'{"model":5,"messages":[]}',
    b'{"model":null}',
    b"not json at all",
    b'["demo-model"]',
    b'{"model":"demo-model"',
    b"",
], ids=["no_model", "empty_model", "model_number", "model_null", "not_json", "array",
        "truncated", "empty"])
def test_bad_openai_body(h1, demo, keys, body):
    refused(demo, lambda: h1.post("/v1/chat/completions", body, bearer(keys["std"])), 400,
            "invalid_request", "invalid_request_error")


def test_bad_openai_body_protocols(cl, demo, keys):
    refused(demo, lambda: cl.post("/v1/chat/completions", b'{"messages":[]}', bearer(keys["std"])),
            400, "invalid_request", "invalid_request_error")
    refused(demo, lambda: cl.post("/v1/chat/completions", b"{{{", bearer(keys["std"])),
            400, "invalid_request", "invalid_request_error")


def test_open_policy_any_model(h1, keys):
    r = h1.post("/v1/chat/completions", chat("gpt-4"), bearer(keys["open"]))
    assert r.status == 200 and r.json()["model"] == "gpt-4", r


def test_openai_body_checked_for_any_policy(h1, demo, keys):
    """SPEC §5: on an "openai" route a body without a model is a 400 from tollgate,
    whatever the caller's policy (here "open", which allows every model)."""
    refused(demo, lambda: h1.post("/v1/chat/completions", b'{"messages":[]}',
                                  bearer(keys["open"])), 400, "invalid_request",
            "invalid_request_error")
    refused(demo, lambda: h1.post("/v1/chat/completions", b"not json", bearer(keys["open"])),
            400, "invalid_request", "invalid_request_error")


def test_openai_body_arrives_intact(cl, keys):
    body = chat("demo-model", padding="y" * 300000, note="ünïcödé \u2603")
    r = cl.post("/echo/openai", body, bearer(keys["std"]))
    assert r.status == 200, r
    j = r.json()
    assert j["body_bytes"] == len(body), j
    assert j["body_sha256"] == hashlib.sha256(body).hexdigest(), j
    assert echo_values(r, "x-tollgate-principal") == ["team-a"]


# ---------------------------------------------------------------------------------------------
# Failed-auth damping

def test_failed_auth_damping(start_tollgate, tmp_path, fresh_demo, mat, keys):
    cfg = auth_config(fresh_demo, tmp_path, mat, key_entries(keys),
                      failed_auth_per_minute_per_ip=3)
    t = start_tollgate(cfg, env={"TG_PEPPER": PEPPER})
    c = Client(t, "h1")
    # The counter is per calendar minute: do not start right before it turns.
    margin = 4 * SLOW
    sec = time.time() % 60
    if sec > 60 - margin:
        time.sleep(60 - sec + 0.2)
    assert c.get("/echo", bearer(keys["std"])).status == 200  # successes do not count
    for i in range(3):
        refused_401(fresh_demo, lambda: c.get("/echo", bearer(new_api_key())))
    for send in (lambda: c.get("/echo", bearer(keys["std"])),
                 lambda: c.get("/echo", [("x-api-key", keys["std"])]),
                 lambda: Client(t, "h2c").get("/echo", bearer(keys["std"])),
                 lambda: Client(t, "h2tls").get("/echo", bearer(mat.token("rsa1"))),
                 lambda: c.get("/echo")):
        r, _ = refused(fresh_demo, send, 429, "rate_limit_exceeded", "rate_limit_error")
        ra = r.header("retry-after")
        assert ra is not None and ra.isdigit() and 1 <= int(ra) <= 60, r
        assert r.header("www-authenticate") is None, r


# ---------------------------------------------------------------------------------------------
# Key rotation by reload

def wait_status(c, headers, want, timeout=5.0):
    deadline = time.monotonic() + timeout * SLOW
    while True:
        r = c.get("/echo", headers)
        if r.status == want or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_key_rotation_by_reload(start_tollgate, tmp_path, fresh_demo, mat):
    a, b = new_api_key(), new_api_key()
    ea = key_entry("rot-a", a, "team-rot", "standard", "acme")
    eb = key_entry("rot-b", b, "team-rot", "standard", "acme")
    cfg = auth_config(fresh_demo, tmp_path, mat, [ea])
    del cfg["auth"]["api_key_pepper_env"]
    t = start_tollgate(cfg)
    c = Client(t, "h1")
    assert c.get("/echo", bearer(a)).status == 200
    refused_401(fresh_demo, lambda: c.get("/echo", bearer(b)))

    write_keys(tmp_path / "keys.json", [ea, eb])
    t.signal(signal.SIGHUP)
    r = wait_status(c, bearer(b), 200)
    assert r.status == 200, (r, t.stderr())
    assert echo_values(r, "x-tollgate-principal") == ["team-rot"]
    assert c.get("/echo", bearer(a)).status == 200

    write_keys(tmp_path / "keys.json", [eb])
    t.signal(signal.SIGHUP)
    r = wait_status(c, bearer(a), 401)
    refused_401(fresh_demo, lambda: c.get("/echo", bearer(a)))
    refused_401(fresh_demo, lambda: c.get("/echo", [("x-api-key", a)]))
    assert c.get("/echo", bearer(b)).status == 200
    assert "reload rejected" not in t.stderr(), t.stderr()


def test_jwks_rotation_by_reload(start_tollgate, tmp_path, fresh_demo, mat, keys):
    cfg = auth_config(fresh_demo, tmp_path, mat, key_entries(keys))
    t = start_tollgate(cfg, env={"TG_PEPPER": PEPPER})
    c = Client(t, "h1")
    tok_rsa, tok_ec = mat.token("rsa1", sub="rsa-user"), mat.token("ec1", sub="ec-user")
    assert c.get("/echo", bearer(tok_rsa)).status == 200  # now in the verified-token cache
    assert c.get("/echo", bearer(tok_ec)).status == 200
    jwks = mat.jwks()
    jwks["keys"] = [k for k in jwks["keys"] if k["kid"] != "rsa1"]
    tmp = tmp_path / "jwks.json.tmp"
    tmp.write_text(json.dumps(jwks))
    tmp.replace(tmp_path / "jwks.json")
    t.signal(signal.SIGHUP)
    wait_status(c, bearer(tok_rsa), 401)
    refused_401(fresh_demo, lambda: c.get("/echo", bearer(tok_rsa)))
    r = c.get("/echo", bearer(tok_ec))
    assert echo_values(r, "x-tollgate-principal") == ["ec-user"], r
    assert "reload rejected" not in t.stderr(), t.stderr()


# ---------------------------------------------------------------------------------------------
# Client certificates

def mtls_config(demo, d, mat, keys, **tls):
    cfg = auth_config(demo, d, mat, key_entries(keys))
    lst = next(l for l in cfg["listeners"] if l["name"] == "tls")
    lst["tls"].update({"client_ca_file": str(CERTS / "ca.crt"),
                       "client_cert_policy": "standard", **tls})
    return cfg


@pytest.mark.parametrize("ver", ["--http1.1", "--http2"])
def test_mtls_client_certificate(start_tollgate, tmp_path, fresh_demo, mat, keys, ver):
    t = start_tollgate(mtls_config(fresh_demo, tmp_path, mat, keys),
                       env={"TG_PEPPER": PEPPER})
    url = lambda p: t.url(p, "tls", "https")
    r = curl_raw(url("/echo"), ver, *mtls_args())
    assert r.rc == 0 and r.status == 200, r
    assert echo_values(r, "x-tollgate-principal") == ["test-client"], r
    # policy "standard": its model rules apply, and the "open"-only route is closed
    r = curl_raw(url("/v1/chat/completions"), ver, *mtls_args(),
                 headers=[("content-type", "application/json")], data=chat("demo-model"))
    assert r.status == 200, r
    refused(fresh_demo, lambda: curl_raw(url("/echo/open-only"), ver, *mtls_args()), 403,
            "permission_denied", "permission_error")
    # another credential wins over the certificate, and a bad one is not rescued by it
    r = curl_raw(url("/echo"), ver, *mtls_args(), headers=bearer(keys["open"]))
    assert echo_values(r, "x-tollgate-principal") == ["team-o"], r
    refused_401(fresh_demo, lambda: curl_raw(url("/echo"), ver, *mtls_args(),
                                             headers=bearer(new_api_key())))
    # no certificate and no credential
    refused_401(fresh_demo, lambda: curl_raw(url("/echo"), ver, *mtls_args(cert=False)))
    # the plaintext listener has no certificate to offer
    refused_401(fresh_demo, lambda: Client(t, "h1").get("/echo"))


def test_mtls_required(start_tollgate, tmp_path, fresh_demo, mat, keys):
    t = start_tollgate(mtls_config(fresh_demo, tmp_path, mat, keys, require_client_cert=True),
                       env={"TG_PEPPER": PEPPER})
    url = t.url("/echo", "tls", "https")
    before = fresh_demo.stats()["requests"]
    for ver in ("--http1.1", "--http2"):
        for tls in ([], ["--tls-max", "1.2"]):
            r = curl_raw(url, ver, *tls, *mtls_args(cert=False), headers=bearer(keys["std"]))
            # 35: the handshake failed (TLS 1.2); with TLS 1.3 the client learns of the
            # refusal (alert certificate_required) only on its first read (56), or, when
            # the server's close wins the race, on its first send (55).
            assert r.rc in (35, 55, 56), r
            assert r.status is None, r
    # The same seen by a plain TLS client: an alert, never an HTTP answer.
    for maxver in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ssl.create_default_context(cafile=str(CERTS / "ca.crt"))
        ctx.maximum_version = maxver
        with socket.create_connection(("127.0.0.1", t.port("tls")), timeout=5 * SLOW) as s:
            with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)) as ei:
                with ctx.wrap_socket(s, server_hostname="localhost") as ts:
                    ts.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nx-api-key: " +
                               keys["std"].encode() + b"\r\n\r\n")
                    data = ts.recv(1000)
                    raise AssertionError(f"answered without a client certificate: {data!r}")
            if maxver == ssl.TLSVersion.TLSv1_3 and isinstance(ei.value, ssl.SSLError):
                assert "CERTIFICATE_REQUIRED" in str(ei.value).upper(), ei.value
    assert fresh_demo.stats()["requests"] == before
    r = curl_raw(url, "--http2", *mtls_args())
    assert r.rc == 0 and r.status == 200, r
    assert echo_values(r, "x-tollgate-principal") == ["test-client"], r


def test_mtls_policy_is_the_listeners(start_tollgate, tmp_path, fresh_demo, mat, keys):
    """Two TLS listeners trusting the same CA with different client_cert_policy: a
    certificate gets the policy of the listener it was presented to."""
    cfg = mtls_config(fresh_demo, tmp_path, mat, keys)
    second = json.loads(json.dumps(next(l for l in cfg["listeners"] if l["name"] == "tls")))
    second.update({"name": "tls-open", "port": free_port()})
    second["tls"]["client_cert_policy"] = "open"
    cfg["listeners"].append(second)
    t = start_tollgate(cfg, env={"TG_PEPPER": PEPPER})
    std_url = lambda p: t.url(p, "tls", "https")
    open_url = lambda p: t.url(p, "tls-open", "https")
    r = curl_raw(open_url("/echo/open-only"), "--http2", *mtls_args())
    assert r.status == 200, r
    assert echo_values(r, "x-tollgate-principal") == ["test-client"], r
    refused(fresh_demo, lambda: curl_raw(std_url("/echo/open-only"), "--http2", *mtls_args()),
            403, "permission_denied", "permission_error")


# ---------------------------------------------------------------------------------------------
# tollgate key new / key hash

def test_key_new_end_to_end(start_tollgate, tmp_path, fresh_demo, mat):
    r = subprocess.run([TG_BIN, "key", "new", "--id", "team-b"], capture_output=True, text=True,
                       timeout=20 * SLOW)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    key, entry = lines[0], json.loads(lines[1])
    assert len(key) >= 32 and not re.search(r"\s", key), key
    assert key not in lines[1], "the keys-file entry holds the key itself"
    assert entry["id"] == "team-b", entry
    assert entry["hash"] == sha256_hash(key), entry
    entry["principal"] = "team-b"
    entry["policy"] = "standard"
    cfg = auth_config(fresh_demo, tmp_path, mat, [entry])
    del cfg["auth"]["api_key_pepper_env"]
    t = start_tollgate(cfg)
    r = Client(t, "h1").get("/echo", bearer(key))
    assert echo_values(r, "x-tollgate-principal") == ["team-b"], r
    # a second run gives another key
    r2 = subprocess.run([TG_BIN, "key", "new", "--id", "team-b"], capture_output=True,
                        text=True, timeout=20 * SLOW)
    assert r2.returncode == 0 and r2.stdout.splitlines()[0] != key


def test_key_hash(tmp_path, demo, mat, keys):
    k = new_api_key()
    r = subprocess.run([TG_BIN, "key", "hash"], input=k + "\n", capture_output=True, text=True,
                       timeout=20 * SLOW)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == sha256_hash(k), r.stdout
    cfg = auth_config(demo, tmp_path, mat, key_entries(keys))
    p = tmp_path / "hash.json"
    p.write_text(json.dumps(cfg))
    r = subprocess.run([TG_BIN, "key", "hash", "-c", str(p)], input=k, capture_output=True,
                       text=True, timeout=20 * SLOW, env={"TG_PEPPER": PEPPER})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == hmac_hash(k), r.stdout
