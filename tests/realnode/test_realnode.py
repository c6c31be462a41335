"""The whole path a user's first `helm install` + `kubectl apply` takes, on real pods.

Unlike the kwok suites, every pod here really runs on the local cluster's real node (kubelet +
containerd + runc, ``hack/cluster/node-up.sh``): the operator as the chart's Deployment, from the
operator image built from this checkout; the trainer image under Argo's executor (argoexec built
from the controller's Argo module), with the security context the renderer writes; output in a
GCS emulator the pods reach. Nothing is faked: preemption is a pod deletion (SIGTERM through
Argo's emissary to the trainer), an app error is the trainer's own failure.

The runs are the example manifest (examples/vqvae.yaml), made small (a few dozen steps of a
32 px VQ-VAE) so that a run takes well under a minute of training on 2 cores.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from argo_ui import ArgoUI
from cluster import ROOT, Cluster
from kubernetes import client, watch
from mlops_trainers import storage
from operator_harness import ARGO, GROUP, PLURAL, VERSION, wait_for
from playwright.sync_api import Browser, Route
from realnode_support import ArgoServer, Bucket, RealNode, Release

pytestmark = pytest.mark.realnode

EXAMPLE = ROOT / "examples" / "vqvae.yaml"
# A trainer pod starts in ~20-40 s here (TensorFlow's import, the bundled sample's PNGs) and a
# tiny run trains for ~20-60 s; Argo waits 30 s (the rendered backoff) before each retry.
RUN_TIMEOUT_S = 420.0


# === Helpers ===


@dataclass
class Run:
    """One MLOps object applied with kubectl, and what it left."""

    name: str
    namespace: str
    cluster: Cluster
    bucket: Bucket

    def obj(self) -> dict[str, Any]:
        with self.cluster.api_client() as api:
            out: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name
            )
        return out

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.obj().get("status") or {}
        return status

    def wait_phase(self, *phases: str, timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            status = self.status()
            return status if status.get("phase") in phases else None

        try:
            return wait_for(f"{self.name} to be {'/'.join(phases)}", done, timeout=timeout, every=2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnostics()}") from None

    @property
    def run_id(self) -> str:
        return str(self.status()["runId"])

    def url(self, *parts: str) -> str:
        return storage.join(self.bucket.url, "runs", self.run_id, *parts)

    def workflows(self) -> list[dict[str, Any]]:
        with self.cluster.api_client() as api:
            items: list[dict[str, Any]] = client.CustomObjectsApi(
                api
            ).list_namespaced_custom_object(
                *ARGO, self.namespace, "workflows", label_selector=f"mlops.dev/name={self.name}"
            )["items"]
        return items

    def workflow(self) -> dict[str, Any]:
        (wf,) = self.workflows()
        return wf

    def pod_nodes(self) -> list[dict[str, Any]]:
        nodes = (self.workflow().get("status") or {}).get("nodes") or {}
        pods = [n for n in nodes.values() if n.get("type") == "Pod"]
        return sorted(pods, key=lambda n: n.get("startedAt") or "")

    def pods(self) -> list[client.V1Pod]:
        with self.cluster.api_client() as api:
            pods: list[client.V1Pod] = (
                client.CoreV1Api(api)
                .list_namespaced_pod(self.namespace, label_selector=f"mlops.dev/name={self.name}")
                .items
            )
        return pods

    def running_pod(self) -> client.V1Pod | None:
        for pod in self.pods():
            statuses = {c.name: c for c in pod.status.container_statuses or []}
            main = statuses.get("main")
            if pod.metadata.deletion_timestamp is None and main and main.state.running:
                return pod
        return None

    def status_file(self) -> dict[str, Any] | None:
        """The trainer's status.json (rewritten at each checkpoint), once the run has an id."""
        if "runId" not in self.status():
            return None
        try:
            value: dict[str, Any] = storage.read_json(self.url("status.json"))
        except (FileNotFoundError, ValueError):
            return None
        return value

    def diagnostics(self) -> str:
        parts = [f"status: {json.dumps(self.status(), indent=1)[:3000]}"]
        for wf in self.workflows():
            nodes = (wf.get("status") or {}).get("nodes") or {}
            parts.append(
                "workflow nodes: "
                + json.dumps(
                    [
                        {k: n.get(k) for k in ("type", "phase", "message", "outputs")}
                        for n in nodes.values()
                    ],
                    indent=1,
                )[:4000]
            )
        for pod in self.pods():
            parts.append(f"pod {pod.metadata.name}: {pod.status.phase} {pod.status.message}")
            logs = self.cluster.kubectl(
                "logs",
                pod.metadata.name,
                "-c",
                "main",
                f"-n={self.namespace}",
                "--tail=30",
                check=False,
            )
            parts.append(logs.stdout[-3000:] + logs.stderr[-500:])
        return "\n".join(parts)


