"""What a run says about itself: the files under its output URL and the ones Argo reads.

:class:`RunRecord` owns them all, written at the moments of a run's life:

* ``attempts.json``: attempts and app errors, across pods (the app-error budget survives them);
* ``run.json``: provenance (config, versions, image, host, parent/resume source, inputs, final
  metrics) and the run's state;
* ``status.json``: where training is, rewritten at each checkpoint;
* ``metrics.csv``: one row per epoch;
* ``ARGO_PROGRESS_FILE``: ``"N/M"`` steps, at most every second and at each checkpoint and the
  last step (Argo shows it on the node);
* ``MLOPS_SUMMARY_FILE``: the :class:`~mlops_trainers.contract.Summary` the operator reads back.

``begin`` → ``started`` → (``stepped`` | ``checkpointed`` | ``epoch_ended``)* → ``finished``, or
``preempted`` / ``failed`` from any point (those two never raise: they run while handling
another error).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import platform
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_trainers import __version__, storage
from mlops_trainers.config import RunConfig
from mlops_trainers.contract import (
    ATTEMPTS_FILE,
    METRICS_FILE,
    PLACEMENT_ENV,
    RUN_FILE,
    STATUS_FILE,
    SUMMARY_ENV,
    Summary,
)

if TYPE_CHECKING:
    from mlops_trainers.checkpoints import CheckpointInfo

__all__ = ["RunRecord", "RunState", "now"]

log = logging.getLogger("mlops_trainers")

PROGRESS_ENV = "ARGO_PROGRESS_FILE"
# The progress file is rewritten at most this often (and at every checkpoint and the last
# step): Argo's executor reads it every 3 s (ARGO_PROGRESS_FILE_TICK_DURATION) and patches it
# into the pod every minute, and a rewrite (a temporary file and a rename) cost about 0.6 ms a
# step here, more than the runtime's other per-step work. MLOPS_PROGRESS_EVERY_S=0: every step
# (tests and benches that read the file as the exact step a process reached).
PROGRESS_EVERY_ENV = "MLOPS_PROGRESS_EVERY_S"
PROGRESS_EVERY_S = 1.0
_clock = time.monotonic  # the progress writes' clock (a test sets it)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _progress_every() -> float:
    raw = os.environ.get(PROGRESS_EVERY_ENV, "").strip()
    if not raw:
        return PROGRESS_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise ValueError(f"{PROGRESS_EVERY_ENV}={raw!r}: seconds between progress writes, >= 0")
    return value


def _write_local_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class RunState:
    """Where training is; saved in each checkpoint's manifest."""

    epoch: int = 0  # epochs completed (the 0-based index of the current epoch)
    step_in_epoch: int = 0  # steps done in the current epoch
    global_step: int = 0
    # Running sums of the current epoch's logs, so a run resumed mid-epoch reports the same
    # epoch averages as an uninterrupted one.
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0
    last_logs: dict[str, float] = field(default_factory=dict)
    # The spike guard's doing (mlops_trainers.spike_guard): rollbacks so far, the factor they have
    # put on the learning rate, and the batches skipped ([epoch, step in epoch]) so that a resumed
    # run skips them too.
    rollbacks: int = 0
    spike_scale: float = 1.0
    skipped: list[tuple[int, int]] = field(default_factory=list)
    # The good losses the spike guard's running median is taken over: a resumed run judges its
    # next steps by the same history as an uninterrupted one (else it may call a spike where the
    # other did not, and their weights part).
    loss_history: list[float] = field(default_factory=list)
    # A plateau schedule's factor on the learning rate, and the watched metrics' best values and
    # epochs since (keys "schedule" and "early_stopping").
    plateau_scale: float = 1.0
    watch: dict[str, dict[str, float]] = field(default_factory=dict)
    stopped_early: bool = False

    @property
    def lr_scale(self) -> float:
        """What the spike guard and a plateau have multiplied the learning rate by."""
        return self.spike_scale * self.plateau_scale

    def to_manifest(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epoch_log_sums": dict(self.sums),
            "epoch_log_count": self.count,
            "metrics": dict(self.last_logs),
            "rollbacks": self.rollbacks,
            "spike_scale": self.spike_scale,
            "skipped": [list(s) for s in self.skipped],
            "loss_history": list(self.loss_history),
            "plateau_scale": self.plateau_scale,
            "watch": {k: dict(v) for k, v in self.watch.items()},
            "stopped_early": self.stopped_early,
        }

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> RunState:
        # Keys added later default to a run that never needed them (older checkpoints).
        return cls(
            epoch=int(manifest["epoch"]),
            step_in_epoch=int(manifest["step_in_epoch"]),
            global_step=int(manifest["global_step"]),
            sums={k: float(v) for k, v in (manifest.get("epoch_log_sums") or {}).items()},
            count=int(manifest.get("epoch_log_count") or 0),
            last_logs={k: float(v) for k, v in (manifest.get("metrics") or {}).items()},
            rollbacks=int(manifest.get("rollbacks") or 0),
            spike_scale=float(manifest.get("spike_scale") or 1.0),
            skipped=[(int(e), int(s)) for e, s in manifest.get("skipped") or []],
            loss_history=[float(x) for x in manifest.get("loss_history") or []],
            plateau_scale=float(manifest.get("plateau_scale") or 1.0),
            watch={
                k: {kk: float(vv) for kk, vv in v.items()}
                for k, v in (manifest.get("watch") or {}).items()
            },
            stopped_early=bool(manifest.get("stopped_early") or False),
        )

    def add(self, logs: Mapping[str, float]) -> None:
        for key, value in logs.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def averages(self) -> dict[str, float]:
        # In name order: a run resumed mid-epoch (its sums read back from a manifest) writes the
        # same metrics.csv columns as an uninterrupted one.
        return {k: self.sums[k] / max(self.count, 1) for k in sorted(self.sums)}


