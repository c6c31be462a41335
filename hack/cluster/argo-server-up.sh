#!/usr/bin/env bash
# Adds argo-server (Argo's API and its web UI, built here: build.sh --ui) to the running local
# cluster (up.sh first), as one more plain process on ${ARGO_SERVER_URL}:
#
#   argo server --auth-mode=server --secure=false --namespaced=false
#
# --auth-mode=server: the UI and API act with argo-server's own credentials (here the cluster's
# admin kubeconfig), so a browser or `argo` needs no token. That is for this machine only: a real
# install runs argo-server in the cluster with --auth-mode=client (each user's bearer token) or
# sso, behind a port-forward or an ingress (README, "Watching a run"). Plain HTTP on 127.0.0.1.
# It reads the links of the workflow-controller-configmap (manifests/argo.yaml): the output
# folder and TensorBoard buttons on each run's page.
# Idempotent: when it is already up it says so. down.sh stops it with the cluster. Prints the URL.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  cluster_up || die "the cluster of ${STATE} is not up: run hack/cluster/up.sh first"
  if argo_server_up; then
    log "argo-server already up (pid $(our_pid argo-server)): ${ARGO_SERVER_URL}"
    echo "${ARGO_SERVER_URL}"
    return 0
  fi
  local start_s=${SECONDS} bin
  bin="$("${CLUSTER_HACK_DIR}/build.sh" --ui)"
  port_free "${MLOPS_ARGO_SERVER_PORT}" ||
    die "port ${MLOPS_ARGO_SERVER_PORT} on 127.0.0.1 is in use; pick another with MLOPS_ARGO_SERVER_PORT=..."
  # --namespace: where it reads the workflow-controller-configmap (Argo's install namespace).
  # *_MODAL=false: no survey or "new version" pop-ups over the pages (argo-server's info API).
  start argo-server env FIRST_TIME_USER_MODAL=false FEEDBACK_MODAL=false NEW_VERSION_MODAL=false \
    "${bin}/argo" server \
    --kubeconfig="${KUBECONFIG_ADMIN}" \
    --namespace=argo \
    --namespaced=false \
    --auth-mode=server \
    --secure=false \
    --port="${MLOPS_ARGO_SERVER_PORT}" \
    --loglevel=info
  wait_for "argo-server's API" 120 argo-server argo_server_up
  log "argo-server ${ARGOCLI_VERSION} up in $((SECONDS - start_s)) s: ${ARGO_SERVER_URL} (log ${LOGS}/argo-server.log)"
  log "  the argo CLI: ${bin}/argo (reads KUBECONFIG; eval \"\$(hack/cluster/env.sh)\" puts it on PATH)"
  echo "${ARGO_SERVER_URL}"
}

main "$@"
