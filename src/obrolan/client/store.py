"""The device's local history and state, in the profile's SQLCipher database.

Every query of the client lives here. Methods that must be atomic together are
called inside one ``vault.transaction()`` by the caller (the inbox stores a
message, the advanced Olm session and the processed envelope id at once).
Pickles are stored as vodozemac encrypts them, under the vault's pickle key.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlcipher3 import dbapi2

from obrolan.client.delivery_status import delivery_status
from obrolan.client.models import Contact, Message, MessageState
from obrolan.client.ordering import WINDOW, place
from obrolan.client.store_schema import MIGRATIONS, SCHEMA_VERSION
from obrolan.client.vault import Vault
from obrolan.errors import StorageError
from obrolan.protocol.content import Attachment

__all__ = [
    "MAX_TRACKED_GAP",
    "Conversation",
    "Counters",
    "OutboxEntry",
    "Store",
    "now_ms",
    "place_message",
]

MAX_TRACKED_GAP = WINDOW
"""At most this many missing counters are remembered below a device's highest (a hostile
counter far ahead would otherwise make one entry per skipped number)."""

PROCESSED_KEEP_MS = 60 * 24 * 3600 * 1000
"""Processed envelope ids are kept 60 days, twice the server's default TTL."""


_CONTACT_COLUMNS = "username, identity_key, first_seen_ms, changed_key, verified, list_version"


def _contact(row: tuple[Any, ...]) -> Contact:
    return Contact(row[0], row[1], row[2], row[3], bool(row[4]), row[5])


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class OutboxEntry:
    """A queued event for one peer and, once encrypted, its envelopes."""

    id: int
    message_rowid: int | None
    """The message row it sends, or None for events that are not messages."""
    recipient: str
    payload: bytes | None
    """The content to encrypt, or None once ``envelopes`` hold the ciphertext."""
    counter: int | None
    envelopes: list[tuple[str, str, str, bytes]]
    """(envelope_id, to_user, to_device, ciphertext) for each recipient device."""
    to_device: str | None = None
    """Only this device of the recipient (history, verification); else every device."""
    multi: bytes | None = None
    """A group message: the JSON of a ready ``MultiEnvelope`` (encrypted once, Megolm)."""


@dataclass(frozen=True, slots=True)
class Conversation:
    """This device's settings and bookkeeping for one peer."""

    peer: str
    accepted: bool
    blocked: bool
    timer_seconds: int | None


@dataclass(frozen=True, slots=True)
class Counters:
    """The counters one device has numbered its events with in one conversation."""

    peer: str
    sender: str
    device: str
    highest_seen: int
    missing: list[int]
    gap_notified: list[int]


