"""Will a run fit its pod? A peak-memory estimate from the model, checked by ``mlops validate``.

The estimate is built from the model itself, on this machine's CPU, without training:

* **weights, gradients, optimizer slots**: the model the trainer builds (its variables exist, so
  the counts are exact: Adam keeps two slots per trainable weight);
* **activations**: the training forward pass traced symbolically at ``batch_size``
  (``tf.function`` on input specs: nothing of batch size is allocated); every float tensor an op
  produces is counted (the backward pass keeps them; a convolution and its bias add count once,
  as TensorFlow fuses them), plus twice the largest one for the gradients in flight at the peak;
* **host only**: the TensorFlow runtime (:data:`RUNTIME_BYTES`, measured: the resident memory of
  a process that has imported TensorFlow and Keras and built a small model, about 0.9 GiB on
  TensorFlow 2.21), the trainer's data in memory (its own bound: the VQ-VAE's decoded-image
  cache of at most 1 GiB, the segmenter's tile stream...), the spike guard's snapshot (a copy of
  weights and optimizer state) and the checkpoint being written.

On a GPU the first group and the activations must fit the GPU (:data:`GPU_MEMORY`, per
``resources.gpu.type``; TensorFlow gets about :data:`GPU_USABLE` of it after the CUDA context),
the rest the pod's ``resources.memory``; on CPU everything must fit ``resources.memory``. It is
an estimate: allocator fragmentation and cuDNN workspaces come on top (tested against a measured
run in ``tests/trainers/test_memory.py``). Trainers whose model depends on something only the run
can read (PixelCNN: the VQ-VAE run's code grid) are not estimated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GIB",
    "GPU_MEMORY",
    "GPU_USABLE",
    "RUNTIME_BYTES",
    "MemoryEstimate",
    "fit_problems",
    "parse_quantity",
]

GIB = 1 << 30
# Measured: RSS of `python -c "import tensorflow, keras"` plus a small model built (tf 2.21).
RUNTIME_BYTES = int(0.9 * GIB)
# Memory per GPU by GKE's accelerator label (cloud.google.com/gke-accelerator).
GPU_MEMORY: dict[str, int] = {
    "nvidia-tesla-k80": 12 * GIB,
    "nvidia-tesla-p4": 8 * GIB,
    "nvidia-tesla-p100": 16 * GIB,
    "nvidia-tesla-v100": 16 * GIB,
    "nvidia-tesla-t4": 16 * GIB,
    "nvidia-l4": 24 * GIB,
    "nvidia-tesla-a100": 40 * GIB,
    "nvidia-a100-80gb": 80 * GIB,
    "nvidia-h100-80gb": 80 * GIB,
    "nvidia-h100-mega-80gb": 80 * GIB,
    "nvidia-h200-141gb": 141 * GIB,
}
# The CUDA context and cuDNN take their share before TensorFlow's allocator gets the rest.
GPU_USABLE = 0.9


def parse_quantity(value: str) -> int:
    """Bytes of a Kubernetes quantity (``16Gi``, ``500M``, ``2e9``), by the grammar the api
    validates ``resources.memory`` with (:mod:`mlops_trainers.quantity`), so both agree."""
    from mlops_trainers.quantity import parse_quantity as amount

    return int(amount(value.strip()))


def gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one training step, by part (bytes)."""

    parameters: int
    batch_size: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    data: int
    data_note: str
    snapshot: int
    runtime: int = RUNTIME_BYTES
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> int:
        """What lives where the model trains (the GPU, or the host on CPU)."""
        return self.weights + self.gradients + self.optimizer + self.activations

    def on_each_gpu(self, count: int) -> int:
        """What each of ``count`` GPUs holds, training data-parallel over them
        (:mod:`mlops_trainers.distribute`): the whole model and optimizer, and the activations
        of its slice of the batch (the largest slice, when the batch does not divide)."""
        return sum(self.parts(gpu=True, gpus=count).values())

    def host(self, gpu: bool) -> int:
        """Resident memory of the trainer process."""
        # The checkpoint being written holds weights and optimizer state once more.
        own = self.runtime + self.data + self.snapshot + self.weights + self.optimizer
        return own + (0 if gpu else self.model)

    def parts(self, gpu: bool, gpus: int = 1) -> dict[str, int]:
        """The named parts of the host (``gpu=False``) or of each of ``gpus`` GPUs' total."""
        share = -(-self.batch_size // max(gpus, 1))  # examples on each GPU (the most)
        activations = (
            f"activations at batch_size {self.batch_size}"
            if share == self.batch_size
            else f"activations of {share} of batch_size {self.batch_size}"
        )
        model = {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer slots": self.optimizer,
            activations: self.activations * share // max(self.batch_size, 1),
        }
        if gpu:
            return model
        return {
            "TensorFlow runtime": self.runtime,
            f"data ({self.data_note})": self.data,
            "spike-guard snapshot": self.snapshot,
            "checkpoint buffer": self.weights + self.optimizer,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "batch_size": self.batch_size,
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "data": self.data,
            "snapshot": self.snapshot,
            "runtime": self.runtime,
        }


def _listing(parts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {gib(value)}" for name, value in parts.items() if value)


def fit_problems(
    estimate: MemoryEstimate, memory: str, gpu_count: int, gpu_type: str | None
) -> list[tuple[str, str]]:
    """``(field path, message)`` for each limit the estimate exceeds, naming the numbers."""
    problems = []
    gpu = gpu_count > 0
    limit = parse_quantity(memory)
    host = estimate.host(gpu)
    if host > limit:
        parts = estimate.parts(gpu=False)
        if not gpu:
            parts = {**estimate.parts(gpu=True), **parts}
        problems.append(
            (
                "spec.resources.memory",
                f"the run needs about {gib(host)} of memory ({_listing(parts)}) but the pod "
                f"gets {gib(limit)} (resources.memory {memory}): raise resources.memory to at "
                f"least {_round_up(host)} or lower batch_size",
            )
        )
    if gpu and gpu_type in GPU_MEMORY:
        usable = GPU_MEMORY[gpu_type] * GPU_USABLE
        need = estimate.on_each_gpu(gpu_count)
        if need > usable:
            bigger = [t for t, m in GPU_MEMORY.items() if m * GPU_USABLE >= need]
            hint = f", or a GPU type with more memory ({bigger[0]})" if bigger else ""
            where = "the GPU" if gpu_count == 1 else f"each of its {gpu_count} GPUs"
            problems.append(
                (
                    "spec.resources.gpu.type",
                    f"the run needs about {gib(need)} on {where} "
                    f"({_listing(estimate.parts(gpu=True, gpus=gpu_count))}) but {gpu_type} has "
                    f"{gib(GPU_MEMORY[gpu_type])} ({gib(usable)} usable): lower batch_size"
                    f"{hint}",
                )
            )
    return problems


def _round_up(value: int) -> str:
    return f"{-(-value // GIB)}Gi"


# === The estimate (TensorFlow) ===

# Ops whose outputs are views, constants or bookkeeping, not new activation memory.
_NOT_ACTIVATIONS = {
    "Const",
    "Identity",
    "IdentityN",
    "NoOp",
    "Placeholder",
    "ReadVariableOp",
    "Reshape",
    "Shape",
    "ShapeN",
    "Size",
    "Squeeze",
    "ExpandDims",
    "StopGradient",
    "VarHandleOp",
    "AssignVariableOp",
    "AssignAddVariableOp",
    "StridedSlice",
}


def _variables_bytes(variables: Any) -> tuple[int, int]:
    count = nbytes = 0
    for variable in variables:
        size = 1
        for dim in variable.shape:
            size *= int(dim)
        count += size
        nbytes += size * _dtype_bytes(variable.dtype)
    return count, nbytes


def _dtype_bytes(dtype: Any) -> int:
    import numpy as np

    return int(np.dtype(str(dtype).replace("tf.", "")).itemsize)


def traced_activations(model: Any, specs: Any) -> tuple[int, int]:
    """(sum, largest) bytes of the float tensors the training forward pass produces, traced
    symbolically at the specs' (batch) shapes."""
    import tensorflow as tf

    def spec(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: spec(v) for k, v in value.items()}
        shape, dtype = value
        return tf.TensorSpec(shape, dtype)

    tensor_specs = spec(specs)

    def forward(x: Any) -> Any:
        return model(x, training=True)

    graph = tf.function(forward).get_concrete_function(tensor_specs).graph
    total = largest = 0
    for op in graph.get_operations():
        if op.type in _NOT_ACTIVATIONS:
            continue
        for out in op.outputs:
            if not out.dtype.is_floating or out.shape.rank is None:
                continue
            consumers = [c.type for c in out.consumers()]
            if consumers and all(c == "BiasAdd" for c in consumers):
                continue  # a convolution and its bias are one tensor (Grappler fuses them)
            dims = out.shape.as_list()
            if any(d is None for d in dims):
                continue
            size = out.dtype.size
            for d in dims:
                size *= d
            total += size
            largest = max(largest, size)
    return total, largest


def estimate(
    model: Any, specs: Any, *, batch_size: int, data: int, data_note: str
) -> MemoryEstimate:
    """The estimate of ``model`` (built, compiled, its optimizer built) training on inputs of
    ``specs`` (a structure of ``(shape, dtype)`` with the batch dimension)."""
    _, trainable_bytes = _variables_bytes(model.trainable_variables)
    count, weights = _variables_bytes(model.weights)
    _, optimizer = _variables_bytes(model.optimizer.variables if model.optimizer else [])
    total, largest = traced_activations(model, specs)
    return MemoryEstimate(
        parameters=count,
        batch_size=batch_size,
        weights=weights,
        gradients=trainable_bytes,
        optimizer=optimizer,
        activations=total + 2 * largest,
        data=data,
        data_note=data_note,
        snapshot=weights + optimizer,
    )


def estimate_run(run: Any) -> MemoryEstimate | None:
    """The estimate of a run file's trainer (None when the trainer cannot say before it runs).

    Builds the trainer's model on this machine (in a scratch folder, nothing is read)."""
    import tempfile
    from pathlib import Path

    from mlops_trainers.trainer import RunContext, get_trainer

    trainer = get_trainer(run.trainer.kind)(run, RunContext(run, Path(tempfile.gettempdir())))
    probe = trainer.memory_probe()
    if probe is None:
        return None
    model, specs, data, data_note = probe
    batch = int(getattr(trainer.config, "batch_size", 1))
    return estimate(model, specs, batch_size=batch, data=data, data_note=data_note)
