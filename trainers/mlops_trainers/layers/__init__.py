"""Keras 3 layers (``keras.ops`` only, so every backend runs them), one public class per file."""

from mlops_trainers.trainers.pixelcnn.gated_pixelcnn_block import GatedPixelCNNBlock
from mlops_trainers.trainers.pixelcnn.masked_conv2d import MaskedConv2D
from mlops_trainers.trainers.vqvae.residual_block import ResidualBlock
from mlops_trainers.trainers.vqvae.vector_quantizer import VectorQuantizer

__all__ = ["GatedPixelCNNBlock", "MaskedConv2D", "ResidualBlock", "VectorQuantizer"]
