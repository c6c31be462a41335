"""``python -m mlops_trainers --config URL``: the trainer container's entry point."""

from __future__ import annotations

import logging
import os
import sys

from mlops_trainers.runtime import main

if __name__ == "__main__":
    code = main()
    # Everything the run writes is closed by now (checkpoint, status, logs, TensorBoard files):
    # skip the interpreter's teardown. Tearing TensorFlow down took 0.7-0.9 s (bench/
    # bench_recovery.py), time a preempted pod spends dying instead of its retry starting.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
