#!/usr/bin/env bash
# Adds a real node to the running local cluster (up.sh first; `MLOPS_REALNODE=1 up.sh` does both):
# kubelet 1.36 + containerd + runc as plain processes beside the kwok nodes, so that pods really
# run: images from hack/images/ocibuild.py imported into its containerd (no registry), pods on a
# Linux bridge of our own.
#
#   kubelet ──CRI──▶ containerd ──▶ runc        (one private mount namespace: node-ns.sh)
#      │                 └─ CNI bridge ${MLOPS_NODE_BRIDGE}: node ${NODE_IP}/24, pods .10-.250
#      └─ registers node ${NODE_NAME}, tainted ${NODE_TAINT}, labelled ${NODE_LABEL_KEY}=true
#
# What pods can reach (and nothing else: they get no default route):
#   ${NODE_IP}                 the host, on our bridge (tests serve the GCS emulator there)
#   ${KUBERNETES_SERVICE_IP}:443   the `kubernetes` Service's ClusterIP, which in-cluster clients
#                              (the operator, Argo's executor) dial: socat there forwards to the
#                              API server on 127.0.0.1. kube-proxy would do this with host-wide
#                              iptables rules that a second cluster on the machine would fight
#                              over; one address on our own bridge and a proxy do not.
# Idempotent. Progress on stderr; stops what it started when it fails.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGES="${REPO_ROOT}/hack/images"
CGROUP_NAME="mlops-$(echo -n "${STATE}" | sha256sum | cut -c1-10)"

ctr_() { ctr --address "${NODE_SOCK}" --namespace k8s.io "$@"; }

# The workflow-controller puts ARGO_EXECUTOR_IMAGE into every pod; a cluster started by an
# older checkout may name another argoexec than the one this node gets.
check_executor_image() {
  local pid cmdline
  pid="$(our_pid workflow-controller)" || die "workflow-controller is not running"
  cmdline="$(tr '\0' ' ' <"/proc/${pid}/cmdline")"
  [[ "${cmdline}" == *"--executor-image=${ARGO_EXECUTOR_IMAGE} "* ]] ||
    die "the running workflow-controller was started with another executor image than ${ARGO_EXECUTOR_IMAGE} (a cluster of an older checkout?): restart the cluster (hack/cluster/down.sh; MLOPS_REALNODE=1 hack/cluster/up.sh)"
}

