"""Account-level keys: the account key, its signed device list, recovery and link codes.

An account has one Ed25519 *account key*, created on its first device and kept
only on its devices. It signs the list of the account's devices; a client
encrypts to, and trusts, only the devices in a list whose signature verifies.
The server stores the signed list but cannot change it.

Alongside it every device of the account holds a *data key* (32 random bytes)
that seals what only the account's own devices read: the device names in the
list.

A *recovery code* (24 base32 characters) derives the Ed25519 *recovery key*
whose public half the server keeps as a verifier; with the code a person who
lost every device can hand the username to a new account key.

A *link code* (24 base32 characters: 8 of link id, 16 of secret) lets a new
device show its keys to an existing device through the server: the offer is
sealed with a key derived from the secret, which the server never sees.
"""

from __future__ import annotations

import base64
import datetime
import itertools
import os
import secrets
from dataclasses import dataclass

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from obrolan.crypto.signatures import verify, verify_device_keys, verify_one_time_key
from obrolan.errors import CryptoError, DecryptionError, RemoteProtocolError, SignatureError
from obrolan.protocol import content
from obrolan.protocol.decoding import decode_json
from obrolan.protocol.frames import (
    DeviceKeys,
    DeviceList,
    KeySuccession,
    ListedDevice,
    SignedDeviceList,
)
from obrolan.protocol.signing import device_list_bytes, recover_bytes, recovery_key_bytes

__all__ = [
    "AccountKey",
    "LinkCode",
    "RecoveryCode",
    "device_entry",
    "open_device_list",
    "open_name",
    "open_successions",
    "seal_name",
    "today",
]

_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_NONCE_BYTES = 12
_encode = msgspec.json.Encoder().encode


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def _random_base32(length: int) -> str:
    return "".join(secrets.choice(_BASE32) for _ in range(length))


def _normalize(code: str) -> str:
    return "".join(code.split()).replace("-", "").upper()


def _groups(code: str) -> str:
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def today() -> str:
    """The current UTC day, as device lists record it."""
    return datetime.datetime.now(datetime.UTC).date().isoformat()


