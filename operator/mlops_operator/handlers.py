"""kopf handlers, thin: which event calls :func:`mlops_operator.service.sync`, with what data.

- A change of an MLOps object (create, spec or annotation update, operator start): sync it.
- An event of one of our Workflows: sync the MLOps object that owns it.
- Every object not yet finished, every ``MLOPS_RESYNC_S``: sync it (repairs what events missed);
  one loop for all objects (:class:`Resync`), not a kopf timer per object.
- Deletion: stop its running Workflows, wait for them (bounded), then let go.
- Kueue mode only: an event of a Kueue Workload of one of our pods: sync the run it admits.

Two kopf indexes keep the operator's view of the cluster in memory: Workflows by owner uid and
MLOps objects by uid, so a sync reads nothing from the API server unless it is about to act.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, cast

import aiohttp
import kopf
from mlops_api.naming import LABEL_MANAGED_BY, MANAGED_BY, queue_key
from mlops_api.spec import GROUP, PLURAL, VERSION, MLOpsSpec

from mlops_operator import credentials, kube, metrics, service
from mlops_operator.queueing import QueueView, Waiting, queue_view
from mlops_operator.reconcile import FINAL_PHASES, Event, handled, now, parse_status
from mlops_operator.settings import OperatorSettings
from mlops_operator.views import (
    KUEUE,
    WorkflowView,
    WorkloadView,
    owner_uid,
    view_workflow,
    view_workload,
)

SETTINGS = OperatorSettings.from_env()
ARGO = ("argoproj.io", "v1alpha1", "workflows")
OURS = {LABEL_MANAGED_BY: MANAGED_BY}
log = logging.getLogger("mlops_operator")


class StatusDiffBaseStorage(kopf.DiffBaseStorage):
    """kopf's "last handled" state, read from the object's own status (``reconcile.handled``)
    and never written. kopf's default keeps the last handled spec in an annotation: one more
    PATCH per change (a fifth of the operator's API requests per run), a copy of the spec (a big
    spec made the patch too large), and a second record that could disagree with the status.

    Unhandled (a new generation or rerun token, or a failed action to retry): no essence, so
    kopf calls the create handler (with its retries and backoff). Handled: the current essence,
    so no change, and only an object first seen at startup gets the resume handler."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return self.build(body=body) if handled(body) else None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass  # the status written by the reconcile is the record


class ProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's progress annotations (a handler's retries and backoff, kept while it fails),
    without the marker annotation kopf adds to an object the first time it stores progress.
    A handler that succeeds at once has its progress stored and purged in the same cycle, so
    the marker would be the only thing written: a PATCH per object for nothing. It is still
    written with any progress that stays on the object (it tells other kopf-based operators to
    ignore these annotations)."""

    MARKER = "kopf-managed"

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        super().purge(key=key, body=body, patch=patch)
        metadata = patch.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        marker = f"{self.prefix}/{self.MARKER}"
        kept = [k for k, v in annotations.items() if k != marker and v is not None]
        if marker in annotations and not kept and marker not in body.metadata.annotations:
            del annotations[marker]
            if not annotations:
                del metadata["annotations"]
            if not metadata:
                del patch["metadata"]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    # Watches end server-side every 45 s and client-side after 60 s at most: a connection that
    # the API server (or a proxy) stops answering is dropped and re-made within a minute.
    settings.watching.server_timeout = 45
    settings.watching.client_timeout = 60
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = SETTINGS.api_timeout_s
    settings.networking.connect_timeout = 10
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = ProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = StatusDiffBaseStorage()
    settings.posting.reporting_component = "mlops-operator"
    # kopf would also post every handler log line of level >= this as an Event; ours are posted
    # explicitly, once per transition, so a run waiting its turn does not spam Events.
    settings.posting.level = logging.CRITICAL
    # Off: the namespaces given on the command line and the CRDs present at startup are used.
    settings.scanning.disabled = not SETTINGS.resource_scanning
    # kopf's workers stay unbounded (queueing.worker_limit None), though a burst of new objects
    # holds one per object (bench_operator measured 144 MiB peak at N=1000 with 32, 170-173
    # without): with indexes, kopf deadlocks at startup when more objects exist than the limit
    # (each worker waits for every object to be indexed; nolar/kopf#1243, kopf's docs), which
    # a restart with 20 runs and a limit of 8 reproduced (none reconciled in 90 s).
    kube.load_config(SETTINGS.api_timeout_s)
    if SETTINGS.render.queue_mode == "kueue" and not kube.api_served(*KUEUE):
        # Without Kueue nothing queues the runs (no webhook gates their pods: they would run
        # unqueued, past the quota the platform set): stop at once with the reason (the pod's
        # restarts retry, so installing Kueue is enough).
        group, version, plural = KUEUE
        raise kopf.PermanentError(
            f"queue mode kueue (the chart's kueue.enabled), but the API server serves no "
            f"{plural}.{group}/{version}: install Kueue v0.17 or later with its pod integration "
            "(integrations.frameworks: [pod]), or set kueue.enabled=false"
        )
    metrics.serve(SETTINGS.metrics_port)
    logger.info("mlops-operator started (metrics port %s)", SETTINGS.metrics_port or "off")


@kopf.on.login()
async def login(**_: Any) -> kopf.AiohttpSession:
    """kopf's credentials, from the loader the handlers' own calls use
    (:mod:`mlops_operator.credentials`: in-cluster, else the kubeconfig), in a session of our
    own that holds at most ``MLOPS_API_CONCURRENCY`` of kopf's requests in flight. kopf logs in
    again on a 401 and when the token's expiry passes.

    kopf's session allows any number of connections: a thousand new objects made a thousand
    finalizer PATCHes at once, each on a TLS connection of its own with asyncio's 256 KiB read
    buffer (``asyncio/sslproto.py``), and they stayed open as idle keep-alives. Bounding the
    connector instead would be simpler, but kopf's watch streams hold their connections for
    good, one per resource and namespace: with many watched namespaces they would take every
    connection and starve the requests. So the bound is on requests, and watches pass."""
    info = await asyncio.to_thread(connection_info)
    return kopf.AiohttpSession(
        aiohttp_session=bounded_session(info, SETTINGS.api_concurrency),
        server=info.server,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
        priority=info.priority,
    )


def connection_info(creds: credentials.Credentials | None = None) -> kopf.ConnectionInfo:
    """kopf's view of the credentials (read now: a rotated token file, a renewed exec token)."""
    creds = creds or credentials.load()
    creds.invalidate()
    return kopf.ConnectionInfo(
        server=creds.server,
        ca_path=creds.ca_path,
        ca_data=creds.ca_data,
        insecure=creds.insecure or None,
        certificate_path=creds.cert_path,
        certificate_data=creds.cert_data,
        private_key_path=creds.key_path,
        private_key_data=creds.key_data,
        token=creds.token(),
        default_namespace=creds.default_namespace,
        expiration=creds.expiration(),
    )


def bounded_session(info: kopf.ConnectionInfo, concurrency: int) -> aiohttp.ClientSession:
    """An aiohttp session as kopf makes one from ``info``, with at most ``concurrency`` requests
    in flight; watch requests (``?watch=true``) are not counted. Call it in the event loop."""
    in_flight = asyncio.Semaphore(concurrency)

    async def bounded(
        request: aiohttp.ClientRequest,
        handler: Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]],
    ) -> aiohttp.ClientResponse:
        if request.url.query.get("watch") == "true":
            return await handler(request)
        async with in_flight:
            response = await handler(request)
            await response.read()  # the body too: the connection is free when the slot is
            return response

    with warnings.catch_warnings():  # as kopf does: its own deprecation warnings only
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="kopf")
        auth = info.as_aiohttp_basic_auth()
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        auth=auth,
        proxy=info.proxy_url,
        trust_env=info.trust_env,
        middlewares=(bounded,),
    )


# === Indexes ===


@kopf.index(*ARGO, labels=OURS)
def workflows_by_owner(body: kopf.Body, **_: Any) -> dict[str, WorkflowView] | None:
    uid = owner_uid(body)
    return {uid: view_workflow(body)} if uid else None


@kopf.index(GROUP, VERSION, PLURAL)
def mlops_by_uid(body: kopf.Body, uid: str | None, **_: Any) -> dict[str, bytes] | None:
    return {uid: service.pack(body)} if uid else None


@kopf.index(*ARGO, labels=OURS)
def workflows_by_queue(body: kopf.Body, **_: Any) -> dict[str, WorkflowView]:
    view = view_workflow(body)
    return {view.queue: view} if view.queue else {}  # {}, not None: see waiting_by_queue


