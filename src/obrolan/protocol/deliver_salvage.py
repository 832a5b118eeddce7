"""A ``deliver`` frame that did not decode whole: keep its good envelopes.

One bad envelope must not cost the others of its frame, nor the connection
(spec §10 ``deliver``): the client splits such a frame into the envelopes that
decode and the ones that do not, acking those whose id alone can be read.
"""

from __future__ import annotations

from typing import Any

import msgspec

from obrolan.errors import RemoteProtocolError
from obrolan.protocol.decoding import decode_json
from obrolan.protocol.frames import Deliver, Envelope, EnvelopeId, Username

__all__ = ["UnreadableEnvelope", "salvage_deliver"]


class UnreadableEnvelope(msgspec.Struct, frozen=True):
    """An envelope of a ``deliver`` frame that does not decode (not a wire type)."""

    envelope_id: str | None
    """Its ``envelope_id`` when that alone is readable (so it can be acked), else None."""
    from_user: str | None
    """Its ``from_user`` when readable (whose conversation gets the notice), else None."""
    reason: str


class _LooseDeliver(msgspec.Struct, frozen=True):
    envelopes: list[msgspec.Raw]


class _EnvelopeHead(msgspec.Struct, frozen=True):
    envelope_id: Any = None
    from_user: Any = None


def _readable(value: Any, kind: Any) -> str | None:
    try:
        readable: str = msgspec.convert(value, kind)
    except msgspec.ValidationError:
        return None
    return readable


def salvage_deliver(data: bytes | str) -> tuple[Deliver, list[UnreadableEnvelope]] | None:
    """Split ``data`` into a ``Deliver`` of its good envelopes and the bad ones.

    Returns None when ``data`` is not a ``deliver`` frame whose envelope list is readable.
    """
    try:
        header = decode_json(data, dict[str, Any], "frame")
        if header.get("type") != "deliver":
            return None
        loose = decode_json(data, _LooseDeliver, "deliver frame")
    except RemoteProtocolError:
        return None
    good: list[Envelope] = []
    bad: list[UnreadableEnvelope] = []
    for raw in loose.envelopes:
        try:
            good.append(decode_json(raw, Envelope, "envelope"))
        except RemoteProtocolError as exc:
            try:
                head = decode_json(raw, _EnvelopeHead)
            except RemoteProtocolError:
                head = _EnvelopeHead()
            envelope_id = _readable(head.envelope_id, EnvelopeId)
            sender = _readable(head.from_user, Username)
            bad.append(UnreadableEnvelope(envelope_id, sender, str(exc)))
    return Deliver(envelopes=good), bad
