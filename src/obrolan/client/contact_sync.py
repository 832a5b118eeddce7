"""What one device of an account tells the others about a contact (spec §18.1, §20.5).

A contact's pinned account key, whether the user verified it, and the 1:1
conversation's state (accepted, a request, blocked) are the user's choices,
not a device's: a device linked later starts with them (``LinkSecrets``), and
a change made on one device reaches the others (``ContactUpdate``). A device
never takes a key from the server over what its own account's devices know.
"""

from __future__ import annotations

import enum
from typing import Literal

from obrolan.client.models import Contact
from obrolan.client.store import Conversation, Store
from obrolan.protocol import content, frames

__all__ = ["Adopted", "adopt", "fit_link_answer", "linked_contact", "linked_contacts"]

ConversationState = Literal["accepted", "request", "blocked"]

_ANSWER_HEADROOM = 1024
"""Bytes kept free in a link answer for the Olm pre-key header, MAC and JSON around the body."""


class Adopted(enum.Enum):
    """What :func:`adopt` did with an own device's view of a contact."""

    PINNED = "pinned"
    """This device did not know the contact: it now pins the same key."""
    SAME_KEY = "same key"
    """Both devices pin the same key; verification and conversation were brought in line."""
    TRUSTED = "trusted"
    """This device was warning about that very key: the user accepted it on the other."""
    OTHER_KEY = "other key"
    """The other device knows a key this one has never been shown: now a changed key here."""


def linked_contacts(store: Store) -> list[content.LinkedContact]:
    """Every contact this device knows, the one last talked to first."""
    return [_linked(c, store.conversation(c.username)) for c in store.contacts_by_last_message()]


def linked_contact(store: Store, username: str) -> content.LinkedContact | None:
    """The contact as this device knows it, or None before its key is pinned."""
    contact = store.contact(username)
    return None if contact is None else _linked(contact, store.conversation(username))


def fit_link_answer(
    bare: content.LinkSecrets, known: list[content.LinkedContact]
) -> list[content.LinkedContact]:
    """The first of ``known`` that keep the link answer within the server's limit.

    The answer carries the Olm message in base64 (4 bytes per 3), so the
    plaintext may take three quarters of the limit, less some headroom.
    """
    budget = frames.MAX_LINK_ANSWER_BYTES * 3 // 4 - _ANSWER_HEADROOM - len(content.encode(bare))
    fitted: list[content.LinkedContact] = []
    for contact in known:
        budget -= len(content.encode(contact)) + 1  # and the comma before it
        if budget < 0:
            break
        fitted.append(contact)
    return fitted


def adopt(store: Store, contact: content.LinkedContact) -> Adopted:
    """Bring this device in line with an own device's view of ``contact`` (in a transaction).

    Verification only ever grows here: a device does not forget that the user
    verified a key because another device has not.
    """
    known = store.contact(contact.username)
    key = contact.account_key
    if known is None:
        store.pin_contact(contact.username, key, contact.list_version)
        adopted = Adopted.PINNED
    elif known.identity_key == key:
        if contact.list_version > known.list_version and not known.changed_key:
            store.set_list_version(contact.username, contact.list_version)
        adopted = Adopted.SAME_KEY
    elif known.changed_key == key:
        store.trust_changed_key(contact.username)
        adopted = Adopted.TRUSTED
    else:
        store.mark_key_changed(contact.username, key)
        return Adopted.OTHER_KEY  # the user decides, as for any changed key
    if contact.verified:
        store.set_verified(contact.username, key)
    _adopt_conversation(store, contact.username, contact.conversation)
    if (
        adopted is Adopted.PINNED
        and contact.timer_seconds is not None
        and store.conversation(contact.username) is not None
    ):
        # Only for a contact new here: timer changes reach our devices as `timer` copies.
        store.set_conversation(contact.username, timer_seconds=contact.timer_seconds)
    return adopted


def _adopt_conversation(store: Store, peer: str, state: ConversationState | None) -> None:
    if state == "accepted":
        store.open_conversation(peer, accepted=True)
        store.set_conversation(peer, accepted=True, blocked=False)
    elif state == "blocked":
        store.open_conversation(peer, accepted=False)  # as `block` opens one: not accepted
        store.set_conversation(peer, blocked=True)
    elif state == "request" and store.conversation(peer) is not None:
        store.set_conversation(peer, blocked=False)  # unblocked before it was ever accepted
    # Otherwise nothing: a request with no messages here would be empty; one arises by itself.


def _linked(contact: Contact, conversation: Conversation | None) -> content.LinkedContact:
    state: ConversationState | None = None
    if conversation is not None:
        state = (
            "blocked"
            if conversation.blocked
            else "accepted"
            if conversation.accepted
            else "request"
        )
    return content.LinkedContact(
        username=contact.username,
        account_key=contact.identity_key,
        verified=contact.verified,
        # a pending key change restarted the versions for the changed key
        list_version=0 if contact.changed_key else contact.list_version,
        conversation=state,
        timer_seconds=conversation.timer_seconds if conversation else None,
    )
