"""Bundled real datasets, addressed as ``sample://<name>`` wherever a data URL is expected.

A sample is materialised once into a local cache folder (``$MLOPS_SAMPLES_CACHE``, else
``$XDG_CACHE_HOME/mlops-samples`` or ``~/.cache/mlops-samples``, else the temp dir) and its path
is returned; later calls reuse it. Materialising writes into a private temporary folder that is
renamed into place at the end (a local rename is atomic), so concurrent processes and killed ones
never leave a half-written sample behind. A trainer image can bake samples in at build time:
``MLOPS_SAMPLES_CACHE=/opt/samples python -m mlops_trainers.samples skimage fashion-mnist``.

Registering a sample is one line, in the module that knows how to make it::

    register_sample("clouds", write_clouds, description="38-Cloud scenes bundled in the image")

where ``write_clouds(folder: pathlib.Path) -> None`` writes the files (images, masks, lists) into
``folder``. A sample registered in another module is found once that module is imported: a
trainer's own samples register in ``mlops_trainers/trainers/<kind>/samples.py``, imported when an
unknown name is asked for; shared ones are listed in :data:`SAMPLE_MODULES`. Bump
``version`` when the produced files change: the cache key is ``<name>-v<version>``.

Bundled here:

* ``sample://skimage``: random crops (varied sizes and aspect ratios, so padding is exercised) of
  scikit-image's bundled photographs (astronaut, coffee, chelsea, rocket, ...): 540 PNGs.
* ``sample://fashion-mnist``: the first 10,000 training images of Fashion-MNIST (28x28 grey),
  read from Debian's ``dataset-fashion-mnist`` package.

Which names exist is also known *without importing* the modules that register them
(:func:`sample_names` reads their source for ``register_sample("<name>", ...)`` calls), so the
operator, which has neither NumPy nor TensorFlow, refuses ``sample://no-such-name`` before a pod
does; this module itself imports nothing heavy at module level for the same reason.
"""

from __future__ import annotations

import argparse
import ast
import functools
import gzip
import importlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlops_trainers.errors import DataError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "SAMPLE_MODULES",
    "SAMPLE_SCHEME",
    "Sample",
    "is_sample_url",
    "register_sample",
    "registered_samples",
    "resolve_sample",
    "sample_names",
    "samples_cache_dir",
]

SAMPLE_SCHEME = "sample://"

Materialise = Callable[[Path], None]

# name -> module that registers it on import (for names registered outside this module).
SAMPLE_MODULES: dict[str, str] = {
    "clouds": "mlops_trainers.cloud38.synthetic",
    "webcam": "mlops_trainers.skymask.synthetic",
}


@dataclass(frozen=True)
class Sample:
    """A bundled dataset: a function that writes its files into a folder."""

    name: str
    materialise: Materialise
    version: str = "1"
    description: str = ""


_REGISTRY: dict[str, Sample] = {}


def register_sample(
    name: str, materialise: Materialise, *, version: str = "1", description: str = ""
) -> Sample:
    """Make ``sample://<name>`` resolve to the folder ``materialise(folder)`` fills."""
    sample = Sample(name, materialise, version, description)
    _REGISTRY[name] = sample
    return sample


def registered_samples() -> dict[str, Sample]:
    return dict(_REGISTRY)


def is_sample_url(url: str) -> bool:
    return url.startswith(SAMPLE_SCHEME)


def samples_cache_dir() -> Path:
    """Where samples are materialised: the first writable of the documented candidates."""
    candidates = []
    if os.environ.get("MLOPS_SAMPLES_CACHE"):
        candidates.append(Path(os.environ["MLOPS_SAMPLES_CACHE"]))
    if os.environ.get("XDG_CACHE_HOME"):
        candidates.append(Path(os.environ["XDG_CACHE_HOME"]) / "mlops-samples")
    candidates.append(Path.home() / ".cache" / "mlops-samples")
    candidates.append(Path(tempfile.gettempdir()) / "mlops-samples")
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise DataError(f"no writable folder for samples among {[str(c) for c in candidates]}")


def _trainer_sample_modules() -> list[str]:
    """``mlops_trainers.trainers.<kind>.samples`` of every kind that has one: a trainer's own
    data sets register there, so a new trainer lists its samples nowhere else."""
    from mlops_trainers.registry import trainer_kinds

    names = [f"{entry.package}.samples" for entry in trainer_kinds().values()]
    return [n for n in names if importlib.util.find_spec(n) is not None]


def _lookup(name: str) -> Sample:
    modules = [SAMPLE_MODULES[name]] if name in SAMPLE_MODULES else _trainer_sample_modules()
    for module in modules:
        if name in _REGISTRY:
            break
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise DataError(
                f"sample://{name}: its module {module} cannot be imported: {err}"
            ) from err
    if name not in _REGISTRY:
        known = ", ".join(f"sample://{n}" for n in sorted(_REGISTRY)) or "none"
        raise DataError(f"unknown sample dataset sample://{name}; known: {known}")
    return _REGISTRY[name]


