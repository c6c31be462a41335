"""``python -m mlops_trainers --config URL``: the trainer container's entry point."""

from __future__ import annotations

from mlops_trainers.runtime import main

if __name__ == "__main__":
    raise SystemExit(main())
