"""The operator against a concurrent plain client doing the same writes, on one real API server.

For each N (default 100 and 1000), side by side in the same period:

* **ours**: the operator as the chart installs it (``helm install`` with the chart's defaults,
  finalizer and ``stopOnDelete`` on; run as a local process with the Deployment's own args and
  env, authenticated as the chart's ServiceAccount), watching namespace A.
* **floor**: a plain client in its own process, watching namespace B. For each MLOps object its
  watch delivers it makes exactly the necessary writes on a pool of worker threads sharing one
  keep-alive ``ApiClient``: create the ConfigMap, create the Workflow (both from the same pure
  builder, ``mlops_workflows.render.render``, with the operator's render settings), update the
  status to ``Queued``. No finalizer, no bookkeeping annotations, no Events: the least any
  controller could do.

One applier thread pool creates the N + N objects interleaved (A, B, A, B, ...), so both sides
get the same stream at the same rate. The bench watches both namespaces (MLOps objects and
Workflows); an object is done when its status is ``Queued``/``Running`` with its Workflow
submitted and that Workflow was seen by the Workflow watch. Reported per N:

* ``operator_n<N>``: the time from the first apply to the last object done, ours / floor; its
  notes: p50/p99 latency from an object's apply to its Workflow seen by the watch, both sides,
  and the marginal CPU per object: the slope of CPU seconds between the smallest and the largest
  N (startup and watch costs cancel out);
* ``operator_n<N>: API requests per object`` of each side, counted by the API server (see
  ``FLOW_SCHEMAS``) by verb, per extra object (the same slope); watch requests are counted apart:
  a watch is one stream per resource, renewed every 45 s, so their number follows the run's
  length, not its objects;
* ``operator_n<N>: peak RSS`` of each side, ours split into its imports and a slope per object.

The objects are the e2e manifest with ``spec.queue: null``: unqueued. The spec's default queue,
``gpu``, has one unit in the chart's defaults, so all runs but one would wait without a
Workflow, which is not what is measured. ``--queue KEY`` queues them on KEY instead, with N
units in the chart's queue ConfigMap so that every run is admitted at once (the operator's
admission path: one lock across all objects).

Argo's workflow-controller is paused (SIGSTOP) while it measures, in a cluster this script
started itself: otherwise Argo would run 2N Workflows (and kwok 2N fake pods) on the same two
cores, and the operator would follow each one's progress, which is not what is measured here.

    python bench/bench_operator.py [--n 100 1000] [--queue KEY]

Starts the local cluster (hack/cluster/up.sh) if it is not up, and stops it after if it did.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from common import Row, write_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from cluster import Cluster, down, is_up, up  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from operator_harness import ARGO, CHART, CRD, GROUP, PLURAL, VERSION, Env, Operator  # noqa: E402
from urllib3.exceptions import HTTPError  # noqa: E402

LOGS = Path("/tmp")
# What a watch or list may end with on a loaded API server, other than a result.
BROKEN = (ApiException, HTTPError, OSError)
DONE_PHASES = ("Queued", "Running")
# The floor's worker threads: as many as kopf runs the operator's synchronous handlers on (its
# default executor is a bare ThreadPoolExecutor: min(32, cores + 4), 6 on 2 cores), so both
# sides have the same concurrency; it stays under the Kubernetes client's connection pool
# (cores * 5), so every worker keeps its own keep-alive connection.
FLOOR_WORKERS = min(32, (os.cpu_count() or 1) + 4)
# No object done on either side for this long: stop, and say so (not the 1800 s timeout). The
# operator's retries after a 429 back off 15, 30, 60, 120 s...
STALL_S = 300
# Threads that create the MLOps objects: enough to apply faster than either side reconciles.
APPLIERS = 4
# apiserver_request_total has no label saying who sent a request (its labels: verb, group,
# version, resource, subresource, scope, component, code, dry_run). API Priority and Fairness
# does: each request is matched to one FlowSchema by its user, and the API server counts them in
# apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}. So each side authenticates
# as its own ServiceAccount, matched by a FlowSchema of its own, on the priority level
# ServiceAccounts get by default (workload-low). The bench itself (applies, watches, /metrics)
# is the admin: the "exempt" FlowSchema, counted apart from both.
FLOW_SCHEMAS = {"ours": "mlops-bench-operator", "floor": "mlops-bench-floor"}
# Each side also has a FlowSchema per verb, matched before its catch-all one (which then counts
# only what is not a resource request, such as /version): its requests by verb.
VERBS = ("watch", "list", "get", "create", "update", "patch", "delete")
FLOOR_SA = "mlops-bench-floor"


def _list(
    custom: client.CustomObjectsApi, group: str, version: str, namespace: str, plural: str
) -> dict[str, Any]:
    """A custom-object list (the client types it as ``object``)."""
    return cast(
        dict[str, Any], custom.list_namespaced_custom_object(group, version, namespace, plural)
    )


def _events(custom: client.CustomObjectsApi, *args: str, rv: str) -> Iterator[dict[str, Any]]:
    """Watch events of a custom-object list from ``rv``; the server ends the watch after 30 s
    (so a stopped watcher notices, and the caller watches again from where it was)."""
    w = watch.Watch()  # type: ignore[no-untyped-call]
    events = w.stream(  # type: ignore[no-untyped-call]
        custom.list_namespaced_custom_object, *args, resource_version=rv, timeout_seconds=30
    )
    return cast(Iterator[dict[str, Any]], events)


# === The floor: a plain client, run as `bench_operator.py --floor NAMESPACE` ===


def run_floor(namespace: str, workers: int) -> int:
    """Watch ``namespace``'s MLOps objects; for each new one create its ConfigMap and Workflow
    and update its status to Queued, on ``workers`` threads sharing one ApiClient. Runs until
    SIGTERM. KUBECONFIG names its identity; the environment is the operator's (render settings,
    default image), so both sides write the same objects."""
    from mlops_api import parse_manifest
    from mlops_operator.settings import OperatorSettings
    from mlops_workflows.render import render

    settings = OperatorSettings.from_env()
    api = config.new_client_from_config(config_file=os.environ["KUBECONFIG"])  # type: ignore[no-untyped-call]
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    pool = concurrent.futures.ThreadPoolExecutor(workers)

    def handle(body: dict[str, Any]) -> None:
        meta = body["metadata"]
        spec = dict(body["spec"])
        if settings.default_image and "image" not in spec:
            spec["image"] = settings.default_image
        manifest = {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "metadata": {k: meta[k] for k in ("name", "namespace", "generation", "uid")},
            "spec": spec,
        }
        rendered = render(parse_manifest(manifest, cluster=True), settings.render)
        owner = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "MLOps",
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        cm, wf = rendered.config_map, rendered.workflow
        for child in (cm, wf):
            child["metadata"]["namespace"] = namespace
            child["metadata"]["ownerReferences"] = [owner]
        core.create_namespaced_config_map(namespace, cast(Any, cm))  # a dict is serialized as is
        custom.create_namespaced_custom_object(*ARGO, namespace, "workflows", wf)
        run = rendered.plan.run_id
        status = {
            "phase": "Queued",
            "reason": "Queued",
            "message": f"run {run} queued",
            "observedGeneration": meta["generation"],
            "runId": run,
            "workflow": wf["metadata"]["name"],
            "configMap": cm["metadata"]["name"],
            "submitted": True,
            "output": rendered.plan.config.output,
        }
        # A whole-status update with the watched resourceVersion, as the operator writes it
        # (the chart's RBAC allows mlops/status update, not patch).
        custom.replace_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, meta["name"], {**body, "status": status}
        )

    def report(future: concurrent.futures.Future[None]) -> None:
        exc = future.exception()
        if exc is not None:
            print(f"floor: {exc!r} {getattr(exc, 'body', '')}"[:2000], flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    handled: set[str] = set()

    def submit(obj: dict[str, Any]) -> None:
        uid = obj["metadata"]["uid"]
        if uid not in handled and not (obj.get("status") or {}).get("submitted"):
            handled.add(uid)
            pool.submit(handle, obj).add_done_callback(report)

    def relist() -> str:
        listed = _list(custom, GROUP, VERSION, namespace, PLURAL)
        for obj in listed["items"]:
            submit(obj)
        return str(listed["metadata"]["resourceVersion"])

    rv = relist()
    print("ready", flush=True)
    while not stop.is_set():
        try:
            for event in _events(custom, GROUP, VERSION, namespace, PLURAL, rv=rv):
                obj = event["object"]
                rv = obj["metadata"]["resourceVersion"]
                if event["type"] == "ADDED":
                    submit(obj)
                if stop.is_set():
                    break
        except BROKEN:
            # The watch expired (410) or broke: list again; what it missed is in the list.
            time.sleep(1)
            try:
                rv = relist()
            except BROKEN:
                continue
    pool.shutdown(wait=True, cancel_futures=True)
    return 0


# === Measuring one side ===


@dataclass
class Side:
    """What the bench's watches saw of one namespace's objects (perf_counter seconds)."""

    name: str
    namespace: str
    n: int
    applied: dict[str, float] = field(default_factory=dict)
    workflow_seen: dict[str, float] = field(default_factory=dict)
    status_ok: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw_workflow(self, owner: str, at: float) -> None:
        with self.lock:
            self.workflow_seen.setdefault(owner, at)
            self._check(owner)

    def saw_status(self, name: str, at: float) -> None:
        with self.lock:
            self.status_ok.setdefault(name, at)
            self._check(name)

    def _check(self, name: str) -> None:
        if name in self.workflow_seen and name in self.status_ok and name not in self.done:
            self.done[name] = max(self.workflow_seen[name], self.status_ok[name])

    @property
    def complete(self) -> bool:
        return len(self.done) >= self.n

    def seconds(self) -> float:
        return max(self.done.values()) - min(self.applied.values())

    def latencies(self) -> list[float]:
        return [self.workflow_seen[k] - self.applied[k] for k in self.applied]


def _watch(
    api: client.ApiClient,
    side: Side,
    kind: str,
    stop: threading.Event,
    ready: threading.Event,
) -> None:
    """Follow ``kind`` (mlops or workflows) in the side's namespace until ``stop``: list once,
    then watch from there (re-watching every 30 s, when the server ends the watch)."""
    custom = client.CustomObjectsApi(api)
    args = (GROUP, VERSION) if kind == "mlops" else ARGO
    plural = PLURAL if kind == "mlops" else "workflows"

    def seen(obj: dict[str, Any]) -> None:
        at = time.perf_counter()
        if kind == "workflows":
            for ref in obj["metadata"].get("ownerReferences") or []:
                if ref.get("kind") == "MLOps":
                    side.saw_workflow(ref["name"], at)
            return
        status = obj.get("status") or {}
        if (
            status.get("phase") in DONE_PHASES
            and status.get("submitted")
            and status.get("workflow")
        ):
            side.saw_status(obj["metadata"]["name"], at)

    def relist() -> str:
        listed = _list(custom, *args, side.namespace, plural)
        for obj in listed["items"]:
            seen(obj)
        return str(listed["metadata"]["resourceVersion"])

    rv = relist()
    ready.set()
    while not stop.is_set():
        try:
            for event in _events(custom, *args, side.namespace, plural, rv=rv):
                rv = event["object"]["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    seen(event["object"])
                if stop.is_set():
                    return
        except BROKEN:
            if stop.is_set():
                return
            # 410: the resourceVersion expired; else the watch broke (a busy API server drops
            # connections): list again, which also delivers what happened in between.
            time.sleep(1)
            try:
                rv = relist()
            except BROKEN:
                continue


# === The API server's counters, CPU and memory ===


@dataclass(frozen=True)
class Counters:
    by_flow_schema: dict[str, float]
    by_request: dict[str, float]  # apiserver_request_total by "VERB resource[/subresource]"

    def minus(self, before: Counters) -> Counters:
        def sub(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
            return {k: v - b.get(k, 0.0) for k, v in a.items() if v - b.get(k, 0.0)}

        return Counters(
            sub(self.by_flow_schema, before.by_flow_schema),
            sub(self.by_request, before.by_request),
        )


def _counters(cluster: Cluster) -> Counters:
    from prometheus_client.parser import text_string_to_metric_families

    text = cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    flows: dict[str, float] = {}
    requests: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "apiserver_flowcontrol_dispatched_requests":
            for s in family.samples:
                if s.name.endswith("_total"):
                    key = s.labels["flow_schema"]
                    flows[key] = flows.get(key, 0.0) + s.value
        elif family.name == "apiserver_request":
            for s in family.samples:
                if s.name.endswith("_total") and s.labels.get("resource"):
                    sub = s.labels.get("subresource")
                    key = f"{s.labels['verb']} {s.labels['resource']}{'/' + sub if sub else ''}"
                    requests[key] = requests.get(key, 0.0) + s.value
    return Counters(flows, requests)


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _quantile(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method: p100 is the largest)."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# === Cluster set-up around one measurement ===


def _kubectl_apply(cluster: Cluster, docs: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def _flow_schemas(name: str, namespace: str, sa: str) -> list[dict[str, Any]]:
    """The side's catch-all FlowSchema ``name`` and one per verb, ``name-<verb>``, before it."""
    schemas = [_flow_schema(name, namespace, sa)]
    for verb in VERBS:
        schema = _flow_schema(f"{name}-{verb}", namespace, sa, verbs=[verb])
        schema["spec"]["matchingPrecedence"] = 999
        schemas.append(schema)
    return schemas


