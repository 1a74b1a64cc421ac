"""Small protocol clients for the integration tests: a raw HTTP/1.1 socket
client that shows exactly what went over the wire (status line, framing,
connection close or reset), and an HTTP/2 client on python3-h2 that exposes
RST_STREAM / GOAWAY codes and lets a test control flow-control windows.
Every wait here is bounded by a deadline."""
import hashlib
import json
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from conftest import CERTS, SLOW


def sha256_hex(b):
    return hashlib.sha256(b).hexdigest()


def client_ssl_context(alpn):
    ctx = ssl.create_default_context(cafile=str(CERTS / "ca.crt"))
    ctx.set_alpn_protocols(alpn)
    return ctx


class Closed(Exception):
    """The peer closed (EOF or reset) before the expected bytes arrived."""


class H1Conn:
    """One HTTP/1.1 connection over a plain (or TLS) socket."""

    def __init__(self, port, tls=False, rcvbuf=None, timeout=10.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Set before connect so the window is small from the handshake on.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout * SLOW)
        self.sock.connect(("127.0.0.1", port))
        if tls:
            self.sock = client_ssl_context(["http/1.1"]).wrap_socket(
                self.sock, server_hostname="localhost")
        self.buf = b""
        self.eof = None  # None, "eof" or "reset" once the peer is gone

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _recv_some(self, deadline):
        """Read once into buf. False when the peer is gone."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data before the deadline")
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            self.eof = "reset"
            return False
        except ssl.SSLError:
            self.eof = "reset"
            return False
        except socket.timeout:
            raise TimeoutError("no data before the deadline")
        if not d:
            self.eof = "eof"
            return False
        self.buf += d
        return True

    def read_head(self, timeout=10.0):
        """(status, [(name, value)], status_line) of the next response head."""
        deadline = time.monotonic() + timeout * SLOW
        while b"\r\n\r\n" not in self.buf:
            if not self._recv_some(deadline):
                raise Closed(f"connection {self.eof} before a complete head: {self.buf[:200]!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status_line = lines[0]
        parts = status_line.split(" ", 2)
        assert parts[0] == "HTTP/1.1", status_line
        hdrs = []
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs.append((k.strip().lower(), v.strip()))
        return int(parts[1]), hdrs, status_line

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            if not self._recv_some(deadline):
                raise Closed(f"connection {self.eof} with {n - len(self.buf)} body bytes missing")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_line(self, deadline):
        while b"\r\n" not in self.buf:
            if not self._recv_some(deadline):
                raise Closed(f"connection {self.eof} inside chunk framing")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_body(self, status, hdrs, timeout=20.0, on_data=None, head_request=False):
        """The body of a response whose head was just read. Raises Closed when the
        framing says more bytes should have come (a truncated response)."""
        deadline = time.monotonic() + timeout * SLOW
        h = dict(hdrs)
        if head_request or status in (204, 304) or status < 200:
            return b""
        if "chunked" in h.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(self.read_line(deadline).split(b";")[0], 16)
                if size == 0:
                    while self.read_line(deadline) != b"":
                        pass
                    return body
                data = self.read_exact(size, deadline)
                if self.read_line(deadline) != b"":
                    raise AssertionError("chunk not followed by CRLF")
                body += data
                if on_data:
                    on_data(data)
        if "content-length" in h:
            n = int(h["content-length"])
            data = self.read_exact(n, deadline)
            if on_data and data:
                on_data(data)
            return data
        while self._recv_some(deadline):
            pass
        data, self.buf = self.buf, b""
        return data

    def request(self, method, path, headers=(), body=b"", timeout=20.0, host="127.0.0.1"):
        """Send one request and read its response: (status, headers, body)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        names = {k.lower() for k, _ in headers}
        for k, v in headers:
            lines.append(f"{k}: {v}")
        if body and "content-length" not in names and "transfer-encoding" not in names:
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        status, hdrs, _ = self.read_head(timeout)
        data = self.read_body(status, hdrs, timeout, head_request=(method == "HEAD"))
        return status, hdrs, data

    def wait_closed(self, timeout):
        """Read until the peer closes: "eof", "reset" or "timeout"; bytes go to buf."""
        deadline = time.monotonic() + timeout * SLOW
        try:
            while self._recv_some(deadline):
                pass
        except TimeoutError:
            return "timeout"
        return self.eof


def raw_exchange(port, data, timeout=5.0):
    """Send data on a fresh connection and read everything until the peer closes.
    Returns (bytes, how) with how in "eof", "reset", "timeout"."""
    c = H1Conn(port, timeout=timeout)
    try:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        how = c.wait_closed(timeout)
        return c.buf, how
    finally:
        c.close()


def header_values(hdrs, name):
    return [v for k, v in hdrs if k == name]


def echo_headers(body):
    """The headers /echo saw, as a list of (lowercase name, value)."""
    j = json.loads(body)
    return [(k.lower(), v) for k, v in j["headers"]]


class H2Stream:
    def __init__(self):
        self.status = None
        self.headers = None
        self.data = bytearray()
        self.chunks = []  # (monotonic time, bytes)
        self.ended = False
        self.reset = None  # error code of a RST_STREAM from the server


