"""PyPI's ``gcp-storage-emulator`` (its own command line: ``python hack/gcs_emulator.py start
--in-memory ...``) without two limits that a real bucket does not have and that made trainer pods
miss their grace period in the real-node tests:

- **One connection held up every request.** Its server is a plain ``HTTPServer``: one request at
  a time, read, handled and answered on the server's one thread, so a client that stops halfway
  holds every other client until its socket gives up. In the real-node run that caught it, a pod
  had just exited and gone when another stopping trainer's checkpoint waited 30 s on the server,
  and was killed. Here each connection has its own thread, which reads the request and
  writes the answer; only the handling in between, in the emulator's storage (not thread-safe),
  takes turns. A silent connection is dropped after :data:`IDLE_S`.
- **A write cost that grows with the bucket.** On every write, in memory too, it serialised the
  metadata of every object it holds to a ``.meta`` file, which only a folder-backed emulator reads
  back (when it starts). An ad-hoc probe (2026-12-02, idle machine, 2 kB objects, gcsfs'
  resumable upload): 105 ms a write at 3000 objects, 5.7 ms at none. Skipped in memory here:
  2.0-2.1 ms at 3000 (1.0-1.1 ms with a one-request upload, as ``storage.write_bytes`` does).

Everything else is the emulator as published: the tests, the benches and the pods speak GCS' JSON
API to it.
"""

from __future__ import annotations

import http.server
import io
import sys
import threading
from typing import Any

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator import storage
from gcp_storage_emulator.__main__ import main

IDLE_S = 60.0  # seconds a connection may send nothing before its thread drops it

_write_config_to_file = storage.Storage._write_config_to_file
_read_raw_data = emulator._read_raw_data
_storage_turn = threading.Lock()


def _write_unless_in_memory(self: storage.Storage) -> None:
    if not self._use_memory_fs:
        _write_config_to_file(self)


def _body_read_before(handler: Any) -> Any:
    return handler.mlops_body if hasattr(handler, "mlops_body") else _read_raw_data(handler)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _Handler(emulator.RequestHandler):
    timeout = IDLE_S

    def _serve(self) -> None:
        # The request's body is read, and the answer written, outside the storage's turn: a slow
        # or vanished client then holds up its own thread only.
        self.mlops_body = _read_raw_data(self)
        socket_out, self.wfile = self.wfile, io.BytesIO()
        try:
            with _storage_turn:
                emulator.Router(self).handle(self.command)
        finally:
            answer, self.wfile = self.wfile, socket_out
        self.wfile.write(answer.getvalue())

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve  # noqa: N815 - http.server's names


storage.Storage._write_config_to_file = _write_unless_in_memory  # type: ignore[method-assign]
emulator._read_raw_data = _body_read_before
emulator.RequestHandler = _Handler
# APIThread.run starts http.server's HTTPServer (this process is the emulator and nothing else).
http.server.HTTPServer = _Server  # type: ignore[misc]

if __name__ == "__main__":
    sys.exit(main())
