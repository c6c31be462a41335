"""TensorBoard: scalars, images and hparams written with ``tf.summary``, readable while training.

TensorFlow's file writer cannot write through fsspec (a GCS emulator, s3 via fsspec, ...), so
event files are written to the scratch folder and copied under ``<output>/tb/`` every
:data:`UPLOAD_EVERY_S` seconds (checked between steps), at each epoch end and at the end: point
``tensorboard --logdir gs://bucket/runs/<run id>/tb`` at the bucket and it shows a run as it
trains, not only after each epoch. A copy rewrites the whole object (GCS objects are immutable),
so an event file is closed and a new one started once it passes :data:`ROLL_BYTES`; closed files
are copied once. Each attempt writes its own files; TensorBoard reads them all in name order.

What is written:

* ``step/<log>`` every step (loss, the trainer's metrics, ``lr``, ``grad_norm``) and
  ``epoch/<metric>`` every epoch (the row of ``metrics.csv``). Rows are held and written
  :data:`SCALAR_ROWS` at a time, in one graph call, and always before a copy: a write per step
  cost the host about 1 ms a step (measured in a run), a share a GPU step would show;
* every PNG a trainer writes through :meth:`~mlops_trainers.trainer.RunContext.write_png`
  (reconstructions, samples, predictions, sky masks) as an image, tagged by its folder;
* the run's hyperparameters (the HParams dashboard), once per attempt.

Without TensorFlow (another Keras backend) nothing is written.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlops_trainers import storage
from mlops_trainers.contract import TB_DIR

__all__ = ["ROLL_BYTES", "SCALAR_ROWS", "UPLOAD_EVERY_S", "TensorBoardWriter", "flat_hparams"]

UPLOAD_EVERY_S = 30.0
ROLL_BYTES = 1 << 20
# Scalar rows held before a write: a bound on memory only, since every copy writes them first
# (a row lost with the process would not have been copied either).
SCALAR_ROWS = 100


def flat_hparams(
    values: Mapping[str, Any], prefix: str = ""
) -> dict[str, bool | int | float | str]:
    """Nested config values as the flat ``{"a.b": scalar}`` the HParams dashboard takes."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        elif value is not None:
            out[name] = str(value)
    return out


