"""Kubernetes resource quantities (``500m``, ``4``, ``16Gi``, ``2e9``), read as the API server
reads them.

The grammar is apimachinery's (``k8s.io/apimachinery/pkg/api/resource/quantity.go``): a signed
decimal number, then one suffix: binary ``Ki Mi Gi Ti Pi Ei``, decimal ``n u m k M G T P E`` or
none, or an exponent ``e``/``E`` and an integer. The Kubernetes Python client's parser, used here
before, is looser: it took ``1K`` (the API server refuses an upper-case ``K``), and any text
Python's ``Decimal`` reads. Here, not in the api: the api's validation and the trainers' memory
estimate share it, and the api imports the trainers' package, never the other way round.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["parse_quantity"]

_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>[KMGTPE]i)|(?P<decimal>[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?"
)
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
# apimachinery reads the exponent as a 32-bit integer.
_EXPONENT_MAX = 2**31 - 1


def parse_quantity(text: str) -> Decimal:
    """The amount ``text`` stands for (``1.5Gi`` -> 1610612736); ValueError if the API server
    would refuse it."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    try:
        amount = Decimal(match["number"])
        if match["binary"]:
            return amount * Decimal(2 ** _BINARY[match["binary"]])
        if match["decimal"]:
            return amount.scaleb(_DECIMAL[match["decimal"]])
        if match["exponent"]:
            exponent = int(match["exponent"])
            if abs(exponent) > _EXPONENT_MAX:
                raise ValueError(f"{text!r}: the exponent is out of range")
            return amount.scaleb(exponent)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from None
    return amount
