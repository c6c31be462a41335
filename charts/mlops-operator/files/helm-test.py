"""``helm test``: create a tiny MLOps run, wait until it finishes, exit 0 only if it Succeeded.

The chart's test hook runs this file in the operator's image (Python and the kubernetes client;
no extra image), as the test's own ServiceAccount, which may only create, get and delete MLOps
objects in the test namespace. The object it creates is the chart's ``mlops.yaml`` (a VQ-VAE,
one epoch of two steps on the bundled sample images, on CPU): passing means the CRD, the
operator, its RBAC, Argo and the trainer image all work together on this cluster.

On success the object is deleted. On failure or timeout it is kept for ``kubectl describe`` and
replaced by the next ``helm test``.

Environment: ``MLOPS_TEST_MANIFEST`` (path of the object's YAML), ``MLOPS_TEST_TIMEOUT_S``.
Outside a pod (the chart's e2e test runs it as a local process), ``KUBECONFIG`` names the cluster.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "mlops.dev", "v1alpha1", "mlops"
POLL_S = 2.0
FINISHED = ("Succeeded", "Failed", "Stopped")
# A moment's trouble of the API server (or a conflict) is waited out, anything else is reported.
TRANSIENT = (409, 429, 500, 502, 503, 504)


def log(message: str) -> None:
    print(f"[helm test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def get(api: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return obj


def delete_and_wait(api: client.CustomObjectsApi, ns: str, name: str, deadline: float) -> bool:
    """Delete the object (if any) and wait until it is gone: the operator's finalizer first stops
    its run, if one is still running."""
    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return True
    log(f"deleting mlops/{name} in {ns}")
    while time.monotonic() < deadline:
        if get(api, ns, name) is None:
            return True
        time.sleep(POLL_S)
    log(f"mlops/{name} in {ns} is still there (is the operator running?)")
    return False


def describe(status: dict[str, Any]) -> str:
    parts = [f"phase={status.get('phase', '-')}"]
    for key in ("reason", "progress", "message"):
        if status.get(key):
            parts.append(f"{key}={status[key]}")
    return " ".join(parts)


def main() -> int:
    manifest = yaml.safe_load(Path(os.environ["MLOPS_TEST_MANIFEST"]).read_text())
    timeout = float(os.environ.get("MLOPS_TEST_TIMEOUT_S", "600"))
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    deadline = time.monotonic() + timeout

    # A failed test keeps its object for inspection; this run starts from a clean slate.
    if not delete_and_wait(api, ns, name, deadline):
        return 1
    api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest)
    log(f"created mlops/{name} in {ns}; waiting up to {timeout:.0f} s for it to succeed")

    last = ""
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            obj = get(api, ns, name)
        except ApiException as exc:
            if exc.status not in TRANSIENT:
                raise
            obj = {}
        if obj is None:
            log(f"FAIL: mlops/{name} in {ns} was deleted while the test ran")
            return 1
        status = obj.get("status") or status
        line = describe(status)
        if line != last:
            log(line)
            last = line
        phase = status.get("phase")
        if phase == "Succeeded":
            log(f"PASS: run {status.get('runId')} succeeded")
            delete_and_wait(api, ns, name, time.monotonic() + 120)
            return 0
        if phase in FINISHED:
            for condition in status.get("conditions") or []:
                log(
                    f"  {condition.get('type')}={condition.get('status')} "
                    f"{condition.get('reason', '')}: {condition.get('message', '')}"
                )
            log(f"FAIL: {phase}; kept for inspection: kubectl describe mlops {name} -n {ns}")
            return 1
        time.sleep(POLL_S)
    log(
        f"FAIL: not finished after {timeout:.0f} s ({last}); kept for inspection: "
        f"kubectl describe mlops {name} -n {ns}"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
