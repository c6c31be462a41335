#!/usr/bin/env bash
# Build images/operator and images/trainer for real where no Docker registry can be reached (only
# PyPI and Debian's mirror), then smoke-test them. Idempotent; run as root from anywhere:
#
#   hack/images/build-local.sh                 # daemon (if none) + base (if missing) + build + smoke
#   VARIANTS="cpu gpu" hack/images/build-local.sh   # the GPU trainer too (~3 GB of CUDA wheels)
#   hack/images/build-local.sh smoke           # only some steps: base, build, smoke, sizes
#   REBUILD_BASE=1 hack/images/build-local.sh  # debootstrap the base again
#
# 1. Docker daemon: uses a running one; else installs Debian's docker.io (if missing) and starts
#    dockerd itself, sandbox-friendly (no iptables, no default bridge: builds and runs use
#    --network host or none), and stops it by its PID on exit (KEEP_DAEMON=1 leaves it running).
# 2. Base image without pulling: debootstrap a minimal bookworm with Debian's python3.11 + venv
#    and `docker import` it as $BASE (the official python:3.11.x-slim-bookworm is the same Debian
#    release with a python built from source under /usr/local; the Dockerfiles work on both).
# 3. Builds mlops-operator:$TAG and mlops-trainer:$TAG-<variant> with --build-arg PYTHON_IMAGE=$BASE.
# 4. Smoke tests, as the chart runs them (uid 1000, read-only root, no capabilities, no network):
#    the operator's `kopf --version`, `import mlops_operator`, no TensorFlow; a tiny real VQ-VAE
#    training in the CPU trainer (`python -m mlops_trainers --config FILE`, the example's run file
#    with 1 epoch of 3 steps), output in a bind-mounted host folder, then a resume (exit 0).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${MLOPS_IMAGES_WORK:-/tmp/mlops-images}"
BASE="${BASE_IMAGE:-mlops-local/python:3.11-bookworm}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TAG="${TAG:-dev}"
VARIANTS="${VARIANTS:-cpu}"
KEEP_DAEMON="${KEEP_DAEMON:-0}"
STEPS="${*:-base build smoke sizes}"
DOCKERD_PID=""

log() { printf '\n==> %s\n' "$*" >&2; }
has_step() { [[ " $STEPS " == *" $1 "* ]]; }

