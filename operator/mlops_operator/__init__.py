"""The kopf operator. Importing the package registers the handlers (`kopf run -m mlops_operator`)."""

from mlops_operator import handlers

__all__ = ["handlers"]