def _registered_in(module: str) -> list[str]:
    """The names a module registers, read from its source (``register_sample("name", ...)``)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return []
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "register_sample"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ]


@functools.cache
def sample_names() -> frozenset[str]:
    """Every ``sample://`` name, without importing the modules that make the samples: this
    module's, :data:`SAMPLE_MODULES`' and each trainer kind's ``samples.py``."""
    modules = [__name__, *SAMPLE_MODULES.values(), *_trainer_sample_modules()]
    return frozenset(name for module in modules for name in _registered_in(module))


def resolve_sample(url: str) -> str:
    """The local folder holding ``sample://<name>`` (``url`` may also be the bare name)."""
    name = url[len(SAMPLE_SCHEME) :] if is_sample_url(url) else url
    name = name.strip("/")
    sample = _lookup(name)
    root = samples_cache_dir()
    target = root / f"{sample.name}-v{sample.version}"
    if (target / ".complete").exists():
        return str(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sample.name}-", dir=root))
    try:
        sample.materialise(tmp)
        (tmp / ".complete").write_text(sample.version)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process won the race (target exists and is complete) or left a partial
            # folder behind (no marker): replace the latter.
            if not (target / ".complete").exists():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


# === skimage ===

# Photographs bundled inside the scikit-image wheel (no download).
SKIMAGE_FILES = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
    "clock_motion.png",
)
SKIMAGE_CROPS_PER_IMAGE = 30
SKIMAGE_MAX_SIDE = 128


def _write_skimage(folder: Path) -> None:
    import numpy as np
    from PIL import Image

    try:
        import skimage
    except ImportError as err:  # pragma: no cover - the trainer extra installs it
        raise DataError("sample://skimage needs scikit-image: pip install scikit-image") from err
    source = Path(skimage.__file__).parent / "data"
    rng = np.random.default_rng(20240531)
    count = 0
    for filename in SKIMAGE_FILES:
        path = source / filename
        if not path.exists():
            continue
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        # Drop the source's ICC profile: several of scikit-image's PNGs carry a broken one
        # that PIL would copy into every crop, and libpng warns on each decode of it.
        image.info.pop("icc_profile", None)
        width, height = image.size
        short = min(width, height)
        for i in range(SKIMAGE_CROPS_PER_IMAGE):
            # Side between 1/6 and 1/2 of the short side, aspect ratio between 0.6 and 1.6.
            side = rng.uniform(short / 6, short / 2)
            aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
            w = int(min(width, max(8, side * np.sqrt(aspect))))
            h = int(min(height, max(8, side / np.sqrt(aspect))))
            x = int(rng.integers(0, width - w + 1))
            y = int(rng.integers(0, height - h + 1))
            crop = image.crop((x, y, x + w, y + h))
            scale = SKIMAGE_MAX_SIDE / max(w, h)
            if scale < 1:
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                crop = crop.resize(size, Image.Resampling.LANCZOS)
            crop.save(folder / f"{Path(filename).stem}-{i:03d}.png")
            count += 1
    if count == 0:
        raise DataError(f"no scikit-image sample images found in {source}")


# === fashion-mnist ===

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_COUNT = 10_000


def _read_idx_images(path: Path) -> np.ndarray:
    import numpy as np

    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in (0, 4, 8, 12))
    if magic != 2051:
        raise DataError(f"{path} is not an IDX image file (magic {magic})")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, cols)


def _write_fashion_mnist(folder: Path) -> None:
    from PIL import Image

    for directory in FASHION_MNIST_DIRS:
        path = Path(directory) / "train-images-idx3-ubyte.gz"
        if path.exists():
            break
    else:
        raise DataError(
            "sample://fashion-mnist needs the Debian package dataset-fashion-mnist "
            f"(looked for train-images-idx3-ubyte.gz in {', '.join(FASHION_MNIST_DIRS)}): "
            "apt-get install dataset-fashion-mnist"
        )
    images = _read_idx_images(path)[:FASHION_MNIST_COUNT]
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:05d}.png", compress_level=1)


register_sample(
    "skimage",
    _write_skimage,
    version="2",
    description="540 random crops of scikit-image's bundled photographs",
)
register_sample(
    "fashion-mnist",
    _write_fashion_mnist,
    version="1",
    description="first 10,000 Fashion-MNIST training images (Debian dataset-fashion-mnist)",
)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mlops_trainers.samples NAME...``: materialise samples, print their folders."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    for name in args.names:
        print(resolve_sample(name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
