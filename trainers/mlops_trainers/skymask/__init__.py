"""The classical sky mask of a fixed webcam, in five parts (this package imports none of them).

* :mod:`~mlops_trainers.skymask.config`: its parameters (pure pydantic; the tokenizer config nests it)
* :mod:`~mlops_trainers.skymask.algorithm`: the mask of a sequence of frames (NumPy, SciPy)
* :mod:`~mlops_trainers.skymask.frames`: a camera folder's frames and mask files (fsspec)
* :mod:`~mlops_trainers.skymask.cli`: ``mlops skymask`` / ``python -m mlops_trainers.skymask``
* :mod:`~mlops_trainers.skymask.synthetic`: sequences with a known sky (``sample://webcam``)
"""
