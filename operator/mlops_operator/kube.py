"""The Kubernetes calls the handlers make: one shared client, a timeout on every call.

kopf runs synchronous handlers in threads; a call without a timeout on a wedged connection
would hold its thread forever while liveness stays green. So every call here passes
``_request_timeout``, every success refreshes :data:`HEALTH` (liveness fails when nothing has
succeeded for a while), and every failure becomes an :class:`ApiError` that says whether waiting
can cure it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from mlops_api.naming import (
    ANNOTATION_ENDED_BEFORE_STOP,
    ANNOTATION_NUDGED_AT,
    LABEL_MANAGED_BY,
    LABEL_OWNER_UID,
    LABEL_RUN_ID,
    MANAGED_BY,
)
from mlops_api.spec import GROUP, PLURAL, VERSION
from urllib3.exceptions import HTTPError

from mlops_operator import metrics
from mlops_operator.views import PodState

ARGO_GROUP, ARGO_VERSION, WORKFLOWS = "argoproj.io", "v1alpha1", "workflows"
T = TypeVar("T")


@dataclass
class _Health:
    """When an API call last succeeded (liveness reads it)."""

    last_ok: float = 0.0
    last_error: str = ""

    def ok(self) -> None:
        self.last_ok = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.last_ok if self.last_ok else float("inf")


HEALTH = _Health()


@dataclass
class _Client:
    """The one shared API client (urllib3 pools are thread-safe) and the default timeout."""

    api: client.ApiClient | None = None
    timeout: tuple[float, float] = (10.0, 30.0)
    lock: threading.Lock = field(default_factory=threading.Lock)


_CLIENT = _Client()


class ApiError(Exception):
    """A failed API call, classified: ``transient`` ones are retried with backoff; the others
    (the request itself is refused: 400/422, an admission webhook) are not."""

    def __init__(self, what: str, status: int | None, reason: str, message: str) -> None:
        super().__init__(f"{what}: {message}")
        self.what, self.status, self.reason, self.message = what, status, reason, message

    @property
    def transient(self) -> bool:
        # 403 is often a quota (exceeded quota: it frees up) or RBAC being rolled out; 404 a
        # namespace or CRD appearing; 409 a race; 429 and 5xx load. 400/422 will not change.
        return self.status not in (400, 422)


def load_config(timeout_s: float = 30.0) -> None:
    """Load in-cluster (else local kubeconfig) credentials; make the one shared client."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    with _CLIENT.lock:
        _CLIENT.timeout = (min(10.0, timeout_s), timeout_s)
        _CLIENT.api = client.ApiClient()


def api() -> client.ApiClient:
    with _CLIENT.lock:
        if _CLIENT.api is None:
            _CLIENT.api = client.ApiClient()
        return _CLIENT.api


def call(
    what: str,
    fn: Callable[..., T],
    *args: Any,
    timeout: tuple[float, float] | None = None,
    **kwargs: Any,
) -> T:
    """``fn(*args, **kwargs)`` with the timeout; errors become :class:`ApiError`."""
    try:
        result = fn(*args, _request_timeout=timeout or _CLIENT.timeout, **kwargs)
    except ApiException as exc:
        HEALTH.ok()  # the server answered: the connection is fine
        reason, message = _explain(exc)
        error = ApiError(what, exc.status, reason, message)
        metrics.API_ERRORS.labels(code=str(exc.status)).inc()
        raise error from None
    except (HTTPError, OSError) as exc:
        HEALTH.last_error = f"{what}: {exc}"
        metrics.API_ERRORS.labels(code="network").inc()
        raise ApiError(what, None, type(exc).__name__, str(exc)) from None
    HEALTH.ok()
    return result


def _explain(exc: ApiException) -> tuple[str, str]:
    """(reason, message) of a failed call: the API server's Status object says both, e.g.
    ("Forbidden", "... exceeded quota: ..."), ("Invalid", "... denied by policy ...")."""
    import json

    fallback = (str(exc.reason or "Error").replace(" ", ""), f"{exc.status} {exc.reason}")
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return fallback
    if not isinstance(body, dict):
        return fallback
    reason = str(body.get("reason") or fallback[0])
    return reason, str(body.get("message") or fallback[1])[:2000]


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(api())


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api())


def _rbac() -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(api())


def ping() -> None:
    """A cheap authenticated call (the server's version), to prove the connection works."""
    call("GET /version", client.VersionApi(api()).get_code, timeout=(3.0, 5.0))


def api_served(group: str, version: str, plural: str) -> bool:
    """Whether the API server serves ``plural`` in ``group/version`` (a CRD installed)."""
    try:
        found = call(
            f"GET /apis/{group}/{version}", _custom().get_api_resources, group, version,
            timeout=(3.0, 10.0),
        )  # fmt: skip
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return any(r.name == plural for r in found.resources or [])


# === Children ===


