"""A group's state, replayed from its chain of signed updates (every client runs this).

The server keeps no membership: a group *is* its chain of
``SignedGroupUpdate`` (protocol/groups.py). The owner's ``create`` is seq 0;
each later update names the SHA-256 of the previous update's bytes and is
signed by its actor's account key. :func:`apply_update` admits an update only
if it follows this device's view exactly (no replay, gap or fork), its
signature verifies and the actor's role allows the action; it returns a new
:class:`GroupView` and never changes the old one.

Roles: the one *owner* (promotes, demotes, removes admins, hands over
ownership); *admins* (add, remove members, edit, settings, invites, join
requests, mutes, deleting any message); *members* (post, leave, delete their
own messages, add people when ``who_can_add`` is ``all``).

A chain, start to end::

    >>> from obrolan.crypto.account import AccountKey
    >>> from obrolan.protocol.groups import Add, Create
    >>> alice = AccountKey.create()
    >>> keys = {"alice": alice.public}
    >>> first = new_group(new_group_id("alice"), "alice", Create(title="Team"), at_ms=0)
    >>> view, _ = apply_update(None, sign_update(alice, first), keys.get)
    >>> view, update = apply_update(
    ...     view, sign_update(alice, next_update(view, "alice", Add(user="bob"), at_ms=1)), keys.get
    ... )
    >>> describe(update), view.role("bob"), view.seq
    ('alice added bob', 'member', 1)
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import hashlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, assert_never

import msgspec

from obrolan.crypto.account import AccountKey
from obrolan.crypto.signatures import verify
from obrolan.errors import CryptoError, RemoteProtocolError, SignatureError
from obrolan.protocol.groups import (
    Add,
    ApproveJoin,
    Create,
    DeleteMessage,
    Demote,
    EditInfo,
    GroupAction,
    GroupSettings,
    GroupUpdate,
    Invite,
    Leave,
    Mute,
    Promote,
    RejectJoin,
    Remove,
    RevokeInvite,
    SetSettings,
    SignedGroupUpdate,
    Transfer,
    decode_group_update,
)
from obrolan.protocol.signing import group_update_bytes

__all__ = [
    "GroupView",
    "Member",
    "Role",
    "UpdateRejected",
    "apply_update",
    "can_post",
    "describe",
    "new_group",
    "new_group_id",
    "next_update",
    "peek",
    "sign_update",
    "update_hash",
]

Role = Literal["owner", "admin", "member"]

_encode = msgspec.json.Encoder().encode


class UpdateRejected(CryptoError):
    """Raised when a group update is malformed, forged, out of order or not allowed."""


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a group as the chain made them."""

    username: str
    role: Role
    muted_until_ms: int = 0
    """0: not muted; else the member may not post before this time."""


@dataclass(frozen=True, slots=True)
class GroupView:
    """A group's state after the updates up to ``seq``; never changed once made."""

    group_id: str
    title: str
    description: str
    rules: str
    settings: GroupSettings
    members: Mapping[str, Member]
    """Username -> member, in the order they joined (read-only)."""
    seq: int
    """The seq of the last applied update: the next one must be ``seq + 1``."""
    head: bytes
    """SHA-256 of the last applied update's bytes: the next one's ``prev``."""
    invites: Mapping[str, int]
    """Invite id -> expiry (ms) of every invite made and not revoked (read-only)."""
    deleted: frozenset[tuple[str, str]]
    """``(sender, message_id)`` of every message deleted for everyone."""

    def role(self, username: str) -> Role | None:
        """The member's role, or None for someone who is not a member."""
        member = self.members.get(username)
        return member.role if member else None

    def is_admin(self, username: str) -> bool:
        """True for the owner and the admins."""
        return self.role(username) in ("owner", "admin")

    @property
    def owner(self) -> str:
        """The one member whose role is ``owner``."""
        return next(m.username for m in self.members.values() if m.role == "owner")

    @property
    def admins(self) -> list[str]:
        """Who moderates (and receives reports): the owner first, then the admins."""
        return [self.owner, *(m.username for m in self.members.values() if m.role == "admin")]


_GROUP_ID_LABEL = b"obrolan-group-id-v1"


def new_group_id(creator: str, nonce: bytes | None = None) -> str:
    """A fresh group id that names its creator: 16 random bytes, then a 16-byte tag.

    The tag is SHA-256 over a label, the creator's username and the random bytes,
    so only a ``create`` whose actor is ``creator`` can start the group: nobody who
    learns the id (from an invite link, say) can start a group of that id first.
    """
    while True:  # drawn again when it starts with '-', which a command line reads as an option
        fresh = secrets.token_bytes(16) if nonce is None else nonce
        if len(fresh) != 16:
            raise ValueError("a group id's nonce is 16 bytes")
        group_id = base64.urlsafe_b64encode(fresh + _group_id_tag(creator, fresh)).rstrip(b"=")
        if nonce is not None or not group_id.startswith(b"-"):
            return group_id.decode()


