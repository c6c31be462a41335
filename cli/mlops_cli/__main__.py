"""``python -m mlops_cli``: the ``mlops`` command without its console script."""

from mlops_cli.main import entrypoint

entrypoint()
