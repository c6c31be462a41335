#!/usr/bin/env bash
# Adds Kueue (its controller manager, the `pod` integration only) to the running local cluster
# (up.sh first), as one more plain process:
#
#   CRDs (server-side apply) -> namespace kueue-system -> kueue (kueue-ns.sh: a private mount
#   namespace) -> readyz -> webhook configurations ${KUEUE_WEBHOOK_CONFIG} -> webhooks answer
#
# Its admission webhooks are URL webhooks on https://127.0.0.1:${MLOPS_KUEUE_WEBHOOK_PORT}, with
# a serving certificate of the cluster's CA (pki/ca.crt): no Service, no Secret, no pod. Only the
# pods that carry the label kueue.x-k8s.io/queue-name go through Kueue's pod webhooks, so
# nothing else in the cluster (Argo's pods, the operator's, kube-system) depends on Kueue.
# State (certificates, config) in $MLOPS_CLUSTER_DIR/kueue, log logs/kueue.log, pid pids/kueue.pid.
# Idempotent: when Kueue is already up it says so and exits 0. kueue-down.sh removes it again;
# down.sh stops it with the cluster.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_ports() {
  local var
  for var in MLOPS_KUEUE_WEBHOOK_PORT MLOPS_KUEUE_HEALTH_PORT MLOPS_KUEUE_METRICS_PORT; do
    port_free "${!var}" || die "port ${!var} on 127.0.0.1 is in use; pick another with ${var}=..."
  done
}

# Kueue's serving certificate (webhooks and metrics), signed by the cluster's CA like the API
# server's: the API server verifies it with the caBundle of the webhook configurations.
make_certs() {
  local d="${KUEUE_STATE}/certs"
  mkdir -p "${d}"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kueue-webhook" \
    -keyout "${d}/tls.key" -out "${d}/tls.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth" >"${d}/tls.ext"
  # A random serial rather than -CAcreateserial, which would write pki/ca.srl.
  openssl x509 -req -in "${d}/tls.csr" -CA "${PKI}/ca.crt" -CAkey "${PKI}/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "${d}/tls.ext" \
    -out "${d}/tls.crt" 2>/dev/null
  chmod 600 "${d}/tls.key"
}

# kueue_crds_served CRD_DIR: discovery lists every resource of Kueue's CRDs in v1beta2 (the
# storage version; the CRDs carry no conversion webhook, so v1beta2 is the version to use).
kueue_crds_served() {
  local doc f r
  doc="$(kubectl get --raw /apis/kueue.x-k8s.io/v1beta2)" || return 1
  for f in "$1"/kueue.x-k8s.io_*.yaml; do
    r="${f##*/kueue.x-k8s.io_}"
    grep -q "\"name\":\"${r%.yaml}\"" <<<"${doc}" || return 1
  done
}

apply_crds() {
  local crds="$1" t0=${SECONDS}
  # Server-side: the CRDs are far over client-side apply's 256 KiB annotation limit, and unlike
  # `create` (up.sh's Argo CRDs) apply is idempotent: a restarted Kueue finds them in place.
  kubectl apply --server-side --field-manager=mlops-kueue-up -f "${crds}" >/dev/null
  wait_for "Kueue CRDs served" 120 kube-apiserver kueue_crds_served "${crds}"
  log "Kueue CRDs applied and served in $((SECONDS - t0)) s"
}