def _group_id_tag(creator: str, nonce: bytes) -> bytes:
    return hashlib.sha256(b"\x00".join([_GROUP_ID_LABEL, creator.encode(), nonce])).digest()[:16]


def _made_by(group_id: str, creator: str) -> bool:
    try:
        raw = base64.urlsafe_b64decode(group_id + "=" * (-len(group_id) % 4))
    except (binascii.Error, ValueError):
        return False
    return len(raw) == 32 and secrets.compare_digest(raw[16:], _group_id_tag(creator, raw[:16]))


def update_hash(signed: SignedGroupUpdate) -> bytes:
    """SHA-256 of an update's exact bytes: the ``prev`` of the update after it."""
    return hashlib.sha256(signed.update).digest()


def sign_update(account: AccountKey, update: GroupUpdate) -> SignedGroupUpdate:
    """Encode an update and sign it with the actor's account key."""
    body = _encode(update)
    return SignedGroupUpdate(update=body, signature=account.sign(group_update_bytes(body)))


def new_group(
    group_id: str, owner: str, create: Create, at_ms: int, reason: str = ""
) -> GroupUpdate:
    """The genesis update (seq 0) of a new group whose owner is ``owner``."""
    return GroupUpdate(
        group_id=group_id, seq=0, prev=None, actor=owner, at_ms=at_ms, action=create, reason=reason
    )


def next_update(
    view: GroupView, actor: str, action: GroupAction, at_ms: int, reason: str = ""
) -> GroupUpdate:
    """The update that follows ``view`` (its seq and prev filled in), still to be signed."""
    return GroupUpdate(
        group_id=view.group_id,
        seq=view.seq + 1,
        prev=view.head,
        actor=actor,
        at_ms=at_ms,
        action=action,
        reason=reason,
    )


def peek(signed: SignedGroupUpdate) -> GroupUpdate:
    """Decode an update without checking anything (to learn whose key to fetch).

    Raises:
        UpdateRejected: the bytes are not a ``GroupUpdate``.
    """
    try:
        return decode_group_update(signed.update)
    except RemoteProtocolError as exc:
        raise UpdateRejected(f"the group update is malformed: {exc}") from None


def apply_update(
    view: GroupView | None,
    signed: SignedGroupUpdate,
    account_key_of: Callable[[str], str | None],
) -> tuple[GroupView, GroupUpdate]:
    """Check one update against this device's view of the group and apply it.

    Checks, in order: the bytes decode; the update is for this group; it follows
    ``view`` exactly (``seq`` one more, ``prev`` its head; with no view, a ``create``
    at seq 0); the signature is by ``account_key_of(actor)``; the actor's role
    allows the action; the action fits the state (the target is a member, …).

    Args:
        view: this device's state of the group, or None before its ``create``.
        signed: the update as received.
        account_key_of: the account key this device trusts for a username, or None.

    Returns:
        The new view and the decoded update (for :func:`describe`).

    Raises:
        UpdateRejected: any check failed; the message says which, for a person.
    """
    update = peek(signed)
    _check_chain(view, update)
    key = account_key_of(update.actor)
    if key is None:
        raise UpdateRejected(f"no account key known for {update.actor}")
    try:
        verify(key, group_update_bytes(signed.update), signed.signature)
    except SignatureError:
        raise UpdateRejected(f"the update is not signed by {update.actor}'s account key") from None
    head = update_hash(signed)
    if view is None:
        assert isinstance(update.action, Create)  # _check_chain admits nothing else
        return _genesis(update, update.action, head), update
    new = _transition(view, update)
    return dataclasses.replace(new, seq=update.seq, head=head), update


def can_post(view: GroupView, username: str, now_ms: int) -> str | None:
    """None if ``username`` may post now, else why not (for a person)."""
    member = view.members.get(username)
    if member is None:
        return f"{username} is not a member"
    if member.muted_until_ms > now_ms:
        return f"{username} is muted until {_time(member.muted_until_ms, now_ms)}"
    if view.settings.who_can_post == "admins" and not view.is_admin(username):
        return "only admins may post"
    return None


def describe(update: GroupUpdate) -> str:
    """One line of the moderation log, without the time."""
    line = f"{update.actor} {_what(update.action, update.actor)}"
    return f"{line} — {update.reason}" if update.reason else line


