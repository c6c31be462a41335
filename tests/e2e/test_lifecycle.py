"""The operator's lifecycle on ordinary cluster events (issue: exactly one run per spec change).

Restart and upgrade, Argo's TTL, delete + re-apply, long and awkward names, other namespaces,
foreign children, onChange and the queue, a status nobody else can overwrite, deletion with
production timeouts. Each test says which point of the issue it covers; every one failed on
the operator before the rewrite (``MLOPS_E2E_OPERATOR_SRC=<old checkout>`` runs them there).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import LONG_PODS, ON_CPU, OperatorFactory, make_namespace
from kubernetes import client
from operator_harness import Env, end_pod, wait_for

pytestmark = pytest.mark.e2e

FINAL = ("Succeeded", "Failed", "Stopped")


@pytest.fixture(scope="module")
def env(cluster: Any, api: client.ApiClient, mlops_crd: None) -> Iterator[Env]:
    namespace_env = make_namespace(cluster, api, "e2e-life")
    yield namespace_env
    client.CoreV1Api(api).delete_namespace(namespace_env.ns)


def _run(env: Env, name: str, timeout: float = 120) -> dict[str, Any]:
    """Wait until ``name`` has a submitted run; its status."""
    return wait_for(
        f"{name} submitted",
        lambda: (s := env.status(name)).get("runId") and env.workflows(name) and s,
        timeout=timeout,
    )


def _done(env: Env, name: str, timeout: float = 180) -> dict[str, Any]:
    return wait_for(f"{name} finished", lambda: env.phase_is(name, *FINAL), timeout=timeout)


def _hold(what: str, check: Any, seconds: float, every: float = 1.0) -> None:
    """Assert that ``check()`` stays true for ``seconds`` (a thing that must not happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), what
        time.sleep(every)


# --- 1. restart and upgrade start nothing -------------------------------------------------------


def test_restart_with_a_new_default_image_starts_no_run(
    env: Env, start_operator: OperatorFactory
) -> None:
    """An operator release that changes the default trainer image (or any default) is an
    upgrade: existing objects keep their run, nothing is trained again."""
    op = start_operator(env, env_vars={"MLOPS_DEFAULT_IMAGE": "docker.io/local/trainer:v1"})
    env.apply(env.manifest("upgrade"))
    first = _done(env, "upgrade")
    assert first["phase"] == "Succeeded", first
    (wf,) = env.workflows("upgrade")
    op.stop()
    upgraded = start_operator(env, env_vars={"MLOPS_DEFAULT_IMAGE": "docker.io/local/trainer:v2"})
    # A new object proves the upgraded operator is at work (its resume pass has run too).
    env.apply(env.manifest("upgrade-probe"))
    _run(env, "upgrade-probe")
    _hold(
        "no second run of an unchanged object after the upgrade",
        lambda: len(env.workflows("upgrade")) == 1,
        10,
    )
    after = env.status("upgrade")
    assert (after["runId"], after["phase"]) == (first["runId"], "Succeeded")
    assert env.workflows("upgrade")[0]["metadata"]["uid"] == wf["metadata"]["uid"]
    assert upgraded.healthy()


# --- 2. a finished run stays finished ---------------------------------------------------------------


def test_finished_run_whose_workflow_is_gone_is_not_resubmitted(
    env: Env, start_operator: OperatorFactory
) -> None:
    op = start_operator(env)
    env.apply(env.manifest("ttl"))
    done = _done(env, "ttl")
    assert done["phase"] == "Succeeded"
    (wf,) = env.workflows("ttl")
    # What Argo's TTL controller does seven days later: delete the finished Workflow.
    env.custom.delete_namespaced_custom_object(
        "argoproj.io", "v1alpha1", env.ns, "workflows", wf["metadata"]["name"]
    )
    wait_for("the Workflow gone", lambda: not env.workflows("ttl"))
    op.stop()
    start_operator(env)  # the restart that used to resubmit it
    env.apply(env.manifest("ttl-probe"))
    _run(env, "ttl-probe")
    _hold("no resubmitted run", lambda: not env.workflows("ttl"), 10)
    after = env.status("ttl")
    assert (after["phase"], after["runId"]) == ("Succeeded", done["runId"])


# --- 3. names at every boundary ---------------------------------------------------------------------

