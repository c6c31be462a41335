"""The ``mlops`` command: validate, render, run locally, and print the schema/CRD/docs.

Thin: every command reads manifests, calls a pure function of the packages, prints, exits with a
code (0 ok, 1 invalid manifest, 2 usage; ``run`` passes on the trainer's code). ``main(argv) ->
int`` is what the tests call. Manifests come the way kubectl takes them: files, folders (their
``*.yaml``/``*.yml``/``*.json``), ``-`` for stdin, as arguments or ``-f``; a file may hold several
YAML documents, each its own manifest.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click
import yaml
from mlops_api import FieldError, ManifestError, parse_manifest, plan_run
from mlops_api.crd import build_crd
from mlops_api.docs import field_tables
from mlops_api.manifest import load_manifests
from mlops_api.spec import MLOps

DEFAULT_LOCAL_OUTPUT = "mlops-runs"

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2

STDIN = "-"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Document:
    """One manifest of the input: where it came from (said once before each of its errors), and
    either its data or why it could not be read."""

    label: str
    data: Any = None
    error: ManifestError | None = None


def _texts(source: str) -> Iterator[tuple[str, str | ManifestError]]:
    """(label, text or error) of each file a source names: stdin, a file, a folder's files."""
    if source == STDIN:
        yield "<stdin>", sys.stdin.read()
        return
    path = Path(source)
    files = (
        sorted(p for p in path.iterdir() if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
        if path.is_dir()
        else [path]
    )
    if not files:
        yield source, ManifestError([FieldError("", "the folder holds no .yaml/.yml/.json file")])
    for file in files:
        try:
            yield str(file), file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            yield str(file), ManifestError([FieldError("", f"cannot read the file: {reason}")])


def read_documents(sources: Sequence[str]) -> list[Document]:
    """Every manifest the sources hold, in order; a multi-document file's are labelled
    ``FILE[n]`` (from 1) so an error says which one."""
    out: list[Document] = []
    for source in sources:
        for label, text in _texts(source):
            if isinstance(text, ManifestError):
                out.append(Document(label, error=text))
                continue
            try:
                docs = load_manifests(text)
            except ManifestError as exc:
                out.append(Document(label, error=exc))
                continue
            if not docs:
                error = ManifestError([FieldError("", "no manifest in it (empty)")])
                out.append(Document(label, error=error))
            for i, doc in enumerate(docs, 1):
                out.append(Document(f"{label}[{i}]" if len(docs) > 1 else label, data=doc))
    return out


def _fail(label: str, exc: ManifestError) -> int:
    for error in exc.errors:
        click.echo(f"{label}: {error}", err=True)
    return EXIT_INVALID


def _sources(files: Sequence[str], filenames: Sequence[str]) -> list[str]:
    sources = [*filenames, *files]
    if not sources:
        raise click.UsageError("name a manifest: FILE, a folder, or - for stdin (or -f FILE)")
    return sources


def _exits(func: Callable[..., int]) -> Callable[..., None]:
    """A command returns its exit code; click wants it raised."""

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> None:
        sys.exit(func(**kwargs))

    return wrapper


def _files_arguments(func: Callable[..., None]) -> Callable[..., None]:
    func = click.option(
        "-f",
        "--filename",
        "filenames",
        multiple=True,
        metavar="FILE",
        help="a manifest file, a folder of them, or - for stdin (repeatable; as kubectl -f)",
    )(func)
    return click.argument("files", nargs=-1, metavar="[FILE|DIR|-]...")(func)


def _version() -> str:
    try:
        return version("mlops-operator")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="mlops", message="%(prog)s %(version)s")
def cli() -> None:
    """MLOps runs: validate, render, run locally."""


@cli.command()
@_files_arguments
@click.option(
    "--local",
    is_flag=True,
    help="for `mlops run` on this machine: accept local paths (a cluster refuses them)",
)
@click.option(
    "--no-memory",
    is_flag=True,
    help="skip the peak-memory estimate (it builds the model with TensorFlow)",
)
@_exits
def validate(
    files: tuple[str, ...], filenames: tuple[str, ...], local: bool, no_memory: bool
) -> int:
    """Check manifests (schema and semantics); exit 1 naming the field."""
    from mlops_workflows.render import render

    status = EXIT_OK
    for doc in read_documents(_sources(files, filenames)):
        try:
            if doc.error is not None:
                raise doc.error
            obj = parse_manifest(doc.data, cluster=not local)
            rendered = render(obj)  # also checks what only rendering can (ConfigMap size)
            if not no_memory:
                _check_memory(doc.label, obj, rendered.plan.config)
        except ManifestError as exc:
            status = _fail(doc.label, exc)
            continue
        click.echo(f"{doc.label}: valid ({obj.spec.trainer.kind}, run {rendered.plan.run_id})")
    return status


