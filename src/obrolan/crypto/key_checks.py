"""Checks of a Curve25519 public key's bytes: a signature says who made a key, not that it
can be used.

An all-zero or low-order key makes every X25519 exchange with it give the all-zero output
(vodozemac refuses such a session), so a device publishing one cannot be written to. The
server refuses such keys on upload; the client checks the keys it is given before use.
Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from obrolan.errors import UnusableKey

__all__ = ["LOW_ORDER_U", "check_curve25519", "is_usable_curve25519"]

_P = 2**255 - 19

LOW_ORDER_U: frozenset[int] = frozenset(
    {
        0,  # order 2 (also p, as p = 0)
        1,  # order 4 (also p + 1)
        _P - 1,  # order 4, on the twist
        325606250916557431795983626356110631294008115727848805560023387167927233504,  # order 8
        39382357235489614581723060781553021112529911719440698176882885853963445705823,  # order 8
    }
)
"""The u-coordinates, reduced mod p, of every point of small order on Curve25519 and its
twist (libsodium's list: 0, 1, p-1, the two order-8 points, and p, p+1 as their forms)."""

_PROBE = X25519PrivateKey.generate()
"""A random scalar: X25519 with it gives all-zero output exactly for small-order points."""


def is_usable_curve25519(raw: bytes) -> bool:
    """Whether 32 bytes are a Curve25519 public key that X25519 can use.

    False for any other length, and for every encoding of a small-order point: canonical
    or not (u + p), with or without bit 255 set (X25519 ignores it).
    """
    if len(raw) != 32:
        return False
    u = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if u % _P in LOW_ORDER_U:
        return False
    try:
        shared = _PROBE.exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:  # OpenSSL refuses an all-zero result
        return False
    return shared != bytes(32)


def check_curve25519(key: str, what: str) -> None:
    """Refuse a Curve25519 public key (unpadded base64) that cannot be used.

    Args:
        key: the key as the protocol carries it.
        what: names the key in the message, e.g. ``"one-time key AAAAAAAAAAA"``.

    Raises:
        UnusableKey: not 32 bytes of base64, all-zero or of low order.
    """
    try:
        raw = base64.b64decode(key + "=" * (-len(key) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not is_usable_curve25519(raw):
        raise UnusableKey(f"{what} is not a usable Curve25519 key (all-zero or of low order)")