def _by_verb(by_flow_schema: dict[str, float], name: str) -> dict[str, float]:
    """The side's requests by verb (``other``: its catch-all FlowSchema's)."""
    counts = {verb: by_flow_schema.get(f"{name}-{verb}", 0.0) for verb in VERBS}
    return {**counts, "other": by_flow_schema.get(name, 0.0)}


def _flow_schema(
    name: str, namespace: str, sa: str, verbs: list[str] | None = None
) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "subjects": [
            {"kind": "ServiceAccount", "serviceAccount": {"name": sa, "namespace": namespace}}
        ],
        "resourceRules": [
            {
                "verbs": verbs or ["*"], "apiGroups": ["*"], "resources": ["*"],
                "clusterScope": True, "namespaces": ["*"],
            }
        ],
    }  # fmt: skip
    if verbs is None:
        rule["nonResourceRules"] = [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            # Before "service-accounts" (9000), which would otherwise match both identities.
            "matchingPrecedence": 1000,
            "priorityLevelConfiguration": {"name": "workload-low"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [rule],
        },
    }


@dataclass
class Stage:
    """One N's namespaces, identities and processes."""

    n: int
    release: str
    release_ns: str
    ours_ns: str
    floor_ns: str
    queue: str | None  # spec.queue of every object (None: null, unqueued)
    operator: Operator | None = None
    floor: subprocess.Popen[bytes] | None = None

    @property
    def floor_log(self) -> Path:
        return LOGS / f"mlops-bench-floor-{self.n}.log"

    @property
    def operator_log(self) -> Path:
        return LOGS / f"mlops-bench-operator-{self.n}.log"


