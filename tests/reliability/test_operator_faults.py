"""Operator faults and load, against the real API server and Argo of the local cluster.

* The operator SIGKILLed at random points while 50 manifests are being reconciled, several
  times, then restarted: exactly one ConfigMap and one Workflow per run, none orphaned, every
  status right in the end.
* The API server restarted while the operator runs, at the worst moment: a trainer pod has just
  ended and Argo has not written that down yet. The operator reconnects, and gets Argo to
  record the end (Argo itself would look again only 20 min later).
* 200 MLOps objects applied at once: all reconciled, none lost, no cross-talk; the operator's
  peak RSS is printed (and bounded).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import record_pid
from kubernetes import client
from operator_harness import CRD, GROUP, PLURAL, VERSION, Env, Operator, wait_for

pytestmark = pytest.mark.e2e

SUBMITTED = ("Queued", "Running", "Succeeded")


@pytest.fixture
def env(cluster: Any) -> Iterator[Env]:
    api = cluster.api_client()
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    namespace = f"rel-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "mlops-trainer"}})
    # Queues wide enough that Argo runs everything at once: this suite is about the operator.
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "mlops-queues"}, "data": {"wide": "500", "gpu": "1"}}
    )
    wait_for(
        "the MLOps CRD to serve",
        lambda: (
            client.CustomObjectsApi(api).list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL
            )
            is not None
        ),
    )
    yield Env(api, namespace)
    core.delete_namespace(namespace)
    api.close()


def _operator(cluster: Any, env: Env, log: Path) -> Operator:
    return Operator(cluster.kubeconfig, log, args=["--standalone", f"--namespace={env.ns}"])


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _check_exactly_one_child_each(env: Env, names: list[str]) -> dict[str, int]:
    """Every run has its one ConfigMap and one Workflow, owned by it; nothing else exists."""
    objects = {
        o["metadata"]["name"]: o
        for o in env.custom.list_namespaced_custom_object(GROUP, VERSION, env.ns, PLURAL)["items"]
    }
    uids = {o["metadata"]["uid"]: n for n, o in objects.items()}
    cms = env.config_maps()
    wfs = env.workflows()
    per_name: dict[str, list[int]] = {n: [0, 0] for n in names}
    for cm in cms:
        (owner,) = cm.metadata.owner_references
        assert owner.uid in uids, f"orphaned ConfigMap {cm.metadata.name}"
        per_name[uids[owner.uid]][0] += 1
        run = yaml.safe_load(cm.data["run.yaml"])
        assert run["name"] == uids[owner.uid], "a ConfigMap holds another object's run"
    for wf in wfs:
        (owner,) = wf["metadata"]["ownerReferences"]
        assert owner["uid"] in uids, f"orphaned Workflow {wf['metadata']['name']}"
        per_name[uids[owner["uid"]]][1] += 1
    for name, (n_cm, n_wf) in per_name.items():
        assert (n_cm, n_wf) == (1, 1), f"{name}: {n_cm} ConfigMaps, {n_wf} Workflows"
        status = objects[name]["status"]
        assert status["configMap"] == f"{status['runId']}-config"
        assert status["workflow"] == status["runId"]
    return {"configmaps": len(cms), "workflows": len(wfs)}


def test_operator_killed_at_random_points_while_reconciling_50(
    cluster: Any, env: Env, tmp_path: Path, faults: Any
) -> None:
    rng = random.Random(7)
    names = [f"fault-{i:02d}" for i in range(50)]
    operator = _operator(cluster, env, tmp_path / "operator.log")
    operator.start()
    applier = threading.Thread(
        target=lambda: [env.apply(env.manifest(n, seed=i)) for i, n in enumerate(names)]
    )
    applier.start()
    kills = 0
    try:
        for _ in range(5):
            time.sleep(rng.uniform(0.2, 2.5))  # somewhere inside the reconciles
            operator.stop(signal.SIGKILL)
            kills += 1
            operator.start()
        applier.join(timeout=120)
        for name in names:
            wait_for(
                f"{name} submitted",
                lambda n=name: env.phase_is(n, *SUBMITTED),
                timeout=180,
            )
        counts = _check_exactly_one_child_each(env, names)
        assert counts == {"configmaps": 50, "workflows": 50}
        for name in names:
            wait_for(f"{name} Succeeded", lambda n=name: env.phase_is(n, "Succeeded"), timeout=300)
        env.delete_all()
    finally:
        operator.stop()
    faults.record(
        "operator SIGKILL during 50 reconciles", tried=kills, survived=kills, lost="0 runs"
    )


def _restart(cluster: Any, component: str) -> None:
    """Stop ``component`` by its PID (from the cluster's pid file) and start it again with the
    same command line, as a crashed and restarted control-plane process would be."""
    pid_file = cluster.state_dir / "pids" / f"{component}.pid"
    pid = int(pid_file.read_text())
    argv = [
        a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    ]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    # Started the way up.sh starts it (setsid, in the background of a shell that then exits),
    # so it is nobody's child here: no zombie when down.sh stops it later. The argv is passed
    # as positional arguments ("$@"), never interpreted by the shell.
    started = subprocess.run(
        ["bash", "-c", 'setsid "$@" >>"$MLOPS_LOG" 2>&1 </dev/null & echo $!', component, *argv],
        env={**os.environ, "MLOPS_LOG": str(cluster.state_dir / "logs" / f"{component}.log")},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    record_pid(cluster.state_dir, component, int(started.stdout.strip()))


def test_api_server_restart_operator_catches_up(
    cluster: Any, env: Env, tmp_path: Path, faults: Any
) -> None:
    operator = _operator(cluster, env, tmp_path / "operator.log")
    operator.start()
    try:
        env.apply(env.manifest("before"))
        # Argo looks at a pod event 10 s later (its requeue delay): in that window, its write of
        # the ended attempt fails on the stopped API server, and Argo (3.7 and 4.0 alike) does
        # not retry the write; nothing else changes, so it would look again only at its 20-min
        # resync. The operator's resync sees the pod ended while Argo shows it running, and
        # touches the Workflow so that Argo reconciles it (ArgoNudged). Restarting at any other
        # moment tests less: a pod that ends during the outage is reported after it.
        wait_for(
            "before's pod ended while Argo still shows it running",
            lambda: _ended_not_recorded(env, "before"),
            timeout=120,
            every=0.1,
        )
        _restart(cluster, "kube-apiserver")
        wait_for("the API server back", lambda: _ready(env), timeout=180)
        # Applied after the restart: only an operator whose watch reconnected sees it.
        env.apply(env.manifest("after"))
        with env.explained("before", "after"):
            wait_for("after Succeeded", lambda: env.phase_is("after", "Succeeded"), timeout=240)
            wait_for("before Succeeded", lambda: env.phase_is("before", "Succeeded"), timeout=240)
        assert operator.healthy()
        assert "ArgoNudged" in env.events("before")
        _check_exactly_one_child_each(env, ["before", "after"])
        env.delete_all()
    finally:
        operator.stop()
    faults.record("API server restart under a running operator", tried=1, survived=1)


def _ended_not_recorded(env: Env, name: str) -> bool:
    """A trainer pod of ``name`` has ended, and its Workflow's node for it is still running."""
    nodes = {
        node_id: node.get("phase")
        for wf in env.workflows(name)
        for node_id, node in ((wf.get("status") or {}).get("nodes") or {}).items()
    }
    return any(
        pod.status.phase in ("Succeeded", "Failed")
        and nodes.get((pod.metadata.annotations or {}).get("workflows.argoproj.io/node-id"))
        in ("Pending", "Running")
        for pod in env.pods(name)
    )


def _ready(env: Env) -> bool:
    try:
        env.names()
    except Exception:
        return False
    return True


def test_200_at_once_none_lost_bounded_memory(
    cluster: Any, env: Env, tmp_path: Path, faults: Any
) -> None:
    names = [f"load-{i:03d}" for i in range(200)]
    operator = _operator(cluster, env, tmp_path / "operator.log")
    operator.start()
    try:
        assert operator.proc is not None
        start = time.monotonic()
        threads = [
            threading.Thread(
                target=lambda part=part: [
                    env.apply(env.manifest(n, seed=int(n[-3:]), epochs=1 + int(n[-3:]) % 7))
                    for n in part
                ]
            )
            for part in (names[i::4] for i in range(4))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        for name in names:
            wait_for(f"{name} submitted", lambda n=name: env.phase_is(n, *SUBMITTED), timeout=600)
        took = time.monotonic() - start
        counts = _check_exactly_one_child_each(env, names)
        assert counts == {"configmaps": 200, "workflows": 200}
        for cm in env.config_maps():
            run = yaml.safe_load(cm.data["run.yaml"])
            i = int(run["name"][-3:])
            assert (run["seed"], run["epochs"]) == (i, 1 + i % 7), "cross-talk"
        peak = _peak_rss_mib(operator.proc.pid)
        print(f"\n200 MLOps reconciled in {took:.1f} s; operator peak RSS {peak:.0f} MiB")
        assert peak < 400, f"operator peak RSS {peak:.0f} MiB"
        env.delete_all(timeout=600)
    finally:
        operator.stop()
    faults.record(
        f"load: 200 MLOps at once (peak RSS {peak:.0f} MiB, {took:.0f} s)",
        tried=200,
        survived=200,
        lost="0",
    )
