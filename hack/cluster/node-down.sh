#!/usr/bin/env bash
# Removes the real node of node-up.sh, leaving nothing of it on the host: kubelet stops, every
# pod's containers are killed and removed through containerd's API (the shims then exit),
# containerd and the `kubernetes` Service proxy stop (all by their recorded PIDs), the node's
# cgroups and its bridge go, and $MLOPS_CLUSTER_DIR/node is removed. containerd's root, with the
# imported images only, stays in the cache (NODE_CONTAINERD_ROOT) for this cluster's next node.
# The Node object is deleted when the API server still runs (down.sh calls this first). Safe to
# run when there is no node.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GRACE_S="${MLOPS_CLUSTER_STOP_GRACE_S:-20}"

ctr_() { timeout 30 ctr --address "${NODE_SOCK}" --namespace k8s.io "$@"; }

# stop_pid NAME: SIGTERM to NAME's recorded process (its process group for the proxy, whose
# per-connection children share it), SIGKILL after the grace period.
stop_pid() {
  local name="$1" pid target deadline
  pid="$(our_pid "${name}")" || return 0
  target="${pid}"
  [[ "${2:-}" == group ]] && target="-${pid}"
  log "stopping ${name} (pid ${pid})"
  kill -TERM -- "${target}" 2>/dev/null || true
  deadline=$((SECONDS + GRACE_S))
  while kill -0 "${pid}" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "${pid}" 2>/dev/null; then
    log "${name} still running after ${GRACE_S} s: SIGKILL"
    kill -KILL -- "${target}" 2>/dev/null || true
    sleep 0.5
  fi
}

# Every task (pod sandbox or container) of this node's containerd, killed and deleted; then the
# containers themselves (and their writable snapshots): containerd's root is kept in the cache
# for the cluster's next node, with its images and nothing else.
kill_tasks() {
  [[ -S "${NODE_SOCK}" ]] && pid_alive containerd || return 0
  local ids id deadline
  mapfile -t ids < <(ctr_ tasks ls -q 2>/dev/null || true)
  if ((${#ids[@]} > 0)); then
    log "killing ${#ids[@]} containers of ${NODE_NAME}"
    for id in "${ids[@]}"; do ctr_ tasks kill --all --signal SIGKILL "${id}" >/dev/null 2>&1 || true; done
    deadline=$((SECONDS + 30))
    for id in "${ids[@]}"; do
      until ctr_ tasks delete "${id}" >/dev/null 2>&1 || ((SECONDS >= deadline)); do sleep 0.3; done
    done
  fi
  mapfile -t ids < <(ctr_ containers ls -q 2>/dev/null || true)
  ((${#ids[@]} == 0)) || ctr_ containers rm "${ids[@]}" >/dev/null 2>&1 || true
}

# The shims (one per pod) belong to this node when they serve its containerd's socket; they exit
# once their tasks are deleted. Any that did not is stopped by its PID.
stop_shims() {
  local proc pid cmdline left=()
  for proc in /proc/[0-9]*; do
    pid="${proc#/proc/}"
    cmdline="$(tr '\0' ' ' <"${proc}/cmdline" 2>/dev/null)" || continue
    [[ "${cmdline}" == *containerd-shim* && "${cmdline}" == *" -address ${NODE_SOCK} "* ]] &&
      left+=("${pid}")
  done
  ((${#left[@]} == 0)) && return 0
  log "stopping ${#left[@]} leftover shims of ${NODE_SOCK}: ${left[*]}"
  kill -KILL "${left[@]}" 2>/dev/null || true
}

remove_cgroups() {
  [[ -s "${NODE_STATE}/cgroup" ]] || return 0
  local name dir deadline failed=0
  name="$(<"${NODE_STATE}/cgroup")"
  [[ "${name}" == mlops-* ]] || return 0
  deadline=$((SECONDS + 20))
  for dir in /sys/fs/cgroup/*/"${name}"; do
    [[ -d "${dir}" ]] || continue
    # Deepest first; a cgroup whose last process is exiting may need a moment to be removable.
    until find "${dir}" -depth -type d -exec rmdir {} + 2>/dev/null || ! [[ -d "${dir}" ]]; do
      if ((SECONDS >= deadline)); then
        log "ERROR: could not remove ${dir} (processes left: $(find "${dir}" -name cgroup.procs -exec cat {} + | tr '\n' ' '))"
        failed=1
        break
      fi
      sleep 0.3
    done
  done
  return "${failed}"
}

remove_network() {
  [[ -s "${NODE_STATE}/bridge" ]] || return 0
  local bridge
  bridge="$(<"${NODE_STATE}/bridge")"
  if ip link show "${bridge}" >/dev/null 2>&1; then
    log "deleting bridge ${bridge}"
    ip link del "${bridge}"
  fi
}

main() {
  if [[ ! -e "${NODE_STATE}" ]]; then
    return 0
  fi
  if apiserver_ready; then
    "${CLUSTER_BIN_DIR}/kubectl" --kubeconfig="${KUBECONFIG_ADMIN}" delete node "${NODE_NAME}" \
      --wait=false --ignore-not-found >/dev/null 2>&1 || true
  fi
  stop_pid kubelet
  kill_tasks
  stop_pid containerd
  stop_shims
  stop_pid kube-svc-proxy group
  local failed=0
  remove_cgroups || failed=1
  remove_network
  ((failed == 0)) || die "the real node was not fully removed; ${NODE_STATE} kept"
  rm -rf "${NODE_STATE}"
  rm -f "${PIDS}"/{kube-svc-proxy,containerd,kubelet}.{pid,start,cmd}
  log "real node ${NODE_NAME} removed"
}

main "$@"
