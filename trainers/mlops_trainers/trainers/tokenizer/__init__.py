"""The ``tokenizer`` trainer: a VQGAN tokenizer of the sky in fixed-webcam frames."""
