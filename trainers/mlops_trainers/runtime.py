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
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from mlops_trainers import storage
from mlops_trainers.config import RunConfig
from mlops_trainers.contract import (
    EXIT_APP_ERROR,
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PREEMPTED,
)
from mlops_trainers.errors import ConfigError, DataError
from mlops_trainers.run_log import FORMAT, AttemptLog
from mlops_trainers.run_record import RunRecord, RunState
from mlops_trainers.signals import StopFlag, Stopped, stop_on_signals
from mlops_trainers.tensorboard import TensorBoardWriter

if TYPE_CHECKING:
    import keras

    from mlops_trainers.trainer import TrainData, Trainer

__all__ = ["load_run_config", "main", "run"]

log = logging.getLogger("mlops_trainers")

LOG_EVERY_S = 10.0  # seconds between progress lines


class _Run:
    """One attempt of a run: the order of things, the step loop, checkpoints."""

    def __init__(self, config: RunConfig, stop: StopFlag, record: RunRecord, scratch: Path) -> None:
        self.config = config
        self.stop = stop
        self.record = record
        self.scratch = scratch
        # The last progress line: when, and at which global step (for the rate since).
        self.line_at = time.monotonic()
        self.line_step = 0

    @property
    def state(self) -> RunState:
        return self.record.state

    def execute(self, trainer: Trainer[Any]) -> int:
        import keras

        config = self.config
        # One seed for Python, NumPy and the backend: weight init and any draws repeat per run.
        keras.utils.set_random_seed(config.seed)
        trainer.prepare()
        data = trainer.datasets()
        if data.steps_per_epoch < 1:
            raise DataError("the data gives no training step (fewer images than a batch?)")
        model = trainer.build_model()
        loaded = self._resume(trainer, model)
        self.record.started(total_steps=data.steps_per_epoch * config.epochs, inputs=trainer.inputs)
        tb = TensorBoardWriter(self.scratch, config.output)
        try:
            if self.state.epoch < config.epochs:
                trainer.on_train_begin(model, fresh=not loaded)
                self.line_at, self.line_step = time.monotonic(), self.state.global_step
                while self.state.epoch < config.epochs:
                    self._epoch(trainer, model, data, tb)
            # save_final first: what it checks (e.g. the segmenter's ONNX export) can be a metric.
            model_url = trainer.save_final(model)
            metrics = trainer.final_metrics(self.state.last_logs)
            tb.upload()
            self.record.finished(metrics, model_url=model_url, inputs=trainer.inputs)
            log.info("run %s done: %s -> %s", config.run_id, _fmt(metrics), model_url)
            return EXIT_OK
        finally:
            tb.close()

    # --- checkpoints ---

    def _checkpoint(self, trainer: Trainer[Any], model: keras.Model) -> None:
        from mlops_trainers.checkpoints import save_checkpoint

        latest = self.record.latest
        if latest is not None and latest.step == self.state.global_step:
            return  # this very state is already saved (a signal right after a checkpoint)
        manifest = {
            **self.state.to_manifest(),
            "run_id": self.config.run_id,
            "kind": self.config.trainer.kind,
            "trainer_config": trainer.config.model_dump(mode="json"),
            "seed": self.config.seed,
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

    def _resume(self, trainer: Trainer[Any], model: keras.Model) -> bool:
        """Load this run's newest checkpoint or the configured source; False when fresh."""
        from mlops_trainers.checkpoints import (
            latest_checkpoint,
            load_checkpoint,
            resolve_checkpoint,
            resolve_model_reference,
        )

        own = latest_checkpoint(self.config.output)
        if own is not None:
            load_checkpoint(model, own, self.scratch, optimizer=True)
            self.record.resumed(own)
            log.info(
                "resumed from %s: epoch %d, step %d of the epoch (global step %d)",
                own.url,
                self.state.epoch,
                self.state.step_in_epoch,
                self.state.global_step,
            )
            return True
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
            return False
        trainer.init_from(model, source)
        self.record.started_from(parent)
        log.info(
            "new run started from %s (run %s, step %d)", source.url, source.run_id, source.step
        )
        return True

    # --- training ---

    def _epoch(
        self, trainer: Trainer[Any], model: keras.Model, data: TrainData, tb: TensorBoardWriter
    ) -> None:
        """The rest of the current epoch: steps, then its metrics, artifacts and checkpoint."""
        config, state = self.config, self.state
        steps = data.steps_per_epoch
        # A checkpoint taken with a larger steps_per_epoch ends its epoch now.
        state.step_in_epoch = min(steps, state.step_in_epoch)
        began, done = time.perf_counter(), 0
        for batch in data.batches(state.epoch, state.step_in_epoch):
            if state.step_in_epoch >= steps:
                break
            logs = self._step(trainer, model, batch)
            done += 1
            tb.scalars("step", logs, state.global_step)
            self._progress_line(logs, steps)
            if state.step_in_epoch < steps and state.global_step % config.checkpoint_every == 0:
                self._checkpoint(trainer, model)
            if self.stop.signum is not None:
                self._checkpoint(trainer, model)
                raise Stopped(self.stop.signum)
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
        log.info(
            "epoch %d/%d done: %s  (%.2f steps/s)",
            state.epoch,
            config.epochs,
            _fmt(epoch_logs),
            done / max(elapsed, 1e-9),
        )
        # metrics.csv before the checkpoint: a kill in between redoes the epoch's tail and
        # replaces the row, never loses it.
        self.record.epoch_ended(epoch_logs)
        tb.scalars("epoch", epoch_logs, state.epoch)
        tb.upload()
        state.last_logs = epoch_logs
        state.sums, state.count = {}, 0
        self._checkpoint(trainer, model)
        if self.stop.signum is not None:
            raise Stopped(self.stop.signum)

    def _step(self, trainer: Trainer[Any], model: keras.Model, batch: Any) -> dict[str, float]:
        state = self.state
        # Per-batch logs (Keras' Mean trackers would otherwise average since the last reset);
        # the runtime averages them over the epoch itself, resumably.
        reset = getattr(model, "reset_metrics", None)
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
        self.record.stepped()
        return logs

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
        )
        self.line_at, self.line_step = now, state.global_step


def _fmt(logs: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in logs.items())


def _setup_logging() -> None:
    if log.handlers or logging.getLogger().handlers:
        log.setLevel(logging.INFO)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def run(config: RunConfig) -> int:
    """Train the run described by ``config``; returns the process exit code (see the module)."""
    from mlops_trainers.trainer import RunContext, get_trainer

    _setup_logging()
    scratch = Path(tempfile.mkdtemp(prefix=f"mlops-{config.run_id}-"))
    record = RunRecord(config)
    attempt_log: AttemptLog | None = None
    try:
        with stop_on_signals() as stop:
            try:
                attempt = record.begin()
                attempt_log = AttemptLog(scratch, config.output, attempt)
                log.info("run %s, attempt %d: %s", config.run_id, attempt, config.trainer.kind)
                trainer = get_trainer(config.trainer.kind)(config, RunContext(config, scratch))
                return _Run(config, stop, record, scratch).execute(trainer)
            except Stopped as stopped:
                code = EXIT_PREEMPTED if stopped.signum == signal.SIGTERM else EXIT_INTERRUPTED
                record.preempted()
                log.warning("stopped at global step %d: exit %d", record.state.global_step, code)
                return code
            except (ConfigError, DataError, ValidationError) as err:
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
            attempt_log.close()
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
