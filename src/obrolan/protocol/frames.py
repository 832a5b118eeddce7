"""WebSocket frames of protocol version 1, as msgspec structs.

Every frame is one JSON text message with a ``type`` field. docs/protocol.md
is the written spec of exactly these types. No I/O here: :func:`decode_client_frame`
and :func:`decode_server_frame` turn bytes into a frame or raise
:class:`~obrolan.errors.RemoteProtocolError` with the spec's error code.

Conventions: ``bytes`` fields are standard base64 *with* padding (msgspec's JSON
form); public keys and signatures are ``str`` in vodozemac's unpadded base64.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.decoding import DECODE_ERRORS, decode_failure
from obrolan.protocol.frame_errors import refine
from obrolan.protocol.limits import Limits

__all__ = [
    "MAX_LINK_ANSWER_BYTES",
    "Ack",
    "Authenticate",
    "Challenge",
    "ClaimKeys",
    "ClaimedDevice",
    "ClaimedKeys",
    "ClientFrame",
    "Deliver",
    "DeviceKeys",
    "DeviceList",
    "Devices",
    "DevicesPublished",
    "Drained",
    "Envelope",
    "Error",
    "GetDevices",
    "Info",
    "KeySuccession",
    "KeysUploaded",
    "LinkAnswer",
    "LinkApprove",
    "LinkApproved",
    "LinkFetch",
    "LinkOffer",
    "LinkWait",
    "LinkWaiting",
    "ListedDevice",
    "MultiEnvelope",
    "OneTimeKey",
    "OutboundEnvelope",
    "PublishDevices",
    "Recipient",
    "Recover",
    "RecoverySet",
    "Register",
    "Send",
    "SendMulti",
    "Sent",
    "ServerFrame",
    "SetRecovery",
    "SignedDeviceList",
    "UploadKeys",
    "Welcome",
    "decode_client_frame",
    "decode_server_frame",
    "encode",
    "frame_types",
]

Username = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{2,31}\Z")]
"""3 to 32 characters: lower-case letters, digits, ``_ . -``; starts with a letter or digit."""
DeviceId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,32}\Z")]
EnvelopeId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{16,64}\Z")]
KeyId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9+/_-]{1,64}\Z")]
PublicKey = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9+/]{43}\Z")]
"""A 32-byte Curve25519 or Ed25519 public key, unpadded base64."""
Signature = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9+/]{86}\Z")]
"""A 64-byte Ed25519 signature, unpadded base64."""
RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
LinkId = Annotated[str, msgspec.Meta(pattern=r"^[A-Z2-7]{8}\Z")]
"""The public half of a link code: 8 characters of RFC 4648 base32."""
Day = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")]

MAX_LINK_ANSWER_BYTES = 262144
"""The largest ``link_approve`` answer: the approver fits the new device's secrets to it."""
"""A UTC calendar day, ``YYYY-MM-DD``."""


class _Frame(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=False):
    """Base of every frame; unknown fields are ignored for forward compatibility."""


# --- shared records -----------------------------------------------------------------------


class DeviceKeys(msgspec.Struct, frozen=True):
    """A device's public identity keys, self-signed by its Ed25519 key."""

    device_id: DeviceId
    ed25519: PublicKey
    curve25519: PublicKey
    signature: Signature
    """Ed25519 over :func:`obrolan.protocol.signing.device_keys_bytes`."""


class OneTimeKey(msgspec.Struct, frozen=True):
    """A signed Curve25519 one-time (or fallback) key."""

    key_id: KeyId
    key: PublicKey
    signature: Signature
    """Ed25519 of the owning device over :func:`obrolan.protocol.signing.one_time_key_bytes`."""


class OutboundEnvelope(msgspec.Struct, frozen=True):
    """Ciphertext for one device, as the sender uploads it."""

    envelope_id: EnvelopeId
    to_user: Username
    to_device: DeviceId
    ciphertext: bytes


class Recipient(msgspec.Struct, frozen=True):
    """One device a multi-recipient envelope goes to."""

    to_user: Username
    to_device: DeviceId


class MultiEnvelope(msgspec.Struct, frozen=True):
    """One ciphertext for several devices (a group's Megolm message), uploaded once."""

    envelope_id: EnvelopeId
    recipients: list[Recipient]
    ciphertext: bytes


class Envelope(msgspec.Struct, frozen=True):
    """Ciphertext for one device, as the server delivers it."""

    envelope_id: EnvelopeId
    from_user: Username
    from_device: DeviceId
    ciphertext: bytes


