"""One way to parse bytes that came from outside: only obrolan's own errors come out.

msgspec answers hostile bytes with more than ``DecodeError``: ``UnicodeDecodeError``
for bytes that are not UTF-8 inside a JSON string, ``RecursionError`` for deep
nesting, ``ValueError`` or ``OverflowError`` from a few conversions. An error that
escapes a decoder stops whatever loop called it (a device's inbox, the relay's
reader), so every decoder of remote bytes goes through :func:`decode_json`.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

import msgspec

from obrolan.errors import RemoteProtocolError

__all__ = ["DECODE_ERRORS", "decode_failure", "decode_json"]

T = TypeVar("T")

DECODE_ERRORS: tuple[type[BaseException], ...] = (
    msgspec.DecodeError,  # ValidationError is a subclass
    UnicodeDecodeError,
    RecursionError,
    ValueError,
    OverflowError,
    TypeError,
)
"""What msgspec may raise on bytes it cannot turn into the wanted type."""

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


@overload
def decode_json(data: bytes | str, type: type[T], what: str = ...) -> T: ...
@overload
def decode_json(data: bytes | str, type: Any, what: str = ...) -> Any: ...
def decode_json(data: bytes | str, type: Any = Any, what: str = "") -> Any:
    """Parse JSON ``data`` into ``type``.

    ``what`` names the thing parsed in the error message (``"plaintext"``).

    Raises:
        RemoteProtocolError: whatever was wrong with the bytes (code ``malformed_frame``).
    """
    decoder = _decoders.get(type)
    if decoder is None:
        decoder = _decoders.setdefault(type, msgspec.json.Decoder(type))
    try:
        return decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise decode_failure(exc, what or "JSON") from None


def decode_failure(exc: BaseException, what: str) -> RemoteProtocolError:
    """The error for one of :data:`DECODE_ERRORS` raised while parsing ``what``."""
    if isinstance(exc, RecursionError):
        return RemoteProtocolError(f"malformed {what}: nested too deeply")
    if isinstance(exc, UnicodeDecodeError):
        return RemoteProtocolError(f"malformed {what}: not valid UTF-8")
    return RemoteProtocolError(f"malformed {what}: {exc}")
