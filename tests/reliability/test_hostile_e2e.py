"""Bad input against the real API server and the running operator.

Every hostile manifest of ``hostile_corpus`` (those an API server can receive: JSON) is applied as
``kubectl apply`` would: the CRD schema rejects it (422 naming the field, 400 for an unknown field
under strict field validation; 413 when the request is
bigger than the API server takes at all), or it is stored and the operator marks it ``Failed``
with a condition naming the field and creates no children. The valid ones get their run. The
operator never crashes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile_corpus import cases
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import CRD, GROUP, PLURAL, VERSION, Env, Operator, wait_for

pytestmark = pytest.mark.e2e

CASES = [c for c in cases() if not c.offline_only]


@pytest.fixture(scope="module")
def hostile_env(cluster: Any) -> Iterator[Env]:
    api = cluster.api_client()
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    namespace = f"hostile-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "mlops-trainer"}})
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "mlops-queues"}, "data": {"gpu": "50"}}
    )
    yield Env(api, namespace)
    core.delete_namespace(namespace)
    api.close()


def test_hostile_manifests_rejected_or_failed_naming_the_field(
    cluster: Any, hostile_env: Env, tmp_path: Path, faults: Any
) -> None:
    env = hostile_env
    operator = Operator(
        cluster.kubeconfig,
        tmp_path / "operator.log",
        args=["--standalone", f"--namespace={env.ns}"],
    )
    operator.start()
    outcomes: dict[str, str] = {}
    stored: dict[str, Any] = {}
    try:
        for i, case in enumerate(CASES):
            manifest = case.manifest
            # Unique names so every case is its own object (unless the name is what is tested).
            if case.expect != "metadata.name" and case.id != "valid-name-200-chars":
                manifest = {
                    **manifest,
                    "metadata": {"name": f"h{i:03d}-{case.id[:40]}".rstrip("-.").lower()},
                }
            try:
                # Strict, as `kubectl apply` does: an unknown field is an error, not dropped.
                env.custom.create_namespaced_custom_object(
                    GROUP, VERSION, env.ns, PLURAL, manifest, field_validation="Strict"
                )
            except ApiException as exc:
                assert case.expect is not None, (
                    f"{case.id}: a valid manifest was refused: {exc.body}"
                )
                assert exc.status in (400, 413, 422), f"{case.id}: {exc.status} {exc.body[:300]}"
                if exc.status in (400, 422):  # 400: strict decoding (unknown field)
                    field = case.expect.removeprefix("spec.trainer.config.")
                    assert field.split(".")[-1] in exc.body, f"{case.id}: {exc.body[:500]}"
                outcomes[case.id] = f"API server {exc.status}"
                continue
            stored[case.id] = (case, manifest["metadata"]["name"])
        for case_id, (case, name) in stored.items():
            if case.expect is None:
                wait_for(f"{case_id} gets its run", lambda n=name: env.status(n).get("runId"), 120)
                outcomes[case_id] = "accepted, run created"
                continue
            status = wait_for(f"{case_id} Failed", lambda n=name: env.phase_is(n, "Failed"), 120)
            assert case.expect in status["message"], f"{case_id}: {status['message'][:300]}"
            conditions = {c["type"]: c for c in status["conditions"]}
            assert conditions["Validated"]["reason"] == "SpecInvalid"
            assert not env.workflows(name) and not env.config_maps(name), case_id
            outcomes[case_id] = "operator: Failed/SpecInvalid"
        assert operator.healthy(), "the operator must survive every manifest"
        env.delete_all()
    finally:
        operator.stop()
    summary: dict[str, int] = {}
    for outcome in outcomes.values():
        summary[outcome] = summary.get(outcome, 0) + 1
    print(f"\n{len(CASES)} hostile manifests on the real API server: {summary}")
    faults.record(
        "bad input: hostile manifests, API server + operator",
        tried=len(CASES),
        survived=len(outcomes),
        lost="0 (operator alive)",
    )
    assert len(outcomes) == len(CASES)
