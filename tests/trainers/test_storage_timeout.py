"""A GCS request the server never answers is cut off and retried, not waited on for ever: gcsfs
on the GCS emulator behind a proxy that withholds its answer to the first request for one object.

Before ``storage.request_timeout`` gcsfs passed no timeout at all, so a write or read that met a
stalled connection during training held the trainer (and its GPU) until someone noticed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from conftest import BUCKET
from mlops_trainers import storage
from stalling_proxy import stalling_proxy

READ_TIMEOUT_S = 2.0
WAIT_S = 30.0  # far beyond a timeout and gcsfs' first retry (1-2 s), far below "for ever"


def _first(method: str, name: str) -> Callable[[str, str, bytes], bool]:
    """Withhold the answer to the first ``method`` request that names object ``name``."""
    seen: list[str] = []

    def hold(command: str, target: str, body: bytes) -> bool:
        if command != method or (name not in target and name.encode() not in body):
            return False
        seen.append(target)
        return len(seen) == 1

    return hold


def _within(seconds: float, call: Callable[[], object]) -> tuple[bool, float, list[BaseException]]:
    """Run ``call`` in a thread; (finished within ``seconds``, seconds taken, its errors)."""
    errors: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            done.set()

    start = time.monotonic()
    threading.Thread(target=run, daemon=True).start()
    finished = done.wait(seconds)
    return finished, time.monotonic() - start, errors


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_request_the_server_never_answers_is_retried_not_waited_on(
    gcs_emulator: str, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    monkeypatch.setenv("MLOPS_STORAGE_READ_TIMEOUT_S", str(READ_TIMEOUT_S))
    name = f"timeout-{uuid.uuid4().hex[:12]}/model.weights.h5"
    payload = (
        bytes(range(256)) * 1024
    )  # 256 KiB: aiohttp warns (an error here) at 1 MiB in one body
    with stalling_proxy(gcs_emulator, _first(method, name)) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        url = f"gs://{BUCKET}/{name}"
        read: list[bytes] = []

        def call() -> None:
            if method == "POST":
                storage.write_bytes(url, payload)
            else:
                read.append(storage.read_bytes(url))

        if method == "GET":
            storage.write_bytes(url, payload)
        proxy.stalling.set()
        finished, took, errors = _within(WAIT_S, call)
        assert finished, f"the {method} waited on the silent server for {WAIT_S:.0f} s"
        assert not errors, errors
        assert len(proxy.held) == 1, proxy.held  # the test did test a stalled request
        print(f"{method} of 256 KiB done {took:.1f} s after its first request met a silent server")
        assert storage.read_bytes(url) == payload
        assert method == "POST" or read == [payload]
