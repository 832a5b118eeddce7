"""What travels inside an envelope's ciphertext: the end-to-end layer.

The server never sees these types. ``Envelope.ciphertext`` is the JSON of
:class:`OlmCiphertext`; decrypting its ``body`` with the Olm session gives the
JSON of :class:`Plaintext`. docs/protocol.md specifies both, so another client
can interoperate.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from obrolan.protocol.decoding import decode_json
from obrolan.protocol.frames import (
    DeviceId,
    DeviceKeys,
    OneTimeKey,
    PublicKey,
    SignedDeviceList,
    Username,
)
from obrolan.protocol.groups import GroupId, SignedGroupMessage, SignedGroupUpdate, StateHash

__all__ = [
    "DELETE_WINDOW_MS",
    "EPHEMERAL",
    "GROUP_CONTROL",
    "OWN_DEVICES_ONLY",
    "VERIFICATION",
    "Attachment",
    "ContactUpdate",
    "Content",
    "Delete",
    "Edit",
    "GroupJoinRequest",
    "GroupKey",
    "GroupReport",
    "GroupState",
    "GroupSync",
    "HistoryTransfer",
    "LinkSecrets",
    "LinkedContact",
    "NewDeviceOffer",
    "OlmCiphertext",
    "Plaintext",
    "Reaction",
    "Receipt",
    "Text",
    "Timer",
    "Typing",
    "VerifyCancel",
    "VerifyKey",
    "VerifyMac",
    "VerifyStart",
    "decode_content",
    "decode_link_offer",
    "decode_link_secrets",
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


BlobId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{16,64}\Z")]
Emoji = Annotated[str, msgspec.Meta(max_length=32)]
"""One emoji (a short grapheme cluster); the empty string withdraws a reaction."""
ReceiptStatus = Literal["delivered", "read", "off"]
TimerSeconds = Annotated[int, msgspec.Meta(ge=1, le=365 * 24 * 3600)]


class Attachment(msgspec.Struct, frozen=True, omit_defaults=True):
    """An encrypted file on the server's blob store, and what it takes to read it."""

    blob_id: BlobId
    key: bytes
    """32-byte AES-256-GCM key, fresh for this file."""
    sha256: bytes
    """SHA-256 of the whole encrypted blob as uploaded (checked before decrypting)."""
    size: int
    """Plaintext size in bytes."""
    chunk_size: int
    """Plaintext bytes per encrypted chunk (the last may be shorter)."""
    name: str
    mime: str
    thumbnail: bytes | None = None
    """For images: a small JPEG preview, carried inside this (encrypted) message."""


class Text(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="kind", tag="text"):
    """A text message, perhaps replying to another, perhaps carrying a file."""

    message_id: MessageId
    sent_at_ms: int
    """The sender's clock, milliseconds since the Unix epoch (shown, never trusted)."""
    text: str
    reply_to: MessageId | None = None
    """The message this one quotes."""
    attachment: Attachment | None = None
    expires_in_seconds: int | None = None
    """Disappearing: every device deletes it this long after it arrives (or was sent)."""


class Reaction(msgspec.Struct, frozen=True, tag_field="kind", tag="reaction"):
    """One emoji per person per message; a new one replaces the old, "" withdraws it."""

    message_id: MessageId
    sent_at_ms: int
    target: MessageId
    emoji: Emoji


class Edit(msgspec.Struct, frozen=True, tag_field="kind", tag="edit"):
    """The sender replaces the text of one of their own messages."""

    message_id: MessageId
    sent_at_ms: int
    target: MessageId
    text: str


class Delete(msgspec.Struct, frozen=True, tag_field="kind", tag="delete"):
    """The sender deletes one of their own messages for everyone (within the window)."""

    message_id: MessageId
    sent_at_ms: int
    target: MessageId


class Receipt(msgspec.Struct, frozen=True, tag_field="kind", tag="receipt"):
    """The recipient's device has stored (delivered) or shown (read) these messages."""

    message_id: MessageId
    sent_at_ms: int
    targets: list[MessageId]
    status: ReceiptStatus


class Typing(msgspec.Struct, frozen=True, tag_field="kind", tag="typing"):
    """The sender started or stopped typing in this conversation."""

    message_id: MessageId
    sent_at_ms: int
    active: bool


class Timer(msgspec.Struct, frozen=True, tag_field="kind", tag="timer"):
    """The conversation's disappearing-message timer changes (null turns it off)."""

    message_id: MessageId
    sent_at_ms: int
    seconds: TimerSeconds | None