def apply_example(
    cluster: Cluster,
    release: Release,
    bucket: Bucket,
    name: str,
    *,
    steps_per_epoch: int,
    epochs: int,
    checkpoint_every: int,
    **spec: Any,
) -> Run:
    """examples/vqvae.yaml, made small and pointed at the emulator, `kubectl apply`d."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["trainer"]["config"].update(steps_per_epoch=steps_per_epoch, reconstructions=4)
    doc["spec"].update(
        output=f"{bucket.url}/runs",
        epochs=epochs,
        checkpointEvery=checkpoint_every,
        # The real node: 2 CPUs, no GPU, not a spot node. Requests small enough for the few
        # runs that overlap (a trainer run's real use is ~1 GB and whatever CPU is free).
        resources={"cpu": "250m", "memory": "2Gi", "gpu": {"count": 0}},
        spot=False,
        **spec,
    )
    applied = cluster.kubectl(
        "apply", f"--namespace={release.namespace}", "-f", "-", input=yaml.safe_dump(doc)
    )
    assert f"mlops.mlops.dev/{name} created" in applied.stdout
    return Run(name, release.namespace, cluster, bucket)


def exec_python(cluster: Cluster, namespace: str, pod: str, container: str, code: str) -> Any:
    """Run Python in a running container (kubectl exec through the API server and kubelet)."""
    out = cluster.kubectl(
        "exec",
        pod,
        "-c",
        container,
        f"--namespace={namespace}",
        "--",
        "python",
        "-c",
        code,
        timeout=60,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# What a process sees of its own privileges, from inside the pod.
PRIVILEGES = """
import json, os
caps = {l.split(":")[0]: int(l.split()[1], 16) for l in open("/proc/self/status") if l.startswith("Cap")}
try:
    open("/probe", "w")
    root_writable = True
except OSError:
    root_writable = False
nnp = [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0]
seccomp = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")][0]
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "caps": caps,
                  "root_writable": root_writable, "no_new_privs": nnp, "seccomp": seccomp}))
"""


def assert_unprivileged(seen: dict[str, Any], uid: int) -> None:
    """``uid``: the one the pod's security context names (the chart's operator runs as 10001, a
    trainer as the image's 1000), so the kubelet applied it."""
    assert seen["uid"] == uid and seen["gid"] == uid, seen
    assert seen["caps"]["CapEff"] == 0 and seen["caps"]["CapPrm"] == 0, seen  # drop: [ALL]
    assert seen["caps"]["CapBnd"] == 0, seen
    assert seen["root_writable"] is False, seen  # readOnlyRootFilesystem
    assert seen["no_new_privs"] == "1", seen  # allowPrivilegeEscalation: false
    assert seen["seccomp"] == "2", seen  # seccompProfile RuntimeDefault (filter mode)


def attempt_log_tail(run: Run, attempt: int, lines: int = 40) -> str:
    """The end of the trainer's own log of one attempt, as far as it reached the bucket."""
    try:
        text = storage.read_text(run.url("logs", f"attempt-{attempt}.log"))
    except (FileNotFoundError, KeyError, ValueError) as exc:
        return f"(no attempt-{attempt}.log in the bucket: {exc!r})"
    return "\n".join(text.splitlines()[-lines:])


def read_metrics(run: Run) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(storage.read_text(run.url("metrics.csv")))))


class PodWatch:
    """Follows one pod until it is gone, keeping every state it was seen in, and its trainer's
    log (``kubectl logs -f`` with timestamps): the pod's own log dies with it, and a trainer
    that misses its grace period may not have copied its log to the bucket."""

    def __init__(self, cluster: Cluster, namespace: str, name: str, log: Path) -> None:
        self.seen: list[client.V1Pod] = []
        self.gone = threading.Event()
        self.log = log
        self._api = cluster.api_client()
        self._thread = threading.Thread(target=self._run, args=(namespace, name), daemon=True)
        self._thread.start()
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            self._logs = subprocess.Popen(
                [str(cluster.kubectl_path), "logs", "-f", "--timestamps", name, "-c", "main",
                 f"--namespace={namespace}"],
                stdout=out, stderr=subprocess.STDOUT, env=cluster.env(),
            )  # fmt: skip

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the trainer's log as followed (it ends when the container does)."""
        self.close()
        return self.log.read_text(errors="replace")[-chars:]

    def close(self) -> None:
        """Stop following (by its PID) once the container has ended, or after 10 s."""
        try:
            self._logs.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._logs.terminate()
            self._logs.wait(timeout=10)

    def _run(self, namespace: str, name: str) -> None:
        core = client.CoreV1Api(self._api)
        w = watch.Watch()
        try:
            for event in w.stream(
                core.list_namespaced_pod,
                namespace,
                field_selector=f"metadata.name={name}",
                timeout_seconds=300,
            ):
                self.seen.append(event["object"])
                if event["type"] == "DELETED":
                    break
        finally:
            self.gone.set()
            self._api.close()

    def main_terminated(self) -> client.V1ContainerStateTerminated | None:
        for pod in reversed(self.seen):
            for status in pod.status.container_statuses or []:
                if status.name == "main" and status.state.terminated:
                    return status.state.terminated
        return None


