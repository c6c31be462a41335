"""TensorBoard scalars, written locally and copied whole under ``<output>/tb/``.

``tf.summary`` cannot write through fsspec (an emulator, s3 via fsspec, ...), so event files go to
the scratch folder and are uploaded at each epoch end and at the end; each attempt writes its own
event file. Without TensorFlow (another Keras backend) nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlops_trainers import storage
from mlops_trainers.contract import TB_DIR

__all__ = ["TensorBoardWriter"]


class TensorBoardWriter:
    """Scalars per step and per epoch; :meth:`upload` copies the event files to the output."""

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
            self.writer = None
