"""The shared trainer runtime: one run file in, checkpoints and artifacts out, preemption-safe.

``run(config)`` is the same in a pod (``python -m mlops_trainers --config URL``) and on a laptop
(``mlops run FILE``). What it does, in order:

1. Imports the trainer of ``config.trainer.kind`` (:func:`mlops_trainers.trainer.get_trainer`),
   seeds Python/NumPy/Keras from ``config.seed``, lets the trainer resolve its inputs, data and
   model.
2. Resumes: the run's own newest *complete* checkpoint wins (an earlier attempt of this run:
   weights, optimizer state, epoch, step within the epoch and the epoch's running log sums);
   else ``resume.from_url`` / ``resume.parent_run`` start this new run from another run's model
   (recorded in ``run.json``); else it starts fresh.
3. Trains step by step over :meth:`TrainData.batches` (deterministic per ``(epoch, step)``, so a
   resumed run sees exactly the batches it had not consumed), writing a checkpoint every
   ``checkpoint_every`` steps and at each epoch end, ``metrics.csv`` and TensorBoard scalars
   (``tb/``) per epoch, ``status.json`` at each checkpoint, and a progress line every few seconds.
4. On SIGTERM (a spot preemption: the kubelet sends it before killing the pod) it finishes the
   current step, writes a checkpoint and exits 143, which the workflow's retry expression treats
   as a preemption. SIGINT (Ctrl-C locally) does the same and exits 130.
5. At the end: ``model.keras``, ``run.json`` with the final metrics, exit 0.

Exit codes (:mod:`mlops_trainers.errors`): 0 done, 143 preempted (checkpoint written), 1 an
application error that may be retried (``error_retries`` attempts, counted in ``attempts.json``
under the run output, so the budget survives pod restarts), 2 never retry (bad config or data,
or the app-error budget is spent).

Environment: ``ARGO_PROGRESS_FILE`` (Argo's progress, ``"N/M"`` steps, written every step),
``MLOPS_SUMMARY_FILE`` (JSON ``{"latest_checkpoint", "metrics", "epoch", "step", "state"}`` at the
end and on preemption; the workflow returns it as an output parameter the operator reads).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import math
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from mlops_trainers import __version__, storage
from mlops_trainers.config import RunConfig
from mlops_trainers.errors import (
    EXIT_APP_ERROR,
    EXIT_FATAL,
    EXIT_OK,
    EXIT_PREEMPTED,
    ConfigError,
    DataError,
)

if TYPE_CHECKING:
    import keras

    from mlops_trainers.checkpoints import CheckpointInfo
    from mlops_trainers.trainer import Trainer

__all__ = [
    "ATTEMPTS_FILE",
    "METRICS_FILE",
    "RUN_FILE",
    "STATUS_FILE",
    "load_run_config",
    "main",
    "run",
]

log = logging.getLogger("mlops_trainers")

RUN_FILE = "run.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.csv"
ATTEMPTS_FILE = "attempts.json"
TB_DIR = "tb"
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C locally; a checkpoint was written
LOG_EVERY_S = 10.0  # seconds between progress lines


class Stopped(Exception):  # noqa: N818 - not an error: the run was asked to stop
    """A signal asked the run to stop; a checkpoint has been written."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


# === Signals ===


@dataclass
class _StopFlag:
    """Set by SIGTERM/SIGINT; the step loop checks it between steps (a step is never cut)."""

    signum: int | None = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.signum is None:
            log.warning("received signal %d: checkpointing after this step, then exiting", signum)
        self.signum = signum


def _install_handlers(flag: _StopFlag) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[signum] = signal.signal(signum, flag.handler)
        except ValueError:  # not the main thread (a test runner's worker): no handlers
            break
    return previous


