"""What a user and a platform team do with a run besides applying it (issue: the user's path).

Suspend and resume a run without deleting it; the cluster's guardrails on images, buckets and
GPUs. kwok plays the trainer: its pods run until the test ends them as a kubelet would report.
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


@pytest.fixture(scope="module")
def env(cluster: Any, api: client.ApiClient, mlops_crd: None) -> Iterator[Env]:
    namespace_env = make_namespace(cluster, api, "e2e-user")
    yield namespace_env
    client.CoreV1Api(api).delete_namespace(namespace_env.ns)


def _running_pod(env: Env, name: str, workflow: str) -> client.V1Pod:
    return wait_for(
        f"a Running trainer pod of {workflow}",
        lambda: [
            p
            for p in env.pods(name)
            if (p.metadata.labels or {}).get("workflows.argoproj.io/workflow") == workflow
            and p.status.phase == "Running"
        ],
        timeout=120,
    )[0]


@pytest.mark.argo_matrix
def test_suspend_stops_the_run_and_resume_continues_the_same_run(
    env: Env, start_operator: OperatorFactory
) -> None:
    start_operator(env, env_vars={"MLOPS_POD_ANNOTATIONS": LONG_PODS})
    env.apply(env.manifest("nap", **ON_CPU))
    first = wait_for("Running", lambda: env.phase_is("nap", "Running"), timeout=120)
    run, workflow = first["runId"], first["workflow"]
    pod = _running_pod(env, "nap", workflow)
    env.patch_spec("nap", {"suspend": True})
    suspended = wait_for("Suspended", lambda: env.phase_is("nap", "Suspended"), timeout=60)
    assert suspended["runId"] == run, "suspending is the same run, not a new one"
    (wf,) = env.workflows("nap")
    assert wf["spec"].get("shutdown") == "Stop", "its trainer gets SIGTERM and checkpoints"
    # Resume before the stopped trainer has exited: it must wait (one folder, one trainer).
    env.patch_spec("nap", {"suspend": False})
    time.sleep(10)
    status = env.status("nap")
    assert (status["phase"], status["reason"]) == ("Suspended", "Resuming"), status
    assert len(env.workflows("nap")) == 1
    end_pod(env, pod, exit_code=143)  # the trainer checkpointed and exited, as on SIGTERM
    resumed = wait_for(
        "the run resumed in a new Workflow",
        lambda: (s := env.status("nap")).get("segment") == 1 and s.get("submitted") and s,
        timeout=120,
    )
    assert resumed["runId"] == run and resumed["workflow"] == f"{run}-r1"
    assert resumed["output"] == first["output"], "the same folder: it resumes from its checkpoint"
    end_pod(env, _running_pod(env, "nap", f"{run}-r1"), exit_code=0)
    done = wait_for("Succeeded", lambda: env.phase_is("nap", "Succeeded"), timeout=120)
    assert (done["runId"], done["appErrors"], done["preemptions"]) == (run, 0, 0)
    wait_for("the events", lambda: {"Suspended", "Resumed"} <= env.events("nap"))


def test_kubectl_get_shows_phase_progress_eta_and_wide_reason_message(
    cluster: Any, env: Env, start_operator: OperatorFactory
) -> None:
    start_operator(env)
    # Invalid where only the operator can tell (the trainer's config): Failed, with a reason.
    env.apply(env.manifest("columns", trainer={"kind": "vqvae", "config": {"batch_size": -4}}))
    wait_for("Failed", lambda: env.phase_is("columns", "Failed"))
    narrow = cluster.kubectl("get", "mlops", "columns", f"--namespace={env.ns}").stdout
    wide = cluster.kubectl("get", "mlops", "columns", f"--namespace={env.ns}", "-o", "wide").stdout
    assert narrow.split()[:6] == ["NAME", "PHASE", "TRAINER", "PROGRESS", "ETA", "AGE"], narrow
    header, row = wide.splitlines()[:2]
    for column in ("REASON", "RUN", "PREEMPTIONS", "MESSAGE"):
        assert column in header.split(), header
    assert "SpecInvalid" in row and "spec.trainer.config.batch_size" in row, row
    # No progress and no ETA on a finished run: empty cells, not a null's "<no value>".
    assert "<no value>" not in narrow + wide, wide
    assert narrow.splitlines()[1].split()[:3] == ["columns", "Failed", "vqvae"], narrow
    assert len(narrow.splitlines()[1].split()) == 4, "PROGRESS and ETA are empty: " + narrow


def test_guardrails_refuse_what_the_platform_team_did_not_allow(
    env: Env, start_operator: OperatorFactory
) -> None:
    start_operator(
        env,
        env_vars={
            "MLOPS_ALLOWED_IMAGE_PREFIXES": '["docker.io/local/"]',
            "MLOPS_ALLOWED_OUTPUT_PREFIXES": '["gs://bucket/runs"]',
            "MLOPS_MAX_GPUS_PER_RUN": "1",
        },
    )
    refused = {
        "evil-image": ({"image": "ghcr.io/evil/trainer:1"}, "spec.image"),
        "evil-bucket": ({"output": "gs://bucket/runs-of-others"}, "spec.output"),
        "greedy": (
            {"resources": {"cpu": "1", "memory": "1Gi", "gpu": {"count": 2}}},
            "spec.resources.gpu.count",
        ),
    }
    for name, (changes, _) in refused.items():
        env.apply(env.manifest(name, **changes))
    env.apply(env.manifest("allowed"))
    for name, (_, field) in refused.items():
        status = wait_for(f"{name} refused", lambda n=name: env.phase_is(n, "Failed"))
        assert status["reason"] == "PolicyViolation" and field in status["message"], status
        assert not env.workflows(name) and not env.config_maps(name)
        # kopf posts events in the background: they may trail the status a little.
        wait_for(
            f"{name}'s PolicyViolation event", lambda n=name: "PolicyViolation" in env.events(n)
        )
    assert wait_for("allowed", lambda: env.phase_is("allowed", "Succeeded"), timeout=180)
