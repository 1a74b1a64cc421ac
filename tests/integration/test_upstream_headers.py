"""Response headers from an upstream are re-serialised field by field: an
empty value must not glue its name onto the next field's name."""
import socket
import threading

from conftest import base_config, curl


class RawUpstream:
    """Answers every request with a fixed response head (one connection at a time)."""

    def __init__(self, response):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.addr = "127.0.0.1:%d" % self.ls.getsockname()[1]
        self.response = response
        self.stop = False
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while not self.stop:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            with c:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                c.sendall(self.response)

    def close(self):
        self.stop = True
        self.ls.close()


def test_empty_response_header_value(start_tollgate, fresh_demo):
    up = RawUpstream(b"HTTP/1.1 200 OK\r\nX-Empty:\r\nX-After: 1\r\n"
                     b"Content-Length: 2\r\nConnection: close\r\n\r\nok")
    try:
        cfg = base_config(fresh_demo)
        cfg["upstreams"].append({"name": "raw", "servers": [up.addr]})
        cfg["routes"].append({"path_prefix": "/raw", "upstream": "raw"})
        t = start_tollgate(cfg)
        r = curl("-D", "-", "-o", "/dev/null", t.url("/raw"))
        head = r.stdout.lower()  # text mode: CRLF reads as "\n"
        assert head.startswith("http/1.1 200"), r.stdout + r.stderr
        lines = [ln.rstrip() for ln in head.split("\n")]
        assert "x-empty:" in lines, head
        assert "x-after: 1" in lines, head
        assert "x-emptyx-after" not in head, head
    finally:
        up.close()