BOUNDARY_NAMES = [
    "a",
    "b" * 50 + "-c",  # 51st character '-': the run id keeps 51 characters of the name
    "b" * 50 + ".c",
    "b" * 61 + "-c",  # 62nd
    "b" * 61 + ".cc",
    "b" * 62 + "-c",  # 63rd: the label value used to end with '-' (invalid selector)
    "b" * 62 + ".c",
    "b" * 62,
    "b" * 63,
    "b" * 63 + "-c",  # 64th
    "b" * 64,
    ("b" * 62 + ".") * 4 + "b",  # 253: the longest name Kubernetes allows
]


def test_names_of_every_length_run_and_can_be_deleted(
    env: Env, start_operator: OperatorFactory
) -> None:
    start_operator(env)
    for name in BOUNDARY_NAMES:
        env.apply(env.manifest(name))
    runs = {}
    for name in BOUNDARY_NAMES:
        status = _done(env, name)
        assert status["phase"] == "Succeeded", (len(name), status)
        runs[name] = status["runId"]
        (wf,) = env.workflows(name)
        assert len(wf["metadata"]["name"]) <= 63
        assert len(wf["metadata"]["labels"]["mlops.dev/name"]) <= 63
    assert len(set(runs.values())) == len(BOUNDARY_NAMES), "every object has its own run"
    uids = {name: env.uid(name) for name in BOUNDARY_NAMES}
    for name in BOUNDARY_NAMES:
        env.delete(name)
    wait_for(
        "every object deleted (no finalizer stuck)",
        lambda: not set(BOUNDARY_NAMES) & set(env.names()),
        timeout=120,
    )
    for name, uid in uids.items():
        wait_for(f"{len(name)}-char name's children GC'd", lambda u=uid: not env.workflows(uid=u))


# --- 4. run ids never collide ------------------------------------------------------------------------


def test_objects_never_share_a_run_or_an_output_folder(
    cluster: Any, api: client.ApiClient, env: Env, start_operator: OperatorFactory
) -> None:
    other = make_namespace(cluster, api, "e2e-life-other")
    try:
        start_operator(env, other)
        long_a, long_b = "x" * 55 + "-first", "x" * 55 + "-other"
        for target, name in ((env, "x.y"), (env, "x-y"), (env, long_a), (env, long_b)):
            target.apply(target.manifest(name))
        other.apply(other.manifest("x-y"))  # the same name and spec in another namespace
        statuses = [
            _done(env, "x.y"),
            _done(env, "x-y"),
            _done(env, long_a),
            _done(env, long_b),
            _done(other, "x-y"),
        ]
        assert all(s["phase"] == "Succeeded" for s in statuses), statuses
        assert len({s["runId"] for s in statuses}) == 5
        assert len({s["output"] for s in statuses}) == 5, [s["output"] for s in statuses]
        for target, name in ((env, "x.y"), (env, "x-y"), (other, "x-y")):
            (cm,) = target.config_maps(name)
            assert name in cm.data["run.yaml"]
    finally:
        other.delete_all()
        client.CoreV1Api(api).delete_namespace(other.ns)


def test_delete_then_apply_at_once_gets_a_fresh_run(
    env: Env, start_operator: OperatorFactory
) -> None:
    """The dying object's Workflow is never adopted by its successor of the same name."""
    start_operator(env, env_vars={"MLOPS_POD_ANNOTATIONS": LONG_PODS})
    manifest = env.manifest("phoenix", stopOnDelete=False, **ON_CPU)
    env.apply(manifest)
    first = _run(env, "phoenix")
    old_uid = env.uid("phoenix")
    env.delete("phoenix")
    wait_for("the first object gone", lambda: "phoenix" not in env.names())
    env.apply(manifest)
    second = _run(env, "phoenix")
    assert second["runId"] != first["runId"]
    (wf,) = env.workflows("phoenix")
    assert wf["metadata"]["name"] == second["workflow"]
    wait_for("the old run garbage-collected", lambda: not env.workflows(uid=old_uid), timeout=120)
    assert env.status("phoenix")["phase"] in ("Queued", "Running"), env.status("phoenix")
    assert env.workflows("phoenix"), "the new run's Workflow survived the old one's GC"


