"""Group chats, end to end: signed state updates, Megolm messages, reports.

The server never sees these types: state updates, session keys, join requests
and reports travel inside Olm messages (``content``); group messages are
Megolm ciphertexts uploaded once as a multi-recipient envelope.

A group's state is a chain of :class:`SignedGroupUpdate`: each names the hash
of the one before it and is signed by its actor's *account key*; every client
checks signature, role and chain before applying it (docs/protocol.md, groups).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from obrolan.protocol.decoding import decode_json
from obrolan.protocol.frames import DeviceId, Signature, Username

__all__ = [
    "Add",
    "ApproveJoin",
    "Create",
    "DeleteMessage",
    "Demote",
    "EditInfo",
    "GroupAction",
    "GroupCiphertext",
    "GroupId",
    "GroupMessage",
    "GroupSettings",
    "GroupUpdate",
    "Invite",
    "Leave",
    "Mute",
    "Promote",
    "RejectJoin",
    "Remove",
    "RevokeInvite",
    "SetSettings",
    "SignedGroupMessage",
    "SignedGroupUpdate",
    "StateHash",
    "Transfer",
    "decode_group_ciphertext",
    "decode_group_message",
    "decode_group_update",
    "decode_signed_group_message",
]

GroupId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{16,64}\Z")]
InviteId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{16,64}\Z")]
MessageId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{16,64}\Z")]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
LongText = Annotated[str, msgspec.Meta(max_length=4000)]
Reason = Annotated[str, msgspec.Meta(max_length=500)]
Who = Literal["all", "admins"]
StateHash = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
"""SHA-256 of a ``SignedGroupUpdate.update``: names one state of a group."""


class GroupSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Who may do what in the group."""

    who_can_post: Who = "all"
    who_can_add: Who = "admins"
    approval: bool = True
    """Joining by invite link waits for an admin's approval."""


class _Action(msgspec.Struct, frozen=True, tag_field="op", forbid_unknown_fields=False):
    """Base of every action; ``op`` names it."""


class Create(_Action, frozen=True, tag="create"):
    """The first update (``seq`` 0): its actor is the owner; ``members`` join as members."""

    title: Title
    description: LongText = ""
    rules: LongText = ""
    settings: GroupSettings = GroupSettings()
    members: list[Username] = []


class Add(_Action, frozen=True, tag="add"):
    """Add a member (admins; anyone when ``who_can_add`` is ``all``)."""

    user: Username


class Remove(_Action, frozen=True, tag="remove"):
    """Remove a member (admins remove members; the owner removes admins too)."""

    user: Username


class Leave(_Action, frozen=True, tag="leave"):
    """The actor leaves (the owner must transfer ownership first)."""


class Promote(_Action, frozen=True, tag="promote"):
    """Make a member an admin (owner only)."""

    user: Username


class Demote(_Action, frozen=True, tag="demote"):
    """Make an admin a member again (owner only)."""

    user: Username


class Transfer(_Action, frozen=True, tag="transfer"):
    """Hand ownership to a member or admin; the old owner becomes an admin (owner only)."""

    user: Username


class EditInfo(_Action, frozen=True, tag="edit"):
    """Change title, description or rules (admins); null leaves a field as it is."""

    title: Title | None = None
    description: LongText | None = None
    rules: LongText | None = None


class SetSettings(_Action, frozen=True, tag="settings"):
    """Replace the group's settings (admins)."""

    settings: GroupSettings


class Invite(_Action, frozen=True, tag="invite"):
    """Create an invite link, valid until ``expires_at_ms`` unless revoked (admins)."""

    invite_id: InviteId
    expires_at_ms: int


class RevokeInvite(_Action, frozen=True, tag="revoke_invite"):
    """Revoke an invite link (admins)."""

    invite_id: InviteId


class ApproveJoin(_Action, frozen=True, tag="approve_join"):
    """Admit someone who asked to join with a valid invite (admins); they become a member."""

    user: Username
    invite_id: InviteId


class RejectJoin(_Action, frozen=True, tag="reject_join"):
    """Turn down a join request (admins)."""

    user: Username
    invite_id: InviteId