class ListedDevice(msgspec.Struct, frozen=True):
    """One device in an account's signed device list."""

    keys: DeviceKeys
    name: Annotated[bytes, msgspec.Meta(max_length=512)]
    """The device's name, sealed with the account's data key (only its own devices read it)."""
    added: Day
    """The UTC day the device joined the account."""


class DeviceList(msgspec.Struct, frozen=True):
    """Every device of an account, as its account key signs it (see ``SignedDeviceList``)."""

    username: Username
    account_key: PublicKey
    """The account's Ed25519 key, which signs this list."""
    version: Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
    """Grows by at least one with every change; clients refuse a lower one."""
    devices: list[ListedDevice]


class SignedDeviceList(msgspec.Struct, frozen=True):
    """A device list and the account key's signature over its exact bytes."""

    device_list: bytes
    """The JSON of a ``DeviceList``; decode these bytes only after the signature verifies."""
    signature: Signature
    """Ed25519 of ``DeviceList.account_key`` over
    :func:`obrolan.protocol.signing.device_list_bytes`."""


class KeySuccession(msgspec.Struct, frozen=True):
    """Proof that an account key was followed by another through ``recover``.

    The old account key had signed its recovery key, and that recovery key signed
    the handover to the new account key: a chain of these links a contact's
    earlier keys to the one pinned now (the server keeps them, cannot forge them).
    """

    account_key: PublicKey
    """The earlier account key."""
    recovery_key: PublicKey
    """Its recovery key."""
    recovery_key_signature: Signature
    """Ed25519 of ``account_key`` over :func:`obrolan.protocol.signing.recovery_key_bytes`."""
    nonce: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    """The challenge nonce of the ``recover`` connection."""
    new_account_key: PublicKey
    new_recovery_key: PublicKey
    recovery_signature: Signature
    """Ed25519 of ``recovery_key`` over :func:`obrolan.protocol.signing.recover_bytes`."""


class ClaimedDevice(msgspec.Struct, frozen=True):
    """One device of a user with one key claimed for a new Olm session."""

    device: DeviceKeys
    one_time_key: OneTimeKey | None
    """A one-time key, or the device's fallback key when none is left; null if neither."""
    fallback: bool = False
    """True when ``one_time_key`` is the fallback key (it may be handed out again)."""


# --- client to server ---------------------------------------------------------------------


class Register(_Frame, frozen=True, tag="register"):
    """Create an account with its first device and authenticate this connection."""

    version: int
    username: Username
    device: DeviceKeys
    device_list: SignedDeviceList
    """Version 1 of the account's list, holding exactly ``device``."""
    recovery_key: PublicKey
    """The Ed25519 key derived from the account's recovery code (its verifier)."""
    recovery_key_signature: Signature
    """Ed25519 of the account key over :func:`obrolan.protocol.signing.recovery_key_bytes`."""
    one_time_keys: list[OneTimeKey]
    fallback_key: OneTimeKey | None
    signature: Signature
    """Ed25519 of ``device`` over :func:`obrolan.protocol.signing.auth_bytes`."""


class Recover(_Frame, frozen=True, tag="recover"):
    """Reclaim an account whose devices are all lost, with its recovery code.

    Replaces the account key, the device list and the recovery key; every old
    device is removed with its queue and keys. Answered like ``register``.
    """

    version: int
    username: Username
    device: DeviceKeys
    device_list: SignedDeviceList
    """The new account key's first list, holding exactly ``device``."""
    recovery_key: PublicKey
    """The verifier of the new recovery code."""
    recovery_key_signature: Signature
    """Ed25519 of the new account key over :func:`obrolan.protocol.signing.recovery_key_bytes`."""
    one_time_keys: list[OneTimeKey]
    fallback_key: OneTimeKey | None
    signature: Signature
    """Ed25519 of ``device`` over :func:`obrolan.protocol.signing.auth_bytes`."""
    recovery_signature: Signature
    """Ed25519 of the *old* recovery key over :func:`obrolan.protocol.signing.recover_bytes`."""


class LinkWait(_Frame, frozen=True, tag="link_wait"):
    """A new device offers itself for linking and waits (unauthenticated)."""

    link_id: LinkId
    offer: Annotated[bytes, msgspec.Meta(max_length=4096)]
    """The sealed ``NewDeviceOffer`` (docs/protocol.md, linking); opaque to the server."""


class Authenticate(_Frame, frozen=True, tag="authenticate"):
    """Prove possession of a registered device's Ed25519 key."""

    version: int
    username: Username
    device_id: DeviceId
    signature: Signature
    """Ed25519 over :func:`obrolan.protocol.signing.auth_bytes` of this connection's nonce."""


