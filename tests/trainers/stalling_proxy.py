"""An HTTP proxy in front of the GCS emulator that withholds its answer to chosen requests, as a
stalled connection to a storage server would: the client has sent its request and hears nothing."""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Hold = Callable[[str, str, bytes], bool]  # (method, unquoted path and query, body) -> withhold?


class StallingProxy(ThreadingHTTPServer):
    """Forwards each request to the emulator, except those :attr:`hold` picks while
    :attr:`stalling` is set: those get no answer until :attr:`released` is set, then their
    connection is closed."""

    daemon_threads = True

    def __init__(self, upstream: str, hold: Hold) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.hold = hold
        self.stalling = threading.Event()
        self.released = threading.Event()
        self.held: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    server: StallingProxy

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        assert "chunked" not in (self.headers.get("Transfer-Encoding") or ""), self.headers
        body = self.rfile.read(length) if length else b""
        target = urllib.parse.unquote(self.path)
        if self.server.stalling.is_set() and self.server.hold(self.command, target, body):
            self.server.held.append(f"{self.command} {target}")
            self.server.released.wait()
            self.close_connection = True
            return  # no answer: the client sees its connection closed, much later
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host",)}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        try:
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a trainer that exited, or was killed, mid-request)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward  # noqa: N815 - the base's names

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


@contextmanager
def stalling_proxy(upstream: str, hold: Hold) -> Iterator[StallingProxy]:
    """A running :class:`StallingProxy`; released and shut down on exit."""
    server = StallingProxy(upstream, hold)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()
