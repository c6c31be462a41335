"""The ``vle`` trainer: variable-length embeddings, an image told in 1..T tokens of residual."""
