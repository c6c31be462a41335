#!/usr/bin/env bash
# Points a shell at the local test cluster: KUBECONFIG (admin), MLOPS_KUBECONFIG_USER (the
# non-admin user) and PATH with the cached binaries (kubectl, helm, ..., and argo once
# argo-server-up.sh or build.sh --ui built it).
#   eval "$(hack/cluster/env.sh)"    prints export lines (works from any shell)
#   source hack/cluster/env.sh       exports them into the current bash
# It does not start or build anything (up.sh does); the paths exist once `up.sh` has run.

_mlops_env_lines() {
  # shellcheck source-path=SCRIPTDIR source=lib.sh
  source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
  printf 'export KUBECONFIG=%q\n' "${KUBECONFIG_ADMIN}"
  printf 'export MLOPS_KUBECONFIG_USER=%q\n' "${KUBECONFIG_USER}"
  printf 'export MLOPS_CLUSTER_BIN=%q\n' "${CLUSTER_BIN_DIR}"
  # shellcheck disable=SC2016  # ${PATH} is for the shell that evals these lines
  printf 'export PATH=%q:%q:"${PATH}"\n' "${CLUSTER_BIN_DIR}" "${ARGOCLI_BIN_DIR}"
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  # Sourced: no `set -e` here, it would stay on in the caller's shell. lib.sh is read in a
  # subshell so its helper functions and variables do not leak either.
  eval "$(_mlops_env_lines)"
  unset -f _mlops_env_lines
else
  set -euo pipefail
  _mlops_env_lines
fi
