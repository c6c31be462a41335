"""One step of a convolutional LSTM whose state the caller carries (Shi et al. 2015,
arXiv:1506.04214).

Keras' ``ConvLSTM2D`` consumes a whole sequence at once; the VLE loop needs one step at a time,
because each step's input (the residual ``x - rec``) depends on the previous step's output. The
four gates come from one convolution over ``[x, h]`` (the same as separate input and recurrent
convolutions with one bias); the peephole terms of Shi et al. are left out, as in Keras'
``ConvLSTM2D``. The forget gate's bias starts at 1 (Jozefowicz et al. 2015, "An empirical
exploration of recurrent network architectures"), so the state is kept by default early on.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mlops_trainers")
class ConvLSTMCell(keras.layers.Layer):  # type: ignore[misc,unused-ignore]
    """``(x (B, H, W, C), (h, c)) -> (h', (h', c'))`` with ``h, c`` of shape (B, H, W, filters).

    Args:
        filters: channels of the hidden and cell states.
        kernel_size: odd kernel size of the gate convolution.
        **kwargs: forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, filters: int, kernel_size: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.gates = keras.layers.Conv2D(
            4 * filters,
            kernel_size,
            padding="same",
            bias_initializer=_ForgetBiasOne(filters),
            dtype=self.dtype_policy,
            name="gates",
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.gates.build((*input_shape[:-1], int(input_shape[-1]) + self.filters))  # type: ignore[arg-type]
        self.built = True

    def initial_state(self, inputs: Any) -> tuple[Any, Any]:
        """Zero ``(h, c)`` for inputs of shape (B, H, W, C)."""
        shape = ops.shape(inputs)
        zeros = ops.zeros((shape[0], shape[1], shape[2], self.filters), dtype=inputs.dtype)
        return zeros, zeros

    def call(self, inputs: Any, states: tuple[Any, Any]) -> tuple[Any, tuple[Any, Any]]:
        h, c = states
        z = self.gates(ops.concatenate([inputs, h], axis=-1))
        i, f, o, g = ops.split(z, 4, axis=-1)
        c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
        h = ops.sigmoid(o) * ops.tanh(c)
        return h, (h, c)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> Any:
        state = (*input_shape[:-1], self.filters)
        return state, (state, state)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"filters": self.filters, "kernel_size": self.kernel_size})
        return config


@keras.saving.register_keras_serializable(package="mlops_trainers")
class _ForgetBiasOne(keras.initializers.Initializer):  # type: ignore[misc,unused-ignore]
    """Bias of the gates ``[i, f, o, g]``: 1 for the forget gate, 0 elsewhere."""

    def __init__(self, filters: int) -> None:
        self.filters = filters

    def __call__(self, shape: Any, dtype: Any = None) -> Any:
        bias = ops.zeros(shape, dtype=dtype)
        forget = ops.arange(shape[0]) // self.filters == 1
        return ops.where(forget, ops.ones_like(bias), bias)

    def get_config(self) -> dict[str, Any]:
        return {"filters": self.filters}
