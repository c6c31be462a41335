"""Keras 3 models, one public class per file."""
