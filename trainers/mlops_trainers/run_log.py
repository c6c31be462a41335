"""The trainer's own log of one attempt, kept next to the run's results so it outlives the pod.

The ``mlops_trainers`` logger (progress lines, checkpoints, warnings, the traceback of a failure)
goes to a local file, copied to ``<output>/logs/attempt-<N>.log`` (N counted in attempts.json)
every :data:`UPLOAD_EVERY_S` seconds by a background thread, at each checkpoint, and when the
attempt ends, whichever way it ends (success, SIGTERM, failure). Through fsspec, so it works on
``gs://`` and in a local folder alike. A pod killed without warning loses at most the last
interval.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from mlops_trainers import storage
from mlops_trainers.contract import attempt_log

__all__ = ["UPLOAD_EVERY_S", "AttemptLog"]

UPLOAD_EVERY_S = 30.0
FORMAT = "%(asctime)s %(levelname)s %(message)s"


class AttemptLog:
    """Attach to the ``mlops_trainers`` logger; :meth:`close` detaches and uploads a last time."""

    def __init__(
        self, scratch: Path, output: str, attempt: int, *, every_s: float = UPLOAD_EVERY_S
    ) -> None:
        relative = attempt_log(attempt)
        self.local = scratch / relative
        self.local.parent.mkdir(parents=True, exist_ok=True)
        self.url = storage.join(output, relative)
        self.logger = logging.getLogger("mlops_trainers")
        self.handler = logging.FileHandler(self.local, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(FORMAT))
        self.handler.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._every_s = every_s
        self._thread = threading.Thread(target=self._loop, name="mlops-log-upload", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._closed.wait(self._every_s):
            self.upload()

    def upload(self) -> None:
        """Copy the log so far to the output; a failure is reported on stderr, never raised
        (logging it would write into the very file being copied)."""
        with self._lock:
            try:
                self.handler.flush()
                storage.put_file(self.local, self.url)
            except Exception as err:
                print(f"could not upload {self.url}: {err}", file=sys.stderr)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join()
        self.logger.removeHandler(self.handler)
        self.upload()
        self.handler.close()