# --- the chain ---------------------------------------------------------------


def _check_chain(view: GroupView | None, update: GroupUpdate) -> None:
    if view is None:
        if not isinstance(update.action, Create):
            raise UpdateRejected("does not follow this device's state of the group: it has none")
        if update.seq != 0 or update.prev is not None:
            raise UpdateRejected("a group's create must be its first update (seq 0, no prev)")
        if not _made_by(update.group_id, update.actor):
            raise UpdateRejected(
                f"the group id was not made by {update.actor}, who claims to create it"
            )
        return
    if update.group_id != view.group_id:
        raise UpdateRejected(f"the update is for group {update.group_id}, not {view.group_id}")
    if isinstance(update.action, Create):
        raise UpdateRejected("the group exists already: a create only starts a group")
    if update.seq != view.seq + 1:
        raise UpdateRejected(f"replayed or out of order: seq {update.seq}, expected {view.seq + 1}")
    if update.prev != view.head:
        raise UpdateRejected("does not follow this device's state of the group")


def _genesis(update: GroupUpdate, create: Create, head: bytes) -> GroupView:
    owner = update.actor
    members = {owner: Member(owner, "owner")}
    for user in create.members:
        if user in members:
            raise UpdateRejected(f"{user} is listed twice in the new group")
        members[user] = Member(user, "member")
    return GroupView(
        group_id=update.group_id,
        title=create.title,
        description=create.description,
        rules=create.rules,
        settings=create.settings,
        members=MappingProxyType(members),
        seq=0,
        head=head,
        invites=MappingProxyType({}),
        deleted=frozenset(),
    )


# --- who may do what ---------------------------------------------------------


def _transition(view: GroupView, update: GroupUpdate) -> GroupView:
    """The view after ``update``'s action, or UpdateRejected (seq and head still old)."""
    actor, action = update.actor, update.action
    role = view.role(actor)
    if role is None:
        raise UpdateRejected(f"{actor} is not a member")
    match action:
        case Add(user=user):
            if view.settings.who_can_add == "admins":
                _need_admin(view, actor)
            _need_outsider(view, user)
            return _set_member(view, Member(user, "member"))
        case Remove(user=user):
            target = _need_member(view, user)
            if target.role == "owner":
                raise UpdateRejected("nobody can remove the owner")
            if target.role == "admin":
                _need_owner(view, actor, "remove an admin")
            _need_admin(view, actor)
            return _drop_member(view, user)
        case Leave():
            if role == "owner":
                raise UpdateRejected(f"{actor} owns the group: hand it over before leaving")
            return _drop_member(view, actor)
        case Promote(user=user):
            _need_owner(view, actor, "make admins")
            if _need_member(view, user).role != "member":
                raise UpdateRejected(f"{user} is already an admin")
            return _set_member(view, Member(user, "admin"))
        case Demote(user=user):
            _need_owner(view, actor, "demote admins")
            if _need_member(view, user).role != "admin":
                raise UpdateRejected(f"{user} is not an admin")
            return _set_member(view, Member(user, "member"))
        case Transfer(user=user):
            _need_owner(view, actor, "hand over the group")
            if _need_member(view, user).role == "owner":
                raise UpdateRejected(f"{user} owns the group already")
            view = _set_member(view, Member(actor, "admin"))
            return _set_member(view, Member(user, "owner"))
        case EditInfo(title=title, description=description, rules=rules):
            _need_admin(view, actor)
            if title is None and description is None and rules is None:
                raise UpdateRejected("the edit changes nothing")
            return dataclasses.replace(
                view,
                title=view.title if title is None else title,
                description=view.description if description is None else description,
                rules=view.rules if rules is None else rules,
            )
        case SetSettings(settings=settings):
            _need_admin(view, actor)
            return dataclasses.replace(view, settings=settings)
        case Invite(invite_id=invite_id, expires_at_ms=expires_at_ms):
            _need_admin(view, actor)
            if invite_id in view.invites:
                raise UpdateRejected("an invite with this id exists already")
            if expires_at_ms <= update.at_ms:
                raise UpdateRejected("the invite would expire before it was made")
            return _set_invites(view, {**view.invites, invite_id: expires_at_ms})
        case RevokeInvite(invite_id=invite_id):
            _need_admin(view, actor)
            _need_invite(view, invite_id)
            return _set_invites(view, {i: e for i, e in view.invites.items() if i != invite_id})
        case ApproveJoin(user=user, invite_id=invite_id):
            _need_admin(view, actor)
            if _need_invite(view, invite_id) <= update.at_ms:
                raise UpdateRejected("the invite expired")
            _need_outsider(view, user)
            return _set_member(view, Member(user, "member"))
        case RejectJoin(user=user):
            _need_admin(view, actor)
            _need_outsider(view, user)
            return view
        case Mute(user=user, until_ms=until_ms):
            _need_admin(view, actor)
            if _need_member(view, user).role != "member":
                raise UpdateRejected(f"{user} is an admin: admins cannot be muted")
            if until_ms < 0:
                raise UpdateRejected("a mute ends at a time ≥ 0 (0 lifts it)")
            return _set_member(view, Member(user, "member", until_ms))
        case DeleteMessage(sender=sender, message_id=message_id):
            if sender != actor:
                _need_admin(view, actor)
            return dataclasses.replace(view, deleted=view.deleted | {(sender, message_id)})
        case Create():
            raise AssertionError("_check_chain lets no create through after genesis")
        case _:
            assert_never(action)


