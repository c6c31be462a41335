"""Trainer kinds, found by convention: a kind is a folder under ``mlops_trainers/trainers/``.

::

    mlops_trainers/trainers/<kind>/
        __init__.py   a docstring only: the operator imports the package, and has no TensorFlow
        config.py     exactly one TrainerConfig subclass: the kind's hyperparameters (pure pydantic)
        trainer.py    exactly one Trainer subclass whose config_class is that config (imported on use)
        ...           its models, layers and data code

Nothing else declares a kind: the ``MLOps`` spec's and the run file's trainer union
(:data:`mlops_trainers.config.TrainerSpec`), the CRD's enum, the README's tables and the runtime's
lookup all come from :func:`trainer_kinds`. Kinds are listed in name order. The folders are
those of the package's ``__path__``, read once per process (a test adds one by appending to it
before anything asks for the kinds).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from mlops_trainers.config_base import TrainerConfig

if TYPE_CHECKING:
    from mlops_trainers.trainer import Trainer

__all__ = ["PACKAGE", "TrainerEntry", "get_entry", "trainer_kinds"]

PACKAGE = "mlops_trainers.trainers"
# A kind is a label value, a CRD enum member and a Python package name.
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def _defined_in(module: ModuleType, base: type) -> list[Any]:
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, base)
        and value is not base
        and value.__module__ == module.__name__
    ]


@dataclass(frozen=True)
class TrainerEntry:
    """One trainer kind: its name, its package and its config model."""

    kind: str
    package: str
    config: type[TrainerConfig]

    def trainer_class(self) -> type[Trainer[Any]]:
        """The kind's :class:`~mlops_trainers.trainer.Trainer` (imports ``<kind>/trainer.py``)."""
        return _trainer_class(self)


@functools.cache
def _trainer_class(entry: TrainerEntry) -> type[Trainer[Any]]:
    from mlops_trainers.trainer import Trainer

    module = importlib.import_module(f"{entry.package}.trainer")
    found: list[type[Trainer[Any]]] = [
        c for c in _defined_in(module, Trainer) if not inspect.isabstract(c)
    ]
    if len(found) != 1:
        raise TypeError(
            f"{module.__name__} must define exactly one Trainer subclass, found "
            f"{[c.__name__ for c in found]}"
        )
    cls = found[0]
    if cls.config_class is not entry.config:
        raise TypeError(
            f"{cls.__qualname__}.config_class is {cls.config_class.__name__}, but the "
            f"{entry.kind!r} config is {entry.config.__name__} ({entry.package}.config)"
        )
    cls.kind = entry.kind
    return cls


def _entry(name: str) -> TrainerEntry:
    package = f"{PACKAGE}.{name}"
    module = importlib.import_module(f"{package}.config")
    found = _defined_in(module, TrainerConfig)
    if len(found) != 1:
        raise TypeError(
            f"{module.__name__} must define exactly one TrainerConfig subclass, found "
            f"{[c.__name__ for c in found]}"
        )
    return TrainerEntry(name, package, found[0])


@functools.cache
def trainer_kinds() -> dict[str, TrainerEntry]:
    """Every trainer kind, by name, in name order."""
    package = importlib.import_module(PACKAGE)
    names = sorted(
        {
            info.name
            for info in pkgutil.iter_modules(package.__path__)
            if info.ispkg and not info.name.startswith("_")
        }
    )
    bad = [n for n in names if not _KIND.match(n)]
    if bad:
        raise TypeError(f"trainer folders {bad} are not kind names ({_KIND.pattern})")
    return {name: _entry(name) for name in names}


def get_entry(kind: str) -> TrainerEntry:
    """The entry of ``kind``; KeyError naming the known kinds if there is none."""
    kinds = trainer_kinds()
    if kind not in kinds:
        raise KeyError(f"no trainer kind {kind!r} (known: {', '.join(kinds)})")
    return kinds[kind]
