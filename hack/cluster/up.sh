#!/usr/bin/env bash
# Starts the local test cluster as plain processes (no containers, no kubelet):
#   etcd -> kube-apiserver -> kube-controller-manager (ownerReference GC, ServiceAccounts)
#        -> kube-scheduler -> kwok (fake nodes and pod lifecycle) -> Argo workflow-controller
# MLOPS_REALNODE=1 adds a real node (kubelet + containerd, node-up.sh) beside the kwok nodes.
# State (certs, tokens, kubeconfigs, etcd data, logs, pid files) goes to $MLOPS_CLUSTER_DIR.
# Idempotent: when the cluster is already up it says so and exits 0.
# Prints the admin kubeconfig path on stdout (progress goes to stderr).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The issuer/audience of ServiceAccount tokens; the in-cluster default, so tokens minted by the
# TokenRequest API look like a real cluster's.
SA_ISSUER="https://kubernetes.default.svc.cluster.local"

check_ports() {
  local var
  for var in MLOPS_ETCD_PORT MLOPS_ETCD_PEER_PORT MLOPS_APISERVER_PORT MLOPS_KCM_PORT MLOPS_SCHEDULER_PORT; do
    port_free "${!var}" ||
      die "port ${!var} on 127.0.0.1 is in use; pick another with ${var}=... (and a separate MLOPS_CLUSTER_DIR)"
  done
  port_free 6060 || log "warning: port 6060 is in use; workflow-controller's /healthz will not be served (harmless)"
}