# === Tests ===


def test_operator_is_the_charts_deployment_pod(
    cluster: Cluster, real_node: RealNode, release: Release
) -> None:
    """The operator runs as the chart deploys it: a Deployment pod on the real node, its image
    built from this checkout, live (kopf's liveness endpoint), unprivileged as the chart says."""
    with cluster.api_client() as api:
        (pod,) = (
            client.CoreV1Api(api)
            .list_namespaced_pod(
                release.namespace, label_selector=f"app.kubernetes.io/instance={release.name}"
            )
            .items
        )
    assert pod.spec.node_name == real_node.name
    (container,) = pod.status.container_statuses
    assert container.ready and container.state.running, container
    assert container.image == real_node.images["operator"]
    assert container.restart_count == 0, cluster.kubectl(
        "logs", pod.metadata.name, f"-n={release.namespace}", "--previous", check=False
    ).stdout[-3000:]
    assert pod.spec.security_context.run_as_user == 10001  # the chart's default
    assert_unprivileged(
        exec_python(cluster, release.namespace, pod.metadata.name, "operator", PRIVILEGES), 10001
    )
    # Its startup handler ran and it logged in with the ServiceAccount token, in-cluster (the
    # `kubernetes` Service's ClusterIP, as on any cluster).
    wait_for(
        "the operator's startup log",
        lambda: (
            "Initial authentication has finished"
            in cluster.kubectl("logs", pod.metadata.name, f"-n={release.namespace}").stdout
        ),
        timeout=60,
    )
    logs = cluster.kubectl("logs", pod.metadata.name, f"-n={release.namespace}").stdout
    assert "mlops-operator started" in logs


@dataclass
class Trained:
    run: Run
    status: dict[str, Any]
    workflow: dict[str, Any]
    pod_name: str


@pytest.fixture(scope="module")
def trained(cluster: Cluster, release: Release, bucket: Bucket) -> Iterator[Trained]:
    """The example, applied with kubectl and trained to the end on a real pod."""
    run = apply_example(
        cluster,
        release,
        bucket,
        f"vqvae-{uuid.uuid4().hex[:4]}",
        steps_per_epoch=8,
        epochs=2,
        checkpoint_every=3,
    )
    status = run.wait_phase("Succeeded", "Failed")
    assert status["phase"] == "Succeeded", run.diagnostics()
    wf = run.workflow()
    (node,) = [n for n in wf["status"]["nodes"].values() if n["type"] == "Pod"]
    yield Trained(run, status, wf, node["id"])


def test_example_trains_on_a_real_pod_to_succeeded(trained: Trained, real_node: RealNode) -> None:
    run, status = trained.run, trained.status
    (node,) = [n for n in trained.workflow["status"]["nodes"].values() if n["type"] == "Pod"]
    assert node["hostNodeName"] == real_node.name
    assert node["outputs"]["exitCode"] == "0"
    # The summary output parameter, really reported by Argo's executor (wait container) from
    # the file the trainer wrote in its pod.
    (param,) = [p for p in node["outputs"]["parameters"] if p["name"] == "summary"]
    summary = json.loads(param["value"])
    assert summary["state"] == "succeeded" and summary["run_id"] == run.run_id
    record = storage.read_json(run.url("run.json"))
    assert record["state"] == "succeeded" and record["image"] == real_node.images["trainer"]
    # The status is the run's: metrics, latest checkpoint, progress.
    assert status["metrics"] == pytest.approx(record["final_metrics"])
    assert status["metrics"] == pytest.approx(summary["metrics"])
    assert status["latestCheckpoint"] == record["latest_checkpoint"] == summary["latest_checkpoint"]
    assert status["latestCheckpoint"].startswith(run.url("checkpoints") + "/")
    assert status["progress"] == "16/16", status
    assert status["preemptions"] == 0


def test_run_artifacts_are_in_the_bucket(trained: Trained) -> None:
    run = trained.run
    names = set(storage.list_dir(run.url()))
    assert {"checkpoints", "reconstructions", "tb", "metrics.csv", "run.json"} <= names, names
    checkpoint = trained.status["latestCheckpoint"]
    assert storage.list_dir(checkpoint), checkpoint
    pngs = storage.list_dir(run.url("reconstructions"))
    assert pngs == ["epoch-0001.png", "epoch-0002.png"], pngs
    assert storage.read_bytes(run.url("reconstructions", pngs[-1]))[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["global_step"]) for r in rows] == [8, 16]
    events = [n for n in storage.list_dir(run.url("tb")) if "tfevents" in n]
    assert events, storage.list_dir(run.url("tb"))
    assert storage.read_json(run.url("run.json"))["global_step"] == 16


