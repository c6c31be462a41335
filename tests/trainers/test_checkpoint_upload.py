"""A checkpoint's upload does not hold training: a real trainer subprocess on the GCS emulator
behind a proxy that withholds its answer to the upload of the first checkpoint's weights.

Before the upload moved beside the steps, a checkpoint was written, uploaded, given its manifest
and pruned between two steps: a slow or stalled bucket idled the trainer (and its GPU) for as
long as the upload took. Now the weights are written between two steps and the rest runs on a
thread; at most one upload is under way, and a stop waits for it before its own checkpoint.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlops_trainers import storage
from mlops_trainers.checkpoints import checkpoint_name, list_checkpoints, read_checkpoint
from mlops_trainers.contract import attempt_log
from mlops_trainers.signals import GRACE_S
from stalling_proxy import StallingProxy, stalling_proxy
from tiny_vqvae import TINY_VQVAE

pytestmark = pytest.mark.slow

EVERY = 5  # checkpoint_every
TINY = {**TINY_VQVAE, "steps_per_epoch": 40, "reconstructions": 0}
START_S = 240.0  # import, data and model on a shared 2-core machine
STEPS_S = 60.0  # a few tiny steps, with room for a busy machine
HELD_S = 3.0  # how long a stopping trainer is kept waiting on the held upload


def _first_weights_upload(step: int) -> Callable[[str, str, bytes], bool]:
    """Withhold the answer to the first upload of checkpoint ``step``'s weights (its name is in
    the query of a resumable upload and in the JSON part of a multipart one); its retry passes."""
    name = f"{checkpoint_name(step)}/model.weights.h5"
    seen: list[str] = []

    def hold(method: str, target: str, body: bytes) -> bool:
        if method not in ("POST", "PUT") or (name not in target and name.encode() not in body):
            return False
        seen.append(target)
        return len(seen) == 1

    return hold


def _progress(workdir: Path) -> int:
    """Steps done, from the trainer's Argo progress file (rewritten after every step here)."""
    try:
        return int((workdir / "progress").read_text().split("/")[0])
    except (FileNotFoundError, ValueError):
        return 0


def _wait_for(what: str, ready: Callable[[], bool], seconds: float, out: Path) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds:.0f} s:\n{out.read_text()[-4000:]}")
        time.sleep(0.1)


def _config(make_run_file: Any, images: str, name: str) -> dict[str, Any]:
    root = f"gs://mlops-test/upload-{time.time_ns()}"
    config: dict[str, Any] = make_run_file(
        root, f"{name}-g1-0123abcd", "vqvae", TINY, data=images, epochs=1, checkpoint_every=EVERY
    )
    return config


def _start(
    proxy: StallingProxy, config: dict[str, Any], workdir: Path, trainer_process: Any
) -> tuple[subprocess.Popen[bytes], Path]:
    """The trainer on ``config`` behind ``proxy``, once its first checkpoint's upload is held."""
    proxy.stalling.set()
    process, out = trainer_process(
        config,
        workdir,
        timeout=START_S,
        until_step=1,
        STORAGE_EMULATOR_HOST=proxy.url,
        MLOPS_PROGRESS_EVERY_S="0",  # every step
        MLOPS_STORAGE_READ_TIMEOUT_S="600",  # the client waits until the test releases it
    )
    _wait_for("the first checkpoint's upload", lambda: bool(proxy.held), STEPS_S, out)
    return process, out


def _finish(process: subprocess.Popen[bytes], out: Path, seconds: float) -> int:
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit within {seconds:.0f} s:\n{out.read_text()[-4000:]}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_training_goes_on_while_a_checkpoint_uploads(
    gcs_emulator: str, tmp_path: Path, images: str, make_run_file: Any, trainer_process: Any
) -> None:
    config = _config(make_run_file, images, "uploading")
    output = config["output"]
    with stalling_proxy(gcs_emulator, _first_weights_upload(EVERY)) as proxy:
        process, out = _start(proxy, config, tmp_path, trainer_process)
        try:
            # The held upload is still unanswered: the steps after the checkpoint go on.
            _wait_for(
                f"step {2 * EVERY - 1} while step {EVERY}'s upload is held",
                lambda: _progress(tmp_path) >= 2 * EVERY - 1,
                STEPS_S,
                out,
            )
            first = storage.join(output, "checkpoints", checkpoint_name(EVERY))
            assert read_checkpoint(first) is None, "a checkpoint complete before its upload ended"
            status_url = storage.join(output, "status.json")
            status = storage.read_json(status_url) if storage.exists(status_url) else {}
            assert not status.get("latest_checkpoint"), status
            # One upload at a time: the next checkpoint (step 10) waits for this one.
            time.sleep(3.0)
            assert _progress(tmp_path) <= 2 * EVERY, out.read_text()[-4000:]
            assert len(proxy.held) == 1, proxy.held
        finally:
            proxy.released.set()  # the held request's connection closes; gcsfs sends it again
        code = _finish(process, out, START_S)
    text = out.read_text()
    assert code == 0, text[-4000:]
    steps = [c.step for c in list_checkpoints(output)]
    assert steps[-1] == TINY["steps_per_epoch"], steps
    # The held upload's checkpoint was completed (then pruned as older than the newest 3).
    assert re.search(rf"checkpoint \S+/{checkpoint_name(EVERY)} ", text), text[-4000:]
    status = storage.read_json(storage.join(output, "status.json"))
    assert status["latest_checkpoint"].endswith(checkpoint_name(steps[-1])), status


def test_a_stop_waits_for_the_upload_under_way_then_checkpoints(
    gcs_emulator: str, tmp_path: Path, images: str, make_run_file: Any, trainer_process: Any
) -> None:
    config = _config(make_run_file, images, "stopping")
    output = config["output"]
    with stalling_proxy(gcs_emulator, _first_weights_upload(EVERY)) as proxy:
        process, out = _start(proxy, config, tmp_path, trainer_process)
        try:
            _wait_for(
                f"step {EVERY + 2} while step {EVERY}'s upload is held",
                lambda: _progress(tmp_path) >= EVERY + 2,
                STEPS_S,
                out,
            )
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            # The stop waits for the upload under way: no exit while it is held.
            time.sleep(HELD_S)
            assert process.poll() is None, out.read_text()[-4000:]
        finally:
            proxy.released.set()  # the held request's connection closes; gcsfs sends it again
        code = _finish(process, out, GRACE_S + 30)
        took = time.monotonic() - signalled
    text = out.read_text()
    print(f"exit {code} {took:.1f} s after SIGTERM ({HELD_S:.0f} s of it held); {proxy.held}")
    assert code == 143, text[-4000:]
    assert took < GRACE_S, f"{took:.1f} s:\n{text[-4000:]}"
    lines = storage.read_text(storage.join(output, attempt_log(1))).splitlines()
    stopped = re.search(r"stopped at global step (\d+): exit 143", lines[-1])
    assert stopped, lines[-5:]
    at = int(stopped.group(1))
    # Training went on to the next checkpoint at most (that one waits for the held upload).
    assert EVERY < at <= 2 * EVERY, at
    # Both whole: the one whose upload was held, then the stop's own.
    assert [c.step for c in list_checkpoints(output)] == [EVERY, at]
    status = storage.read_json(storage.join(output, "status.json"))
    assert status["latest_checkpoint"].endswith(checkpoint_name(at)), status
