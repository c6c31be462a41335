"""One folder per trainer kind; the folder name is the kind (see :mod:`mlops_trainers.registry`).

Adding a trainer is adding a folder here: ``config.py`` (its hyperparameters, pure pydantic),
``trainer.py`` (its :class:`~mlops_trainers.trainer.Trainer`), its models and layers; then an
example manifest and ``make generate golden``. No other file lists the kinds.
"""