def setup(cluster: Cluster, n: int, tag: str, queue: str | None) -> Stage:
    """Namespaces, the chart installed with its defaults, both identities, both processes."""
    stage = Stage(
        n, f"bench-{n}", f"mlb-rel-{n}-{tag}", f"mlb-ours-{n}-{tag}", f"mlb-floor-{n}-{tag}",
        queue,
    )  # fmt: skip
    for ns in (stage.release_ns, stage.ours_ns, stage.floor_ns):
        cluster.create_namespace(ns)
    # The chart's defaults but one: it watches only the operator's namespace (the floor's
    # objects are not its). With --queue, that queue gets N units, so every run is admitted at
    # once (the chart's gpu: 1 would keep all runs but one waiting, with no Workflow).
    units = [f"--set=queues.{stage.queue}={n}"] if stage.queue else []
    cluster.helm(
        "install", stage.release, str(CHART), f"--namespace={stage.release_ns}",
        f"--set=operator.watchNamespaces={{{stage.ours_ns}}}", *units,
    )  # fmt: skip
    deployment = json.loads(
        cluster.kubectl(
            "get", "deployment", "-o", "json", f"--namespace={stage.release_ns}",
            "-l", f"app.kubernetes.io/instance={stage.release}",
        ).stdout
    )["items"][0]  # fmt: skip
    operator_sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    # The floor may do what the operator may: the chart's ClusterRole, in its namespace.
    _kubectl_apply(
        cluster,
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": FLOOR_SA, "namespace": stage.floor_ns},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": FLOOR_SA, "namespace": stage.floor_ns},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": deployment["metadata"]["name"],
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": FLOOR_SA, "namespace": stage.floor_ns}
                ],
            },
            *_flow_schemas(FLOW_SCHEMAS["ours"], stage.release_ns, operator_sa),
            *_flow_schemas(FLOW_SCHEMAS["floor"], stage.floor_ns, FLOOR_SA),
        ],
    )
    kubeconfigs = {}
    for side, ns, sa in (
        ("operator", stage.release_ns, operator_sa),
        ("floor", stage.floor_ns, FLOOR_SA),
    ):
        token = cluster.service_account_token(ns, sa, expiration_s=4 * 3600)
        kubeconfigs[side] = cluster.write_token_kubeconfig(
            LOGS / f"mlops-bench-{side}-{n}.kubeconfig", token, user=sa
        )
    stage.operator_log.unlink(missing_ok=True)
    stage.operator = Operator.from_deployment(
        deployment, kubeconfigs["operator"], stage.operator_log
    )
    stage.operator.start()
    with stage.floor_log.open("wb") as out:
        stage.floor = subprocess.Popen(
            [sys.executable, __file__, "--floor", stage.floor_ns, f"--workers={FLOOR_WORKERS}"],
            # The operator's environment (the Deployment's env): the same render settings.
            env={**os.environ, **stage.operator.env, "KUBECONFIG": str(kubeconfigs["floor"])},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while b"ready" not in stage.floor_log.read_bytes():
        if stage.floor.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the floor did not start:\n{stage.floor_log.read_text()[-3000:]}")
        time.sleep(0.2)
    return stage


def teardown(cluster: Cluster, api: client.ApiClient, stage: Stage, wait: bool) -> None:
    """Stop both sides, delete everything of this N (and wait for it to be gone, so that the
    next N is not measured beside the deletion of this one)."""
    if stage.operator is not None:
        stage.operator.stop()
    if stage.floor is not None and stage.floor.poll() is None:
        stage.floor.terminate()
        try:
            stage.floor.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stage.floor.kill()
            stage.floor.wait(timeout=10)
    # The operator's finalizers, with the operator gone: deleting with it running would have
    # it stop each run and wait up to stopTimeoutSeconds for Argo, which is paused.
    custom = client.CustomObjectsApi(api)
    try:
        names = [
            o["metadata"]["name"]
            for o in _list(custom, GROUP, VERSION, stage.ours_ns, PLURAL)["items"]
            if o["metadata"].get("finalizers")
        ]
    except ApiException:
        names = []

    def unfinalize(name: str) -> None:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, stage.ours_ns, PLURAL, name, {"metadata": {"finalizers": None}}
        )

    print(f"N={stage.n}: cleaning up ({len(names)} finalizers to remove) ...", flush=True)
    with concurrent.futures.ThreadPoolExecutor(APPLIERS) as pool:
        list(pool.map(unfinalize, names))
    cluster.helm("uninstall", stage.release, f"--namespace={stage.release_ns}", check=False)
    namespaces = (stage.ours_ns, stage.floor_ns, stage.release_ns)
    for ns in namespaces:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    if not wait:
        return
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        left = [
            ns
            for ns in namespaces
            if ns in {x.metadata.name for x in core.list_namespace().items if x.metadata}
        ]
        if not left:
            return
        print(
            f"N={stage.n}: waiting for namespaces {', '.join(left)} to be deleted ...", flush=True
        )
        time.sleep(10)
    print(f"N={stage.n}: namespaces still there after 900 s; going on", flush=True)


