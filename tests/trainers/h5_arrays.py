"""Every array of a Keras ``.weights.h5`` file by its path in the file (model and optimizer):
what the resume tests compare bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}

    def keep(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            arrays[name] = np.asarray(item)

    with h5py.File(path, "r") as f:
        f.visititems(keep)
    return arrays
