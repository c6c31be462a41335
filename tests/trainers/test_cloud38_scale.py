"""Issue 14, part 2: the segmenter at 38-Cloud's size streams its tiles in bounded memory.

38-Cloud's training set is 8,400 patches of 384 x 384 x 4 (20 GB as float32). A data set of that
size and layout is generated (distinct synthetic patches behind hard links, so it costs seconds
and no disk), and a subprocess, measured by its peak RSS (``VmHWM``) and ``tracemalloc``, does
what a trainer pod does before and while training, without the model:

1. converts a 38-Cloud training folder (840 patches, a tenth) into the cache under the output
   prefix, then "retries" and finds it there (``conversion_reused``);
2. streams one full epoch of the 8,400-patch data set through :class:`TileStream` (tiles of
   384, batches of 16, augmentation on), every batch checked.

Measured on this machine (2 cores shared with other builds, load average about 10): this test
converted 789 patches in 38 s (found again in 1.8 s) and streamed the 8,400 patches in 374 s,
peak RSS 1.00 GB; a one-off run of the same steps converting a whole 8,400-patch folder took
332 s (324 MB resident), streamed its 5,307 training patches in 240 s at a peak of 1.05 GB, and
found the conversion again in 11 s. The test asserts the peak under 2 GiB.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlops_trainers.cloud38 import layout
from mlops_trainers.cloud38.convert import convert_38cloud
from mlops_trainers.cloud38.synthetic import write_38cloud_training

PATCHES = 8400  # 38-Cloud's training patches
LIMIT = 2 << 30  # the pipeline's memory budget (issue 14)

MEASURE = """
import json, resource, sys, time, tracemalloc
from pathlib import Path
tracemalloc.start()
from mlops_trainers.config import RunConfig
from mlops_trainers.trainer import RunContext
from mlops_trainers.trainers.segmenter.trainer import SegmenterTrainer

def rss():
    # Peak RSS of this process: VmHWM (getrusage's ru_maxrss keeps the forking parent's peak
    # across exec on Linux, so it would count pytest's memory too).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def trainer(data, prefix, attempt):
    config = RunConfig(
        run_id="scale-g1-0123abcd", name="scale", data=data, epochs=1, checkpoint_every=1000,
        trainer={"kind": "segmenter", "config": {"tile_size": 384, "batch_size": 16,
                 "export_onnx": False, "workers": 4}},
        output_prefix=prefix, output=f"{prefix}/scale-g1-0123abcd")
    made = SegmenterTrainer(config, RunContext(config, Path(prefix) / f"scratch-{attempt}"))
    began = time.perf_counter()
    made.prepare()
    return made, time.perf_counter() - began

raw, converted, prefix = sys.argv[1:4]
out = {"rss_after_imports": rss()}
first, out["convert_s"] = trainer(raw, prefix, 1)
out["converted"] = first.inputs["converted_38cloud"]
again, out["reconvert_s"] = trainer(raw, prefix, 2)
out["reused"] = again.inputs["conversion_reused"]
out["rss_after_conversion"] = rss()
out["tracemalloc_conversion"] = tracemalloc.get_traced_memory()[1]
tracemalloc.reset_peak()
full, _ = trainer(converted, prefix, 3)
data = full.datasets()
began, steps, patches = time.perf_counter(), 0, 0
for x, y in data.batches(0):
    assert x.shape == (16, 384, 384, 4) and y.shape == (16, 384, 384, 2), (x.shape, y.shape)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and set(y[..., 1].ravel()[:5]) == {1.0}
    steps += 1
    patches += len(x)
out.update(stream_s=time.perf_counter() - began, steps=steps, patches=patches,
           steps_per_epoch=data.steps_per_epoch, records=len(full.splits["train"]),
           rss_peak=rss(), tracemalloc_stream=tracemalloc.get_traced_memory()[1])
print(json.dumps(out))
"""


def replicate(source: Path, dest: Path, names: list[str]) -> None:
    """A converted data set of ``names`` whose files are hard links to ``source``'s few."""
    records = layout.read_filelist(str(source), "train")
    for folder in ("scenes", "masks"):
        (dest / folder).mkdir(parents=True)
    rows = []
    for i, name in enumerate(names):
        record = records[i % len(records)]
        scene, mask = f"scenes/{name}.tif", f"masks/{name}.png"
        os.link(source / record.scene, dest / scene)
        os.link(source / record.mask, dest / mask)
        rows.append(layout.SceneRecord(scene, mask, record.height, record.width, record.cloud))
    layout.write_filelist(str(dest), "train", rows)
    for split in ("val", "test"):
        layout.write_filelist(str(dest), split, [])


@pytest.mark.slow
def test_a_38cloud_sized_epoch_streams_in_bounded_memory(tmp_path: Path) -> None:
    try:
        raw = tmp_path / "38-Cloud_training"
        write_38cloud_training(str(raw), PATCHES // 10, distinct=16, seed=1)
        full_raw = tmp_path / "38-Cloud_full"
        names = write_38cloud_training(
            str(full_raw), PATCHES, distinct=24, empty_fraction=0, seed=2
        )
        few = tmp_path / "few"
        convert_38cloud(str(full_raw), str(few), val_fraction=0, test_fraction=0, limit=48)
        converted = tmp_path / "converted"
        replicate(few, converted, names)
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, str(raw), str(converted), str(tmp_path / "runs")],
            capture_output=True,
            text=True,
            check=False,
            timeout=1500,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"38-Cloud-sized pipeline: {result}")
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # ~1 GB of converted patches
    assert result["reused"] is True and result["reconvert_s"] < result["convert_s"] / 5
    # About 5 % of the generated patches are empty (outside a footprint) and are dropped.
    assert 0.9 * PATCHES // 10 <= sum(result["converted"].values()) < PATCHES // 10
    assert result["records"] == PATCHES
    assert result["steps"] == result["steps_per_epoch"] == PATCHES // 16
    assert result["patches"] == result["steps"] * 16
    assert result["rss_peak"] <= LIMIT, f"peak RSS {result['rss_peak'] / 2**30:.2f} GiB"
