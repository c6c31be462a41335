"""The tokenizer's GroupNorm (a closed-form gradient) is Keras' GroupNorm: the same outputs and
gradients (also for a large mean, a dynamic spatial size, rank 3, one group or one per channel, and
under mixed precision), the same weights in a saved file (a checkpoint written with Keras' layer
loads into it, and back), and Keras' own code where its fast path does not apply.

Its speed is measured in ``bench/`` (``train_tokenizer``, ``profile_tokenizer``), not here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from mlops_trainers.trainers.tokenizer import group_norm_residual_block as block_module
from mlops_trainers.trainers.tokenizer import residual_upsample_block as upsample_module
from mlops_trainers.trainers.tokenizer import tokenizer as tokenizer_module
from mlops_trainers.trainers.tokenizer.group_normalization import GroupNormalization
from mlops_trainers.trainers.tokenizer.tokenizer import Tokenizer

TINY: dict[str, Any] = {
    "base_filters": 8,
    "channel_multipliers": (1, 2),
    "num_embeddings": 16,
    "latent_dim": 4,
    "groups": 4,
}

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="gradients taken with tf.GradientTape"
)


def _pair(groups: int, shape: tuple[int | None, ...], **kwargs: Any) -> tuple[Any, Any]:
    """Keras' layer and ours, built for ``shape``, with the same random gamma and beta."""
    theirs, ours, _ = _layers(groups, shape, **kwargs)
    return theirs, ours


def _layers(groups: int, shape: tuple[int | None, ...], **kwargs: Any) -> tuple[Any, Any, Any]:
    """Keras' layer, ours, and Keras' layer in float64 (the truth both are held to), built for
    ``shape``, with the same random gamma and beta."""
    rng = np.random.default_rng(groups)
    layers = []
    for cls, more in (
        (keras.layers.GroupNormalization, {}),
        (GroupNormalization, {}),
        (keras.layers.GroupNormalization, {"dtype": "float64"}),
    ):
        layer = cls(groups, **{**kwargs, **more})
        layer.build(shape)
        layers.append(layer)
    for weight in zip(*(layer.weights for layer in layers), strict=True):
        value = rng.uniform(0.5, 1.5, weight[0].shape)
        for w in weight:
            w.assign(value.astype(w.dtype))
    return layers[0], layers[1], layers[2]


def _forward_backward(layer: Any, x: np.ndarray, upstream: np.ndarray) -> list[np.ndarray]:
    """The output, and the gradients of ``sum(output * upstream)`` for x, gamma and beta, from a
    compiled function over any spatial size (as the tokenizer's model takes)."""
    axis = layer.axis % x.ndim
    dtype = tf.float64 if layer.compute_dtype == "float64" else tf.float32
    spec = tf.TensorSpec([x.shape[i] if i == axis else None for i in range(x.ndim)], dtype)

    @tf.function(input_signature=[spec, spec])
    def run(x: Any, upstream: Any) -> list[Any]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, dtype) * upstream)
        return [y, *tape.gradient(loss, [x, *layer.trainable_weights])]

    return [
        np.asarray(t, np.float64)
        for t in run(x.astype(dtype.as_numpy_dtype), upstream.astype(dtype.as_numpy_dtype))
    ]


def _assert_same(ours: list[np.ndarray], theirs: list[np.ndarray], rtol: float) -> None:
    """Output and gradients (x, then the weights the layer has) within ``rtol`` of the largest
    magnitude of each."""
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        scale = float(np.max(np.abs(b))) or 1.0
        assert float(np.max(np.abs(a - b))) <= rtol * scale, f"output {i}"


@pytest.mark.parametrize(
    ("shape", "groups", "offset"),
    [
        ((4, 16, 16, 16), 4, 0.5),
        ((4, 16, 16, 16), 4, 100.0),  # the variance is two-pass: a large mean does not cancel it
        ((2, 8, 12, 32), 1, 0.0),  # one group: LayerNorm over H, W, C
        ((2, 8, 8, 8), 8, -3.0),  # one channel per group: InstanceNorm
        ((3, 20, 12), 3, 1.0),  # rank 3 (N, L, C)
    ],
)
def test_matches_keras_forward_and_gradients(
    shape: tuple[int, ...], groups: int, offset: float
) -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * 2 + offset).astype(np.float32)
    upstream = rng.normal(size=shape).astype(np.float32)
    theirs, ours, truth = _layers(groups, (None,) * (len(shape) - 1) + shape[-1:])
    exact = _forward_backward(truth, x, upstream)
    keras_error = _errors(_forward_backward(theirs, x, upstream), exact)
    # As close to the float64 result as Keras' own float32 layer is, or within 1e-6 of it.
    for name, error, bound in zip(
        ("output", "dx", "dgamma", "dbeta"),
        _errors(_forward_backward(ours, x, upstream), exact),
        keras_error,
        strict=True,
    ):
        assert error <= max(2 * bound, 1e-6), (name, error, bound)


