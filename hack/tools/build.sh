#!/usr/bin/env bash
# Builds, once, a Go tool the tests run, pinned by its own module under hack/tools/<name>/
# (go.mod + go.sum committed, tools.go naming the package), into the cache the local cluster's
# binaries use (hack/cluster/lib.sh): ${MLOPS_CACHE}/bin/<name>-<version>-<hash of the module>/.
# A version bump or a changed go.sum builds a new folder; an unchanged one returns at once.
# Nothing but the Go module proxy is needed.
# Usage: hack/tools/build.sh kube-score     (prints the folder holding the binary on stdout)
set -euo pipefail
TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# MLOPS_CACHE, _key, mod_version, log, die: the cluster's build settings, shared, not copied.
# shellcheck source-path=SCRIPTDIR source=../cluster/lib.sh
source "${TOOLS_DIR}/../cluster/lib.sh"
log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

name="${1:?usage: hack/tools/build.sh TOOL (a folder of hack/tools)}"
moddir="${TOOLS_DIR}/${name}"
[[ -f "${moddir}/go.mod" && -f "${moddir}/tools.go" ]] || die "no Go module for ${name} in ${moddir}"
# The one package tools.go imports, e.g. github.com/zegl/kube-score/cmd/kube-score.
pkg="$(sed -n 's/^import _ "\(.*\)"$/\1/p' "${moddir}/tools.go")"
[[ -n "${pkg}" ]] || die "${moddir}/tools.go imports no package"
module="$(awk '$1 == "require" && $2 !~ /^\(/ { print $2; exit }' "${moddir}/go.mod")"
version="$(mod_version "${moddir}/go.mod" "${module}")"
[[ -n "${version}" ]] || die "${moddir}/go.mod requires no version of ${module}"
# `<tool> version` then names the pinned version instead of "development" (kube-score's main.version).
ldflags="-s -w -X main.version=${version}"
out="${MLOPS_CACHE}/bin/${name}-${version}-$(_key "${ldflags}" "${moddir}"/{go.mod,go.sum,tools.go})"

if [[ ! -x "${out}/${name}" ]]; then
  command -v go >/dev/null 2>&1 || die "go is not installed (need Go >= 1.21) to build ${name} ${version}"
  mkdir -p "${MLOPS_CACHE}/bin"
  # Two test sessions building at once would just double the work.
  exec 9>"${MLOPS_CACHE}/tool-${name}.lock"
  flock 9
  if [[ ! -x "${out}/${name}" ]]; then
    tmp="${out}.tmp.$$"
    rm -rf "${tmp}"
    mkdir -p "${tmp}"
    log "${name} ${version}: building from the Go module proxy (2-4 min on 2 cores, once)"
    start=${SECONDS}
    (
      cd "${moddir}"
      # Same settings as hack/cluster/build.sh: go.sum decides every dependency, static binary.
      export GOMODCACHE="${MLOPS_CACHE}/gomodcache" GOCACHE="${MLOPS_CACHE}/gocache"
      export GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0
      nice -n 10 go build -ldflags "${ldflags}" -o "${tmp}/${name}" "${pkg}"
    ) || die "${name}: go build of ${pkg}@${version} failed (see above)"
    mv "${tmp}" "${out}"
    log "${name} ${version}: built in $((SECONDS - start)) s: ${out}"
  fi
fi
echo "${out}"
