"""The ``segmenter`` trainer: a U-Net for cloud masks on large multi-band scenes, tiled."""
