"""The few Kubernetes calls the handlers make (kubernetes client, synchronous: kopf threads them)."""

from __future__ import annotations

from typing import Any, Literal, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from mlops_api.naming import LABEL_NAME
from mlops_api.spec import GROUP, PLURAL, VERSION

ARGO_GROUP, ARGO_VERSION, WORKFLOWS = "argoproj.io", "v1alpha1", "workflows"


def load_config() -> None:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


def _core() -> client.CoreV1Api:
    return client.CoreV1Api()


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi()


def create_if_absent(obj: dict[str, Any]) -> Literal["created", "exists"]:
    """Create a ConfigMap or Workflow; an existing one of the same name is left alone.

    Names are deterministic from the run, so "exists" means an earlier attempt (maybe by an
    operator that died mid-reconcile) already did this step.
    """
    namespace = obj["metadata"]["namespace"]
    try:
        if obj["kind"] == "ConfigMap":
            _core().create_namespaced_config_map(namespace, cast(Any, obj))  # a dict is sent as-is
        elif obj["kind"] == "Workflow":
            _custom().create_namespaced_custom_object(
                ARGO_GROUP, ARGO_VERSION, namespace, WORKFLOWS, obj
            )
        else:
            raise ValueError(f"unexpected kind {obj['kind']}")
    except ApiException as exc:
        if exc.status == 409:
            return "exists"
        raise
    return "created"


def list_workflows(namespace: str, name: str) -> list[dict[str, Any]]:
    result = _custom().list_namespaced_custom_object(
        ARGO_GROUP, ARGO_VERSION, namespace, WORKFLOWS, label_selector=f"{LABEL_NAME}={name[:63]}"
    )
    items: list[dict[str, Any]] = cast(dict[str, Any], result).get("items", [])
    return items


def get_workflow(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj = _custom().get_namespaced_custom_object(
            ARGO_GROUP, ARGO_VERSION, namespace, WORKFLOWS, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return cast(dict[str, Any], obj)


def stop_workflow(namespace: str, name: str) -> None:
    """Ask Argo to stop a Workflow: its pods get SIGTERM, so the trainer checkpoints first."""
    try:
        _custom().patch_namespaced_custom_object(
            ARGO_GROUP, ARGO_VERSION, namespace, WORKFLOWS, name, {"spec": {"shutdown": "Stop"}}
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


def delete_run(namespace: str, workflow: str, config_map: str) -> None:
    try:
        _custom().delete_namespaced_custom_object(
            ARGO_GROUP, ARGO_VERSION, namespace, WORKFLOWS, workflow
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
    try:
        _core().delete_namespaced_config_map(config_map, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise


def get_mlops(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj = cast(
            dict[str, Any],
            _custom().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return obj


def patch_mlops_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    _custom().patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}
    )
