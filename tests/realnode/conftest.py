"""Fixtures of the real-node tests: the local cluster plus a real kubelet + containerd node,
the images built here and loaded into it, a GCS emulator the pods reach, and the chart installed
with the operator as a real Deployment pod.

The node and the images are built right after collection when a selected test uses
``real_node`` (like the cluster binaries in ``tests/conftest.py``): outside every test's
timeout, with progress on the terminal. A failure there makes the tests fail with the reason,
never skip.

The fixtures are module-scoped, not package-scoped: this folder has no ``__init__.py``, and
pytest tears a "package" fixture of such a folder down only at the end of the session, which
left the node and a cluster-wide operator running through the later suites.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from cluster import HACK, ROOT, Cluster
from kubernetes import client
from operator_harness import CHART, free_port, wait_for
from realnode_support import ArgoServer, Bucket, RealNode, Release

IMAGES = ROOT / "hack" / "images" / "ocibuild.py"
# Cold: kubelet ~1 min and argoexec ~3 min on top of the cluster's Go build; the images' base,
# dependency layers ~3 min. Warm: seconds.
BUILD_TIMEOUT_S = float(os.environ.get("MLOPS_REALNODE_BUILD_TIMEOUT_S", "3600"))
NODE_UP_TIMEOUT_S = 600.0
LOAD_TIMEOUT_S = 900.0
BUCKET = "mlops-realnode"

_BUILD_ERROR = pytest.StashKey[str]()
_UI_BUILD_ERROR = pytest.StashKey[str]()


def _stream(cmd: list[str], log: Callable[[str], None], timeout: float) -> str:
    """Run ``cmd``, echoing its stderr lines; returns stdout. Raises with the end of the output."""
    with (
        tempfile.TemporaryFile("w+") as err,
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc,
    ):
        assert proc.stderr is not None and proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in proc.stderr:
            err.write(line)
            log(line.rstrip("\n"))
            if time.monotonic() > deadline:
                proc.kill()
                break
        out = proc.stdout.read()
        rc = proc.wait(timeout=60)
        if rc != 0:
            err.seek(0)
            tail = "".join(err.readlines()[-40:])
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}):\n{tail}")
        return out


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if config.option.collectonly or not any(
        "real_node" in item.fixturenames for item in session.items
    ):
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")

    def show(line: str) -> None:
        if reporter is not None:
            reporter.write_line(line)

    try:
        with capman.global_and_fixture_disabled():
            start = time.monotonic()
            _stream([str(HACK / "build.sh"), "--node"], show, BUILD_TIMEOUT_S)
            _stream(
                [sys.executable, str(IMAGES), "build", "pause", "argoexec", "operator", "trainer"],
                show,
                BUILD_TIMEOUT_S,
            )
            show(f"[realnode] node binaries and images ready in {time.monotonic() - start:.0f} s")
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        config.stash[_BUILD_ERROR] = str(exc)
    if any("argo_server" in item.fixturenames for item in session.items):
        try:
            with capman.global_and_fixture_disabled():
                # argo and Argo's UI (yarn + webpack, then Go): ~3-5 min cold, cached after.
                _stream([str(HACK / "build.sh"), "--ui"], show, BUILD_TIMEOUT_S)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            config.stash[_UI_BUILD_ERROR] = str(exc)


def _lib_setting(name: str) -> str:
    return subprocess.run(
        ["bash", "-c", f'source "{HACK}/lib.sh" && echo "${{{name}}}"'],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()


@pytest.fixture(scope="module")
def real_node(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[RealNode]:
    """The cluster's real node (``hack/cluster/node-up.sh``), with the operator, trainer, Argo
    executor and pause images in its containerd. Removed at the end if this fixture added it."""
    error = request.config.stash.get(_BUILD_ERROR, None)
    if error:
        pytest.fail(f"could not build the real node or its images:\n{error}", pytrace=False)
    if not cluster.local:
        pytest.fail("the real-node tests need the local cluster (not MLOPS_E2E_KUBECONFIG)")
    started = False
    status = subprocess.run(
        ["bash", "-c", f'source "{HACK}/lib.sh" && node_up'], check=False, timeout=30
    )
    if status.returncode != 0:
        proc = subprocess.run(
            [str(HACK / "node-up.sh")],
            capture_output=True,
            text=True,
            timeout=NODE_UP_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(f"hack/cluster/node-up.sh failed:\n{proc.stderr[-6000:]}", pytrace=False)
        started = True
    try:
        proc = subprocess.run(
            [str(HACK / "node-load.sh"), "operator", "trainer"],
            capture_output=True,
            text=True,
            timeout=LOAD_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(f"hack/cluster/node-load.sh failed:\n{proc.stderr[-6000:]}", pytrace=False)
        images = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.strip())
        yield RealNode(
            name=_lib_setting("NODE_NAME"),
            ip=_lib_setting("NODE_IP"),
            label=_lib_setting("NODE_LABEL_KEY"),
            images=images,
            cluster=cluster,
        )
    finally:
        if started and os.environ.get("MLOPS_CLUSTER_KEEP") != "1":
            subprocess.run([str(HACK / "node-down.sh")], check=False, timeout=300)


@pytest.fixture(scope="module")
def bucket(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bucket]:
    """PyPI's gcp-storage-emulator on the node's address (the host, on the pods' bridge), one
    bucket; this process's gcsfs points at it too (``mlops_trainers.storage`` reads it)."""
    port = free_port()
    # Through hack/gcs_emulator.py: PyPI's server answers one connection at a time, and a pod
    # that went away mid-request held up a stopping trainer's checkpoint past its grace period.
    launcher = Path(__file__).parents[2] / "hack" / "gcs_emulator.py"
    logs = tmp_path_factory.mktemp("gcs") / "emulator.log"
    with logs.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                str(launcher),
                "start",
                "--host",
                real_node.ip,
                "--port",
                str(port),
                "--in-memory",
                "--default-bucket",
                BUCKET,
                "--quiet",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://{real_node.ip}:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the GCS emulator exited: {logs.read_text()}")
        try:
            with urllib.request.urlopen(f"{endpoint}/storage/v1/b/{BUCKET}", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    saved = {
        k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")
    }
    try:
        wait_for("the GCS emulator", answers, timeout=60)
        handle = Bucket(endpoint, BUCKET)
        os.environ.update(handle.pod_env)
        yield handle
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def release(
    cluster: Cluster, real_node: RealNode, bucket: Bucket, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    """The chart, installed as a user would: the operator a real Deployment pod on the real node
    running the operator image built from this checkout; trainer pods placed there too."""
    suffix = uuid.uuid4().hex[:6]
    namespace = cluster.create_namespace(f"rn-{suffix}")
    name = f"mlops-{suffix}"
    repo, tag = real_node.images["operator"].rsplit(":", 1)
    values = {
        "operator": {
            "image": {"repository": repo, "tag": tag},
            "logFormat": "plain",
            **real_node.placement,
        },
        "trainer": {
            "image": real_node.images["trainer"],
            "env": bucket.pod_env,
            **real_node.placement,
        },
        # Runs overlap here (the broken ones fail in the background, two preemptions at once).
        "queues": {"gpu": 4},
    }
    values_file = tmp_path_factory.mktemp("release") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    cluster.helm(
        "install",
        name,
        str(CHART),
        f"--namespace={namespace}",
        f"--values={values_file}",
        "--wait",
        "--timeout=300s",
        timeout=360,
    )
    with cluster.api_client() as api:
        (deploy,) = (
            client.AppsV1Api(api)
            .list_namespaced_deployment(
                namespace, label_selector=f"app.kubernetes.io/instance={name}"
            )
            .items
        )
    try:
        yield Release(name, namespace, deploy.metadata.name, values)
    finally:
        # Runs first (the operator's finalizers), then the release, then the namespace.
        cluster.kubectl(
            "delete", "mlops", "--all", f"--namespace={namespace}", "--timeout=120s", check=False
        )
        cluster.helm("uninstall", name, f"--namespace={namespace}", "--wait", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def argo_server(
    request: pytest.FixtureRequest, cluster: Cluster, real_node: RealNode
) -> ArgoServer:
    """argo-server with Argo's UI, on this cluster (``hack/cluster/argo-server-up.sh``; down.sh
    stops it with the cluster), and the argo CLI of the same build."""
    error = request.config.stash.get(_UI_BUILD_ERROR, None)
    if error:
        pytest.fail(f"could not build argo-server and Argo's UI:\n{error}", pytrace=False)
    proc = subprocess.run(
        [str(HACK / "argo-server-up.sh")], capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"hack/cluster/argo-server-up.sh failed:\n{proc.stderr[-6000:]}", pytrace=False)
    url = proc.stdout.strip().splitlines()[-1]
    return ArgoServer(url, Path(_lib_setting("ARGOCLI_BIN_DIR")) / "argo")