class HistoryTransfer(msgspec.Struct, frozen=True, tag_field="kind", tag="history"):
    """One device of an account hands its history to another of the same account.

    Only accepted from a device in the account's own signed list. The history is
    an archive (docs/protocol.md, history transfer) uploaded as a blob for the
    receiving device.
    """

    message_id: MessageId
    sent_at_ms: int
    archive: Attachment
    """The blob holding the sealed archive (its own AES-256-GCM key and digest)."""
    archive_passphrase: Annotated[str, msgspec.Meta(min_length=32, max_length=128)]
    """A fresh random passphrase of the archive file inside the blob (its own format)."""
    messages: int
    """How many messages the archive holds (for progress and the final check)."""


class LinkedContact(msgspec.Struct, frozen=True):
    """A contact as the approving device knows it, so the new device does not trust anew."""

    username: Username
    account_key: PublicKey
    """The account key the approving device pinned (not a changed one it is warning about)."""
    verified: bool
    """The user compared safety numbers (or ran SAS) with this contact."""
    list_version: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
    """The highest device-list version seen: an older list is refused on the new device too."""
    conversation: Literal["accepted", "request", "blocked"] | None
    """The 1:1 conversation's state, or None when there is none (a fellow group member)."""
    timer_seconds: TimerSeconds | None
    """The conversation's disappearing-message timer, if set."""


class ContactUpdate(msgspec.Struct, frozen=True, tag_field="kind", tag="contact"):
    """What the user decided about a contact on one device, for the account's other devices.

    Sent on verifying, trusting a changed key, accepting and (un)blocking; only
    accepted from a device in the account's own signed list.
    """

    message_id: MessageId
    sent_at_ms: int
    contact: LinkedContact


Txn = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{16,64}\Z")]
"""Names one verification between two devices (chosen by the device that starts it)."""


class VerifyStart(msgspec.Struct, frozen=True, tag_field="kind", tag="verify_start"):
    """Begin a SAS verification: commit to a fresh SAS public key without showing it."""

    message_id: MessageId
    sent_at_ms: int
    txn: Txn
    commitment: bytes
    """SHA-256 of "obrolan-sas-commit-v1" NUL txn NUL the SAS public key that the sender's
    ``verify_key`` will carry (docs/protocol.md, verification)."""


class VerifyKey(msgspec.Struct, frozen=True, tag_field="kind", tag="verify_key"):
    """Reveal the SAS public key, only after the peer's ``verify_start`` arrived."""

    message_id: MessageId
    sent_at_ms: int
    txn: Txn
    public_key: PublicKey


class VerifyMac(msgspec.Struct, frozen=True, tag_field="kind", tag="verify_mac"):
    """After the user confirmed the codes match: MACs of the sender's account and device keys."""

    message_id: MessageId
    sent_at_ms: int
    txn: Txn
    account_key_mac: str
    device_key_mac: str


class VerifyCancel(msgspec.Struct, frozen=True, tag_field="kind", tag="verify_cancel"):
    """Stop a verification; nothing is marked verified."""

    message_id: MessageId
    sent_at_ms: int
    txn: Txn
    reason: Literal["mismatch", "cancelled", "timeout", "bad_commitment", "bad_mac"]


class GroupKey(msgspec.Struct, frozen=True, tag_field="kind", tag="group_key"):
    """A sending device shares its Megolm session for a group with one member device."""

    message_id: MessageId
    sent_at_ms: int
    group_id: GroupId
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    session_key: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    """vodozemac's ``SessionKey`` in base64: it lets the receiver decrypt from now on."""
    state_seq: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
    """The sender's state of the group when it shared the key (as in ``GroupMessage``)."""
    state_hash: StateHash


class GroupState(msgspec.Struct, frozen=True, tag_field="kind", tag="group_state"):
    """Signed state updates of a group: the whole chain for a new member, else the new ones."""

    message_id: MessageId
    sent_at_ms: int
    group_id: GroupId
    updates: Annotated[list[SignedGroupUpdate], msgspec.Meta(min_length=1)]


class GroupJoinRequest(msgspec.Struct, frozen=True, tag_field="kind", tag="group_join"):
    """Someone with an invite link asks the member who made it to be let in."""

    message_id: MessageId
    sent_at_ms: int
    group_id: GroupId
    invite_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{16,64}\Z")]


class GroupSync(msgspec.Struct, frozen=True, tag_field="kind", tag="group_sync"):
    """A device that is behind, or on a displaced update, asks a member's device for the
    updates it holds from ``from_seq`` on."""

    message_id: MessageId
    sent_at_ms: int
    group_id: GroupId
    from_seq: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
    """The asker's last ``seq``: the update there shows whether the asker's is the one
    that counts."""