class _Ed25519:
    """An Ed25519 key pair from a 32-byte seed (``cryptography``'s implementation)."""

    __slots__ = ("_private", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise CryptoError("an Ed25519 seed is 32 bytes")
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self.public = _b64(self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, data: bytes) -> str:
        return _b64(self._private.sign(data))


class AccountKey:
    """The account's Ed25519 signing key: it signs device lists and recovery keys."""

    __slots__ = ("_key", "secret")

    def __init__(self, secret: bytes) -> None:
        """Restore from the 32-byte seed (``LinkSecrets.account_secret``)."""
        self.secret = secret
        self._key = _Ed25519(secret)

    @classmethod
    def create(cls) -> AccountKey:
        return cls(os.urandom(32))

    @property
    def public(self) -> str:
        """The public key, unpadded base64: what contacts pin."""
        return self._key.public

    def sign_device_list(
        self, username: str, version: int, devices: list[ListedDevice]
    ) -> SignedDeviceList:
        """Sign a new version of the account's device list."""
        body = _encode(
            DeviceList(username=username, account_key=self.public, version=version, devices=devices)
        )
        return SignedDeviceList(device_list=body, signature=self._key.sign(device_list_bytes(body)))

    def sign(self, data: bytes) -> str:
        """An Ed25519 signature of labelled protocol bytes (``protocol.signing``)."""
        return self._key.sign(data)

    def sign_recovery_key(self, username: str, recovery_key: str) -> str:
        """The ``set_recovery`` signature over a new recovery key."""
        return self._key.sign(recovery_key_bytes(username, recovery_key))


def open_device_list(
    signed: SignedDeviceList, username: str, account_key: str | None
) -> DeviceList:
    """Verify a signed device list and return it.

    ``account_key`` None accepts the key the list names (first contact: the caller
    pins it); otherwise the list must be signed by exactly that key. Every listed
    device's self-signature must verify too.

    Raises:
        SignatureError: the list is malformed, for another account, signed by another
            key, its signature does not verify, or a device's keys do not.
    """
    try:
        device_list = decode_json(signed.device_list, DeviceList, "device list")
    except RemoteProtocolError as exc:
        raise SignatureError(f"the device list is malformed: {exc}") from None
    if device_list.username != username:
        raise SignatureError(f"the device list is for {device_list.username}, not {username}")
    if account_key is not None and device_list.account_key != account_key:
        raise SignatureError(f"{username}'s device list is signed by another account key")
    verify(device_list.account_key, device_list_bytes(signed.device_list), signed.signature)
    ids = [d.keys.device_id for d in device_list.devices]
    if len(set(ids)) != len(ids):
        raise SignatureError(f"{username}'s device list names a device twice")
    for device in device_list.devices:
        verify_device_keys(username, device.keys)
    return device_list


def open_successions(
    successions: list[KeySuccession], username: str, account_key: str
) -> list[str]:
    """The account keys that provably came before ``account_key``, oldest first.

    Each record's old account key signed its recovery key, which signed the
    handover to the next key; the last handover must be to ``account_key``.

    Raises:
        SignatureError: a signature does not verify, or the records do not lead from
            one key to the next and on to ``account_key``.
    """
    for record, following in itertools.pairwise(successions):
        if record.new_account_key != following.account_key:
            raise SignatureError(f"{username}'s key successions do not follow one another")
    if successions and successions[-1].new_account_key != account_key:
        raise SignatureError(f"{username}'s key successions do not lead to the current key")
    for record in successions:
        verify(
            record.account_key,
            recovery_key_bytes(username, record.recovery_key),
            record.recovery_key_signature,
        )
        verify(
            record.recovery_key,
            recover_bytes(record.nonce, username, record.new_account_key, record.new_recovery_key),
            record.recovery_signature,
        )
    return [record.account_key for record in successions]


def _name_aad(username: str, device_id: str) -> bytes:
    return b"\x00".join([b"obrolan-device-name-v1", username.encode(), device_id.encode()])


def seal_name(data_key: bytes, username: str, device_id: str, name: str) -> bytes:
    """A device name sealed for the account's own devices (``ListedDevice.name``)."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(data_key).encrypt(nonce, name.encode(), _name_aad(username, device_id))


def open_name(data_key: bytes, username: str, device_id: str, sealed: bytes) -> str:
    """The name sealed by :func:`seal_name`, or ``"?"`` if it does not open."""
    try:
        plain = AESGCM(data_key).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _name_aad(username, device_id)
        )
        return plain.decode()
    except (InvalidTag, ValueError, UnicodeDecodeError):
        return "?"


@dataclass(frozen=True, slots=True)
class RecoveryCode:
    """24 base32 characters (120 bits), shown once as six groups of four."""

    code: str
    """Normalized: upper case, no separators."""

    @classmethod
    def create(cls) -> RecoveryCode:
        return cls(_random_base32(24))

    @classmethod
    def parse(cls, text: str) -> RecoveryCode:
        """Read a code as a person typed it (any case, dashes and spaces ignored).

        Raises:
            CryptoError: not 24 base32 characters.
        """
        code = _normalize(text)
        if len(code) != 24 or any(c not in _BASE32 for c in code):
            raise CryptoError("a recovery code is 24 letters and digits 2-7, like ABCD-EFGH-…")
        return cls(code)

    def __str__(self) -> str:
        return _groups(self.code)

    def _key(self) -> _Ed25519:
        return _Ed25519(_hkdf(self.code.encode(), b"", b"obrolan-recovery-v1"))

    @property
    def public_key(self) -> str:
        """The verifier the server keeps (``recovery_key``)."""
        return self._key().public

    def sign_recover(
        self, nonce: bytes, username: str, account_key: str, new_recovery_key: str
    ) -> str:
        """The ``recover`` frame's ``recovery_signature``."""
        return self._key().sign(recover_bytes(nonce, username, account_key, new_recovery_key))


@dataclass(frozen=True, slots=True)
class LinkCode:
    """What a new device shows: a link id the server knows and a secret it never sees."""

    link_id: str
    """8 base32 characters."""
    secret: str
    """16 base32 characters (80 bits)."""

    @classmethod
    def create(cls) -> LinkCode:
        return cls(_random_base32(8), _random_base32(16))

    @classmethod
    def parse(cls, text: str) -> LinkCode:
        """Read a code as typed, or the ``code`` of a scanned ``obrolan://link`` address.

        Raises:
            CryptoError: not 24 base32 characters.
        """
        code = _normalize(text)
        if len(code) != 24 or any(c not in _BASE32 for c in code):
            raise CryptoError("a link code is 24 letters and digits 2-7, like ABCD-EFGH-…")
        return cls(code[:8], code[8:])

    def __str__(self) -> str:
        return _groups(self.link_id + self.secret)

    def _aead(self) -> AESGCM:
        key = _hkdf(self.secret.encode(), self.link_id.encode(), b"obrolan-link-offer-v1")
        return AESGCM(key)

    def seal_offer(self, offer: content.NewDeviceOffer) -> bytes:
        """The ``link_wait`` offer: nonce ‖ AES-256-GCM(offer JSON, AAD = link id)."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead().encrypt(nonce, content.encode(offer), self.link_id.encode())

    def open_offer(self, sealed: bytes) -> content.NewDeviceOffer:
        """Unseal and check an offer fetched with ``link_fetch``.

        Raises:
            DecryptionError: the secret is wrong (a mistyped code) or the offer was altered.
            SignatureError: the new device's keys are not self-signed for its username.
        """
        try:
            plain = self._aead().decrypt(
                sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], self.link_id.encode()
            )
            offer = content.decode_link_offer(plain)
        except (InvalidTag, ValueError, RemoteProtocolError):
            raise DecryptionError(
                "the link code is wrong: check it on the new device's screen"
            ) from None
        verify_device_keys(offer.username, offer.device)
        verify_one_time_key(offer.device.ed25519, offer.one_time_key)
        return offer


def device_entry(keys: DeviceKeys, name: bytes, added: str | None = None) -> ListedDevice:
    """One entry of a device list (``added`` defaults to today)."""
    return ListedDevice(keys=keys, name=name, added=added or today())
