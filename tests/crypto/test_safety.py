"""Safety numbers: symmetric, 60 digits, and reproducible from the documented algorithm."""

from __future__ import annotations

import re

import pytest

from obrolan.crypto import DeviceIdentity, safety_number
from obrolan.errors import CryptoError

_KEY_0_TO_31 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
_KEY_32_TO_63 = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8"


def test_safety_number_is_symmetric() -> None:
    """Both parties compute the same number whichever side they are."""
    alice, bob = DeviceIdentity.create(), DeviceIdentity.create()
    assert safety_number("alice", alice.ed25519, "bob", bob.ed25519) == safety_number(
        "bob", bob.ed25519, "alice", alice.ed25519
    )


def test_safety_number_has_60_digits_in_12_groups() -> None:
    """The number reads as 12 groups of 5 digits separated by single spaces."""
    alice, bob = DeviceIdentity.create(), DeviceIdentity.create()
    number = safety_number("alice", alice.ed25519, "bob", bob.ed25519)
    assert re.fullmatch(r"\d{5}( \d{5}){11}", number)


def test_safety_number_changes_when_a_key_or_username_changes() -> None:
    """A new key on either side, or another username, gives a different number."""
    alice, bob, mallory = (DeviceIdentity.create() for _ in range(3))
    number = safety_number("alice", alice.ed25519, "bob", bob.ed25519)
    assert safety_number("alice", alice.ed25519, "bob", mallory.ed25519) != number
    assert safety_number("alice", mallory.ed25519, "bob", bob.ed25519) != number
    assert safety_number("alice", alice.ed25519, "bobby", bob.ed25519) != number


def test_safety_number_matches_documented_test_vector() -> None:
    """The module docstring's vector (which docs/protocol.md repeats) still holds."""
    assert safety_number("alice", _KEY_0_TO_31, "bob", _KEY_32_TO_63) == (
        "30995 66850 10881 98914 36086 86589 42897 09292 78922 06503 11987 06478"
    )


def test_safety_number_rejects_malformed_keys() -> None:
    """A key that is not base64 of 32 bytes raises CryptoError."""
    with pytest.raises(CryptoError, match="not a base64"):
        safety_number("alice", "not base64!", "bob", _KEY_32_TO_63)
    with pytest.raises(CryptoError, match="16 bytes"):
        safety_number("alice", _KEY_0_TO_31, "bob", "AAECAwQFBgcICQoLDA0ODw")
