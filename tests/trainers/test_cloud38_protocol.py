"""Issue 14, part 2: 38-Cloud's official test protocol, on generated data in 38-Cloud's layout.

Generated test folders (:func:`mlops_trainers.cloud38.synthetic.write_38cloud_test`) hold whole
scenes zero-padded (centred) to 384 x 384 patches named ``patch_<n>_<row>_by_<col>_<scene>``
and the scenes' ``Entire_scene_gts``, as the real one does. A per-pixel rule scored through the
protocol (patches -> stitch -> remove the padding) must give exactly the counts of the same rule
applied to the whole scenes; a trained segmenter is then scored through ``mlops cloud38-eval``,
with its Keras model and with its ONNX export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlops_trainers.cloud38 import evaluate
from mlops_trainers.cloud38.synthetic import write_38cloud_test, write_38cloud_training

SHAPES = [(500, 700), (384, 900), (420, 380)]


def bright(patches: np.ndarray) -> np.ndarray:
    """A classical rule: cloud where every band is bright."""
    return (patches.min(axis=-1) > 0.6).astype(np.float32)


@pytest.fixture(scope="module")
def test_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("38-Cloud_test")
    scenes = write_38cloud_test(str(root), SHAPES, seed=3)
    return str(root), scenes


def test_the_layout_is_38clouds(test_folder: tuple[str, dict[str, Any]]) -> None:
    root, scenes = test_folder
    patches = evaluate.scene_patches(root)
    assert set(patches) == set(scenes)
    # 500 x 700 -> 2 x 2 patches, 384 x 900 -> 1 x 3, 420 x 380 -> 2 x 1: 9 patches, 1-based.
    assert sum(len(p) for p in patches.values()) == 9
    assert sorted((p.row, p.col) for p in patches[next(iter(sorted(scenes)))]) == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    ]
    assert (Path(root) / "test_nir").is_dir() and (Path(root) / "Entire_scene_gts").is_dir()
    patch = evaluate.parse_patch("patch_12_2_by_3_LC08_L1TP_002053_20160520_20170324_01_T1")
    assert (patch.row, patch.col, patch.scene) == (2, 3, "LC08_L1TP_002053_20160520_20170324_01_T1")


def test_stitched_scores_equal_the_rule_on_whole_scenes(
    test_folder: tuple[str, dict[str, Any]],
) -> None:
    root, scenes = test_folder
    report = evaluate.evaluate_38cloud(bright, root, threshold=0.5, batch_size=3)
    assert report["patches"] == 9
    for row in report["scenes"]:
        scene, gt = scenes[row["scene"]]
        # The patches hold 16-bit digital numbers: apply the rule to what they hold.
        stored = (np.clip(scene, 0, 1) * 65535 + 0.5).astype(np.uint16).astype(np.float32) / 65535
        expected = evaluate.scene_scores(bright(stored) > 0.5, gt > 0.5)
        assert {k: row[k] for k in ("tp", "fp", "fn", "tn")} == {
            k: expected[k] for k in ("tp", "fp", "fn", "tn")
        }, row["scene"]
        assert row["tp"] + row["fp"] + row["fn"] + row["tn"] == gt.size
        assert 0 < row["jaccard"] < 100
    means = {m: np.mean([s[m] for s in report["scenes"]]) for m in evaluate.METRICS}
    assert report["mean"] == pytest.approx(means)


def test_padding_removed_from_the_wrong_side_changes_the_counts(
    test_folder: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """38-Cloud padded its scenes centred: cropping from the top-left would misalign."""
    root, _ = test_folder
    right = evaluate.evaluate_38cloud(bright, root)
    monkeypatch.setattr(evaluate, "unzeropad", lambda mask, shape: mask[: shape[0], : shape[1]])
    wrong = evaluate.evaluate_38cloud(bright, root)
    assert [s["tp"] for s in wrong["scenes"]] != [s["tp"] for s in right["scenes"]]
    assert wrong["mean"]["jaccard"] < right["mean"]["jaccard"]


@pytest.mark.slow
def test_a_trained_segmenter_is_scored_through_keras_and_onnx(
    tmp_path: Path,
    test_folder: tuple[str, dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mlops_cli.main import main
    from mlops_trainers.config import RunConfig
    from mlops_trainers.runtime import run

    root, _ = test_folder
    raw = tmp_path / "38-Cloud_training"
    write_38cloud_training(str(raw), 72, scenes=6, distinct=24, seed=5)
    output = tmp_path / "runs" / "seg38-g1-0123abcd"
    config = RunConfig(
        run_id=output.name,
        name="seg38",
        trainer={
            "kind": "segmenter",
            "config": {
                "tile_size": 128,
                "batch_size": 8,
                "learning_rate": 3e-3,
                "base_filters": 8,
                "depth": 3,
                "steps_per_epoch": 25,
                "overlap": 16,
                "predictions": 2,
            },
        },
        data=str(raw),
        output_prefix=str(output.parent),
        output=str(output),
        epochs=2,
        checkpoint_every=1000,
    )
    assert run(config) == 0
    reports = {}
    for flags in ([], ["--onnx"]):
        report = tmp_path / f"report{len(flags)}.json"
        code = main(["cloud38-eval", str(output), root, "--report", str(report), *flags])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert "mean of 3 scenes" in out.out and "jaccard" in out.out
        reports[bool(flags)] = json.loads(report.read_text())
    keras_mean, onnx_mean = reports[False]["mean"], reports[True]["mean"]
    print(f"38-Cloud protocol, Keras: {keras_mean}\n38-Cloud protocol, ONNX:  {onnx_mean}")
    # The run's threshold, tiles and overlap were used; the ONNX export scores the same.
    assert reports[False]["threshold"] == 0.5
    for metric in evaluate.METRICS:
        assert onnx_mean[metric] == pytest.approx(keras_mean[metric], abs=0.05)
    assert keras_mean["jaccard"] > 60 and keras_mean["accuracy"] > 90
