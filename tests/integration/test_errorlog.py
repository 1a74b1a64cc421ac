"""The error log (SPEC §2, §3 error_log): lines go to error_log.file as
"<ISO time> <level> <module>: message", SIGUSR1 reopens the file (logrotate),
the level filters, and no secret ever reaches it."""
import copy
import datetime
import http.client
import json
import os
import re
import signal
import time

from authdata import (AUDIENCE, ISSUER, PEPPER, Client, Material, bearer, hmac_hash, key_entry,
                      new_api_key, write_keys)
from conftest import SLOW, base_config, free_port, wait_port
from helpers import H1Conn, H2Client

LINE_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z) "
                     r"(debug|info|warn|error) ([a-z][a-z0-9_.-]*): (\S.*)$")


def log_config(demo, path, level="info", **over):
    cfg = base_config(demo, **over)
    cfg["error_log"] = {"file": str(path), "level": level}
    return cfg


def read(path):
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for(path, needle, timeout=3.0):
    deadline = time.monotonic() + timeout * SLOW
    while needle not in read(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def parse_lines(text):
    out = []
    for ln in text.splitlines():
        m = LINE_RE.match(ln)
        assert m, f"error-log line not in '<ISO time> <level> <module>: message' form: {ln!r}"
        ts = datetime.datetime.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S").replace(
            tzinfo=datetime.timezone.utc)
        skew = abs((datetime.datetime.now(datetime.timezone.utc) - ts).total_seconds())
        assert skew < 120, f"timestamp not UTC now ({skew:.0f}s off): {ln!r}"
        out.append((m.group(2), m.group(3), m.group(4)))
    return out


def rewrite(t, cfg):
    tmp = t.path.with_name(t.path.name + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2))
    os.replace(tmp, t.path)


def test_error_log_file_lines_and_format(start_tollgate, tmp_path, fresh_demo):
    path = tmp_path / "error.log"
    cfg = log_config(fresh_demo, path)
    t = start_tollgate(cfg)
    assert wait_for(path, "started"), read(path)
    # A warning (workers change needs a restart) and an error (a rejected reload).
    cfg2 = copy.deepcopy(cfg)
    cfg2["workers"] = 2
    rewrite(t, cfg2)
    t.signal(signal.SIGHUP)
    assert wait_for(path, "configuration reloaded"), read(path)
    t.path.write_text("{ not json")
    t.signal(signal.SIGHUP)
    assert wait_for(path, "reload rejected"), read(path)
    lines = parse_lines(read(path))
    levels = {lv for lv, _, _ in lines}
    assert {"info", "warn", "error"} <= levels, lines
    assert any(lv == "error" and mod == "server" and msg.startswith("reload rejected")
               and str(t.path.resolve()) in msg for lv, mod, msg in lines), lines
    assert any(lv == "warn" and "workers" in msg for lv, _, msg in lines), lines
    assert any(lv == "info" and "listening on 127.0.0.1:%d" % t.port("plain") in msg
               for lv, _, msg in lines), lines
    # Nothing of this went to stderr.
    err = t.stderr()
    assert "reload rejected" not in err and "started" not in err, err
    rewrite(t, cfg2)  # a valid file again for the teardown's clean stop
    t.stop()
    lines = parse_lines(read(path))
    assert lines[-1][2] == "stopped", lines[-3:]


def test_sigusr1_reopens_after_rename(start_tollgate, tmp_path, fresh_demo):
    path = tmp_path / "error.log"
    t = start_tollgate(log_config(fresh_demo, path))
    assert wait_for(path, "started")
    for n in (1, 2):
        rotated = tmp_path / f"error.log.{n}"
        os.rename(path, rotated)
        t.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 3 * SLOW
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.exists(), f"SIGUSR1 did not create a new {path.name}"
        t.signal(signal.SIGHUP)  # logs "configuration reloaded: version N+1"
        assert wait_for(path, f"version {n + 1} "), (read(path), read(rotated))
        assert f"version {n + 1} " not in read(rotated)
        parse_lines(read(path))
        parse_lines(read(rotated))
    # The first file kept the startup lines; nothing was lost or duplicated.
    assert "started" in read(tmp_path / "error.log.1")
    assert "started" not in read(tmp_path / "error.log.2") + read(path)
    t.stop()
    assert read(path).rstrip().endswith("stopped"), read(path)


def test_level_warn_hides_info(start_tollgate, tmp_path, fresh_demo):
    path = tmp_path / "error.log"
    cfg = log_config(fresh_demo, path, level="warn")
    t = start_tollgate(cfg)
    wait_port(t.port("plain"))
    cfg2 = copy.deepcopy(cfg)
    cfg2["workers"] = 2
    rewrite(t, cfg2)
    t.signal(signal.SIGHUP)  # warn: workers; info: configuration reloaded (hidden)
    assert wait_for(path, "workers"), read(path)
    t.path.write_text('{"bogus": 1}')
    t.signal(signal.SIGHUP)
    assert wait_for(path, "reload rejected"), read(path)
    lines = parse_lines(read(path))
    assert {lv for lv, _, _ in lines} <= {"warn", "error"}, lines
    assert not any("started" in msg or "listening" in msg or "reloaded" in msg
                   for _, _, msg in lines), lines
    # Back to "info" by reload: info lines appear from then on.
    cfg3 = copy.deepcopy(cfg2)
    cfg3["error_log"]["level"] = "info"
    rewrite(t, cfg3)
    t.signal(signal.SIGHUP)
    assert wait_for(path, "configuration reloaded"), read(path)
    assert any(lv == "info" for lv, _, _ in parse_lines(read(path)))
    assert t.stderr().strip() == "", t.stderr()