@kopf.index(GROUP, VERSION, PLURAL)
def waiting_by_queue(body: kopf.Body, uid: str | None, **_: Any) -> dict[str, Waiting]:
    status = parse_status(body.get("status"))
    if not uid or status.reason != "WaitingForQueue" or not status.queue:
        # Empty, never None: kopf keeps an object's previous entries when its index function
        # returns None, so a run admitted long ago would still wait "ahead" of every later one.
        return {}
    waiting = Waiting(
        created=str(body.metadata.get("creationTimestamp") or ""),
        since=status.queued_at or now(),
        uid=uid,
        name=str(body.metadata.name),
        namespace=str(body.metadata.namespace),
    )
    return {status.queue: waiting}


def _queues(
    by_queue: Mapping[str, Iterable[WorkflowView]], waiting: Mapping[str, Iterable[Waiting]]
) -> service.QueueLookup:
    """How a queue stands for one object, from the indexes (and the queue ConfigMap's size)."""

    def look(
        body: Mapping[str, Any], queue: str, admitted: Mapping[str, Mapping[str, int]]
    ) -> QueueView:
        meta = body["metadata"]
        render = SETTINGS.render
        key = queue_key(queue, meta["namespace"], render.queue_namespace)
        status = parse_status(body.get("status"))
        me = Waiting(
            created=str(meta.get("creationTimestamp") or ""),
            since=status.queued_at or now(),
            uid=str(meta["uid"]),
        )
        capacity = kube.queue_capacity(
            render.queue_namespace or meta["namespace"], render.queue_config_map, queue
        )
        return queue_view(
            key,
            capacity,
            by_queue.get(key, []),
            waiting.get(key, []),
            me,
            admitted=admitted.get(key),
        )

    return look


# kopf passes each index as a keyword argument named after its function; the defaults only keep
# the handlers' signatures compatible with kopf's callback protocols.
Owned = Mapping[str, Iterable[WorkflowView]]
Workloads = Mapping[str, Iterable[WorkloadView]]
NO_INDEX: Mapping[str, Any] = {}


def _owned(index: Owned, uid: str | None) -> list[WorkflowView]:
    return list(index.get(uid, [])) if uid else []


def _in(index: Workloads, body: Mapping[str, Any]) -> list[WorkloadView]:
    """Kueue's Workloads in the object's namespace (none unless in kueue mode)."""
    return list(index.get(str(body["metadata"]["namespace"]), []))


def _post(body: Mapping[str, Any], event: Event) -> None:
    kopf.event(cast(Any, dict(body)), type=event.type, reason=event.reason, message=event.message)


def _backoff(retry: int) -> float:
    return float(min(15 * 2**retry, 600))


# === Handlers ===


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
def reconcile(
    body: kopf.Body,
    uid: str,
    retry: int,
    *,
    workflows_by_owner: Owned = NO_INDEX,
    workflows_by_queue: Owned = NO_INDEX,
    waiting_by_queue: Mapping[str, Iterable[Waiting]] = NO_INDEX,
    workloads_by_namespace: Workloads = NO_INDEX,
    mlops_by_uid: Mapping[str, Iterable[bytes]] = NO_INDEX,
    **_: Any,
) -> None:
    RESYNC.start_once(
        {
            "mlops_by_uid": mlops_by_uid,
            "workflows_by_owner": workflows_by_owner,
            "workflows_by_queue": workflows_by_queue,
            "waiting_by_queue": waiting_by_queue,
            "workloads_by_namespace": workloads_by_namespace,
        }
    )
    try:
        service.sync(
            body,
            _owned(workflows_by_owner, uid),
            SETTINGS,
            fresh=True,
            handler="reconcile",
            post=_post,
            queues=_queues(workflows_by_queue, waiting_by_queue),
            workloads=_in(workloads_by_namespace, body),
        )
    except kube.ApiError as exc:
        raise kopf.TemporaryError(str(exc), delay=_backoff(retry)) from None


def _needs_resync(body: Mapping[str, Any]) -> bool:
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return False  # being deleted: the deletion handler has it
    return not handled(body) or parse_status(body.get("status")).phase not in FINAL_PHASES