@contextlib.contextmanager
def argo_paused(cluster: Cluster, pause: bool) -> Iterator[bool]:
    """SIGSTOP the cluster's workflow-controller (by its pid file) while measuring; SIGCONT
    after. Only in a cluster this script started: another's Argo is someone else's."""
    pid = None
    if pause:
        pid = int((cluster.state_dir / "pids" / "workflow-controller.pid").read_text())
        if b"workflow-controller" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            raise RuntimeError(f"pid {pid} is not the cluster's workflow-controller")
        os.kill(pid, signal.SIGSTOP)
        print(f"paused Argo's workflow-controller (pid {pid}) while measuring", flush=True)
    try:
        yield pid is not None
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)


def measure(cluster: Cluster, stage: Stage) -> dict[str, Any]:
    n = stage.n
    assert stage.operator is not None and stage.operator.proc is not None
    assert stage.floor is not None
    pids = {"ours": stage.operator.proc.pid, "floor": stage.floor.pid}
    sides = {
        "ours": Side("ours", stage.ours_ns, n),
        "floor": Side("floor", stage.floor_ns, n),
    }
    watch_api, apply_api = cluster.api_client(), cluster.api_client()
    stop = threading.Event()
    readies = []
    for side in sides.values():
        for kind in ("mlops", "workflows"):
            ready = threading.Event()
            readies.append(ready)
            threading.Thread(
                target=_watch, args=(watch_api, side, kind, stop, ready), daemon=True
            ).start()
    for ready in readies:
        if not ready.wait(120):
            raise RuntimeError("the bench's watches did not start")
    time.sleep(5)  # both sides idle after their start (kopf's first lists are done)
    before = _counters(cluster)
    cpu0 = {k: _proc_cpu_s(pid) for k, pid in pids.items()}

    envs = {k: Env(apply_api, s.namespace) for k, s in sides.items()}
    # Interleaved, with which side goes first alternating: the same stream for both.
    order = [
        (key, i)
        for i in range(n)
        for key in (("ours", "floor") if i % 2 == 0 else ("floor", "ours"))
    ]

    def apply(item: tuple[str, int]) -> None:
        key, i = item
        name = f"bench-{i:04d}"
        with sides[key].lock:
            sides[key].applied[name] = time.perf_counter()
        # queue None is written out as null: unqueued (left out, the spec's default is "gpu").
        envs[key].apply(envs[key].manifest(name, seed=i, queue=stage.queue))

    print(f"N={n}: applying {2 * n} MLOps objects ({APPLIERS} threads) ...", flush=True)
    pool = concurrent.futures.ThreadPoolExecutor(APPLIERS)
    applies = [pool.submit(apply, item) for item in order]
    start = time.monotonic()
    timeout = 300 + 1.5 * n
    last_print = 0.0
    progress, progress_at = 0, time.monotonic()
    while not all(s.complete for s in sides.values()):
        for f in applies:
            if f.done() and f.exception() is not None:
                raise RuntimeError(f"an apply failed: {f.exception()!r}")
        # Not operator.healthy(): an HTTP probe every poll would cost the operator CPU.
        if stage.operator.proc is None or stage.operator.proc.poll() is not None:
            raise RuntimeError(f"the operator exited:\n{stage.operator.log_tail(3000)}")
        if stage.floor.poll() is not None:
            raise RuntimeError(f"the floor exited:\n{stage.floor_log.read_text()[-3000:]}")
        took = time.monotonic() - start
        done = sum(len(s.done) for s in sides.values())
        if done != progress:
            progress, progress_at = done, time.monotonic()
        if time.monotonic() - progress_at > STALL_S:
            raise RuntimeError(
                f"N={n}: no object done for {STALL_S} s: "
                + ", ".join(f"{k} {len(s.done)}/{n}" for k, s in sides.items())
                + f" (operator log: {stage.operator_log})"
            )
        if took > timeout:
            raise RuntimeError(
                f"N={n}: not done after {timeout:.0f} s: "
                + ", ".join(f"{k} {len(s.done)}/{n}" for k, s in sides.items())
                + f"\noperator log:\n{stage.operator.log_tail(3000)}"
            )
        if took - last_print >= 10:
            last_print = took
            applied = sum(len(s.applied) for s in sides.values())
            print(
                f"N={n}: {took:4.0f} s: applied {applied}/{2 * n}; done: "
                + ", ".join(f"{k} {len(s.done)}/{n}" for k, s in sides.items()),
                flush=True,
            )
        time.sleep(0.2)
    pool.shutdown()
    print(
        f"N={n}: all done: ours {sides['ours'].seconds():.1f} s, floor "
        f"{sides['floor'].seconds():.1f} s; waiting for both sides to go quiet ...",
        flush=True,
    )
    # Writes that follow the status (kopf's own bookkeeping patch) belong to the object: count
    # until neither side has sent a request for one scrape interval (30 s at most).
    after = _counters(cluster)
    settle_until = time.monotonic() + 30
    while time.monotonic() < settle_until:
        time.sleep(2)
        latest = _counters(cluster)
        quiet = all(
            _by_verb(latest.by_flow_schema, f) == _by_verb(after.by_flow_schema, f)
            for f in FLOW_SCHEMAS.values()
        )
        after = latest
        if quiet:
            break
    cpu1 = {k: _proc_cpu_s(pid) for k, pid in pids.items()}
    stop.set()
    delta = after.minus(before)
    result: dict[str, Any] = {"n": n}
    for key, side in sides.items():
        lat = side.latencies()
        by_verb = _by_verb(delta.by_flow_schema, FLOW_SCHEMAS[key])
        requests = sum(v for verb, v in by_verb.items() if verb != "watch")
        result[key] = {
            "seconds": side.seconds(),
            "requests": requests,  # watches apart: they follow the run's length
            "requests_per_object": requests / n,
            "requests_by_verb": by_verb,
            "cpu_s": cpu1[key] - cpu0[key],
            "peak_rss_mib": _peak_rss_mib(pids[key]),
            "latency_p50_s": _quantile(lat, 50),
            "latency_p99_s": _quantile(lat, 99),
            "latency_max_s": max(lat),
        }
    # Every client's requests in the window (the bench's, the controllers', kwok's too), for
    # reference: apiserver_request_total by verb and resource, and the requests by FlowSchema.
    result["all_requests_by_flow_schema"] = delta.by_flow_schema
    result["all_requests_by_verb_resource"] = dict(
        sorted(delta.by_request.items(), key=lambda kv: -kv[1])
    )
    return result


def _slope(by_n: dict[int, dict[str, Any]], key: str, field: str) -> tuple[float, int, int]:
    """``field`` of ``key`` per extra object between the smallest and the largest N: what each
    object costs, without what is paid once (start-up, watches, a namespace's set-up)."""
    lo, hi = min(by_n), max(by_n)
    if lo == hi:
        return float("nan"), lo, hi
    return (by_n[hi][key][field] - by_n[lo][key][field]) / (hi - lo), lo, hi


def _slope_ms(by_n: dict[int, dict[str, Any]], key: str) -> tuple[float, int, int]:
    """Marginal CPU ms per object of ``key`` between the smallest and the largest N."""
    slope, lo, hi = _slope(by_n, key, "cpu_s")
    return 1000 * slope, lo, hi


def _verbs_per_object(by_n: dict[int, dict[str, Any]], key: str) -> str:
    """``key``'s requests per object by verb (the slope between the smallest and the largest N,
    else at the one N), watches left out: e.g. "create 3.00, patch 1.00, update 1.00"."""
    lo, hi = min(by_n), max(by_n)
    low, high = (by_n[m][key].get("requests_by_verb", {}) for m in (lo, hi))
    per = {
        verb: (high.get(verb, 0.0) - low.get(verb, 0.0)) / (hi - lo)
        if hi != lo
        else high.get(verb, 0.0) / hi
        for verb in (*VERBS, "other")
        if verb != "watch"
    }
    return ", ".join(f"{verb} {v:.2f}" for verb, v in per.items() if round(v, 2)) or "none"


