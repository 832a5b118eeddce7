"""What a client publishes about its account, checked before the server stores it.

A device list must verify under the account key (and a new account key's first list
hold exactly the registering device); a recovery key must be signed by the account
key. Every Curve25519 key must be usable (not all-zero, not of low order), whatever
signs it. Each failure is the ``RequestRefused`` the relay answers with.
"""

from __future__ import annotations

from obrolan.crypto.account import open_device_list
from obrolan.crypto.key_checks import check_curve25519
from obrolan.crypto.signatures import verify
from obrolan.errors import RequestRefused, SignatureError, UnusableKey
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import DeviceKeys, OneTimeKey, SignedDeviceList
from obrolan.protocol.signing import recovery_key_bytes
from obrolan.server.storage.base import PublishedList, RecoveryKey

__all__ = [
    "bad_list",
    "first_list",
    "open_list",
    "signed_recovery_key",
    "usable_identity",
    "usable_key",
]


def bad_list(message: str) -> RequestRefused:
    return RequestRefused(ErrorCode.BAD_DEVICE_LIST, message)


def open_list(signed: SignedDeviceList, username: str, account_key: str | None) -> PublishedList:
    """Verify a device list (see :func:`obrolan.crypto.account.open_device_list`), and
    the Curve25519 key of every device in it.

    Raises:
        RequestRefused: ``bad_device_list``, or ``bad_key``.
    """
    try:
        opened = open_device_list(signed, username, account_key)
    except SignatureError as exc:
        raise bad_list(str(exc)) from None
    for device in opened.devices:
        usable_identity(device.keys)
    return PublishedList(
        signed, opened.account_key, opened.version, [d.keys for d in opened.devices]
    )


def signed_recovery_key(
    username: str, account_key: str, recovery_key: str, signature: str
) -> RecoveryKey:
    """The recovery key of a new account key, which must have signed it.

    Raises:
        RequestRefused: ``bad_signature``.
    """
    try:
        verify(account_key, recovery_key_bytes(username, recovery_key), signature)
    except SignatureError:
        raise RequestRefused(
            ErrorCode.BAD_SIGNATURE, "the recovery key is not signed by the account key"
        ) from None
    return RecoveryKey(recovery_key, signature)


def first_list(signed: SignedDeviceList, username: str, device: DeviceKeys) -> PublishedList:
    """Verify the list of a new account key (``register``, ``recover``): version 1,
    holding exactly ``device``.

    Raises:
        RequestRefused: ``bad_device_list``.
    """
    published = open_list(signed, username, None)
    if published.version != 1:
        raise bad_list(f"a new account key's first list is version 1, not {published.version}")
    if published.devices != [device]:
        raise bad_list(f"a new account key's first list holds exactly device {device.device_id}")
    return published


def usable_identity(device: DeviceKeys) -> None:
    """Refuse a device whose Curve25519 identity key is all-zero or of low order.

    Raises:
        RequestRefused: ``bad_key``.
    """
    try:
        check_curve25519(device.curve25519, f"the curve25519 key of device {device.device_id}")
    except UnusableKey as exc:
        raise RequestRefused(ErrorCode.BAD_KEY, str(exc)) from None


def usable_key(key: OneTimeKey) -> None:
    """Refuse a one-time or fallback key that is all-zero or of low order.

    Raises:
        RequestRefused: ``bad_key``.
    """
    try:
        check_curve25519(key.key, f"key {key.key_id}")
    except UnusableKey as exc:
        raise RequestRefused(ErrorCode.BAD_KEY, str(exc)) from None