class GroupReport(msgspec.Struct, frozen=True, tag_field="kind", tag="group_report"):
    """A member reports a group message to the group's admins, with its sender's signature."""

    message_id: MessageId
    sent_at_ms: int
    group_id: GroupId
    reported: SignedGroupMessage
    reason: Annotated[str, msgspec.Meta(max_length=500)]


Content = (
    Text
    | Reaction
    | Edit
    | Delete
    | Receipt
    | Typing
    | Timer
    | HistoryTransfer
    | ContactUpdate
    | VerifyStart
    | VerifyKey
    | VerifyMac
    | VerifyCancel
    | GroupKey
    | GroupState
    | GroupJoinRequest
    | GroupSync
    | GroupReport
)
"""Every kind of content, told apart by ``kind``."""

VERIFICATION = (VerifyStart, VerifyKey, VerifyMac, VerifyCancel)
"""The kinds of a SAS verification between two devices."""

GROUP_CONTROL = (GroupKey, GroupState, GroupJoinRequest, GroupSync, GroupReport)
"""Kinds that carry group state and keys over Olm (never a 1:1 conversation event)."""

OWN_DEVICES_ONLY = (HistoryTransfer, ContactUpdate)
"""Kinds only the account's own devices send each other."""

EPHEMERAL = (Receipt, Typing, *OWN_DEVICES_ONLY, *VERIFICATION, *GROUP_CONTROL)
"""Kinds that carry no counter: they are never stored as conversation events."""

DELETE_WINDOW_MS = 48 * 3600 * 1000
"""How long after sending a message its sender may delete it for everyone."""


class Plaintext(msgspec.Struct, frozen=True, omit_defaults=True):
    """The decrypted body, naming both ends so the server cannot redirect it."""

    sender: Username
    sender_device: DeviceId
    recipient: Username
    recipient_device: DeviceId
    content: Content
    counter: int | None = None
    """The sending device's number for this event in this conversation (1, 2, …); null
    for ephemeral kinds. A missing number after a later one arrived means the server
    withheld or lost a message."""
    sent_to: Username | None = None
    """Set on a copy for the sender's own other devices ("sent transcript"): the
    conversation's peer. ``recipient`` is then the sender's own username."""


class NewDeviceOffer(msgspec.Struct, frozen=True):
    """What a new device shows the approving device, sealed with the link code's secret."""

    username: Username
    """The account the new device wants to join."""
    device: DeviceKeys
    """The new device's keys, self-signed for ``username``."""
    one_time_key: OneTimeKey
    """A one-time key of the new device, for the Olm session that carries the answer."""
    name: Annotated[str, msgspec.Meta(max_length=64)]


class LinkSecrets(msgspec.Struct, frozen=True):
    """The approving device's answer: the account secrets, inside an Olm pre-key message."""

    username: Username
    approver_device: DeviceId
    account_secret: bytes
    """32 bytes: the seed of the account's Ed25519 key."""
    data_key: bytes
    """32 bytes: the account's key for data only its devices read (device names)."""
    device_list: SignedDeviceList
    """The list the approver published, which holds the new device."""
    history: bool
    """True when a ``history`` transfer follows."""
    contacts: list[LinkedContact] = []
    """The approver's contacts, most recently talked to first, as many as fit the answer."""


_encoder = msgspec.json.Encoder()


def encode(value: msgspec.Struct) -> bytes:
    """Serialize an end-to-end struct to JSON bytes."""
    return _encoder.encode(value)


def decode_olm_ciphertext(data: bytes) -> OlmCiphertext:
    """Parse an envelope's ciphertext; raises ``RemoteProtocolError`` if malformed."""
    return decode_json(data, OlmCiphertext, "Olm ciphertext")


def decode_plaintext(data: bytes) -> Plaintext:
    """Parse a decrypted body; raises ``RemoteProtocolError`` if malformed."""
    return decode_json(data, Plaintext, "plaintext")


def decode_content(data: bytes) -> Content:
    """Parse a content value on its own (the client's outbox keeps it this way).

    Raises ``RemoteProtocolError`` if malformed.
    """
    value: Content = decode_json(data, Content, "content")
    return value


def decode_link_offer(data: bytes) -> NewDeviceOffer:
    """Parse an unsealed link offer; raises ``RemoteProtocolError`` if malformed."""
    return decode_json(data, NewDeviceOffer, "link offer")


def decode_link_secrets(data: bytes) -> LinkSecrets:
    """Parse the decrypted link answer; raises ``RemoteProtocolError`` if malformed."""
    return decode_json(data, LinkSecrets, "link answer")