def _check_memory(label: str, obj: MLOps, config: Any) -> None:
    """Refuse a run whose estimated peak memory exceeds the pod's (ManifestError naming the
    numbers); print the estimate otherwise. Builds the model: needs the trainer extra."""
    quiet_tensorflow()
    try:
        from mlops_trainers import memory
    except ImportError as err:  # pragma: no cover - the operator image: no TensorFlow
        click.echo(f"{label}: memory not estimated ({err})", err=True)
        return
    try:
        estimate = memory.estimate_run(config)
    except ImportError as err:
        click.echo(f"{label}: memory not estimated (needs the trainer extra: {err})", err=True)
        return
    if estimate is None:
        click.echo(
            f"{label}: memory not estimated: a {obj.spec.trainer.kind} model depends on what "
            "the run reads",
            err=True,
        )
        return
    resources = obj.spec.resources
    gpu = resources.gpu
    problems = memory.fit_problems(estimate, resources.memory, gpu.count, gpu.type)
    if problems:
        raise ManifestError([FieldError(field, message) for field, message in problems])
    where = "on CPU" if gpu.count == 0 else f"on {gpu.type or 'a GPU of unknown memory'}"
    device = (
        ""
        if gpu.count == 0
        else f", {memory.gib(estimate.on_each_gpu(gpu.count))} on "
        + ("the GPU" if gpu.count == 1 else f"each of its {gpu.count} GPUs (data-parallel)")
    )
    click.echo(
        f"{label}: memory {where}: about {memory.gib(estimate.host(gpu.count > 0))} of "
        f"{resources.memory} host{device} ({estimate.parameters:,} parameters, batch_size "
        f"{estimate.batch_size})",
        err=True,
    )


@cli.command()
@_files_arguments
@click.option("-n", "--namespace", help="namespace to render into")
@click.option(
    "-o",
    "--output",
    "output_format",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="yaml: one stream of documents; json: one v1 List (as kubectl -o json)",
)
@_exits
def render(
    files: tuple[str, ...], filenames: tuple[str, ...], namespace: str | None, output_format: str
) -> int:
    """Print the ConfigMap and Workflow a cluster would get, for each manifest."""
    from mlops_workflows.render import RenderSettings
    from mlops_workflows.render import render as render_run

    objects: list[dict[str, Any]] = []
    status = EXIT_OK
    for doc in read_documents(_sources(files, filenames)):
        try:
            if doc.error is not None:
                raise doc.error
            obj = parse_manifest(doc.data, cluster=True)
            if namespace:
                meta = obj.metadata.model_copy(update={"namespace": namespace})
                obj = obj.model_copy(update={"metadata": meta})
            rendered = render_run(obj, RenderSettings())
        except ManifestError as exc:
            status = _fail(doc.label, exc)
            continue
        objects += [rendered.config_map, rendered.workflow]
    if status != EXIT_OK:  # half a set of objects is worse than none for `| kubectl apply -f -`
        return status
    if output_format == "json":
        items = {"apiVersion": "v1", "kind": "List", "items": objects}
        click.echo(json.dumps(items, indent=2))
    else:
        click.echo(yaml.safe_dump_all(objects, sort_keys=False), nl=False)
    return EXIT_OK


# What TensorFlow's C++ start-up writes to stderr before any log level applies: absl's preamble
# and INFO lines, e.g. oneDNN's "custom operations are on" on CPUs with AVX-512 VNNI or AMX.
_START_UP_NOISE = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ")