apt_install() {
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

docker_ok() { docker info >/dev/null 2>&1; }

stop_daemon() {
  if [[ -n "$DOCKERD_PID" && "$KEEP_DAEMON" != 1 ]] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    log "stopping dockerd (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID"
    local pid=$DOCKERD_PID
    DOCKERD_PID=""
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
    echo "dockerd $pid did not stop in 30 s" >&2
  fi
}

ensure_daemon() {
  mkdir -p "$WORK"
  if docker_ok; then log "using the running Docker daemon"; return; fi
  command -v dockerd >/dev/null || apt_install docker.io
  log "starting dockerd (log: $WORK/dockerd.log)"
  dockerd --iptables=false --ip6tables=false --bridge=none --pidfile="$WORK/dockerd.pid" \
    >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  trap stop_daemon EXIT
  for _ in $(seq 60); do
    docker_ok && { log "dockerd is up (pid $DOCKERD_PID)"; return; }
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log" >&2; exit 1; }
    sleep 1
  done
  tail -20 "$WORK/dockerd.log" >&2
  echo "dockerd did not answer in 60 s" >&2
  exit 1
}

make_base() {
  if [[ "${REBUILD_BASE:-0}" = 1 ]]; then docker rmi "$BASE" >/dev/null 2>&1 || true; fi
  if docker image inspect "$BASE" >/dev/null 2>&1; then log "base $BASE exists"; return; fi
  command -v debootstrap >/dev/null || apt_install debootstrap
  local rootfs="$WORK/rootfs" start=$SECONDS
  rm -rf "$rootfs"
  log "debootstrap $SUITE (minbase + python3.11, venv) from $MIRROR"
  # python3-distutils: python3.11-venv depends on it, and debootstrap does not resolve --include.
  debootstrap --variant=minbase \
    --include=python3.11,python3.11-venv,python3-distutils,ca-certificates \
    "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
  # This machine's own extra CAs (/usr/local/share/ca-certificates: e.g. a TLS-inspecting egress
  # proxy in front of PyPI) go into the local base, and pip is told to use the system store (its
  # own certifi bundle lacks them). Only in this local base; an official base needs neither.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    log "adding this machine's extra CAs to the base:" /usr/local/share/ca-certificates/*.crt
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
  fi
  # Slim, like the official slim images: no package lists, caches, docs or man pages.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  log "docker import -> $BASE"
  tar -C "$rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . \
    | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' \
        -m "debootstrap --variant=minbase $SUITE + python3.11, python3.11-venv" - "$BASE" >/dev/null
  rm -rf "$rootfs"
  log "base built in $((SECONDS - start)) s"
}

build_images() {
  local start
  cd "$ROOT"
  start=$SECONDS
  log "build mlops-operator:$TAG"
  docker build --network host --build-arg PYTHON_IMAGE="$BASE" \
    -f images/operator/Dockerfile -t "mlops-operator:$TAG" .
  log "mlops-operator:$TAG built in $((SECONDS - start)) s"
  for variant in $VARIANTS; do
    start=$SECONDS
    log "build mlops-trainer:$TAG-$variant"
    docker build --network host --build-arg PYTHON_IMAGE="$BASE" --build-arg VARIANT="$variant" \
      -f images/trainer/Dockerfile -t "mlops-trainer:$TAG-$variant" .
    log "mlops-trainer:$TAG-$variant built in $((SECONDS - start)) s"
  done
}

# As the chart runs them: uid from the image, read-only root, no capabilities, no network.
RUN_SAFE=(docker run --rm --network none --read-only --cap-drop ALL
  --security-opt no-new-privileges)

smoke_operator() {
  local image="mlops-operator:$TAG"
  log "smoke: $image"
  "${RUN_SAFE[@]}" "$image" --version
  "${RUN_SAFE[@]}" --entrypoint python "$image" -c '
import importlib.util, os
import kopf, mlops_operator, mlops_workflows, mlops_trainers.config
assert os.getuid() == 1000 and os.getgid() == 1000, (os.getuid(), os.getgid())
# No Kubernetes client either: the operator makes its calls itself (mlops_operator.kube).
for absent in ("tensorflow", "keras", "kubernetes"):
    assert importlib.util.find_spec(absent) is None, absent + " is installed"
import mlops_operator.handlers
print("operator image: uid", os.getuid(), "| mlops_operator imports | no tensorflow, keras, kubernetes")'
}

smoke_trainer() {
  local image="mlops-trainer:$TAG-cpu" runs="$WORK/smoke-runs" start rc
  log "smoke: $image"
  rm -rf "$runs"
  mkdir -p "$runs"
  chown 1000:1000 "$runs"
  # The run file a pod gets: the example's ConfigMap, validated and rendered by the operator
  # image (it has hera; the trainer image has not), made tiny (1 epoch of 3 steps) and pointed at
  # the bind-mounted folder instead of the bucket.
  "${RUN_SAFE[@]}" -v "$ROOT/examples:/examples:ro" -v "$runs:/runs" \
    --entrypoint python "mlops-operator:$TAG" -c '
import subprocess, yaml
subprocess.run(["mlops", "validate", "/examples/vqvae.yaml"], check=True)
docs = list(yaml.safe_load_all(subprocess.run(["mlops", "render", "/examples/vqvae.yaml"],
                                              check=True, capture_output=True, text=True).stdout))
run = yaml.safe_load(docs[0]["data"]["run.yaml"])
run["output_prefix"] = "/runs"
run["output"] = "/runs/" + run["run_id"]
run["epochs"] = 1
run["checkpoint_every"] = 2
run["trainer"]["config"].update(steps_per_epoch=3, reconstructions=4)
with open("/runs/run.yaml", "w") as f:
    yaml.safe_dump(run, f)
print("wrote /runs/run.yaml for", run["run_id"])'
  "${RUN_SAFE[@]}" --tmpfs /tmp --entrypoint python "$image" -c '
import os, keras, tensorflow as tf, mlops_trainers.config
assert os.getuid() == 1000 and os.getgid() == 1000, (os.getuid(), os.getgid())
print("trainer image: uid", os.getuid(), "| keras", keras.__version__, "| tensorflow", tf.__version__,
      "| backend", keras.backend.backend())'
  start=$SECONDS
  "${RUN_SAFE[@]}" --tmpfs /tmp -v "$runs:/runs" "$image" --config /runs/run.yaml
  log "trainer run: exit 0 in $((SECONDS - start)) s; outputs:"
  (cd "$runs" && find . -type f | sort | head -40)
  test -n "$(find "$runs" -name run.json)" && test -n "$(find "$runs" -name metrics.csv)"
  test -n "$(find "$runs" -name '*.keras')"
  test -z "$(find "$runs" ! -uid 1000)"  # written as uid 1000
  log "trainer resume: the same run file again"
  start=$SECONDS
  rc=0
  "${RUN_SAFE[@]}" --tmpfs /tmp -v "$runs:/runs" "$image" --config /runs/run.yaml || rc=$?
  log "trainer resume: exit $rc in $((SECONDS - start)) s"
  test "$rc" = 0
}

# No GPU here: only that TensorFlow built with CUDA imports and finds its CUDA wheels' libraries.
smoke_trainer_gpu() {
  local image="mlops-trainer:$TAG-gpu"
  log "smoke: $image (no GPU on this machine: import and build info only)"
  "${RUN_SAFE[@]}" --tmpfs /tmp --entrypoint python "$image" -c '
import importlib.metadata, os, keras, tensorflow as tf
assert os.getuid() == 1000
info = tf.sysconfig.get_build_info()
assert tf.test.is_built_with_cuda(), "tensorflow without CUDA (tensorflow-cpu over it?)"
try:
    importlib.metadata.version("tensorflow-cpu")
    raise SystemExit("tensorflow-cpu is installed next to tensorflow[and-cuda]")
except importlib.metadata.PackageNotFoundError:
    pass
print("trainer gpu image: uid", os.getuid(), "| keras", keras.__version__, "| tensorflow", tf.__version__,
      "| built with CUDA", tf.test.is_built_with_cuda(), info.get("cuda_version"), "cuDNN",
      info.get("cudnn_version"), "| GPUs visible:", tf.config.list_physical_devices("GPU"))'
}

sizes() {
  log "sizes"
  docker images --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' \
    | grep -E '^(mlops-operator|mlops-trainer|mlops-local/python):' | sort
}

total=$SECONDS
ensure_daemon
has_step base && make_base
has_step build && build_images
if has_step smoke; then
  smoke_operator
  [[ " $VARIANTS " == *" cpu "* ]] || docker image inspect "mlops-trainer:$TAG-cpu" >/dev/null 2>&1 \
    && smoke_trainer
  if docker image inspect "mlops-trainer:$TAG-gpu" >/dev/null 2>&1; then smoke_trainer_gpu; fi
fi
has_step sizes && sizes
log "done in $((SECONDS - total)) s"
