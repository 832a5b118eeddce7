"""What travels inside an envelope's ciphertext: the end-to-end layer.

The server never sees these types. ``Envelope.ciphertext`` is the JSON of
:class:`OlmCiphertext`; decrypting its ``body`` with the Olm session gives the
JSON of :class:`Plaintext`. docs/protocol.md specifies both, so another client
can interoperate.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from obrolan.protocol.frames import DeviceId, PublicKey, Username

__all__ = [
    "Content",
    "OlmCiphertext",
    "Plaintext",
    "Text",
    "decode_content",
    "decode_olm_ciphertext",
    "decode_plaintext",
    "encode",
]

MessageId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{16,64}\Z")]

OLM_PRE_KEY = 0
"""``message_type`` of an Olm pre-key message (it starts a session)."""
OLM_NORMAL = 1
"""``message_type`` of an Olm normal message."""


class OlmCiphertext(msgspec.Struct, frozen=True):
    """The envelope's ciphertext: one Olm message and the sender's identity key."""

    sender_key: PublicKey
    """The sending device's Curve25519 identity key."""
    message_type: Annotated[int, msgspec.Meta(ge=0, le=1)]
    body: bytes
    """The Olm message, as vodozemac's ``AnyOlmMessage.to_parts()`` gives it."""


class Text(msgspec.Struct, frozen=True, tag_field="kind", tag="text"):
    """A text message."""

    message_id: MessageId
    sent_at_ms: int
    """The sender's clock, milliseconds since the Unix epoch (shown, never trusted)."""
    text: str


Content = Text
"""Every kind of content; more kinds join this union as they are added."""


class Plaintext(msgspec.Struct, frozen=True):
    """The decrypted body, naming both ends so the server cannot redirect it."""

    sender: Username
    sender_device: DeviceId
    recipient: Username
    recipient_device: DeviceId
    content: Content


_encoder = msgspec.json.Encoder()
_olm_decoder = msgspec.json.Decoder(OlmCiphertext)
_plain_decoder = msgspec.json.Decoder(Plaintext)
_content_decoder = msgspec.json.Decoder(Content)


def encode(value: msgspec.Struct) -> bytes:
    """Serialize an end-to-end struct to JSON bytes."""
    return _encoder.encode(value)


def decode_olm_ciphertext(data: bytes) -> OlmCiphertext:
    """Parse an envelope's ciphertext; raises ``msgspec.DecodeError`` if malformed."""
    return _olm_decoder.decode(data)


def decode_plaintext(data: bytes) -> Plaintext:
    """Parse a decrypted body; raises ``msgspec.DecodeError`` if malformed."""
    return _plain_decoder.decode(data)


def decode_content(data: bytes) -> Content:
    """Parse a content value on its own (the client's outbox keeps it this way)."""
    return _content_decoder.decode(data)
