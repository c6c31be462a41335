"""The tests' GCS emulator (PyPI's, through hack/gcs_emulator.py) answers like a bucket does when
one client stalls: the others go on. PyPI's own server answers one connection at a time, so a
client that stopped halfway through its request (a pod whose network went away with it) held up
every other one; in the real-node tests a stopping trainer's checkpoint waited on it past its
grace period."""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
import uuid

from mlops_trainers import storage

BUCKET = "mlops-test"


def test_a_stalled_client_does_not_hold_up_the_others(gcs_emulator: str) -> None:
    address = urllib.parse.urlsplit(gcs_emulator)
    stalled = socket.create_connection((address.hostname or "127.0.0.1", address.port or 80))
    try:
        # Headers that promise a body, then 10 bytes of it, then nothing.
        stalled.sendall(
            b"POST /upload/storage/v1/b/" + BUCKET.encode() + b"/o?uploadType=media&name=half"
            b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"0123456789"
        )
        time.sleep(0.5)  # the server has taken the connection and is reading its body
        url = f"gs://{BUCKET}/stall-{uuid.uuid4().hex[:8]}/file"
        done = threading.Event()

        def write() -> None:
            storage.write_bytes(url, b"written while another client stalls")
            done.set()

        # In a thread: on a server that waits for the stalled body, the write never returns.
        threading.Thread(target=write, daemon=True).start()
        assert done.wait(10.0), "the write waited on the stalled client"
        assert storage.read_bytes(url) == b"written while another client stalls"
    finally:
        stalled.close()
