#!/usr/bin/env bash
# Removes Kueue (kueue-up.sh) from the running local cluster: its webhook configurations first
# (their failurePolicy is Fail: the API server must never call a webhook that is gone), then the
# process, by its recorded PID (SIGTERM, SIGKILL after the grace period), then the finalizers
# only Kueue removes, and $MLOPS_CLUSTER_DIR/kueue. Its CRDs, namespace and objects stay.
# Safe to run when Kueue is not up. down.sh does not need it: it stops Kueue with the cluster.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GRACE_S="${MLOPS_CLUSTER_STOP_GRACE_S:-20}"

kubectl_() { timeout 60 "${CLUSTER_BIN_DIR}/kubectl" --kubeconfig="${KUBECONFIG_ADMIN}" "$@"; }

stop_kueue() {
  local pid deadline
  pid="$(our_pid kueue)" || return 0
  log "stopping kueue (pid ${pid})"
  kill -TERM "${pid}" 2>/dev/null || true
  deadline=$((SECONDS + GRACE_S))
  while kill -0 "${pid}" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "${pid}" 2>/dev/null; then
    log "kueue still running after ${GRACE_S} s: SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
    sleep 0.5
  fi
  ! kill -0 "${pid}" 2>/dev/null || die "kueue (pid ${pid}) did not exit"
}

# strip_finalizer RESOURCE FINALIZER: removes FINALIZER from every RESOURCE object that has it.
# Kueue puts kueue.x-k8s.io/managed on the pods it manages and kueue.x-k8s.io/resource-in-use on
# Workloads, ClusterQueues and ResourceFlavors, and only Kueue takes them off: without it,
# deleting those objects (or a namespace holding them) would hang. A JSON patch that first
# tests the entry, so that a concurrent change makes it fail rather than remove another one.
strip_finalizer() {
  local resource="$1" fin="$2" ns name idx n=0
  # One line per object holding it: NAMESPACE NAME INDEX.
  local tmpl="{{range .items}}{{\$o := .}}{{range \$i, \$f := .metadata.finalizers}}{{if eq \$f \"${fin}\"}}{{or \$o.metadata.namespace \"-\"}} {{\$o.metadata.name}} {{\$i}}{{\"\\n\"}}{{end}}{{end}}{{end}}"
  while read -r ns name idx; do
    [[ -n "${name}" ]] || continue
    local nsarg=()
    [[ "${ns}" == - ]] || nsarg=(--namespace "${ns}")
    kubectl_ patch "${resource}" "${name}" "${nsarg[@]}" --type=json \
      -p "[{\"op\":\"test\",\"path\":\"/metadata/finalizers/${idx}\",\"value\":\"${fin}\"},{\"op\":\"remove\",\"path\":\"/metadata/finalizers/${idx}\"}]" \
      >/dev/null || log "warning: could not remove ${fin} from ${resource} ${ns}/${name}"
    n=$((n + 1))
  done < <(kubectl_ get "${resource}" --all-namespaces -o go-template="${tmpl}" 2>/dev/null || true)
  ((n == 0)) || log "removed finalizer ${fin} from ${n} ${resource}"
}

main() {
  if [[ ! -e "${KUEUE_STATE}" && ! -e "${PIDS}/kueue.pid" ]]; then
    log "Kueue is not up (${KUEUE_STATE} does not exist)"
    return 0
  fi
  local api=0
  apiserver_ready && api=1
  if ((api)); then
    kubectl_ delete mutatingwebhookconfiguration,validatingwebhookconfiguration \
      "${KUEUE_WEBHOOK_CONFIG}" --ignore-not-found >/dev/null
  fi
  stop_kueue
  if ((api)); then
    strip_finalizer pods kueue.x-k8s.io/managed
    local r
    for r in workloads.kueue.x-k8s.io clusterqueues.kueue.x-k8s.io resourceflavors.kueue.x-k8s.io; do
      strip_finalizer "${r}" kueue.x-k8s.io/resource-in-use
    done
  fi
  rm -rf "${KUEUE_STATE}"
  rm -f "${PIDS}/kueue.pid" "${PIDS}/kueue.start" "${PIDS}/kueue.cmd"
  log "Kueue removed"
}

main "$@"
