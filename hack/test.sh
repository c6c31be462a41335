#!/usr/bin/env bash
# `make test`: set up, lint, then every test, in two pytest sessions at once.
#
# The cluster suites (`e2e`, `realnode`) spend most of their time waiting on a control plane,
# Argo and pods; the others spend theirs training on the CPU. Run one after the other they took
# the sum of both; run side by side on two cores they take little more than the longer one.
# The cluster's Go build (15-25 min cold, cached after) starts first, in the background, so it
# overlaps the venv's install and the lint as well.
#
# Each session's lines carry a prefix ([cluster] / [local]); each session's own summary is
# printed as its last lines, and the script fails if either session failed.
# Usage: hack/test.sh [pytest args...]   (the args go to both sessions)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
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

start=${SECONDS}
echo "[test $(stamp)] building the cluster's and the real node's binaries, then the images, in the background (cached: seconds); log ${logs}/prebuild.log"
set -m # each background job its own process group, so stop_all reaches its children
(
  hack/cluster/build.sh >/dev/null && hack/cluster/build.sh --node >/dev/null &&
    # The images need the venv's Python (pip, the pinned constraints): built once it exists,
    # while the kwok e2e tests mostly wait, instead of after them. The realnode fixture builds
    # them too (the same cache, under a lock), so a failure here only costs time.
    until [[ -f .venv/.installed ]]; do sleep 5; done &&
    .venv/bin/python hack/images/ocibuild.py build pause argoexec operator trainer >/dev/null
) >"${logs}/prebuild.log" 2>&1 &
pids+=($!)
set +m

make --no-print-directory setup lint || {
  stop_all
  exit 1
}
echo "[test $(stamp)] set up and linted in $((SECONDS - start)) s; two pytest sessions follow"

set -m
(
  set -o pipefail
  "${BIN}/python" -m pytest -m "e2e or realnode" --basetemp "${logs}/tmp-cluster" "$@" 2>&1 | prefix cluster
) &
cluster_pid=$!
pids+=("${cluster_pid}")
(
  set -o pipefail
  "${BIN}/python" -m pytest -m "not e2e and not realnode" --basetemp "${logs}/tmp-local" "$@" 2>&1 | prefix local
) &
local_pid=$!
pids+=("${local_pid}")
set +m

wait "${local_pid}"
local_rc=$?
echo "[test $(stamp)] local suites done (exit ${local_rc}) after $((SECONDS - start)) s; waiting for the cluster suites"
wait "${cluster_pid}"
cluster_rc=$?
echo "[test $(stamp)] cluster suites done (exit ${cluster_rc}) after $((SECONDS - start)) s"
# The background build is done by now unless no cluster test ran: stop it (by its PID).
kill -- "-${pids[0]}" 2>/dev/null || true
# pytest's exit 5 (nothing selected, e.g. -k matched only one side) is not a failure here.
((local_rc == 5)) && local_rc=0
((cluster_rc == 5)) && cluster_rc=0
if ((local_rc != 0 || cluster_rc != 0)); then
  echo "[test] FAILED: local suites exit ${local_rc}, cluster suites exit ${cluster_rc}"
  exit 1
fi
echo "[test] all passed in $((SECONDS - start)) s"
