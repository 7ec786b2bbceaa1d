"""A loopback HTTP server (127.0.0.1, a thread) for download tests: serves files and misbehaves on request.

Tests never touch the internet; this server is the only peer. Each served path has a Behaviour: the bytes, and
how the next requests go wrong (a fixed status such as 404, a few 500s before success, a connection dropped
after N bytes of the body, a stall after N bytes, Range ignored). Every request is recorded (path, headers) so a
test can assert that a resume asked for the right Range, or that no request was made at all.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Behaviour:
    data: bytes
    status: int | None = None  # always answer this status (e.g. 404), no body
    fail_first: int = 0  # answer 500 to this many requests first
    drop_after: int | None = None  # send only this many body bytes, then drop the connection ...
    drops: int = 1  # ... for this many requests
    stall_after: int | None = None  # send this many body bytes, then send nothing for `stall_for` s ...
    stalls: int = 1  # ... for this many requests
    stall_for: float = 3.0
    ignore_range: bool = False  # answer 200 with the whole file to a Range request
    redirect_to: str | None = None  # answer 302 to this path
    served: int = field(default=0)  # requests answered so far


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that went away mid-answer: expected here
        pass


@dataclass
class Request:
    path: str
    headers: dict


class Loopback:
    def __init__(self):
        self.files: dict[str, Behaviour] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                owner._handle(self)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Loopback:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def serve(self, path: str, behaviour: Behaviour) -> str:
        self.files[path] = behaviour
        return self.url(path)

    def ranges(self, path: str) -> list[str | None]:
        """The Range header of each request of `path`, in order (None: none sent)."""
        return [r.headers.get("range") for r in self.requests if r.path == path]

    # ------------------------------------------------------------------ the handler
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append(Request(h.path, {k.lower(): v for k, v in h.headers.items()}))
            b = self.files.get(h.path)
            n = b.served if b else 0
            if b:
                b.served += 1
        if b is None:
            return self._status(h, 404)
        if b.redirect_to:
            h.send_response(302)
            h.send_header("Location", b.redirect_to)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if b.status is not None:
            return self._status(h, b.status)
        if n < b.fail_first:
            return self._status(h, 500)
        data, start = b.data, 0
        rng = h.headers.get("Range")
        if rng and not b.ignore_range and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        attempt = n - b.fail_first
        try:
            if b.drop_after is not None and attempt < b.drops:
                h.wfile.write(body[:b.drop_after])
                h.wfile.flush()
                h.connection.shutdown(socket.SHUT_RDWR)
                h.close_connection = True
                return
            if b.stall_after is not None and attempt < b.stalls:
                h.wfile.write(body[:b.stall_after])
                h.wfile.flush()
                time.sleep(b.stall_for)
                h.close_connection = True
                return
            h.wfile.write(body)
        except OSError:  # the client went away
            h.close_connection = True

    @staticmethod
    def _status(h: BaseHTTPRequestHandler, code: int) -> None:
        body = f"status {code}\n".encode()
        h.send_response(code)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


def refused_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (a port just freed), so a connection is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/SPMamba-LibriMix.zip"


def fill_disk_after(monkeypatch, module, room: int) -> None:
    """Make `module`'s writes of a `.part` file fail with ENOSPC once `room` bytes are written (a full disk)."""
    import builtins
    import errno
    import io

    left = [room]

    class FullDisk(io.FileIO):
        def write(self, b):
            if left[0] <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            n = min(len(b), left[0])
            left[0] -= n
            return super().write(bytes(b[:n]))

    def fake_open(path, mode="r", *a, **k):
        if str(path).endswith(".part") and "b" in mode:
            return io.BufferedWriter(FullDisk(path, mode.replace("b", "")))
        return builtins.open(path, mode, *a, **k)

    monkeypatch.setattr(module, "open", fake_open, raising=False)
