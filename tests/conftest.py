"""e2e fixtures: the local Kubernetes + kwok + Argo cluster of ``hack/cluster``.

They live here, at the top of ``tests/``, so that every suite can use them (``tests/e2e`` and the
e2e tests of ``tests/reliability``), and ``tests/e2e`` (``cluster.py``, ``operator_harness.py``) is
on ``sys.path`` for all of them. The collection hook below does nothing unless a selected test
uses ``cluster``, so unit-test runs neither build nor start anything.

``cluster`` (session scope) starts the cluster with ``hack/cluster/up.sh`` unless it is already
up, and stops it with ``hack/cluster/down.sh`` at the end only if it started it (so a cluster
started by ``make cluster-up`` outlives the test run; ``MLOPS_CLUSTER_KEEP=1`` keeps one the
fixture started). While the session runs, ``KUBECONFIG`` (admin), ``MLOPS_KUBECONFIG_USER``
(non-admin) and ``MLOPS_CLUSTER_BIN`` are set and ``PATH`` starts with the cluster's bin dir.

Building the binaries the first time takes 15-30 min, longer than pytest-timeout allows one
test; so when any selected test uses ``cluster``, they are built right after collection,
outside every test's timeout, with progress on the terminal.

``MLOPS_E2E_KUBECONFIG=/path/to/kubeconfig`` runs the same tests against an existing cluster
instead (``make e2e-kind``): nothing is built, started or stopped; see ``cluster.Cluster.external``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))

# Imported after the sys.path entry above (ruff does not flag this one).
from browser import chromium
from cluster import (
    CRD_PATH,
    Cluster,
    build,
    down,
    external_kubeconfig,
    is_up,
    up,
    wait_for,
)

_BUILD_ERROR = pytest.StashKey[str]()


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if external_kubeconfig() is not None:
        return  # an existing cluster: nothing to build
    if config.option.collectonly or not any(
        "cluster" in item.fixturenames for item in session.items
    ):
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")

    def show(line: str) -> None:
        if reporter is not None:
            reporter.write_line(line)

    try:
        with capman.global_and_fixture_disabled():
            build(show)
    except (OSError, RuntimeError) as exc:
        # Reported by the fixture, so the e2e tests fail (not error out of collection, and not
        # skip: a test that cannot run here must not pass for one that ran).
        config.stash[_BUILD_ERROR] = str(exc)


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """The running local cluster (started if needed, stopped at the end if we started it), or
    the existing cluster ``MLOPS_E2E_KUBECONFIG`` names."""
    external = external_kubeconfig()
    if external is not None:
        handle = Cluster.external(external, tmp_path_factory.mktemp("external-cluster"))
        env = pytest.MonkeyPatch()
        env.setenv("KUBECONFIG", str(handle.kubeconfig))
        env.setenv("MLOPS_KUBECONFIG_USER", str(handle.user_kubeconfig))
        env.setenv("PATH", f"{handle.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        try:
            yield handle
        finally:
            env.undo()
        return
    error = request.config.stash.get(_BUILD_ERROR, None)
    if error:
        pytest.fail(f"could not build the local cluster's binaries:\n{error}", pytrace=False)
    started = False
    if not is_up():
        try:
            up()
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        started = True
    handle = Cluster.from_env()
    env = pytest.MonkeyPatch()
    env.setenv("KUBECONFIG", str(handle.kubeconfig))
    env.setenv("MLOPS_KUBECONFIG_USER", str(handle.user_kubeconfig))
    env.setenv("MLOPS_CLUSTER_BIN", str(handle.bin_dir))
    env.setenv("PATH", f"{handle.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    try:
        yield handle
    finally:
        env.undo()
        if started and os.environ.get("MLOPS_CLUSTER_KEEP") != "1":
            down()


@pytest.fixture(scope="session")
def mlops_crd(cluster: Cluster) -> None:
    """The MLOps CRD of the chart, applied (server-side: idempotent, whoever applied it before)
    and serving."""
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=mlops-e2e",
        "-f",
        str(CRD_PATH),
    )
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/mlops.mlops.dev")
    wait_for(
        "the MLOps API to be served",
        lambda: cluster.kubectl("get", "mlops", "--all-namespaces", check=False).returncode == 0,
        timeout=60,
    )


@pytest.fixture(scope="session")
def chromium_browser() -> Iterator[Browser]:
    """Debian's Chromium, headless (``browser.py``); fails with the reason when it cannot start."""
    try:
        with chromium() as browser:
            yield browser
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
