#!/usr/bin/env bash
# `make e2e-kind`: create a kind cluster, install Argo (pinned release) and kwok into it, then run
# the same `pytest -m e2e` against it through MLOPS_E2E_KUBECONFIG (tests/conftest.py points
# its `cluster` fixture at an existing cluster when that is set: nothing is built or started).
#
# Needs docker, kind, kubectl, helm and internet access (release manifests, images). It cannot run
# on the project's build machines (no Docker there); the local cluster (make e2e) is the default.
#
# Environment:
#   KIND_CLUSTER_NAME       (mlops-e2e)
#   MLOPS_KIND_NODE_IMAGE   kindest/node image to pin, e.g. kindest/node:v1.35.0 (kind's default if empty)
#   MLOPS_KIND_KEEP=1       keep the cluster afterwards (default: delete it)
#   PYTEST_ARGS             extra pytest arguments
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NAME="${KIND_CLUSTER_NAME:-mlops-e2e}"
ARGO_VERSION="v3.7.18"   # same as hack/cluster/modules/argo/go.mod
KWOK_VERSION="v0.8.0"    # same as hack/cluster/modules/k8s/go.mod
ARGO_INSTALL="https://github.com/argoproj/argo-workflows/releases/download/${ARGO_VERSION}/install.yaml"
# The release's install.yaml carries Argo's *minimal* CRDs; the full ones validate Workflows as
# the local cluster does (tests/e2e/test_cluster.py::test_full_argo_crd_rejects_an_invalid_workflow).
ARGO_FULL_CRDS="https://github.com/argoproj/argo-workflows/manifests/base/crds/full?ref=${ARGO_VERSION}"
KWOK_INSTALL="https://github.com/kubernetes-sigs/kwok/releases/download/${KWOK_VERSION}/kwok.yaml"
KUBECONFIG_FILE="${ROOT}/.kind-${NAME}.kubeconfig"

log() { printf '[kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
for cmd in docker kind kubectl helm; do
  command -v "${cmd}" >/dev/null || { log "ERROR: ${cmd} is not installed"; exit 1; }
done

cleanup() {
  if [[ "${MLOPS_KIND_KEEP:-0}" == 1 ]]; then
    log "kept: export KUBECONFIG=${KUBECONFIG_FILE}; kind delete cluster --name ${NAME}"
  else
    kind delete cluster --name "${NAME}" >&2 || true
    rm -f "${KUBECONFIG_FILE}"
  fi
}

if ! kind get clusters 2>/dev/null | grep -qx "${NAME}"; then
  log "creating kind cluster ${NAME}"
  kind create cluster --name "${NAME}" --config "${ROOT}/hack/kind/kind-config.yaml" \
    --kubeconfig "${KUBECONFIG_FILE}" --wait 120s \
    ${MLOPS_KIND_NODE_IMAGE:+--image "${MLOPS_KIND_NODE_IMAGE}"}
fi
trap cleanup EXIT
kind get kubeconfig --name "${NAME}" >"${KUBECONFIG_FILE}"
export KUBECONFIG="${KUBECONFIG_FILE}"

log "installing Argo Workflows ${ARGO_VERSION}"
kubectl create namespace argo --dry-run=client -o yaml | kubectl apply -f -
kubectl apply --server-side --force-conflicts -n argo -f "${ARGO_INSTALL}"
kubectl apply --server-side --force-conflicts -k "${ARGO_FULL_CRDS}"
# Same controller settings as the local cluster (hack/cluster/manifests/argo.yaml).
kubectl apply -f "${ROOT}/hack/cluster/manifests/argo.yaml"
kubectl -n argo rollout restart deployment/workflow-controller
kubectl -n argo rollout status deployment/workflow-controller --timeout=300s

log "installing kwok ${KWOK_VERSION} with the local cluster's stages and fake nodes"
kubectl apply -f "${KWOK_INSTALL}"
kubectl -n kube-system rollout status deployment/kwok-controller --timeout=300s
kubectl apply -f "${ROOT}/hack/cluster/kwok/stages.yaml"
kubectl apply -f "${ROOT}/hack/cluster/manifests/nodes.yaml"
kubectl wait --for=condition=Ready node --selector=type=kwok --timeout=120s

# From now on every new pod goes to kwok's fake nodes (Argo and kwok keep running where they are).
kubectl cordon --selector='!type'

# Not the Kueue cases: hack/cluster/kueue-up.sh runs Kueue beside the local cluster's API server.
log "running pytest -m 'e2e and not kueue' against ${NAME}"
cd "${ROOT}"
# shellcheck disable=SC2086 # PYTEST_ARGS may hold several words, split on purpose
MLOPS_E2E_KUBECONFIG="${KUBECONFIG_FILE}" .venv/bin/python -m pytest -m "e2e and not kueue" ${PYTEST_ARGS:-}