def _versions() -> dict[str, str]:
    import keras

    versions = {"mlops_trainers": __version__, "keras": keras.__version__}
    versions["backend"] = keras.backend.backend()
    try:
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    except ImportError:
        pass
    return versions


class RunRecord:
    """The run's own files (see the module docstring) and the state they report."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.state = RunState()
        self.latest: CheckpointInfo | None = None
        self.total_steps: int | None = None
        self.attempt = 0
        self.record: dict[str, Any] = {}
        self.started_at = now()
        self.started_unix = time.time()
        progress = os.environ.get(PROGRESS_ENV)
        self.progress_path = Path(progress) if progress else None
        self.progress_every = _progress_every()
        self._progress_at = -math.inf  # when the file was last written (_clock)

    def url(self, name: str) -> str:
        return storage.join(self.config.output, name)

    # --- attempts.json ---

    def _attempts(self) -> dict[str, Any]:
        try:
            value = storage.read_json(self.url(ATTEMPTS_FILE))
        except (FileNotFoundError, ValueError):
            return {"attempts": 0, "app_errors": 0}
        return dict(value) if isinstance(value, dict) else {"attempts": 0, "app_errors": 0}

    def begin(self) -> int:
        """Count this attempt (attempts.json) and start its provenance; returns its number."""
        attempts = self._attempts()
        attempts["attempts"] = int(attempts.get("attempts", 0)) + 1
        storage.write_json(self.url(ATTEMPTS_FILE), attempts)
        self.attempt = int(attempts["attempts"])
        previous: dict[str, Any] = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            previous = dict(storage.read_json(self.url(RUN_FILE)))
        config = self.config
        self.record = {
            "run_id": config.run_id,
            "name": config.name,
            "namespace": config.namespace,
            "generation": config.generation,
            "kind": config.trainer.kind,
            "config": config.model_dump(mode="json"),
            "package_version": __version__,
            "versions": _versions(),
            "python": platform.python_version(),
            "image": config.image,
            "host": socket.gethostname(),
            # Where each attempt trained: a run that fell back from spot to on-demand says so.
            "placement": os.environ.get(PLACEMENT_ENV) or "local",
            "placements": [
                *(previous.get("placements") or []),
                {"attempt": self.attempt, "placement": os.environ.get(PLACEMENT_ENV) or "local"},
            ],
            # Unix times (find_run orders runs by them), and the same as text for people.
            "first_started": previous.get("first_started") or self.started_unix,
            "started": self.started_unix,
            "first_started_at": previous.get("first_started_at") or self.started_at,
            "started_at": self.started_at,
            "ended": None,
            "state": "running",
            "attempt": self.attempt,
            "resumed_from": None,
            "parent": previous.get("parent"),
            "inputs": {},
            "final_metrics": None,
        }
        return self.attempt

    def app_error(self) -> int:
        """Count an application error in attempts.json; returns how many there have been."""
        attempts = self._attempts()
        attempts["app_errors"] = int(attempts.get("app_errors", 0)) + 1
        storage.write_json(self.url(ATTEMPTS_FILE), attempts)
        return int(attempts["app_errors"])

    # --- the life of the run ---

    def resumed(self, checkpoint: CheckpointInfo) -> None:
        """This run's own checkpoint was loaded (an earlier attempt)."""
        self.latest = checkpoint
        self.state = RunState.from_manifest(checkpoint.manifest)
        self.record["resumed_from"] = {"checkpoint": checkpoint.url, "step": checkpoint.step}

    def started_from(self, parent: Mapping[str, Any]) -> None:
        """This new run starts from another run's model (``resume``): its provenance."""
        self.record["parent"] = dict(parent)

    def started(self, *, total_steps: int, inputs: Mapping[str, Any]) -> None:
        self.total_steps = total_steps
        self._run_json(inputs=dict(inputs))
        self._status("running")
        self.stepped()

    def stepped(self) -> None:
        """A step is done: the progress file says so, at most every ``progress_every`` seconds
        (the first and the last step always)."""
        if self.progress_path is None or self.total_steps is None:
            return
        if (
            self.state.global_step < self.total_steps
            and _clock() - self._progress_at < self.progress_every
        ):
            return
        self.write_progress()

    def write_progress(self) -> None:
        """Rewrite the progress file with the step reached (atomically: Argo may read it)."""
        if self.progress_path is None or self.total_steps is None:
            return
        done = min(self.state.global_step, self.total_steps)
        _write_local_atomic(self.progress_path, f"{done}/{self.total_steps}\n")
        self._progress_at = _clock()

    def checkpointed(self, checkpoint: CheckpointInfo) -> None:
        self.latest = checkpoint
        self._status("running")
        # The file never says less than the newest checkpoint (a stop checkpoints first).
        self.write_progress()

    def epoch_ended(self, logs: Mapping[str, float]) -> None:
        """The epoch's row of metrics.csv (rows of later epochs, from a lost attempt, dropped)."""
        url = self.url(METRICS_FILE)
        rows: list[dict[str, Any]] = [
            r for r in _read_csv(url) if int(r["epoch"]) < self.state.epoch
        ]
        rows.append(
            {
                "epoch": self.state.epoch,
                "global_step": self.state.global_step,
                "time": now(),
                **{k: f"{v:.6g}" for k, v in logs.items()},
            }
        )
        _write_csv(url, rows)

    def metric_rows(self) -> list[dict[str, str]]:
        """The rows of metrics.csv so far."""
        return _read_csv(self.url(METRICS_FILE))

    def finished(
        self, metrics: Mapping[str, float], *, model_url: str, inputs: Mapping[str, Any]
    ) -> None:
        self._run_json(
            state="succeeded",
            ended=now(),
            final_metrics=dict(metrics),
            model=model_url,
            inputs=dict(inputs),
            latest_checkpoint=self.latest.url if self.latest else None,
            global_step=self.state.global_step,
        )
        self._status("succeeded", metrics=dict(metrics))
        self._summary("succeeded", metrics)

    def preempted(self) -> None:
        """Stopped by a signal after a checkpoint; never raises."""
        self._safely(lambda: self._run_json(state="preempted", ended=now()))
        self._safely(lambda: self._status("preempted"))
        self._safely(lambda: self._summary("preempted"))

    def failed(self, error: str, *, retry: bool) -> None:
        """Failed with ``error``; ``retry`` when the workflow may try again. Never raises."""
        self._safely(lambda: self._status("failed", error=error, retry=retry))
        self._safely(lambda: self._run_json(state="failed", ended=now(), error=error))
        self._safely(lambda: self._summary("failed", error=error))

    # --- the files ---

    def _run_json(self, **update: Any) -> None:
        self.record.update(update)
        self.record["updated"] = now()
        storage.write_json(self.url(RUN_FILE), self.record)

    def _status(self, state: str, **extra: Any) -> None:
        status = {
            "state": state,
            "run_id": self.config.run_id,
            "epoch": self.state.epoch,
            "step_in_epoch": self.state.step_in_epoch,
            "global_step": self.state.global_step,
            "total_steps": self.total_steps,
            "latest_checkpoint": self.latest.url if self.latest else None,
            "metrics": self.state.last_logs,
            "rollbacks": self.state.rollbacks,
            "updated": now(),
            **extra,
        }
        storage.write_json(self.url(STATUS_FILE), status)

    def summary(
        self, state: str, metrics: Mapping[str, float] | None = None, error: str | None = None
    ) -> Summary:
        values = dict(metrics if metrics is not None else self.state.last_logs)
        # The spike guard's rollbacks are always reported (status.metrics.rollbacks), also
        # when the run failed for having too many of them.
        values.setdefault("rollbacks", float(self.state.rollbacks))
        return Summary.model_validate(
            {
                "state": state,
                "run_id": self.config.run_id,
                "latest_checkpoint": self.latest.url if self.latest else None,
                "metrics": values,
                "epoch": self.state.epoch,
                "step": self.state.global_step,
                "error": error,
                "attempt": self.attempt,
                "total_steps": self.total_steps or 0,
            }
        )

    def _summary(
        self, state: str, metrics: Mapping[str, float] | None = None, error: str | None = None
    ) -> None:
        target = os.environ.get(SUMMARY_ENV)
        if target:
            text = self.summary(state, metrics, error).to_json()
            _write_local_atomic(Path(target), text + "\n")

    @staticmethod
    def _safely(action: Any) -> None:
        try:
            action()
        except Exception:
            log.exception("could not write the run's status")


def _read_csv(url: str) -> list[dict[str, str]]:
    try:
        text = storage.read_text(url)
    except FileNotFoundError:
        return []
    return list(csv.DictReader(io.StringIO(text)))


def _write_csv(url: str, rows: Sequence[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(dict(row))
    storage.write_text(url, buffer.getvalue())
