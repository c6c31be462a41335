"""A stopped attempt exits 143 within GKE Spot's grace period even when a best-effort upload
hangs: a real trainer subprocess, a real SIGTERM, its output on the GCS emulator behind a proxy
that stops answering the uploads of TensorBoard's event files once the signal is on its way.

The CI of 3e83694 saw this for real: a deleted pod's trainer wrote its stop checkpoint, then sat
in the TensorBoard upload at the end of the attempt (gcsfs waiting on the emulator) until the
kubelet killed it at the end of its 15 s (exit 137, no attempt log in the bucket). Before the fix
this test's trainer never exits.
"""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mlops_trainers import storage
from mlops_trainers.contract import attempt_log
from mlops_trainers.signals import GRACE_S
from tiny_vqvae import TINY_VQVAE

pytestmark = pytest.mark.slow

TINY = {**TINY_VQVAE, "steps_per_epoch": 40, "reconstructions": 0}
START_S = 240.0  # import, data and model on a shared 2-core machine


class StallingProxy(ThreadingHTTPServer):
    """Forwards each request to the emulator, except, while :attr:`stalling` is set, those that
    upload an object under a ``/tb/`` folder (its name is in the query of a resumable upload and
    in the JSON part of a multipart one): those get no answer until :attr:`released` is set."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
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
        is_tb = "/tb/" in target or b"/tb/" in body
        if self.server.stalling.is_set() and self.command in ("POST", "PUT") and is_tb:
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


@pytest.fixture
def proxy(gcs_emulator: str) -> Iterator[StallingProxy]:
    server = StallingProxy(gcs_emulator)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()


def test_a_hung_tensorboard_upload_does_not_outlast_the_grace_period(
    proxy: StallingProxy,
    tmp_path: Path,
    images: str,
    make_run_file: Any,
    trainer_process: Any,
) -> None:
    root = f"gs://mlops-test/stop-{time.time_ns()}"
    config = make_run_file(
        root, "stalled-g1-0123abcd", "vqvae", TINY, data=images, epochs=2, checkpoint_every=5
    )
    process, out = trainer_process(
        config, tmp_path, timeout=START_S, STORAGE_EMULATOR_HOST=proxy.url
    )
    try:
        proxy.stalling.set()
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=GRACE_S + 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit {GRACE_S + 30:.0f} s after SIGTERM:\n{out.read_text()[-6000:]}")
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = out.read_text()
    print(f"exit {code} {took:.1f} s after SIGTERM; held: {proxy.held}")
    assert code == 143, text[-4000:]
    # Within the grace period, with room to spare: the kubelet's SIGKILL comes at GRACE_S.
    assert took < GRACE_S, f"{took:.1f} s:\n{text[-4000:]}"
    assert proxy.held, "no TensorBoard upload was held: the test did not test the hang"
    # The attempt's log reached the bucket, whole: the stop's checkpoint, the upload given up.
    lines = storage.read_text(storage.join(config["output"], attempt_log(1))).splitlines()
    stopped = re.search(r"stopped at global step (\d+): exit 143", lines[-1])
    assert stopped, lines[-5:]
    assert any(f"step-{int(stopped.group(1)):010d}" in line for line in lines), lines
    assert any("the TensorBoard upload" in line and "gave up" in line for line in lines), lines
    manifest = storage.join(
        config["output"], "checkpoints", f"step-{int(stopped.group(1)):010d}", "checkpoint.json"
    )
    assert storage.exists(manifest)
