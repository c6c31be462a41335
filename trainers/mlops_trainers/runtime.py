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

Exit codes (:mod:`mlops_trainers.contract`): 0 done, 143 preempted (checkpoint written), 1 an
application error that may be retried (``error_retries`` attempts, counted in ``attempts.json``
under the run output, so the budget survives pod restarts), 2 never retry (bad config or data,
or the app-error budget is spent).

The parts: :class:`~mlops_trainers.run_record.RunRecord` writes the run's own files (run.json,
status.json, attempts.json, metrics.csv, Argo's progress and the summary),
:class:`~mlops_trainers.tensorboard.TensorBoardWriter` the TensorBoard scalars,
:class:`~mlops_trainers.run_log.AttemptLog` this attempt's log (``logs/attempt-<N>.log``),
:mod:`mlops_trainers.signals` turns SIGTERM/SIGINT into a stop between steps. This module is the
order of things and the step loop.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from mlops_trainers import distribute, optim, precision, storage
from mlops_trainers.config import RunConfig
from mlops_trainers.contract import (
    EXIT_APP_ERROR,
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PREEMPTED,
    METRICS_PLOT,
)
from mlops_trainers.errors import ConfigError, DataError, TrainingDivergedError
from mlops_trainers.run_log import FORMAT, AttemptLog
from mlops_trainers.run_record import RunRecord, RunState
from mlops_trainers.signals import StopFlag, Stopped, stop_on_signals, within
from mlops_trainers.spike_guard import Snapshot, SpikeDetector
from mlops_trainers.tensorboard import TensorBoardWriter

if TYPE_CHECKING:
    import keras

    from mlops_trainers.trainer import TrainData, Trainer

__all__ = ["describe_devices", "load_run_config", "main", "run"]

log = logging.getLogger("mlops_trainers")

LOG_EVERY_S = 10.0  # seconds between progress lines
# After a stop's checkpoint, the best-effort work in order: TensorBoard's last events, the run's
# status, the attempt's log. Each may take what is left of the grace period (signals.GRACE_S)
# but these seconds, kept for what follows it (the last: Python's and TensorFlow's exit).
KEEP_AFTER_TENSORBOARD_S = 5.0
KEEP_AFTER_STATUS_S = 3.0
KEEP_AFTER_LOG_S = 1.5
# A log record's attribute marking a periodic progress line (hidden on a terminal with a bar).
PROGRESS_LINE = "mlops_progress_line"


class _RolledBack(Exception):  # noqa: N818 - control flow: restart the epoch's batches
    """The spike guard restored a snapshot: iterate the epoch's batches again from there."""