def test_no_secret_in_error_log(start_tollgate, tmp_path, fresh_demo):
    path = tmp_path / "error.log"
    mat = Material()
    good = new_api_key()
    good_hmac = new_api_key()
    keys_path = write_keys(tmp_path / "keys.json", [
        key_entry("good-1", good, "team-a"),
        key_entry("hmac-1", good_hmac, "team-h", hmac_pepper=PEPPER),
    ])
    jwks_path = mat.write_jwks(tmp_path / "jwks.json")
    admin_token = "admin-secret-token-5d1e0c3b9a"
    upstream_secret = "upstream-secret-7f3a9c2e41"
    cfg = log_config(fresh_demo, path, level="debug")
    cfg["upstreams"][0]["authorization_env"] = "TG_UP_AUTH"
    cfg["admin"] = {"address": "127.0.0.1", "port": free_port(), "token_env": "TG_ADMIN_TOK"}
    cfg["auth"] = {"api_keys_file": str(keys_path), "api_key_pepper_env": "TG_PEPPER",
                   "failed_auth_per_minute_per_ip": 5,
                   "jwt": [{"issuer": ISSUER, "audiences": [AUDIENCE],
                            "jwks_file": str(jwks_path), "algorithms": ["RS256", "ES256"],
                            "default_policy": "standard"}]}
    cfg["policies"] = {"standard": {"models": ["demo-*"]}}
    env = {"TG_UP_AUTH": upstream_secret, "TG_ADMIN_TOK": admin_token, "TG_PEPPER": PEPPER}
    t = start_tollgate(cfg, env=env)
    wait_port(cfg["admin"]["port"], proc=t.proc)

    bad_keys = [new_api_key() for _ in range(4)]
    good_jwt = mat.token("rsa1", sub="user-secret-sub")
    bad_jwt = mat.token("rsa1", key=mat.attacker)  # wrong signature
    expired_jwt = mat.token("ec1", exp=int(time.time()) - 3600)
    secrets = [good, good_hmac, PEPPER, admin_token, upstream_secret, good_jwt, bad_jwt,
               expired_jwt, *bad_keys]
    h1, h2 = Client(t, "h1"), Client(t, "h2c")
    assert h1.get("/echo", bearer(good)).status == 200
    assert h2.get("/echo", [("x-api-key", good_hmac)]).status == 200
    assert h1.get("/echo", bearer(good_jwt)).status == 200
    for cl in (h1, h2):
        for k in bad_keys[:2]:
            assert cl.get("/echo", bearer(k)).status in (401, 429)
        assert cl.get("/echo", [("x-api-key", bad_keys[2])]).status in (401, 429)
        assert cl.get("/echo", bearer(bad_jwt)).status in (401, 429)
        assert cl.get("/echo", bearer(expired_jwt)).status in (401, 429)
        assert cl.get("/echo", [("authorization", f"Basic {bad_keys[3]}")]).status in (401, 429)
    # Raw, malformed and upstream-failing requests carrying credentials.
    c = H1Conn(t.port("plain"))
    try:
        c.send(f"GET /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\n"
               f"X-Api-Key: {bad_keys[0]}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
               .encode())
        c.wait_closed(3)
    finally:
        c.close()
    c = H1Conn(t.port("plain"))
    try:  # the upstream resets after its response head
        c.send(f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\n"
               f"x-demo-mode: reset-after=0\r\n\r\n".encode())
        c.wait_closed(3)
    finally:
        c.close()
    hc = H2Client(t.port("plain"))
    try:
        sid = hc.request("GET", "/echo", headers=[("authorization", f"Bearer {good}"),
                                                   ("x-demo-mode", "status=503")])
        hc.wait(sid)
    finally:
        hc.close()
    # The admin token, wrong and right.
    for tok in (admin_token + "x", admin_token[:-3], admin_token):
        ac = http.client.HTTPConnection("127.0.0.1", cfg["admin"]["port"], timeout=5 * SLOW)
        try:
            ac.request("GET", "/metrics", headers={"Authorization": f"Bearer {tok}"})
            ac.getresponse().read()
        finally:
            ac.close()
    # Rejected and accepted reloads (they log config errors and hashes).
    t.path.write_text(json.dumps(cfg)[:-5])
    t.signal(signal.SIGHUP)
    assert wait_for(path, "reload rejected")
    rewrite(t, cfg)
    # A broken JWKS file around an HS256 ("oct") secret: the parse error must
    # not quote the secret.
    hs_secret = mat.jwks()["keys"][3]["k"]
    secrets.append(hs_secret)
    good_jwks = jwks_path.read_text()
    for broken in (good_jwks[:good_jwks.index(hs_secret) + len(hs_secret)],
                   good_jwks.replace(hs_secret, hs_secret + "\n")):
        before = read(path).count("reload rejected")
        jwks_path.write_text(broken)
        t.signal(signal.SIGHUP)
        deadline = time.monotonic() + 3 * SLOW
        while read(path).count("reload rejected") == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert read(path).count("reload rejected") == before + 1, read(path)
    jwks_path.write_text(good_jwks)
    rewrite(t, cfg)
    t.signal(signal.SIGHUP)
    assert wait_for(path, "configuration reloaded")
    assert t.stop() == 0
    log = read(path) + t.stderr()
    assert log, "nothing logged"
    parse_lines(read(path))
    for s in secrets:
        for piece in (s, s[-20:], s[3:23]):
            assert piece not in log, f"a secret ({s[:6]}...) appears in the error log"
    assert hmac_hash(good_hmac, PEPPER).split(":")[1] not in log
