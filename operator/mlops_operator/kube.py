"""The Kubernetes calls the handlers make: one shared client, a timeout on every call.

kopf runs synchronous handlers in threads; a call without a timeout on a wedged connection
would hold its thread forever while liveness stays green. So every call here passes
``_request_timeout``, every success refreshes :data:`HEALTH` (liveness fails when nothing has
succeeded for a while), and every failure becomes an :class:`ApiError` that says whether waiting
can cure it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast
from urllib.parse import urlencode

import urllib3
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

from mlops_operator import credentials, metrics
from mlops_operator.views import PodState

ARGO_GROUP, ARGO_VERSION, WORKFLOWS = "argoproj.io", "v1alpha1", "workflows"
RBAC = "rbac.authorization.k8s.io"
USER_AGENT = "mlops-operator"


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
    """The one shared connection pool (urllib3's is thread-safe: kopf runs synchronous handlers
    in threads), the credentials and the default timeout."""

    pool: urllib3.PoolManager | None = None
    creds: credentials.Credentials | None = None
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


def load_config(timeout_s: float = 30.0, creds: credentials.Credentials | None = None) -> None:
    """Load in-cluster (else local kubeconfig) credentials; make the one shared pool."""
    creds = creds or credentials.load()
    pool = urllib3.PoolManager(
        # As many connections as kopf has handler threads at once, kept for reuse.
        maxsize=min(32, (os.cpu_count() or 1) * 5),
        ssl_context=creds.ssl_context() if creds.server.startswith("https:") else None,
        retries=False,
    )
    with _CLIENT.lock:
        _CLIENT.timeout = (min(10.0, timeout_s), timeout_s)
        _CLIENT.creds, _CLIENT.pool = creds, pool


def _connection() -> tuple[urllib3.PoolManager, credentials.Credentials]:
    with _CLIENT.lock:
        if _CLIENT.pool is not None and _CLIENT.creds is not None:
            return _CLIENT.pool, _CLIENT.creds
    load_config(_CLIENT.timeout[1])
    assert _CLIENT.pool is not None and _CLIENT.creds is not None
    return _CLIENT.pool, _CLIENT.creds


def call(
    what: str,
    method: str,
    path: str,
    *,
    body: Any = None,
    query: Mapping[str, str] | None = None,
    content_type: str = "application/json",
    timeout: tuple[float, float] | None = None,
) -> Any:
    """One API request (``path`` from ``/api`` or ``/apis``), with the timeout; its JSON answer.
    Errors become :class:`ApiError` (credentials that cannot be had too: transient, like the
    network); a 401 fetches the token again and retries once (a rotated ServiceAccount token, an
    expired exec-plugin token)."""
    pool, creds = _connection()
    url = creds.server + path + (f"?{urlencode(query)}" if query else "")
    data = None if body is None else json.dumps(body).encode()
    connect, read = timeout or _CLIENT.timeout
    for attempt in range(2):
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if data is not None:
            headers["Content-Type"] = content_type
        try:
            token = creds.token()
        except credentials.CredentialsError as exc:
            # A plugin that stopped working or a token file between swaps: waited out and
            # retried like an unreachable server, and liveness sees it (nothing succeeds).
            HEALTH.last_error = f"{what}: {exc}"
            metrics.API_ERRORS.labels(code="credentials").inc()
            raise ApiError(what, None, "CredentialsError", str(exc)) from None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = pool.request(
                method, url, body=data, headers=headers,
                timeout=urllib3.Timeout(connect=connect, read=read),
            )  # fmt: skip
        except (HTTPError, OSError) as exc:
            HEALTH.last_error = f"{what}: {exc}"
            metrics.API_ERRORS.labels(code="network").inc()
            raise ApiError(what, None, type(exc).__name__, str(exc)) from None
        HEALTH.ok()  # the server answered: the connection is fine
        if response.status == 401 and attempt == 0 and token:
            creds.invalidate()
            continue
        break
    if response.status >= 400:
        reason, message = _explain(response.status, response.reason, response.data)
        metrics.API_ERRORS.labels(code=str(response.status)).inc()
        raise ApiError(what, response.status, reason, message)
    return json.loads(response.data) if response.data else None


def _explain(status: int, http_reason: str | None, data: bytes) -> tuple[str, str]:
    """(reason, message) of a failed call: the API server's Status object says both, e.g.
    ("Forbidden", "... exceeded quota: ..."), ("Invalid", "... denied by policy ...")."""
    fallback = (
        str(http_reason or "Error").replace(" ", ""),
        f"{status} {http_reason or ''}".strip(),
    )
    try:
        body = json.loads(data or b"{}")
    except (TypeError, ValueError):
        return fallback
    if not isinstance(body, dict):
        return fallback
    reason = str(body.get("reason") or fallback[0])
    return reason, str(body.get("message") or fallback[1])[:2000]


def _namespaced(group: str, version: str, namespace: str, plural: str, name: str = "") -> str:
    """The path of a namespaced collection or object (the core group is ``/api/v1``)."""
    root = f"/apis/{group}/{version}" if group else f"/api/{version}"
    return f"{root}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


def _core(namespace: str, plural: str, name: str = "") -> str:
    return _namespaced("", "v1", namespace, plural, name)


def _argo(namespace: str, name: str = "") -> str:
    return _namespaced(ARGO_GROUP, ARGO_VERSION, namespace, WORKFLOWS, name)


def ping() -> None:
    """A cheap authenticated call (the server's version), to prove the connection works."""
    call("GET /version", "GET", "/version", timeout=(3.0, 5.0))


def api_served(group: str, version: str, plural: str) -> bool:
    """Whether the API server serves ``plural`` in ``group/version`` (a CRD installed)."""
    try:
        found = call(
            f"GET /apis/{group}/{version}", "GET", f"/apis/{group}/{version}",
            timeout=(3.0, 10.0),
        )  # fmt: skip
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return any(r.get("name") == plural for r in (found or {}).get("resources") or [])


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
            call(f"create ConfigMap {name}", "POST", _core(namespace, "configmaps"), body=obj)
        elif kind == "Workflow":
            call(f"create Workflow {name}", "POST", _argo(namespace), body=obj)
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
            path = _core(namespace, "configmaps", name)
        else:
            path = _argo(namespace, name)
        return cast(dict[str, Any], call(f"get {kind} {name}", "GET", path))
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def _patch_workflow(what: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
    """A merge patch of a Workflow; one already gone is no error."""
    try:
        call(
            f"{what} Workflow {name}", "PATCH", _argo(namespace, name), body=patch,
            content_type="application/merge-patch+json",
        )  # fmt: skip
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
        f"list pods of {owner_uid}", "GET", _core(namespace, "pods"),
        query={"labelSelector": selector},
    )  # fmt: skip
    return sorted(
        str((p.get("metadata") or {}).get("name") or "")
        for p in pods.get("items") or []
        if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )


def workflow_pods(namespace: str, workflow: str) -> dict[str, PodState]:
    """The pods of one Workflow by name: their phase and, once ended, when their last
    container ended."""
    pods = call(
        f"list pods of Workflow {workflow}", "GET", _core(namespace, "pods"),
        query={"labelSelector": f"workflows.argoproj.io/workflow={workflow}"},
    )  # fmt: skip
    states: dict[str, PodState] = {}
    for pod in pods.get("items") or []:
        status = pod.get("status") or {}
        ended = [
            datetime.fromisoformat(finished)
            for c in status.get("containerStatuses") or []
            if (finished := ((c.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        ]
        states[str((pod.get("metadata") or {}).get("name") or "")] = PodState(
            phase=str(status.get("phase") or ""),
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
    for what, path in (
        (f"delete Workflow {workflow}", _argo(namespace, workflow)),
        (f"delete ConfigMap {config_map}", _core(namespace, "configmaps", config_map)),
    ):
        try:
            call(what, "DELETE", path)
        except ApiError as exc:
            if exc.status != 404:
                raise


# === The MLOps object ===


def get_mlops(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        path = _namespaced(GROUP, VERSION, namespace, PLURAL, name)
        return cast(dict[str, Any], call(f"get MLOps {name}", "GET", path))
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
                "PUT",
                _namespaced(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"]) + "/status",
                body=obj,
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
                f"get ConfigMap {namespace}/{config_map}", "GET",
                _core(namespace, "configmaps", config_map),
            )  # fmt: skip
            data = dict(cm.get("data") or {})
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


def _create_if_absent(what: str, path: str, body: Mapping[str, Any]) -> None:
    try:
        call(what, "POST", path, body=body)
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
        _core(namespace, "serviceaccounts"),
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
        _namespaced(RBAC, "v1", namespace, "roles"),
        {"metadata": {"name": role, "labels": labels}, "rules": EXECUTOR_RULES},
    )
    _create_if_absent(
        f"create RoleBinding {namespace}/{role}",
        _namespaced(RBAC, "v1", namespace, "rolebindings"),
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
            f"get ServiceAccount {namespace}/{name}", "GET",
            _core(namespace, "serviceaccounts", name),
        )  # fmt: skip
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True
