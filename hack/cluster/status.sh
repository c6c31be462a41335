#!/usr/bin/env bash
# Exit 0 when the local test cluster of $MLOPS_CLUSTER_DIR is up (every process running and the
# API server ready), 1 otherwise; says which processes run. Used by the pytest fixture to decide
# whether it must start (and later stop) the cluster itself.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for c in "${COMPONENTS[@]}"; do
  if pid="$(our_pid "${c}")"; then
    log "${c}: running (pid ${pid})"
  else
    log "${c}: not running"
  fi
done
if [[ -d "${NODE_STATE}" ]]; then
  for c in "${NODE_COMPONENTS[@]}"; do
    if pid="$(our_pid "${c}")"; then
      log "${c} (real node): running (pid ${pid})"
    else
      log "${c} (real node): not running"
    fi
  done
  if node_up; then log "real node ${NODE_NAME}: up"; else log "real node ${NODE_NAME}: not up"; fi
fi
if [[ -e "${PIDS}/kueue.pid" ]]; then
  if kueue_up; then log "kueue: running (pid $(our_pid kueue)), ready"; else log "kueue: not up"; fi
fi
if cluster_up; then
  log "up: ${KUBECONFIG_ADMIN}"
  exit 0
fi
log "not up (${STATE})"
exit 1
