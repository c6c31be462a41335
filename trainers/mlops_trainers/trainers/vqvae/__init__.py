"""The ``vqvae`` trainer: a VQ-VAE on images (``config.py``, ``trainer.py``, the model and layers)."""
