"""The base of the codebook quantizers: nearest code, code indices, code vectors.

:class:`~mlops_trainers.trainers.vqvae.vector_quantizer.VectorQuantizer` (EMA codebook, dead-code
restarts) and :class:`~mlops_trainers.trainers.tokenizer.codebook_quantizer.CodebookQuantizer`
(unused-code loss, per-latent weights) differ in how the codebook learns; how a vector finds its
code is the same, and written once here. A subclass creates the ``embeddings`` weight (K, D) in
its ``build``, with its own initialiser and trainability.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


class Quantizer(keras.layers.Layer):  # type: ignore[misc,unused-ignore]
    """Nearest-code quantisation over a codebook ``embeddings`` (K, D) that subclasses build.

    Args:
        num_embeddings: codebook size K.
        embedding_dim: dimension D of each code.
        **kwargs: forwarded to ``keras.layers.Layer``.
    """

    embeddings: Any

    def __init__(self, num_embeddings: int, embedding_dim: int, **kwargs: Any) -> None:
        # float32 under any mixed policy (inputs are cast on the way in): an argmin over nearly
        # equal 16-bit distances picks codes by rounding, and the EMA statistics and code
        # losses are sums that float16 overflows.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim

    def distances(self, flat: Any, embeddings: Any = None) -> Any:
        """Squared distances (N, K) between vectors (N, D) and the codes (K, D).

        ``embeddings`` defaults to the codebook; a caller that already holds it as a tensor
        (or a stop-gradient of it) passes it.
        """
        if embeddings is None:
            embeddings = ops.convert_to_tensor(self.embeddings)
        # Also when called directly (codes(), not through the layer's autocasting __call__).
        flat, embeddings = ops.cast(flat, "float32"), ops.cast(embeddings, "float32")
        return (
            ops.sum(flat**2, axis=1, keepdims=True)
            - 2.0 * ops.matmul(flat, ops.transpose(embeddings))
            + ops.sum(embeddings**2, axis=1)[None, :]
        )

    def codes(self, inputs: Any) -> Any:
        """Code indices (B, H, W) int32 of encoder outputs (B, H, W, D), without any update."""
        flat = ops.reshape(inputs, (-1, self.embedding_dim))
        indices = ops.cast(ops.argmin(self.distances(flat), axis=1), "int32")
        return ops.reshape(indices, ops.shape(inputs)[:-1])

    def lookup(self, codes: Any) -> Any:
        """Code vectors (..., D) of indices (...)."""
        return ops.take(ops.convert_to_tensor(self.embeddings), ops.cast(codes, "int32"), axis=0)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim})
        return config
