"""Load a trained model: ``mlops_trainers.load(url)``, or plain Keras after one import.

Every trainer's models, layers, losses and metrics are Keras classes registered under the
``mlops_trainers`` package (``@keras.saving.register_keras_serializable``); Keras finds them
when the modules defining them have been imported. Importing this module imports all of them
(every module of every trainer folder, found like the kinds are, and the shared layers), so::

    import keras
    import mlops_trainers.saving  # noqa: F401 - registers the custom objects

    model = keras.saving.load_model("model.keras")

or, from any fsspec URL (a run's folder or its ``model.keras``)::

    import mlops_trainers

    model = mlops_trainers.load("gs://bucket/runs/vqvae-demo-g1-0123abcd")
"""

from __future__ import annotations

import importlib
import pkgutil
import tempfile
from pathlib import Path
from typing import Any

from mlops_trainers import storage
from mlops_trainers.contract import MODEL_FILE

__all__ = ["load", "register_all"]

# Packages whose every module may define Keras objects.
PACKAGES = ("mlops_trainers.layers", "mlops_trainers.trainers")


def register_all() -> list[str]:
    """Import every module that defines our Keras objects; returns their names."""
    imported = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            importlib.import_module(info.name)
            imported.append(info.name)
    return imported


def load(url: str, *, compile: bool = True) -> Any:
    """The model at ``url``: a ``.keras`` file, or a run folder (its ``model.keras``), at any
    fsspec URL (``gs://``, a local path...). ``compile=False`` skips the optimizer and loss."""
    import keras

    register_all()
    target = url if url.rstrip("/").endswith(".keras") else storage.join(url, MODEL_FILE)
    with tempfile.TemporaryDirectory(prefix="mlops-load-") as tmp:
        local = Path(tmp) / "model.keras"
        try:
            storage.get_file(target, local)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"no model at {target}") from err
        return keras.saving.load_model(local, compile=compile)


register_all()