class Store:
    """Queries over the profile's encrypted database."""

    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._db = vault.connection
        self._migrate()
        self._envelope_ttl = self._read_envelope_ttl()

    @property
    def connection(self) -> dbapi2.Connection:
        """The SQLCipher connection (for the group queries, which share it)."""
        return self._db

    def transaction(self) -> AbstractContextManager[object]:
        """One atomic, durable unit of work (BEGIN IMMEDIATE … COMMIT)."""
        return self._vault.transaction()

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION, one version per transaction."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"this profile's store has schema {version}, newer than this obrolan "
                f"(schema {SCHEMA_VERSION}): update obrolan"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                # executescript() would commit on its own; run statement by statement instead.
                for statement in MIGRATIONS[target]:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target}")

    # --- meta ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def delete_meta(self, key: str) -> None:
        self._db.execute("DELETE FROM meta WHERE key = ?", (key,))

    # --- contacts and their devices ------------------------------------------------------

    def contact(self, username: str) -> Contact | None:
        row = self._db.execute(
            f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE username = ?", (username,)
        ).fetchone()
        return None if row is None else _contact(row)

    def contacts(self) -> list[Contact]:
        rows = self._db.execute(
            f"SELECT {_CONTACT_COLUMNS} FROM contacts ORDER BY username"
        ).fetchall()
        return [_contact(r) for r in rows]

    def contacts_by_last_message(self) -> list[Contact]:
        """Every contact, the one we last exchanged a 1:1 message with first."""
        rows = self._db.execute(
            f"SELECT {_CONTACT_COLUMNS} FROM contacts ORDER BY "
            "(SELECT MAX(id) FROM messages WHERE peer = contacts.username) DESC NULLS LAST, "
            "username"
        ).fetchall()
        return [_contact(r) for r in rows]

    def pin_contact(self, username: str, account_key: str, list_version: int) -> None:
        """Pin a new contact's account key (no-op if already pinned)."""
        self._db.execute(
            "INSERT OR IGNORE INTO contacts (username, identity_key, first_seen_ms, list_version) "
            "VALUES (?, ?, ?, ?)",
            (username, account_key, now_ms(), list_version),
        )

    def mark_key_changed(self, username: str, new_key: str) -> None:
        """Record a different account key than the pinned one (the list version restarts)."""
        self._db.execute(
            "UPDATE contacts SET changed_key = ?, list_version = 0 WHERE username = ?",
            (new_key, username),
        )

    def clear_key_change(self, username: str) -> None:
        """The pinned key is shown again: forget the changed one (versions restart)."""
        self._db.execute(
            "UPDATE contacts SET changed_key = NULL, list_version = 0 WHERE username = ?",
            (username,),
        )

    def set_list_version(self, username: str, version: int) -> None:
        self._db.execute(
            "UPDATE contacts SET list_version = ? WHERE username = ?", (version, username)
        )

    def trust_changed_key(self, username: str) -> None:
        """Accept the changed key as the pinned one; it is no longer verified."""
        self._db.execute(
            "UPDATE contacts SET identity_key = changed_key, changed_key = NULL, verified = 0 "
            "WHERE username = ? AND changed_key IS NOT NULL",
            (username,),
        )

    def release_held(self, peer: str) -> None:
        """The user accepted ``peer``'s new key: their held messages are queued again."""
        self._db.execute(
            "UPDATE messages SET state = 'queued' WHERE peer = ? AND state = 'held'", (peer,)
        )

    def set_verified(self, username: str, account_key: str) -> bool:
        """Mark the contact verified if ``account_key`` is still its pinned key."""
        cursor = self._db.execute(
            "UPDATE contacts SET verified = 1 WHERE username = ? AND identity_key = ? "
            "AND changed_key IS NULL",
            (username, account_key),
        )
        return bool(cursor.rowcount == 1)

    def devices_of(self, username: str) -> list[tuple[str, str, str]]:
        """The cached verified devices (device_id, ed25519, curve25519) of a user."""
        return [
            (r[0], r[1], r[2])
            for r in self._db.execute(
                "SELECT device_id, ed25519, curve25519 FROM devices WHERE username = ? "
                "ORDER BY device_id",
                (username,),
            )
        ]

    def save_devices(self, username: str, devices: list[tuple[str, str, str]]) -> None:
        """Replace the cached devices (device_id, ed25519, curve25519) of a user; the Olm
        sessions with devices that left the user's list are dropped."""
        kept = {d[2] for d in devices}
        for (curve25519,) in self._db.execute(
            "SELECT curve25519 FROM devices WHERE username = ?", (username,)
        ).fetchall():
            if curve25519 not in kept:
                self._db.execute("DELETE FROM sessions WHERE curve25519 = ?", (curve25519,))
        self._db.execute("DELETE FROM devices WHERE username = ?", (username,))
        self._db.executemany(
            "INSERT INTO devices (username, device_id, ed25519, curve25519) VALUES (?, ?, ?, ?)",
            [(username, *d) for d in devices],
        )

    def device_by_curve(self, curve25519: str) -> tuple[str, str, str] | None:
        """(username, device_id, ed25519) of the cached device with this identity key."""
        row = self._db.execute(
            "SELECT username, device_id, ed25519 FROM devices WHERE curve25519 = ?",
            (curve25519,),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    # --- Olm sessions -------------------------------------------------------------------

    def sessions_for(self, curve25519: str) -> list[tuple[str, str]]:
        """(session_id, pickle) with this device, most recently used first."""
        return [
            (r[0], r[1])
            for r in self._db.execute(
                "SELECT session_id, pickle FROM sessions WHERE curve25519 = ? "
                "ORDER BY last_used_ms DESC",
                (curve25519,),
            ).fetchall()
        ]

    def save_session(self, curve25519: str, session_id: str, pickle: str) -> None:
        self._db.execute(
            "INSERT INTO sessions (curve25519, session_id, pickle, last_used_ms) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (curve25519, session_id) "
            "DO UPDATE SET pickle = excluded.pickle, last_used_ms = excluded.last_used_ms",
            (curve25519, session_id, pickle, now_ms()),
        )

    # --- messages -----------------------------------------------------------------------

    def add_message(
        self,
        *,
        message_id: str,
        peer: str,
        sender: str,
        sender_device: str,
        outgoing: bool,
        text: str,
        sent_at_ms: int,
        state: MessageState,
        warning: str | None = None,
        counter: int | None = None,
    ) -> int | None:
        """Insert a message and place it in its conversation (``counter``: the sending
        device's, for a message from elsewhere); returns its row id, or None if it was
        already stored."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO messages (message_id, peer, sender, sender_device, outgoing, "
            "text, sent_at_ms, state, warning, counter) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message_id,
                peer,
                sender,
                sender_device,
                int(outgoing),
                text,
                sent_at_ms,
                state.value,
                warning,
                counter,
            ),
        )
        if cursor.rowcount != 1:
            return None
        place_message(self._db, int(cursor.lastrowid))
        return int(cursor.lastrowid)

    def set_state(self, rowid: int, state: MessageState, error: str | None = None) -> None:
        sent_ok_ms = now_ms() if state is MessageState.SENT else None
        self._db.execute(
            "UPDATE messages SET state = ?, error = ?, sent_ok_ms = IFNULL(sent_ok_ms, ?) "
            "WHERE id = ?",
            (state.value, error, sent_ok_ms, rowid),
        )
        if sent_ok_ms is not None:
            self._db.execute(
                "UPDATE messages SET peer_receipts_off = IFNULL((SELECT c.peer_receipts_off "
                "FROM conversations c WHERE c.peer = messages.peer), 0) WHERE id = ?",
                (rowid,),
            )

    def set_peer_receipts(self, peer: str, status: str) -> list[int]:
        """The peer said it sends receipts (``on``, any receipt) or not (``off``).

        ``off`` also marks our messages to it that have no receipt yet: they stay
        unconfirmed, not "not delivered", even once receipts are on again. Returns the
        messages whose delivery status this changes.
        """
        self._db.execute(
            "UPDATE conversations SET peer_receipts_off = ? WHERE peer = ?",
            (int(status == "off"), peer),
        )
        if status != "off":
            return []
        return [
            int(r[0])
            for r in self._db.execute(
                "UPDATE messages SET peer_receipts_off = 1 WHERE peer = ? AND outgoing = 1 "
                "AND state IN ('sent', 'queued', 'held') AND receipt IS NULL AND peer_receipts_off = 0 "
                "RETURNING id",
                (peer,),
            )
        ]

    def told_receipts_off(self, peer: str, told: bool | None = None) -> bool:
        """Whether we told ``peer`` that this device sends no receipts (set it if ``told``)."""
        if told is not None:
            self._db.execute(
                "UPDATE conversations SET told_receipts_off = ? WHERE peer = ?", (int(told), peer)
            )
        row = self._db.execute(
            "SELECT told_receipts_off FROM conversations WHERE peer = ?", (peer,)
        ).fetchone()
        return bool(row and row[0])

    def forget_told_receipts_off(self) -> None:
        """Receipts are on again: the next "off" is told afresh to everyone."""
        self._db.execute("UPDATE conversations SET told_receipts_off = 0")

    def message(self, rowid: int) -> Message:
        return self._row_to_message(
            self._db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (rowid,)
            ).fetchone()
        )

    def messages_by_id(self, message_id: str) -> list[Message]:
        rows = self._db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE message_id = ?", (message_id,)
        ).fetchall()
        return [self._row_to_message(r) for r in rows]

    def history(self, peer: str, limit: int | None = None) -> list[Message]:
        """The conversation with ``peer`` in its order (client/ordering.py: each sending
        device's counters, else arrival), oldest first (the last ``limit`` messages)."""
        query = (
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer = ? "
            "ORDER BY position DESC, counter DESC, id DESC"
        )
        params: tuple[object, ...] = (peer,)
        if limit is not None:
            query += " LIMIT ?"
            params = (peer, limit)
        rows = self._db.execute(query, params).fetchall()
        return [self._row_to_message(r) for r in reversed(rows)]

    def _row_to_message(self, row: tuple[object, ...]) -> Message:
        rowid = int(row[16])  # type: ignore[call-overload]
        attachment = None
        if row[15] is not None:
            meta = json.loads(row[15])  # type: ignore[arg-type]
            attachment = {k: meta[k] for k in ("blob_id", "name", "mime", "size")}
        return Message(
            message_id=str(row[0]),
            peer=str(row[1]),
            sender=str(row[2]),
            sender_device=str(row[3]),
            outgoing=bool(row[4]),
            text=str(row[5]),
            sent_at_ms=int(row[6]),  # type: ignore[call-overload]
            state=MessageState(str(row[7])),
            error=None if row[8] is None else str(row[8]),
            warning=None if row[9] is None else str(row[9]),
            reply_to=None if row[10] is None else str(row[10]),
            edited_at_ms=None if row[11] is None else int(row[11]),  # type: ignore[call-overload]
            deleted=bool(row[12]),
            receipt=None if row[13] is None else str(row[13]),
            expires_at_ms=None if row[14] is None else int(row[14]),  # type: ignore[call-overload]
            attachment=attachment,
            reactions=self.reactions(rowid),
            earlier_texts=tuple(self.earlier_texts(rowid)),
            counter=None if row[17] is None else int(row[17]),  # type: ignore[call-overload]
            arrival=rowid,
            position=int(row[18]),  # type: ignore[call-overload]
            arrived_late=bool(row[19]),
            delivery=delivery_status(
                outgoing=bool(row[4]),
                group=str(row[1]).startswith("#"),  # group_store.group_peer
                state=str(row[7]),
                receipt=None if row[13] is None else str(row[13]),
                sent_at_ms=None if row[20] is None else int(row[20]),  # type: ignore[call-overload]
                ttl_seconds=self.envelope_ttl(),
                peer_receipts_off=bool(row[21]),
                now_ms=now_ms(),
            ),
        )

    def envelope_ttl(self) -> int | None:
        """The server's announced ``envelope_ttl_seconds``, as last seen (None: never)."""
        return self._envelope_ttl

    def set_envelope_ttl(self, seconds: int) -> None:
        """Keep the TTL the server announced (a message's delivery status needs it offline)."""
        self.set_meta("envelope_ttl_seconds", str(seconds))
        self._envelope_ttl = seconds

    def _read_envelope_ttl(self) -> int | None:
        # Read once: every message row's delivery status uses it.
        value = self.get_meta("envelope_ttl_seconds")
        return None if value is None else int(value)

    # --- outbox -------------------------------------------------------------------------

    def enqueue(
        self,
        recipient: str,
        payload: bytes | None,
        *,
        message_rowid: int | None = None,
        counter: int | None = None,
        to_device: str | None = None,
        multi: bytes | None = None,
    ) -> int:
        """Queue an event for ``recipient`` (only its device ``to_device`` if given), or a
        ready multi-recipient envelope (``multi``: the JSON of a ``MultiEnvelope``)."""
        cursor = self._db.execute(
            "INSERT INTO outbox (message_rowid, recipient, payload, counter, to_device, multi) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (message_rowid, recipient, payload, counter, to_device, multi),
        )
        return int(cursor.lastrowid)

    def outbox(self) -> list[OutboxEntry]:
        """Queued events, oldest first, with their envelopes once encrypted."""
        entries = []
        for row in self._db.execute(
            "SELECT id, message_rowid, recipient, payload, counter, to_device, multi FROM outbox "
            "ORDER BY id"
        ).fetchall():
            envelopes = self._db.execute(
                "SELECT envelope_id, to_user, to_device, ciphertext FROM outbox_envelopes "
                "WHERE outbox_id = ? ORDER BY envelope_id",
                (row[0],),
            ).fetchall()
            entries.append(
                OutboxEntry(
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    [tuple(e) for e in envelopes],
                    row[5],
                    row[6],
                )
            )
        return entries

    def outbox_size(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def save_envelopes(self, outbox_id: int, envelopes: list[tuple[str, str, str, bytes]]) -> None:
        """Keep the ciphertext so a resend sends the same bytes; the plaintext copy goes."""
        self._db.executemany(
            "INSERT INTO outbox_envelopes (envelope_id, outbox_id, to_user, to_device, "
            "ciphertext) VALUES (?, ?, ?, ?, ?)",
            [(e[0], outbox_id, e[1], e[2], e[3]) for e in envelopes],
        )
        self._db.execute("UPDATE outbox SET payload = NULL WHERE id = ?", (outbox_id,))

    def dequeue(self, outbox_id: int) -> None:
        """Remove an event from the outbox (its envelopes go with it)."""
        self._db.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,))

    # --- conversations ------------------------------------------------------------------

    def conversation(self, peer: str) -> Conversation | None:
        row = self._db.execute(
            "SELECT peer, accepted, blocked, timer_seconds FROM conversations WHERE peer = ?",
            (peer,),
        ).fetchone()
        if row is None:
            return None
        return Conversation(row[0], bool(row[1]), bool(row[2]), row[3])

    def conversations(self) -> list[Conversation]:
        peers = [r[0] for r in self._db.execute("SELECT peer FROM conversations ORDER BY peer")]
        return [c for c in map(self.conversation, peers) if c is not None]

    def open_conversation(self, peer: str, *, accepted: bool) -> Conversation:
        """The conversation with ``peer``, created (accepted or as a request) if new."""
        self._db.execute(
            "INSERT OR IGNORE INTO conversations (peer, accepted) VALUES (?, ?)",
            (peer, int(accepted)),
        )
        conversation = self.conversation(peer)
        assert conversation is not None
        return conversation

    def set_conversation(self, peer: str, **changes: object) -> None:
        """Update settings: accepted, blocked, timer_seconds (columns by name)."""
        allowed = {"accepted", "blocked", "timer_seconds"}
        assert set(changes) <= allowed, changes
        for column, value in changes.items():
            self._db.execute(
                f"UPDATE conversations SET {column} = ? WHERE peer = ?",
                (int(value) if isinstance(value, bool) else value, peer),
            )

    def next_counter(self, peer: str) -> int:
        """Take the next number of our events to ``peer`` (1, 2, …)."""
        self.open_conversation(peer, accepted=True)
        (counter,) = self._db.execute(
            "UPDATE conversations SET next_counter = next_counter + 1 WHERE peer = ? "
            "RETURNING next_counter - 1",
            (peer,),
        ).fetchone()
        return int(counter)

    def see_counter(
        self, peer: str, sender: str, device: str, counter: int, *, baseline: bool = False
    ) -> None:
        """Record a device's counter in a conversation: fills a gap, or opens one below it.

        With ``baseline``, the first counter seen from a device opens no gap below it
        (this device joined an account whose conversations were already under way).
        """
        key = (peer, sender, device)
        self._db.execute(
            "INSERT OR IGNORE INTO counters (peer, sender, device, highest_seen) "
            "VALUES (?, ?, ?, ?)",
            (*key, counter - 1 if baseline else 0),
        )
        highest, missing_json = self._db.execute(
            "SELECT highest_seen, missing FROM counters WHERE peer = ? AND sender = ? "
            "AND device = ?",
            key,
        ).fetchone()
        missing = set(json.loads(missing_json))
        if counter > highest:
            missing.update(range(max(highest + 1, counter - MAX_TRACKED_GAP), counter))
            highest = counter
        missing.discard(counter)
        if len(missing) > MAX_TRACKED_GAP:
            missing = set(sorted(missing)[-MAX_TRACKED_GAP:])
        self._db.execute(
            "UPDATE counters SET highest_seen = ?, missing = ? WHERE peer = ? AND sender = ? "
            "AND device = ?",
            (highest, json.dumps(sorted(missing)), *key),
        )

    def counters_with_gaps(self) -> list[Counters]:
        """Every (conversation, sending device) with counters still missing."""
        rows = self._db.execute(
            "SELECT peer, sender, device, highest_seen, missing, gap_notified FROM counters "
            "WHERE missing != '[]' ORDER BY peer, sender, device"
        ).fetchall()
        return [Counters(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5])) for r in rows]

    def note_gaps_shown(self, counters: Counters) -> None:
        self._db.execute(
            "UPDATE counters SET gap_notified = ? WHERE peer = ? AND sender = ? AND device = ?",
            (json.dumps(sorted(counters.missing)), counters.peer, counters.sender, counters.device),
        )

    # --- message changes ----------------------------------------------------------------

    def find(self, peer: str, message_id: str) -> tuple[int, Message] | None:
        """A message of the conversation with ``peer`` by its id: (row id, message)."""
        row = self._db.execute(
            f"SELECT id, {_MESSAGE_COLUMNS} FROM messages WHERE peer = ? AND message_id = ?",
            (peer, message_id),
        ).fetchone()
        return None if row is None else (int(row[0]), self._row_to_message(row[1:]))

    def find_by_prefix(self, prefix: str) -> list[tuple[int, Message]]:
        """Messages whose id starts with ``prefix`` (what people type)."""
        rows = self._db.execute(
            f"SELECT id, {_MESSAGE_COLUMNS} FROM messages WHERE message_id LIKE ? ESCAPE '\\' "
            "AND state != 'notice'",
            (prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
        ).fetchall()
        return [(int(r[0]), self._row_to_message(r[1:])) for r in rows]

    def set_reaction(self, rowid: int, reactor: str, emoji: str) -> None:
        if emoji:
            self._db.execute(
                "INSERT INTO reactions (message_rowid, reactor, emoji) VALUES (?, ?, ?) "
                "ON CONFLICT (message_rowid, reactor) DO UPDATE SET emoji = excluded.emoji",
                (rowid, reactor, emoji),
            )
        else:
            self._db.execute(
                "DELETE FROM reactions WHERE message_rowid = ? AND reactor = ?", (rowid, reactor)
            )

    def edit(self, rowid: int, text: str, edited_at_ms: int) -> None:
        """Replace a message's text, keeping the earlier text in ``edits``."""
        self._db.execute(
            "INSERT INTO edits (message_rowid, text, edited_at_ms) "
            "SELECT id, text, ? FROM messages WHERE id = ?",
            (edited_at_ms, rowid),
        )
        self._db.execute(
            "UPDATE messages SET text = ?, edited_at_ms = ? WHERE id = ?",
            (text, edited_at_ms, rowid),
        )

    def earlier_texts(self, rowid: int) -> list[str]:
        return [
            r[0]
            for r in self._db.execute(
                "SELECT text FROM edits WHERE message_rowid = ? ORDER BY rowid", (rowid,)
            )
        ]

    def delete_for_everyone(self, rowid: int) -> str | None:
        """Blank a message, its earlier texts and reactions; returns its attachment's blob id."""
        row = self._db.execute("SELECT attachment FROM messages WHERE id = ?", (rowid,)).fetchone()
        self._db.execute("DELETE FROM edits WHERE message_rowid = ?", (rowid,))
        self._db.execute("DELETE FROM reactions WHERE message_rowid = ?", (rowid,))
        self._db.execute(
            "UPDATE messages SET text = '', deleted = 1, attachment = NULL, reply_to = NULL "
            "WHERE id = ?",
            (rowid,),
        )
        if row is None or row[0] is None:
            return None
        return str(json.loads(row[0])["blob_id"])

    def set_receipt(self, peer: str, message_ids: list[str], status: str) -> list[int]:
        """Mark our messages to ``peer`` delivered or read (never back from read)."""
        changed = []
        for message_id in message_ids:
            row = self._db.execute(
                "UPDATE messages SET receipt = ? WHERE peer = ? AND message_id = ? AND outgoing = 1 "
                "AND (receipt IS NULL OR (receipt = 'delivered' AND ? = 'read')) RETURNING id",
                (status, peer, message_id, status),
            ).fetchone()
            if row is not None:
                changed.append(int(row[0]))
        return changed

    def unread_from(self, peer: str) -> list[str]:
        """Ids of the peer's messages this device has not reported read."""
        return [
            r[0]
            for r in self._db.execute(
                "SELECT message_id FROM messages WHERE peer = ? AND outgoing = 0 "
                "AND state = 'received' AND receipt IS NULL",
                (peer,),
            )
        ]

    def mark_read(self, peer: str, message_ids: list[str]) -> None:
        self._db.executemany(
            "UPDATE messages SET receipt = 'read' WHERE peer = ? AND message_id = ? AND outgoing = 0",
            [(peer, m) for m in message_ids],
        )

    def attachment_of(self, rowid: int) -> Attachment | None:
        """The attachment stored with a message, its key included."""
        row = self._db.execute("SELECT attachment FROM messages WHERE id = ?", (rowid,)).fetchone()
        if row is None or row[0] is None:
            return None
        return msgspec.json.decode(row[0], type=Attachment)

    def set_expiry(self, rowid: int, expires_at_ms: int) -> None:
        self._db.execute(
            "UPDATE messages SET expires_at_ms = ? WHERE id = ?", (expires_at_ms, rowid)
        )

    def set_reply_and_attachment(
        self, rowid: int, reply_to: str | None, attachment: bytes | None
    ) -> None:
        self._db.execute(
            "UPDATE messages SET reply_to = ?, attachment = ? WHERE id = ?",
            (reply_to, attachment, rowid),
        )

    def expire(self, now: int) -> list[str]:
        """Delete every message whose timer ran out; returns their attachments' blob ids."""
        rows = self._db.execute(
            "DELETE FROM messages WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ? "
            "RETURNING attachment",
            (now,),
        ).fetchall()
        return [str(json.loads(r[0])["blob_id"]) for r in rows if r[0] is not None]

    def message_count(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(count)

    def next_expiry(self) -> int | None:
        (when,) = self._db.execute("SELECT MIN(expires_at_ms) FROM messages").fetchone()
        return None if when is None else int(when)

    def reactions(self, rowid: int) -> dict[str, str]:
        return dict(
            self._db.execute(
                "SELECT reactor, emoji FROM reactions WHERE message_rowid = ? ORDER BY reactor",
                (rowid,),
            ).fetchall()
        )

    # --- inbox dedupe -------------------------------------------------------------------

    def is_processed(self, envelope_id: str) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM processed WHERE envelope_id = ?", (envelope_id,)
            ).fetchone()
            is not None
        )

    def mark_processed(self, envelope_id: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO processed (envelope_id, at_ms) VALUES (?, ?)",
            (envelope_id, now_ms()),
        )

    def forget_old_processed(self) -> None:
        self._db.execute("DELETE FROM processed WHERE at_ms < ?", (now_ms() - PROCESSED_KEEP_MS,))


