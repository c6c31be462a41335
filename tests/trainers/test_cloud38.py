"""The segmenter dataset layout, the 38-Cloud converter, and the synthetic `sample://clouds`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from mlops_trainers.cloud38 import cli, convert, layout, synthetic
from mlops_trainers.errors import DataError
from mlops_trainers.samples import resolve_sample

SCENE_A = "LC08_L1TP_002053_20160520_20170324_01_T1"
SCENE_B = "LC08_L1TP_035034_20160120_20170224_01_T1"


def _fake_38cloud(root: Path, size: int = 24) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A miniature 38-Cloud training folder: per-band TIFFs, gt, and the patch CSV."""
    rng = np.random.default_rng(0)
    patches = {}
    names = [
        f"patch_{i}_{1 + i // 3}_by_{1 + i % 3}_{scene}"
        for scene in (SCENE_A, SCENE_B)
        for i in range(1, 5)
    ]
    for n, name in enumerate(names):
        bands = (rng.random((size, size, 4)) * 30000).astype(np.uint16)
        gt = np.where(rng.random((size, size)) > 0.5, 255, 0).astype(np.uint8)
        if n == 0:
            bands[:] = 0  # outside the Landsat footprint: 38-Cloud has many of these
        for b, band in enumerate(convert.BANDS_38CLOUD):
            folder = root / f"train_{band}"
            folder.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(folder / f"{band}_{name}.TIF", bands[..., b])
        (root / "train_gt").mkdir(exist_ok=True)
        tifffile.imwrite(root / "train_gt" / f"gt_{name}.TIF", gt)
        patches[name] = (bands, gt)
    (root / "training_patches_38-Cloud.csv").write_text("name\n" + "\n".join(names) + "\n")
    return patches


def test_convert_38cloud_stacks_bands_and_splits_by_scene(tmp_path: Path) -> None:
    source = tmp_path / "38-Cloud_training"
    patches = _fake_38cloud(source)
    assert convert.is_38cloud(str(source)) and not layout.is_dataset(str(source))
    dest = tmp_path / "dataset"
    counts = convert.convert_38cloud(str(source), str(dest), val_fraction=0.5, test_fraction=0.0)
    assert sum(counts.values()) == len(patches) - 1  # the all-zero patch is dropped
    assert layout.is_dataset(str(dest))
    seen: dict[str, str] = {}
    for split in layout.SPLITS:
        for record in layout.read_filelist(str(dest), split):
            bands, gt = patches[record.id]
            scene = layout.load_scene(str(dest / record.scene))
            assert scene.shape == (24, 24, 4) and scene.dtype == np.float32
            np.testing.assert_allclose(scene, bands / 65535.0, rtol=1e-6)
            np.testing.assert_array_equal(layout.load_mask(str(dest / record.mask)), gt > 0)
            landsat = record.id.split("_by_")[1].split("_", 1)[1]
            # Every patch of a Landsat scene lands in the same split: no leakage.
            assert seen.setdefault(landsat, split) == split


def test_convert_without_the_csv_lists_the_red_band(tmp_path: Path) -> None:
    source = tmp_path / "src"
    _fake_38cloud(source)
    (source / "training_patches_38-Cloud.csv").unlink()
    assert cli.main([str(source), str(tmp_path / "out"), "--keep-empty", "--limit", "3"]) == 0
    total = sum(len(layout.read_filelist(str(tmp_path / "out"), s)) for s in layout.SPLITS)
    assert total == 3


def test_convert_errors_name_the_missing_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "src"
    _fake_38cloud(source)
    for f in (source / "train_nir").iterdir():
        f.unlink()
        break
    with pytest.raises(DataError, match="band file missing"):
        convert.convert_38cloud(str(source), str(tmp_path / "out"), skip_empty=False)
    assert cli.main([str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "train_gt" in capsys.readouterr().err
    with pytest.raises(DataError, match="filelists"):
        layout.read_filelist(str(tmp_path / "nothing"), "train")


def test_synthetic_scenes_have_known_masks() -> None:
    rng = np.random.default_rng(0)
    for coverage in (0.0, 0.3, 1.0):
        scene, mask = synthetic.synthetic_cloud_scene(rng, 70, 90, coverage=coverage)
        assert scene.shape == (70, 90, 4) and mask.shape == (70, 90)
        assert scene.min() >= 0.0 and scene.max() <= 1.0
        assert abs(mask.mean() - coverage) < 0.02
    scene, mask = synthetic.synthetic_cloud_scene(rng, 120, 120, coverage=0.4)
    cloud, ground = scene[mask > 0.5], scene[mask < 0.5]
    # Clouds are bright in every band, including the near infrared.
    assert (cloud.mean(axis=0) > ground.mean(axis=0) + 0.2).all()


def test_clouds_sample_is_a_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_SAMPLES_CACHE", str(tmp_path))
    root = resolve_sample("sample://clouds")
    assert layout.is_dataset(root)
    sizes = set()
    for split, expected in (("train", 24), ("val", 6), ("test", 6)):
        records = layout.read_filelist(root, split)
        assert len(records) == expected
        for r in records[:3]:
            scene = layout.load_scene(f"{root}/{r.scene}")
            mask = layout.load_mask(f"{root}/{r.mask}")
            assert scene.shape[:2] == mask.shape and scene.shape[2] == 4
            sizes.add(scene.shape[:2])
    assert len(sizes) > 1  # varied sizes: padding is exercised