check_free() {
  local var
  for var in MLOPS_KUBELET_PORT MLOPS_KUBELET_HEALTHZ_PORT; do
    port_free "${!var}" || die "port ${!var} is in use; pick another with ${var}=..."
  done
  if ip link show "${MLOPS_NODE_BRIDGE}" >/dev/null 2>&1; then
    die "interface ${MLOPS_NODE_BRIDGE} exists already (another cluster's node?); pick another with MLOPS_NODE_BRIDGE=..."
  fi
  local ip
  for ip in "${NODE_IP}" "${KUBERNETES_SERVICE_IP}"; do
    if ip -4 -o addr show | grep -q " ${ip}/"; then
      die "${ip} is already an address of this host; pick another MLOPS_NODE_NET or MLOPS_SERVICE_CIDR"
    fi
  done
  # A nearly full disk makes the kubelet garbage-collect images, and ours cannot be pulled back
  # (no registry): pods then fail with "failed to get sandbox image" (a cold run beside a second
  # cache filled this machine's disk so). Refuse to start instead.
  local dir free_gib
  mkdir -p "${NODE_CONTAINERD_ROOT}"
  for dir in "${NODE_CONTAINERD_ROOT}" "${STATE}"; do
    free_gib=$(($(df -Pk "${dir}" | awk 'NR == 2 {print $4}') / 1024 / 1024))
    ((free_gib >= MLOPS_NODE_MIN_FREE_GIB)) ||
      die "only ${free_gib} GiB free under ${dir}; the real node needs ${MLOPS_NODE_MIN_FREE_GIB} (MLOPS_NODE_MIN_FREE_GIB): free some disk"
  done
  # Our /24 and the Service CIDR must not shadow a route the host already has (its own LAN).
  local cidr
  for cidr in "${MLOPS_NODE_NET}.0/24" "${MLOPS_SERVICE_CIDR}"; do
    if ip -4 route show match "${cidr%/*}" | grep -v '^default' | grep -q .; then
      die "${cidr} overlaps a route of this host ($(ip -4 route show match "${cidr%/*}" | grep -v '^default' | head -1))"
    fi
  done
}

make_network() {
  # Recorded first: node-down.sh deletes only a bridge this file names.
  echo "${MLOPS_NODE_BRIDGE}" >"${NODE_STATE}/bridge"
  ip link add "${MLOPS_NODE_BRIDGE}" type bridge
  ip addr add "${NODE_IP}/24" dev "${MLOPS_NODE_BRIDGE}"
  ip addr add "${KUBERNETES_SERVICE_IP}/32" dev "${MLOPS_NODE_BRIDGE}"
  ip link set "${MLOPS_NODE_BRIDGE}" up
  # The pods' network: CNI's bridge plugin, no gateway on the bridge (so it never turns on
  # ip_forward), no masquerading (no iptables): pods reach the host's addresses on the bridge
  # and, through the one route below, the Service's ClusterIP on it; nothing beyond.
  mkdir -p "${NODE_STATE}/cni"
  cat >"${NODE_STATE}/cni/10-mlops.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "${CGROUP_NAME}",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${MLOPS_NODE_BRIDGE}",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "${NODE_STATE}/cni-ipam",
        "ranges": [[{"subnet": "${MLOPS_NODE_NET}.0/24", "rangeStart": "${MLOPS_NODE_NET}.10",
                     "rangeEnd": "${MLOPS_NODE_NET}.250", "gateway": "${NODE_IP}"}]],
        "routes": [{"dst": "${MLOPS_SERVICE_CIDR}", "gw": "${NODE_IP}"}]
      }
    }
  ]
}
EOF
}

# The kernel tunables kubelet wants, as files node-ns.sh mounts over /proc/sys in the node's
# namespace (see there why); only those that differ from the host's values.
fake_sysctls() {
  mkdir -p "${NODE_STATE}/sysctl"
  local entry name want have
  for entry in vm.overcommit_memory=1 vm.panic_on_oom=0 kernel.panic=10 kernel.panic_on_oops=1 \
    kernel.keys.root_maxkeys=1000000 kernel.keys.root_maxbytes=25000000; do
    name="${entry%=*}"
    want="${entry#*=}"
    have="$(cat "/proc/sys/${name//.//}")"
    [[ "${have}" == "${want}" ]] || echo "${want}" >"${NODE_STATE}/sysctl/${name}"
  done
}

# cgroup v1 (this machine): kubelet's cgroupRoot must exist in every hierarchy it uses. Ours,
# not /: kubelet then keeps kubepods/ under it and node-down.sh removes the whole subtree.
make_cgroups() {
  local dir
  for dir in /sys/fs/cgroup/*/; do
    [[ -e "${dir}cgroup.procs" && "${dir}" != /sys/fs/cgroup/unified/ ]] || continue
    mkdir -p "${dir}${CGROUP_NAME}"
    if [[ -e "${dir}cpuset.cpus" ]]; then
      # A new cpuset has no CPUs and no memory nodes until given its parent's.
      cat "${dir}cpuset.cpus" >"${dir}${CGROUP_NAME}/cpuset.cpus"
      cat "${dir}cpuset.mems" >"${dir}${CGROUP_NAME}/cpuset.mems"
    fi
  done
  echo "${CGROUP_NAME}" >"${NODE_STATE}/cgroup"
}

write_containerd_config() {
  local pause="$1"
  mkdir -p "${NODE_STATE}/containerd" "${NODE_CONTAINERD_ROOT}"
  cat >"${NODE_STATE}/containerd.toml" <<EOF
# Debian's containerd 1.6 for the real node (config version 2 = containerd 1.x).
version = 2
root = "${NODE_CONTAINERD_ROOT}"
state = "${NODE_STATE}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "${NODE_SOCK}"
[ttrpc]
  address = "${NODE_SOCK}.ttrpc"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "${NODE_STATE}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # Built and imported locally (hack/images/ocibuild.py): nothing is ever pulled.
  sandbox_image = "${pause}"
  # root here lacks CAP_SYS_RESOURCE: runc could not lower a container's oom_score_adj below
  # containerd's own and fails ("can't get final child's PID from pipe") unless clamped.
  restrict_oom_score_adj = true
  disable_apparmor = true
  # exec/attach/port-forward streams, proxied by kubelet: loopback, any free port.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        # cgroup v1 with the cgroupfs driver, as kubelet's config says (no systemd here).
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${NODE_STATE}/cni"
    max_conf_num = 1
EOF
}

write_kubelet_config() {
  mkdir -p "${NODE_STATE}/kubelet" "${NODE_STATE}/pod-logs"
  # No nameserver: pods resolve nothing beyond /etc/hosts (they reach only IPs of ours anyway).
  echo "options ndots:1" >"${NODE_STATE}/resolv.conf"
  local ca
  ca="$(base64 -w0 <"${PKI}/ca.crt")"
  cat >"${NODE_STATE}/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mlops-local
  cluster: {server: "${APISERVER_URL}", certificate-authority-data: ${ca}}
users:
- name: system:node:${NODE_NAME}
  user: {token: $(<"${STATE}/node.token")}
contexts:
- name: node
  context: {cluster: mlops-local, user: "system:node:${NODE_NAME}"}
current-context: node
EOF
  chmod 600 "${NODE_STATE}/kubelet.kubeconfig"
  cat >"${NODE_STATE}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: ${MLOPS_KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${MLOPS_KUBELET_HEALTHZ_PORT}
# The API server authenticates with its client certificate (our CA); authorization by webhook.
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${PKI}/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://${NODE_SOCK}
# This machine: cgroup v1 (kubelet >= 1.35 refuses it unless told), no systemd, no swap.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /${CGROUP_NAME}
failSwapOn: false
# root lacks CAP_SYS_RESOURCE: kubelet cannot lower its own oom_score_adj to -999.
oomScoreAdj: 0
podLogsDir: ${NODE_STATE}/pod-logs
resolvConf: ${NODE_STATE}/resolv.conf
clusterDomain: cluster.local
volumePluginDir: ${NODE_STATE}/kubelet/volume-plugins
registerWithTaints:
- {key: ${NODE_LABEL_KEY}, value: "true", effect: NoSchedule}
# A shared machine: never evict the tests' pods for disk the rest of the machine uses, never
# garbage-collect the locally imported images (nothing could pull them back).
evictionHard: {memory.available: 100Mi, nodefs.available: 256Mi, imagefs.available: 256Mi, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
}

# load_images IMAGE...: build (cached) and import into the node's containerd what it lacks.
load_images() {
  "${CLUSTER_HACK_DIR}/node-load.sh" "$@" >/dev/null
}

on_exit() {
  local rc=$?
  ((rc == 0)) && return 0
  log "node-up failed (exit ${rc}); logs are in ${LOGS}"
  if [[ "${MLOPS_CLUSTER_KEEP_ON_FAILURE:-0}" != 1 ]]; then
    rm -rf "${STATE}.failed-node-logs"
    cp -r "${LOGS}" "${STATE}.failed-node-logs" 2>/dev/null || true
    "${CLUSTER_HACK_DIR}/node-down.sh" >&2 || true
    log "logs kept in ${STATE}.failed-node-logs"
  fi
  exit "${rc}"
}

main() {
  cluster_up || die "the cluster of ${STATE} is not up: run hack/cluster/up.sh first"
  if node_up; then
    log "real node ${NODE_NAME} already up"
    return 0
  fi
  if [[ -e "${NODE_STATE}" ]]; then
    log "${NODE_STATE} holds a node that is not (fully) running: cleaning it up first"
    "${CLUSTER_HACK_DIR}/node-down.sh" >&2
  fi
  local start_s=${SECONDS} bin
  bin="$("${CLUSTER_HACK_DIR}/build.sh" --node)"
  export PATH="${CLUSTER_BIN_DIR}:${PATH}"
  export KUBECONFIG="${KUBECONFIG_ADMIN}"
  check_executor_image
  check_free
  mkdir -p "${NODE_STATE}"
  trap on_exit EXIT
  local pause
  pause="$("${IMAGES}/ocibuild.py" build pause argoexec | awk '$1 == "pause" {print $2}')"
  make_network
  fake_sysctls
  make_cgroups
  write_containerd_config "${pause}"
  write_kubelet_config

  start kube-svc-proxy socat -lf "${LOGS}/kube-svc-proxy.socat.log" \
    "TCP-LISTEN:443,bind=${KUBERNETES_SERVICE_IP},fork,reuseaddr" \
    "TCP:127.0.0.1:${MLOPS_APISERVER_PORT}"
  # HTTPS_PROXY/HTTP_PROXY on a closed loopback port: a pull (an image that was not imported,
  # a typo) fails at once, without a DNS lookup or a connection beyond this machine.
  start containerd env PATH=/usr/sbin:/usr/bin:/sbin:/bin NO_PROXY= no_proxy= \
    HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 \
    unshare --mount --propagation private -- "${CLUSTER_HACK_DIR}/node-ns.sh" "${NODE_STATE}" \
    containerd --config "${NODE_STATE}/containerd.toml" --log-level warn
  wait_for "containerd" 60 containerd ctr_ version
  # Containers of an earlier node of this cluster that did not stop cleanly (its root is kept):
  # their pods are gone; only the images may stay.
  local stale
  mapfile -t stale < <(ctr_ containers ls -q)
  if ((${#stale[@]} > 0)); then
    log "removing ${#stale[@]} containers left by an earlier node"
    ctr_ containers rm "${stale[@]}" >/dev/null
  fi
  load_images pause argoexec
  # kubelet joins containerd's mount namespace (the pods' volumes are mounted there). Its PATH
  # has no sbin: kubelet would otherwise find iptables and install its KUBE-FIREWALL rules
  # host-wide; nothing here needs them (no kube-proxy, no NodePorts).
  start kubelet nsenter --mount="/proc/$(our_pid containerd)/ns/mnt" -- \
    env PATH=/usr/local/bin:/usr/bin:/bin "${bin}/kubelet" \
    --config="${NODE_STATE}/kubelet.yaml" \
    --kubeconfig="${NODE_STATE}/kubelet.kubeconfig" \
    --root-dir="${NODE_STATE}/kubelet" \
    --hostname-override="${NODE_NAME}" \
    --node-ip="${NODE_IP}" \
    --node-labels="${NODE_LABEL_KEY}=true" \
    --v=1
  # kubelet checks containerd's CRI once, as it starts, and exits if the CRI is not serving yet.
  # `ctr version` above only shows containerd's gRPC socket answering; its CRI plugin recovers
  # its state after that (a CI run with the machine busy saw kubelet exit 14 s after containerd
  # started: "server is not initialized yet"). Then kubelet is started again.
  wait_for_restarting "kubelet healthz" 120 kubelet "server is not initialized yet" \
    curl -sf --max-time 2 "http://127.0.0.1:${MLOPS_KUBELET_HEALTHZ_PORT}/healthz"
  wait_for "node ${NODE_NAME} Ready" 180 kubelet \
    kubectl wait --for=condition=Ready "node/${NODE_NAME}" --timeout=2s
  trap - EXIT
  log "real node ${NODE_NAME} up in $((SECONDS - start_s)) s (${NODE_IP}, pods ${MLOPS_NODE_NET}.10-250, taint ${NODE_TAINT})"
}

main "$@"
