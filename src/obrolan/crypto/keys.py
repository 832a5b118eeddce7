"""Symmetric keys: Argon2id from a passphrase, random keys, and HKDF sub-keys.

The client's store key comes either from :func:`derive_key` (a passphrase) or
from :func:`random_key` (kept in a 0600 key file). Every other local key is a
:func:`subkey` of it, so one secret unlocks the whole profile and each use gets
an independent key.
"""

from __future__ import annotations

import secrets
import unicodedata
from typing import Annotated, Self

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from obrolan.errors import CryptoError

__all__ = ["KEY_BYTES", "Argon2Params", "derive_key", "random_key", "subkey"]

KEY_BYTES = 32
"""Length of every symmetric key obrolan derives or generates."""

_SALT_BYTES = 16


class Argon2Params(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The Argon2id parameters (and salt) a passphrase-derived key was made with.

    They are stored unencrypted next to the store (``profile.json``); the bounds
    below are checked when they are decoded, so a damaged file cannot make the
    client allocate gigabytes or loop for hours.
    """

    salt: Annotated[bytes, msgspec.Meta(min_length=8, max_length=64)]
    iterations: Annotated[int, msgspec.Meta(ge=1, le=64)]
    lanes: Annotated[int, msgspec.Meta(ge=1, le=16)]
    memory_cost_kib: Annotated[int, msgspec.Meta(ge=8, le=4 * 1024 * 1024)]
    """Memory in KiB; Argon2 needs at least ``8 * lanes``."""

    @classmethod
    def new(cls) -> Self:
        """Interactive defaults with a fresh 16-byte salt.

        These are RFC 9106's second recommended option (t=3, p=4, m=64 MiB):
        about 0.2 s on a small 2-core machine, paid once when a profile opens.
        """
        return cls(
            salt=secrets.token_bytes(_SALT_BYTES),
            iterations=3,
            lanes=4,
            memory_cost_kib=64 * 1024,
        )


def derive_key(passphrase: str, params: Argon2Params) -> bytes:
    """Derive a 32-byte key from a passphrase with Argon2id.

    The passphrase is Unicode-normalized (NFC) and UTF-8 encoded first, so the
    same words typed on different systems give the same key.

    Raises:
        CryptoError: the parameters are outside what Argon2 accepts.
    """
    secret = unicodedata.normalize("NFC", passphrase).encode()
    try:
        kdf = Argon2id(
            salt=params.salt,
            length=KEY_BYTES,
            iterations=params.iterations,
            lanes=params.lanes,
            memory_cost=params.memory_cost_kib,
        )
        return kdf.derive(secret)
    except ValueError as exc:
        raise CryptoError(f"invalid Argon2id parameters: {exc}") from None


def random_key() -> bytes:
    """A fresh 32-byte key from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def subkey(master: bytes, label: str) -> bytes:
    """Derive an independent 32-byte key for one purpose (HKDF-SHA256, info ``obrolan/<label>``).

    Raises:
        CryptoError: ``master`` is not 32 bytes.
    """
    if len(master) != KEY_BYTES:
        raise CryptoError(f"master key is {len(master)} bytes, expected {KEY_BYTES}")
    info = b"obrolan/" + label.encode()
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(master)