def test_trainer_log_outlives_its_pod(cluster: Cluster, trained: Trained) -> None:
    """podGC OnPodSuccess deletes the pod, and with it `kubectl logs`; the log is in the bucket."""
    run = trained.run
    wait_for(
        "the succeeded pod to be garbage-collected",
        lambda: not [p for p in run.pods() if p.metadata.name == trained.pod_name],
        timeout=120,
    )
    gone = cluster.kubectl(
        "logs", trained.pod_name, "-c", "main", f"-n={run.namespace}", check=False
    )
    assert gone.returncode != 0
    assert "attempt-1.log" in storage.list_dir(run.url("logs"))
    text = storage.read_text(run.url("logs", "attempt-1.log"))
    assert run.run_id in text and "done" in text, text[-2000:]


@dataclass
class Preemption:
    """One trainer pod deleted mid-epoch, and what was seen of its end."""

    run: Run
    grace: int | None  # --grace-period of the deletion; None: the pod's own (Kubernetes' 30 s)
    before: dict[str, Any]  # the trainer's status.json seen just before the deletion
    pod: client.V1Pod | None = None
    watch: PodWatch | None = None
    deleted_at: float = 0.0

    @property
    def budget(self) -> int:
        return self.grace or 30


# Each preempted run checkpoints every this many steps, in two epochs of this many. Idle, this
# machine trains about 28 of them a second, and a deletion reaches the trainer some 2 s after
# its first checkpoint (the fixture's poll, then the kubelet): at 40 steps an epoch (2026-12-01)
# the default-grace run had reached step 40 when it stopped, half of its 80.
PREEMPT_CHECKPOINT_EVERY = 10
PREEMPT_STEPS_PER_EPOCH = 120


@pytest.fixture(scope="module")
def preempted(
    cluster: Cluster,
    release: Release,
    bucket: Bucket,
    real_node: RealNode,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Preemption]]:
    """Spot preemptions for real, with the pod's default grace period and with GKE Spot's 15 s:
    two runs of the example, each trainer pod deleted mid-epoch (both runs at once: their pod
    starts and Argo's 30 s retry backoff overlap). The test below checks what followed; the
    browser tests show the same runs in Argo's UI."""
    checkpoint_every = PREEMPT_CHECKPOINT_EVERY
    suffix = uuid.uuid4().hex[:4]
    cases = [
        Preemption(
            apply_example(
                cluster,
                release,
                bucket,
                f"spot-{grace or 'default'}-{suffix}",
                steps_per_epoch=PREEMPT_STEPS_PER_EPOCH,
                epochs=2,
                checkpoint_every=checkpoint_every,
                retries={"preemption": 3, "error": 0},
            ),
            grace,
            {},
        )
        for grace in (None, 15)
    ]

    def delete_when_checkpointed() -> bool:
        """Delete the pod of every run that has reached its first periodic checkpoint (mid
        epoch 1) since the last look; True once all are deleted. Both runs are
        watched at once: one after the other, the second could finish before its turn."""
        for case in cases:
            if case.watch is not None:
                continue
            run = case.run
            status = run.status_file()
            if not status or status["global_step"] < checkpoint_every:
                continue
            assert status["global_step"] < 2 * PREEMPT_STEPS_PER_EPOCH, status  # not done yet
            case.before = status
            case.pod = run.running_pod()
            assert case.pod is not None, run.diagnostics()
            assert case.pod.spec.node_name == real_node.name
            assert case.pod.spec.termination_grace_period_seconds == 30  # Kubernetes' default
            name = case.pod.metadata.name
            case.watch = PodWatch(cluster, run.namespace, name, logs / f"{name}.log")
            args = ["delete", "pod", name, f"--namespace={run.namespace}"]
            if case.grace is not None:
                args.append(f"--grace-period={case.grace}")
            case.deleted_at = time.time()
            cluster.kubectl(*args, "--wait=false")
        return all(case.watch is not None for case in cases)

    logs = tmp_path_factory.mktemp("preempted-logs")
    try:
        wait_for("each run's first periodic checkpoint", delete_when_checkpointed,
                 timeout=RUN_TIMEOUT_S, every=1)  # fmt: skip
        yield cases
    finally:
        # A failed assertion on one case leaves the others' log followers running.
        for case in cases:
            if case.watch is not None:
                case.watch.close()


