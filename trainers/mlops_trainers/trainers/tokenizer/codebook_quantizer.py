"""Codebook of the cloud tokenizer: nearest-code quantisation with no dead codes, by a loss.

* Nearest code in Euclidean distance, straight-through gradients to the encoder, codebook loss
  ``||sg(z) - e||^2`` and commitment loss ``beta * ||z - sg(e)||^2`` (van den Oord et al. 2017,
  arXiv:1711.00937), as in VQGAN and MaskGIT's tokenizer.
* **Unused-code loss.** Codes that no encoder vector picks get no gradient from the codebook loss
  and stay dead forever: index collapse (Kaiser et al. 2018, arXiv:1803.03382; Łańcucki et al.
  2020, arXiv:2005.08520, who re-initialise dead codes). Here a code unused in the batch is instead
  *pulled* towards its closest encoder vector, ``min_n ||sg(z_n) - e_k||^2``: a differentiable,
  stateless version of re-initialisation. Unlike a restart it needs no usage statistics, no RNG
  state in the checkpoint, and it cannot overwrite a code that is rare but useful (a used code
  feels no pull); unlike EMA codebooks it keeps one plain optimiser for everything.
* A *weight* per latent (the fraction of sky, and of real pixels, in its receptive patch) scales
  every term, so ground and padding neither shape the codebook nor count as usage.

The layer returns its scalar losses and statistics instead of calling ``add_loss``: the model's
``compute_loss`` adds them explicitly, which reads plainly and works the same on every backend.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mlops_trainers.distribute import all_reduce_min, all_reduce_sum, mean_count
from mlops_trainers.layers.quantizer import Quantizer


@keras.saving.register_keras_serializable(package="mlops_trainers")
class CodebookQuantizer(Quantizer):
    """``z (B, H, W, D) [, weight (B, H, W)] -> dict``.

    The output dict holds ``quantized`` (B, H, W, D) with straight-through gradients, ``codes``
    (B, H, W) int32, the scalar losses ``codebook_loss``, ``commitment_loss``, ``unused_loss``,
    their weighted sum ``vq_loss``, and the batch statistics ``perplexity`` and ``codes_used``.

    Args:
        num_embeddings: codebook size K.
        embedding_dim: dimension D of each code.
        beta: commitment loss weight.
        unused_code_weight: weight of the loss pulling unused codes to their nearest encoder vector.
        **kwargs: forwarded to ``keras.layers.Layer``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        beta: float = 0.25,
        unused_code_weight: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, **kwargs)
        self.beta = beta
        self.unused_code_weight = unused_code_weight

    def build(self, input_shape: tuple[int | None, ...] | None = None) -> None:
        # Small uniform codes around 0 (the original VQ-VAE's initialisation): few codes win at
        # first, and the unused-code loss then spreads the rest over the encoder's outputs.
        scale = 1.0 / self.num_embeddings
        self.embeddings = self.add_weight(
            shape=(self.num_embeddings, self.embedding_dim),
            initializer=keras.initializers.RandomUniform(-scale, scale),
            trainable=True,
            name="embeddings",
        )
        self.built = True

    def call(self, inputs: Any, weight: Any = None) -> dict[str, Any]:
        shape = ops.shape(inputs)
        flat = ops.reshape(inputs, (-1, self.embedding_dim))
        n = ops.shape(flat)[0]
        if weight is None:
            w = ops.ones((n,), dtype=flat.dtype)
        else:
            w = ops.reshape(ops.cast(weight, flat.dtype), (-1,))

        # Distances with the encoder side frozen: they serve the assignment, the codebook loss and
        # the unused-code loss, all of which move codes, never the encoder.
        dist = self.distances(ops.stop_gradient(flat))
        indices = ops.cast(ops.argmin(dist, axis=1), "int32")
        quantized = self.lookup(indices)

        # Data-parallel: the global batch's weighted means (mlops_trainers.distribute).
        shared = ops.maximum(mean_count(ops.sum(w)), 1e-6)
        per_vector = ops.mean((ops.stop_gradient(flat) - quantized) ** 2, axis=1)
        codebook_loss = ops.sum(w * per_vector) / shared
        commit = ops.mean((flat - ops.stop_gradient(quantized)) ** 2, axis=1)
        commitment_loss = ops.sum(w * commit) / shared

        # Usage of each code over the weighted (sky) latents of this batch (data-parallel: of
        # the global batch, as the nearest vectors below: mlops_trainers.distribute).
        onehot = ops.one_hot(indices, self.num_embeddings, dtype=flat.dtype)
        usage = all_reduce_sum(ops.sum(onehot * w[:, None], axis=0))
        total = ops.maximum(all_reduce_sum(ops.sum(w)), 1e-6)
        used = ops.cast(usage > 0, flat.dtype)
        # Nearest *weighted* encoder vector per code: latents with no sky are out of reach.
        reachable = ops.where(w[:, None] > 0, dist, ops.full_like(dist, 1e9))
        nearest = all_reduce_min(ops.min(reachable, axis=0)) / self.embedding_dim
        unused = 1.0 - used
        unused_loss = ops.sum(unused * ops.minimum(nearest, 1e6)) / ops.maximum(
            ops.sum(unused), 1.0
        )

        probs = usage / total
        perplexity = ops.exp(-ops.sum(probs * ops.log(probs + 1e-10)))
        vq_loss = (
            codebook_loss + self.beta * commitment_loss + self.unused_code_weight * unused_loss
        )

        straight_through = flat + ops.stop_gradient(quantized - flat)
        return {
            "quantized": ops.reshape(straight_through, shape),
            "codes": ops.reshape(indices, shape[:-1]),
            "codebook_loss": codebook_loss,
            "commitment_loss": commitment_loss,
            "unused_loss": unused_loss,
            "vq_loss": vq_loss,
            "perplexity": perplexity,
            "codes_used": ops.sum(used),
        }

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> Any:
        return {
            "quantized": input_shape,
            "codes": input_shape[:-1],
            **{
                k: ()
                for k in (
                    "codebook_loss",
                    "commitment_loss",
                    "unused_loss",
                    "vq_loss",
                    "perplexity",
                    "codes_used",
                )
            },
        }

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {
                "beta": self.beta,
                "unused_code_weight": self.unused_code_weight,
            }
        )
        return config