class ChildConflictError(Exception):
    """A child's name is taken by an object that is not this MLOps object's."""

    def __init__(self, kind: str, namespace: str, name: str, owner: str) -> None:
        super().__init__(
            f"{kind} {namespace}/{name} already exists and belongs to {owner}, not to this "
            "object: it is left alone (rename or delete one of them)"
        )
        self.kind, self.name = kind, name


def _owners(obj: Mapping[str, Any]) -> list[str]:
    return [
        str(ref.get("uid"))
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
        if ref.get("uid")
    ]


def _describe_owner(obj: Mapping[str, Any]) -> str:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    if not refs:
        return "no MLOps object (it has no owner)"
    return ", ".join(f"{r.get('kind')} {r.get('name')} (uid {r.get('uid')})" for r in refs)


def create_child(obj: dict[str, Any], owner_uid: str) -> Literal["created", "exists"]:
    """Create a ConfigMap or Workflow owned by ``owner_uid``.

    An existing object of that name is "exists" only when it is ours (an earlier attempt, maybe
    by an operator that died mid-reconcile); anybody else's raises :class:`ChildConflictError` and is
    never adopted — e.g. a Workflow of a deleted object that garbage collection has not removed.
    """
    kind = obj["kind"]
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    try:
        if kind == "ConfigMap":
            call(f"create ConfigMap {name}", _core().create_namespaced_config_map, namespace, obj)
        elif kind == "Workflow":
            call(
                f"create Workflow {name}",
                _custom().create_namespaced_custom_object,
                ARGO_GROUP,
                ARGO_VERSION,
                namespace,
                WORKFLOWS,
                obj,
            )
        else:
            raise ValueError(f"unexpected kind {kind}")
    except ApiError as exc:
        if exc.status != 409:
            raise
        live = get_child(kind, namespace, name)
        if live is None:
            raise  # gone again between the two calls: retried
        if owner_uid not in _owners(live):
            raise ChildConflictError(kind, namespace, name, _describe_owner(live)) from None
        return "exists"
    return "created"