def test_deleted_pods_checkpoint_and_the_retries_resume(
    preempted: list[Preemption], real_node: RealNode
) -> None:
    """Each deleted pod: kubelet's SIGTERM goes through Argo's emissary to the trainer, which
    writes a complete checkpoint within the grace period and exits 143; Argo retries; the new
    pod resumes from that checkpoint, and at most one checkpoint interval of steps is lost."""
    checkpoint_every = PREEMPT_CHECKPOINT_EVERY
    cases = preempted
    for case in cases:
        run, follow = case.run, case.watch
        assert follow is not None
        assert follow.gone.wait(case.budget + 60), f"{run.name}: the pod was not gone in time"
        terminated = follow.main_terminated()
        assert terminated is not None, [p.status for p in follow.seen[-2:]]
        # The trainer's "preempted, checkpointed". When it is not, say which run, how long it
        # had, and how far its own log (copied to the bucket at each checkpoint) got.
        # Where the grace period went, from the trainer's own log as followed (timestamped by
        # the kubelet): printed for every deleted pod, asserted on below.
        deleted = datetime.fromtimestamp(case.deleted_at, UTC).isoformat()
        tail = follow.log_tail()
        print(f"{run.name}: deleted at {deleted}, grace {case.budget} s; {terminated}\n{tail}")
        assert terminated.exit_code == 143, (
            f"{run.name} (grace {case.budget} s, deleted at {deleted}): {terminated}\n"
            f"followed log:\n{tail}\nbucket log:\n{attempt_log_tail(run, 1)}"
        )
        took = terminated.finished_at.timestamp() - case.deleted_at
        assert took < case.budget, f"{run.name}: {took:.1f}s of a {case.budget}s grace period"
        status = run.wait_phase("Succeeded", "Failed")
        assert status["phase"] == "Succeeded", run.diagnostics()
        nodes = run.pod_nodes()
        record = storage.read_json(run.url("run.json"))
        if status["preemptions"] != 1 or len(nodes) != 2:
            # What Argo recorded of each attempt (what the operator counted from) and every
            # state the deleted pod was seen in, whole (an assertion message is cut short).
            print(json.dumps({"status": status, "nodes": nodes}, indent=1, default=str))
            for pod in follow.seen:
                print(pod.metadata.resource_version, pod.metadata.deletion_timestamp, pod.status)
        assert record["attempt"] == 2
        assert status["preemptions"] == 1, (status, nodes)
        # Argo's record: a failed attempt and its retry; or, when the controller looked for the
        # node's pod after it was gone but before it had seen it fail, one node whose pod Argo
        # made again at once (no backoff). The trainer's attempt count says it ran twice, and
        # the operator counts the unseen attempt (views.unseen_attempts).
        assert len(nodes) in (1, 2), nodes
        if len(nodes) == 2:
            assert nodes[0]["phase"] in ("Failed", "Error"), nodes[0]
        assert nodes[-1]["phase"] == "Succeeded" and nodes[-1]["hostNodeName"] == real_node.name
        # Where the first pod stopped, from its own log (kept in the bucket, attempt by attempt:
        # status.json says "preempted" only until the retry rewrites it, a race under load).
        first_log = storage.read_text(run.url("logs", "attempt-1.log"))
        stopped = re.search(r"stopped at global step (\d+): exit 143", first_log)
        assert stopped, first_log[-2000:]
        stopped_at = int(stopped.group(1))
        assert stopped_at >= case.before["global_step"]
        assert f"step-{stopped_at:010d}" in first_log  # the checkpoint SIGTERM wrote
        # The retry resumed from exactly that checkpoint (the trainer loads complete ones only):
        # no step lost (SIGTERM checkpointed at once), at most one interval in any case.
        assert record["resumed_from"]["step"] == stopped_at, record["resumed_from"]
        assert record["resumed_from"]["checkpoint"].endswith(f"step-{stopped_at:010d}")
        assert 0 <= stopped_at - int(record["resumed_from"]["step"]) <= checkpoint_every
        assert record["global_step"] == 2 * PREEMPT_STEPS_PER_EPOCH
        rows = read_metrics(run)
        assert [int(r["epoch"]) for r in rows] == [1, 2]
        assert [int(r["global_step"]) for r in rows] == [
            PREEMPT_STEPS_PER_EPOCH, 2 * PREEMPT_STEPS_PER_EPOCH
        ]  # fmt: skip
        assert storage.read_json(run.url("attempts.json"))["attempts"] == 2


