"""An outbound Olm session is never started with a key whose bytes cannot be used
(crypto/key_checks.py, checked in DeviceIdentity.outbound_session), and vodozemac agrees."""

from __future__ import annotations

import base64

import pytest
import vodozemac

from obrolan.crypto.device import DeviceIdentity
from obrolan.crypto.key_checks import LOW_ORDER_U
from obrolan.errors import CryptoError, UnusableKey

_P = 2**255 - 19


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


SMALL = [u.to_bytes(32, "little") for u in sorted(LOW_ORDER_U)]
NON_CANONICAL = [
    (u + _P).to_bytes(32, "little") for u in sorted(LOW_ORDER_U) if u + _P < 2**255
] + [(int.from_bytes(k, "little") | 1 << 255).to_bytes(32, "little") for k in SMALL]


@pytest.mark.parametrize("raw", SMALL + NON_CANONICAL, ids=lambda r: r.hex()[:8] + r.hex()[-4:])
def test_a_small_order_one_time_key_is_refused_and_vodozemac_refuses_it_too(raw: bytes) -> None:
    me, them = DeviceIdentity.create(), DeviceIdentity.create()
    with pytest.raises(UnusableKey, match="the one-time key is not a usable"):
        me.outbound_session(them.curve25519, _b64(raw))
    # Not only our check: vodozemac itself cannot make a session with the canonical form.
    if raw in SMALL:
        with pytest.raises(ValueError):
            vodozemac.Account().create_outbound_session(
                vodozemac.Curve25519PublicKey.from_base64(them.curve25519),
                vodozemac.Curve25519PublicKey.from_bytes(raw),
            )


def test_an_unusable_identity_key_is_refused_and_a_good_one_is_not() -> None:
    me, them = DeviceIdentity.create(), DeviceIdentity.create()
    [key] = them.new_one_time_keys(1)
    with pytest.raises(CryptoError, match="the identity key is not a usable"):
        me.outbound_session(_b64(bytes(32)), key.key)
    me.outbound_session(them.curve25519, key.key)  # the same one-time key with a good one
