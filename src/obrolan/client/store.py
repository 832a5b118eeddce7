"""The device's local history and state, in the profile's SQLCipher database.

Every query of the client lives here. Methods that must be atomic together are
called inside one ``vault.transaction()`` by the caller (the inbox stores a
message, the advanced Olm session and the processed envelope id at once).
Pickles are stored as vodozemac encrypts them, under the vault's pickle key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager

from obrolan.client.models import Contact, Message, MessageState
from obrolan.client.vault import Vault
from obrolan.errors import StorageError

__all__ = ["OutboxEntry", "Store", "now_ms"]

SCHEMA_VERSION = 2

def _statements(script: str) -> list[str]:
    """Split a script of plain statements (no triggers) on ``;``."""
    return [statement for statement in script.split(";") if statement.strip()]


_SCHEMA_V1 = _statements("""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE contacts (
    username      TEXT PRIMARY KEY,
    identity_key  TEXT NOT NULL,      -- pinned on first contact (TOFU)
    first_seen_ms INTEGER NOT NULL,
    changed_key   TEXT                -- set when the server shows another key
);
CREATE TABLE devices (
    username   TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    ed25519    TEXT NOT NULL,
    curve25519 TEXT NOT NULL,
    PRIMARY KEY (username, device_id)
);
CREATE INDEX devices_by_curve ON devices (curve25519);
CREATE TABLE sessions (
    curve25519   TEXT NOT NULL,       -- the other device's identity key
    session_id   TEXT NOT NULL,
    pickle       TEXT NOT NULL,
    last_used_ms INTEGER NOT NULL,
    PRIMARY KEY (curve25519, session_id)
);
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,
    message_id    TEXT NOT NULL,
    peer          TEXT NOT NULL,
    sender        TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    outgoing      INTEGER NOT NULL,
    text          TEXT NOT NULL,
    sent_at_ms    INTEGER NOT NULL,
    state         TEXT NOT NULL,
    error         TEXT,
    warning       TEXT,
    UNIQUE (sender, message_id)
);
CREATE INDEX messages_by_peer ON messages (peer, id);
CREATE TABLE outbox (
    message_rowid INTEGER PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    recipient     TEXT NOT NULL,
    payload       BLOB                -- the Plaintext content, until encrypted
);
CREATE TABLE outbox_envelopes (
    envelope_id   TEXT PRIMARY KEY,
    message_rowid INTEGER NOT NULL REFERENCES outbox (message_rowid) ON DELETE CASCADE,
    to_user       TEXT NOT NULL,
    to_device     TEXT NOT NULL,
    ciphertext    BLOB NOT NULL
);
CREATE TABLE processed (
    envelope_id TEXT PRIMARY KEY,     -- dedupe: kept longer than the server's TTL
    at_ms       INTEGER NOT NULL
);
""")

_SCHEMA_V2 = [
    # Everyday messaging: replies, edits, delete for everyone, disappearing messages,
    # delivery/read receipts, ordering counters.
    "ALTER TABLE messages ADD COLUMN reply_to TEXT",
    "ALTER TABLE messages ADD COLUMN edited_at_ms INTEGER",
    "ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE messages ADD COLUMN expires_at_ms INTEGER",
    "ALTER TABLE messages ADD COLUMN counter INTEGER",
    "ALTER TABLE messages ADD COLUMN receipt TEXT",
    "ALTER TABLE messages ADD COLUMN attachment BLOB",
    "CREATE INDEX messages_by_expiry ON messages (expires_at_ms) WHERE expires_at_ms IS NOT NULL",
    """CREATE TABLE edits (
        message_rowid INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        text          TEXT NOT NULL,      -- the text before this edit
        edited_at_ms  INTEGER NOT NULL
    )""",
    """CREATE TABLE reactions (
        message_rowid INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        reactor       TEXT NOT NULL,
        emoji         TEXT NOT NULL,
        PRIMARY KEY (message_rowid, reactor)
    )""",
    """CREATE TABLE conversations (
        peer            TEXT PRIMARY KEY,
        accepted        INTEGER NOT NULL DEFAULT 1,  -- 0: a message request
        blocked         INTEGER NOT NULL DEFAULT 0,
        timer_seconds   INTEGER,                     -- disappearing messages
        next_counter    INTEGER NOT NULL DEFAULT 1,  -- what we number our next message
        highest_seen    INTEGER NOT NULL DEFAULT 0,  -- the peer's highest counter seen
        missing         TEXT NOT NULL DEFAULT '[]'   -- the peer's counters not seen yet
    )""",
    # On-device search: an FTS5 index over the messages' current text, kept in step by
    # triggers, so an edit, a delete or an expiry leaves nothing behind in the index.
    """CREATE VIRTUAL TABLE messages_fts USING fts5(
        text, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
    )""",
    """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts (rowid, text) VALUES (new.id, new.text);
    END""",
    """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END""",
    """CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO messages_fts (rowid, text) VALUES (new.id, new.text);
    END""",
    "INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')",
]

_MIGRATIONS: dict[int, list[str]] = {1: _SCHEMA_V1, 2: _SCHEMA_V2}
"""The statements that bring the schema from version N-1 to N."""

PROCESSED_KEEP_MS = 60 * 24 * 3600 * 1000
"""Processed envelope ids are kept 60 days, twice the server's default TTL."""


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


