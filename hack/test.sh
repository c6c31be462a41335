#!/usr/bin/env bash
# `make test`: set up, lint, then every test, in three pytest sessions that overlap.
#
#   [local]    -m "not e2e and not realnode": mostly training on the CPU.
#   [e2e]      -m "e2e and not kueue" on the local cluster (kwok nodes): mostly waiting on a
#              control plane and Argo.
#   [realnode] -m realnode on a second local cluster with a real node (its own MLOPS_CLUSTER_DIR
#              and ports), started once [local] is done: real trainer pods want the CPU the
#              local training would take, and its preemption tests time a 15 s grace period.
#              Its browser tests (-m browser) open those runs in Argo's UI (argo-server on that
#              cluster) in Debian's Chromium; [local] has the one that needs no cluster.
#   [argo4]    -m "e2e and (argo_matrix or kueue)": the e2e main cases again, on a third local
#              cluster whose workflow-controller is Argo Workflows 4.0 (MLOPS_ARGO=v4), once
#              [realnode] is done; and the Kueue cases (Kueue up on that cluster for them): this
#              chain ends well before [e2e]'s, so they add no time.
#
# Run one after the other these took the sum; side by side on two cores they take little more
# than the longest chain. The Go build of the clusters (15-25 min cold, cached after) and the
# real node's images start first, in the background, so they overlap the venv's install and the
# lint as well. Each session's lines carry its prefix; the script fails if any session failed.
# Usage: hack/test.sh [pytest args...]   (the args go to every session)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
BIN=.venv/bin
logs="$(mktemp -d "${TMPDIR:-/tmp}/mlops-test.XXXXXX")"
pids=()
stop_all() {
  # Only what this script started, by PID (never by name).
  local pid
  for pid in "${pids[@]}"; do kill -- "-${pid}" 2>/dev/null || kill "${pid}" 2>/dev/null; done
}
trap 'stop_all; exit 130' INT TERM

stamp() { date -u +%H:%M:%S; }
prefix() { sed -u "s/^/[$1] /"; }

# session NAME MARKEXPR [pytest args]: one pytest session in the background, its lines prefixed.
session() {
  local name="$1" marks="$2"
  shift 2
  set -m # its own process group, so stop_all reaches pytest and what it started
  (
    set -o pipefail
    # Wide lines: the short test summary keeps its reasons whole.
    # The session's cluster leaves its components' logs beside the session's log (down.sh).
    COLUMNS=200 MLOPS_CLUSTER_KEEP_LOGS="${logs}/cluster-${name}" "${BIN}/python" -m pytest -m "${marks}" --basetemp "${logs}/tmp-${name}" "$@" 2>&1 |
      tee "${logs}/${name}.log" | prefix "${name}"
  ) &
  set +m
  pids+=($!)
}

# own_cluster DIR ETCD_PORT APISERVER_PORT KCM_PORT session NAME MARKS [args]: run a session on a
# cluster of its own (the peer port is etcd's + 10, the scheduler's the controller manager's + 2).
# Ports below Linux's ephemeral range (32768-60999), where any outgoing connection may hold one
# (33790 was taken so, once).
own_cluster() {
  local dir="$1" etcd="$2" apiserver="$3" kcm="$4"
  shift 4
  MLOPS_CLUSTER_DIR="${dir}" MLOPS_ETCD_PORT="${etcd}" MLOPS_ETCD_PEER_PORT="$((etcd + 10))" \
    MLOPS_APISERVER_PORT="${apiserver}" MLOPS_KCM_PORT="${kcm}" MLOPS_SCHEDULER_PORT="$((kcm + 2))" "$@"
}

