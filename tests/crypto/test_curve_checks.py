"""The pure check of Curve25519 key bytes (crypto/curve_checks.py), against vodozemac."""

from __future__ import annotations

import base64

import pytest

from obrolan.crypto.curve_checks import _P, _SMALL_ORDER_U, is_unusable_curve25519
from obrolan.crypto.device import DeviceIdentity
from obrolan.errors import CryptoError


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


SMALL = [u.to_bytes(32, "little") for u in sorted(_SMALL_ORDER_U)]
NON_CANONICAL = [
    (u + _P).to_bytes(32, "little") for u in sorted(_SMALL_ORDER_U) if u + _P < 2**255
] + [(int.from_bytes(k, "little") | 1 << 255).to_bytes(32, "little") for k in SMALL]


@pytest.mark.parametrize("raw", SMALL + NON_CANONICAL, ids=lambda r: r.hex()[:8] + r.hex()[-4:])
def test_every_small_order_encoding_is_unusable_and_vodozemac_agrees(raw: bytes) -> None:
    assert is_unusable_curve25519(raw)
    with pytest.raises(CryptoError):
        DeviceIdentity.create().outbound_session(DeviceIdentity.create().curve25519, _b64(raw))


def test_real_keys_are_usable_and_wrong_lengths_are_not() -> None:
    for _ in range(20):
        assert not is_unusable_curve25519(
            base64.b64decode(DeviceIdentity.create().curve25519 + "=")
        )
    assert is_unusable_curve25519(b"")
    assert not is_unusable_curve25519(b"\x09" + bytes(31))  # the base point
    assert is_unusable_curve25519(bytes(33))


def test_an_unusable_identity_key_is_refused_before_vodozemac() -> None:
    me, them = DeviceIdentity.create(), DeviceIdentity.create()
    [key] = them.new_one_time_keys(1)
    with pytest.raises(CryptoError, match="cannot be used"):
        me.outbound_session(_b64(bytes(32)), key.key)
    me.outbound_session(them.curve25519, key.key)  # the same one-time key with a good one