def test_operator_pod_killed_mid_run(
    cluster: Cluster, release: Release, bucket: Bucket, real_node: RealNode
) -> None:
    """The operator's pod is deleted while a run trains; the Deployment starts another, which
    picks the run up: status catches up, nothing is created twice. The trainer pod is checked
    from inside meanwhile: non-root, read-only root, no capabilities, and still training."""
    run = apply_example(
        cluster,
        release,
        bucket,
        f"opkill-{uuid.uuid4().hex[:4]}",
        steps_per_epoch=60,
        epochs=2,
        checkpoint_every=10,
    )
    # The trainer, not the status, says it trains: an operator slowed by a loaded machine may
    # report Queued then Succeeded for a short run, which is no error.
    wait_for(
        f"{run.name}'s first periodic checkpoint",
        lambda: (s := run.status_file()) and s["global_step"] >= 10 and s,
        timeout=RUN_TIMEOUT_S,
        every=1,
    )
    trainer = wait_for("a running trainer pod", run.running_pod, timeout=RUN_TIMEOUT_S)
    assert_unprivileged(
        exec_python(cluster, run.namespace, trainer.metadata.name, "main", PRIVILEGES), 1000
    )
    # The rendered security context, as the API server holds it, is what was just observed.
    (main,) = [c for c in trainer.spec.containers if c.name == "main"]
    assert main.security_context.read_only_root_filesystem is True
    assert main.security_context.capabilities.drop == ["ALL"]
    run_id = run.run_id

    selector = f"app.kubernetes.io/instance={release.name}"
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        (old,) = core.list_namespaced_pod(release.namespace, label_selector=selector).items
        core.delete_namespaced_pod(old.metadata.name, release.namespace)

        def new_operator_ready() -> client.V1Pod | None:
            for pod in core.list_namespaced_pod(release.namespace, label_selector=selector).items:
                statuses = pod.status.container_statuses or []
                if pod.metadata.name != old.metadata.name and statuses and statuses[0].ready:
                    return pod
            return None

        new = wait_for("the Deployment's new operator pod", new_operator_ready, timeout=180)
    assert new.spec.node_name == real_node.name
    # While the operator was away the trainer went on: its pod is the same one.
    status = run.wait_phase("Succeeded", "Failed")
    assert status["phase"] == "Succeeded", run.diagnostics()
    assert status["runId"] == run_id and status["preemptions"] == 0
    assert status["progress"] == "120/120"
    assert len(run.workflows()) == 1
    (node,) = run.pod_nodes()  # one pod, the one that was checked: no retry, no second run
    assert node["phase"] == "Succeeded" and node["hostNodeName"] == real_node.name
    with cluster.api_client() as api:
        maps = (
            client.CoreV1Api(api)
            .list_namespaced_config_map(run.namespace, label_selector=f"mlops.dev/name={run.name}")
            .items
        )
        events = (
            client.CoreV1Api(api)
            .list_namespaced_event(run.namespace, field_selector=f"involvedObject.name={run.name}")
            .items
        )
    assert len(maps) == 1
    submitted = [e for e in events if e.reason == "RunSubmitted"]
    assert sum(e.count or 1 for e in submitted) == 1, [(e.reason, e.count) for e in events]
    assert storage.read_json(run.url("attempts.json"))["attempts"] == 1


@dataclass
class Broken:
    no_driver: Run
    missing: Run


@pytest.fixture(scope="module", autouse=True)
def broken(cluster: Cluster, release: Release, bucket: Bucket) -> Broken:
    """Two broken manifests, applied first so that they fail in the background while the other
    tests run (their pod starts and Argo's 30 s retry backoff overlap the rest on 2 cores)."""
    suffix = uuid.uuid4().hex[:4]
    common: dict[str, Any] = {
        "steps_per_epoch": 4,
        "epochs": 1,
        "checkpoint_every": 2,
        "retries": {"preemption": 3, "error": 1},
    }
    return Broken(
        no_driver=apply_example(
            cluster,
            release,
            bucket,
            f"nodriver-{suffix}",
            data="s3://no-such-bucket/frames/",
            **common,
        ),
        missing=apply_example(
            cluster,
            release,
            bucket,
            f"missing-{suffix}",
            data=f"{bucket.url}/no-such-folder/",
            **common,
        ),
    )


def test_app_errors_fail_with_the_trainers_message(broken: Broken) -> None:
    """Data behind a protocol the trainer image has no driver for is an app error: retried
    exactly `retries.error` times (the trainer keeps that budget itself), then Failed. Data that
    does not exist is the user's to fix: never retried. Both end with the trainer's own message
    in status."""
    for run in (broken.no_driver, broken.missing):
        status = run.wait_phase("Succeeded", "Failed")
        assert status["phase"] == "Failed", run.diagnostics()
        assert status["preemptions"] == 0, status
        said = storage.read_json(run.url("status.json"))
        assert said["state"] == "failed", said
        # The trainer's own words, verbatim, in the MLOps status and its Ready condition.
        assert said["error"] in status["message"], (said, status["message"])
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert said["error"] in ready["message"]

    pods = broken.no_driver.pod_nodes()
    assert [p["outputs"]["exitCode"] for p in pods] == ["1", "2"], pods  # one retry = error: 1
    assert "s3fs" in broken.no_driver.status()["message"]
    attempts = storage.read_json(broken.no_driver.url("attempts.json"))
    assert attempts == {"attempts": 2, "app_errors": 2}

    (pod,) = broken.missing.pod_nodes()
    assert pod["outputs"]["exitCode"] == "2"  # fatal: retrying cannot make the data appear
    assert "does not exist" in broken.missing.status()["message"]


# === Argo's UI and CLI: what a user watching these runs sees ===


