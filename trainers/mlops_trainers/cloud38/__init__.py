"""Cloud-mask scenes for the segmenter (this package imports none of its parts).

* :mod:`~mlops_trainers.cloud38.layout`: the dataset layout (scenes, masks, split file lists)
* :mod:`~mlops_trainers.cloud38.convert`: 38-Cloud into that layout
* :mod:`~mlops_trainers.cloud38.synthetic`: scenes with known masks (``sample://clouds``)
* :mod:`~mlops_trainers.cloud38.cli`: ``python -m mlops_trainers.cloud38 SOURCE DEST``
"""
