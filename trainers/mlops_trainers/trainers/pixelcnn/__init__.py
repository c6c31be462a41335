"""The ``pixelcnn`` trainer: a gated PixelCNN prior over a VQ-VAE run's codes."""