def _need_admin(view: GroupView, actor: str) -> None:
    if not view.is_admin(actor):
        raise UpdateRejected(f"{actor} is not an admin of this group")


def _need_owner(view: GroupView, actor: str, what: str) -> None:
    if view.role(actor) != "owner":
        raise UpdateRejected(f"only the owner can {what}, and {actor} is not the owner")


def _need_member(view: GroupView, user: str) -> Member:
    member = view.members.get(user)
    if member is None:
        raise UpdateRejected(f"{user} is not a member")
    return member


def _need_outsider(view: GroupView, user: str) -> None:
    if user in view.members:
        raise UpdateRejected(f"{user} is already a member")


def _need_invite(view: GroupView, invite_id: str) -> int:
    expires_at_ms = view.invites.get(invite_id)
    if expires_at_ms is None:
        raise UpdateRejected("unknown invite (never made, or revoked)")
    return expires_at_ms


def _set_member(view: GroupView, member: Member) -> GroupView:
    members = {**view.members, member.username: member}
    return dataclasses.replace(view, members=MappingProxyType(members))


def _drop_member(view: GroupView, username: str) -> GroupView:
    members = {u: m for u, m in view.members.items() if u != username}
    return dataclasses.replace(view, members=MappingProxyType(members))


def _set_invites(view: GroupView, invites: dict[str, int]) -> GroupView:
    return dataclasses.replace(view, invites=MappingProxyType(invites))


# --- the moderation log ------------------------------------------------------


def _utc(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)


def _time(ms: int, now_ms: int) -> str:
    """``14:05 UTC`` on the same UTC day as ``now_ms``, else with the date."""
    when = _utc(ms)
    if when.date() == _utc(now_ms).date():
        return when.strftime("%H:%M UTC")
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _date(ms: int) -> str:
    return _utc(ms).strftime("%Y-%m-%d %H:%M UTC")


def _names(users: list[str]) -> str:
    return users[0] if len(users) == 1 else f"{', '.join(users[:-1])} and {users[-1]}"


def _what(action: GroupAction, actor: str) -> str:
    match action:
        case Create(title=title, members=members):
            with_whom = f" with {_names(members)}" if members else ""
            return f"created the group “{title}”{with_whom}"
        case Add(user=user):
            return f"added {user}"
        case Remove(user=user):
            return f"removed {user}"
        case Leave():
            return "left"
        case Promote(user=user):
            return f"made {user} an admin"
        case Demote(user=user):
            return f"made {user} a member again (no longer admin)"
        case Transfer(user=user):
            return f"handed the group over to {user} (now its owner)"
        case EditInfo(title=title, description=description, rules=rules):
            parts = [f"the title to “{title}”"] if title is not None else []
            parts += ["the description"] if description is not None else []
            parts += ["the rules"] if rules is not None else []
            return f"changed {_names(parts)}" if parts else "edited nothing"
        case SetSettings(settings=s):
            return (
                f"set who can post: {s.who_can_post}, who can add: {s.who_can_add}, "
                f"join approval: {'on' if s.approval else 'off'}"
            )
        case Invite(expires_at_ms=expires_at_ms):
            return f"created an invite link (expires {_date(expires_at_ms)})"
        case RevokeInvite():
            return "revoked an invite link"
        case ApproveJoin(user=user):
            return f"approved {user}'s join request"
        case RejectJoin(user=user):
            return f"turned down {user}'s join request"
        case Mute(user=user, until_ms=until_ms):
            return f"muted {user} until {_date(until_ms)}" if until_ms else f"unmuted {user}"
        case DeleteMessage(sender=sender):
            whose = "one of their own messages" if sender == actor else f"a message of {sender}"
            return f"deleted {whose}"
        case _:
            assert_never(action)