def quiet_tensorflow() -> None:
    """No TensorFlow start-up noise (its C++ INFO/WARNING lines, absl's preamble) unless asked:
    set before TensorFlow is first imported. Errors still show."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "2")
    _import_tensorflow_quietly()


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow now, with the process' stderr captured, and pass on every line of it
    but the start-up notices: the log levels above do not reach absl's lines written before its
    logging is initialised (oneDNN's notice came through them on a CPU with AVX-512 VNNI)."""
    import importlib.util
    import tempfile

    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return  # already imported, or not installed (the operator image)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not line.startswith(_START_UP_NOISE):
                    print(line, file=sys.stderr)


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``--set trainer.config.epochs=3`` -> ``{"trainer.config.epochs": 3}``: a dotted path into
    the spec (a leading ``spec.`` is allowed), the value read as YAML (3 is a number, true a
    boolean, "3" a string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix("spec.")
        if not sep or not key or "" in key.split("."):
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE, KEY a dotted path in spec")
        try:
            out[key] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as err:
            raise click.BadParameter(f"{item!r}: the value is not YAML ({err})") from None
    return out


def apply_overrides(data: Any, overrides: dict[str, Any]) -> Any:
    """A copy of the manifest with each dotted spec path set; validation then checks the values
    like any other (so an error names ``spec.<path>``)."""
    if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
        return data  # parse_manifest says what is wrong with it
    out = json.loads(json.dumps(data))  # a deep copy; YAML-loaded data is JSON-like
    for key, value in overrides.items():
        node = out["spec"]
        *parents, last = key.split(".")
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(["spec", *parents[: i + 1]])
                raise ManifestError([FieldError(where, f"is not a mapping: cannot --set {key}")])
            node = child
        node[last] = value
    return out


@cli.command()
@_files_arguments
@click.option(
    "-o",
    "--output",
    default=DEFAULT_LOCAL_OUTPUT,
    show_default=True,
    help="output folder or URL prefix",
)
@click.option("--data", help="train on this folder or URL instead of spec.data (a new run id)")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a spec field, e.g. trainer.config.epochs=3 (repeatable; a new run id)",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="train from scratch under a new run id, even if this run is in the output already "
    "(the old one is kept)",
)
@click.option("--no-progress", is_flag=True, help="log lines instead of a progress bar")
@click.option("--tf-logs", is_flag=True, help="show TensorFlow's own start-up and info logs")
@_exits
def run(
    *,
    files: tuple[str, ...],
    filenames: tuple[str, ...],
    output: str,
    data: str | None,
    sets: tuple[str, ...],
    fresh: bool,
    no_progress: bool,
    tf_logs: bool,
) -> int:
    """Train in this process, storage in a local folder (no cluster).

    Several manifests run one after another, in order; every one is validated before the first
    trains, and the first that fails stops the rest (its exit code is the command's).
    """
    if not tf_logs:
        quiet_tensorflow()
    overrides = parse_set(sets)
    if data is not None:
        overrides["data"] = data
    recorded: dict[str, Any] = {f"spec.{k}": v for k, v in overrides.items()}
    # A new rerun token is a new run id: the old run's folder is left as it is.
    rerun = f"fresh-{time.time_ns()}" if fresh else ""
    if fresh:
        recorded["fresh"] = rerun
    prefix = str(Path(output).resolve()) if "://" not in output else output
    plans = []
    status = EXIT_OK
    for doc in read_documents(_sources(files, filenames)):
        try:
            if doc.error is not None:
                raise doc.error
            # The overrides go into the spec before the run id is computed: it hashes the spec,
            # so other data or another config is another run, never a "resume" of this one.
            obj = parse_manifest(apply_overrides(doc.data, overrides), cluster=False)
            plans.append((obj, plan_run(obj, output=prefix, rerun=rerun, overrides=recorded)))
        except ManifestError as exc:
            status = _fail(doc.label, exc)
    if status != EXIT_OK:
        return status
    # TensorFlow loads only here: validate/render stay fast and work in the operator image.
    from mlops_trainers import storage
    from mlops_trainers.runtime import run as train

    for obj, plan in plans:
        config = plan.config
        if _finished(storage.join(config.output, "run.json")):
            # Nothing to train; running it again would only rewrite its provenance.
            click.echo(
                f"run {plan.run_id}: already finished in {config.output} (--fresh trains it "
                "again under a new run id)",
                err=True,
            )
            continue
        click.echo(
            f"run {plan.run_id}: {obj.spec.trainer.kind} on {config.data} -> {config.output}",
            err=True,
        )
        code: int = train(config, progress=not no_progress)
        if code != EXIT_OK:
            return code
    return EXIT_OK


def _finished(run_json: str) -> bool:
    from mlops_trainers import storage

    try:
        record = storage.read_json(run_json)
    except (FileNotFoundError, ValueError):
        return False
    return isinstance(record, dict) and record.get("state") == "succeeded"


@cli.command()
def schema() -> None:
    """Print the JSON schema of an MLOps manifest."""
    click.echo(json.dumps(MLOps.model_json_schema(by_alias=True), indent=2, sort_keys=True))


@cli.command()
def crd() -> None:
    """Print the CustomResourceDefinition."""
    click.echo(yaml.safe_dump(build_crd(), sort_keys=False), nl=False)


@cli.command()
def docs() -> None:
    """Print the field tables (Markdown)."""
    click.echo(field_tables(), nl=False)


# These hand every argument, --help included, to their own argparse parser.
_PASS_THROUGH = {"ignore_unknown_options": True, "help_option_names": []}


@cli.command(context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def skymask(args: tuple[str, ...]) -> None:
    """Write the classical sky mask of a folder of webcam frames."""
    from mlops_trainers.skymask.cli import main as skymask_main

    sys.exit(skymask_main(list(args)))


@cli.command("cloud38-eval", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def cloud38_eval(args: tuple[str, ...]) -> None:
    """Score a segmenter run (Keras or ONNX) on 38-Cloud's test protocol."""
    quiet_tensorflow()
    from mlops_trainers.cloud38.cli import evaluate_main

    sys.exit(evaluate_main(list(args)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit code instead of exiting (for tests)."""
    try:
        cli.main(args=None if argv is None else list(argv), prog_name="mlops")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_INVALID)
    return EXIT_OK


def entrypoint() -> None:
    sys.exit(main())
