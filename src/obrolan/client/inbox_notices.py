"""What the inbox tells the user about envelopes it cannot show.

An envelope that does not decode, decrypt or check is refused alone: a notice in its
sender's conversation, marked processed so that it is acked, and the inbox goes on.
Envelopes the server deleted unread at their TTL are told as a count (protocol §8).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from obrolan.client.connection import Connection
from obrolan.client.conversation import Conversations
from obrolan.client.expired import expired_notice, expired_to_tell
from obrolan.client.models import Event, MessageState
from obrolan.client.store import Store, now_ms
from obrolan.protocol import frames
from obrolan.protocol.deliver_salvage import UnreadableEnvelope

__all__ = ["InboxNotices"]

log = logging.getLogger("obrolan.client")


class InboxNotices:
    """Stores the notices for what the inbox refused, and hands out their events."""

    def __init__(
        self,
        store: Store,
        conversations: Conversations,
        username: str,
        publish: Callable[[Event], None],
    ) -> None:
        self._store = store
        self._conversations = conversations
        self._username = username
        self._publish = publish

    def undecryptable(self, envelope: frames.Envelope, reason: str) -> list[Event]:
        """Refuse ``envelope``: a notice in its sender's conversation; it is processed."""
        log.warning("dropped a message from %s: %s", envelope.from_user, reason)
        with self._store.transaction():
            rowid = self._store.add_message(
                message_id=envelope.envelope_id,
                peer=envelope.from_user,
                sender=envelope.from_user,
                sender_device=envelope.from_device,
                outgoing=False,
                text=f"a message from {envelope.from_user} could not be read: {reason}",
                sent_at_ms=now_ms(),
                state=MessageState.NOTICE,
            )
            self._store.mark_processed(envelope.envelope_id)
        if rowid is None:
            return []
        return [Event("message", envelope.from_user, self._store.message(rowid))]

    async def refuse_envelope(self, conn: Connection, refused: UnreadableEnvelope) -> None:
        """An envelope of a ``deliver`` that does not decode: a notice, and ack it if we can."""
        log.warning("refused an envelope from the server: %s", refused.reason)
        if refused.envelope_id is None:
            return  # nothing to ack it by: the server redelivers it, and it is refused again
        if refused.from_user is not None and not self._store.is_processed(refused.envelope_id):
            envelope = frames.Envelope(
                envelope_id=refused.envelope_id,
                from_user=refused.from_user,
                from_device="",
                ciphertext=b"",
            )
            reason = f"the envelope is malformed ({refused.reason})"
            for event in self.undecryptable(envelope, reason):
                self._publish(event)
        await conn.send(frames.Ack(envelope_ids=[refused.envelope_id]))

    async def tell_expired(self, conn: Connection, expired: int) -> None:
        """Show how many envelopes expired unread on the server, then acknowledge them.

        The notice and the number acknowledged are stored in one transaction before the
        ``ack``, so a lost ack shows no second notice for the same envelopes.
        """
        told_before = int(self._store.get_meta("expired_told") or 0)
        new, acknowledge = expired_to_tell(told_before, expired)
        with self._store.transaction():
            if new:  # no sender is known: the notice goes to the user's own conversation
                notice = self._conversations.notice(self._username, expired_notice(new))
                self._publish(Event("message", self._username, notice))
            self._store.set_meta("expired_told", str(acknowledge))
        if acknowledge:
            await conn.send(frames.Ack(envelope_ids=[], expired=acknowledge))
