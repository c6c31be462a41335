"""The base classes of every config model: frozen values that reject unknown keys.

Pure pydantic: a trainer's ``config.py`` imports only this module (and other pure ones), so the
operator image, which has no TensorFlow, validates every trainer's hyperparameters.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

__all__ = ["ConfigModel", "TrainerConfig", "check_reference"]


class ConfigModel(BaseModel):
    """A config value: a nested block of a trainer config (``sky_mask``), or the run file's parts."""

    # frozen: a config is a value; extra=forbid: a typo in a hyperparameter is an error, not a no-op.
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrainerConfig(ConfigModel):
    """The hyperparameters of one trainer kind.

    Each ``mlops_trainers/trainers/<kind>/config.py`` defines exactly one subclass; the folder name
    is the kind (:mod:`mlops_trainers.registry`). Its docstring heads the kind's table in the
    README, its field descriptions fill the table.
    """


_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f`$;|&<>\"'\\{}]")


def check_reference(value: str) -> str:
    """A run name or URL in a trainer config: the same rules as the spec's URLs.

    (``mlops_api.spec.check_url``, kept here because trainer configs must not import the API
    package): no shell/quote/control characters, no ``..`` segment.
    """
    if _UNSAFE.search(value):
        raise ValueError("must not contain spaces, quotes, control or shell characters")
    if ".." in value.split("/"):
        raise ValueError("must not contain '..' path segments")
    return value