class _Run:
    """One attempt of a run: the order of things, the step loop, checkpoints."""

    def __init__(
        self,
        config: RunConfig,
        stop: StopFlag,
        record: RunRecord,
        scratch: Path,
        *,
        progress: bool = False,
    ) -> None:
        self.config = config
        self.stop = stop
        self.record = record
        self.scratch = scratch
        self.progress = progress
        # The last progress line: when, and at which global step (for the rate since).
        self.line_at = time.monotonic()
        self.line_step = 0
        self.detector: SpikeDetector | None = None
        self.snapshot: Snapshot | None = None
        self.tb: TensorBoardWriter | None = None
        self.bar: Any = None
        self.total_steps = 0
        self.stepped = False  # whether this attempt has trained a step
        self.accel = precision.Acceleration("float32", False, "not resolved yet")

    @property
    def state(self) -> RunState:
        return self.record.state

    def execute(self, trainer: Trainer[Any]) -> int:
        gpus = precision.visible_gpus()  # looked up once: the log and "auto" see the same
        # Several GPUs: data-parallel under a MirroredStrategy, whose scope covers the model's
        # whole life (built, loaded, trained, saved). One device: no strategy, no scope.
        strategy = distribute.strategy_for(gpus)
        replicas = 1 if strategy is None else int(strategy.num_replicas_in_sync)
        accel = self.accel = precision.resolve(
            trainer.config.precision, trainer.config.jit_compile, gpus, replicas=replicas
        )
        log.info("devices: %s; %s", describe_devices(gpus, replicas=replicas), accel.describe())
        if strategy is None:
            return self._execute(trainer)
        with strategy.scope():
            return self._execute(trainer)

    def _execute(self, trainer: Trainer[Any]) -> int:
        import keras

        config, accel = self.config, self.accel
        # One seed for Python, NumPy and the backend: weight init and any draws repeat per run.
        keras.utils.set_random_seed(config.seed)
        # Where the run starts is decided first, so a resume source of the wrong kind fails
        # before the data is prepared or a model is built (exit 2, never retried).
        start = self._find_start(trainer)
        trainer.prepare()
        data = trainer.datasets()
        if data.steps_per_epoch < 1:
            raise DataError("the data gives no training step (fewer images than a batch?)")
        began = time.perf_counter()
        with precision.dtype_policy(accel.policy):
            model = trainer.build_model()
        precision.apply_jit(model, accel.jit_compile)
        optim.configure(model.optimizer, trainer.config)
        # Where a (re)start's time goes: bench/bench_recovery.py reads these lines.
        log.info("model built in %.2fs", time.perf_counter() - began)
        loaded = self._load_start(trainer, model, start)
        self.total_steps = data.steps_per_epoch * config.epochs
        self.record.started(total_steps=self.total_steps, inputs=trainer.inputs)
        tb = self.tb = TensorBoardWriter(self.scratch, config.output)
        trainer.context.on_image = lambda tag, image: tb.image(tag, image, self.state.epoch)
        tb.hparams(
            {
                "kind": config.trainer.kind,
                **trainer.config.model_dump(mode="json"),
                "epochs": config.epochs,
                "seed": config.seed,
            },
            trial=config.run_id,
        )
        guard = trainer.config.spike_guard
        if guard.enabled:
            # The history saved with the checkpoint this run resumed from (empty when fresh).
            self.detector = SpikeDetector(guard, deque(self.state.loss_history))
        try:
            if self._training_left():
                trainer.on_train_begin(model, fresh=not loaded)
                self.line_at, self.line_step = time.monotonic(), self.state.global_step
                self._snapshot(model)
                while self._training_left():
                    self._epoch(trainer, model, data, tb)
            self._restore_best(trainer, model)
            # save_final first: what it checks (e.g. the segmenter's ONNX export) can be a metric.
            model_url = trainer.save_final(model)
            metrics = trainer.final_metrics(self.state.last_logs)
            metrics["rollbacks"] = float(self.state.rollbacks)
            self._write_curves()
            tb.upload()
            self.record.finished(metrics, model_url=model_url, inputs=trainer.inputs)
            log.info("run %s done: %s -> %s", config.run_id, _fmt(metrics), model_url)
            return EXIT_OK
        finally:
            # After a stop's checkpoint, TensorBoard's last events are best effort: keep the
            # grace period's end for the run's status, the attempt's log and the exit.
            within(self.stop.left(KEEP_AFTER_TENSORBOARD_S), tb.close, "the TensorBoard upload")

    def _training_left(self) -> bool:
        return self.state.epoch < self.config.epochs and not self.state.stopped_early

    # --- checkpoints ---

    def _checkpoint(self, trainer: Trainer[Any], model: keras.Model) -> None:
        from mlops_trainers.checkpoints import save_checkpoint

        latest = self.record.latest
        if (
            latest is not None
            and latest.step == self.state.global_step
            and int(latest.manifest.get("rollbacks") or 0) == self.state.rollbacks
        ):
            return  # this very state is already saved (a signal right after a checkpoint)
        if self.detector is not None:
            self.state.loss_history = list(self.detector.history)
        manifest = {
            **self.state.to_manifest(),
            "run_id": self.config.run_id,
            "kind": self.config.trainer.kind,
            "trainer_config": trainer.config.model_dump(mode="json"),
            "seed": self.config.seed,
            # What "auto" resolved to: the optimizer state's layout depends on it.
            "precision": self.accel.policy,
        }
        began = time.perf_counter()
        checkpoint = save_checkpoint(model, self.config.output, self.scratch, manifest)
        log.info(
            "checkpoint %s (epoch %d, step %d of the epoch) in %.1fs",
            checkpoint.url,
            self.state.epoch,
            self.state.step_in_epoch,
            time.perf_counter() - began,
        )
        self.record.checkpointed(checkpoint)
        self._snapshot(model)

    def _find_start(self, trainer: Trainer[Any]) -> tuple[str, Any, dict[str, Any]] | None:
        """This run's newest checkpoint (``own``), or the configured resume source checked for
        kind (``source``), or None when the run starts fresh. Reads manifests only."""
        from mlops_trainers.checkpoints import (
            latest_checkpoint,
            resolve_checkpoint,
            resolve_model_reference,
        )

        own = latest_checkpoint(self.config.output)
        if own is not None:
            return "own", own, {}
        resume = self.config.resume
        if resume.from_url is not None:
            source = resolve_checkpoint(resume.from_url)
            parent: dict[str, Any] = {
                "reference": resume.from_url,
                "checkpoint": source.url,
                "run_id": source.run_id,
                "kind": source.kind,
                "step": source.step,
            }
        elif resume.parent_run is not None:
            source, parent = resolve_model_reference(
                resume.parent_run,
                self.config.output_prefix,
                namespace=self.config.namespace,
                exclude=self.config.run_id,
            )
        else:
            return None
        trainer.check_source(source)
        return "source", source, parent

    def _load_start(
        self,
        trainer: Trainer[Any],
        model: keras.Model,
        start: tuple[str, Any, dict[str, Any]] | None,
    ) -> bool:
        """Load what :meth:`_find_start` found; False when the run starts fresh."""
        from mlops_trainers.checkpoints import load_checkpoint

        if start is None:
            return False
        how, checkpoint, parent = start
        self._check_precision(checkpoint)
        if how == "own":
            load_checkpoint(model, checkpoint, self.scratch, optimizer=True)
            self.record.resumed(checkpoint)
            log.info(
                "resumed from %s: epoch %d, step %d of the epoch (global step %d)",
                checkpoint.url,
                self.state.epoch,
                self.state.step_in_epoch,
                self.state.global_step,
            )
            return True
        trainer.init_from(model, checkpoint)
        self.record.started_from(parent)
        log.info(
            "new run started from %s (run %s, step %d)",
            checkpoint.url,
            checkpoint.run_id,
            checkpoint.step,
        )
        return True

    def _check_precision(self, checkpoint: Any) -> None:
        """Refuse a checkpoint whose optimizer state has another layout than this attempt's:
        a loss-scaled one (mixed_float16) against one that is not. Weights are float32 under
        every policy, so any other change of precision resumes as is."""
        saved = str(checkpoint.manifest.get("precision") or "float32")
        if precision.loss_scaled(saved) != precision.loss_scaled(self.accel.policy):
            raise ConfigError(
                f"checkpoint {checkpoint.url} was trained with precision {saved}, this attempt "
                f"resolves trainer.config.precision={self.config.trainer.config.precision!r} "
                f"to {self.accel.policy} ({self.accel.why}): their optimizer states differ "
                f"(loss scaling); set trainer.config.precision: {saved} to resume it"
            )

    # --- training ---

    def _epoch(
        self, trainer: Trainer[Any], model: keras.Model, data: TrainData, tb: TensorBoardWriter
    ) -> None:
        """The rest of the current epoch: steps, then its metrics, artifacts and checkpoint."""
        config, steps = self.config, data.steps_per_epoch
        # A checkpoint taken with a larger steps_per_epoch ends its epoch now.
        self.state.step_in_epoch = min(steps, self.state.step_in_epoch)
        began, done = time.perf_counter(), 0
        if self.progress:
            import keras

            print(f"Epoch {self.state.epoch + 1}/{config.epochs}", flush=True)
            self.bar = keras.utils.Progbar(steps, stateful_metrics=["lr", "rollbacks"])
            self.bar.update(self.state.step_in_epoch)
        while True:
            try:
                done += self._steps(trainer, model, data, tb, steps)
                break
            except _RolledBack:
                continue  # the snapshot restored an earlier step of this epoch: replay from it
        state = self.state
        if state.step_in_epoch < steps:
            raise DataError(
                f"epoch {state.epoch + 1} gave {state.step_in_epoch} of {steps} batches"
            )
        epoch_logs = state.averages()
        elapsed = time.perf_counter() - began
        state.epoch += 1
        state.step_in_epoch = 0
        extra = trainer.on_epoch_end(state.epoch, model, epoch_logs)
        if extra:
            # Validation scores and the like join the epoch's row (metrics.csv, TensorBoard, the
            # checkpoint), so a finished run re-read later still reports them.
            epoch_logs = {**epoch_logs, **{k: float(v) for k, v in extra.items()}}
        epoch_logs["rollbacks"] = float(state.rollbacks)
        log.info(
            "epoch %d/%d done: %s  (%.2f steps/s)",
            state.epoch,
            config.epochs,
            _fmt(epoch_logs),
            done / max(elapsed, 1e-9),
        )
        improved = self._watch(trainer, epoch_logs)
        # metrics.csv before the checkpoint: a kill in between redoes the epoch's tail and
        # replaces the row, never loses it.
        self.record.epoch_ended(epoch_logs)
        self._write_curves()
        tb.scalars("epoch", epoch_logs, state.epoch)
        tb.upload()
        state.last_logs = epoch_logs
        state.sums, state.count = {}, 0
        if improved:
            self._save_best(trainer, model, epoch_logs)
        self._checkpoint(trainer, model)
        if self.stop.signum is not None:
            raise Stopped(self.stop.signum)

    def _steps(
        self,
        trainer: Trainer[Any],
        model: keras.Model,
        data: TrainData,
        tb: TensorBoardWriter,
        steps: int,
    ) -> int:
        """Train the epoch's remaining batches; returns how many were trained."""
        config, state = self.config, self.state
        done = 0
        skipped = set(state.skipped)
        for batch in data.batches(state.epoch, state.step_in_epoch):
            if state.step_in_epoch >= steps:
                break
            if (state.epoch, state.step_in_epoch) in skipped:
                # A batch that made a spike: its slot passes untrained (also after a resume).
                log.info(
                    "skipping batch %d of epoch %d (it made a loss spike)",
                    state.step_in_epoch + 1,
                    state.epoch + 1,
                )
                state.step_in_epoch += 1
                state.global_step += 1
                self.record.stepped()
            else:
                began = time.perf_counter()
                logs = self._step(trainer, model, batch)
                if not self.stepped:
                    self.stepped = True
                    log.info("first step in %.2fs (tracing included)", time.perf_counter() - began)
                done += 1
                tb.scalars("step", logs, state.global_step)
                tb.maybe_upload()
                self._progress_line(logs, steps)
                if self.bar is not None:
                    self.bar.update(state.step_in_epoch, values=list(logs.items()))
            if state.step_in_epoch < steps and state.global_step % config.checkpoint_every == 0:
                self._checkpoint(trainer, model)
            if self.stop.signum is not None:
                self._checkpoint(trainer, model)
                raise Stopped(self.stop.signum)
        return done

    def _step(self, trainer: Trainer[Any], model: keras.Model, batch: Any) -> dict[str, float]:
        state = self.state
        lr = optim.learning_rate(
            trainer.config, state.global_step, self.total_steps, state.epoch, state.lr_scale
        )
        # The step's own logs (its metrics reset first: the runtime averages them over the
        # epoch itself, resumably) and grad_norm, from one graph call (train_on_batch).
        logs = dict(trainer.train_step(model, batch, lr))
        logs["lr"] = lr
        bad = [k for k, v in logs.items() if not math.isfinite(v)]
        if self.detector is not None:
            reason = self.detector.spike(logs.get("loss", 0.0))
            if reason is None and bad:
                reason = f"non-finite {', '.join(bad)}"
            if reason is not None:
                self._rollback(trainer, model, reason)
        elif bad:
            raise FloatingPointError(
                f"non-finite {', '.join(bad)} at global step {state.global_step + 1}: "
                f"{logs} (lower the learning rate?)"
            )
        state.add(logs)
        state.last_logs = logs
        state.step_in_epoch += 1
        state.global_step += 1
        self.record.stepped()
        if state.global_step % trainer.config.spike_guard.snapshot_every == 0:
            self._snapshot(model)
        return logs

    # --- the spike guard ---

    def _snapshot(self, model: keras.Model) -> None:
        if self.detector is not None:
            self.snapshot = Snapshot.take(model, self.state.to_manifest(), self.detector.history)

    def _rollback(self, trainer: Trainer[Any], model: keras.Model, reason: str) -> None:
        """Restore the last snapshot, lower the learning rate, skip this batch: or fail."""
        guard = trainer.config.spike_guard
        state = self.state
        where = (
            f"epoch {state.epoch + 1}, batch {state.step_in_epoch + 1} "
            f"(global step {state.global_step + 1})"
        )
        lr = trainer.config.learning_rate * state.lr_scale
        if state.rollbacks >= guard.max_rollbacks or self.snapshot is None:
            raise TrainingDivergedError(
                f"loss spike at {where}: {reason}; the spike guard has already rolled back "
                f"{state.rollbacks} time(s) (trainer.config.spike_guard.max_rollbacks = "
                f"{guard.max_rollbacks}) and the learning rate is down to {lr:.3g}: lower "
                "trainer.config.learning_rate, set trainer.config.clipnorm, or check the data"
            )
        assert self.detector is not None
        snapshot = self.snapshot
        snapshot.restore(model)
        restored = RunState.from_manifest(snapshot.state)
        restored.rollbacks = state.rollbacks + 1
        restored.spike_scale = state.spike_scale * guard.lr_factor
        restored.skipped = [*state.skipped, (state.epoch, state.step_in_epoch)]
        self.record.state = restored
        self.detector.history = deque(snapshot.history, maxlen=guard.window)
        log.warning(
            "loss spike at %s: %s. Rolled back to global step %d, learning rate x%g "
            "(now %.3g), this batch skipped (rollback %d of at most %d)",
            where,
            reason,
            restored.global_step,
            guard.lr_factor,
            trainer.config.learning_rate * restored.lr_scale,
            restored.rollbacks,
            guard.max_rollbacks,
        )
        if self.tb is not None:
            self.tb.scalars("spike_guard", {"rollbacks": restored.rollbacks}, state.global_step)
        raise _RolledBack

    # --- plateau, early stopping, the best weights ---

    def _watch(self, trainer: Trainer[Any], logs: Mapping[str, float]) -> bool:
        """Update the plateau schedule and early stopping from this epoch's metrics; True when
        the early-stopping metric improved (its weights are then the best so far)."""
        config, state = trainer.config, self.state
        schedule, stopping = config.schedule, config.early_stopping
        improved = False
        if schedule.kind == "plateau":
            better = self._better("schedule", schedule.monitor, schedule.mode, 0.0, logs)
            if better is False and state.watch["schedule"]["bad"] >= schedule.patience:
                state.plateau_scale *= schedule.factor
                state.watch["schedule"]["bad"] = 0
                log.info(
                    "%s has not improved for %d epochs: learning rate x%g (now %.3g)",
                    schedule.monitor,
                    schedule.patience,
                    schedule.factor,
                    config.learning_rate * state.lr_scale,
                )
        if stopping.enabled:
            better = self._better(
                "early_stopping", stopping.monitor, stopping.mode, stopping.min_delta, logs
            )
            improved = better is True and stopping.restore_best
            if better is False and state.watch["early_stopping"]["bad"] >= stopping.patience:
                state.stopped_early = True
                log.info(
                    "early stop after epoch %d: %s has not improved for %d epochs (best %.4g)",
                    state.epoch,
                    stopping.monitor,
                    stopping.patience,
                    state.watch["early_stopping"]["best"],
                )
        return improved

    def _better(
        self,
        key: str,
        monitor: str,
        mode: str | None,
        min_delta: float,
        logs: Mapping[str, float],
    ) -> bool | None:
        """Whether ``monitor`` improved on its best (None: not reported this epoch)."""
        value = logs.get(monitor)
        if value is None or not math.isfinite(value):
            log.warning("%s watches %s, which this epoch did not report", key, monitor)
            return None
        direction = type(self.config.trainer.config).metric_mode(
            monitor,
            mode,  # type: ignore[arg-type]
        )
        watch = self.state.watch.setdefault(key, {"bad": 0.0})
        best = watch.get("best")
        if best is None or (
            value < best - min_delta if direction == "min" else value > best + min_delta
        ):
            watch["best"], watch["bad"] = float(value), 0.0
            return True
        watch["bad"] += 1
        return False

    def _save_best(
        self, trainer: Trainer[Any], model: keras.Model, logs: Mapping[str, float]
    ) -> None:
        from mlops_trainers.checkpoints import save_best

        if self.detector is not None:
            self.state.loss_history = list(self.detector.history)
        manifest = {
            **self.state.to_manifest(),
            "run_id": self.config.run_id,
            "kind": self.config.trainer.kind,
            "trainer_config": trainer.config.model_dump(mode="json"),
            "monitor": trainer.config.early_stopping.monitor,
            "value": logs.get(trainer.config.early_stopping.monitor),
        }
        save_best(model, self.config.output, self.scratch, manifest)

    def _restore_best(self, trainer: Trainer[Any], model: keras.Model) -> None:
        from mlops_trainers.checkpoints import BEST_DIR, load_checkpoint, read_checkpoint

        stopping = trainer.config.early_stopping
        if not (stopping.enabled and stopping.restore_best):
            return
        best = read_checkpoint(storage.join(self.config.output, BEST_DIR))
        if best is None:
            return
        load_checkpoint(model, best, self.scratch, optimizer=True)
        log.info(
            "final model: the best epoch's weights (epoch %d, %s = %.4g)",
            best.epoch,
            best.manifest.get("monitor"),
            float(best.manifest.get("value") or math.nan),
        )

    # --- reporting ---

    def _write_curves(self) -> None:
        """``metrics.png`` next to ``metrics.csv``: each metric's curve over the epochs."""
        from mlops_trainers.artifacts import encode_png, metric_curves

        rows = self.record.metric_rows()
        if rows:
            storage.write_bytes(
                storage.join(self.config.output, METRICS_PLOT),
                encode_png(metric_curves(rows, title=self.config.run_id)),
            )

    def _progress_line(self, logs: Mapping[str, float], steps: int) -> None:
        """A progress line every LOG_EVERY_S seconds, with the rate since the last one."""
        now = time.monotonic()
        if now - self.line_at < LOG_EVERY_S:
            return
        state = self.state
        rate = (state.global_step - self.line_step) / max(now - self.line_at, 1e-9)
        log.info(
            "epoch %d/%d step %d/%d (%d/%d) %s  %.2f steps/s",
            state.epoch + 1,
            self.config.epochs,
            state.step_in_epoch,
            steps,
            state.global_step,
            self.record.total_steps,
            _fmt(logs),
            rate,
            # The progress bar shows this on a terminal; the attempt's log keeps it.
            extra={PROGRESS_LINE: True},
        )
        self.line_at, self.line_step = now, state.global_step


