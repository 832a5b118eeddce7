"""Limits the server enforces and announces in its ``challenge`` frame."""

from __future__ import annotations

import msgspec

__all__ = ["PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "Limits"]

PROTOCOL_VERSION = 1
"""The version this code speaks by default."""

SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
"""Every version this code can speak."""


RECIPIENT_JSON_BYTES = 96
"""Room one ``Recipient`` takes at most in a frame: two names of 32 characters, their JSON."""


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """What one server accepts; each is configurable on ``obrolan serve``."""

    max_envelope_bytes: int = 256 * 1024
    """Largest ciphertext in one envelope."""
    max_frame_bytes: int = 1024 * 1024
    """Largest WebSocket message; a larger one closes the connection (1009)."""
    max_envelopes_per_send: int = 100
    """Most envelopes in one ``send`` frame."""
    max_recipients_per_envelope: int = 2000
    """Most recipient devices of one ``send_multi`` envelope."""
    max_queue_per_device: int = 10_000
    """Most envelopes waiting for one device; more gets ``queue_full``."""
    max_one_time_keys: int = 100
    """Most unclaimed one-time keys stored per device (and per ``upload_keys``)."""
    max_acks_per_frame: int = 1000
    """Most envelope ids in one ``ack`` frame."""
    envelope_ttl_seconds: int = 30 * 24 * 3600
    """An envelope not acknowledged by then is deleted unread."""
    delivery_window: int = 256
    """Most envelopes the server pushes to a device before it acknowledges some."""
    max_devices_per_account: int = 10
    """Most devices in one account's list: every message is encrypted once per device."""

    def __post_init__(self) -> None:
        # A frame must hold one maximal envelope, base64-encoded, for the most recipients
        # (a `send_multi`), with room for JSON.
        needed = (
            self.max_envelope_bytes * 4 // 3
            + self.max_recipients_per_envelope * RECIPIENT_JSON_BYTES
            + 64 * 1024
        )
        if self.max_frame_bytes < needed:
            msgspec.structs.force_setattr(self, "max_frame_bytes", needed)
