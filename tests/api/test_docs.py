"""The README's field table is generated from the models and stays in sync."""

from __future__ import annotations

from pathlib import Path

from mlops_api.docs import END, START, field_tables, splice

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_field_table_is_current() -> None:
    text = README.read_text()
    assert START in text and END in text
    assert splice(text, field_tables()) == text, "README field table drifted: run `make generate`"


def test_every_spec_field_is_documented() -> None:
    tables = field_tables()
    for field in (
        "spec.trainer.kind",
        "spec.data",
        "spec.output",
        "spec.resume.from",
        "spec.resume.run",
        "spec.resources.gpu.count",
        "spec.spot",
        "spec.retries.preemption",
        "spec.retries.error",
        "spec.epochs",
        "spec.checkpointEvery",
        "`num_embeddings`",
        "`tile_size`",
    ):
        assert field in tables, field
