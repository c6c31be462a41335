"""Errors a trainer raises, by what the caller should do about them (the process exit code).

* :class:`ConfigError` / :class:`DataError` (exit 2): the run file or the data is wrong; retrying
  the same run cannot help, so the workflow never retries it.
* any other exception is an *application error* (exit 1 while the app-error budget lasts, see
  :mod:`mlops_trainers.runtime`).
"""

from __future__ import annotations

__all__ = ["EXIT_APP_ERROR", "EXIT_FATAL", "EXIT_OK", "EXIT_PREEMPTED", "ConfigError", "DataError"]

EXIT_OK = 0
EXIT_APP_ERROR = 1  # may be retried
EXIT_FATAL = 2  # config/data error, or app-error budget exhausted: never retry
EXIT_PREEMPTED = 143  # 128 + SIGTERM: a checkpoint was written, restart resumes from it


class ConfigError(ValueError):
    """The run file asks for something impossible or names something that does not exist."""


class DataError(ValueError):
    """The training data is missing, empty or unreadable."""