def test_a_child_name_taken_by_someone_else_is_a_condition_not_adoption(
    env: Env, start_operator: OperatorFactory
) -> None:
    from mlops_api.naming import config_map_name, run_id
    from mlops_api.spec import MLOpsSpec

    manifest = env.manifest("squatted")
    obj = env.apply(manifest)  # no operator runs yet
    spec = MLOpsSpec.model_validate(
        {**manifest["spec"], "image": "docker.io/local/mlops-trainer:e2e"}
    )
    run = run_id("squatted", 1, spec, namespace=env.ns, uid=obj["metadata"]["uid"])
    env.core.create_namespaced_config_map(
        env.ns, {"metadata": {"name": config_map_name(run)}, "data": {"mine": "yes"}}
    )
    start_operator(env)
    status = wait_for("a conflict reported", lambda: env.phase_is("squatted", "Failed"))
    synced = {c["type"]: c for c in status["conditions"]}["Synced"]
    assert synced["reason"] == "ChildConflict", synced
    assert config_map_name(run) in synced["message"]
    squatter = env.core.read_namespaced_config_map(config_map_name(run), env.ns)
    assert not squatter.metadata.owner_references and squatter.data == {"mine": "yes"}
    assert not env.workflows("squatted")
    wait_for("the ChildConflict event", lambda: "ChildConflict" in env.events("squatted"))


# --- 8. status: one writer, repaired by the resync, no event spam ------------------------------------


def test_a_stale_status_is_repaired_by_the_resync(
    env: Env, start_operator: OperatorFactory
) -> None:
    """A Workflow that finished while its events were missed (here: status overwritten with a
    stale one) is noticed by the periodic resync (MLOPS_RESYNC_S, 60 s by default)."""
    start_operator(env)
    env.apply(env.manifest("stale"))
    done = _done(env, "stale")
    assert done["phase"] == "Succeeded"
    env.custom.patch_namespaced_custom_object_status(
        "mlops.dev",
        "v1alpha1",
        env.ns,
        "mlops",
        "stale",
        {"status": {"phase": "Queued", "finishedAt": None}},
    )
    repaired = wait_for(
        "the resync to repair the status", lambda: env.phase_is("stale", "Succeeded"), timeout=150
    )
    assert repaired["runId"] == done["runId"] and repaired["finishedAt"]


def test_a_waiting_generation_posts_no_error_events_and_starts_after(
    env: Env, start_operator: OperatorFactory
) -> None:
    start_operator(env, env_vars={"MLOPS_POD_ANNOTATIONS": LONG_PODS})
    env.apply(env.manifest("patient", onChange="queue", **ON_CPU))
    first = _run(env, "patient")
    wait_for("first run Running", lambda: env.phase_is("patient", "Running"), timeout=120)
    env.patch_spec("patient", {"epochs": 2})
    waiting = wait_for(
        "generation 2 waiting",
        lambda: (
            (s := env.status("patient")).get("observedGeneration") == 2
            and s.get("phase") == "Queued"
            and s
        ),
    )
    assert waiting["runId"] != first["runId"]
    assert "WaitingForPreviousRun" in waiting["reason"]
    time.sleep(45)  # three times the old 15 s retry period
    warnings = [e for e in env.event_list("patient") if e.type != "Normal"]
    assert not warnings, [(e.reason, e.message) for e in warnings]
    assert len(env.workflows("patient")) == 1, "the new run waits: not created yet"
    # The first run ends (here: stopped by hand); the waiting generation starts by itself.
    env.custom.patch_namespaced_custom_object(
        "argoproj.io",
        "v1alpha1",
        env.ns,
        "workflows",
        first["workflow"],
        {"spec": {"shutdown": "Terminate"}},
    )
    started = wait_for(
        "generation 2 submitted",
        lambda: (
            (s := env.status("patient")).get("submitted")
            and len(env.workflows("patient")) == 2
            and s
        ),
        timeout=150,
    )
    assert started["runId"] == waiting["runId"]


# --- 9. onChange and the queue ------------------------------------------------------------------------


