"""Which error a frame that failed its type gets (only on the error path).

An unknown ``type`` is ``unknown_frame_type``, a bad username in ``register`` or
``recover`` is ``invalid_username``, anything else ``malformed_frame``; each carries
the request's ``id`` whenever the id can be read (spec §6).
"""

from __future__ import annotations

from typing import Any

import msgspec

from obrolan.errors import RemoteProtocolError
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.decoding import decode_json

_MAX_REQUEST_ID = 2**53 - 1


def refine(
    data: bytes | str,
    exc: msgspec.DecodeError,
    tags: frozenset[str],
    fields_by_tag: dict[str, frozenset[str]],
) -> RemoteProtocolError:
    """The error for ``data``, which is not any of the frames named by ``tags``."""
    try:
        raw = decode_json(data, Any, "frame")
    except RemoteProtocolError:
        return RemoteProtocolError("frame is not valid JSON", ErrorCode.MALFORMED_FRAME)
    if not isinstance(raw, dict):
        return RemoteProtocolError("frame must be an object with a string 'type'")
    kind = raw.get("type")
    has_no_id = kind in tags and "id" not in fields_by_tag[kind]
    request_id = None if has_no_id else _request_id(raw.get("id"))
    if not isinstance(kind, str):
        return RemoteProtocolError(
            "frame must be an object with a string 'type'", request_id=request_id
        )
    if kind not in tags:
        return RemoteProtocolError(
            f"unknown frame type {kind!r}", ErrorCode.UNKNOWN_FRAME_TYPE, request_id
        )
    if kind in ("register", "recover") and str(exc).endswith("at `$.username`"):
        return RemoteProtocolError(f"invalid username: {exc}", ErrorCode.INVALID_USERNAME)
    return RemoteProtocolError(f"malformed {kind} frame: {exc}", request_id=request_id)


def _request_id(value: Any) -> int | None:
    # A RequestId (frames.py): an int in [0, 2**53 - 1]; bool is an int subclass, no id.
    if type(value) is not int or not 0 <= value <= _MAX_REQUEST_ID:
        return None
    return value