make_pki() {
  mkdir -p "${PKI}"
  (
    cd "${PKI}"
    # A private CA so that every client verifies the API server's certificate (no insecure TLS).
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=mlops-local-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout apiserver.key -out apiserver.csr 2>/dev/null
    # The `kubernetes` Service's ClusterIP too: in-cluster clients (the real node's pods) dial it.
    printf '%s\n' "subjectAltName=IP:127.0.0.1,IP:${KUBERNETES_SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
      "extendedKeyUsage=serverAuth" >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    # The API server's client certificate towards kubelets (logs, exec, port-forward): kubelets
    # trust our CA for x509 client auth, and system:masters passes their authorization webhook.
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
      -keyout kubelet-client.key -out kubelet-client.csr 2>/dev/null
    echo "extendedKeyUsage=clientAuth" >kubelet-client.ext
    openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile kubelet-client.ext -out kubelet-client.crt 2>/dev/null
    # ServiceAccount token signing key pair (TokenRequest API, token controller).
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 600 ./*.key
  )
}

# write_kubeconfig FILE USER TOKEN
write_kubeconfig() {
  local ca
  ca="$(base64 -w0 <"${PKI}/ca.crt")"
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mlops-local
  cluster:
    server: ${APISERVER_URL}
    certificate-authority-data: ${ca}
users:
- name: $2
  user:
    token: $3
contexts:
- name: mlops-local-$2
  context:
    cluster: mlops-local
    user: $2
current-context: mlops-local-$2
EOF
  chmod 600 "$1"
}

make_auth() {
  local admin user node
  admin="$(openssl rand -hex 24)"
  user="$(openssl rand -hex 24)"
  node="$(openssl rand -hex 24)"
  echo -n "${admin}" >"${STATE}/admin.token"
  echo -n "${user}" >"${STATE}/user.token"
  echo -n "${node}" >"${STATE}/node.token"
  # Static tokens: token,user,uid,"groups". The admin is in system:masters (bypasses RBAC); the
  # second user is only system:authenticated, so what it may do is what RBAC grants it. The
  # third is the real node's kubelet (node-up.sh), which the Node authorizer confines to its
  # own node and the pods bound to it, as on a real cluster.
  {
    echo "${admin},admin,admin,\"system:masters\""
    echo "${user},${MLOPS_USER_NAME},${MLOPS_USER_NAME},\"mlops:developers\""
    echo "${node},system:node:${NODE_NAME},system:node:${NODE_NAME},\"system:nodes\""
  } >"${STATE}/tokens.csv"
  chmod 600 "${STATE}"/*.token "${STATE}/tokens.csv"
  write_kubeconfig "${KUBECONFIG_ADMIN}" admin "${admin}"
  write_kubeconfig "${KUBECONFIG_USER}" "${MLOPS_USER_NAME}" "${user}"
}

start_etcd() {
  # --unsafe-no-fsync: test data, speed over durability. --max-request-bytes: Argo's full
  # Workflow CRD is ~1 MB of JSON plus as much again of managedFields, over etcd's 1.5 MiB default.
  start etcd "${BIN}/etcd" \
    --name=mlops \
    --data-dir="${STATE}/etcd" \
    --listen-client-urls="http://127.0.0.1:${MLOPS_ETCD_PORT}" \
    --advertise-client-urls="http://127.0.0.1:${MLOPS_ETCD_PORT}" \
    --listen-peer-urls="http://127.0.0.1:${MLOPS_ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls="http://127.0.0.1:${MLOPS_ETCD_PEER_PORT}" \
    --initial-cluster="mlops=http://127.0.0.1:${MLOPS_ETCD_PEER_PORT}" \
    --unsafe-no-fsync \
    --max-request-bytes=16777216 \
    --quota-backend-bytes=4294967296 \
    --log-level=warn
  wait_for "etcd health" 60 etcd curl -sf --max-time 2 "http://127.0.0.1:${MLOPS_ETCD_PORT}/health"
}

start_apiserver() {
  # --endpoint-reconciler-type=none: the API server listens on loopback only, which the
  # `kubernetes` Service's Endpoints may not hold (it would log an error every 10 s). The real
  # node's pods reach it in-cluster through node-up.sh's proxy on the Service's ClusterIP.
  start kube-apiserver "${BIN}/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:${MLOPS_ETCD_PORT}" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="${MLOPS_APISERVER_PORT}" \
    --tls-cert-file="${PKI}/apiserver.crt" \
    --tls-private-key-file="${PKI}/apiserver.key" \
    --client-ca-file="${PKI}/ca.crt" \
    --token-auth-file="${STATE}/tokens.csv" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer="${SA_ISSUER}" \
    --api-audiences="${SA_ISSUER}" \
    --service-account-key-file="${PKI}/sa.pub" \
    --service-account-signing-key-file="${PKI}/sa.key" \
    --service-cluster-ip-range="${MLOPS_SERVICE_CIDR}" \
    --kubelet-client-certificate="${PKI}/kubelet-client.crt" \
    --kubelet-client-key="${PKI}/kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --profiling=false \
    --cert-dir="${PKI}"
  wait_for "kube-apiserver /readyz" 180 kube-apiserver apiserver_ready
}

start_controllers() {
  local kc="${KUBECONFIG_ADMIN}"
  # Runs the garbage collector (ownerReferences), namespace deletion, the ServiceAccount and token
  # controllers (every namespace gets its `default` ServiceAccount), Jobs, ReplicaSets, ...
  start kube-controller-manager "${BIN}/kube-controller-manager" \
    --kubeconfig="${kc}" \
    --authentication-kubeconfig="${kc}" \
    --authorization-kubeconfig="${kc}" \
    --leader-elect=false \
    --bind-address=127.0.0.1 \
    --secure-port="${MLOPS_KCM_PORT}" \
    --service-account-private-key-file="${PKI}/sa.key" \
    --root-ca-file="${PKI}/ca.crt" \
    --cluster-signing-cert-file="${PKI}/ca.crt" \
    --cluster-signing-key-file="${PKI}/ca.key" \
    --profiling=false
  start kube-scheduler "${BIN}/kube-scheduler" \
    --kubeconfig="${kc}" \
    --authentication-kubeconfig="${kc}" \
    --authorization-kubeconfig="${kc}" \
    --leader-elect=false \
    --bind-address=127.0.0.1 \
    --secure-port="${MLOPS_SCHEDULER_PORT}" \
    --profiling=false
  wait_for "kube-controller-manager /healthz" 120 kube-controller-manager \
    curl -skf --max-time 2 "https://127.0.0.1:${MLOPS_KCM_PORT}/healthz"
  wait_for "kube-scheduler /healthz" 120 kube-scheduler \
    curl -skf --max-time 2 "https://127.0.0.1:${MLOPS_SCHEDULER_PORT}/healthz"
}

start_kwok() {
  # HOME points into the state dir: kwok would otherwise also load ~/.kwok/kwok.yaml.
  mkdir -p "${STATE}/kwok-home"
  start kwok env HOME="${STATE}/kwok-home" "${BIN}/kwok" \
    --kubeconfig="${KUBECONFIG_ADMIN}" \
    --config="${CLUSTER_HACK_DIR}/kwok/stages.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-ip=10.240.0.1 \
    --cidr=10.244.0.0/16 \
    --node-lease-duration-seconds=40
  kubectl apply -f "${CLUSTER_HACK_DIR}/manifests/nodes.yaml" >/dev/null
  wait_for "kwok nodes Ready" 120 kwok \
    kubectl wait --for=condition=Ready node --selector=type=kwok --timeout=2s
}

# argo_crds_served: the API server's discovery lists every Argo resource up.sh relies on.
argo_crds_served() {
  local doc r
  doc="$(kubectl get --raw /apis/argoproj.io/v1alpha1)" || return 1
  for r in workflows workflowtemplates clusterworkflowtemplates cronworkflows workflowtaskresults \
    workflowtasksets workflowartifactgctasks workfloweventbindings; do
    grep -q "\"name\":\"${r}\"" <<<"${doc}" || return 1
  done
}

start_argo() {
  # BIN/crds is a symlink, which kubectl does not read as a folder: resolve it.
  local crds
  crds="$(readlink -f "${BIN}/crds")"
  # Argo's FULL CRDs: the API server validates every Workflow against the real schema, so a bad
  # Workflow fails at create time as it would on a cluster installed from Argo's full manifests.
  # `create`, not `apply`: etcd is always fresh here, and the CRDs are far over client-side
  # apply's 256 KiB annotation limit. (Server-side apply works too; it is no faster.)
  kubectl create -f "${crds}" >/dev/null
  # Served = listed by discovery. Not `kubectl wait --for=condition=Established`: it watches the
  # CRDs, and encoding these multi-MB objects into a watch on 2 busy cores outlasts its timeout.
  wait_for "Argo CRDs served" 120 kube-apiserver argo_crds_served
  kubectl apply -f "${CLUSTER_HACK_DIR}/manifests/argo.yaml" >/dev/null
  # Leader election off: one controller, nothing to elect; --namespaced=false: all namespaces.
  # ARGO_PROGRESS_PATCH_TICK_DURATION (the controller passes it to each pod's executor): how
  # often a trainer's ARGO_PROGRESS_FILE ("N/M" steps) is reported back; Argo's default, 1 min,
  # is longer than the real node's test runs, whose final progress would then read "1/1".
  start workflow-controller env LEADER_ELECTION_DISABLE=true ARGO_PROGRESS_PATCH_TICK_DURATION=5s \
    "${BIN}/workflow-controller" \
    --kubeconfig="${KUBECONFIG_ADMIN}" \
    --namespace=argo \
    --namespaced=false \
    --configmap=workflow-controller-configmap \
    --executor-image="${ARGO_EXECUTOR_IMAGE}" \
    --executor-image-pull-policy=IfNotPresent \
    --loglevel=info
  # Logged once its informers have synced (argo-workflows workflow/controller/controller.go).
  wait_for "workflow-controller caches synced" 120 workflow-controller \
    grep -q "Performing periodic GC" "${LOGS}/workflow-controller.log"
}

on_exit() {
  local rc=$?
  ((rc == 0)) && return 0
  log "cluster-up failed (exit ${rc}); logs are in ${LOGS}"
  if [[ "${MLOPS_CLUSTER_KEEP_ON_FAILURE:-0}" == 1 ]]; then
    log "MLOPS_CLUSTER_KEEP_ON_FAILURE=1: leaving the processes and ${STATE} for inspection"
  else
    # Keep the logs where a person (or CI's artifact step) can read them.
    rm -rf "${STATE}.failed-logs"
    cp -r "${LOGS}" "${STATE}.failed-logs" 2>/dev/null || true
    "${CLUSTER_HACK_DIR}/down.sh" >&2 || true
    log "logs kept in ${STATE}.failed-logs"
  fi
  exit "${rc}"
}

main() {
  if cluster_up; then
    log "already up (${STATE})"
    if [[ "${MLOPS_REALNODE:-0}" == 1 ]]; then
      "${CLUSTER_HACK_DIR}/node-up.sh" >&2
    fi
    echo "${KUBECONFIG_ADMIN}"
    return 0
  fi
  if [[ -e "${STATE}" ]]; then
    log "${STATE} holds a cluster that is not (fully) running: cleaning it up first"
    "${CLUSTER_HACK_DIR}/down.sh" >&2
  fi
  BIN="$("${CLUSTER_HACK_DIR}/build.sh")"
  export PATH="${BIN}:${PATH}"
  export KUBECONFIG="${KUBECONFIG_ADMIN}"
  check_ports
  local start_s=${SECONDS}
  mkdir -p "${PIDS}" "${LOGS}"
  # Any failure from here on (set -e, die) stops what was started and keeps the logs.
  trap on_exit EXIT
  make_pki
  make_auth
  start_etcd
  start_apiserver
  start_controllers
  start_kwok
  start_argo
  # A namespace is usable for pods once the ServiceAccount controller made its `default` SA.
  wait_for "ServiceAccount default/default" 60 kube-controller-manager \
    kubectl get serviceaccount default --namespace=default
  if [[ "${MLOPS_REALNODE:-0}" == 1 ]]; then
    "${CLUSTER_HACK_DIR}/node-up.sh" >&2
  fi
  trap - EXIT
  log "cluster up in $((SECONDS - start_s)) s (Kubernetes ${K8S_VERSION}, etcd ${ETCD_VERSION}, kwok ${KWOK_VERSION}, Argo ${ARGO_VERSION})"
  log "  export KUBECONFIG=${KUBECONFIG_ADMIN}   # admin (system:masters)"
  log "  non-admin user ${MLOPS_USER_NAME}: ${KUBECONFIG_USER}"
  log "  binaries (kubectl, helm, ...): ${BIN}   # or: eval \"\$(hack/cluster/env.sh)\""
  echo "${KUBECONFIG_ADMIN}"
}

main "$@"