@pytest.mark.argo_matrix
def test_gpu_queue_runs_one_at_a_time_in_apply_order(
    env: Env, start_operator: OperatorFactory
) -> None:
    start_operator(
        env,
        env_vars={"MLOPS_POD_ANNOTATIONS": '{"pod-complete.stage.kwok.x-k8s.io/delay": "8s"}'},
    )
    names = ["fifo-1", "fifo-2", "fifo-3"]
    for name in names:
        # On the CPU node: only the queue (not the one fake GPU) can keep them apart.
        env.apply(env.manifest(name, queue="gpu", **ON_CPU))
        time.sleep(1.1)  # creation times a second apart: apply order is FIFO order
    waiting = wait_for(
        "fifo-3 waiting for the queue",
        lambda: env.phase_is("fifo-3", "Queued") and env.status("fifo-3").get("reason"),
    )
    assert waiting == "WaitingForQueue", waiting
    started: dict[str, float] = {}
    phases_seen: dict[str, list[str]] = {n: [] for n in names}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        running = []
        for name in names:
            pods = env.pods(name)
            if any(p.status.phase == "Running" for p in pods):
                running.append(name)
                started.setdefault(name, time.monotonic())
            phase = env.status(name).get("phase", "")
            if not phases_seen[name] or phases_seen[name][-1] != phase:
                phases_seen[name].append(phase)
        assert len(running) <= 1, f"more than one trainer pod Running: {running}"
        if all(env.phase_is(n, *FINAL) for n in names):
            break
        time.sleep(0.5)
    assert all(env.phase_is(n, "Succeeded") for n in names), (
        phases_seen,
        {n: env.status(n).get("message") for n in names},
    )
    assert sorted(started, key=started.__getitem__) == names, started
    for name in names[1:]:
        # Queued until its turn, then Running, then Succeeded: never back and forth.
        seen = [p for p in phases_seen[name] if p]
        assert seen == sorted(seen, key=["Queued", "Running", "Succeeded"].index), seen


def test_on_change_replace_stops_the_old_run_and_the_new_one_succeeds(
    env: Env, start_operator: OperatorFactory
) -> None:
    start_operator(env, env_vars={"MLOPS_POD_ANNOTATIONS": LONG_PODS})
    env.apply(env.manifest("swap", onChange="replace", **ON_CPU))
    first = _run(env, "swap")
    wait_for("first run Running", lambda: env.phase_is("swap", "Running"), timeout=120)
    env.patch_spec("swap", {"epochs": 3})
    second = wait_for(
        "generation 2 submitted",
        lambda: (
            (s := env.status("swap")).get("observedGeneration") == 2 and s.get("submitted") and s
        ),
    )
    assert second["runId"] != first["runId"]
    old = next(w for w in env.workflows("swap") if w["metadata"]["name"] == first["workflow"])
    assert old["spec"].get("shutdown") == "Stop"
    # What the old trainer does on the SIGTERM Argo sends it: checkpoint, exit 143 (kwok's pods
    # cannot receive signals, so the test ends the pod as the kubelet would report it).
    for pod in env.pods("swap"):
        labels = pod.metadata.labels or {}
        if labels.get("workflows.argoproj.io/workflow") == first["workflow"]:
            end_pod(env, pod, exit_code=143)
    # The new run's trainer finishes (kwok's pods run until told); the old one was stopped.
    pod = wait_for(
        "the new run's pod Running",
        lambda: [
            p
            for p in env.pods("swap")
            if p.metadata.labels.get("workflows.argoproj.io/workflow") == second["workflow"]
            and p.status.phase == "Running"
        ],
        timeout=120,
    )[0]
    end_pod(env, pod, exit_code=0)
    status = wait_for("the new run Succeeded", lambda: env.phase_is("swap", "Succeeded"))
    assert status["runId"] == second["runId"], "the old run's events never land on the new run"
    wait_for("the Replaced event", lambda: "Replaced" in env.events("swap"))


