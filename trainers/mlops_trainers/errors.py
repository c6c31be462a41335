"""Errors a trainer raises, by what the caller should do about them (the process exit code).

* :class:`ConfigError` / :class:`DataError` (exit 2): the run file or the data is wrong; retrying
  the same run cannot help, so the workflow never retries it.
* :class:`TrainingDivergedError` (exit 2): the loss kept spiking past the spike guard's rollbacks;
  the same run would diverge again, so it is not retried either.
* any other exception is an *application error* (exit 1 while the app-error budget lasts, see
  :mod:`mlops_trainers.runtime`).
"""

from __future__ import annotations

__all__ = [
    "EXIT_APP_ERROR",
    "EXIT_FATAL",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "ConfigError",
    "DataError",
    "TrainingDivergedError",
]

# The exit codes are part of the contract with the operator, defined once there.
from mlops_trainers.contract import EXIT_APP_ERROR, EXIT_FATAL, EXIT_OK, EXIT_PREEMPTED


class ConfigError(ValueError):
    """The run file asks for something impossible or names something that does not exist."""


class DataError(ValueError):
    """The training data is missing, empty or unreadable."""


class TrainingDivergedError(RuntimeError):
    """The loss spiked again after ``spike_guard.max_rollbacks`` rollbacks."""