class Resync:
    """The periodic resync: every ``MLOPS_RESYNC_S``, one pass over the MLOps index syncs each
    object not yet finished (:func:`resync`), one after another on one thread.

    Not a kopf timer per object: kopf runs each timer as an asyncio task that holds the latest
    full body of its object (``managedFields`` included) for as long as the object lives. At a
    thousand objects the timers cost about 24 MiB of peak RSS (``bench/bench_operator.py --n
    1000``, three alternating runs each: 190-194 MiB with timers, 166-171 with this loop). This
    holds nothing per object: the pass reads the index, which the operator keeps anyway.

    It starts from the first change handler (:meth:`start_once`), in a copy of that handler's
    context: ``kopf.event()`` posts through context variables that kopf sets only for its
    handlers, not for startup handlers. An operator with no object yet has nothing to resync."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start_once(self, indexes: Mapping[str, Any]) -> None:
        with self._lock:
            if self._thread is not None or self.stop.is_set():
                return
            context = contextvars.copy_context()
            self._thread = threading.Thread(
                target=context.run, args=(self._forever, dict(indexes)), name="mlops-resync",
                daemon=True,
            )  # fmt: skip
            self._thread.start()

    def _forever(self, indexes: dict[str, Any]) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                self.run_once(**indexes)
            except Exception:  # one thread for every object: it must not end on a bug
                log.exception("resync pass failed (the next one retries)")

    def run_once(self, mlops_by_uid: Mapping[str, Iterable[bytes]], **indexes: Any) -> int:
        """One pass; returns how many objects it synced. A failure with one object is logged
        and the pass goes on (the next pass retries it)."""
        synced = 0
        for packed in _snapshot(mlops_by_uid):
            if self.stop.is_set():
                break
            body: Mapping[str, Any] = {}
            try:
                body = service.unpack(packed)
                if not _needs_resync(body):
                    continue
                synced += 1
                resync(body, str(body["metadata"]["uid"]), **indexes)
            except Exception:
                meta = body.get("metadata") or {}
                log.exception("resync of %s/%s failed", meta.get("namespace"), meta.get("name"))
        return synced


def _snapshot(index: Mapping[str, Iterable[bytes]]) -> list[bytes]:
    """The index's objects, copied: kopf updates it on its event loop while this thread reads,
    and a dict that changes size during iteration raises; a few tries always find a calm spot."""
    for _ in range(10):
        try:
            return [body for views in list(index.values()) for body in list(views)]
        except RuntimeError:
            continue
    return []


RESYNC = Resync(SETTINGS.resync_s)


@kopf.on.cleanup()
def stop_resync(**_: Any) -> None:
    RESYNC.stop.set()


def resync(
    body: Mapping[str, Any],
    uid: str,
    *,
    workflows_by_owner: Owned = NO_INDEX,
    workflows_by_queue: Owned = NO_INDEX,
    waiting_by_queue: Mapping[str, Iterable[Waiting]] = NO_INDEX,
    workloads_by_namespace: Workloads = NO_INDEX,
    **_: Any,
) -> None:
    try:
        service.sync(
            body,
            _owned(workflows_by_owner, uid),
            SETTINGS,
            fresh=False,
            handler="resync",
            post=_post,
            # Without its queue a waiting run would be admitted whatever the queue's size.
            queues=_queues(workflows_by_queue, waiting_by_queue),
            workloads=_in(workloads_by_namespace, body),
        )
        service.nudge_argo(body, _owned(workflows_by_owner, uid), post=_post)
    except kube.ApiError as exc:
        name = body["metadata"]["name"]
        log.warning("resync of %s failed (retried at the next one): %s", name, exc)


@kopf.on.event(*ARGO, labels=OURS)
def follow_workflow(
    body: kopf.Body,
    type: str | None,
    *,
    mlops_by_uid: Mapping[str, Iterable[bytes]] = NO_INDEX,
    workflows_by_owner: Owned = NO_INDEX,
    workflows_by_queue: Owned = NO_INDEX,
    waiting_by_queue: Mapping[str, Iterable[Waiting]] = NO_INDEX,
    workloads_by_namespace: Workloads = NO_INDEX,
    **_: Any,
) -> None:
    """A Workflow changed: sync its owner (its status follows the run); when a queued run ends,
    also the run that waited longest for that queue (its units are free now)."""
    queues = _queues(workflows_by_queue, waiting_by_queue)
    uids = [owner_uid(body)]
    view = view_workflow(body)
    if view.queue and (view.finished or type == "DELETED"):
        head = min(waiting_by_queue.get(view.queue, []), default=None)
        if head is not None:
            uids.append(head.uid)
    for uid in uids:
        _sync_owner(
            uid, "follow", str(body.metadata.name), mlops_by_uid=mlops_by_uid,
            workflows_by_owner=workflows_by_owner, queues=queues,
            workloads_by_namespace=workloads_by_namespace,
        )  # fmt: skip


def _sync_owner(
    uid: str | None,
    handler: str,
    what: str,
    *,
    mlops_by_uid: Mapping[str, Iterable[bytes]],
    workflows_by_owner: Owned,
    queues: service.QueueLookup,
    workloads_by_namespace: Workloads,
) -> None:
    """Sync the MLOps object ``uid`` after an event of ``what`` (one of its children), from the
    indexes; nothing when there is none (not ours, or gone: garbage collection follows)."""
    parents = list(mlops_by_uid.get(uid, [])) if uid else []
    if not parents:
        return
    parent = service.unpack(parents[0])
    try:
        service.sync(
            parent,
            _owned(workflows_by_owner, uid),
            SETTINGS,
            fresh=False,
            handler=handler,
            post=_post,
            queues=queues,
            workloads=_in(workloads_by_namespace, parent),
        )
    except kube.ApiError as exc:
        log.warning("following %s failed (the resync retries): %s", what, exc)


def workloads_by_namespace(body: kopf.Body, **_: Any) -> dict[str, WorkloadView] | None:
    view = view_workload(body)
    return {view.namespace: view} if view else None


def follow_workload(
    body: kopf.Body,
    *,
    mlops_by_uid: Mapping[str, Iterable[bytes]] = NO_INDEX,
    workflows_by_owner: Owned = NO_INDEX,
    workflows_by_queue: Owned = NO_INDEX,
    waiting_by_queue: Mapping[str, Iterable[Waiting]] = NO_INDEX,
    workloads_by_namespace: Workloads = NO_INDEX,
    **_: Any,
) -> None:
    """A Workload changed (Kueue admitted a trainer pod, or says why not yet): sync the run whose
    Workflow made that pod (Argo names a Workflow's pods after it)."""
    view = view_workload(body)
    if view is None:
        return
    mine = [
        w
        for views in workflows_by_owner.values()
        for w in views
        if w.namespace == view.namespace and view.of(w.name)
    ]
    if not mine:
        return  # not a pod of ours (Kueue admits other workloads too)
    _sync_owner(
        mine[0].owner_uid, "kueue", str(body.metadata.name), mlops_by_uid=mlops_by_uid,
        workflows_by_owner=workflows_by_owner, queues=_queues(workflows_by_queue, waiting_by_queue),
        workloads_by_namespace=workloads_by_namespace,
    )  # fmt: skip


if SETTINGS.render.queue_mode == "kueue":
    # Only then: without Kueue its CRDs are missing, and kopf would warn about them forever.
    kopf.index(*KUEUE)(workloads_by_namespace)
    kopf.on.event(*KUEUE)(follow_workload)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def stop_on_delete(
    meta: kopf.Meta,
    spec: kopf.Spec,
    uid: str,
    logger: kopf.Logger,
    workflows_by_owner: Owned = NO_INDEX,
    **_: Any,
) -> None:
    """Stop running Workflows (the trainer checkpoints on SIGTERM) before garbage collection
    deletes them, for at most ``MLOPS_STOP_TIMEOUT_S`` after the deletion was asked for."""
    namespace, name = meta["namespace"], meta["name"]
    metrics.observe_phase(f"{namespace}/{name}", None)
    service.forget(uid)
    if not _stop_on_delete(spec):
        return
    running = [w for w in _owned(workflows_by_owner, uid) if not w.finished]
    try:
        for workflow in running:
            if not workflow.shutdown:
                kube.stop_workflow(namespace, workflow.name, "Stop")
        pods = kube.live_pods(namespace, uid)
    except kube.ApiError as exc:
        raise kopf.TemporaryError(str(exc), delay=5) from None
    if not running and not pods:
        return
    asked = str(meta.get("deletionTimestamp") or now().isoformat())
    waited = (now() - datetime.fromisoformat(asked.replace("Z", "+00:00"))).total_seconds()
    what = ", ".join([w.name for w in running] + pods)
    if waited < SETTINGS.stop_timeout_s:
        raise kopf.TemporaryError(f"waiting for {what} to stop ({waited:.0f} s)", delay=5)
    logger.warning(
        "gave up waiting %.0f s for %s to stop; garbage collection deletes them", waited, what
    )


def _stop_on_delete(spec: Mapping[str, Any]) -> bool:
    try:
        return MLOpsSpec.model_validate(dict(spec)).stop_on_delete
    except ValueError:  # an invalid spec made no run to stop
        return False


@kopf.on.probe(id="api")
def api_reachable(**_: Any) -> str:
    """Liveness: fails when the API server has not answered for ``MLOPS_API_STALE_S``."""
    if kube.HEALTH.age() > SETTINGS.api_stale_s:
        try:
            kube.ping()
        except kube.ApiError as exc:
            raise kopf.PermanentError(f"the API server does not answer: {exc}") from None
    return f"last API answer {kube.HEALTH.age():.0f} s ago"
