"""Ed25519 verification of the protocol's signed values (server and client use it)."""

from __future__ import annotations

import vodozemac

from obrolan.errors import SignatureError
from obrolan.protocol.frames import DeviceKeys, OneTimeKey
from obrolan.protocol.signing import device_keys_bytes, one_time_key_bytes

__all__ = ["verify", "verify_device_keys", "verify_one_time_key"]


def verify(ed25519: str, data: bytes, signature: str) -> None:
    """Check an Ed25519 signature.

    Raises:
        SignatureError: the key or signature is malformed, or the signature does not verify.
    """
    try:
        key = vodozemac.Ed25519PublicKey.from_base64(ed25519)
        key.verify_signature(data, vodozemac.Ed25519Signature.from_base64(signature))
    except (vodozemac.KeyException, vodozemac.SignatureException, ValueError) as exc:
        raise SignatureError(f"signature does not verify: {exc}") from None


def verify_device_keys(username: str, device: DeviceKeys) -> None:
    """Check that a device's keys are self-signed by its own Ed25519 key for this account."""
    verify(
        device.ed25519,
        device_keys_bytes(username, device.device_id, device.ed25519, device.curve25519),
        device.signature,
    )


def verify_one_time_key(ed25519: str, key: OneTimeKey) -> None:
    """Check that a one-time or fallback key is signed by the device's Ed25519 key."""
    verify(ed25519, one_time_key_bytes(key.key_id, key.key), key.signature)
