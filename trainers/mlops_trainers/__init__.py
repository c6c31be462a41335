"""Keras 3 trainers for the mlops operator: one runtime, several trainers, storage through fsspec.

Importing this package is cheap (no TensorFlow): the config models live in
:mod:`mlops_trainers.config`, the runtime (:func:`mlops_trainers.runtime.run`) imports Keras lazily.
Entry point in a pod: ``python -m mlops_trainers --config URL``.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("mlops-operator")
except metadata.PackageNotFoundError:  # running from a source checkout (PYTHONPATH)
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
