#!/usr/bin/env bash
# Stops the local test cluster started by up.sh: every process by its recorded PID (never by
# name: other clusters and other people's processes run on the same machine), waits for them
# to exit (SIGTERM, then SIGKILL after a deadline), and removes $MLOPS_CLUSTER_DIR.
# With MLOPS_CLUSTER_KEEP_LOGS=DIR its components' logs are copied to DIR first (hack/test.sh
# keeps them beside the session's log: a flaky e2e failure is then explained by what Argo and
# kwok did, not guessed at). Safe to run when nothing is up.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# How long each process gets to exit after SIGTERM before SIGKILL.
GRACE_S="${MLOPS_CLUSTER_STOP_GRACE_S:-20}"

# running PID: the process exists and is not a zombie. A component that a test restarted as its
# own child (tests/reliability) stays a zombie after it exits until that parent reaps it; it
# holds no port and no file any more, so it counts as stopped.
running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }" # the fields after "(comm)"; the first is the state
  [[ -n "${stat}" && "${stat:0:1}" != Z ]]
}

# still_running PID...: prints those of PID... that still run.
still_running() {
  local pid
  for pid in "$@"; do
    running "${pid}" && echo "${pid}"
  done
  return 0
}

# stop NAME...: SIGTERM to each, wait for all with a deadline, SIGKILL the rest. Returns 1 when
# one survives SIGKILL (it is reported; the caller goes on stopping the others).
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
    mapfile -t alive < <(still_running "${pids[@]}")
    ((${#alive[@]} == 0)) && return 0
    if ((SECONDS >= deadline)); then
      log "still running after ${GRACE_S} s, sending SIGKILL: ${alive[*]}"
      kill -KILL "${alive[@]}" 2>/dev/null || true
      deadline=$((SECONDS + 10))
      while ((SECONDS < deadline)); do
        mapfile -t alive < <(still_running "${pids[@]}")
        ((${#alive[@]} == 0)) && return 0
        sleep 0.2
      done
      log "ERROR: processes ${alive[*]} did not exit after SIGKILL"
      return 1
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
  local failed=0
  # The real node first (node-up.sh), while the API server can still delete its Node object.
  "${CLUSTER_HACK_DIR}/node-down.sh" || failed=1
  # argo-server (argo-server-up.sh) and Kueue (kueue-up.sh) with the other clients: Kueue's
  # webhook configurations go with the API server and etcd, so kueue-down.sh's careful order is
  # not needed here.
  stop argo-server kueue workflow-controller kwok kube-scheduler kube-controller-manager || failed=1
  stop kube-apiserver || failed=1
  stop etcd || failed=1
  ((failed == 0)) || die "some processes did not stop; leaving ${STATE} in place (pids/ names them)"
  if [[ -n "${MLOPS_CLUSTER_KEEP_LOGS:-}" && -d "${STATE}/logs" ]]; then
    mkdir -p "${MLOPS_CLUSTER_KEEP_LOGS}" && cp -r "${STATE}/logs/." "${MLOPS_CLUSTER_KEEP_LOGS}/" &&
      log "its logs kept in ${MLOPS_CLUSTER_KEEP_LOGS}"
  fi
  rm -rf "${STATE}"
  log "cluster down (${STATE} removed)"
}

main "$@"