class Mute(_Action, frozen=True, tag="mute"):
    """Mute a member until ``until_ms`` (0 lifts it) (admins)."""

    user: Username
    until_ms: int


class DeleteMessage(_Action, frozen=True, tag="delete_message"):
    """Delete a message for everyone (admins; a member may delete their own)."""

    sender: Username
    message_id: MessageId


GroupAction = (
    Create
    | Add
    | Remove
    | Leave
    | Promote
    | Demote
    | Transfer
    | EditInfo
    | SetSettings
    | Invite
    | RevokeInvite
    | ApproveJoin
    | RejectJoin
    | Mute
    | DeleteMessage
)


class GroupUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """One change of a group's state, chained to the one before it."""

    group_id: GroupId
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
    """0 for ``create``, then one more than the update it follows."""
    prev: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)] | None
    """SHA-256 of the previous update's ``SignedGroupUpdate.update`` bytes (null at seq 0)."""
    actor: Username
    at_ms: int
    """The actor's clock (shown, never trusted for order: ``seq`` orders)."""
    action: GroupAction
    reason: Reason = ""
    """Why, in the admin's words; shown in the moderation log."""


class SignedGroupUpdate(msgspec.Struct, frozen=True):
    """A group update and its actor's account-key signature over its exact bytes."""

    update: bytes
    """The JSON of a ``GroupUpdate``; decode only after the signature verifies."""
    signature: Signature
    """Ed25519 of the actor's account key over
    :func:`obrolan.protocol.signing.group_update_bytes`."""


class GroupMessage(msgspec.Struct, frozen=True, kw_only=True):
    """What a member posts (the plaintext inside Megolm, before signing)."""

    group_id: GroupId
    sender: Username
    sender_device: DeviceId
    message_id: MessageId
    sent_at_ms: int
    text: Annotated[str, msgspec.Meta(max_length=65536)]
    reply_to: MessageId | None = None
    counter: Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
    """The sending device's number for its messages in this group (1, 2, …): receivers
    show each device's messages in this order, whatever order the server delivers."""
    state_seq: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
    """The ``seq`` of the last update the sender's device had applied when it posted."""
    state_hash: StateHash
    """The hash of that update (``GroupUpdate.prev`` of the next one): a receiver that
    holds another state, or none at that ``seq``, learns that it is behind or forked."""


class SignedGroupMessage(msgspec.Struct, frozen=True):
    """A group message signed by its sender's device key, so a report can prove who sent it."""

    message: bytes
    """The JSON of a ``GroupMessage``."""
    signature: Signature
    """Ed25519 of the sending device over :func:`obrolan.protocol.signing.group_message_bytes`."""


class GroupCiphertext(msgspec.Struct, frozen=True):
    """An envelope's ciphertext for a group: a Megolm message (its plaintext is a
    ``SignedGroupMessage``). Told apart from ``OlmCiphertext`` by its fields."""

    group_session: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    """The Megolm session id (the key arrived earlier in a ``group_key``)."""
    body: bytes
    """The Megolm message, as vodozemac's ``MegolmMessage.to_bytes()`` gives it."""


def decode_group_update(data: bytes) -> GroupUpdate:
    """Parse ``SignedGroupUpdate.update``; raises ``RemoteProtocolError`` if malformed."""
    return decode_json(data, GroupUpdate, "group update")


def decode_group_message(data: bytes) -> GroupMessage:
    """Parse ``SignedGroupMessage.message``; raises ``RemoteProtocolError`` if malformed."""
    return decode_json(data, GroupMessage, "group message")


def decode_signed_group_message(data: bytes) -> SignedGroupMessage:
    """Parse a Megolm plaintext (or a reported one); raises ``RemoteProtocolError``."""
    return decode_json(data, SignedGroupMessage, "signed group message")


def decode_group_ciphertext(data: bytes) -> GroupCiphertext:
    """Parse an envelope's group ciphertext; raises ``RemoteProtocolError`` if malformed."""
    return decode_json(data, GroupCiphertext, "group ciphertext")
