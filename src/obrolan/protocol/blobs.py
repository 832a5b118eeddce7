"""The blob store's HTTP API: bodies, headers, and the exact bytes a request's signature covers.

Encrypted attachments travel outside the WebSocket, over plain HTTP requests under
``/v1/blobs`` (docs/protocol.md, "Blob store"). Each request is signed by the device
that makes it; nothing is stored to authenticate it (no tokens, no sessions). No I/O
here: the server's handlers and the client's uploader both use these definitions.

::

    path = blob_path("q0PKJ3vQ2Jc1ZyWm3P0sXg", offset=0)       # "/v1/blobs/q0PK…?offset=0"
    signature = sign(blob_request_bytes("PUT", path, now, "alice", "laptop"))
"""

from __future__ import annotations

import msgspec

from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.content import BlobId
from obrolan.protocol.decoding import decode_json
from obrolan.protocol.frames import DeviceId, Username

__all__ = [
    "BLOBS_PATH",
    "CLOCK_SKEW_SECONDS",
    "HEADER_DEVICE",
    "HEADER_OFFSET",
    "HEADER_SIGNATURE",
    "HEADER_TIME",
    "HEADER_USER",
    "MAX_RECIPIENTS",
    "STATUS",
    "BlobCreated",
    "BlobRecipient",
    "CreateBlob",
    "HttpError",
    "blob_path",
    "blob_request_bytes",
    "decode_blob_created",
    "decode_create_blob",
    "decode_http_error",
    "encode",
]

BLOBS_PATH = "/v1/blobs"
"""Where the blob store's resources live."""

HEADER_USER = "X-Obrolan-User"
"""The requesting device's username."""
HEADER_DEVICE = "X-Obrolan-Device"
"""The requesting device's id."""
HEADER_TIME = "X-Obrolan-Time"
"""When the request was signed: whole seconds since the Unix epoch, in decimal."""
HEADER_SIGNATURE = "X-Obrolan-Signature"
"""Ed25519 of the device over :func:`blob_request_bytes`, unpadded base64."""
HEADER_OFFSET = "X-Obrolan-Offset"
"""In answers to ``HEAD`` and ``PUT`` (and a 409): how many bytes of the blob the server holds."""

CLOCK_SKEW_SECONDS = 300
"""A request whose time is further than this from the server's clock is refused."""
MAX_RECIPIENTS = 100
"""Most devices one blob may be addressed to."""

STATUS: dict[ErrorCode, int] = {
    ErrorCode.MALFORMED_FRAME: 400,
    ErrorCode.TOO_MANY_ITEMS: 400,
    ErrorCode.AUTH_FAILED: 401,
    ErrorCode.QUOTA_EXCEEDED: 403,
    ErrorCode.UNKNOWN_USER: 404,
    ErrorCode.UNKNOWN_DEVICE: 404,
    ErrorCode.UNKNOWN_BLOB: 404,
    ErrorCode.OFFSET_MISMATCH: 409,
    ErrorCode.BLOB_EXISTS: 409,
    ErrorCode.BLOB_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL: 500,
}
"""The HTTP status the blob store answers each error code with."""

_SIGNING_LABEL = b"obrolan-blob-v1"


class BlobRecipient(msgspec.Struct, frozen=True):
    """One device a blob is addressed to: it may download the blob."""

    user: Username
    device: DeviceId


class CreateBlob(msgspec.Struct, frozen=True):
    """The body of ``POST /v1/blobs``: announce a blob before uploading its bytes."""

    blob_id: BlobId
    """Chosen by the uploader (16 random bytes), so that a repeated request is harmless."""
    size: int
    """The blob's exact size in bytes (the ciphertext, as stored)."""
    recipients: list[BlobRecipient]
    """The devices that may download it (1 to :data:`MAX_RECIPIENTS`)."""


class BlobCreated(msgspec.Struct, frozen=True):
    """The answer to ``POST /v1/blobs``."""

    blob_id: BlobId
    expires_at_day: str
    """The day (``YYYY-MM-DD``, UTC) on which the server deletes the blob at the latest."""


class HttpError(msgspec.Struct, frozen=True):
    """The body of every refused blob request (except ``HEAD``, which has no body)."""

    code: ErrorCode
    message: str
    retry_after_ms: int | None = None
    """With ``rate_limited``: milliseconds after which the refused request would pass."""


def blob_path(blob_id: str, *, offset: int | None = None, fetched: bool = False) -> str:
    """The path (and query) of one blob's resource, exactly as it is signed."""
    path = f"{BLOBS_PATH}/{blob_id}"
    if fetched:
        return f"{path}/fetched"
    if offset is not None:
        return f"{path}?offset={offset}"
    return path


def blob_request_bytes(method: str, path: str, time: int, username: str, device_id: str) -> bytes:
    """What a device signs for one blob request.

    ``method`` is the upper-case HTTP method, ``path`` the request target as sent
    (path and query, e.g. ``/v1/blobs/ID?offset=0``), ``time`` the value of
    :data:`HEADER_TIME`. Fields are joined by a NUL byte after the domain label, as in
    :mod:`obrolan.protocol.signing`; none of them can contain NUL.
    """
    fields = (method, path, str(time), username, device_id)
    return b"\x00".join([_SIGNING_LABEL, *(field.encode() for field in fields)])


_encoder = msgspec.json.Encoder()


def encode(value: msgspec.Struct) -> bytes:
    """Serialize a blob request or answer body to JSON bytes."""
    return _encoder.encode(value)


def decode_create_blob(data: bytes) -> CreateBlob:
    """Parse a ``POST /v1/blobs`` body; raises ``RemoteProtocolError`` if malformed."""
    return decode_json(data, CreateBlob, "blob request")


def decode_blob_created(data: bytes) -> BlobCreated:
    """Parse the answer to ``POST /v1/blobs``; raises ``RemoteProtocolError`` if malformed."""
    return decode_json(data, BlobCreated, "blob answer")


def decode_http_error(data: bytes) -> HttpError:
    """Parse a refusal's body; raises ``RemoteProtocolError`` if malformed."""
    return decode_json(data, HttpError, "blob refusal")
