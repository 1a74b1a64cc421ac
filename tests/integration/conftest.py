"""Fixtures for the integration suite: the real tollgate binary, the demo
model server, free loopback ports, and helpers to write configs and run real
clients (curl, nghttp, h2load, httpx)."""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("TG_BUILD", ROOT / "build"))
TG_BIN = os.environ.get("TG_BIN", str(BUILD / "tollgate"))
TG_DEMO = os.environ.get("TG_DEMO", str(BUILD / "tests" / "demo_upstream"))
CERTS = ROOT / "tests" / "data" / "certs"
# Under ASan everything is slower; tests scale their waits with this.
SLOW = 3.0 if "asan" in str(BUILD) else 1.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} not listening")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Demo:
    """The demo OpenAI-compatible model server (tests/upstream/demo_upstream.c)."""

    def __init__(self, extra=()):
        self.proc = subprocess.Popen([TG_DEMO, "--host", "127.0.0.1", "--port", "0", "--quiet",
                                      *extra], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), line
        self.port = int(line.split()[1])
        self.addr = f"127.0.0.1:{self.port}"

    def url(self, path):
        return f"http://{self.addr}{path}"

    def stats(self):
        with urllib.request.urlopen(self.url("/_demo/stats"), timeout=5) as r:
            return json.load(r)

    def reset(self):
        req = urllib.request.Request(self.url("/_demo/reset"), method="POST", data=b"")
        urllib.request.urlopen(req, timeout=5).read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Tollgate:
    """One tollgate process with a config written to a temporary directory."""

    def __init__(self, tmp_path, cfg, env=None):
        self.dir = tmp_path
        self.cfg = cfg
        # Several instances may share one test's tmp_path: number them.
        n = 0
        while (tmp_path / f"tollgate{n or ''}.json").exists():
            n += 1
        self.path = tmp_path / f"tollgate{n or ''}.json"
        self.log_path = tmp_path / f"tollgate{n or ''}.stderr"
        e = dict(os.environ)
        e.update(env or {})
        for attempt in range(3):
            self.path.write_text(json.dumps(cfg, indent=2))
            self.log = open(self.log_path, "w")
            self.proc = subprocess.Popen([TG_BIN, "-c", str(self.path)], stdout=self.log,
                                         stderr=subprocess.STDOUT, env=e)
            try:
                for lst in cfg["listeners"]:
                    wait_port(lst["port"], proc=self.proc)
                return
            except RuntimeError:
                self.log.close()
                # A port from free_port() can be taken (e.g. as a client's ephemeral
                # port) before tollgate binds it: pick new ones and try again.
                # Two free_port() calls can also return the same port (admin
                # and a listener): the loader refuses that; pick again too.
                err = self.stderr()
                if attempt == 2 or ("address already in use" not in err and
                                    "is already used by" not in err):
                    raise RuntimeError(f"tollgate did not start:\n{err}")
                if self.proc.poll() is None:
                    self.proc.kill()
                self.proc.wait()
                for lst in cfg["listeners"]:
                    lst["port"] = free_port()
                if isinstance(cfg.get("admin"), dict) and "port" in cfg["admin"]:
                    cfg["admin"]["port"] = free_port()

    @property
    def pid(self):
        return self.proc.pid

    def port(self, name=None):
        for lst in self.cfg["listeners"]:
            if name is None or lst["name"] == name:
                return lst["port"]
        raise KeyError(name)

    def url(self, path, name=None, scheme="http"):
        return f"{scheme}://127.0.0.1:{self.port(name)}{path}"

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=15):
        """SIGTERM, wait, and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("tollgate did not stop on SIGTERM")
        self.log.close()
        return self.proc.returncode

    def stderr(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")


def base_config(demo, **over):
    """A config with one plaintext (h2c + http/1.1) and one TLS listener in
    front of the demo server, with routes "/v1/" and "/echo" and "/big"."""
    cfg = {
        "workers": 1,
        "listeners": [
            {"name": "plain", "address": "127.0.0.1", "port": free_port(),
             "protocols": ["h2c", "http/1.1"]},
            {"name": "tls", "address": "127.0.0.1", "port": free_port(),
             "tls": {"certificate_file": str(CERTS / "server.crt"),
                     "private_key_file": str(CERTS / "server.key")},
             "protocols": ["h2", "http/1.1"]},
        ],
        "limits": {"header_timeout_ms": 5000, "body_timeout_ms": 5000,
                   "idle_timeout_ms": 30000, "shutdown_grace_ms": 5000},
        "upstreams": [
            {"name": "demo", "servers": [demo.addr], "connect_timeout_ms": 2000,
             "first_byte_timeout_ms": 10000},
        ],
        "routes": [
            {"path_prefix": "/v1/", "upstream": "demo", "api": "passthrough"},
            {"path_prefix": "/echo", "upstream": "demo"},
            {"path_prefix": "/big", "upstream": "demo"},
            {"path_prefix": "/healthz", "upstream": "demo"},
        ],
        "error_log": {"level": "info"},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


@pytest.fixture(scope="session")
def demo():
    d = Demo()
    yield d
    d.stop()


@pytest.fixture
def fresh_demo(demo):
    demo.reset()
    return demo


@pytest.fixture
def start_tollgate(tmp_path):
    started = []

    def start(cfg, env=None):
        t = Tollgate(tmp_path, cfg, env)
        started.append(t)
        return t

    yield start
    for t in started:
        code = t.stop()
        log = t.stderr()
        # ASan/UBSan reports go to stderr; any of them fails the test.
        assert "ERROR: AddressSanitizer" not in log, log
        assert "runtime error:" not in log, log
        assert "ERROR: LeakSanitizer" not in log, log
        assert code == 0, f"tollgate exited {code}\n{log}"


@pytest.fixture
def tollgate(start_tollgate, fresh_demo):
    return start_tollgate(base_config(fresh_demo))


def curl(*args, timeout=20):
    """Run curl; returns CompletedProcess (text)."""
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout * SLOW), *args],
                          capture_output=True, text=True, timeout=timeout * SLOW + 5)


class RedisServer:
    """A throwaway redis-server on a free loopback port (SPEC §1: Redis 7)."""

    def __init__(self, tmp_path, port=None, extra=()):
        self.dir = tmp_path
        self.port = port or free_port()
        self.extra = list(extra)
        self.password = None
        if "--requirepass" in self.extra:
            self.password = self.extra[self.extra.index("--requirepass") + 1]
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.client(password=self.password).ping():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.02)
        self.kill()
        raise RuntimeError("redis-server did not start")

    def client(self, **kw):
        import redis  # python3-redis
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kw)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def redis_server(tmp_path):
    r = RedisServer(tmp_path)
    yield r
    r.stop()


class SharedRedis:
    """The suite's redis-server started by .ci/test.sh (TG_TEST_REDIS_PORT),
    emptied before each test.  Tests that kill or pause Redis use their own."""

    def __init__(self, port):
        self.port = port

    def client(self, **kw):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kw)


@pytest.fixture
def shared_redis(tmp_path):
    port = os.environ.get("TG_TEST_REDIS_PORT")
    if port:
        r = SharedRedis(int(port))
        r.client().flushall()
        r.client().script_flush()
        yield r
        return
    own = RedisServer(tmp_path)
    yield own
    own.stop()