_MESSAGE_COLUMNS = (
    "message_id, peer, sender, sender_device, outgoing, text, sent_at_ms, state, error, warning, "
    "reply_to, edited_at_ms, deleted, receipt, expires_at_ms, attachment, id, counter, position, "
    "arrived_late, sent_ok_ms, peer_receipts_off"
)


def place_message(db: dbapi2.Connection, rowid: int) -> None:
    """Give a just stored message its position (:func:`obrolan.client.ordering.place`):
    before the earliest message of the same sending device with a counter above its own
    (by at most ``WINDOW``), if one is shown, and then marked as arrived late; else at
    the end."""
    peer, sender, device, counter = db.execute(
        "SELECT peer, sender, sender_device, counter FROM messages WHERE id = ?", (rowid,)
    ).fetchone()
    next_shown = None
    if counter is not None:
        row = db.execute(
            "SELECT position FROM messages WHERE peer = ? AND sender = ? AND sender_device = ? "
            "AND counter > ? AND counter <= ? AND id != ? ORDER BY position, counter, id LIMIT 1",
            (peer, sender, device, counter, counter + WINDOW, rowid),
        ).fetchone()
        next_shown = None if row is None else int(row[0])
    placement = place(rowid, counter, next_shown)
    db.execute(
        "UPDATE messages SET position = ?, arrived_late = arrived_late OR ? WHERE id = ?",
        (placement.position, int(placement.arrived_late), rowid),
    )
