"""The Helm chart: lint clean in every scenario, values documented and schema-checked, RBAC minimal."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlops-operator"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))


def _template(helm: str, values: Path | None = None, *extra: str) -> list[dict[str, Any]]:
    args = [helm, "template", "mlops", str(CHART), "--namespace", "mlops-system", *extra]
    if values is not None:
        args += ["-f", str(values)]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _leaf_paths(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        out: set[str] = set()
        for key, value in node.items():
            out |= _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
        return out
    return {prefix}


def test_values_match_schema_both_ways() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(values)

    def schema_keys(node: dict[str, Any], prefix: str = "") -> set[str]:
        keys: set[str] = set()
        for key, sub in node.get("properties", {}).items():
            path = f"{prefix}.{key}" if prefix else key
            keys.add(path)
            keys |= schema_keys(sub, path)
        return keys

    documented = schema_keys(schema)
    # Every value (down to the objects the schema treats as free-form) has a schema entry.
    for path in _leaf_paths(values):
        parts = path.split(".")
        assert any(".".join(parts[:i]) in documented for i in range(len(parts), 0, -1)), path
    top = {k for k in documented if "." not in k}
    assert top == set(values)


def test_every_value_has_a_doc_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented_block_indent: int | None = None  # inside a documented map: its children need no docs
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w]*):\s*(\S.*)?$", line)
        if not match:
            continue
        indent = len(match.group(1))
        if documented_block_indent is not None:
            if indent > documented_block_indent:
                continue
            documented_block_indent = None
        has_doc = i > 0 and lines[i - 1].strip().startswith("# --")
        value = match.group(3)
        if value is None or value.startswith("#"):
            if has_doc:
                documented_block_indent = indent
            continue  # an undocumented parent: its children carry the docs
        assert has_doc, f"values.yaml:{i + 1} {match.group(2)} has no '# --' comment"


def test_schema_rejects_unknown_and_wrong_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert list(validator.iter_errors({"operatr": {}}))
    assert list(validator.iter_errors({"queues": {"gpu": 0}}))
    assert list(validator.iter_errors({"trainer": {"pullPolicy": "Sometimes"}}))


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_helm_lint(helm: str, values: Path) -> None:
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "-f", str(values)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_helm_rejects_unknown_value(helm: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("operator:\n  replicas: 3\n")
    result = subprocess.run(
        [helm, "template", "x", str(CHART), "-f", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "replicas" in result.stderr


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_rendered_objects(helm: str, values: Path) -> None:
    docs = _template(helm, values)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == 1
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--standalone" in container["args"]
    for doc in docs:  # no credentials ever land in a ConfigMap
        if doc["kind"] == "ConfigMap":
            assert not any(
                "key" in k.lower() and "json" in k.lower() for k in (doc.get("data") or {})
            )


def test_namespaced_rbac_has_no_cluster_roles_for_the_operator(helm: str) -> None:
    docs = _template(helm, CHART / "ci" / "namespaced-values.yaml")
    roles = [
        d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "mlops-mlops-operator"
    ]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-team-a", "ml-team-b"]
    cluster_roles = [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"]
    assert "mlops-mlops-operator" not in cluster_roles
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml-team-a" in args and "--all-namespaces" not in args
    # No cluster-wide list/watch of namespaces and CRDs: kopf must not try (tests/e2e measures it).
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MLOPS_RESOURCE_SCANNING"] == "false"
    default = next(d for d in _template(helm) if d["kind"] == "Deployment")
    default_env = {
        e["name"]: e.get("value")
        for e in default["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert default_env["MLOPS_RESOURCE_SCANNING"] == "true"


def test_gcs_secret_is_passed_by_name_only(helm: str) -> None:
    docs = _template(helm, CHART / "ci" / "secret-key-values.yaml")
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MLOPS_GCS_SECRET"] == "gcs-trainer-key"


def test_trainer_placement_reaches_the_operator(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "nodeSelector": {"pool": "training"},
                    "tolerations": [{"key": "pool", "operator": "Exists", "effect": "NoSchedule"}],
                }
            }
        )
    )
    deploy = next(d for d in _template(helm, values) if d["kind"] == "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert json.loads(env["MLOPS_TRAINER_NODE_SELECTOR"]) == {"pool": "training"}
    assert json.loads(env["MLOPS_TRAINER_TOLERATIONS"]) == [
        {"key": "pool", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_chart_readme_values_table_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "chart_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_fullname_override_names_every_object(helm: str) -> None:
    docs = _template(helm, None, "--set=fullnameOverride=ml-platform")
    # Named by the release: everything but what is named by its own value (the trainer
    # ServiceAccount and its executor Role/RoleBinding, which Workflows name).
    trainer = {"mlops-trainer", "mlops-trainer-executor"}
    names = {d["metadata"]["name"] for d in docs if d["kind"] != "CustomResourceDefinition"}
    assert names - trainer
    assert all(n.startswith("ml-platform") for n in names - trainer), sorted(names)
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    assert deploy["metadata"]["name"] == "ml-platform"
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "ml-platform"
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MLOPS_QUEUE_CONFIGMAP"] == "ml-platform-queues"
    # 63 characters at most, whatever the override.
    long = _template(helm, None, f"--set=fullnameOverride={'x' * 63}")
    assert all(len(d["metadata"]["name"]) <= 63 for d in long)


def test_name_override_changes_names_and_labels_consistently(helm: str) -> None:
    docs = _template(helm, None, "--set=nameOverride=mlctl")
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    assert deploy["metadata"]["name"] == "mlops-mlctl"
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "mlctl", "app.kubernetes.io/instance": "mlops"}
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    policy = next(
        d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "mlops-mlctl"
    )
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    # The default stays what existing releases have (the Deployment selector is immutable).
    default = next(d for d in _template(helm) if d["kind"] == "Deployment")
    assert default["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "mlops-operator",
        "app.kubernetes.io/instance": "mlops",
    }


def test_operator_pull_secrets_resources_and_placement(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "placement.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "imagePullSecrets": [{"name": "regcred"}],
                "operator": {
                    "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "2"}},
                    "nodeSelector": {"cloud.google.com/gke-nodepool": "system"},
                    "tolerations": [
                        {"key": "system", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {"key": "spot", "operator": "DoesNotExist"}
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                    "priorityClassName": "system-cluster-critical",
                },
            }
        )
    )
    docs = _template(helm, values)
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-nodepool": "system"}
    assert pod["tolerations"][0]["key"] == "system"
    assert "nodeAffinity" in pod["affinity"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    # Helm merges maps with the defaults: the keys not set keep their default (null removes one).
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["cpu"] == "100m" and resources["limits"]["cpu"] == "2"
    assert resources["limits"]["memory"] == "512Mi"
    # The test pod runs where the operator may run.
    test_pod = next(d for d in docs if d["kind"] == "Pod")["spec"]
    for key in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity"):
        assert test_pod[key] == pod[key]


def test_operator_defaults(helm: str) -> None:
    """What kube-score asks of the operator's pod, by default (tests/charts/test_kube_score.py
    runs kube-score itself): CPU and ephemeral-storage limits, a UID/GID above 10000."""
    pod = next(d for d in _template(helm) if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert (
        set(resources["limits"])
        == set(resources["requests"])
        == {
            "cpu",
            "memory",
            "ephemeral-storage",
        }
    )
    assert pod["securityContext"]["runAsUser"] > 10000
    assert pod["securityContext"]["runAsGroup"] > 10000
    (tmp,) = pod["volumes"]
    assert tmp["emptyDir"]["sizeLimit"]
    assert "imagePullSecrets" not in pod and "priorityClassName" not in pod


def _notes(helm: str, values: Path | None = None, *extra: str) -> str:
    """NOTES.txt as `helm install` prints it (a client-side dry run: no cluster needed)."""
    args = [
        helm,
        "install",
        "mlops",
        str(CHART),
        "--namespace",
        "mlops-system",
        "--dry-run=client",
        "-o",
        "json",
        *extra,
    ]
    if values is not None:
        args += ["-f", str(values)]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["info"]["notes"])


def test_notes_say_what_was_installed_and_the_next_three_commands(helm: str) -> None:
    notes = _notes(helm)
    assert "release mlops in namespace mlops-system" in notes
    assert "Deployment mlops-mlops-operator" in notes and "all namespaces" in notes
    assert "ghcr.io/mlops-operator/operator:0.1.0" in notes
    assert "kubectl apply -n mlops-system -f examples/vqvae.yaml" in notes
    assert "kubectl get mlops -n mlops-system -w" in notes
    assert "kubectl -n argo port-forward svc/argo-server 2746:2746" in notes
    assert "helm test mlops -n mlops-system --timeout 15m --logs" in notes
    # The CRD upgrade path, where it matters (the chart README, "Upgrading").
    assert "kubectl apply --server-side" in notes
    # Runs go where the operator watches; the Argo server where it is.
    notes = _notes(
        helm,
        CHART / "ci" / "namespaced-values.yaml",
        "--set=argoServer.namespace=workflows",
        "--set=tests.enabled=false",
    )
    assert "the namespaces ml-team-a, ml-team-b" in notes and "a Role in each" in notes
    assert "kubectl apply -n ml-team-a -f examples/vqvae.yaml" in notes
    assert "kubectl get mlops -n ml-team-a -w" in notes
    assert "kubectl -n workflows port-forward" in notes
    assert "helm test" not in notes


def test_the_operator_names_itself_under_the_charts_uid(
    helm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found on the real node (tests/realnode): the chart's uid 10001 has no /etc/passwd entry in
    the image, and kopf's peering id (getpass.getuser) crashed the operator at start. The chart
    sets USER, which getpass reads first; the real-node test runs the pod itself."""
    from kopf._core.engines.peering import detect_own_id

    pod = next(d for d in _template(helm) if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    uid = pod["securityContext"]["runAsUser"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "getuid", lambda: uid)
    if uid not in {entry.pw_uid for entry in pwd.getpwall()}:  # as in the image
        with pytest.raises(KeyError, match="getpwuid"):
            detect_own_id(manual=False)  # what the pod did without USER
    monkeypatch.setenv("USER", env["USER"])
    assert detect_own_id(manual=False).startswith(f"{env['USER']}@")


def _env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    return {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_kueue_mode_renders_flavors_a_cluster_queue_local_queues_and_the_operators_rights(
    helm: str, tmp_path: Path
) -> None:
    """kueue.enabled: the operator runs in kueue mode and may read Workloads; the quota objects
    cover every resource a trainer pod asks for (Kueue leaves a pod whose CPU or memory no
    flavor covers inadmissible forever), in flavor order; off (the default), none of it."""
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "kueue": {
                    "enabled": True,
                    "localQueues": [
                        {"namespace": "ml-a", "name": "gpu"},
                        {"namespace": "ml-b", "name": "gpu"},
                    ],
                },
                "spot": {"nodeSelector": {"cloud.google.com/gke-provisioning": "spot"}},
                "onDemand": {"nodeSelector": {"cloud.google.com/gke-provisioning": "standard"}},
            }
        )
    )
    docs = _template(helm, values)
    env = _env(docs)
    assert env["MLOPS_QUEUE_MODE"] == "kueue"
    assert json.loads(env["MLOPS_ON_DEMAND_NODE_SELECTOR"]) == {
        "cloud.google.com/gke-provisioning": "standard"
    }
    flavors = [d for d in docs if d["kind"] == "ResourceFlavor"]
    assert [f["metadata"]["name"] for f in flavors] == ["spot-gpu", "on-demand-gpu"]
    assert flavors[0]["spec"]["nodeLabels"] == {"cloud.google.com/gke-provisioning": "spot"}
    (cq,) = [d for d in docs if d["kind"] == "ClusterQueue"]
    assert cq["apiVersion"] == "kueue.x-k8s.io/v1beta2"
    assert cq["spec"]["queueingStrategy"] == "StrictFIFO"
    (group,) = cq["spec"]["resourceGroups"]
    assert group["coveredResources"] == ["cpu", "memory", "nvidia.com/gpu"]
    assert [f["name"] for f in group["flavors"]] == ["spot-gpu", "on-demand-gpu"]
    spot = {r["name"]: r["nominalQuota"] for r in group["flavors"][0]["resources"]}
    assert spot == {"cpu": "48", "memory": "192Gi", "nvidia.com/gpu": "4"}
    queues = [d for d in docs if d["kind"] == "LocalQueue"]
    assert [(q["metadata"]["namespace"], q["spec"]["clusterQueue"]) for q in queues] == [
        ("ml-a", "mlops-gpu"),
        ("ml-b", "mlops-gpu"),
    ]
    rules = [
        r
        for d in docs
        if d["kind"] == "ClusterRole" and "operator" in d["metadata"]["name"]
        for r in d["rules"]
    ]
    assert {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"],
            "verbs": ["get", "list", "watch"]} in rules  # fmt: skip

    default = _template(helm, None)
    assert _env(default)["MLOPS_QUEUE_MODE"] == "semaphore"
    assert not [d for d in default if d["apiVersion"].startswith("kueue.x-k8s.io")]
    assert "kueue.x-k8s.io" not in json.dumps([d for d in default if "Role" in d["kind"]])
    # Kueue's objects outlive an uninstall or kueue.enabled=false: runs in flight still wait.
    assert all(
        d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        for d in docs
        if d["apiVersion"].startswith("kueue.x-k8s.io")
    )
    # Flavors keyed on a label a selector does not set: refused, naming the key and the value.
    values.write_text(yaml.safe_dump({"kueue": {"enabled": True}}))
    args = [helm, "template", "mlops", str(CHART), "-f", str(values)]
    refused = subprocess.run(args, capture_output=True, text=True, check=False)
    assert refused.returncode != 0
    assert "kueue.flavors select nodes on cloud.google.com/gke-provisioning" in refused.stderr
    assert "spot.nodeSelector" in refused.stderr
    # The platform's own queues: nothing of Kueue's is created, the operator still uses Kueue.
    values.write_text(yaml.safe_dump({"kueue": {"enabled": True, "createQueues": False}}))
    theirs = _template(helm, values)
    assert _env(theirs)["MLOPS_QUEUE_MODE"] == "kueue"
    assert not [d for d in theirs if d["apiVersion"].startswith("kueue.x-k8s.io")]