def test_on_change_reject_keeps_the_run_and_a_rerun_starts_the_new_spec(
    env: Env, start_operator: OperatorFactory
) -> None:
    start_operator(env, env_vars={"MLOPS_POD_ANNOTATIONS": LONG_PODS})
    env.apply(env.manifest("stubborn", onChange="reject", **ON_CPU))
    first = _run(env, "stubborn")
    env.patch_spec("stubborn", {"epochs": 4})
    rejected = wait_for(
        "the change rejected",
        lambda: (s := env.status("stubborn")).get("observedGeneration") == 2 and s,
    )
    accepted = {c["type"]: c for c in rejected["conditions"]}["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", "ChangeRejected"), accepted
    assert rejected["runId"] == first["runId"], "the status keeps following the active run"
    _hold("no run for the rejected spec", lambda: len(env.workflows("stubborn")) == 1, 5)
    # The active run ends; the rejected spec is started on request (a rerun), and runs.
    env.custom.patch_namespaced_custom_object(
        "argoproj.io",
        "v1alpha1",
        env.ns,
        "workflows",
        first["workflow"],
        {"spec": {"shutdown": "Terminate"}},
    )
    wait_for("the first run ended", lambda: env.phase_is("stubborn", *FINAL), timeout=120)
    env.custom.patch_namespaced_custom_object(
        "mlops.dev",
        "v1alpha1",
        env.ns,
        "mlops",
        "stubborn",
        {"metadata": {"annotations": {"mlops.dev/rerun": "1"}}},
    )
    rerun = wait_for(
        "the rerun submitted",
        lambda: (
            (s := env.status("stubborn")).get("runId") != first["runId"]
            and s.get("submitted")
            and s
        ),
    )
    assert rerun["observedGeneration"] == 2 and rerun["rerun"] == "1"
    (cm,) = [c for c in env.config_maps("stubborn") if c.metadata.name == rerun["configMap"]]
    assert "epochs: 4" in cm.data["run.yaml"]
    # Re-applying a changed spec after a rejection is processed too.
    env.patch_spec("stubborn", {"epochs": 5})
    wait_for(
        "generation 3 decided",
        lambda: (s := env.status("stubborn")).get("observedGeneration") == 3 and s,
    )


# --- 7. deletion with production timeouts ------------------------------------------------------------


def test_delete_waits_for_the_stopped_run_with_production_timeouts(
    env: Env, start_operator: OperatorFactory
) -> None:
    """stopOnDelete: the Workflow is asked to Stop (its trainer gets SIGTERM and checkpoints) and
    the object waits for it up to MLOPS_STOP_TIMEOUT_S (120 s by default), not less."""
    start_operator(env, env_vars={"MLOPS_POD_ANNOTATIONS": LONG_PODS})
    env.apply(env.manifest("slow-stop", **ON_CPU))
    run = _run(env, "slow-stop")
    wait_for("Running", lambda: env.phase_is("slow-stop", "Running"), timeout=120)
    uid = env.uid("slow-stop")
    asked = time.monotonic()
    env.delete("slow-stop")
    wf = wait_for(
        "shutdown: Stop on the Workflow",
        lambda: [w for w in env.workflows(uid=uid) if w["spec"].get("shutdown") == "Stop"],
        timeout=30,
    )[0]
    assert wf["metadata"]["name"] == run["workflow"]
    # kwok's pods cannot receive the SIGTERM: the trainer never ends, so the operator must wait
    # the whole production timeout (a real trainer checkpoints and exits within seconds).
    _hold("the object waits for its stopping trainer", lambda: "slow-stop" in env.names(), 100)
    wait_for("the object deleted", lambda: "slow-stop" not in env.names(), timeout=90)
    waited = time.monotonic() - asked
    assert 115 <= waited <= 180, waited


@pytest.mark.argo_matrix
def test_a_two_gpu_run_holds_two_units_of_its_queue(
    cluster: Any, env: Env, start_operator: OperatorFactory
) -> None:
    """Queue "pair" has 2 units: a 2-GPU run takes both, so a 1-GPU run applied after it waits
    (Argo's semaphore alone would count one unit per run and let both run)."""
    env.core.patch_namespaced_config_map("mlops-queues", env.ns, {"data": {"pair": "2"}})
    start_operator(
        env,
        env_vars={"MLOPS_POD_ANNOTATIONS": '{"pod-complete.stage.kwok.x-k8s.io/delay": "10s"}'},
    )
    big = {"cpu": "100m", "memory": "256Mi", "gpu": {"count": 2, "type": "nvidia-tesla-t4"}}
    small = {"cpu": "100m", "memory": "256Mi", "gpu": {"count": 1, "type": "nvidia-tesla-t4"}}
    env.apply(env.manifest("big", queue="pair", resources=big))
    _run(env, "big")
    time.sleep(1.1)
    env.apply(env.manifest("small", queue="pair", resources=small))
    status = wait_for("small waiting", lambda: env.phase_is("small", "Queued"))
    wait_for(
        "small waits for the queue",
        lambda: env.status("small").get("reason") == "WaitingForQueue",
    )
    assert "2 of 2 in use" in env.status("small")["message"], env.status("small")
    assert not env.workflows("small")
    wait_for("big done", lambda: env.phase_is("big", "Succeeded"), timeout=120)
    done = wait_for("small done", lambda: env.phase_is("small", "Succeeded"), timeout=120)
    assert done["queue"] == f"{env.ns}/pair" and status
