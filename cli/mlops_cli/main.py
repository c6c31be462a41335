"""The ``mlops`` command: validate, render, run locally, and print the schema/CRD/docs.

Thin: every command parses arguments, calls a pure function of the packages, prints, returns an
exit code. ``main(argv) -> int`` is what the tests call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from mlops_api import FieldError, ManifestError, plan_run, read_manifest
from mlops_api.crd import build_crd
from mlops_api.docs import field_tables
from mlops_api.spec import MLOps

DEFAULT_LOCAL_OUTPUT = "mlops-runs"

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def _fail(path: str, exc: ManifestError) -> int:
    for error in exc.errors:
        print(f"{path}: {error}", file=sys.stderr)
    return EXIT_INVALID


def _load(path: str, *, cluster: bool) -> MLOps:
    return read_manifest(path, cluster=cluster)


def cmd_validate(args: argparse.Namespace) -> int:
    from mlops_workflows.render import render

    status = EXIT_OK
    for path in args.files:
        try:
            obj = _load(path, cluster=not args.local)
            rendered = render(obj)  # also checks what only rendering can (ConfigMap size)
            if not args.no_memory:
                _check_memory(path, obj, rendered.plan.config)
        except ManifestError as exc:
            status = _fail(path, exc)
            continue
        print(f"{path}: valid ({obj.spec.trainer.kind}, run {rendered.plan.run_id})")
    return status


def _check_memory(path: str, obj: MLOps, config: Any) -> None:
    """Refuse a run whose estimated peak memory exceeds the pod's (ManifestError naming the
    numbers); print the estimate otherwise. Builds the model: needs the trainer extra."""
    quiet_tensorflow()
    try:
        from mlops_trainers import memory
    except ImportError as err:  # pragma: no cover - the operator image: no TensorFlow
        print(f"{path}: memory not estimated ({err})", file=sys.stderr)
        return
    try:
        estimate = memory.estimate_run(config)
    except ImportError as err:
        print(f"{path}: memory not estimated (needs the trainer extra: {err})", file=sys.stderr)
        return
    if estimate is None:
        print(
            f"{path}: memory not estimated: a {obj.spec.trainer.kind} model depends on what "
            "the run reads",
            file=sys.stderr,
        )
        return
    resources = obj.spec.resources
    gpu = resources.gpu
    problems = memory.fit_problems(estimate, resources.memory, gpu.count, gpu.type)
    if problems:
        raise ManifestError([FieldError(field, message) for field, message in problems])
    where = "on CPU" if gpu.count == 0 else f"on {gpu.type or 'a GPU of unknown memory'}"
    device = "" if gpu.count == 0 else f", {memory.gib(estimate.model)} on the GPU"
    print(
        f"{path}: memory {where}: about {memory.gib(estimate.host(gpu.count > 0))} of "
        f"{resources.memory} host{device} ({estimate.parameters:,} parameters, batch_size "
        f"{estimate.batch_size})",
        file=sys.stderr,
    )


def cmd_render(args: argparse.Namespace) -> int:
    from mlops_workflows.render import RenderSettings, render, to_yaml

    try:
        obj = _load(args.file, cluster=True)
        if args.namespace:
            obj = obj.model_copy(
                update={"metadata": obj.metadata.model_copy(update={"namespace": args.namespace})}
            )
        rendered = render(obj, RenderSettings())
    except ManifestError as exc:
        return _fail(args.file, exc)
    sys.stdout.write(to_yaml(rendered))
    return EXIT_OK


def quiet_tensorflow() -> None:
    """No TensorFlow start-up noise (its C++ INFO/WARNING lines, absl's preamble) unless asked:
    set before TensorFlow is first imported. Errors still show."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # oneDNN's "custom operations are on" notice is one of them; the numerics stay the same.
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "2")


def cmd_run(args: argparse.Namespace) -> int:
    if not args.tf_logs:
        quiet_tensorflow()
    try:
        obj = _load(args.file, cluster=False)  # trains here: local paths are fine
        output = str(Path(args.output).resolve()) if "://" not in args.output else args.output
        plan = plan_run(obj, output=output, data=args.data)
    except ManifestError as exc:
        return _fail(args.file, exc)
    # TensorFlow loads only here: validate/render stay fast and work in the operator image.
    from mlops_trainers.runtime import run

    print(
        f"run {plan.run_id}: {obj.spec.trainer.kind} on {plan.config.data} -> {plan.config.output}",
        file=sys.stderr,
    )
    code: int = run(plan.config, progress=not args.no_progress)
    return code


def cmd_schema(_: argparse.Namespace) -> int:
    schema = MLOps.model_json_schema(by_alias=True)
    print(json.dumps(schema, indent=2, sort_keys=True))
    return EXIT_OK


def cmd_crd(_: argparse.Namespace) -> int:
    sys.stdout.write(yaml.safe_dump(build_crd(), sort_keys=False))
    return EXIT_OK


def cmd_docs(_: argparse.Namespace) -> int:
    sys.stdout.write(field_tables())
    return EXIT_OK


def cmd_skymask(args: argparse.Namespace) -> int:
    from mlops_trainers.skymask.cli import main as skymask_main

    code: int = skymask_main(args.rest)
    return code


def cmd_cloud38_eval(args: argparse.Namespace) -> int:
    quiet_tensorflow()
    from mlops_trainers.cloud38.cli import evaluate_main

    code: int = evaluate_main(args.rest)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlops", description="MLOps runs: validate, render, run locally."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "validate", help="check manifests (schema and semantics); exit 1 naming the field"
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "--local",
        action="store_true",
        help="for `mlops run` on this machine: accept local paths (a cluster refuses them)",
    )
    p.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the peak-memory estimate (it builds the model with TensorFlow)",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print the ConfigMap and Workflow a cluster would get")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--namespace", "-n", help="namespace to render into")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("run", help="train in this process, storage in a local folder (no cluster)")
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--output",
        "-o",
        default=DEFAULT_LOCAL_OUTPUT,
        help=f"output folder or URL prefix (default ./{DEFAULT_LOCAL_OUTPUT})",
    )
    p.add_argument("--data", help="override spec.data (a folder or URL of images)")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    p.add_argument(
        "--tf-logs", action="store_true", help="show TensorFlow's own start-up and info logs"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("schema", help="print the JSON schema of an MLOps manifest")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("crd", help="print the CustomResourceDefinition")
    p.set_defaults(func=cmd_crd)
    p = sub.add_parser("docs", help="print the field tables (Markdown)")
    p.set_defaults(func=cmd_docs)

    p = sub.add_parser(
        "skymask", help="write the classical sky mask of a folder of webcam frames", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_skymask)

    p = sub.add_parser(
        "cloud38-eval",
        help="score a segmenter run (Keras or ONNX) on 38-Cloud's test protocol",
        add_help=False,
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_cloud38_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return int(exc.code or 0)
    code: int = args.func(args)
    return code


def entrypoint() -> None:
    sys.exit(main())
