"""Operator throughput on the local real API server, against the floor the API server sets.

For N MLOps objects (default 10, 100, 500):

* **ours**: a plain loop applies the N objects; the operator (a subprocess, as in its image)
  turns each into its ConfigMap + Workflow. Time from the first apply until all 2N children exist.
* **floor**: in another namespace, with no operator, a plain client loop creates the same N
  objects *and* their 2N children itself (rendered by the same pure builder): the least any
  controller could take to get the same objects into the API server.

Ratio = ours / floor (1.0 would be a free operator). Also the operator's peak RSS and CPU
seconds per reconcile, and how they grow with N. The Workflows queue on a one-slot semaphore so
Argo (and kwok's fake pods) stay out of the measurement.

    python bench/bench_operator.py [--n 10 100 500]

Starts the local cluster (hack/cluster/up.sh) if it is not up, and stops it after if it did.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from common import Row, write_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from cluster import Cluster, down, is_up, up  # noqa: E402
from kubernetes import client  # noqa: E402
from operator_harness import CRD, GROUP, VERSION, Env, Operator, wait_for  # noqa: E402


def _namespace(api: client.ApiClient, prefix: str) -> Env:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_service_account(name, {"metadata": {"name": "mlops-trainer"}})
    core.create_namespaced_config_map(
        name, {"metadata": {"name": "mlops-queues"}, "data": {"gpu": "1"}}
    )
    return Env(api, name)


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks (100 Hz)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _manifests(env: Env, n: int) -> list[dict[str, Any]]:
    # stopOnDelete off: deleting hundreds of queued runs would otherwise wait for Argo to stop
    # each one, which is cleanup, not what is measured.
    return [
        env.manifest(f"bench-{i:04d}", seed=i, queue="gpu", stopOnDelete=False) for i in range(n)
    ]


def _children(env: Env) -> int:
    return min(len(env.workflows()), len(env.config_maps()))


def measure_operator(
    cluster: Cluster, api: client.ApiClient, n: int, log: Path
) -> dict[str, float]:
    env = _namespace(api, "bop")
    op = Operator(cluster.kubeconfig, log, args=["--standalone", f"--namespace={env.ns}"])
    op.start()
    assert op.proc is not None
    time.sleep(2)  # let it settle after startup before counting its CPU
    cpu0 = _proc_cpu_s(op.proc.pid)
    start = time.perf_counter()
    for manifest in _manifests(env, n):
        env.apply(manifest)
    wait_for(f"{n} runs' children", lambda: _children(env) >= n, timeout=60 + 2 * n, every=0.2)
    took = time.perf_counter() - start
    result = {
        "seconds": took,
        "cpu_per_reconcile_ms": 1000 * (_proc_cpu_s(op.proc.pid) - cpu0) / n,
        "peak_rss_mib": _peak_rss_mib(op.proc.pid),
    }
    env.delete_all(timeout=120 + n)  # with the operator running: its finalizers go
    op.stop()
    client.CoreV1Api(api).delete_namespace(env.ns)
    return result


def measure_floor(api: client.ApiClient, n: int) -> float:
    from mlops_api import parse_manifest
    from mlops_workflows.render import RenderSettings, render

    env = _namespace(api, "bfl")
    settings = RenderSettings(report_summary=False)
    core = client.CoreV1Api(api)
    start = time.perf_counter()
    for manifest in _manifests(env, n):
        obj = env.apply(manifest)
        rendered = render(parse_manifest(copy.deepcopy(obj)), settings)
        owner = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "MLOps",
            "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        cm = rendered.config_map
        cm["metadata"]["ownerReferences"] = [owner]
        wf = rendered.workflow
        wf["metadata"]["ownerReferences"] = [owner]
        core.create_namespaced_config_map(env.ns, cm)
        env.custom.create_namespaced_custom_object(
            "argoproj.io", "v1alpha1", env.ns, "workflows", wf
        )
    took = time.perf_counter() - start
    client.CoreV1Api(api).delete_namespace(env.ns)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 500])
    args = parser.parse_args()
    started = False
    if not is_up():
        print("starting the local cluster (hack/cluster/up.sh) ...", flush=True)
        up()
        started = True
    try:
        cluster = Cluster.from_env()
        cluster.kubectl("apply", "--server-side", "-f", str(CRD))
        api = cluster.api_client()
        rows, growth = [], {}
        for n in args.n:
            print(f"N={n}: operator ...", flush=True)
            ours = measure_operator(cluster, api, n, RESULTS_LOG)
            print(f"N={n}: floor ...", flush=True)
            floor = measure_floor(api, n)
            growth[n] = ours
            rows.append(
                Row(
                    f"operator: apply N={n} -> all ConfigMaps + Workflows",
                    ours["seconds"],
                    floor,
                    "s",
                    "plain client loop creating the same 3N objects",
                    f"{ours['cpu_per_reconcile_ms']:.0f} ms CPU/reconcile, "
                    f"peak RSS {ours['peak_rss_mib']:.0f} MiB",
                )
            )
            print(rows[-1], flush=True)
        write_rows("operator", rows, {"by_n": {str(k): v for k, v in growth.items()}})
        return 0
    finally:
        if started:
            down()


RESULTS_LOG = Path("/tmp/mlops-bench-operator.log")

if __name__ == "__main__":
    raise SystemExit(main())
