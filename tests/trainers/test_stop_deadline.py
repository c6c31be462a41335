"""A stopped attempt exits 143 within GKE Spot's grace period even when a best-effort upload
hangs: a real trainer subprocess, a real SIGTERM, its output on the GCS emulator behind a proxy
that stops answering the uploads of TensorBoard's event files once the signal is on its way.

The CI of 3e83694 saw this for real: a deleted pod's trainer wrote its stop checkpoint, then sat
in the TensorBoard upload at the end of the attempt (gcsfs waiting on the emulator) until the
kubelet killed it at the end of its 15 s (exit 137, no attempt log in the bucket). Before the fix
this test's trainer never exits.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlops_trainers import storage
from mlops_trainers.contract import attempt_log
from mlops_trainers.signals import GRACE_S
from stalling_proxy import StallingProxy, stalling_proxy
from tiny_vqvae import TINY_VQVAE

pytestmark = pytest.mark.slow

TINY = {**TINY_VQVAE, "steps_per_epoch": 40, "reconstructions": 0}
START_S = 240.0  # import, data and model on a shared 2-core machine


def _tb_upload(method: str, target: str, body: bytes) -> bool:
    """An upload of an object under a ``/tb/`` folder: its name is in the query of a resumable
    upload and in the JSON part of a multipart one."""
    return method in ("POST", "PUT") and ("/tb/" in target or b"/tb/" in body)


@pytest.fixture
def proxy(gcs_emulator: str) -> Iterator[StallingProxy]:
    with stalling_proxy(gcs_emulator, _tb_upload) as server:
        yield server


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