class UploadKeys(_Frame, frozen=True, tag="upload_keys"):
    """Publish more one-time keys and, optionally, a new fallback key."""

    id: RequestId
    one_time_keys: list[OneTimeKey]
    fallback_key: OneTimeKey | None = None


class GetDevices(_Frame, frozen=True, tag="get_devices"):
    """Read a user's devices without claiming keys."""

    id: RequestId
    username: Username


class ClaimKeys(_Frame, frozen=True, tag="claim_keys"):
    """Claim one key of each of a user's devices to start Olm sessions."""

    id: RequestId
    username: Username
    device_ids: list[DeviceId] | None = None
    """Only these devices; null means every device of the user."""


class PublishDevices(_Frame, frozen=True, tag="publish_devices"):
    """Replace the account's device list with a newer one signed by the account key."""

    id: RequestId
    device_list: SignedDeviceList


class SetRecovery(_Frame, frozen=True, tag="set_recovery"):
    """Replace the account's recovery key (a new recovery code)."""

    id: RequestId
    recovery_key: PublicKey
    signature: Signature
    """Ed25519 of the account key over :func:`obrolan.protocol.signing.recovery_key_bytes`."""


class LinkFetch(_Frame, frozen=True, tag="link_fetch"):
    """Read the offer a new device left under a link id."""

    id: RequestId
    link_id: LinkId


class LinkApprove(_Frame, frozen=True, tag="link_approve"):
    """Hand the waiting new device its sealed answer; the link id is then used up."""

    id: RequestId
    link_id: LinkId
    answer: Annotated[bytes, msgspec.Meta(max_length=MAX_LINK_ANSWER_BYTES)]
    """An ``OlmCiphertext`` (JSON) to the new device, holding ``LinkSecrets``."""


class Send(_Frame, frozen=True, tag="send"):
    """Store envelopes durably for their devices; answered by ``sent`` after the write."""

    id: RequestId
    envelopes: list[OutboundEnvelope]


class SendMulti(_Frame, frozen=True, tag="send_multi"):
    """Store one ciphertext once, queued for each recipient device; answered by ``sent``."""

    id: RequestId
    envelope: MultiEnvelope


class Ack(_Frame, frozen=True, tag="ack", omit_defaults=True):
    """The device has stored these envelopes; the server deletes them. No answer."""

    envelope_ids: list[EnvelopeId]
    expired: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)] = 0
    """How many of the envelopes ``welcome.expired`` counted the device has told its user of."""


ClientFrame = (
    Register
    | Authenticate
    | Recover
    | LinkWait
    | UploadKeys
    | GetDevices
    | ClaimKeys
    | PublishDevices
    | SetRecovery
    | LinkFetch
    | LinkApprove
    | Send
    | SendMulti
    | Ack
)


# --- server to client ---------------------------------------------------------------------


class Challenge(_Frame, frozen=True, tag="challenge"):
    """First frame on every connection: versions, a fresh nonce and the limits."""

    versions: list[int]
    nonce: bytes
    """32 random bytes, valid for one ``register`` or ``authenticate`` on this connection."""
    limits: Limits


class Welcome(_Frame, frozen=True, tag="welcome", omit_defaults=True):
    """The connection is authenticated; queued envelopes follow, then ``drained``."""

    version: int
    username: Username
    device_id: DeviceId
    one_time_keys: int
    """How many unclaimed one-time keys the server holds for this device."""
    expired: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)] = 0
    """Envelopes for this device deleted unread at their TTL, not yet acknowledged (``ack.expired``)."""


class Error(_Frame, frozen=True, tag="error"):
    """A request (``id``) or the connection (``id`` null) was refused."""

    id: RequestId | None
    code: ErrorCode
    message: str
    retry_after_ms: int | None = None
    """With ``rate_limited``: milliseconds after which the refused request would pass."""


class KeysUploaded(_Frame, frozen=True, tag="keys_uploaded"):
    """Answer to ``upload_keys``."""

    id: RequestId
    one_time_keys: int


class Devices(_Frame, frozen=True, tag="devices"):
    """Answer to ``get_devices``: the account's signed device list, as last published."""

    id: RequestId
    username: Username
    device_list: SignedDeviceList
    last_active: dict[DeviceId, Day] = {}
    """For the caller's own account only: the last UTC day each device connected."""
    successions: list[KeySuccession] = []
    """How the account's earlier account keys led to the list's, oldest first."""


class DevicesPublished(_Frame, frozen=True, tag="devices_published"):
    """Answer to ``publish_devices``: the list is stored; removed devices are gone."""

    id: RequestId
    version: int