@pytest.fixture(scope="module")
def argo_ui(
    argo_server: ArgoServer, chromium_browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> ArgoUI:
    return ArgoUI(chromium_browser, argo_server.url, tmp_path_factory.mktemp("argo-ui"))


@dataclass
class Rerun:
    """A second run of the `trained` object (`mlops.dev/rerun`), caught while its pod runs."""

    first: str  # the first run's Workflow
    second: str  # the rerun's Workflow
    second_run_id: str


@pytest.fixture(scope="module")
def rerun(cluster: Cluster, trained: Trained) -> Rerun:
    run = trained.run
    first = trained.workflow["metadata"]["name"]
    cluster.kubectl(
        "annotate", "mlops", run.name, "mlops.dev/rerun=2", "--overwrite", f"-n={run.namespace}"
    )

    def second_workflow() -> dict[str, Any] | None:
        return next((w for w in run.workflows() if w["metadata"]["name"] != first), None)

    second = wait_for("the rerun's Workflow", second_workflow, timeout=120)
    name = second["metadata"]["name"]

    def its_pod() -> client.V1Pod | None:
        pod = run.running_pod()
        labels = pod.metadata.labels if pod is not None else {}
        return pod if labels.get("workflows.argoproj.io/workflow") == name else None

    # Returned once its trainer pod runs: `argo logs` needs the pod.
    wait_for("the rerun's trainer pod running", its_pod, timeout=RUN_TIMEOUT_S, every=1)
    return Rerun(first, name, second["metadata"]["labels"]["mlops.dev/run-id"])


def argo(server: ArgoServer, cluster: Cluster, *args: str, timeout: float = 60) -> str:
    """The argo CLI, as a user runs it: with the cluster's kubeconfig (no argo-server needed)."""
    proc = subprocess.run(
        [str(server.cli), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
    )
    assert proc.returncode == 0, (
        f"argo {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    )
    return proc.stdout


def test_argo_cli_lists_gets_and_shows_the_logs_of_our_runs(
    cluster: Cluster, trained: Trained, rerun: Rerun, argo_server: ArgoServer
) -> None:
    """`argo list -l mlops.dev/name=…` finds every run of one object, `argo get` shows a run,
    `argo logs` the trainer's log while its pod exists (the rerun's, caught running)."""
    run = trained.run
    ns = f"-n={run.namespace}"
    listed = argo(argo_server, cluster, "list", ns, f"-l=mlops.dev/name={run.name}", "-o=name")
    assert sorted(listed.split()) == sorted([rerun.first, rerun.second])
    got = json.loads(argo(argo_server, cluster, "get", rerun.first, ns, "-o=json"))
    assert got["status"]["phase"] == "Succeeded"
    assert got["metadata"]["labels"]["mlops.dev/run-id"] == trained.status["runId"]
    shown = argo(argo_server, cluster, "get", rerun.first, ns)
    assert re.search(r"^Status:\s+Succeeded$", shown, re.MULTILINE), shown
    # Followed (-f) from while the pod runs until its trainer exits: the whole log.
    logs = argo(
        argo_server, cluster, "logs", rerun.second, ns, "-c=main", "-f", timeout=RUN_TIMEOUT_S
    )
    assert rerun.second_run_id in logs and "done" in logs, logs[-3000:]


def _fraction(progress: str) -> tuple[int, int]:
    done, total = progress.split("/")
    return int(done), int(total)


@dataclass
class Finished:
    """A run as the browser tests look at it: finished, its status and its Workflow."""

    run: Run
    status: dict[str, Any]
    workflow: dict[str, Any]


@pytest.fixture(scope="module")
def preempted_run(preempted: list[Preemption]) -> Finished:
    """A preempted run (its pod deleted once, then retried) that Argo shows as a retry, once
    it has finished: Argo sometimes makes the deleted pod again for the same node instead
    (test_deleted_pods_checkpoint_and_the_retries_resume), which leaves no retry to show."""
    finished = []
    for case in preempted:
        status = case.run.wait_phase("Succeeded", "Failed")
        assert status["phase"] == "Succeeded", case.run.diagnostics()
        finished.append(Finished(case.run, status, case.run.workflow()))
    for one in finished:
        if len(one.run.pod_nodes()) == 2:
            return one
    pytest.skip("Argo made every deleted pod again in place: no run shows a retry")


@pytest.mark.browser
def test_argo_ui_lists_the_run_with_its_title_phase_and_progress(
    argo_ui: ArgoUI, preempted_run: Finished
) -> None:
    run, status, wf = preempted_run.run, preempted_run.status, preempted_run.workflow
    page = argo_ui.page()
    argo_ui.open_list(page, run.namespace)
    argo_ui.shot(page, "workflow-list")
    (row,) = [r for r in argo_ui.rows(page) if r.workflow == wf["metadata"]["name"]]
    # The title annotation, rendered (Markdown bold): the trainer and the MLOps object.
    assert row.title == f"vqvae · {run.name}", row
    assert row.description == f"run {status['runId']} → {status['output']}", row
    assert row.status == "success", row
    # Argo's progress adds up the attempts' own, each a sample: its executor reads the trainer's
    # progress file every few seconds and not again when the container exits, so a node shows
    # N/steps as far as it was read, or Argo's own 0/1 (running) or 1/1 (succeeded) when nothing
    # was read in time (CI of 47c2e93 saw 80/81; CI of 58b78b1, on a faster CPU that trained the
    # 80 steps between two reads, 0/1 and 1/1). The operator's is the run's own, exact.
    assert row.progress == wf["status"]["progress"], (row, wf["status"]["progress"])
    nodes = [n for n in wf["status"]["nodes"].values() if n.get("type") == "Pod"]
    fractions = [_fraction(n["progress"]) for n in nodes]
    done, total = sum(d for d, _ in fractions), sum(t for _, t in fractions)
    assert row.progress == f"{done}/{total}", (row, [n["progress"] for n in nodes])
    assert len(nodes) == 2, nodes
    steps = 2 * PREEMPT_STEPS_PER_EPOCH
    assert all(f in ((0, 1), (1, 1)) or (f[1] == steps and f[0] <= steps) for f in fractions), nodes
    assert status["progress"] == f"{steps}/{steps}", status
    assert row.run == status["runId"], row


@pytest.mark.browser
def test_argo_ui_run_page_shows_the_retry_the_metrics_and_the_links(
    argo_ui: ArgoUI, preempted_run: Finished
) -> None:
    run, status = preempted_run.run, preempted_run.status
    name = preempted_run.workflow["metadata"]["name"]
    page = argo_ui.page()
    argo_ui.open_workflow(page, run.namespace, name)
    nodes = argo_ui.nodes(page)
    # The retry node and each attempt: the preempted pod, then the one that finished.
    assert nodes[name] == "Succeeded", nodes
    assert nodes[f"{name}(0)"] in ("Failed", "Error"), nodes
    assert nodes[f"{name}(1)"] == "Succeeded", nodes
    argo_ui.shot(page, "workflow-graph")

    # The finished attempt's panel: its output parameter `summary`, the trainer's final metrics.
    argo_ui.click_node(page, f"{name}(1)")
    page.get_by_text("INPUTS/OUTPUTS").first.click()
    page.get_by_text("summary", exact=True).first.wait_for()
    text = page.inner_text("body")
    for metric in status["metrics"]:
        assert f'"{metric}"' in text, (metric, text[-3000:])
    argo_ui.shot(page, "workflow-node-outputs")

    # The links open the run's own folder and TensorBoard (answered here: this machine reaches
    # neither the Cloud console nor a TensorBoard). A request carries no #fragment.
    opened: list[str] = []

    def answer(route: Route) -> None:
        opened.append(route.request.url)
        route.fulfill(body="ok")

    page.route(
        re.compile(r"^(https://console\.cloud\.google\.com/|http://127\.0\.0\.1:6006/)"), answer
    )
    folder = status["output"].removeprefix("gs://")
    for button, expected in (
        ("OUTPUT FOLDER", f"https://console.cloud.google.com/storage/browser/{folder}"),
        ("TENSORBOARD", f"http://127.0.0.1:6006/?runFilter={status['runId']}"),
    ):
        argo_ui.open_workflow(page, run.namespace, name)
        page.get_by_role("button", name=button).click()
        wait_for(f"the {button} link to open", lambda: opened, timeout=30)
        assert opened.pop() == expected


@pytest.mark.browser
def test_argo_ui_label_filter_finds_every_run_of_one_object(
    argo_ui: ArgoUI, trained: Trained, rerun: Rerun, preempted: list[Preemption]
) -> None:
    run = trained.run
    page = argo_ui.page()
    # Unfiltered, the namespace holds other objects' runs too ...
    argo_ui.open_list(page, run.namespace)
    everything = {r.workflow for r in argo_ui.rows(page)}
    others = {c.run.workflow()["metadata"]["name"] for c in preempted}
    assert others <= everything, (others, everything)
    # ... the label filter keeps exactly this object's runs: the first and the rerun.
    argo_ui.open_list(page, run.namespace, label=f"mlops.dev/name={run.name}")
    # Rows, titles and Run column all at once: the list may show its rows a moment before their
    # name cells (a CI run read the right rows with empty titles).
    want = (
        {rerun.first, rerun.second},
        {f"vqvae · {run.name}"},
        {trained.status["runId"], rerun.second_run_id},
    )
    seen: list[object] = []

    def shown() -> bool:
        rows = argo_ui.rows(page)
        seen[:] = [({r.workflow for r in rows}, {r.title for r in rows}, {r.run for r in rows})]
        return seen[0] == want

    try:
        wait_for("the filtered list", shown, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; wanted {want}, the list showed {seen}") from None
    argo_ui.shot(page, "workflow-list-label-filter")