def get_child(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        if kind == "ConfigMap":
            cm = call(f"get ConfigMap {name}", _core().read_namespaced_config_map, name, namespace)
            return cast(dict[str, Any], api().sanitize_for_serialization(cm))  # type: ignore[no-untyped-call]
        return cast(
            dict[str, Any],
            call(
                f"get Workflow {name}",
                _custom().get_namespaced_custom_object,
                ARGO_GROUP,
                ARGO_VERSION,
                namespace,
                WORKFLOWS,
                name,
            ),
        )
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def _patch_workflow(what: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
    """A merge patch of a Workflow; one already gone is no error."""
    try:
        call(
            f"{what} Workflow {name}",
            _custom().patch_namespaced_custom_object,
            ARGO_GROUP,
            ARGO_VERSION,
            namespace,
            WORKFLOWS,
            name,
            patch,
        )
    except ApiError as exc:
        if exc.status != 404:
            raise


def stop_workflow(namespace: str, name: str, mode: str = "Stop", ended: int = 0) -> None:
    """Ask Argo to stop a Workflow: its pods get SIGTERM, so the trainer checkpoints first.
    ``ended``: its attempts that had ended before the stop (recorded on it, for the budgets)."""
    _patch_workflow(
        "stop",
        namespace,
        name,
        {
            "metadata": {"annotations": {ANNOTATION_ENDED_BEFORE_STOP: str(ended)}},
            "spec": {"shutdown": mode},
        },
    )


def live_pods(namespace: str, owner_uid: str, *, run: str | None = None) -> list[str]:
    """Trainer pods of an MLOps object (of one of its runs) that have not ended yet. A stopped
    Workflow is marked finished at once; its trainer is still checkpointing until its pod ends."""
    selector = f"{LABEL_OWNER_UID}={owner_uid}" + (f",{LABEL_RUN_ID}={run}" if run else "")
    pods = call(
        f"list pods of {owner_uid}",
        _core().list_namespaced_pod,
        namespace,
        label_selector=selector,
    )
    return sorted(
        str(p.metadata.name if p.metadata else "")
        for p in pods.items
        if (p.status.phase if p.status else None) not in ("Succeeded", "Failed")
    )


def workflow_pods(namespace: str, workflow: str) -> dict[str, PodState]:
    """The pods of one Workflow by name: their phase and, once ended, when their last
    container ended."""
    pods = call(
        f"list pods of Workflow {workflow}",
        _core().list_namespaced_pod,
        namespace,
        label_selector=f"workflows.argoproj.io/workflow={workflow}",
    )
    states: dict[str, PodState] = {}
    for pod in pods.items:
        ended = [
            c.state.terminated.finished_at
            for c in (pod.status.container_statuses or [] if pod.status else [])
            if c.state and c.state.terminated and c.state.terminated.finished_at
        ]
        states[str(pod.metadata.name if pod.metadata else "")] = PodState(
            phase=str(pod.status.phase if pod.status else ""),
            ended_at=max(ended).isoformat() if ended else None,
        )
    return states


def nudge_workflow(namespace: str, name: str, at: str) -> None:
    """Touch a Workflow (an annotation) so that Argo reconciles it now: Argo reacts to any
    change of the Workflow object."""
    _patch_workflow(
        "annotate", namespace, name, {"metadata": {"annotations": {ANNOTATION_NUDGED_AT: at}}}
    )


def delete_run(namespace: str, workflow: str, config_map: str) -> None:
    for what, fn, args in (
        (
            f"delete Workflow {workflow}",
            _custom().delete_namespaced_custom_object,
            (ARGO_GROUP, ARGO_VERSION, namespace, WORKFLOWS, workflow),
        ),
        (
            f"delete ConfigMap {config_map}",
            _core().delete_namespaced_config_map,
            (config_map, namespace),
        ),
    ):
        try:
            call(what, fn, *args)
        except ApiError as exc:
            if exc.status != 404:
                raise


# === The MLOps object ===


def get_mlops(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return cast(
            dict[str, Any],
            call(
                f"get MLOps {name}",
                _custom().get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
            ),
        )
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


class StaleObjectError(Exception):
    """The object changed since it was read (409 on a resourceVersion precondition)."""


def replace_status(body: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    """Write the whole status, only if the object is still at ``body``'s resourceVersion.

    The operator is the status' one writer and decides from what it read; a newer object means
    its decision may be stale, so it re-reads and decides again (:class:`StaleObjectError`).
    """
    meta = body["metadata"]
    obj = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": body.get("kind", "MLOps"),
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "resourceVersion": meta["resourceVersion"],
        },
        "spec": body.get("spec"),
        "status": dict(status),
    }
    try:
        return cast(
            dict[str, Any],
            call(
                f"update MLOps {meta['name']} status",
                _custom().replace_namespaced_custom_object_status,
                GROUP,
                VERSION,
                meta["namespace"],
                PLURAL,
                meta["name"],
                obj,
            ),
        )
    except ApiError as exc:
        if exc.status == 409:
            raise StaleObjectError(str(exc)) from None
        raise


# === Queues ===

_capacity_cache: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
CAPACITY_TTL_S = 10.0


def queue_capacity(namespace: str, config_map: str, key: str) -> int | None:
    """Units of queue ``key`` (the queue ConfigMap's value), read at most every 10 s; None when
    the ConfigMap or the key is missing or not a number."""
    cached = _capacity_cache.get((namespace, config_map))
    if cached is None or time.monotonic() - cached[0] > CAPACITY_TTL_S:
        try:
            cm = call(
                f"get ConfigMap {namespace}/{config_map}",
                _core().read_namespaced_config_map,
                config_map,
                namespace,
            )
            data = dict(cm.data or {})
        except ApiError as exc:
            if exc.status != 404:
                raise
            data = {}
        cached = (time.monotonic(), data)
        _capacity_cache[(namespace, config_map)] = cached
    value = cached[1].get(key, "")
    return int(value) if value.strip().isdigit() else None


# === What a run namespace needs ===

# Argo's executor (emissary) reports a pod's outputs as WorkflowTaskResults (Argo >= 3.4).
EXECUTOR_RULES = [
    {
        "apiGroups": ["argoproj.io"],
        "resources": ["workflowtaskresults"],
        "verbs": ["create", "patch"],
    }
]


def _create_if_absent(what: str, fn: Callable[..., Any], *args: Any) -> None:
    try:
        call(what, fn, *args)
    except ApiError as exc:
        if exc.status != 409:
            raise


def provision_namespace(
    namespace: str, service_account: str, sa_annotations: Mapping[str, str]
) -> None:
    """The trainer ServiceAccount and the executor's Role + RoleBinding in ``namespace`` (named as
    the chart names them where it makes them itself)."""
    labels = {LABEL_MANAGED_BY: MANAGED_BY}
    role = f"{service_account}-executor"
    _create_if_absent(
        f"create ServiceAccount {namespace}/{service_account}",
        _core().create_namespaced_service_account,
        namespace,
        {
            "metadata": {
                "name": service_account,
                "labels": labels,
                "annotations": dict(sa_annotations),
            }
        },
    )
    _create_if_absent(
        f"create Role {namespace}/{role}",
        _rbac().create_namespaced_role,
        namespace,
        {"metadata": {"name": role, "labels": labels}, "rules": EXECUTOR_RULES},
    )
    _create_if_absent(
        f"create RoleBinding {namespace}/{role}",
        _rbac().create_namespaced_role_binding,
        namespace,
        {
            "metadata": {"name": role, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [
                {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
            ],
        },
    )


def service_account_exists(namespace: str, name: str) -> bool:
    try:
        call(
            f"get ServiceAccount {namespace}/{name}",
            _core().read_namespaced_service_account,
            name,
            namespace,
        )
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True
