"""Safety numbers: 60 digits two people compare to know no one sits between them.

The algorithm follows Signal's numeric fingerprint (version 0); unlike Signal,
the key is hashed as its 32 raw bytes, with no key-type prefix byte. Any client
can reproduce it from this description:

1. For each party, take its public identity key as 32 raw bytes (the unpadded
   base64 string decoded) and its username as UTF-8 bytes.
2. ``h = 0x00 0x00 || key || username`` (two zero bytes: the version).
3. Repeat 5200 times: ``h = SHA-512(h || key)``.
4. Split the first 30 bytes of ``h`` into six 5-byte chunks; read each chunk as
   a big-endian unsigned integer, take it modulo 100000 and write it as 5
   decimal digits with leading zeros. That party's half is these 30 digits.
5. Put the two halves in ascending order (as strings) and concatenate them, so
   both sides get the same 60 digits whoever computes them.
6. Show the 60 digits as 12 groups of 5 separated by single spaces.

Test vector: alice with the key whose bytes are 0, 1, …, 31
(``AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8``) and bob with the bytes 32, …, 63
(``ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8``) have the safety number
``30995 66850 10881 98914 36086 86589 42897 09292 78922 06503 11987 06478``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from obrolan.errors import CryptoError

__all__ = ["safety_number"]

_VERSION = b"\x00\x00"
_ITERATIONS = 5200
_CHUNKS = 6
_CHUNK_BYTES = 5
_GROUP_DIGITS = 5


def _key_bytes(key: str) -> bytes:
    try:
        raw = base64.b64decode(key + "=" * (-len(key) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CryptoError(f"not a base64 public key: {key!r}") from None
    if len(raw) != 32:
        raise CryptoError(f"public key is {len(raw)} bytes, expected 32")
    return raw


def _half(username: str, key: str) -> str:
    """The 30 digits one party contributes (steps 1 to 4)."""
    key_bytes = _key_bytes(key)
    digest = _VERSION + key_bytes + username.encode()
    for _ in range(_ITERATIONS):
        digest = hashlib.sha512(digest + key_bytes).digest()
    chunks = (digest[i * _CHUNK_BYTES : (i + 1) * _CHUNK_BYTES] for i in range(_CHUNKS))
    return "".join(f"{int.from_bytes(chunk, 'big') % 100_000:05d}" for chunk in chunks)


def safety_number(my_username: str, my_key: str, their_username: str, their_key: str) -> str:
    """The 60-digit safety number of two parties, as 12 groups of 5 digits.

    Both parties get the same string whichever of them computes it.

    Args:
        my_username, their_username: the account names.
        my_key, their_key: each party's identity key, unpadded base64 of 32 bytes.

    Raises:
        CryptoError: a key is not base64 of 32 bytes.
    """
    digits = "".join(sorted((_half(my_username, my_key), _half(their_username, their_key))))
    return " ".join(digits[i : i + _GROUP_DIGITS] for i in range(0, len(digits), _GROUP_DIGITS))
