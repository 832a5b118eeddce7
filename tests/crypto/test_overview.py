"""The runnable example in obrolan.crypto's module docstring."""

from __future__ import annotations

import doctest

import obrolan.crypto


def test_crypto_docstring_example_runs() -> None:
    """The account → one-time key → pre-key → inbound → reply example passes as a doctest."""
    result = doctest.testmod(obrolan.crypto, raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0
