"""The chart's NetworkPolicies select exactly the pods they are for and allow only what those
pods need. (The API server accepts them: tests/e2e/test_chart_install.py dry-runs every object.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlops-operator"
LOCKED = CHART / "ci" / "networkpolicy-values.yaml"
Render = Callable[..., list[dict[str, Any]]]


def _policies(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        f"{d['metadata']['namespace']}/{d['metadata']['name']}": d
        for d in docs
        if d["kind"] == "NetworkPolicy"
    }


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, and the Exists/In operators the chart uses) against labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op = expr["key"], expr["operator"]
        if op == "Exists" and key not in labels:
            return False
        if op == "In" and labels.get(key) not in expr["values"]:
            return False
    return True


def _ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports") or []}


def test_operator_policy_selects_the_operator_pod_only(render: Render) -> None:
    docs = render()
    policy = _policies(docs)["mlops-system/mlops-mlops-operator"]
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    test_pod = next(d for d in docs if d["kind"] == "Pod")
    selector = policy["spec"]["podSelector"]
    assert _selects(selector, deploy["spec"]["template"]["metadata"]["labels"])
    assert not _selects(selector, test_pod["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # Ingress: the metrics port, from anyone by default.
    (ingress,) = policy["spec"]["ingress"]
    assert _ports(ingress) == {("TCP", 9090)} and "from" not in ingress
    # Egress: DNS, and the API server's usual ports on any address.
    dns, api = policy["spec"]["egress"]
    assert _ports(dns) == {("UDP", 53), ("TCP", 53)}
    assert _ports(api) == {("TCP", 443), ("TCP", 6443)} and "to" not in api
    # The `helm test` pod has one of its own: the same egress, no ingress.
    test_policy = _policies(docs)["mlops-system/mlops-mlops-operator-test"]
    assert _selects(test_policy["spec"]["podSelector"], test_pod["metadata"]["labels"])
    assert not _selects(
        test_policy["spec"]["podSelector"], deploy["spec"]["template"]["metadata"]["labels"]
    )
    assert "ingress" not in test_policy["spec"]
    assert test_policy["spec"]["egress"] == policy["spec"]["egress"]


def test_operator_policy_follows_the_values(render: Render) -> None:
    policy = _policies(render(LOCKED))["mlops-system/mlops-mlops-operator"]
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    _, api = policy["spec"]["egress"]
    assert _ports(api) == {("TCP", 443)}
    assert api["to"] == [{"ipBlock": {"cidr": "172.16.0.2/32"}}]
    # Metrics off: no ingress rule at all, so nothing may connect.
    closed = _policies(render(None, "--set=operator.metrics.enabled=false"))
    assert "ingress" not in closed["mlops-system/mlops-mlops-operator"]["spec"]
    assert not _policies(render(None, "--set=networkPolicy.enabled=false"))


def test_trainer_policy_is_optional_and_selects_the_pods_the_operator_makes(
    render: Render,
) -> None:
    assert not any(k.endswith("-trainer") for k in _policies(render()))
    policies = _policies(
        render(CHART / "ci" / "namespaced-values.yaml", "--set=networkPolicy.trainer.enabled=true")
    )
    trainer = {k: v for k, v in policies.items() if k.endswith("-trainer")}
    assert sorted(trainer) == [
        "ml-team-a/mlops-mlops-operator-trainer",
        "ml-team-b/mlops-mlops-operator-trainer",
    ]
    # The labels the operator puts on every trainer pod (the golden Workflows' podMetadata).
    for golden in sorted((ROOT / "tests" / "golden").glob("*.yaml")):
        workflow = next(
            d for d in yaml.safe_load_all(golden.read_text()) if d["kind"] == "Workflow"
        )
        pod_labels = workflow["spec"]["podMetadata"]["labels"]
        for policy in trainer.values():
            assert _selects(policy["spec"]["podSelector"], pod_labels), golden.name
    # ... and not the operator's own pod.
    deploy = next(d for d in render() if d["kind"] == "Deployment")
    for policy in trainer.values():
        assert not _selects(
            policy["spec"]["podSelector"], deploy["spec"]["template"]["metadata"]["labels"]
        )


def test_trainer_policy_denies_ingress_and_limits_egress(render: Render) -> None:
    policy = _policies(render(LOCKED))["mlops-system/mlops-mlops-operator-trainer"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"]
    rules = policy["spec"]["egress"]
    allowed = {
        (proto, port, tuple(p["ipBlock"]["cidr"] for p in rule.get("to") or []))
        for rule in rules
        for proto, port in _ports(rule)
    }
    assert allowed == {
        ("UDP", 53, ()),
        ("TCP", 53, ()),
        ("TCP", 443, ("172.16.0.2/32",)),  # the API server (Argo's executor)
        ("TCP", 443, ("199.36.153.8/30",)),  # the bucket, through Private Google Access
        ("TCP", 80, ("169.254.169.254/32",)),  # GKE's metadata server (Workload Identity)
        ("TCP", 988, ("169.254.169.252/32",)),
        ("TCP", 3128, ("10.0.0.10/32",)),  # extraEgress
    }
    off = _policies(render(LOCKED, "--set=networkPolicy.trainer.gkeMetadataServer=false"))[
        "mlops-system/mlops-mlops-operator-trainer"
    ]
    assert not any(
        p["ipBlock"]["cidr"].startswith("169.254.")
        for rule in off["spec"]["egress"]
        for p in rule.get("to") or []
    )