class H2Client:
    """A client HTTP/2 connection (prior knowledge on plaintext, ALPN h2 on TLS)."""

    def __init__(self, port, tls=False, validate=True, settings=None, auto_window=True,
                 timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
        if tls:
            self.sock = client_ssl_context(["h2"]).wrap_socket(self.sock,
                                                               server_hostname="localhost")
            assert self.sock.selected_alpn_protocol() == "h2"
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=validate,
                                        normalize_outbound_headers=validate)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.auto_window = auto_window
        self.streams = {}
        self.goaway = None  # error code of a GOAWAY
        self.server_settings = {}
        self.closed = False
        self.inbuf = b""
        self.flush()

    def flush(self):
        d = self.conn.data_to_send()
        if d:
            self.sock.sendall(d)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def request(self, method, path, headers=(), body=None, authority=None, raw_headers=None):
        sid = self.conn.get_next_available_stream_id()
        if raw_headers is not None:
            hdrs = raw_headers
        else:
            hdrs = [(":method", method), (":path", path), (":scheme", "http"),
                    (":authority", authority or "127.0.0.1")] + list(headers)
        self.streams[sid] = H2Stream()
        self.conn.send_headers(sid, hdrs, end_stream=not body)
        if body:
            self.flush()
            self.send_body(sid, body)
        self.flush()
        return sid

    def send_body(self, sid, body, timeout=20.0):
        """Send body respecting the peer's flow-control windows, then END_STREAM."""
        deadline = time.monotonic() + timeout * SLOW
        view = memoryview(body)
        while view:
            room = min(self.conn.local_flow_control_window(sid),
                       self.conn.max_outbound_frame_size, len(view))
            if room <= 0:
                if not self.pump(deadline - time.monotonic()):
                    raise Closed("connection closed while sending a body")
                if self.streams[sid].reset is not None:
                    return
                continue
            self.conn.send_data(sid, bytes(view[:room]))
            view = view[room:]
            self.flush()
        self.conn.end_stream(sid)
        self.flush()

    def pump(self, timeout):
        """Read once (up to timeout) and process events. False when the connection closed."""
        if self.closed:
            return False
        if timeout <= 0:
            raise TimeoutError("h2: deadline passed")
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("h2: no frame before the deadline")
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            d = b""
        if not d:
            self.closed = True
            return False
        now = time.monotonic()
        self.inbuf += d
        events = []
        # Feed whole frames one at a time: python-h2 treats any GOAWAY as the end
        # of the connection and rejects later frames, but after a graceful
        # GOAWAY (NO_ERROR) a server still finishes the streams it accepted.
        while len(self.inbuf) >= 9:
            n = 9 + int.from_bytes(self.inbuf[:3], "big")
            if len(self.inbuf) < n:
                break
            frame, self.inbuf = self.inbuf[:n], self.inbuf[n:]
            try:
                evs = self.conn.receive_data(frame)
            except h2.exceptions.ProtocolError:
                self.closed = True
                return False
            for ev in evs:
                if isinstance(ev, h2.events.ConnectionTerminated) and ev.error_code == 0:
                    self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            events.extend(evs)
        for ev in events:
            sid = getattr(ev, "stream_id", None)
            st = self.streams.get(sid) if sid else None
            if isinstance(ev, h2.events.ResponseReceived) and st:
                st.headers = list(ev.headers)
                st.status = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived) and st:
                st.data += ev.data
                st.chunks.append((now, bytes(ev.data)))
                if self.auto_window and ev.flow_controlled_length:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded) and st:
                st.ended = True
            elif isinstance(ev, h2.events.StreamReset) and st:
                st.reset = int(ev.error_code)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = int(ev.error_code)
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                for k, v in ev.changed_settings.items():
                    self.server_settings[int(k)] = v.new_value
        try:
            self.flush()
        except OSError:
            self.closed = True
        return True

    def wait(self, sid, timeout=20.0):
        """Until the stream ended, was reset, or the connection closed."""
        deadline = time.monotonic() + timeout * SLOW
        st = self.streams[sid]
        while not st.ended and st.reset is None:
            if not self.pump(deadline - time.monotonic()):
                break
        return st

    def wait_settings(self, timeout=5.0):
        deadline = time.monotonic() + timeout * SLOW
        while not self.server_settings:
            if not self.pump(deadline - time.monotonic()):
                break
        return self.server_settings


def sse_events(body):
    """The "data:" payloads of an SSE body, in order."""
    text = body.decode() if isinstance(body, (bytes, bytearray)) else body
    out = []
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data:"):
                out.append(line[5:].strip())
    return out


class EventClock:
    """Feed body bytes as they arrive; records when each SSE event completed."""

    def __init__(self):
        self.body = b""
        self.times = []

    def feed(self, data, when=None):
        when = time.monotonic() if when is None else when
        self.body += data
        n = self.body.count(b"\n\n")
        while len(self.times) < n:
            self.times.append(when)


def chat_body(tokens=5, stream=True, **extra):
    b = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}],
         "max_tokens": tokens, "stream": stream}
    b.update(extra)
    return json.dumps(b).encode()
