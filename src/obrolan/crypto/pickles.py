"""Saving vodozemac objects (accounts, sessions) in the local store, encrypted.

vodozemac encrypts a pickle with a 32-byte key and answers a wrong key, a damaged
pickle or a key of another length with ``ValueError``; here that becomes a
``CryptoError`` that names what failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from obrolan.errors import CryptoError

__all__ = ["restore", "save"]

T = TypeVar("T")


class _Pickleable(Protocol):
    def pickle(self, key: bytes) -> str: ...


def restore(load: Callable[[str, bytes], T], pickle: str, key: bytes, what: str) -> T:
    """``load(pickle, key)``, or CryptoError: the pickle is damaged or the key wrong."""
    try:
        return load(pickle, key)
    except ValueError as exc:
        raise CryptoError(f"{what} could not be decrypted: {exc}") from None


def save(obj: _Pickleable, key: bytes, what: str) -> str:
    """``obj`` encrypted with a 32-byte key, or CryptoError: the key is not 32 bytes."""
    try:
        return obj.pickle(key)
    except ValueError as exc:
        raise CryptoError(f"cannot pickle {what}: {exc}") from None
