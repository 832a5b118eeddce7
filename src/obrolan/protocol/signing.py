"""The exact bytes each signature in the protocol covers.

Each string starts with its own domain label, so a signature made for one
purpose can never be replayed as another. Fields are joined by a NUL byte,
which no username, device id, key id or base64 key may contain.
"""

from __future__ import annotations

__all__ = [
    "auth_bytes",
    "device_keys_bytes",
    "device_list_bytes",
    "group_message_bytes",
    "group_update_bytes",
    "one_time_key_bytes",
    "recover_bytes",
    "recovery_key_bytes",
]


def _join(label: bytes, *parts: bytes | str) -> bytes:
    return b"\x00".join([label, *(p.encode() if isinstance(p, str) else p for p in parts)])


def auth_bytes(nonce: bytes, username: str, device_id: str) -> bytes:
    """What a device signs to answer a connection's challenge."""
    return _join(b"obrolan-auth-v1", nonce, username, device_id)


def device_keys_bytes(username: str, device_id: str, ed25519: str, curve25519: str) -> bytes:
    """What a device signs to bind its keys to its account and id."""
    return _join(b"obrolan-device-v1", username, device_id, ed25519, curve25519)


def one_time_key_bytes(key_id: str, key: str) -> bytes:
    """What a device signs for each one-time or fallback key it publishes."""
    return _join(b"obrolan-otk-v1", key_id, key)


def device_list_bytes(device_list: bytes) -> bytes:
    """What an account key signs: the exact JSON bytes of a ``DeviceList``."""
    return _join(b"obrolan-device-list-v1", device_list)


def recovery_key_bytes(username: str, recovery_key: str) -> bytes:
    """What an account key signs to set a new recovery key (``set_recovery``)."""
    return _join(b"obrolan-recovery-key-v1", username, recovery_key)


def recover_bytes(nonce: bytes, username: str, account_key: str, recovery_key: str) -> bytes:
    """What the old recovery key signs to hand the account to a new account key."""
    return _join(b"obrolan-recover-v1", nonce, username, account_key, recovery_key)


def group_update_bytes(update: bytes) -> bytes:
    """What an actor's account key signs: the exact JSON bytes of a ``GroupUpdate``."""
    return _join(b"obrolan-group-update-v1", update)


def group_message_bytes(message: bytes) -> bytes:
    """What a sending device signs: the exact JSON bytes of a ``GroupMessage``."""
    return _join(b"obrolan-group-message-v1", message)