class OutboxEntry:
    """A queued message and, once encrypted, its envelopes."""

    __slots__ = ("envelopes", "payload", "recipient", "rowid")

    def __init__(
        self,
        rowid: int,
        recipient: str,
        payload: bytes | None,
        envelopes: list[tuple[str, str, str, bytes]],
    ) -> None:
        self.rowid = rowid
        self.recipient = recipient
        self.payload = payload
        """The content to encrypt, or None once ``envelopes`` hold the ciphertext."""
        self.envelopes = envelopes
        """(envelope_id, to_user, to_device, ciphertext) for each recipient device."""


class Store:
    """Queries over the profile's encrypted database."""

    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._db = vault.connection
        self._migrate()

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
                for statement in _MIGRATIONS[target]:
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

    # --- contacts and their devices ------------------------------------------------------

    def contact(self, username: str) -> Contact | None:
        row = self._db.execute(
            "SELECT username, identity_key, first_seen_ms, changed_key FROM contacts "
            "WHERE username = ?",
            (username,),
        ).fetchone()
        return None if row is None else Contact(row[0], row[1], row[2], row[3])

    def contacts(self) -> list[Contact]:
        rows = self._db.execute(
            "SELECT username, identity_key, first_seen_ms, changed_key FROM contacts "
            "ORDER BY username"
        ).fetchall()
        return [Contact(r[0], r[1], r[2], r[3]) for r in rows]

    def pin_contact(self, username: str, identity_key: str) -> None:
        """Pin a new contact's identity key (no-op if already pinned)."""
        self._db.execute(
            "INSERT OR IGNORE INTO contacts (username, identity_key, first_seen_ms) "
            "VALUES (?, ?, ?)",
            (username, identity_key, now_ms()),
        )

    def mark_key_changed(self, username: str, new_key: str) -> None:
        self._db.execute(
            "UPDATE contacts SET changed_key = ? WHERE username = ?", (new_key, username)
        )

    def save_devices(self, username: str, devices: list[tuple[str, str, str]]) -> None:
        """Replace the cached devices (device_id, ed25519, curve25519) of a user."""
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
    ) -> int | None:
        """Insert a message; returns its row id, or None if it was already stored."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO messages (message_id, peer, sender, sender_device, outgoing, "
            "text, sent_at_ms, state, warning) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message_id, peer, sender, sender_device, int(outgoing), text, sent_at_ms,
             state.value, warning),
        )
        return cursor.lastrowid if cursor.rowcount == 1 else None

    def set_state(self, rowid: int, state: MessageState, error: str | None = None) -> None:
        self._db.execute(
            "UPDATE messages SET state = ?, error = ? WHERE id = ?", (state.value, error, rowid)
        )

    def message(self, rowid: int) -> Message:
        return self._row_to_message(
            self._db.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (rowid,))
            .fetchone()
        )

    def messages_by_id(self, message_id: str) -> list[Message]:
        rows = self._db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE message_id = ?", (message_id,)
        ).fetchall()
        return [self._row_to_message(r) for r in rows]

    def history(self, peer: str, limit: int | None = None) -> list[Message]:
        """The conversation with ``peer``, oldest first (the last ``limit`` messages)."""
        query = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer = ? ORDER BY id DESC"
        params: tuple[object, ...] = (peer,)
        if limit is not None:
            query += " LIMIT ?"
            params = (peer, limit)
        rows = self._db.execute(query, params).fetchall()
        return [self._row_to_message(r) for r in reversed(rows)]

    @staticmethod
    def _row_to_message(row: tuple[object, ...]) -> Message:
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
        )

    # --- outbox -------------------------------------------------------------------------

    def enqueue(self, rowid: int, recipient: str, payload: bytes) -> None:
        self._db.execute(
            "INSERT INTO outbox (message_rowid, recipient, payload) VALUES (?, ?, ?)",
            (rowid, recipient, payload),
        )

    def outbox(self) -> Iterator[OutboxEntry]:
        """Queued messages, oldest first, with their envelopes once encrypted."""
        rows = self._db.execute(
            "SELECT message_rowid, recipient, payload FROM outbox ORDER BY message_rowid"
        ).fetchall()
        for rowid, recipient, payload in rows:
            envelopes = self._db.execute(
                "SELECT envelope_id, to_user, to_device, ciphertext FROM outbox_envelopes "
                "WHERE message_rowid = ? ORDER BY envelope_id",
                (rowid,),
            ).fetchall()
            yield OutboxEntry(rowid, recipient, payload, [tuple(e) for e in envelopes])

    def outbox_size(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def save_envelopes(self, rowid: int, envelopes: list[tuple[str, str, str, bytes]]) -> None:
        """Keep the ciphertext so a resend sends the same bytes; the plaintext copy goes."""
        self._db.executemany(
            "INSERT INTO outbox_envelopes (envelope_id, message_rowid, to_user, to_device, "
            "ciphertext) VALUES (?, ?, ?, ?, ?)",
            [(e[0], rowid, e[1], e[2], e[3]) for e in envelopes],
        )
        self._db.execute("UPDATE outbox SET payload = NULL WHERE message_rowid = ?", (rowid,))

    def dequeue(self, rowid: int) -> None:
        """Remove a message from the outbox (its envelopes go with it)."""
        self._db.execute("DELETE FROM outbox WHERE message_rowid = ?", (rowid,))

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
    "message_id, peer, sender, sender_device, outgoing, text, sent_at_ms, state, error, warning"
)