class RecoverySet(_Frame, frozen=True, tag="recovery_set"):
    """Answer to ``set_recovery``."""

    id: RequestId


class LinkWaiting(_Frame, frozen=True, tag="link_waiting"):
    """Answer to ``link_wait``: the offer is held until ``expires_in_seconds``."""

    link_id: LinkId
    expires_in_seconds: int


class LinkOffer(_Frame, frozen=True, tag="link_offer"):
    """Answer to ``link_fetch``."""

    id: RequestId
    link_id: LinkId
    offer: bytes


class LinkApproved(_Frame, frozen=True, tag="link_approved"):
    """Answer to ``link_approve``: the answer reached the waiting device."""

    id: RequestId


class LinkAnswer(_Frame, frozen=True, tag="link_answer"):
    """Pushed to the waiting new device when an existing device approved it."""

    link_id: LinkId
    answer: bytes


class ClaimedKeys(_Frame, frozen=True, tag="claimed_keys"):
    """Answer to ``claim_keys``."""

    id: RequestId
    username: Username
    devices: list[ClaimedDevice]


class Sent(_Frame, frozen=True, tag="sent"):
    """Answer to ``send``: every envelope is durably stored (or was already)."""

    id: RequestId
    envelope_ids: list[EnvelopeId]
    skipped: list[EnvelopeId] = []
    """Envelopes not stored because their device is no longer in the account's list."""
    skipped_recipients: list[Recipient] = []
    """For ``send_multi``: recipients not queued (not in their account, or queue full)."""


class Deliver(_Frame, frozen=True, tag="deliver"):
    """Envelopes for this device, in the order they were stored."""

    envelopes: list[Envelope]


class Drained(_Frame, frozen=True, tag="drained"):
    """Everything that was queued when the connection authenticated has been delivered."""


ServerFrame = (
    Challenge
    | Welcome
    | Error
    | KeysUploaded
    | Devices
    | DevicesPublished
    | RecoverySet
    | ClaimedKeys
    | Sent
    | Deliver
    | Drained
    | LinkWaiting
    | LinkOffer
    | LinkApproved
    | LinkAnswer
)

# --- HTTP bodies --------------------------------------------------------------------------


class Info(msgspec.Struct, frozen=True):
    """The body of ``GET /v1/info``: what a client needs before it connects."""

    server: str
    """Always ``"obrolan"``."""
    version: str
    """The server's software version (informative only)."""
    versions: list[int]
    """Protocol versions the server speaks."""
    limits: Limits


# --- codec --------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_client_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)
_server_decoder: msgspec.json.Decoder[ServerFrame] = msgspec.json.Decoder(ServerFrame)
_CLIENT_TAGS = frozenset(t.__struct_config__.tag for t in ClientFrame.__args__)
_FIELDS_BY_TAG = {
    t.__struct_config__.tag: frozenset(t.__struct_fields__)
    for t in (*ClientFrame.__args__, *ServerFrame.__args__)
}
_SERVER_TAGS = frozenset(t.__struct_config__.tag for t in ServerFrame.__args__)


def encode(frame: msgspec.Struct) -> bytes:
    """Serialize a frame to the JSON bytes sent as one WebSocket text message."""
    return _encoder.encode(frame)


def _decode_frame(
    decoder: msgspec.json.Decoder[Any], data: bytes | str, tags: frozenset[str]
) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise refine(data, exc, tags, _FIELDS_BY_TAG) from None
    except DECODE_ERRORS as exc:
        raise decode_failure(exc, "frame") from None


def decode_client_frame(data: bytes | str) -> ClientFrame:
    """Parse a frame a client sent.

    Raises:
        RemoteProtocolError: with code ``malformed_frame``, ``unknown_frame_type`` or
            ``invalid_username``, whatever was wrong with the bytes.
    """
    frame: ClientFrame = _decode_frame(_client_decoder, data, _CLIENT_TAGS)
    return frame


def decode_server_frame(data: bytes | str) -> ServerFrame:
    """Parse a frame the server sent.

    Raises:
        RemoteProtocolError: with code ``malformed_frame`` or ``unknown_frame_type``,
            whatever was wrong with the bytes.
    """
    frame: ServerFrame = _decode_frame(_server_decoder, data, _SERVER_TAGS)
    return frame


def frame_types() -> dict[str, type[msgspec.Struct]]:
    """Every frame type by its wire tag (used by the spec test)."""
    return {t.__struct_config__.tag: t for t in (*ClientFrame.__args__, *ServerFrame.__args__)}
