"""Shared fixtures of the trainer tests: a real GCS emulator, run files, storage roots.

``gcs_emulator`` starts PyPI's ``gcp-storage-emulator`` (a real HTTP server speaking the GCS
JSON API; through ``hack/gcs_emulator.py``) as a subprocess on a free port, once per session,
with one bucket. Code under test reaches it through gcsfs, as in a cluster, because
``STORAGE_EMULATOR_HOST`` is set for the session (:mod:`mlops_trainers.storage` then points
gcsfs at it with anonymous credentials) and ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``
(otherwise gcsfs asks for the bucket type over gRPC and stalls about a minute). Subprocesses
inherit both.

``storage_root`` is parametrised over a local folder and ``gs://`` on the emulator, so the same
test runs against both.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

BUCKET = "mlops-test"
EMULATOR_START_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _emulator_command() -> list[str]:
    """PyPI's emulator through hack/gcs_emulator.py (the same, with a thread per connection)."""
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        pytest.skip("gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")
    return [sys.executable, str(Path(__file__).parents[2] / "hack" / "gcs_emulator.py")]


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a running emulator with bucket ``BUCKET``; env set for gcsfs."""
    port = free_port()
    logs = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    with logs.open("wb") as out:
        process = subprocess.Popen(
            [
                *_emulator_command(),
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--in-memory",
                "--default-bucket",
                BUCKET,
                "--quiet",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + EMULATOR_START_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the GCS emulator exited {process.returncode}: {logs.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.terminate()
            raise RuntimeError(f"the GCS emulator did not answer in {EMULATOR_START_S}s")
        time.sleep(0.2)
    saved = {
        k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")
    }
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    try:
        yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(params=["local", "gcs"])
def storage_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty storage root: a local folder, or a unique prefix in the emulator's bucket."""
    if request.param == "local":
        return str(tmp_path / "storage")
    request.getfixturevalue("gcs_emulator")
    return f"gs://{BUCKET}/{uuid.uuid4().hex[:12]}"


def run_file(
    output_prefix: str,
    run_id: str,
    kind: str,
    trainer_config: dict[str, Any],
    *,
    data: str,
    epochs: int,
    checkpoint_every: int,
    name: str | None = None,
    seed: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """The dict of a run file (RunConfig) under ``output_prefix``."""
    return {
        "version": 1,
        "run_id": run_id,
        "name": name or run_id.rsplit("-g", 1)[0],
        "trainer": {"kind": kind, "config": trainer_config},
        "data": data,
        "output_prefix": output_prefix,
        "output": f"{output_prefix.rstrip('/')}/{run_id}",
        "epochs": epochs,
        "checkpoint_every": checkpoint_every,
        "seed": seed,
        **extra,
    }


def write_run_file(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=True))
    return path


def trainer_env(**extra: str) -> dict[str, str]:
    """Environment of a trainer subprocess: quiet, deterministic TensorFlow ops."""
    env = dict(os.environ)
    env.update(
        {
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TF_DETERMINISTIC_OPS": "1",
            "PYTHONUNBUFFERED": "1",
            "KERAS_BACKEND": "tensorflow",
        }
    )
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def make_run_file() -> Any:
    """:func:`run_file` as a fixture (test modules do not import conftest)."""
    return run_file


@pytest.fixture(scope="session")
def subprocess_env() -> Any:
    """:func:`trainer_env` as a fixture."""
    return trainer_env


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A file list of 64 real Fashion-MNIST images (decoding all 10,000 would dominate); a test
    module that needs more defines its own ``images``."""
    from mlops_trainers.data import list_images

    listing = tmp_path_factory.mktemp("data") / "images.txt"
    listing.write_text("\n".join(list_images("sample://fashion-mnist")[:64]) + "\n")
    return str(listing)


def start_trainer(
    config: dict[str, Any], workdir: Path, *, timeout: float, until_step: int = 3, **env: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """A trainer subprocess on ``config`` (``python -m mlops_trainers --config``, as in a pod),
    returned once it has finished ``until_step`` steps (its Argo progress file says so), with
    the file of its output; ``env`` is added to :func:`trainer_env`."""
    path = write_run_file(workdir / "run.yaml", config)
    progress = workdir / "progress"
    out = workdir / "attempt-1.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_trainers", "--config", str(path)],
            env=trainer_env(ARGO_PROGRESS_FILE=str(progress), **env),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if int(progress.read_text().split("/")[0]) >= until_step:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    assert process.poll() is None, out.read_text()
    return process, out


@pytest.fixture(scope="session")
def trainer_process() -> Any:
    """:func:`start_trainer` as a fixture."""
    return start_trainer
