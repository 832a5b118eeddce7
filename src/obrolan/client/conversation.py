"""What each kind of content does to this device's copy of a conversation.

Incoming events and our own outgoing ones change the local store the same way,
and this module is the one place that decides how: who may edit or delete
what, which reaction wins, what is a message request, when a message
disappears, when a gap is shown. It does no I/O beyond the store, and is called
inside the client's transactions.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from obrolan.client.ids import new_id
from obrolan.client.models import Event, Message, MessageState
from obrolan.client.store import Store, now_ms
from obrolan.errors import ConfigError
from obrolan.protocol import content

__all__ = ["JOINED_LATE", "Conversations", "describe_timer"]

JOINED_LATE = "joined_late"
"""Meta key: "1" on a device made by linking or recovery."""


def describe_timer(seconds: int | None) -> str:
    """``3600`` → ``"1h"``; None → ``"off"``."""
    if seconds is None:
        return "off"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class Conversations:
    """The rules of a conversation, applied to the local store."""

    def __init__(self, store: Store, me: str, attachments_dir: Path) -> None:
        self._store = store
        self._me = me
        self._baseline = store.get_meta(JOINED_LATE) == "1"
        """This device joined an account (link, recovery) whose conversations were under
        way: the first counter seen from a device is where its numbering starts here."""
        self._attachments = attachments_dir
        self.released: list[str] = []
        """Blob ids of attachments whose messages are gone; the client tells the server."""

    # --- incoming -----------------------------------------------------------------------

    def receive(self, plaintext: content.Plaintext, warning: str | None) -> list[Event]:
        """Apply what ``plaintext.sender`` sent; returns what the user should see.

        A copy of what another of our own devices sent (``sent_to`` set) goes to
        :meth:`receive_own`; the caller checked that device is in our signed list.
        """
        if plaintext.sent_to is not None:
            return self.receive_own(plaintext)
        peer = plaintext.sender
        known = self._store.conversation(peer)
        if known is not None and known.blocked:
            return []  # dropped silently: the sender learns nothing
        conversation = self._store.open_conversation(peer, accepted=False)
        if plaintext.counter is not None:
            self._store.see_counter(
                peer, peer, plaintext.sender_device, plaintext.counter, baseline=self._baseline
            )
        body = plaintext.content
        if isinstance(body, content.Text):
            return self._receive_text(plaintext, body, warning, conversation.accepted)
        if isinstance(body, content.Typing):
            return [Event("typing", peer, active=body.active)]
        if isinstance(body, content.Receipt):
            if body.status == "off":  # the peer sends no receipts from now on (§15.11)
                rows = self._store.set_peer_receipts(peer, "off")
            else:
                rows = self._store.set_peer_receipts(peer, "on")
                rows = sorted({*rows, *self._store.set_receipt(peer, body.targets, body.status)})
            return [Event("update", peer, self._store.message(r)) for r in rows]
        if isinstance(body, content.Timer):
            return [self._timer_changed(peer, peer, body.message_id, body.seconds)]
        if not isinstance(body, content.Reaction | content.Edit | content.Delete):
            return []  # history and verification are the client's, never a conversation's
        target = self._store.find(peer, body.target)
        if target is None:
            return []
        rowid, message = target
        if isinstance(body, content.Reaction):
            self._store.set_reaction(rowid, peer, body.emoji)
        elif message.sender != peer or message.deleted:
            return []  # only the sender edits or deletes a message, and only once deleted
        elif isinstance(body, content.Edit):
            self._store.edit(rowid, body.text, body.sent_at_ms)
        elif body.sent_at_ms - message.sent_at_ms <= content.DELETE_WINDOW_MS:
            self._forget_file(self._store.delete_for_everyone(rowid))
        else:
            return []
        return [Event("update", peer, self._store.message(rowid))]

    def _receive_text(
        self, plaintext: content.Plaintext, body: content.Text, warning: str | None, accepted: bool
    ) -> list[Event]:
        peer = plaintext.sender
        rowid = self._store.add_message(
            message_id=body.message_id,
            peer=peer,
            sender=peer,
            sender_device=plaintext.sender_device,
            outgoing=False,
            text=body.text,
            sent_at_ms=body.sent_at_ms,
            state=MessageState.RECEIVED,
            warning=warning,
            counter=plaintext.counter,
        )
        if rowid is None:
            return []
        self._store.set_reply_and_attachment(
            rowid,
            body.reply_to,
            None if body.attachment is None else content.encode(body.attachment),
        )
        if body.expires_in_seconds is not None:
            self._store.set_expiry(rowid, now_ms() + body.expires_in_seconds * 1000)
        return [Event("message" if accepted else "request", peer, self._store.message(rowid))]

    def receive_own(self, plaintext: content.Plaintext) -> list[Event]:
        """Apply what another device of ours sent to ``plaintext.sent_to`` (a sent transcript)."""
        peer = plaintext.sent_to
        assert peer is not None
        conversation = self._store.open_conversation(peer, accepted=True)
        if not conversation.accepted:
            self._store.set_conversation(peer, accepted=True)  # we replied from another device
        if plaintext.counter is not None:
            self._store.see_counter(
                peer, self._me, plaintext.sender_device, plaintext.counter, baseline=self._baseline
            )
        body = plaintext.content
        if isinstance(body, content.Text):
            rowid = self._store.add_message(
                message_id=body.message_id,
                peer=peer,
                sender=self._me,
                sender_device=plaintext.sender_device,
                outgoing=True,
                text=body.text,
                sent_at_ms=body.sent_at_ms,
                state=MessageState.SENT,
                counter=plaintext.counter,
            )
            if rowid is None:
                return []
            self._store.set_reply_and_attachment(
                rowid,
                body.reply_to,
                None if body.attachment is None else content.encode(body.attachment),
            )
            if body.expires_in_seconds is not None:
                self._store.set_expiry(rowid, body.sent_at_ms + body.expires_in_seconds * 1000)
            return [Event("message", peer, self._store.message(rowid))]
        if isinstance(body, content.Timer):
            return [self._timer_changed(peer, self._me, body.message_id, body.seconds)]
        if not isinstance(body, content.Reaction | content.Edit | content.Delete):
            return []  # receipts and typing are not copied to our own devices
        target = self._store.find(peer, body.target)
        if target is None:
            return []
        rowid, message = target
        if isinstance(body, content.Reaction):
            self._store.set_reaction(rowid, self._me, body.emoji)
        elif not message.outgoing or message.deleted:
            return []
        elif isinstance(body, content.Edit):
            self._store.edit(rowid, body.text, body.sent_at_ms)
        else:
            self._forget_file(self._store.delete_for_everyone(rowid))
        return [Event("update", peer, self._store.message(rowid))]

    def gaps(self) -> list[Event]:
        """After the server drained: a notice for each device's counter still missing."""
        events = []
        for counters in self._store.counters_with_gaps():
            new = [c for c in counters.missing if c not in counters.gap_notified]
            if not new:
                continue
            self._store.note_gaps_shown(counters)
            who = "you (from another device)" if counters.sender == self._me else counters.sender
            notice = self.notice(
                counters.peer,
                f"{len(new)} message(s) from {who} may be missing: the server did not deliver them",
            )
            events.append(Event("message", counters.peer, notice))
        return events

    # --- outgoing -----------------------------------------------------------------------

    def prepare_text(
        self,
        peer: str,
        message_id: str,
        text: str,
        reply_to: str | None,
        attachment: content.Attachment | None,
        my_device: str,
    ) -> tuple[int, content.Text]:
        """Store our new message; returns its row and the content to send."""
        if not text and attachment is None:  # §15.6: only a file may go without text
            raise ConfigError("a message cannot be empty: write some text or attach a file")
        conversation = self._store.open_conversation(peer, accepted=True)
        if not conversation.accepted:
            self._store.set_conversation(peer, accepted=True)  # replying accepts a request
        if reply_to is not None and self._store.find(peer, reply_to) is None:
            raise ConfigError(f"no message {reply_to} in your conversation with {peer}")
        body = content.Text(
            message_id=message_id,
            sent_at_ms=now_ms(),
            text=text,
            reply_to=reply_to,
            attachment=attachment,
            expires_in_seconds=conversation.timer_seconds,
        )
        rowid = self._store.add_message(
            message_id=message_id,
            peer=peer,
            sender=self._me,
            sender_device=my_device,
            outgoing=True,
            text=text,
            sent_at_ms=body.sent_at_ms,
            state=MessageState.QUEUED,
        )
        assert rowid is not None, "fresh message ids never collide"
        self._store.set_reply_and_attachment(
            rowid, reply_to, None if attachment is None else content.encode(attachment)
        )
        if body.expires_in_seconds is not None:
            self._store.set_expiry(rowid, body.sent_at_ms + body.expires_in_seconds * 1000)
        return rowid, body

    def react(self, rowid: int, emoji: str) -> None:
        self._store.set_reaction(rowid, self._me, emoji)

    def edit(self, rowid: int, message: Message, text: str, at_ms: int) -> None:
        self._check_own(message, "edit")
        self._store.edit(rowid, text, at_ms)

    def delete(self, rowid: int, message: Message, at_ms: int) -> None:
        self._check_own(message, "delete")
        if at_ms - message.sent_at_ms > content.DELETE_WINDOW_MS:
            raise ConfigError("messages can be deleted for everyone only within 48 hours")
        self._forget_file(self._store.delete_for_everyone(rowid))

    def set_timer(self, peer: str, seconds: int | None, message_id: str) -> Event:
        self._store.open_conversation(peer, accepted=True)
        return self._timer_changed(peer, self._me, message_id, seconds)

    # --- shared -------------------------------------------------------------------------

    def expire(self) -> list[str]:
        """Delete the messages whose timer ran out (store, search index, files)."""
        blob_ids = self._store.expire(now_ms())
        for blob_id in blob_ids:
            self._forget_file(blob_id)
        return blob_ids

    def _timer_changed(self, peer: str, who: str, message_id: str, seconds: int | None) -> Event:
        self._store.set_conversation(peer, timer_seconds=seconds)
        text = (
            f"{who} turned off disappearing messages"
            if seconds is None
            else f"{who} set disappearing messages to {describe_timer(seconds)}"
        )
        return Event("message", peer, self.notice(peer, text, message_id))

    def notice(self, peer: str, text: str, message_id: str | None = None) -> Message:
        """Add a line the client writes (not a message) to a conversation."""
        rowid = self._store.add_message(
            message_id=message_id or new_id(),
            peer=peer,
            sender=peer,
            sender_device="",
            outgoing=False,
            text=text,
            sent_at_ms=now_ms(),
            state=MessageState.NOTICE,
        )
        assert rowid is not None
        return self._store.message(rowid)

    def _check_own(self, message: Message, verb: str) -> None:
        if not message.outgoing:
            raise ConfigError(f"you can only {verb} your own messages")
        if message.deleted:
            raise ConfigError("that message was deleted")

    def _forget_file(self, blob_id: str | None) -> None:
        if blob_id is not None:
            self.released.append(blob_id)
            with contextlib.suppress(FileNotFoundError):
                (self._attachments / blob_id).unlink()
