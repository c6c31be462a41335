"""Operator settings come from the environment the chart's Deployment sets."""

from __future__ import annotations

import json

import pytest
from mlops_operator.settings import OperatorSettings
from mlops_workflows.render import RenderSettings


def test_defaults_place_trainers_only_by_spot_and_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLOPS_TRAINER_NODE_SELECTOR", "MLOPS_TRAINER_TOLERATIONS"):
        monkeypatch.delenv(name, raising=False)
    render = OperatorSettings.from_env().render
    assert render.node_selector == () and render.tolerations == ()
    assert render == RenderSettings()


def test_trainer_placement_from_the_chart(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the chart writes for trainer.nodeSelector / trainer.tolerations (toJson), and "{}"/"[]"
    # for the defaults.
    monkeypatch.setenv("MLOPS_TRAINER_NODE_SELECTOR", json.dumps({"pool": "training"}))
    toleration = {"key": "pool", "operator": "Equal", "value": "training", "effect": "NoSchedule"}
    monkeypatch.setenv("MLOPS_TRAINER_TOLERATIONS", json.dumps([toleration]))
    render = OperatorSettings.from_env().render
    assert render.node_selector == (("pool", "training"),)
    assert render.tolerations == (toleration,)
    monkeypatch.setenv("MLOPS_TRAINER_NODE_SELECTOR", "{}")
    monkeypatch.setenv("MLOPS_TRAINER_TOLERATIONS", "[]")
    assert OperatorSettings.from_env().render.node_selector == ()


def test_queue_mode_is_semaphore_or_kueue_and_a_typo_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLOPS_QUEUE_MODE", raising=False)
    assert OperatorSettings.from_env().render.queue_mode == "semaphore"
    monkeypatch.setenv("MLOPS_QUEUE_MODE", "kueue")
    assert OperatorSettings.from_env().render.queue_mode == "kueue"
    monkeypatch.setenv("MLOPS_ON_DEMAND_NODE_SELECTOR", json.dumps({"pool": "standard"}))
    assert OperatorSettings.from_env().render.on_demand_node_selector == {"pool": "standard"}
    monkeypatch.setenv("MLOPS_QUEUE_MODE", "kueu")
    with pytest.raises(ValueError, match="MLOPS_QUEUE_MODE='kueu': must be semaphore or kueue"):
        OperatorSettings.from_env()
