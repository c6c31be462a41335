#!/usr/bin/env bash
# Puts images into the real node's containerd (node-up.sh), as a registry pull would: builds each
# with hack/images/ocibuild.py (cached by content hash), skips an image the node already has,
# and leaves out of the import every layer blob the node's content store already holds, so that
# after a code change only the project's own small layer travels.
# Usage: hack/cluster/node-load.sh IMAGE...    (pause, argoexec, operator, trainer)
# Prints "IMAGE REF" per image on stdout.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ctr_() { ctr --address "${NODE_SOCK}" --namespace k8s.io "$@"; }

[[ -S "${NODE_SOCK}" ]] || die "no real node's containerd at ${NODE_SOCK} (hack/cluster/node-up.sh)"
ocibuild="${REPO_ROOT}/hack/images/ocibuild.py"
built="$("${ocibuild}" build "$@")"
tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT
while read -r name ref; do
  [[ -n "${name}" ]] || continue
  if ctr_ images ls -q "name==${ref}" | grep -qx "${ref}"; then
    log "${ref}: already on ${NODE_NAME}"
  else
    start=${SECONDS}
    ctr_ content ls -q >"${tmp}/digests"
    "${ocibuild}" archive "${name}" --omit "${tmp}/digests" | ctr_ images import - >/dev/null
    ctr_ images ls -q "name==${ref}" | grep -qx "${ref}" ||
      die "${ref}: ctr imported the archive but no image of that name exists"
    log "${ref}: imported into ${NODE_NAME} in $((SECONDS - start)) s"
    # Older builds of the same image go (containerd's root is kept across nodes); containerd
    # garbage-collects the layers only they used.
    mapfile -t older < <(ctr_ images ls -q | grep "^${ref%:*}:" | grep -vx "${ref}" || true)
    ((${#older[@]} == 0)) || ctr_ images rm "${older[@]}" >/dev/null
  fi
  echo "${name} ${ref}"
done <<<"${built}"