class TensorBoardWriter:
    """One attempt's event files: write, and copy them to ``<output>/tb/`` now and then."""

    def __init__(
        self,
        scratch: Path,
        output: str,
        *,
        every_s: float | None = None,
        roll_bytes: int | None = None,
    ) -> None:
        self.local = scratch / TB_DIR
        self.output = storage.join(output, TB_DIR)
        self.every_s = UPLOAD_EVERY_S if every_s is None else every_s
        self.roll_bytes = ROLL_BYTES if roll_bytes is None else roll_bytes
        self.writer: Any = None
        # One compiled writer per (prefix, keys): many rows of scalars in one graph call, not
        # one eager op per value (~0.6 ms each: 8 logs were 5% of a 100 ms step). Tracing one
        # took about 230 ms: once per run, not once per event file.
        self._writes: dict[tuple[str, tuple[str, ...]], Any] = {}
        # Rows not written yet, all of one (prefix, keys): their values and steps.
        self._held: tuple[str, tuple[str, ...]] | None = None
        self._rows: list[list[float]] = []
        self._steps: list[int] = []
        self.files = 0
        self.uploaded: dict[Path, int] = {}  # size of each file at its last copy
        self.last_upload = time.monotonic()
        try:
            import tensorflow as tf
        except ImportError:  # another backend without TensorFlow: no TensorBoard
            self.tf: Any = None
            return
        self.tf = tf
        self._open()

    def _open(self) -> None:
        self.files += 1
        # A distinct suffix per file: files opened in the same second would share a name.
        self.writer = self.tf.summary.create_file_writer(
            str(self.local), filename_suffix=f".{self.files:04d}"
        )

    def _current(self) -> Path | None:
        found = sorted(self.local.glob(f"events.out.tfevents.*.{self.files:04d}"))
        return found[-1] if found else None

    # --- writing ---

    def scalars(self, prefix: str, logs: Mapping[str, float], step: int) -> None:
        """Hold one row of scalars; rows are written :data:`SCALAR_ROWS` at a time, when the
        prefix or keys change, and by :meth:`upload` and :meth:`close`."""
        if self.writer is None:
            return
        keys = tuple(logs)
        if self._held != (prefix, keys):
            self.write_held()
            self._held = (prefix, keys)
        self._rows.append([float(logs[k]) for k in keys])
        self._steps.append(step)
        # A new set of keys is written at once: its writer is traced now (with the run's first
        # step, whose tracing it joins), not 100 steps into training.
        if len(self._rows) >= SCALAR_ROWS or (prefix, keys) not in self._writes:
            self.write_held()

    def write_held(self) -> None:
        """Write the rows held so far, in one graph call."""
        if self._held is None or not self._rows:
            return
        write = self._writes.get(self._held)
        if write is None:
            write = self._writes[self._held] = self._compile_scalars(*self._held)
        tf = self.tf
        # The writer's resource is an argument, not captured: the function outlives the event
        # files (a roll opens a new writer), traced once per (prefix, keys) for the whole run.
        # ``_resource`` is what tf.summary.write itself passes to its op.
        resource = self.writer._resource
        write(resource, tf.constant(self._rows, tf.float32), tf.constant(self._steps, tf.int64))
        self._rows, self._steps = [], []

    def _compile_scalars(self, prefix: str, keys: tuple[str, ...]) -> Any:
        from tensorboard.plugins.scalar.metadata import create_summary_metadata

        tf = self.tf
        # What tf.summary.scalar writes, with the tag as given: inside the loop tf.summary.scalar
        # would prefix the loop's name scope ("while/step/loss").
        scalar = create_summary_metadata(display_name=None, description=None).SerializeToString()
        tags = [f"{prefix}/{key}" for key in keys]

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[
                tf.TensorSpec([], tf.resource),
                tf.TensorSpec([None, len(keys)], tf.float32),
                tf.TensorSpec([None], tf.int64),
            ]
        )
        def write(writer: Any, values: Any, steps: Any) -> None:
            # Steps are an argument: a step set by as_default() would be traced in as a constant.
            for row in tf.range(tf.shape(values)[0]):
                for i, tag in enumerate(tags):
                    tf.raw_ops.WriteSummary(
                        writer=writer, step=steps[row], tensor=values[row, i], tag=tag,
                        summary_metadata=scalar,
                    )  # fmt: skip

        return write

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """One (H, W[, C]) image, uint8 or [0, 1] floats."""
        if self.writer is None:
            return
        from mlops_trainers.artifacts import to_uint8

        array = to_uint8(np.asarray(image))
        if array.ndim == 2:
            array = array[..., None]
        if array.shape[-1] not in (1, 3, 4):
            array = array[..., :3]
        with self.writer.as_default(step=step):
            self.tf.summary.image(tag, array[None], max_outputs=1)

    def hparams(self, values: Mapping[str, Any], trial: str) -> None:
        """The run's hyperparameters for the HParams dashboard (session start)."""
        if self.writer is None:
            return
        try:
            from tensorboard.plugins.hparams import api as hp
        except ImportError:  # pragma: no cover - the trainer extra installs tensorboard
            return
        with self.writer.as_default(step=0):
            hp.hparams(flat_hparams(values), trial_id=trial)

    # --- copying ---

    def maybe_upload(self) -> None:
        """Copy the event files if :data:`UPLOAD_EVERY_S` has passed (call between steps)."""
        if self.writer is not None and time.monotonic() - self.last_upload >= self.every_s:
            self.upload()

    def upload(self) -> None:
        if self.writer is None:
            return
        self.write_held()
        self.writer.flush()
        current = self._current()
        if current is not None and current.stat().st_size >= self.roll_bytes:
            self.writer.close()
            self._open()
        for path in sorted(self.local.rglob("*")):
            if not path.is_file():
                continue
            size = path.stat().st_size
            if self.uploaded.get(path) == size:
                continue  # closed (or unchanged) files are copied once
            storage.put_file(path, storage.join(self.output, *path.relative_to(self.local).parts))
            self.uploaded[path] = size
        self.last_upload = time.monotonic()

    def close(self) -> None:
        if self.writer is not None:
            self.upload()
            self.writer.close()
            self.writer = None
