"""A TCP proxy on loopback that can "wedge": accept connections and never answer.

The failure a hung API server, a dead load balancer or a half-open connection looks like from a
client: TCP connects, requests go out, nothing comes back. ``wedge()`` turns every current and
future connection into one of those; ``unwedge()`` lets new connections through again (the
wedged ones stay dead, as they would). Plain threads and sockets; stopped by ``close()``.
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress


class WedgeProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._wedged = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="wedge-proxy")
        self._thread.start()

    def wedge(self) -> None:
        self._wedged.set()

    def unwedge(self) -> None:
        self._wedged.clear()

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            with suppress(OSError):
                self._listener.close()
            for sock in self._sockets:
                with suppress(OSError):
                    sock.close()
            self._sockets.clear()
        self._thread.join(timeout=10)

    def _track(self, sock: socket.socket) -> socket.socket:
        """Remember ``sock`` to close it in :meth:`close` (closed at once if that already ran)."""
        with self._lock:
            if self._closed.is_set():
                sock.close()
                raise OSError("proxy closed")
            self._sockets.append(sock)
        return sock

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
                self._track(conn)
            except OSError:
                return
            if self._wedged.is_set():
                threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()
                continue
            try:
                upstream = self._track(socket.create_connection(self.upstream, timeout=10))
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _swallow(self, conn: socket.socket) -> None:
        """Read and drop whatever comes, answer nothing, never close first."""
        with suppress(OSError):
            while conn.recv(65536):
                pass

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self._wedged.is_set():
                    # Wedged mid-stream: from now on nothing passes either way.
                    self._swallow(src)
                    return
                dst.sendall(data)
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
