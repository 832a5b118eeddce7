"""Error codes sent in ``error`` frames.

The server sends exactly one of these strings; docs/protocol.md lists the same
set (a test keeps them in step). Codes never change meaning once released.
"""

from __future__ import annotations

import enum

__all__ = ["FATAL_CODES", "ErrorCode"]


class ErrorCode(enum.StrEnum):
    """Why a request or a connection was refused."""

    MALFORMED_FRAME = "malformed_frame"
    """The frame is not valid JSON or a field has the wrong type or form."""
    UNKNOWN_FRAME_TYPE = "unknown_frame_type"
    """The frame's ``type`` is not one this protocol version defines."""
    FRAME_TOO_LARGE = "frame_too_large"
    """The frame is larger than ``max_frame_bytes`` (the connection closes)."""
    UNSUPPORTED_VERSION = "unsupported_version"
    """The client asked for a protocol version the server does not speak."""
    NOT_AUTHENTICATED = "not_authenticated"
    """The frame needs an authenticated connection."""
    ALREADY_AUTHENTICATED = "already_authenticated"
    """``register`` or ``authenticate`` on a connection that already is."""
    AUTH_FAILED = "auth_failed"
    """Bad signature, unknown account or device, or a challenge used twice.

    The server answers the same way whether or not the account exists."""
    INVALID_USERNAME = "invalid_username"
    """The username does not match the allowed pattern."""
    USERNAME_TAKEN = "username_taken"
    """Another account already has this username."""
    BAD_SIGNATURE = "bad_signature"
    """A signed key (device keys, one-time key) does not verify."""
    BAD_KEY = "bad_key"
    """A Curve25519 key (identity, one-time or fallback) is all-zero or of low order."""
    UNKNOWN_USER = "unknown_user"
    """No account has this username."""
    UNKNOWN_DEVICE = "unknown_device"
    """The account has no device with this id."""
    BAD_DEVICE_LIST = "bad_device_list"
    """A device list whose signature, account, version or devices are not acceptable."""
    UNKNOWN_LINK = "unknown_link"
    """No new device waits under this link id (a wrong code, or it expired)."""
    LINK_USED = "link_used"
    """This link id was already approved; the new device must show a new code."""
    LINK_EXISTS = "link_exists"
    """Another device already waits under this link id (pick a new one)."""
    ENVELOPE_TOO_LARGE = "envelope_too_large"
    """An envelope's ciphertext is larger than ``max_envelope_bytes``."""
    TOO_MANY_ITEMS = "too_many_items"
    """A list in the frame has more entries than its limit allows."""
    QUEUE_FULL = "queue_full"
    """The recipient device has ``max_queue_per_device`` envelopes waiting."""
    BLOB_TOO_LARGE = "blob_too_large"
    """A blob is larger than the server's ``max_blob_bytes``, or an upload goes past its size."""
    QUOTA_EXCEEDED = "quota_exceeded"
    """The account's blobs would then take more than its quota."""
    UNKNOWN_BLOB = "unknown_blob"
    """No blob with this id that the requesting device may use (the same answer either way)."""
    OFFSET_MISMATCH = "offset_mismatch"
    """An upload's offset is not the number of bytes the server holds; resume from that."""
    BLOB_EXISTS = "blob_exists"
    """Another blob already has this id."""
    RATE_LIMITED = "rate_limited"
    """Too many frames, sends, key claims or blob bytes in a short time; ``retry_after_ms``
    says when the same request would pass."""
    INTERNAL = "internal"
    """The server failed; it gives no details. Retrying later is safe."""


FATAL_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.AUTH_FAILED,
    }
)
"""After an error with one of these codes the server closes the connection."""
