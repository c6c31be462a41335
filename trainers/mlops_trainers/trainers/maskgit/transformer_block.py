"""A pre-norm transformer encoder block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``.

Bidirectional (no attention mask): every token sees every other, as in BERT (Devlin et al. 2019,
arXiv:1810.04805) and MaskGIT's transformer. Layer norm before each sub-layer (Xiong et al. 2020,
arXiv:2002.04745) trains stably without a learning-rate warm-up, which matters for the short CPU
runs here; GELU in the MLP as in both.
"""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="mlops_trainers")
class TransformerBlock(keras.layers.Layer):  # type: ignore[misc,unused-ignore]
    """(B, N, dim) -> (B, N, dim).

    Args:
        dim: width of the token vectors.
        heads: attention heads (must divide ``dim``).
        mlp_dim: hidden width of the MLP.
        dropout: dropout on the attention weights and after each sub-layer.
        **kwargs: forwarded to ``keras.layers.Layer``.
    """

    def __init__(
        self, dim: int, heads: int = 4, mlp_dim: int = 128, dropout: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if dim % heads:
            raise ValueError(f"heads ({heads}) must divide dim ({dim})")
        self.dim = dim
        self.heads = heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        policy = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-6, dtype=policy, name="norm1")
        self.attention = keras.layers.MultiHeadAttention(
            heads, dim // heads, dropout=dropout, dtype=policy, name="attention"
        )
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-6, dtype=policy, name="norm2")
        self.hidden = keras.layers.Dense(mlp_dim, activation="gelu", dtype=policy, name="hidden")
        self.out = keras.layers.Dense(dim, dtype=policy, name="out")
        self.drop = keras.layers.Dropout(dropout, dtype=policy, name="drop")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.norm1.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.norm2.build(input_shape)
        self.hidden.build(input_shape)
        self.out.build((*input_shape[:-1], self.mlp_dim))
        self.built = True

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        x = self.norm1(inputs)
        x = inputs + self.drop(self.attention(x, x, training=training), training=training)
        y = self.out(self.hidden(self.norm2(x)))
        return x + self.drop(y, training=training)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {"dim": self.dim, "heads": self.heads, "mlp_dim": self.mlp_dim, "dropout": self.dropout}
        )
        return config
