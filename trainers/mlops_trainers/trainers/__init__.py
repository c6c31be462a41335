"""One folder per trainer kind; the folder name is the kind (see :mod:`mlops_trainers.registry`).

Adding a trainer is adding a folder here: ``config.py`` (its hyperparameters, pure pydantic),
``trainer.py`` (its :class:`~mlops_trainers.trainer.Trainer`), its models and layers; then an
example manifest and ``make generate golden``. No other file lists the kinds.
"""

from pkgutil import extend_path

# A `mlops_trainers/trainers/<kind>/` folder in another sys.path entry adds a kind too.
__path__ = extend_path(__path__, __name__)
