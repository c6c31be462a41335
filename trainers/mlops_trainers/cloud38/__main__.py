"""``python -m mlops_trainers.cloud38 SOURCE DEST``."""

from __future__ import annotations

from mlops_trainers.cloud38.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
