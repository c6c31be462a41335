"""Mixed precision and XLA for every trainer, chosen per device, with no code in the trainers.

Two shared trainer options (:class:`~mlops_trainers.config_base.TrainerConfig`):

* ``precision``: the Keras dtype policy the model is built under. ``mixed_bfloat16`` and
  ``mixed_float16`` compute in 16 bits and keep the variables (and so the checkpoints) in
  float32; under ``mixed_float16`` Keras' ``compile`` wraps the optimizer in a
  ``LossScaleOptimizer`` (float16 gradients underflow without it). ``auto`` picks what the
  device does fast: bfloat16 on GPUs with compute capability 8.0 and up (A100, L4, H100: same
  range as float32, no loss scale), float16 on 7.x (V100, T4: tensor cores, loss scaled), float32
  on older GPUs and on the CPU, where 16-bit math is emulated and slower.
* ``jit_compile``: whether the train step is compiled with XLA (``on``/``off``); ``auto`` is on
  with a GPU and off on the CPU (Keras' own rule, which also turns it off under a distribution
  strategy; XLA's compile time does not pay back on a CPU). Training data-parallel on several
  GPUs (:mod:`mlops_trainers.distribute`) it is off whatever it says.

What must stay float32 under a 16-bit policy does so in the layers themselves: the quantizers'
codebook distances (an argmin over nearly equal float16 distances picks the wrong code) and
every loss and metric (sums over a batch overflow float16's 65504).

The resolved choice is logged and written into each checkpoint's manifest: a run resumed under a
policy whose optimizer state has another layout (loss-scaled or not) is refused with a message
naming the option, not a shape error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import keras

__all__ = [
    "JIT_CHOICES",
    "PRECISIONS",
    "Acceleration",
    "Gpu",
    "apply_jit",
    "as_float32",
    "dtype_policy",
    "loss_scaled",
    "resolve",
    "visible_gpus",
]

log = logging.getLogger("mlops_trainers")

Precision = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
JitChoice = Literal["auto", "on", "off"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES: tuple[str, ...] = ("auto", "on", "off")


@dataclass(frozen=True)
class Gpu:
    """A GPU TensorFlow sees: its name and CUDA compute capability (None when not reported)."""

    name: str
    capability: tuple[int, int] | None


@dataclass(frozen=True)
class Acceleration:
    """What a run trains with: the Keras dtype policy and whether XLA compiles the step."""

    policy: str  # "float32", "mixed_float16" or "mixed_bfloat16"
    jit_compile: bool
    why: str  # for the log: what "auto" saw

    def describe(self) -> str:
        return f"precision {self.policy}, XLA {'on' if self.jit_compile else 'off'} ({self.why})"


def resolve(
    precision: str, jit_compile: str, gpus: Sequence[Gpu], *, replicas: int = 1
) -> Acceleration:
    """The policy and XLA choice for ``precision``/``jit_compile`` on a machine with ``gpus``,
    training data-parallel over ``replicas`` devices (:mod:`mlops_trainers.distribute`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    if jit_compile not in JIT_CHOICES:
        raise ValueError(f"jit_compile {jit_compile!r}: one of {', '.join(JIT_CHOICES)}")
    if gpus:
        # The slowest GPU sets the pace of a data-parallel step, and one policy serves all.
        known = [g.capability for g in gpus if g.capability is not None]
        capability = min(known) if known else None
        seen = f"{len(gpus)} GPU(s), compute capability " + (
            ".".join(map(str, capability)) if capability else "unknown"
        )
    else:
        capability, seen = None, "CPU only"
    if precision == "auto":
        if capability is not None and capability >= (8, 0):
            policy = "mixed_bfloat16"
        elif capability is not None and capability >= (7, 0):
            policy = "mixed_float16"
        else:
            policy = "float32"
    else:
        policy = precision
    jit = bool(gpus) if jit_compile == "auto" else jit_compile == "on"
    if replicas > 1:
        # Keras compiles the whole step, strategy.run included, and XLA cannot reach the other
        # replicas' variables ("Trying to access resource ... located in device ... CPU:1"):
        # data-parallel steps run without it ("auto" is Keras' own rule too).
        if jit_compile == "on":
            log.warning("jit_compile: on is ignored when training on %d replicas", replicas)
        jit = False
        seen += f", {replicas} replicas: no XLA"
    return Acceleration(policy, jit, seen)


def visible_gpus() -> list[Gpu]:
    """The GPUs TensorFlow sees (none without TensorFlow or a GPU)."""
    try:
        import tensorflow as tf
    except ImportError:
        return []
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        capability = details.get("compute_capability")
        gpus.append(
            Gpu(
                str(details.get("device_name") or device.name),
                (int(capability[0]), int(capability[1])) if capability else None,
            )
        )
    return gpus


def loss_scaled(policy: str) -> bool:
    """Whether the optimizer under ``policy`` is a LossScaleOptimizer (another state layout)."""
    return policy == "mixed_float16"


@contextmanager
def dtype_policy(policy: str) -> Iterator[None]:
    """Build models under ``policy`` (Keras' global policy), and put the previous one back: a
    process running several runs (tests, ``mlops run`` twice) must not inherit a run's."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def apply_jit(model: keras.Model, on: bool) -> bool:
    """Compile ``model``'s train step with XLA or not (before its first step: Keras traces the
    train function then); returns what took effect (Keras refuses XLA for some models)."""
    model.jit_compile = on
    # The train function, if one was made already (a trainer that stepped in build_model), is
    # remade with the new setting at the next step.
    model.train_function = None
    effective = bool(model.jit_compile)
    if on and not effective:
        log.warning("XLA was asked for but Keras does not support it for this model: off")
    return effective


def as_float32(tree: Any) -> Any:
    """``tree`` with its floating tensors cast to float32: a model's outputs before its losses
    and metrics (under a 16-bit policy they arrive in float16 or bfloat16)."""
    import keras
    from keras import ops

    def cast(value: Any) -> Any:
        if value is None or not hasattr(value, "dtype"):
            return value
        dtype = keras.backend.standardize_dtype(value.dtype)
        return ops.cast(value, "float32") if dtype in ("float16", "bfloat16") else value

    return keras.tree.map_structure(cast, tree)
