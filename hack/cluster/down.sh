#!/usr/bin/env bash
# Stops the local test cluster started by up.sh: every process by its recorded PID (never by
# name: other clusters and other people's processes run on the same machine), waits for them
# to exit (SIGTERM, then SIGKILL after a deadline), and removes $MLOPS_CLUSTER_DIR.
# Safe to run when nothing is up.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# How long each process gets to exit after SIGTERM before SIGKILL.
GRACE_S="${MLOPS_CLUSTER_STOP_GRACE_S:-20}"

# stop NAME...: SIGTERM to each, wait for all with a deadline, SIGKILL the rest.
stop() {
  local name pid pids=() names=()
  for name in "$@"; do
    if pid="$(our_pid "${name}")"; then
      kill -TERM "${pid}" 2>/dev/null || true
      pids+=("${pid}")
      names+=("${name}")
    fi
  done
  ((${#pids[@]} == 0)) && return 0
  log "stopping ${names[*]}"
  local deadline=$((SECONDS + GRACE_S)) alive
  while :; do
    alive=()
    for pid in "${pids[@]}"; do
      kill -0 "${pid}" 2>/dev/null && alive+=("${pid}")
    done
    ((${#alive[@]} == 0)) && return 0
    if ((SECONDS >= deadline)); then
      log "still running after ${GRACE_S} s, sending SIGKILL: ${alive[*]}"
      kill -KILL "${alive[@]}" 2>/dev/null || true
      deadline=$((SECONDS + 10))
      while ((SECONDS < deadline)); do
        alive=()
        for pid in "${pids[@]}"; do
          kill -0 "${pid}" 2>/dev/null && alive+=("${pid}")
        done
        ((${#alive[@]} == 0)) && return 0
        sleep 0.2
      done
      die "processes ${alive[*]} did not exit after SIGKILL; leaving ${STATE} in place"
    fi
    sleep 0.2
  done
}

main() {
  if [[ ! -e "${STATE}" ]]; then
    log "nothing to stop (${STATE} does not exist)"
    return 0
  fi
  # Clients of the API server first, so that none of them logs a storm of connection errors;
  # then the API server, then etcd, which must outlive the API server's last writes.
  stop workflow-controller kwok kube-scheduler kube-controller-manager
  stop kube-apiserver
  stop etcd
  rm -rf "${STATE}"
  log "cluster down (${STATE} removed)"
}

main "$@"
