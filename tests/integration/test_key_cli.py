"""The key command line (SPEC §2): `tollgate key new --id ID [-c FILE]` and
`tollgate key hash [-c FILE]`, run as the real binary.  Hashes are checked
against Python's hashlib/hmac, independently of filters/apikey.c."""
import hashlib
import hmac
import json
import os
import re
import subprocess

import pytest

from conftest import SLOW, TG_BIN, free_port

KEY_RE = re.compile(r"^tg_[A-Za-z0-9_-]{43}$")
PEPPER = "integration-pepper-0123456789"


def tg(*args, stdin=b"", env=None):
    e = dict(os.environ)
    e.pop("TG_PEPPER", None)
    e.update(env or {})
    return subprocess.run([TG_BIN, *args], input=stdin, capture_output=True, env=e,
                          timeout=30 * SLOW)


def sha256_hash(key):
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def hmac_hash(key, pepper=PEPPER):
    return "hmac-sha256:" + hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()


def key_new(*args, env=None):
    r = tg("key", "new", *args, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().split("\n")
    assert len(lines) == 3 and lines[2] == "", r.stdout  # exactly two lines
    return lines[0], json.loads(lines[1]), r.stderr.decode()


def test_key_new_prints_key_and_entry():
    key, entry, err = key_new("--id", "team-a-1")
    assert KEY_RE.match(key), key
    assert entry == {"id": "team-a-1", "hash": sha256_hash(key), "principal": "team-a-1",
                     "policy": "default"}
    # The entry is one line of compact JSON, and the operator is told what to edit.
    assert "shown only once" in err
    assert "principal" in err and "policy" in err
    assert key not in err


def test_key_new_keys_differ():
    k1, e1, _ = key_new("--id", "a")
    k2, e2, _ = key_new("--id", "a")
    assert k1 != k2
    assert e1["hash"] != e2["hash"]


@pytest.mark.parametrize("stdin", [b"KEY\n", b"KEY", b"KEY\r\n"], ids=["lf", "none", "crlf"])
def test_key_hash_stdin(stdin):
    r = tg("key", "hash", stdin=stdin)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == sha256_hash("KEY") + "\n"
    assert b"KEY" not in r.stdout + r.stderr


def test_key_hash_agrees_with_key_new():
    key, entry, _ = key_new("--id", "x")
    r = tg("key", "hash", stdin=key.encode() + b"\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == entry["hash"]


@pytest.mark.parametrize("stdin", [b"", b"\n", b"\r\n", b"KEY\n\n", b"K\x00EY", b"k" * 257,
                                   b"k" * 5000],
                         ids=["empty", "lf", "crlf", "two-newlines", "nul", "257", "5000"])
def test_key_hash_refuses(stdin):
    r = tg("key", "hash", stdin=stdin)
    assert r.returncode != 0
    assert r.stdout == b""
    assert r.stderr


@pytest.mark.parametrize("args", [
    ["key", "new", "--id", "bad id"],
    ["key", "new", "--id", ""],
    ["key", "new", "--id", "a" * 65],
    ["key", "new", "--id", "a/b"],
    ["key", "new"],
    ["key", "new", "--id"],
    ["key", "new", "--id", "a", "--id", "b"],
    ["key", "new", "--id", "a", "--bogus"],
    ["key", "hash", "--id", "a"],
    ["key", "rotate"],
    ["key"],
], ids=["space", "empty", "long", "slash", "no-id", "no-value", "twice", "unknown-opt",
        "hash-id", "unknown-cmd", "no-cmd"])
def test_key_usage_errors(args):
    r = tg(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == b""
    assert r.stderr


def write_config(tmp_path, keys=()):
    (tmp_path / "keys.json").write_text(json.dumps({"keys": list(keys)}))
    cfg = {
        "listeners": [{"name": "a", "address": "127.0.0.1", "port": free_port()}],
        "auth": {"api_keys_file": "keys.json", "api_key_pepper_env": "TG_PEPPER"},
        "policies": {"default": {}},
    }
    path = tmp_path / "tollgate.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_key_with_config_pepper(tmp_path):
    cfg = write_config(tmp_path)
    env = {"TG_PEPPER": PEPPER}
    r = tg("key", "hash", "-c", cfg, stdin=b"KEY\n", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == hmac_hash("KEY") + "\n"

    key, entry, err = key_new("--id", "team-b", "-c", cfg, env=env)
    assert KEY_RE.match(key)
    assert entry["hash"] == hmac_hash(key)
    for out in (r.stdout + r.stderr, (key + json.dumps(entry) + err).encode()):
        assert PEPPER.encode() not in out

    # The printed entry is accepted by the loader: a config naming it loads.
    cfg = write_config(tmp_path, [entry])
    r = tg("key", "hash", "-c", cfg, stdin=key.encode(), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == entry["hash"]


def test_key_config_errors(tmp_path):
    cfg = write_config(tmp_path)
    # The pepper's variable is unset: a configuration error, exit 1.
    r = tg("key", "hash", "-c", cfg, stdin=b"KEY\n")
    assert r.returncode == 1
    assert r.stdout == b""
    assert b"TG_PEPPER" in r.stderr
    r = tg("key", "new", "--id", "a", "-c", str(tmp_path / "missing.json"))
    assert r.returncode == 1
    assert r.stdout == b""