write_config() {
  cat >"${KUEUE_STATE}/config.yaml" <<EOF
# Kueue ${KUEUE_VERSION} run as a plain local process (kueue-up.sh).
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
# Only pods labelled kueue.x-k8s.io/queue-name are Kueue's (the webhooks' objectSelector too).
manageJobsWithoutQueueName: false
# Required with the pod integration; must leave out kube-system and Kueue's own namespace.
managedJobsNamespaceSelector:
  matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: [kube-system, kueue-system]
# Our certificate (the cluster's CA) instead of Kueue's own rotation, which would write a Secret
# and patch the webhook configurations of an in-cluster Deployment.
internalCertManagement:
  enable: false
webhook:
  host: 127.0.0.1
  port: ${MLOPS_KUEUE_WEBHOOK_PORT}
  certDir: ${KUEUE_STATE}/certs
metrics:
  bindAddress: 127.0.0.1:${MLOPS_KUEUE_METRICS_PORT}
health:
  healthProbeBindAddress: 127.0.0.1:${MLOPS_KUEUE_HEALTH_PORT}
# Explicit: left unset, the defaulting turns leader election on. One process, nothing to elect.
leaderElection:
  leaderElect: false
integrations:
  frameworks: [pod]
featureGates:
  # Its visibility API server wants in-cluster config and an APIService; nothing here uses it.
  VisibilityOnDemand: false
  # On (beta default), the pod webhook adds a second scheduling gate, kueue.x-k8s.io/topology,
  # removed again at admission unless a Topology is used; there is none here.
  TopologyAwareScheduling: false
EOF
}

# webhook NAME PATH GROUP VERSION RESOURCES OPERATIONS: one entry of a webhook configuration,
# as in Kueue's config/components/webhook/manifests.yaml but a URL instead of a Service.
webhook() {
  cat <<EOF
- name: $1
  admissionReviewVersions: [v1]
  clientConfig:
    url: https://127.0.0.1:${MLOPS_KUEUE_WEBHOOK_PORT}$2
    caBundle: ${CA_BUNDLE}
  failurePolicy: Fail
  sideEffects: None
  timeoutSeconds: 10
  rules:
  - apiGroups: ["$3"]
    apiVersions: [$4]
    resources: [$5]
    operations: [$6]
EOF
  [[ "$5" == pods ]] || return 0
  # Kueue's own namespace selector for its pod webhooks, and only labelled pods: every other pod
  # of the cluster is created whether or not Kueue runs.
  cat <<EOF
  namespaceSelector:
    matchExpressions:
    - {key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system, kueue-system]}
  objectSelector:
    matchExpressions:
    - {key: kueue.x-k8s.io/queue-name, operator: Exists}
EOF
}

# The webhooks of what is enabled: pods, Kueue's own kinds (LocalQueue has none). The other
# integrations' (Jobs, JobSets, Deployments, ...) are left out: their frameworks are off.
apply_webhooks() {
  CA_BUNDLE="$(base64 -w0 <"${PKI}/ca.crt")"
  local k=kueue.x-k8s.io/v1beta2 p=/mutate-kueue-x-k8s-io-v1beta2 v=/validate-kueue-x-k8s-io-v1beta2
  {
    echo "apiVersion: admissionregistration.k8s.io/v1"
    echo "kind: MutatingWebhookConfiguration"
    echo "metadata: {name: ${KUEUE_WEBHOOK_CONFIG}}"
    echo "webhooks:"
    webhook mpod.kb.io /mutate--v1-pod "" v1 pods CREATE
    webhook mclusterqueue.kb.io "${p}-clusterqueue" "${k%/*}" "${k#*/}" clusterqueues CREATE
    webhook mresourceflavor.kb.io "${p}-resourceflavor" "${k%/*}" "${k#*/}" resourceflavors CREATE
    webhook mworkload.kb.io "${p}-workload" "${k%/*}" "${k#*/}" workloads CREATE
    echo "---"
    echo "apiVersion: admissionregistration.k8s.io/v1"
    echo "kind: ValidatingWebhookConfiguration"
    echo "metadata: {name: ${KUEUE_WEBHOOK_CONFIG}}"
    echo "webhooks:"
    webhook vpod.kb.io /validate--v1-pod "" v1 pods "CREATE, UPDATE"
    webhook vclusterqueue.kb.io "${v}-clusterqueue" "${k%/*}" "${k#*/}" clusterqueues "CREATE, UPDATE"
    webhook vcohort.kb.io "${v}-cohort" "${k%/*}" "${k#*/}" cohorts "CREATE, UPDATE"
    webhook vresourceflavor.kb.io "${v}-resourceflavor" "${k%/*}" "${k#*/}" resourceflavors "CREATE, UPDATE"
    webhook vworkload.kb.io "${v}-workload" "${k%/*}" "${k#*/}" "workloads, workloads/status" "CREATE, UPDATE"
  } >"${KUEUE_STATE}/webhooks.yaml"
  kubectl apply -f "${KUEUE_STATE}/webhooks.yaml" >/dev/null
}