def _errors(values: list[np.ndarray], exact: list[np.ndarray]) -> list[float]:
    """Each value's largest error, relative to the exact value's largest magnitude."""
    return [
        float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) or 1.0))
        for a, b in zip(values, exact, strict=True)
    ]


def test_one_compiled_function_serves_any_spatial_size() -> None:
    theirs, ours = _pair(4, (None, None, None, 8))
    rng = np.random.default_rng(1)
    for size in (8, 12, 32):
        x = rng.normal(size=(2, size, size, 8)).astype(np.float32)
        assert np.allclose(ours(x), theirs(x), atol=1e-5)


def test_mixed_precision_keeps_float32_statistics() -> None:
    # Keras computes GroupNorm's statistics in float32 under a float16 policy; so does ours,
    # and both return the policy's float16.
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(2, 8, 8, 16)) * 3 + 20).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    theirs, ours = _pair(4, (None, None, None, 16), dtype="mixed_float16")
    a, b = _forward_backward(ours, x, upstream), _forward_backward(theirs, x, upstream)
    assert ours(x).dtype == theirs(x).dtype == "float16"
    assert ours.gamma.dtype == "float32"
    _assert_same(a, b, 2e-3)


def test_falls_back_to_keras_where_the_fast_path_does_not_apply() -> None:
    rng = np.random.default_rng(3)
    for kwargs, shape in (
        ({"axis": 1}, (2, 8, 6, 6)),  # channels first
        ({"scale": False}, (2, 6, 6, 8)),
        ({"center": False}, (2, 6, 6, 8)),
    ):
        x = rng.normal(size=shape).astype(np.float32)
        upstream = rng.normal(size=shape).astype(np.float32)
        built = tuple(n if i == kwargs.get("axis", 3) else None for i, n in enumerate(shape))
        theirs, ours = _pair(4, built, **kwargs)
        _assert_same(
            _forward_backward(ours, x, upstream), _forward_backward(theirs, x, upstream), 0
        )


def test_round_trips_as_our_class() -> None:
    layer = GroupNormalization(4, epsilon=1e-5, name="gn")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is GroupNormalization
    assert again.get_config() == layer.get_config()


@pytest.fixture()
def keras_layer_tokenizer(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Tokenizer]:
    """Builds a Tokenizer as it was before this layer: with Keras' GroupNormalization."""

    def build() -> Tokenizer:
        with monkeypatch.context() as patch:
            for module in (block_module, upsample_module, tokenizer_module):
                patch.setattr(module, "GroupNormalization", keras.layers.GroupNormalization)
            return Tokenizer(channels=3, **TINY, name="tokenizer")

    return build


def test_checkpoints_of_keras_layer_load_and_back(
    keras_layer_tokenizer: Callable[[], Tokenizer], tmp_path: Path
) -> None:
    # Keras addresses a layer in a weights file by its class name: ours keeps Keras' name, so
    # a run's checkpoint written before this layer resumes with it (and the other way round).
    old = keras_layer_tokenizer()
    new = Tokenizer(channels=3, **TINY, name="tokenizer")
    assert any(isinstance(layer, GroupNormalization) for layer in _sublayers(new))
    assert not any(isinstance(layer, GroupNormalization) for layer in _sublayers(old))
    rng = np.random.default_rng(4)
    old.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in old.get_weights()])
    images = rng.random((2, 16, 16, 3)).astype(np.float32)
    old.save_weights(tmp_path / "old.weights.h5")
    new.load_weights(tmp_path / "old.weights.h5")
    assert np.allclose(new(images)["reconstruction"], old(images)["reconstruction"], atol=1e-4)
    new.set_weights([w * 0.5 for w in new.get_weights()])
    new.save_weights(tmp_path / "new.weights.h5")
    old.load_weights(tmp_path / "new.weights.h5")
    assert np.allclose(old(images)["reconstruction"], new(images)["reconstruction"], atol=1e-4)


def _sublayers(model: Any) -> list[Any]:
    return list(model._flatten_layers(include_self=False, recursive=True))