def _restore_handlers(previous: Mapping[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


# === Run state ===


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

    def to_manifest(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epoch_log_sums": dict(self.sums),
            "epoch_log_count": self.count,
            "metrics": dict(self.last_logs),
        }

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> RunState:
        return cls(
            epoch=int(manifest["epoch"]),
            step_in_epoch=int(manifest["step_in_epoch"]),
            global_step=int(manifest["global_step"]),
            sums={k: float(v) for k, v in (manifest.get("epoch_log_sums") or {}).items()},
            count=int(manifest.get("epoch_log_count") or 0),
            last_logs={k: float(v) for k, v in (manifest.get("metrics") or {}).items()},
        )

    def add(self, logs: Mapping[str, float]) -> None:
        for key, value in logs.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def averages(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}


# === Files of a run ===


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_local_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class _Progress:
    """``ARGO_PROGRESS_FILE``: Argo reads ``"N/M"`` from it and shows it on the node."""

    def __init__(self, total: int) -> None:
        self.path = (
            Path(os.environ["ARGO_PROGRESS_FILE"]) if os.environ.get("ARGO_PROGRESS_FILE") else None
        )
        self.total = total

    def update(self, done: int) -> None:
        if self.path is not None:
            _write_local_atomic(self.path, f"{min(done, self.total)}/{self.total}\n")


def _write_summary(summary: Mapping[str, Any]) -> None:
    target = os.environ.get("MLOPS_SUMMARY_FILE")
    if not target:
        return
    import json

    _write_local_atomic(Path(target), json.dumps(summary, sort_keys=True, default=str) + "\n")


def _read_metrics_csv(url: str) -> list[dict[str, str]]:
    try:
        text = storage.read_text(url)
    except FileNotFoundError:
        return []
    return list(csv.DictReader(io.StringIO(text)))


def _write_metrics_csv(url: str, rows: Sequence[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(dict(row))
    storage.write_text(url, buffer.getvalue())


class _TensorBoard:
    """TensorBoard scalars written locally, copied to ``<output>/tb/`` at each epoch end.

    ``tf.summary`` cannot write through fsspec (an emulator, s3 via fsspec, ...), so event files
    go to the scratch folder and are uploaded whole; each attempt writes its own event file.
    """

    def __init__(self, scratch: Path, output: str) -> None:
        self.local = scratch / TB_DIR
        self.output = storage.join(output, TB_DIR)
        self.writer: Any = None
        try:
            import tensorflow as tf

            self.tf = tf
            self.writer = tf.summary.create_file_writer(str(self.local))
        except ImportError:  # another backend without TensorFlow: no TensorBoard
            self.tf = None

    def scalars(self, prefix: str, logs: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        tf = self.tf
        # tf.summary.scalar needs the tensorboard package; tf.summary.write with the scalars
        # plugin's metadata writes the same event without it.
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        with self.writer.as_default(step=step):
            for key, value in logs.items():
                tf.summary.write(
                    f"{prefix}/{key}", tf.constant(float(value), tf.float32), metadata=metadata
                )

    def upload(self) -> None:
        if self.writer is None:
            return
        self.writer.flush()
        for path in sorted(self.local.rglob("*")):
            if path.is_file():
                storage.put_file(
                    path, storage.join(self.output, *path.relative_to(self.local).parts)
                )

    def close(self) -> None:
        if self.writer is not None:
            self.upload()
            self.writer.close()


def _attempts(output: str) -> dict[str, Any]:
    try:
        value = storage.read_json(storage.join(output, ATTEMPTS_FILE))
    except (FileNotFoundError, ValueError):
        return {"attempts": 0, "app_errors": 0}
    return dict(value) if isinstance(value, dict) else {"attempts": 0, "app_errors": 0}


# === The run ===


class _Run:
    def __init__(self, config: RunConfig, stop: _StopFlag) -> None:
        self.config = config
        self.stop = stop
        self.scratch = Path(tempfile.mkdtemp(prefix=f"mlops-{config.run_id}-"))
        self.started = _now()
        self.started_unix = time.time()
        self.record: dict[str, Any] = {}
        self.latest: CheckpointInfo | None = None
        self.state = RunState()
        self.trainer: Trainer[Any] | None = None

    # --- provenance ---

    def _run_json(self, **update: Any) -> None:
        self.record.update(update)
        self.record["updated"] = _now()
        storage.write_json(storage.join(self.config.output, RUN_FILE), self.record)

    def _begin_record(self, attempt: int) -> None:
        previous: dict[str, Any] = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            previous = dict(storage.read_json(storage.join(self.config.output, RUN_FILE)))
        import keras

        versions = {"mlops_trainers": __version__, "keras": keras.__version__}
        versions["backend"] = keras.backend.backend()
        try:
            import tensorflow as tf

            versions["tensorflow"] = tf.__version__
        except ImportError:
            pass
        self.record = {
            "run_id": self.config.run_id,
            "name": self.config.name,
            "namespace": self.config.namespace,
            "generation": self.config.generation,
            "kind": self.config.trainer.kind,
            "config": self.config.model_dump(mode="json"),
            "package_version": __version__,
            "versions": versions,
            "python": platform.python_version(),
            "image": self.config.image,
            "host": socket.gethostname(),
            # Unix times (find_run orders runs by them), and the same as text for people.
            "first_started": previous.get("first_started") or self.started_unix,
            "started": self.started_unix,
            "first_started_at": previous.get("first_started_at") or self.started,
            "started_at": self.started,
            "ended": None,
            "state": "running",
            "attempt": attempt,
            "resumed_from": None,
            "parent": previous.get("parent"),
            "inputs": {},
            "final_metrics": None,
        }

    def _status(self, state: str, **extra: Any) -> None:
        status = {
            "state": state,
            "run_id": self.config.run_id,
            "epoch": self.state.epoch,
            "step_in_epoch": self.state.step_in_epoch,
            "global_step": self.state.global_step,
            "total_steps": getattr(self, "total_steps", None),
            "latest_checkpoint": self.latest.url if self.latest else None,
            "metrics": self.state.last_logs,
            "updated": _now(),
            **extra,
        }
        storage.write_json(storage.join(self.config.output, STATUS_FILE), status)

    def summary(self, state: str, metrics: Mapping[str, float] | None = None) -> dict[str, Any]:
        return {
            "state": state,
            "run_id": self.config.run_id,
            "latest_checkpoint": self.latest.url if self.latest else None,
            "metrics": dict(metrics if metrics is not None else self.state.last_logs),
            "epoch": self.state.epoch,
            "step": self.state.global_step,
        }

    # --- checkpoints ---

    def _checkpoint(self, model: keras.Model) -> None:
        from mlops_trainers.checkpoints import save_checkpoint

        assert self.trainer is not None
        if self.latest is not None and self.latest.step == self.state.global_step:
            return  # this very state is already saved (a signal right after a checkpoint)
        manifest = {
            **self.state.to_manifest(),
            "run_id": self.config.run_id,
            "kind": self.config.trainer.kind,
            "trainer_config": self.trainer.config.model_dump(mode="json"),
            "seed": self.config.seed,
        }
        began = time.perf_counter()
        self.latest = save_checkpoint(model, self.config.output, self.scratch, manifest)
        log.info(
            "checkpoint %s (epoch %d, step %d of the epoch) in %.1fs",
            self.latest.url,
            self.state.epoch,
            self.state.step_in_epoch,
            time.perf_counter() - began,
        )
        self._status("running")

    def _resume(self, model: keras.Model) -> bool:
        """Load this run's newest checkpoint or the configured source; False when fresh."""
        from mlops_trainers.checkpoints import (
            latest_checkpoint,
            load_checkpoint,
            resolve_checkpoint,
            resolve_model_reference,
        )

        assert self.trainer is not None
        own = latest_checkpoint(self.config.output)
        if own is not None:
            load_checkpoint(model, own, self.scratch, optimizer=True)
            self.latest = own
            self.state = RunState.from_manifest(own.manifest)
            self.record["resumed_from"] = {"checkpoint": own.url, "step": own.step}
            log.info(
                "resumed from %s: epoch %d, step %d of the epoch (global step %d)",
                own.url,
                self.state.epoch,
                self.state.step_in_epoch,
                self.state.global_step,
            )
            return True
        resume = self.config.resume
        if resume.from_url is None and resume.parent_run is None:
            return False
        if resume.from_url is not None:
            source = resolve_checkpoint(resume.from_url)
            parent: dict[str, Any] = {
                "reference": resume.from_url,
                "checkpoint": source.url,
                "run_id": source.run_id,
                "kind": source.kind,
                "step": source.step,
            }
        else:
            assert resume.parent_run is not None
            source, parent = resolve_model_reference(
                resume.parent_run,
                self.config.output_prefix,
                namespace=self.config.namespace,
                exclude=self.config.run_id,
            )
        self.trainer.init_from(model, source)
        self.record["parent"] = parent
        log.info(
            "new run started from %s (run %s, step %d)", source.url, source.run_id, source.step
        )
        return True

    # --- training ---

    def execute(self) -> int:
        import keras

        from mlops_trainers.trainer import RunContext, get_trainer

        config = self.config
        attempts = _attempts(config.output)
        attempts["attempts"] = int(attempts.get("attempts", 0)) + 1
        storage.write_json(storage.join(config.output, ATTEMPTS_FILE), attempts)
        self._begin_record(attempts["attempts"])

        trainer_class = get_trainer(config.trainer.kind)
        context = RunContext(config, self.scratch)
        trainer = trainer_class(config, context)
        self.trainer = trainer
        # One seed for Python, NumPy and the backend: weight init and any draws repeat per run.
        keras.utils.set_random_seed(config.seed)
        trainer.prepare()
        data = trainer.datasets()
        steps = data.steps_per_epoch
        if steps < 1:
            raise DataError("the data gives no training step (fewer images than a batch?)")
        self.total_steps = steps * config.epochs
        model = trainer.build_model()
        loaded = self._resume(model)
        self.record["inputs"] = trainer.inputs
        self._run_json()
        self._status("running")
        progress = _Progress(self.total_steps)
        progress.update(self.state.global_step)
        tb = _TensorBoard(self.scratch, config.output)
        try:
            if self.state.epoch < config.epochs:
                trainer.on_train_begin(model, fresh=not loaded)
                self._train(model, data, progress, tb)
            return self._finish(model, tb)
        finally:
            tb.close()

    def _train(self, model: keras.Model, data: Any, progress: _Progress, tb: _TensorBoard) -> None:
        assert self.trainer is not None
        config, state, trainer = self.config, self.state, self.trainer
        steps = data.steps_per_epoch
        metrics_url = storage.join(config.output, METRICS_FILE)
        reset = getattr(model, "reset_metrics", None)
        last_line = time.monotonic()
        window_steps, window_start = 0, time.perf_counter()
        while state.epoch < config.epochs:
            # A checkpoint taken with a larger steps_per_epoch ends its epoch now.
            state.step_in_epoch = min(steps, state.step_in_epoch)
            epoch_start = time.perf_counter()
            epoch_steps = 0
            for batch in data.batches(state.epoch, state.step_in_epoch):
                if state.step_in_epoch >= steps:
                    break
                # Per-batch logs (Keras' Mean trackers would otherwise average since the last
                # reset); the runtime averages them over the epoch itself, resumably.
                if reset is not None:
                    reset()
                logs = dict(trainer.train_step(model, batch))
                bad = [k for k, v in logs.items() if not math.isfinite(v)]
                if bad:
                    raise FloatingPointError(
                        f"non-finite {', '.join(bad)} at global step {state.global_step + 1}: "
                        f"{logs} (lower the learning rate?)"
                    )
                state.add(logs)
                state.last_logs = logs
                state.step_in_epoch += 1
                state.global_step += 1
                epoch_steps += 1
                window_steps += 1
                progress.update(state.global_step)
                tb.scalars("step", logs, state.global_step)
                now = time.monotonic()
                if now - last_line >= LOG_EVERY_S:
                    rate = window_steps / max(time.perf_counter() - window_start, 1e-9)
                    log.info(
                        "epoch %d/%d step %d/%d (%d/%d) %s  %.2f steps/s",
                        state.epoch + 1,
                        config.epochs,
                        state.step_in_epoch,
                        steps,
                        state.global_step,
                        self.total_steps,
                        _fmt(logs),
                        rate,
                    )
                    last_line = now
                    window_steps, window_start = 0, time.perf_counter()
                if state.step_in_epoch < steps and state.global_step % config.checkpoint_every == 0:
                    self._checkpoint(model)
                if self.stop.signum is not None:
                    self._checkpoint(model)
                    raise Stopped(self.stop.signum)
            if state.step_in_epoch < steps:
                raise DataError(
                    f"epoch {state.epoch + 1} gave {state.step_in_epoch} of {steps} batches"
                )
            epoch_logs = state.averages()
            elapsed = time.perf_counter() - epoch_start
            state.epoch += 1
            state.step_in_epoch = 0
            extra = trainer.on_epoch_end(state.epoch, model, epoch_logs)
            if extra:
                # Validation scores and the like join the epoch's row (metrics.csv, TensorBoard,
                # the checkpoint), so a finished run re-read later still reports them.
                epoch_logs = {**epoch_logs, **{k: float(v) for k, v in extra.items()}}
            log.info(
                "epoch %d/%d done: %s  (%.2f steps/s)",
                state.epoch,
                config.epochs,
                _fmt(epoch_logs),
                epoch_steps / max(elapsed, 1e-9),
            )
            # metrics.csv before the checkpoint: a kill in between redoes the epoch's tail and
            # replaces the row, never loses it.
            rows: list[dict[str, Any]] = [
                r for r in _read_metrics_csv(metrics_url) if int(r["epoch"]) < state.epoch
            ]
            rows.append(
                {
                    "epoch": state.epoch,
                    "global_step": state.global_step,
                    "time": _now(),
                    **{k: f"{v:.6g}" for k, v in epoch_logs.items()},
                }
            )
            _write_metrics_csv(metrics_url, rows)
            tb.scalars("epoch", epoch_logs, state.epoch)
            tb.upload()
            state.last_logs = epoch_logs
            state.sums, state.count = {}, 0
            self._checkpoint(model)
            if self.stop.signum is not None:
                raise Stopped(self.stop.signum)

    def _finish(self, model: keras.Model, tb: _TensorBoard) -> int:
        assert self.trainer is not None
        # save_final first: what it checks (e.g. the segmenter's ONNX export) can be a metric.
        model_url = self.trainer.save_final(model)
        metrics = self.trainer.final_metrics(self.state.last_logs)
        tb.upload()
        self._run_json(
            state="succeeded",
            ended=_now(),
            final_metrics=metrics,
            model=model_url,
            inputs=self.trainer.inputs,
            latest_checkpoint=self.latest.url if self.latest else None,
            global_step=self.state.global_step,
        )
        self._status("succeeded", metrics=metrics)
        _write_summary(self.summary("succeeded", metrics))
        log.info("run %s done: %s -> %s", self.config.run_id, _fmt(metrics), model_url)
        return EXIT_OK

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def _fmt(logs: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in logs.items())


def _setup_logging() -> None:
    if log.handlers or logging.getLogger().handlers:
        log.setLevel(logging.INFO)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def run(config: RunConfig) -> int:
    """Train the run described by ``config``; returns the process exit code (see the module)."""
    _setup_logging()
    stop = _StopFlag()
    previous = _install_handlers(stop)
    current = _Run(config, stop)
    try:
        return current.execute()
    except Stopped as stopped:
        code = EXIT_PREEMPTED if stopped.signum == signal.SIGTERM else EXIT_INTERRUPTED
        _safe(lambda: current._run_json(state="preempted", ended=_now()))
        _safe(lambda: current._status("preempted"))
        _write_summary(current.summary("preempted"))
        log.warning("stopped at global step %d: exit %d", current.state.global_step, code)
        return code
    except (ConfigError, DataError, ValidationError) as err:
        log.error("%s: %s (not retried)", type(err).__name__, err)
        fatal = str(err)  # `err` is unbound after the except block; the lambdas run inside it
        _safe(lambda: current._status("failed", error=fatal, retry=False))
        _safe(lambda: current._run_json(state="failed", ended=_now(), error=fatal))
        _write_summary({**current.summary("failed"), "error": fatal})
        return EXIT_FATAL
    except Exception as err:
        # An application error: retryable while this run's app-error budget lasts. The count
        # lives next to the run's output so it survives the pod.
        log.error("training failed:\n%s", traceback.format_exc())
        code = EXIT_APP_ERROR
        try:
            attempts = _attempts(config.output)
            attempts["app_errors"] = int(attempts.get("app_errors", 0)) + 1
            storage.write_json(storage.join(config.output, ATTEMPTS_FILE), attempts)
            if attempts["app_errors"] > config.error_retries:
                code = EXIT_FATAL
        except Exception:
            log.exception("could not record the app error under %s", config.output)
        message = f"{type(err).__name__}: {err}"
        _safe(lambda: current._status("failed", error=message, retry=code == EXIT_APP_ERROR))
        _safe(lambda: current._run_json(state="failed", ended=_now(), error=message))
        _write_summary({**current.summary("failed"), "error": message})
        log.error("exit %d (%s)", code, "will be retried" if code == EXIT_APP_ERROR else "final")
        return code
    finally:
        current.close()
        _restore_handlers(previous)


def _safe(action: Any) -> None:
    try:
        action()
    except Exception:
        log.exception("could not write the run's status")


def load_run_config(url: str) -> RunConfig:
    """The run file at ``url`` (YAML or JSON, any fsspec URL); ConfigError if invalid."""
    try:
        text = storage.read_text(url)
    except FileNotFoundError as err:
        raise ConfigError(f"the run file {url} does not exist") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{url} is not YAML: {err}") from err
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{url} is not a valid run file: {err}") from err


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mlops_trainers --config URL``: train the run file at URL."""
    parser = argparse.ArgumentParser(prog="python -m mlops_trainers", description=main.__doc__)
    parser.add_argument("--config", required=True, help="the run file (YAML), any fsspec URL")
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        config = load_run_config(args.config)
    except ConfigError as err:
        log.error("%s", err)
        return EXIT_FATAL
    return run(config)
