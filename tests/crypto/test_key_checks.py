"""The pure check of Curve25519 key bytes: every small-order encoding refused, real keys kept."""

from __future__ import annotations

import base64

import pytest
import vodozemac

from obrolan.crypto.key_checks import LOW_ORDER_U, check_curve25519, is_usable_curve25519
from obrolan.errors import UnusableKey

_P = 2**255 - 19


def encodings(u: int) -> list[bytes]:
    """Every 32-byte encoding X25519 reads as ``u``: canonical, ``u + p`` when it fits in
    255 bits, and each with bit 255 set."""
    values = [u] + ([u + _P] if u + _P < 2**255 else [])
    raw = [v.to_bytes(32, "little") for v in values]
    return raw + [r[:31] + bytes([r[31] | 0x80]) for r in raw]


@pytest.mark.parametrize("u", sorted(LOW_ORDER_U))
def test_every_encoding_of_a_low_order_point_is_refused(u: int) -> None:
    for raw in encodings(u):
        assert not is_usable_curve25519(raw), raw.hex()
        with pytest.raises(UnusableKey, match="key X is not a usable"):
            check_curve25519(base64.b64encode(raw).decode().rstrip("="), "key X")


def test_the_list_holds_libsodiums_blocklist() -> None:
    """The seven entries of libsodium's X25519 blocklist, read as little-endian numbers."""
    listed = [
        "00" * 32,
        "01" + "00" * 31,
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ec" + "ff" * 30 + "7f",
        "ed" + "ff" * 30 + "7f",
        "ee" + "ff" * 30 + "7f",
    ]
    for hex_key in listed:
        assert not is_usable_curve25519(bytes.fromhex(hex_key)), hex_key


def test_real_keys_pass_and_wrong_lengths_do_not() -> None:
    account = vodozemac.Account()
    account.generate_one_time_keys(20)
    keys = [account.curve25519_key, *account.one_time_keys.values()]
    for key in keys:
        check_curve25519(key.to_base64(), "key")
    assert not is_usable_curve25519(bytes(31))
    with pytest.raises(UnusableKey):
        check_curve25519("not base64!", "key")
