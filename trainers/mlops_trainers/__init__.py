"""Keras 3 trainers for the mlops operator: one runtime, several trainers, storage through fsspec.

Importing this package is cheap (no TensorFlow): the config models live in
:mod:`mlops_trainers.config`, the runtime (:func:`mlops_trainers.runtime.run`) imports Keras lazily.
Entry point in a pod: ``python -m mlops_trainers --config URL``. A trained model:
``mlops_trainers.load(url)`` (:mod:`mlops_trainers.saving`).
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("mlops-operator")
except metadata.PackageNotFoundError:  # running from a source checkout (PYTHONPATH)
    __version__ = "0.0.0+source"

from typing import Any

__all__ = ["__version__", "load"]


def load(url: str, *, compile: bool = True) -> Any:
    """A trained model from a run folder or a ``.keras`` file at any fsspec URL; see
    :mod:`mlops_trainers.saving` (imported here on first use: this package stays TF-free)."""
    from mlops_trainers.saving import load as _load

    return _load(url, compile=compile)
