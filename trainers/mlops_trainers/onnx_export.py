"""ONNX export of a trained segmenter, checked against Keras with ONNX Runtime.

Keras 3's own exporter (``model.export(path, format="onnx")``) does the work; under the TensorFlow
backend it traces the model's ``call`` into a ``tf.function`` and converts it with tf2onnx. Pinned
versions that work together with TensorFlow 2.21 and Keras 3.15 (checked by
``tests/trainers/test_onnx_export.py``): ``tf2onnx==1.17.0``, ``onnx==1.23.2``,
``onnxruntime==1.32.0``. They are optional: only the export and the check import them.

The input is declared with a dynamic batch, height and width (``(None, None, None, bands)``): the
U-Net is fully convolutional, so the exported graph predicts any tile whose sides are multiples of
``2 ** depth``, and a whole scene goes through :func:`mlops_trainers.tiling.predict_scene` with
:func:`onnx_predictor` exactly as it does with the Keras model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlops_trainers import storage

__all__ = ["INSTALL_HINT", "export_onnx", "load_session", "main", "max_abs_diff", "onnx_predictor"]

INSTALL_HINT = "pip install tf2onnx==1.17.0 onnx==1.23.2 onnxruntime==1.32.0"


def export_onnx(
    model: Any, url: str, *, input_name: str = "scene", opset: int | None = None
) -> str:
    """Write ``model`` as ONNX to ``url`` (fsspec URL or path); returns ``url``.

    The input spec is ``(None, None, None, C)`` float32 with C from the model's input.
    """
    import keras

    try:
        import onnx  # noqa: F401 - checked here so the error says what to install
        import tf2onnx  # noqa: F401
    except ImportError as err:
        raise RuntimeError(f"ONNX export needs tf2onnx and onnx: {INSTALL_HINT}") from err
    channels = int(model.inputs[0].shape[-1])
    spec = keras.InputSpec(shape=(None, None, None, channels), dtype="float32", name=input_name)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            # tf2onnx 1.17 probes `np.object` (gone in NumPy 2), which warns; Keras patches the
            # probe (keras/src/export/tf2onnx_lib.py) but the warning fires first. Not ours.
            warnings.filterwarnings("ignore", message=r".*np\.object.*", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"tf2onnx.*")
            model.export(
                str(local),
                format="onnx",
                verbose=False,
                input_signature=[spec],
                opset_version=opset,
            )
        storage.put_file(local, url)
    return url


def load_session(url: str) -> Any:
    """An ``onnxruntime.InferenceSession`` (CPU) for the ONNX model at ``url``."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise RuntimeError(f"running an ONNX model needs onnxruntime: {INSTALL_HINT}") from err
    return ort.InferenceSession(storage.read_bytes(url), providers=["CPUExecutionProvider"])


def onnx_predictor(session: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``tiles (n, t, t, C) -> probabilities (n, t, t)`` through an ONNX Runtime session."""
    name = session.get_inputs()[0].name

    def predict(tiles: np.ndarray) -> np.ndarray:
        out = session.run(None, {name: np.ascontiguousarray(tiles, dtype=np.float32)})[0]
        return np.asarray(out)[..., 0]

    return predict


def max_abs_diff(model: Any, session: Any, inputs: np.ndarray) -> float:
    """Largest absolute difference between Keras' and ONNX Runtime's outputs on ``inputs``."""
    keras_out = np.asarray(model.predict_on_batch(inputs.astype(np.float32)))[..., 0]
    onnx_out = onnx_predictor(session)(inputs)
    return float(np.max(np.abs(keras_out - onnx_out)))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mlops_trainers.onnx_export MODEL.keras OUT.onnx [--check-size N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m mlops_trainers.onnx_export", description=main.__doc__
    )
    parser.add_argument("model", help="a saved segmenter (.keras), fsspec URL or path")
    parser.add_argument("out", help="where to write the .onnx file")
    parser.add_argument(
        "--check-size", type=int, default=64, help="tile side for the Keras/ONNX check (0: none)"
    )
    args = parser.parse_args(argv)
    import keras

    import mlops_trainers.trainers.segmenter.unet  # noqa: F401 - registers the custom classes

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model.keras"
        storage.get_file(args.model, local)
        model = keras.saving.load_model(local)
    export_onnx(model, args.out)
    if args.check_size:
        rng = np.random.default_rng(0)
        x = rng.random(
            (2, args.check_size, args.check_size, int(model.inputs[0].shape[-1]))
        ).astype(np.float32)
        diff = max_abs_diff(model, load_session(args.out), x)
        print(f"{args.out}: max |keras - onnx| = {diff:.2e}")
        if diff > 1e-4:
            print("error: the ONNX model does not match Keras", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
