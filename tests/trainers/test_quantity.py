"""Kubernetes quantities as the API server reads them (apimachinery's grammar); the e2e suite
checks the same table against a real API server (tests/e2e/test_quantities.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from mlops_trainers.quantity import parse_quantity

VALID = {
    "4": Decimal(4), "500m": Decimal("0.5"), "16Gi": Decimal(16 * 2**30),
    "1.5Gi": Decimal(3 * 2**29), "2e9": Decimal(2 * 10**9), "1E": Decimal(10**18),
    "1e-3": Decimal("0.001"), ".5": Decimal("0.5"), "1.": Decimal(1), "+4": Decimal(4),
    "100k": Decimal(100_000), "7u": Decimal("0.000007"), "3n": Decimal("0.000000003"),
    "2Ki": Decimal(2048), "1E+2": Decimal(100),
}  # fmt: skip
# Refused by the API server, though Python's Decimal or the Kubernetes client's parser took some.
INVALID = [
    "", "1K", "1ki", "1e", "1e3.5", "Infinity", "NaN", "1 Gi", "16GB", "\u0664",
    "1_000", "0x10", "--1", "1.5.5", "1Gib",
]  # fmt: skip
# Refused here, though the API server takes them: never a value a user meant.
STRICTER = {
    " 1": "space around the number (the API server trims it)",
    "Gi": "a suffix without a number (the API server reads it as 0)",
}


@pytest.mark.parametrize("text", sorted(VALID))
def test_valid_quantities_have_their_amount(text: str) -> None:
    assert parse_quantity(text) == VALID[text]


@pytest.mark.parametrize("text", [*INVALID, *STRICTER])
def test_what_the_api_server_refuses_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)