# webhooks_answer: the API server reaches Kueue's webhooks through the new configurations (it
# picks them up a moment after they are written): a server-side dry run of a ResourceFlavor
# passes Kueue's own webhooks, and one of a labelled pod comes back with Kueue's scheduling gate.
webhooks_answer() {
  kubectl create --dry-run=server -o name -f - <<'EOF' >/dev/null || return 1
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {name: mlops-kueue-up-probe}
EOF
  kubectl create --dry-run=server -o jsonpath='{.spec.schedulingGates[*].name}' -f - <<'EOF' |
apiVersion: v1
kind: Pod
metadata:
  name: mlops-kueue-up-probe
  namespace: default
  labels: {kueue.x-k8s.io/queue-name: mlops-kueue-up-probe}
spec:
  containers: [{name: c, image: probe}]
EOF
    grep -qw kueue.x-k8s.io/admission
}

on_exit() {
  local rc=$?
  ((rc == 0)) && return 0
  log "kueue-up failed (exit ${rc}); logs are in ${LOGS}"
  if [[ "${MLOPS_CLUSTER_KEEP_ON_FAILURE:-0}" != 1 ]]; then
    rm -rf "${STATE}.failed-kueue-logs"
    cp -r "${LOGS}" "${STATE}.failed-kueue-logs" 2>/dev/null || true
    "${CLUSTER_HACK_DIR}/kueue-down.sh" >&2 || true
    log "logs kept in ${STATE}.failed-kueue-logs"
  fi
  exit "${rc}"
}

main() {
  cluster_up || die "the cluster of ${STATE} is not up: run hack/cluster/up.sh first"
  export PATH="${CLUSTER_BIN_DIR}:${PATH}"
  export KUBECONFIG="${KUBECONFIG_ADMIN}"
  if kueue_up && kubectl get validatingwebhookconfiguration "${KUEUE_WEBHOOK_CONFIG}" >/dev/null 2>&1; then
    log "Kueue already up (pid $(our_pid kueue), webhooks on 127.0.0.1:${MLOPS_KUEUE_WEBHOOK_PORT})"
    return 0
  fi
  if [[ -e "${KUEUE_STATE}" || -e "${PIDS}/kueue.pid" ]]; then
    log "${KUEUE_STATE} holds a Kueue that is not (fully) running: removing it first"
    "${CLUSTER_HACK_DIR}/kueue-down.sh" >&2
  fi
  local start_s=${SECONDS} bin
  bin="$("${CLUSTER_HACK_DIR}/build.sh" --kueue)"
  check_ports
  mkdir -p "${KUEUE_STATE}"
  trap on_exit EXIT
  make_certs
  apply_crds "${bin}/crds"
  kubectl apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: kueue-system}
EOF
  write_config
  # kueue-ns.sh and unshare exec in place: the recorded PID is Kueue's own (down.sh stops it).
  start kueue unshare --mount --propagation private -- "${CLUSTER_HACK_DIR}/kueue-ns.sh" \
    "${KUEUE_STATE}" "${bin}/kueue" \
    --config="${KUEUE_STATE}/config.yaml" \
    --kubeconfig="${KUBECONFIG_ADMIN}"
  # /readyz turns ready once the webhook server listens (cmd/kueue/main.go setupProbeEndpoints).
  wait_for "Kueue /readyz" 120 kueue kueue_up
  log "Kueue ready $((SECONDS - start_s)) s after the start of kueue-up"
  apply_webhooks
  wait_for "Kueue's webhooks answering through the API server" 60 kueue webhooks_answer
  trap - EXIT
  log "Kueue ${KUEUE_VERSION} up in $((SECONDS - start_s)) s (webhooks https://127.0.0.1:${MLOPS_KUEUE_WEBHOOK_PORT}, readyz :${MLOPS_KUEUE_HEALTH_PORT}, metrics :${MLOPS_KUEUE_METRICS_PORT}; log ${LOGS}/kueue.log)"
}

main "$@"
