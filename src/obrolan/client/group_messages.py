"""The Megolm side of this device's groups: posting, session keys, opening messages.

A group message is signed by the sending device, encrypted once with this
device's Megolm session for the group and uploaded once for all member
devices (``send_multi``); before it, the session key goes over Olm to every
member device that lacks it. Each message and key names this device's state of
the group (§23.22). A received message is opened only with the session its
sender's device shared, checked against replays (:mod:`group_replays`) and the
sender's state (:mod:`group_watch`), and kept waiting while its key, its
group's chain or the updates it names have not arrived.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from obrolan.client.conversation import Conversations
from obrolan.client.group_host import GroupHost
from obrolan.client.group_replays import Seen, SeenIndexes
from obrolan.client.group_store import GroupStore, group_peer
from obrolan.client.group_watch import GroupWatch
from obrolan.client.ids import new_id
from obrolan.client.models import Event, Message, MessageState
from obrolan.client.store import Store, now_ms
from obrolan.crypto.group_state import GroupView, can_post
from obrolan.crypto.megolm import InboundGroupSession, OutboundGroupSession
from obrolan.crypto.signatures import verify
from obrolan.errors import CryptoError, RemoteProtocolError, SignatureError
from obrolan.protocol import content, groups
from obrolan.protocol.frames import DeviceKeys, Envelope, MultiEnvelope, Recipient
from obrolan.protocol.signing import group_message_bytes

__all__ = ["MOST_PENDING", "GroupMessages"]

log = logging.getLogger("obrolan.client")

MOST_PENDING = 1000
"""Group messages kept at most until their key, chain or named updates arrive."""


class GroupMessages:
    """Posting and opening group messages, and the session keys they need."""

    def __init__(
        self,
        store: Store,
        rows: GroupStore,
        host: GroupHost,
        pickle_key: bytes,
        conversations: Conversations,
        watch: GroupWatch,
        current_view: Callable[[str], GroupView | None],
        warn: Callable[[str, str], Event],
        rotation: Callable[[], tuple[int, int]],
    ) -> None:
        self._store = store
        self._rows = rows
        self._host = host
        self._pickle_key = pickle_key
        self._conversations = conversations
        self._watch = watch
        self._seen = SeenIndexes(store.connection)
        self._current_view = current_view
        self._warn = warn
        self._rotation = rotation

    async def send(self, view: GroupView, text: str, reply_to: str | None = None) -> Message:
        """Post ``text`` (the caller checked that we may): one Megolm encryption, one
        upload for every member device."""
        group_id = view.group_id
        devices: dict[tuple[str, str], DeviceKeys] = {}
        for username in sorted(view.members):
            for device in await self._host.verified_devices(username):
                devices[(username, device.device_id)] = device
        outbound = self._rows.outbound(group_id)
        most_messages, most_days = self._rotation()
        fresh = (
            outbound is None
            or outbound.messages >= most_messages
            or now_ms() - outbound.created_ms >= most_days * 24 * 3600 * 1000
        )
        if outbound is None or fresh:
            session, shared = OutboundGroupSession.create(), frozenset[str]()
            count, created = 0, now_ms()
        else:
            session = OutboundGroupSession.from_pickle(outbound.pickle, self._pickle_key)
            shared, count, created = outbound.shared_with, outbound.messages, outbound.created_ms
        missing = [pair for pair in devices if f"{pair[0]}/{pair[1]}" not in shared]
        counter = self._store.next_counter(group_peer(group_id))  # this device's, in this group
        message = groups.GroupMessage(
            group_id=group_id,
            sender=self._host.username,
            sender_device=self._host.device_id,
            message_id=new_id(),
            sent_at_ms=now_ms(),
            text=text,
            reply_to=reply_to,
            counter=counter,
            state_seq=view.seq,
            state_hash=view.head,
        )
        with self._store.transaction():
            key = content.GroupKey(
                message_id=new_id(),
                sent_at_ms=now_ms(),
                group_id=group_id,
                session_id=session.session_id,
                session_key=session.session_key,
                state_seq=view.seq,
                state_hash=view.head,
            )
            for username, device_id in missing:
                self._host.queue_olm(username, key, device_id)
            signed = self._sign(message)
            ciphertext = content.encode(
                groups.GroupCiphertext(
                    group_session=session.session_id, body=session.encrypt(content.encode(signed))
                )
            )
            rowid = self._store.add_message(
                message_id=message.message_id,
                peer=group_peer(group_id),
                sender=self._host.username,
                sender_device=self._host.device_id,
                outgoing=True,
                text=text,
                sent_at_ms=message.sent_at_ms,
                state=MessageState.QUEUED,
            )
            assert rowid is not None, "fresh message ids never collide"
            self._rows.set_signed(rowid, content.encode(signed))
            recipients = [Recipient(to_user=u, to_device=d) for u, d in devices]
            per_upload = self._host.limits().max_recipients_per_envelope
            for start in range(0, len(recipients), per_upload):
                self._host.queue_multi(
                    MultiEnvelope(
                        envelope_id=new_id(),
                        recipients=recipients[start : start + per_upload],
                        ciphertext=ciphertext,
                    ),
                    rowid,
                )
            if not devices:
                self._store.set_state(rowid, MessageState.SENT)  # nobody else to tell
            self._rows.save_outbound(
                group_id,
                session.pickle(self._pickle_key),
                messages=count + 1,
                shared_with=shared | {f"{u}/{d}" for u, d in missing},
                created_ms=created,
            )
        return self._store.message(rowid)

    def _sign(self, message: groups.GroupMessage) -> groups.SignedGroupMessage:
        raw = content.encode(message)
        return groups.SignedGroupMessage(
            message=raw, signature=self._host.sign_device(group_message_bytes(raw))
        )

    def receive_key(self, sender: str, device: str, key: content.GroupKey) -> list[Event]:
        view = self._current_view(key.group_id)
        newer = view is not None and key.state_seq > view.seq  # added by an update we lack?
        if view is not None and sender not in view.members and not newer:
            return [
                self._warn(
                    key.group_id,
                    f"{sender} is not a member of this group: "
                    f"their messages in it will not be shown",
                )
            ]
        try:
            session = InboundGroupSession.from_session_key(key.session_key)
        except CryptoError as exc:
            log.warning("a group key from %s/%s is unusable: %s", sender, device, exc)
            return []
        if session.session_id != key.session_id:
            return []
        events: list[Event] = []
        with self._store.transaction():
            self._rows.save_inbound(
                session.session_id, key.group_id, sender, device, session.pickle(self._pickle_key)
            )
            if view is not None:
                member = sender in view.members
                events = self._watch.check(
                    key.group_id, sender, device, key.state_seq, key.state_hash, member=member
                ).events
            else:
                # A group this device holds no state of (lost with a recovered account's
                # old devices, say): ask the sender's device for the chain (spec §23.11).
                # Its messages count only once the chain is in and says who may post.
                self._host.queue_olm(
                    sender,
                    content.GroupSync(
                        message_id=new_id(),
                        sent_at_ms=now_ms(),
                        group_id=key.group_id,
                        from_seq=0,
                    ),
                    device,
                )
        return events

    def receive_message(
        self, envelope: Envelope, ciphertext: groups.GroupCiphertext
    ) -> list[Event]:
        """Decrypt, check and store a group message (inside the inbox transaction); one
        that cannot be placed yet is kept and opened again when more arrives."""
        opened = self._open(envelope, ciphertext)
        if opened is not None:
            return opened
        dropped = self._rows.add_pending(msgspec.json.encode(envelope), MOST_PENDING)
        return [
            self.unreadable_event(
                old.from_user, "its key or its group's state never reached this device"
            )
            for old in (msgspec.json.decode(raw, type=Envelope) for raw in dropped)
        ]

    def _open(self, envelope: Envelope, ciphertext: groups.GroupCiphertext) -> list[Event] | None:
        """The events of a group message, or None while it waits for its key (§23.11),
        its group's chain (§23.8) or the updates its sender's state names (§23.22)."""
        sender, device = envelope.from_user, envelope.from_device
        known = self._rows.inbound(ciphertext.group_session, sender, device)
        if known is None:
            return None
        group_id, pickle = known
        try:
            session = InboundGroupSession.from_pickle(pickle, self._pickle_key)
            plaintext, index = session.decrypt(ciphertext.body)
            signed = groups.decode_signed_group_message(plaintext)
            message = groups.decode_group_message(signed.message)
            device_key = self._host.device_key(sender, device)
            if device_key is None:
                raise SignatureError(f"{sender}/{device} is not in {sender}'s signed list")
            verify(device_key, group_message_bytes(signed.message), signed.signature)
        except CryptoError as exc:
            return self._unreadable(envelope, f"it could not be decrypted ({exc})")
        except RemoteProtocolError as exc:
            return self._unreadable(envelope, str(exc))
        if (message.group_id, message.sender, message.sender_device) != (group_id, sender, device):
            return self._unreadable(envelope, "it names another group or sender")
        seen = self._seen.check(ciphertext.group_session, index, ciphertext.body)
        if seen is Seen.SAME:
            return []  # redelivered: it was opened before
        peer = group_peer(group_id)
        if seen is Seen.REPLAY:
            log.warning("a replayed group message from %s/%s was not shown", sender, device)
            notice = self._conversations.notice(
                peer,
                f"⚠ a message from {sender} was not shown: it reuses the place of an earlier "
                f"one in {sender}'s encryption (a replay, by the server or someone in between)",
            )
            return [Event("message", peer, notice)]
        view = self._current_view(group_id)
        if view is None:
            return None
        verdict = self._watch.check(
            group_id,
            sender,
            device,
            message.state_seq,
            message.state_hash,
            member=sender in view.members,
        )
        if verdict.wait:
            return None
        self._seen.record(ciphertext.group_session, index, ciphertext.body)
        events = verdict.events
        if (sender, message.message_id) in view.deleted:
            return events
        refusal = can_post(view, sender, now_ms())
        if refusal is not None:
            notice = self._conversations.notice(
                peer, f"a message from {sender} was not shown: {refusal}"
            )
            return [*events, Event("message", peer, notice)]
        rowid = self._store.add_message(
            message_id=message.message_id,
            peer=peer,
            sender=sender,
            sender_device=device,
            outgoing=sender == self._host.username,
            text=message.text,
            sent_at_ms=message.sent_at_ms,
            state=MessageState.SENT if sender == self._host.username else MessageState.RECEIVED,
            counter=message.counter,  # shown in the sending device's order (client/ordering.py)
        )
        if rowid is None:
            return events
        self._rows.set_signed(rowid, plaintext)
        return [*events, Event("message", peer, self._store.message(rowid))]

    def open_pending(self) -> list[Event]:
        """Open again the kept group messages: a key, chain or update may have come."""
        events: list[Event] = []
        for entry_id, raw in self._rows.pending():
            envelope = msgspec.json.decode(raw, type=Envelope)
            ciphertext = groups.decode_group_ciphertext(envelope.ciphertext)
            with self._store.transaction():
                opened = self._open(envelope, ciphertext)
                if opened is not None:
                    self._rows.drop_pending(entry_id)
                    events += opened
        return events

    def _unreadable(self, envelope: Envelope, reason: str) -> list[Event]:
        log.warning("dropped a group message from %s: %s", envelope.from_user, reason)
        return [self.unreadable_event(envelope.from_user, reason, "group message")]

    def unreadable_event(self, sender: str, reason: str, what: str = "group event") -> Event:
        """A notice in the sender's conversation (inside the caller's transaction)."""
        notice = self._conversations.notice(
            sender, f"a {what} from {sender} could not be read: {reason}"
        )
        return Event("message", sender, notice)
