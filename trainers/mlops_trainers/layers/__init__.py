"""Keras 3 layers shared by several trainers (``keras.ops`` only), one public class per file.

A layer only one trainer uses lives in that trainer's folder.
"""
