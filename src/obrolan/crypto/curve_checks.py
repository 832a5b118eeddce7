"""Whether the bytes of a Curve25519 public key can be used in a key agreement at all.

A signature says who published a key, not that the key is any good: an all-zero
key, or one of the few points of small order, makes every Diffie-Hellman with it
come out the same whatever our private key is (vodozemac refuses such a session as
"non-contributory"). The client checks the bytes before it starts an Olm session
(and a server may check them on upload). Pure: no I/O, no vodozemac.
"""

from __future__ import annotations

__all__ = ["is_unusable_curve25519"]

_P = 2**255 - 19
_SMALL_ORDER_U = frozenset(
    {
        0,  # order 1 or 2 (and the all-zero key)
        1,  # order 4 on the twist
        _P - 1,  # order 4
        # The two points of order 8 (RFC 7748 §6.1 and libsodium's blocklist).
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    }
)
"""u-coordinates (mod p) of every point whose order divides 8, on the curve or its twist."""


def is_unusable_curve25519(key: bytes) -> bool:
    """True when ``key`` is not 32 bytes, or any encoding of a small-order point.

    X25519 ignores the top bit and reduces u modulo p, so non-canonical encodings of
    these points (u + p, top bit set) are refused too.
    """
    if len(key) != 32:
        return True
    u = int.from_bytes(key, "little") & ((1 << 255) - 1)
    return u % _P in _SMALL_ORDER_U