def describe_devices(gpus: Sequence[precision.Gpu] | None = None, *, replicas: int = 1) -> str:
    """What the backend will train on, for people: the GPUs by name, else the CPU, and the
    data-parallel replicas when there are several."""
    gpus = precision.visible_gpus() if gpus is None else gpus
    if gpus:
        where = f"{len(gpus)} GPU(s): {', '.join(g.name for g in gpus)}"
    else:
        where = f"CPU only ({os.cpu_count()} cores; no GPU visible to TensorFlow)"
    if replicas > 1:
        over = "GPUs" if gpus else f"logical CPU devices, {distribute.CPU_REPLICAS_ENV}"
        where += f"; data-parallel, MirroredStrategy over {replicas} replicas ({over})"
    return where


def _fmt(logs: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in logs.items())


class _HideProgressLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, PROGRESS_LINE, False)


def _setup_logging(*, progress: bool = False) -> None:
    """The ``mlops_trainers`` logger on stderr (unless a handler exists already); with a
    progress bar, the periodic progress lines stay out of the terminal (the attempt's log file
    still has them)."""
    handlers: list[logging.Handler]
    if log.handlers or logging.getLogger().handlers:
        log.setLevel(logging.INFO)
        handlers = list(log.handlers)
    else:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter(FORMAT))
        log.addHandler(console)
        log.setLevel(logging.INFO)
        log.propagate = False
        handlers = [console]
    for handler in handlers:
        # Terminals only: the attempt's log (a FileHandler) keeps every line.
        if isinstance(handler, logging.FileHandler) or not isinstance(
            handler, logging.StreamHandler
        ):
            continue
        for existing in [f for f in handler.filters if isinstance(f, _HideProgressLines)]:
            handler.removeFilter(existing)
        if progress:
            handler.addFilter(_HideProgressLines())