def imports_rss_mib(with_client: bool = False) -> float:
    """Peak RSS of a fresh interpreter that only imports the operator (kopf, hera, aiohttp and
    our packages): what the operator holds before it watches anything. As in the operator image,
    ``kubernetes`` is not importable (kopf imports it whenever it is installed).

    ``with_client``: the same imports where the Kubernetes client is installed (this venv, for
    the tests): what the operator paid before it stopped using it."""
    imports = "import mlops_operator.handlers"
    if not with_client:
        imports = f"import sys\nsys.modules['kubernetes'] = None\n{imports}"
    code = (
        f"{imports}\nimport pathlib\n"
        "print(next(l.split()[1] for l in pathlib.Path('/proc/self/status').read_text()"
        ".splitlines() if l.startswith('VmHWM:')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def rows_of(
    by_n: dict[int, dict[str, Any]],
    argo_paused: bool,
    queue: str | None,
    imports_mib: float,
    with_client_mib: float | None = None,
) -> list[Row]:
    """Per N: the time row (against the floor), and the API requests and peak RSS, each a row
    of its own, since issue 13 bounds them apart (``common.TARGETS``)."""
    slope, lo, hi = _slope_ms(by_n, "ours")
    rss_slope, _, _ = _slope(by_n, "ours", "peak_rss_mib")
    floor_slope, _, _ = _slope_ms(by_n, "floor")
    marginal, _, _ = _slope(by_n, "ours", "requests")
    floor_marginal, _, _ = _slope(by_n, "floor", "requests")
    verbs = _verbs_per_object(by_n, "ours")
    two = lo != hi
    rows = []
    for n, r in sorted(by_n.items()):
        ours, floor = r["ours"], r["floor"]
        cpu = (
            f"marginal operator CPU {slope:.1f} ms/object (slope N={lo}..{hi}; floor "
            f"{floor_slope:.1f})"
            if two
            else f"operator CPU {1000 * ours['cpu_s'] / n:.1f} ms/object at this N only"
        )
        rows.append(
            Row(
                f"operator_n{n}",
                ours["seconds"],
                floor["seconds"],
                "s",
                f"concurrent plain client, same writes ({FLOOR_WORKERS} threads, one client)",
                f"apply→Workflow p50/p99 {ours['latency_p50_s']:.2f}/{ours['latency_p99_s']:.2f} "
                f"s (floor {floor['latency_p50_s']:.2f}/{floor['latency_p99_s']:.2f} s); {cpu}"
                + ("" if argo_paused else "; Argo ran (a shared cluster): not paused")
                + (f"; spec.queue {queue}" if queue else ""),
            )
        )
        # Judged per object (the slope) when two N were run: what each object costs, without
        # the watches and start-up paid once; else the total at this N.
        rows.append(
            Row(
                f"operator_n{n}: API requests per object",
                marginal if two else ours["requests_per_object"],
                floor_marginal if two else floor["requests_per_object"],
                "requests",
                "the concurrent plain client's requests per object (the necessary writes)",
                (
                    f"per extra object, slope N={lo}..{hi} (at this N: ours "
                    f"{ours['requests_per_object']:.3f}, floor {floor['requests_per_object']:.3f})"
                    if two
                    else "at this N only"
                )
                + f"; ours by verb per {'extra ' if two else ''}object: {verbs}; watch requests "
                "not counted (a stream per resource, renewed every 45 s: their number follows "
                "the run's length): ours "
                + ", ".join(
                    f"{by_n[m]['ours'].get('requests_by_verb', {}).get('watch', 0):.0f} at N={m}"
                    for m in sorted(by_n)
                )
                + "; apiserver_flowcontrol_dispatched_requests_total by FlowSchema",
            )
        )
        rows.append(
            Row(
                f"operator_n{n}: peak RSS",
                ours["peak_rss_mib"],
                floor["peak_rss_mib"],
                "MiB",
                "the concurrent plain client's peak RSS (one Kubernetes client, no kopf)",
                f"the operator's imports alone {imports_mib:.0f} MiB"
                + (
                    f" ({with_client_mib:.0f} MiB where the Kubernetes client is installed:"
                    " kopf imports it then)"
                    if with_client_mib is not None
                    else ""
                )
                + (f", then {1024 * rss_slope:.0f} KiB per extra object" if two else ""),
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    parser.add_argument(
        "--queue",
        help="spec.queue of every object, with N units in the chart's queue ConfigMap "
        "(default: null, runs unqueued)",
    )
    parser.add_argument("--floor", metavar="NAMESPACE", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=FLOOR_WORKERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        return run_floor(args.floor, args.workers)
    started = False
    if not is_up():
        print("starting the local cluster (hack/cluster/up.sh) ...", flush=True)
        up()
        started = True
    try:
        cluster = Cluster.from_env()
        cluster.kubectl("apply", "--server-side", "-f", str(CRD))
        api = cluster.api_client()
        tag = uuid.uuid4().hex[:6]
        by_n: dict[int, dict[str, Any]] = {}
        ns = sorted(args.n)
        with argo_paused(cluster, started) as paused:
            for i, n in enumerate(ns):
                print(f"N={n}: installing the chart, starting the operator and the floor ...")
                stage = setup(cluster, n, tag, args.queue)
                try:
                    by_n[n] = measure(cluster, stage)
                finally:
                    teardown(cluster, api, stage, wait=i < len(ns) - 1)
                r = by_n[n]
                print(
                    f"N={n}: ours {r['ours']['seconds']:.1f} s, floor {r['floor']['seconds']:.1f} s"
                    f" (ratio {r['ours']['seconds'] / r['floor']['seconds']:.2f}); requests/object "
                    f"ours {r['ours']['requests_per_object']:.2f}, floor "
                    f"{r['floor']['requests_per_object']:.2f}; operator CPU {r['ours']['cpu_s']:.1f}"
                    f" s, peak RSS {r['ours']['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
        imports_mib = imports_rss_mib()
        with_client_mib = imports_rss_mib(with_client=True)
        rows = rows_of(by_n, paused, args.queue, imports_mib, with_client_mib)
        slope, lo, hi = _slope_ms(by_n, "ours")
        write_rows(
            "operator",
            rows,
            {
                "by_n": {str(k): v for k, v in by_n.items()},
                "marginal_cpu_ms_per_object": {
                    "ours": slope,
                    "floor": _slope_ms(by_n, "floor")[0],
                    "between": [lo, hi],
                },
                "imports_rss_mib": imports_mib,
                "imports_rss_mib_with_kubernetes_installed": with_client_mib,
                "floor_workers": FLOOR_WORKERS,
                "appliers": APPLIERS,
                "argo_paused": paused,
                "queue": args.queue,
            },
        )
        return 0
    finally:
        if is_up():
            names = [
                s["metadata"]["name"] for base in FLOW_SCHEMAS.values()
                for s in _flow_schemas(base, "-", "-")
            ]  # fmt: skip
            Cluster.from_env().kubectl(
                "delete", "flowschema", *names, "--ignore-not-found", check=False
            )
        if started:
            down()


if __name__ == "__main__":
    raise SystemExit(main())
