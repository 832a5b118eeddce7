"""What the client API hands to programs: messages, contacts, the profile's identity."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from obrolan.client.ordering import sort_key

__all__ = ["Approval", "Contact", "Device", "Event", "Message", "MessageState", "Whoami"]


class MessageState(enum.StrEnum):
    """Where a message is on its way."""

    QUEUED = "queued"
    """Written by this device, waiting in the outbox for the server."""
    HELD = "held"
    """Written by this device and kept in the outbox, not encrypted: the recipient's
    account key changed and the user has not accepted the new one (``trust``)."""
    SENT = "sent"
    """The server acknowledged it: it is stored durably until delivered."""
    RECEIVED = "received"
    """Written by someone else and stored on this device."""
    FAILED = "failed"
    """Cannot be sent (the recipient does not exist); ``error`` says why."""
    NOTICE = "notice"
    """Not a message: a line the client adds (a gap, a timer change, an unreadable message)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation, as stored on this device."""

    message_id: str
    peer: str
    """The other person in the conversation."""
    sender: str
    sender_device: str
    outgoing: bool
    text: str
    sent_at_ms: int
    """The sender's clock: shown, never trusted for ordering across devices."""
    state: MessageState
    error: str | None = None
    warning: str | None = None
    """Set when the sender's identity key changed since it was pinned, and on notices."""
    reply_to: str | None = None
    edited_at_ms: int | None = None
    deleted: bool = False
    receipt: str | None = None
    """Ours: "delivered" or "read" by the peer. Theirs: "read" once we reported it."""
    expires_at_ms: int | None = None
    attachment: dict[str, object] | None = None
    """name, mime, size and blob_id of an attached file (never its key)."""
    reactions: dict[str, str] = field(default_factory=dict)
    """reactor → emoji."""
    earlier_texts: tuple[str, ...] = ()
    """The texts before each edit, oldest first."""
    counter: int | None = None
    """The sending device's authenticated counter (None: a notice, or written here)."""
    arrival: int = 0
    """When it was stored on this device: later arrivals have higher numbers."""
    position: int = 0
    """Its place in the conversation: its own ``arrival``, or, if it arrived late, that
    of the next message its sender wrote after it (:mod:`obrolan.client.ordering`)."""
    arrived_late: bool = False
    """A later message from the same sending device had already arrived (the server
    delayed or reordered it); it is shown where its sender put it, not at the end."""
    delivery: str | None = None
    """Ours, sent and without a receipt after the server's TTL: "not_delivered", or
    "unconfirmed" when the peer sends no receipts (:mod:`obrolan.client.delivery_status`)."""

    @property
    def edited(self) -> bool:
        return self.edited_at_ms is not None

    @property
    def sort_key(self) -> tuple[int, int, int]:
        """What a conversation is sorted by: (position, counter or 0, arrival)."""
        return sort_key(self.position, self.counter, self.arrival)

    def as_json(self) -> dict[str, object]:
        """A JSON-ready dict (what ``--json`` prints)."""
        return {
            "message_id": self.message_id,
            "peer": self.peer,
            "sender": self.sender,
            "sender_device": self.sender_device,
            "outgoing": self.outgoing,
            "text": self.text,
            "sent_at_ms": self.sent_at_ms,
            "state": self.state.value,
            "error": self.error,
            "warning": self.warning,
            "reply_to": self.reply_to,
            "edited": self.edited,
            "earlier_texts": list(self.earlier_texts),
            "deleted": self.deleted,
            "receipt": self.receipt,
            "reactions": self.reactions,
            "expires_at_ms": self.expires_at_ms,
            "attachment": self.attachment,
            "counter": self.counter,
            "arrived_late": self.arrived_late,
            "delivery": self.delivery,
            "sort_key": list(self.sort_key),
        }


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened in a conversation, as :meth:`Client.events` yields it.

    ``kind`` is "message" (a new line in a conversation: a message, or a notice such
    as "a message may be missing" or a timer change), "update" (a message changed:
    reaction, edit, delete, receipt), "typing" (``active`` says started or stopped)
    or "request" (a message from someone not accepted yet; it waits in requests),
    "verify" (the peer started a SAS verification) or "history" (another device of
    ours sent its history; :meth:`Client.receive_history` imports it).
    """

    kind: str
    peer: str
    message: Message | None = None
    active: bool | None = None

    def as_json(self) -> dict[str, object]:
        """A JSON-ready dict (what ``listen --json`` prints)."""
        return {
            "event": self.kind,
            "peer": self.peer,
            "message": None if self.message is None else self.message.as_json(),
            "active": self.active,
        }


@dataclass(frozen=True, slots=True)
class Contact:
    """Someone this device has talked to, with the account key pinned on first contact."""

    username: str
    identity_key: str
    """The account key pinned on first contact (or accepted with ``trust``)."""
    first_seen_ms: int
    changed_key: str | None = None
    """A different account key the server has shown since, until the user trusts it."""
    verified: bool = False
    """The user compared safety codes (``verify``) for ``identity_key``."""
    list_version: int = 0
    """The highest device-list version seen for the current key (older ones are refused)."""

    @property
    def key_changed(self) -> bool:
        """The server has shown a different account key since it was pinned."""
        return self.changed_key is not None

    @property
    def current_key(self) -> str:
        """The key the contact's devices present now (what a safety number must cover)."""
        return self.changed_key or self.identity_key

    @property
    def blocked_by_change(self) -> bool:
        """The key changed (verified or not): nothing is sent until the user trusts it."""
        return self.key_changed

    def as_json(self) -> dict[str, object]:
        """A JSON-ready dict (what ``--json`` prints)."""
        return {
            "username": self.username,
            "identity_key": self.identity_key,
            "first_seen_ms": self.first_seen_ms,
            "key_changed": self.key_changed,
            "changed_key": self.changed_key,
            "verified": self.verified,
        }


@dataclass(frozen=True, slots=True)
class Device:
    """One device of this account, as its signed device list shows it."""

    device_id: str
    name: str
    added: str
    """The UTC day it joined the account."""
    last_active: str | None
    """The last UTC day it connected, as the server reports it."""
    ed25519: str
    current: bool
    """This is the device you are using."""

    def as_json(self) -> dict[str, object]:
        """A JSON-ready dict (what ``--json`` prints)."""
        return {
            "device_id": self.device_id,
            "name": self.name,
            "added": self.added,
            "last_active": self.last_active,
            "ed25519": self.ed25519,
            "current": self.current,
        }


@dataclass(frozen=True, slots=True)
class Approval:
    """What approving a new device did."""

    device: Device
    contacts_shared: int
    """Contacts whose pinned keys, verification and conversation went to the new device."""
    contacts_left_out: int
    """Contacts that did not fit the answer: the new device pins them on first contact."""


@dataclass(frozen=True, slots=True)
class Whoami:
    """This profile's account and device."""

    username: str
    device_id: str
    server_url: str
    ed25519: str
    curve25519: str
    account_key: str

    def as_json(self) -> dict[str, object]:
        """A JSON-ready dict (what ``--json`` prints)."""
        return {
            "username": self.username,
            "device_id": self.device_id,
            "server": self.server_url,
            "ed25519": self.ed25519,
            "curve25519": self.curve25519,
            "account_key": self.account_key,
        }