SCRATCH_PREFIX = "mlops-"
_SCRATCH_OWNER = ".owner-pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def new_scratch(run_id: str) -> Path:
    """This attempt's scratch folder (checkpoint and TensorBoard staging), after removing those
    of attempts whose process is gone: a SIGKILL (the OOM killer, ``kill -9``) skips the cleanup
    in :func:`run`, and on a laptop every such attempt would leave its checkpoint copies in the
    temp folder for good. Only folders marked with a dead owner's PID are touched."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{SCRATCH_PREFIX}*"):
        try:
            owner = int((old / _SCRATCH_OWNER).read_text())
        except (OSError, ValueError):
            continue  # not a scratch folder of ours
        if not _alive(owner):
            shutil.rmtree(old, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{run_id}-", dir=root))
    (scratch / _SCRATCH_OWNER).write_text(str(os.getpid()))
    return scratch


def run(config: RunConfig, *, progress: bool = False) -> int:
    """Train the run described by ``config``; returns the process exit code (see the module).

    ``progress``: a progress bar with the epoch's ETA on stdout (``mlops run`` on a terminal);
    the periodic progress lines then go only to the attempt's log.
    """
    from mlops_trainers.trainer import RunContext, get_trainer

    _setup_logging(progress=progress)
    scratch = new_scratch(config.run_id)
    record = RunRecord(config)
    attempt_log: AttemptLog | None = None
    stop = StopFlag()
    try:
        with stop_on_signals() as stop:
            try:
                attempt = record.begin()
                attempt_log = AttemptLog(scratch, config.output, attempt)
                log.info("run %s, attempt %d: %s", config.run_id, attempt, config.trainer.kind)
                trainer = get_trainer(config.trainer.kind)(config, RunContext(config, scratch))
                return _Run(config, stop, record, scratch, progress=progress).execute(trainer)
            except Stopped as stopped:
                code = EXIT_PREEMPTED if stopped.signum == signal.SIGTERM else EXIT_INTERRUPTED
                within(stop.left(KEEP_AFTER_STATUS_S), record.preempted, "the run's status")
                log.warning("stopped at global step %d: exit %d", record.state.global_step, code)
                return code
            except (ConfigError, DataError, ValidationError, TrainingDivergedError) as err:
                log.error("%s: %s (not retried)", type(err).__name__, err)
                record.failed(str(err), retry=False)
                return EXIT_FATAL
            except Exception as err:
                # An application error: retryable while this run's app-error budget lasts. The
                # count lives next to the run's output so it survives the pod.
                log.error("training failed:\n%s", traceback.format_exc())
                code = EXIT_APP_ERROR
                try:
                    if record.app_error() > config.error_retries:
                        code = EXIT_FATAL
                except Exception:
                    log.exception("could not record the app error under %s", config.output)
                record.failed(f"{type(err).__name__}: {err}", retry=code == EXIT_APP_ERROR)
                log.error(
                    "exit %d (%s)", code, "will be retried" if code == EXIT_APP_ERROR else "final"
                )
                return code
            except BaseException:
                # Not ours to handle (KeyboardInterrupt outside the handlers, SystemExit), but
                # its traceback belongs in the attempt's log.
                log.critical("interrupted:\n%s", traceback.format_exc())
                raise
    finally:
        if attempt_log is not None:
            within(stop.left(KEEP_AFTER_LOG_S), attempt_log.close, "the attempt's log upload")
        shutil.rmtree(scratch, ignore_errors=True)


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
