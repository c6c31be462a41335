#!/usr/bin/env bash
# What the operator image's venv holds at a commit: `pip install -c constraints.txt ".[operator]"`
# (the Dockerfile's own install) into a fresh venv, then its size, whether the Kubernetes client
# is in it, and the peak RSS of importing the operator there. Needs PyPI.
#   hack/operator-venv.sh [REV...]   (default: HEAD; the working tree with "--worktree")
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
python=${PYTHON:-python3.11}
scratch=$(mktemp -d /tmp/operator-venv.XXXX)
trap 'rm -rf "$scratch"' EXIT
[ $# -gt 0 ] || set -- HEAD
for rev in "$@"; do
  src="$scratch/src-${rev//\//_}"
  mkdir -p "$src"
  if [ "$rev" = --worktree ]; then
    (cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$src")
  else
    git -C "$repo" archive "$rev" | tar -x -C "$src"
  fi
  venv="$scratch/venv-${rev//\//_}"
  "$python" -m venv "$venv"
  (cd "$src" && "$venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check \
    -c constraints.txt ".[operator]")
  client=$("$venv/bin/python" -c 'import importlib.util as u; print(u.find_spec("kubernetes") is not None)')
  rss_kib=$("$venv/bin/python" -c "import mlops_operator.handlers, pathlib
print(next(l.split()[1] for l in pathlib.Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM:')))")
  echo "$rev: venv $(du -sm "$venv" | cut -f1) MiB, kubernetes installed: $client, import mlops_operator.handlers: peak RSS $((rss_kib / 1024)) MiB"
done