start=${SECONDS}
echo "[test $(stamp)] building the clusters' and the real node's binaries, then the images, in the background (cached: seconds); log ${logs}/prebuild.log"
set -m
(
  hack/cluster/build.sh >/dev/null && hack/cluster/build.sh --node >/dev/null &&
    # argo-server with Argo's UI, for [realnode]'s browser tests.
    hack/cluster/build.sh --ui >/dev/null &&
    # The images need the venv's Python (pip, the pinned constraints): built once it exists.
    # The realnode fixture builds them too (the same cache, under a lock), so a failure here
    # only costs time.
    until [[ -f .venv/.installed ]]; do sleep 5; done &&
    .venv/bin/python hack/images/ocibuild.py build pause argoexec operator trainer >/dev/null &&
    # Last: [argo4] starts after [realnode], which needs everything above; Kueue is for its
    # Kueue cases. Not while [realnode] runs: a cold Go build (its module downloads are not
    # niced) starved the real node's trainer pods once, and a preempted trainer missed its 30 s
    # grace period (exit 137, cold run of 6582296). Cached (warm), they take no time anyway.
    until [[ -e "${logs}/realnode.done" ]]; do sleep 5; done &&
    MLOPS_ARGO=v4 hack/cluster/build.sh >/dev/null && hack/cluster/build.sh --kueue >/dev/null
) >"${logs}/prebuild.log" 2>&1 &
pids+=($!)
set +m

make --no-print-directory setup lint || {
  stop_all
  exit 1
}
echo "[test $(stamp)] set up and linted in $((SECONDS - start)) s; the pytest sessions follow"

session e2e "e2e and not kueue" "$@"
e2e_pid=${pids[-1]}
session local "not e2e and not realnode" "$@"
local_pid=${pids[-1]}

wait "${local_pid}"
local_rc=$?
echo "[test $(stamp)] local suites done (exit ${local_rc}) after $((SECONDS - start)) s; the realnode suite starts"
# Its own cluster: the e2e session's kwok tests and the chart's cluster-wide operator of the
# realnode tests must not see each other's objects.
own_cluster /tmp/mlops-cluster-realnode 24790 27443 21257 session realnode "realnode" "$@"
realnode_pid=${pids[-1]}

wait "${realnode_pid}"
realnode_rc=$?
touch "${logs}/realnode.done"
echo "[test $(stamp)] realnode suite done (exit ${realnode_rc}) after $((SECONDS - start)) s; the argo4 suite starts"
# The same main cases against Argo 4.0: a kwok cluster of its own (one controller per cluster, and
# Argo 4's CRDs).
MLOPS_ARGO=v4 own_cluster /tmp/mlops-cluster-argo4 25790 28443 22257 session argo4 "e2e and (argo_matrix or kueue)" "$@"
argo4_pid=${pids[-1]}

wait "${argo4_pid}"
argo4_rc=$?
echo "[test $(stamp)] argo4 suite done (exit ${argo4_rc}) after $((SECONDS - start)) s"
wait "${e2e_pid}"
e2e_rc=$?
echo "[test $(stamp)] e2e suites done (exit ${e2e_rc}) after $((SECONDS - start)) s"
# The background build is done by now unless no cluster test ran: stop it (by its PID).
kill -- "-${pids[0]}" 2>/dev/null || true
failed=0
# The sessions' lines interleave and CI shows only the end of its log: each failed session's
# assertion lines and short test summary come last, where a reader looks first.
for name in local e2e realnode argo4; do
  rc_var="${name}_rc"
  rc=${!rc_var}
  # pytest's exit 5 (nothing selected, e.g. -k matched another session's tests) is no failure.
  if ((rc != 0 && rc != 5)); then
    echo "[test] ---- ${name}: its failures (whole log: ${logs}/${name}.log) ----"
    grep -E "^E   " "${logs}/${name}.log" | cut -c1-300 | tail -6 | prefix "${name}"
    grep -E "^(FAILED|ERROR) " "${logs}/${name}.log" | cut -c1-300 | tail -8 | prefix "${name}"
    failed=1
  fi
done
for name in local e2e realnode argo4; do
  rc_var="${name}_rc"
  rc=${!rc_var}
  if ((rc != 0 && rc != 5)); then echo "[test] FAILED: the ${name} session exited ${rc}"; fi
done
((failed == 0)) || exit 1
# The sessions' pytest folders (about 230 MB a run, mostly [local]'s training runs) go once all
# passed; the logs stay (a few MB). A failed run keeps everything for a look. Left behind, they
# filled the disk until the real node refused to start (CI of e0b3de3: 7 GiB free, 8 needed).
rm -rf "${logs}"/tmp-*
echo "[test] all passed in $((SECONDS - start)) s (logs: ${logs})"
