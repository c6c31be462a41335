#!/usr/bin/env python3
"""Builds the real node's images without a Docker daemon or a registry, cached by content hash.

    hack/images/ocibuild.py build IMAGE...      build (or find in the cache); prints "IMAGE REF"
    hack/images/ocibuild.py ref IMAGE...        the refs the images have, without building them
    hack/images/ocibuild.py archive IMAGE [--omit DIGESTS_FILE]
                                                an OCI archive of a built image on stdout, for
                                                `ctr images import -`; blobs listed in
                                                DIGESTS_FILE (already in the node's content store)
                                                are left out

IMAGE is one of:
  pause     the pod sandbox process (hack/images/pause, Go), one layer
  argoexec  Argo's executor, built by hack/cluster/build.sh --node from the same Argo module
            version as the workflow-controller, laid out like Argo's own image
  operator  images/operator/Dockerfile's recipe: debootstrapped bookworm + Debian's python3.11,
            /opt/venv with the operator extra's pinned dependencies, the project, `kopf run ...`
  trainer   images/trainer/Dockerfile's CPU recipe: /opt/venv with tensorflow-cpu and the
            trainer-core/export/render extras, the project, `python -m mlops_trainers`

Why not `docker build`: a Dockerfile's final `COPY --from=build /opt/venv` is one layer, so a
one-line code change re-ships the whole ~1.5 GB venv to the node; and Docker is one more daemon.
Here every image is a stack of layers, each a plain tar cached under
$MLOPS_CACHE/images/layers/ by a hash of exactly what decides its content:

  base    suite + packages + this machine's extra CAs      (debootstrap, minutes, once)
  deps-X  base + constraints.txt + the extra's requirement list   (pip in a chroot, minutes)
  app     deps-X + the project's files                      (pip install --no-deps, seconds)

so a code change rebuilds only `app` (a few hundred KB). Layers are uncompressed tars (OCI
media type ...layer.v1.tar): nothing is pulled over a network, gzip would only cost CPU. Each
chroot step runs in a private mount namespace (unshare -m) with the lower layers mounted as
overlayfs, so exactly what the step wrote becomes the next layer, and nothing stays mounted on
the host after a failure. Tags are the image's content key: `docker.io/local/<image>:<key>`.

Runs as root (debootstrap, chroot, mounts). Standard library only; Python >= 3.11.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MLOPS_CACHE", Path.home() / ".cache" / "mlops-operator")) / "images"
LAYERS = CACHE / "layers"
ROOTFS = CACHE / "rootfs"
IMAGES = CACHE / "oci"
WORK = CACHE / "work"
PIP_CACHE = CACHE / "pip-cache"
REGISTRY = "docker.io/local"

# Bump when this script changes what a layer contains, so cached layers are rebuilt.
REVISION = "2"

SUITE = "bookworm"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# As hack/images/build-local.sh: Debian's python3.11 with venv; python3-distutils because
# python3.11-venv depends on it and debootstrap does not resolve --include.
BASE_PACKAGES = ("python3.11", "python3.11-venv", "python3-distutils", "ca-certificates")
EXTRA_CAS = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))

# The project's files that go into its wheel (pyproject's packages.find `where` folders).
PROJECT_FILES = ("pyproject.toml", "README.md")
PROJECT_DIRS = ("api", "trainers", "workflows", "operator", "cli")

LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA = "application/vnd.oci.image.index.v1+json"

VENV_ENV = (
    "PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "PYTHONUNBUFFERED=1",
    "PYTHONDONTWRITEBYTECODE=1",
)


def log(message: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sha256_text(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def run(cmd: Sequence[str], **kwargs: object) -> None:
    subprocess.run(list(cmd), check=True, **kwargs)  # type: ignore[call-overload]


# === Layers ===


@dataclass(frozen=True)
class Layer:
    """A cached layer tar and its digest (uncompressed: digest == diff id)."""

    name: str
    key: str

    @property
    def path(self) -> Path:
        return LAYERS / f"{self.name}-{self.key}.tar"

    @property
    def meta(self) -> Path:
        return LAYERS / f"{self.name}-{self.key}.json"

    def exists(self) -> bool:
        return self.path.is_file() and self.meta.is_file()

    def descriptor(self) -> dict[str, object]:
        return dict(json.loads(self.meta.read_text()))

    def write_from(self, folder: Path, members: Sequence[str]) -> None:
        """Tar ``members`` (paths relative to ``folder``) into this layer, then hash it."""
        LAYERS.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tar.tmp")
        # --numeric-owner: ids as in the tree (root); --sort: the same tree gives the same tar.
        run(["tar", "-C", str(folder), "--numeric-owner", "--sort=name", "-cf", str(tmp), *members])
        h = hashlib.sha256()
        with tmp.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        size, digest = tmp.stat().st_size, f"sha256:{h.hexdigest()}"
        tmp.replace(self.path)
        self.meta.write_text(json.dumps({"mediaType": LAYER_MEDIA, "digest": digest, "size": size}))
        log(f"layer {self.name}: {size / 1e6:.1f} MB {digest[:19]}")


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    WORK.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=WORK))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def chroot_step(lowers: Sequence[Path], upper: Path, script: str, binds: dict[str, Path]) -> None:
    """Run ``script`` (bash) chrooted into overlay(lowers) with writes going to ``upper``.

    A private mount namespace holds every mount: they vanish with the process, even on failure.
    ``binds`` maps paths inside the chroot to host folders (the pip cache, the build context).
    """
    with workdir("step-") as tmp:
        merged, ovl_work = tmp / "merged", tmp / "ovl-work"
        merged.mkdir()
        ovl_work.mkdir()
        upper.mkdir(parents=True, exist_ok=True)
        lines = [
            "set -euo pipefail",
            f"mount -t overlay overlay -o lowerdir={':'.join(map(str, lowers))},"
            f"upperdir={upper},workdir={ovl_work} {merged}",
            f"mount -t proc proc {merged}/proc",
            f"mount --rbind /dev {merged}/dev",
            # Name resolution for pip: the host's resolver, never written into a layer.
            f"touch {merged}/etc/resolv.conf && mount --bind /etc/resolv.conf {merged}/etc/resolv.conf",
        ]
        for inside, host in binds.items():
            lines.append(f"mkdir -p {merged}{inside} && mount --bind {host} {merged}{inside}")
        lines.append(
            f"exec chroot {merged} /usr/bin/env -i HOME=/root LANG=C.UTF-8 "
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
            "PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off /bin/bash -euo pipefail -c "
            + shlex.quote(script)
        )
        run(["unshare", "--mount", "--propagation", "private", "bash", "-c", "\n".join(lines)])
    # Files the step deleted show up as overlay whiteouts (0/0 character devices); a layer made
    # of additions only has none, and we only ever add.
    for path in upper.rglob("*"):
        if path.is_char_device() and os.stat(path, follow_symlinks=False).st_rdev == 0:
            raise RuntimeError(f"{path}: the step deleted a file of a lower layer")


# --- base ---


def base_layer() -> Layer:
    key = sha256_text(
        REVISION, SUITE, MIRROR, *BASE_PACKAGES, *(p.read_bytes() for p in EXTRA_CAS)
    )[:12]
    return Layer("base", key)


def base_rootfs(layer: Layer) -> Path:
    """The unpacked base tree (the chroot steps' lowest overlay layer)."""
    return ROOTFS / f"base-{layer.key}"


def build_base() -> Layer:
    layer = base_layer()
    rootfs = base_rootfs(layer)
    if layer.exists() and (rootfs / "usr" / "bin" / "python3.11").exists():
        return layer
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is missing: apt-get install debootstrap")
    start = time.monotonic()
    ROOTFS.mkdir(parents=True, exist_ok=True)
    tmp = ROOTFS / f".base-{layer.key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"base: debootstrap --variant=minbase {SUITE} + {' '.join(BASE_PACKAGES)} from {MIRROR}")
    logfile = WORK / f"debootstrap-{layer.key}.log"
    WORK.mkdir(parents=True, exist_ok=True)
    with logfile.open("w") as out:
        proc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(tmp),
                MIRROR,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(
            f"debootstrap failed ({proc.returncode}):\n{logfile.read_text()[-3000:]}"
        )
    # This machine's extra CAs (e.g. a TLS-inspecting egress proxy in front of PyPI) go into the
    # local base, and pip uses the system store (its certifi bundle lacks them); as
    # hack/images/build-local.sh does. An official base needs neither.
    if EXTRA_CAS:
        for ca in EXTRA_CAS:
            shutil.copy(ca, tmp / "usr/local/share/ca-certificates" / ca.name)
        run(["chroot", str(tmp), "update-ca-certificates"], stdout=subprocess.DEVNULL)
        (tmp / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    # As the Dockerfiles' final stages: uid 1000 has a name (kopf's getpass.getuser() fails
    # without one). Here in the base, which both images share.
    run(["chroot", str(tmp), "groupadd", "--system", "--gid", "1000", "mlops"])
    useradd = "useradd --system --uid 1000 --gid 1000 --no-create-home --home-dir /tmp"
    run(["chroot", str(tmp), *useradd.split(), "--shell", "/usr/sbin/nologin", "mlops"])
    # Slim, like the official slim images: no package lists, caches, docs or man pages.
    for pattern in (
        "var/lib/apt/lists/*",
        "var/cache/apt/*",
        "var/log/*.log",
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
    ):
        for path in tmp.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    (tmp / "etc/resolv.conf").unlink(missing_ok=True)  # the kubelet mounts the pod's own
    (tmp / "opt").mkdir(exist_ok=True)
    # The kernel's filesystems are mounted there at run time: empty folders in the image.
    for empty in ("dev", "proc", "sys"):
        for child in (tmp / empty).iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    members = sorted(p.name for p in tmp.iterdir())
    layer.write_from(tmp, members)
    shutil.rmtree(rootfs, ignore_errors=True)
    tmp.replace(rootfs)
    log(f"base: built in {time.monotonic() - start:.0f} s")
    return layer


# --- dependencies and the project ---


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(extras: Sequence[str]) -> list[str]:
    """The project's dependencies with ``extras``, self-references (``mlops-operator[x]``)
    expanded, the project itself left out: what the deps layer installs."""
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    name = str(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in optional[extra]:
            if req.startswith(f"{name}["):
                todo.extend(x.strip() for x in req[len(name) + 1 : req.index("]")].split(","))
            else:
                out.append(req)
    return sorted(set(out))


@dataclass(frozen=True)
class PythonImage:
    name: str
    extras: tuple[str, ...]
    # Installed first, like the Dockerfile's first pip call (the trainer's TensorFlow wheel).
    first: tuple[str, ...]
    env: tuple[str, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    title: str


OPERATOR = PythonImage(
    name="mlops-operator",
    extras=("operator",),
    first=(),
    env=VENV_ENV,
    entrypoint=("kopf",),
    cmd=(
        "run",
        "--module=mlops_operator",
        "--standalone",
        "--all-namespaces",
        "--liveness=http://0.0.0.0:8080/healthz",
    ),
    title="mlops-operator",
)
TRAINER = PythonImage(
    name="mlops-trainer",
    extras=("trainer-core", "export", "render"),
    first=("tensorflow-cpu",),
    env=(
        *VENV_ENV,
        "KERAS_BACKEND=tensorflow",
        "HOME=/tmp",  # the pod's root filesystem is read-only and /tmp is an emptyDir
        "MPLCONFIGDIR=/tmp/matplotlib",
    ),
    entrypoint=("python", "-m", "mlops_trainers"),
    cmd=(),
    title="mlops-trainer",
)


def deps_layer(image: PythonImage) -> Layer:
    reqs = [*image.first, *requirements(image.extras)]
    constraints = (ROOT / "constraints.txt").read_bytes()
    return Layer(
        f"deps-{image.name}", sha256_text(REVISION, base_layer().key, constraints, *reqs)[:12]
    )


def project_files() -> list[Path]:
    """The files of the project's wheel: what the app layer's key hashes."""
    files = [ROOT / f for f in PROJECT_FILES]
    for folder in PROJECT_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            parts = path.relative_to(ROOT).parts
            skipped = any(p in ("__pycache__", "build") or p.endswith(".egg-info") for p in parts)
            if path.is_file() and not skipped and path.suffix not in (".pyc", ".pyo"):
                files.append(path)
    return files


def app_layer(image: PythonImage) -> Layer:
    h = hashlib.sha256(f"{REVISION}\0{deps_layer(image).key}\0".encode())
    for path in project_files():
        h.update(str(path.relative_to(ROOT)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return Layer(f"app-{image.name}", h.hexdigest()[:12])


def build_deps(image: PythonImage) -> Layer:
    layer = deps_layer(image)
    if layer.exists():
        return layer
    base = build_base()
    start = time.monotonic()
    reqs = [*image.first, *requirements(image.extras)]
    log(f"{image.name}: dependency layer (pip, pinned by constraints.txt): {' '.join(reqs)}")
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    with workdir(f"deps-{image.name}-") as tmp:
        context = tmp / "context"
        context.mkdir()
        shutil.copy(ROOT / "constraints.txt", context / "constraints.txt")
        upper = tmp / "upper"
        first = " ".join(shlex.quote(r) for r in image.first)
        rest = " ".join(shlex.quote(r) for r in requirements(image.extras))
        script = "python3 -m venv /opt/venv\n"
        if image.first:
            script += f"/opt/venv/bin/pip install -q -c /build/constraints.txt {first}\n"
        script += f"/opt/venv/bin/pip install -q -c /build/constraints.txt {rest}\n"
        chroot_step(
            [base_rootfs(base)],
            upper,
            script,
            {"/build": context, "/root/.cache/pip": PIP_CACHE},
        )
        layer.write_from(upper, ["opt/venv"])
        # The next step's lower layer.
        tree = ROOTFS / f"{layer.name}-{layer.key}"
        shutil.rmtree(tree, ignore_errors=True)
        (upper / "opt/venv").rename(_mkparent(tree / "opt/venv"))
    log(f"{image.name}: dependency layer built in {time.monotonic() - start:.0f} s")
    return layer


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def build_app(image: PythonImage) -> Layer:
    layer = app_layer(image)
    if layer.exists():
        return layer
    deps = build_deps(image)
    deps_tree = ROOTFS / f"{deps.name}-{deps.key}"
    if not (deps_tree / "opt/venv/bin/python").exists():
        # The layer is cached but its unpacked tree is gone: unpack it again.
        shutil.rmtree(deps_tree, ignore_errors=True)
        deps_tree.mkdir(parents=True)
        run(["tar", "-C", str(deps_tree), "--numeric-owner", "-xf", str(deps.path)])
    start = time.monotonic()
    with workdir(f"app-{image.name}-") as tmp:
        src = tmp / "src"
        for path in project_files():
            target = src / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        upper = tmp / "upper"
        # --no-deps: every dependency is in the layer below, pinned; --no-compile: the project's
        # own modules are a few hundred KB, compiled at import. A copy of src is built, so the
        # build's own files (build/, *.egg-info) stay out of the layer.
        script = (
            "cp -r /src /tmp/src\n"
            "/opt/venv/bin/pip install -q --no-deps --no-compile /tmp/src\n"
            "rm -rf /tmp/src\n"
        )
        chroot_step(
            [deps_tree, base_rootfs(base_layer())],
            upper,
            script,
            {"/src": src, "/root/.cache/pip": PIP_CACHE},
        )
        layer.write_from(upper, ["opt/venv"])
    log(f"{image.name}: project layer built in {time.monotonic() - start:.1f} s")
    return layer


# --- pause and argoexec ---


def pause_layer() -> Layer:
    src = ROOT / "hack/images/pause"
    key = sha256_text(REVISION, *(p.read_bytes() for p in sorted(src.glob("*"))))[:12]
    return Layer("pause", key)


def build_pause() -> Layer:
    layer = pause_layer()
    if layer.exists():
        return layer
    with workdir("pause-") as tmp:
        env = {
            **os.environ,
            "CGO_ENABLED": "0",
            "GOFLAGS": "-trimpath -buildvcs=false",
            "GOCACHE": str(CACHE.parent / "gocache"),
            "GOMODCACHE": str(CACHE.parent / "gomodcache"),
        }
        tree = tmp / "tree"
        tree.mkdir()
        run(
            ["go", "build", "-ldflags=-s -w", "-o", str(tree / "pause"), "."],
            cwd=ROOT / "hack/images/pause",
            env=env,
        )
        layer.write_from(tree, ["pause"])
    return layer


def _cluster_setting(name: str) -> str:
    """A variable of hack/cluster/lib.sh (one source of truth for paths and names)."""
    return subprocess.run(
        ["bash", "-c", f'source "{ROOT}/hack/cluster/lib.sh" && echo "${{{name}}}"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def argoexec_binary() -> Path:
    """argoexec as hack/cluster/build.sh --node builds it (its folder is keyed by its module)."""
    return Path(_cluster_setting("ARGOEXEC_BIN_DIR")) / "argoexec"


def argoexec_layer() -> Layer:
    # The binary's folder name carries Argo's version and the hash of its go.mod/go.sum/flags.
    return Layer("argoexec", sha256_text(REVISION, str(argoexec_binary().parent.name))[:12])


def build_argoexec() -> Layer:
    layer = argoexec_layer()
    if layer.exists():
        return layer
    binary = argoexec_binary()
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: run hack/cluster/build.sh --node first")
    with workdir("argoexec-") as tmp:
        tree = tmp / "tree"
        # As Argo's own image (distroless static + /bin/argoexec, user 8737, /home/argo); the
        # pod's securityContext (runAsUser 1000) decides the user it really runs as.
        (tree / "bin").mkdir(parents=True)
        shutil.copy(binary, tree / "bin/argoexec")
        (tree / "bin/argoexec").chmod(0o755)
        (tree / "etc").mkdir()
        (tree / "etc/passwd").write_text(
            "root:x:0:0:root:/root:/sbin/nologin\nargo:x:8737:8737:argo:/home/argo:/sbin/nologin\n"
        )
        (tree / "etc/group").write_text("root:x:0:\nargo:x:8737:\n")
        (tree / "etc/nsswitch.conf").write_text("hosts: files dns\n")
        (tree / "home/argo").mkdir(parents=True)
        os.chown(tree / "home/argo", 8737, 8737)
        (tree / "tmp").mkdir()
        (tree / "tmp").chmod(0o1777)
        layer.write_from(tree, ["bin", "etc", "home", "tmp"])
    return layer


# === Images ===


@dataclass(frozen=True)
class Image:
    name: str
    layers: tuple[Layer, ...]
    config: dict[str, object]
    # A ref fixed elsewhere (argoexec: the workflow-controller's --executor-image, lib.sh).
    fixed_ref: str | None = None

    @property
    def key(self) -> str:
        return sha256_text(
            REVISION, *(layer.key for layer in self.layers), json.dumps(self.config, sort_keys=True)
        )[:12]

    @property
    def ref(self) -> str:
        return self.fixed_ref or f"{REGISTRY}/{self.name}:{self.key}"

    @property
    def folder(self) -> Path:
        return IMAGES / f"{self.name}-{self.key}"


def python_image(spec: PythonImage, *, build: bool) -> Image:
    layers = (
        (build_base(), build_deps(spec), build_app(spec))
        if build
        else (base_layer(), deps_layer(spec), app_layer(spec))
    )
    config: dict[str, object] = {
        "Env": list(spec.env),
        "Entrypoint": list(spec.entrypoint),
        "Cmd": list(spec.cmd),
        # A fixed non-root UID so runAsNonRoot can verify it.
        "User": "1000:1000",
        "WorkingDir": "/",
        "Labels": {"org.opencontainers.image.title": spec.title},
    }
    return Image(spec.name, layers, config)


def image(name: str, *, build: bool) -> Image:
    if name == "operator":
        return python_image(OPERATOR, build=build)
    if name == "trainer":
        return python_image(TRAINER, build=build)
    if name == "pause":
        layer = build_pause() if build else pause_layer()
        return Image(
            "pause",
            (layer,),
            {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"},
        )
    if name == "argoexec":
        layer = build_argoexec() if build else argoexec_layer()
        return Image(
            "argoexec",
            (layer,),
            {
                "Env": ["PATH=/bin:/usr/bin"],
                "Entrypoint": ["argoexec"],
                "User": "8737",
                "WorkingDir": "/home/argo",
            },
            fixed_ref=_cluster_setting("ARGO_EXECUTOR_IMAGE"),
        )
    raise SystemExit(f"unknown image {name!r} (pause, argoexec, operator, trainer)")


def write_image(img: Image) -> None:
    """index.json, the manifest and the config of ``img`` (its layers stay in layers/)."""
    if (img.folder / "index.json").exists():
        return
    layers = [layer.descriptor() for layer in img.layers]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": img.config,
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layers]},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA,
        "config": {
            "mediaType": CONFIG_MEDIA,
            "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(),
            "size": len(config_bytes),
        },
        "layers": layers,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA,
                "digest": "sha256:" + hashlib.sha256(manifest_bytes).hexdigest(),
                "size": len(manifest_bytes),
                # ctr names the imported image after this annotation.
                "annotations": {
                    "io.containerd.image.name": img.ref,
                    "org.opencontainers.image.ref.name": img.key,
                },
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    tmp = img.folder.with_name(img.folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_bytes(config_bytes)
    (tmp / "manifest.json").write_bytes(manifest_bytes)
    (tmp / "layers.json").write_text(json.dumps([str(layer.path) for layer in img.layers]))
    (tmp / "index.json").write_text(json.dumps(index, sort_keys=True))
    shutil.rmtree(img.folder, ignore_errors=True)
    tmp.replace(img.folder)


def stream_archive(name: str, omit: set[str]) -> None:
    """An OCI image layout as a tar on stdout (what `ctr images import` reads)."""
    img = image(name, build=False)
    if not (img.folder / "index.json").exists():
        raise SystemExit(f"{img.ref} is not built: run `{sys.argv[0]} build {name}` first")
    manifest = json.loads((img.folder / "manifest.json").read_text())
    paths = json.loads((img.folder / "layers.json").read_text())
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:

        def add_bytes(arcname: str, data: bytes) -> None:
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            tar.addfile(info, _BytesReader(data))

        add_bytes("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add_bytes("index.json", (img.folder / "index.json").read_bytes())
        for file, digest in (
            (
                "manifest.json",
                json.loads((img.folder / "index.json").read_text())["manifests"][0]["digest"],
            ),
            ("config.json", manifest["config"]["digest"]),
        ):
            add_bytes(f"blobs/sha256/{digest.split(':')[1]}", (img.folder / file).read_bytes())
        for desc, path in zip(manifest["layers"], paths, strict=True):
            if desc["digest"] in omit:
                continue  # already in the node's content store: never re-shipped
            info = tarfile.TarInfo(f"blobs/sha256/{desc['digest'].split(':')[1]}")
            info.size = int(desc["size"])
            with open(path, "rb") as f:
                tar.addfile(info, f)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out = self.data[self.pos : end]
        self.pos += len(out)
        return out


# Versions of each cached thing kept (the newest used): a few checkouts of different code may
# share the cache; older ones are deleted (a trainer dependency layer is ~2 GB).
KEEP = 3


def prune(img: Image) -> None:
    """Mark ``img``'s layers and folders used now, and delete all but the newest KEEP of each
    kind (``base``, ``deps-<image>``, ``app-<image>``, unpacked trees, image folders)."""
    now = time.time()
    used = [img.folder]
    for layer in img.layers:
        used += [layer.path, layer.meta, ROOTFS / f"{layer.name}-{layer.key}"]
    for path in used:
        if path.exists():
            os.utime(path, (now, now))
    families = [(IMAGES, f"{img.name}-")]
    for layer in img.layers:
        families += [(LAYERS, f"{layer.name}-"), (ROOTFS, f"{layer.name}-")]
    for folder, prefix in families:
        if not folder.is_dir():
            continue
        entries: dict[str, list[Path]] = {}
        for path in folder.iterdir():
            rest = path.name[len(prefix) :]
            # <prefix><12 hex digits>[.tar|.json]: exactly this family, not a longer name.
            if path.name.startswith(prefix) and len(rest.split(".")[0]) == 12:
                entries.setdefault(rest.split(".")[0], []).append(path)
        ranked = sorted(entries.values(), key=lambda ps: max(p.stat().st_mtime for p in ps))
        for paths in ranked[:-KEEP]:
            for path in paths:
                log(f"pruning {path}")
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("build", "ref"):
        p = sub.add_parser(command)
        p.add_argument("images", nargs="+")
    p = sub.add_parser("archive")
    p.add_argument("image")
    p.add_argument("--omit", type=Path, help="a file of blob digests to leave out")
    args = parser.parse_args(argv)
    if args.command == "ref":
        for name in args.images:
            print(name, image(name, build=False).ref)
        return 0
    if args.command == "archive":
        omit = set(args.omit.read_text().split()) if args.omit else set()
        stream_archive(args.image, omit)
        return 0
    if os.geteuid() != 0:
        raise SystemExit("building images needs root (debootstrap, chroot, mounts)")
    with build_lock():
        for name in args.images:
            start = time.monotonic()
            img = image(name, build=True)
            write_image(img)
            prune(img)
            log(f"{img.ref} ready ({time.monotonic() - start:.1f} s)")
            print(name, img.ref, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
