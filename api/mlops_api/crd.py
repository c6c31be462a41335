"""The CustomResourceDefinition, generated from the typed models (never edited by hand).

Kubernetes wants a *structural* OpenAPI v3.0 schema: no ``$ref``, no ``anyOf`` of types, boolean
``exclusiveMinimum``, no ``additionalProperties`` beside ``properties``. This module rewrites
pydantic's JSON Schema (2020-12) into that form.

``spec.trainer.config`` depends on ``spec.trainer.kind``; a structural schema cannot say so, so the
CRD keeps that object open (``x-kubernetes-preserve-unknown-fields``) and the operator validates it
with the trainer's own model, reporting the field path in ``status.conditions`` (SpecInvalid).
"""

from __future__ import annotations

from typing import Any

from mlops_trainers.registry import trainer_kinds

from mlops_api.spec import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    MLOpsSpec,
    MLOpsStatus,
)

_DROP = {"title", "additionalProperties", "discriminator", "examples", "const"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every ``$ref`` and turn JSON Schema 2020-12 into OpenAPI 3.0 structural form."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    out: dict[str, Any] = {}
    any_of = node.get("anyOf")
    if any_of is not None:
        options = [o for o in any_of if o.get("type") != "null"]
        nullable = len(options) < len(any_of)
        if len(options) == 1:
            out.update(_resolve(options[0], defs))
        else:  # e.g. int | str: keep it open rather than invent a type
            out["x-kubernetes-int-or-string"] = True
        if nullable:
            out["nullable"] = True
    for key, value in node.items():
        if key in _DROP or key in ("anyOf", "$defs"):
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            out["properties"] = {k: _resolve(v, defs) for k, v in value.items()}
        elif key in ("items", "not"):
            out[key] = _resolve(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        else:
            out[key] = value
    if "const" in node:
        out["enum"] = [node["const"]]
    if isinstance(node.get("additionalProperties"), dict) and "properties" not in node:
        out["additionalProperties"] = _resolve(node["additionalProperties"], defs)
    if out.get("type") == "array" and "prefixItems" in out:  # fixed tuples: keep the item type
        out["items"] = _resolve(out.pop("prefixItems")[0], defs)
    # Defaults are applied by the models, not the API server: the object stays as the user wrote it.
    out.pop("default", None)
    return out


def _trainer_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Which trainer (kind) and its hyperparameters (config).",
        "required": ["kind"],
        "properties": {
            "kind": {
                "type": "string",
                "enum": list(trainer_kinds()),
                "description": "The trainer.",
            },
            "config": {
                "type": "object",
                "description": "The trainer's hyperparameters (snake_case, as in its Python config); validated by the operator against that trainer's model.",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
    }


def spec_schema() -> dict[str, Any]:
    raw = MLOpsSpec.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    raw["properties"].pop("trainer")
    schema: dict[str, Any] = _resolve(raw, defs)
    schema["properties"] = {"trainer": _trainer_schema(), **schema["properties"]}
    return schema


def status_schema() -> dict[str, Any]:
    raw = MLOpsStatus.model_json_schema(by_alias=True, mode="serialization")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _resolve(raw, defs)
    # kopf keeps its own progress under status; without this the API server prunes it and
    # kopf never sees its handlers finish (it stalls re-running them).
    schema["x-kubernetes-preserve-unknown-fields"] = True
    schema.pop("required", None)
    return schema


def build_crd() -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CRD of the MLOps resource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["all", "mlops"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {
                            "name": "Reason",
                            "type": "string",
                            "jsonPath": ".status.reason",
                            "priority": 1,
                        },
                        {"name": "Trainer", "type": "string", "jsonPath": ".spec.trainer.kind"},
                        {
                            "name": "Run",
                            "type": "string",
                            "jsonPath": ".status.runId",
                            "priority": 1,
                        },
                        {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
                        {"name": "ETA", "type": "string", "jsonPath": ".status.eta"},
                        {
                            "name": "Preemptions",
                            "type": "integer",
                            "jsonPath": ".status.preemptions",
                            "priority": 1,
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        {
                            "name": "Message",
                            "type": "string",
                            "jsonPath": ".status.message",
                            "priority": 1,
                        },
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "An ML training run: a trainer, its data and where its results go.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }
