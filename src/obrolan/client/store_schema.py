"""The client store's schema: the statements of each version step.

``MIGRATIONS[n]`` brings a profile's database from schema n - 1 to n; the store runs
each step in its own transaction (``Store._migrate``).
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]


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
    "CREATE INDEX edits_by_message ON edits (message_rowid)",
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
        missing         TEXT NOT NULL DEFAULT '[]',  -- the peer's counters not seen yet
        gap_notified    TEXT NOT NULL DEFAULT '[]'   -- missing counters already shown
    )""",
    # The outbox also carries events that are not messages (reactions, edits, receipts):
    # rebuild it with its own id and an optional message.
    """CREATE TABLE outbox_v2 (
        id            INTEGER PRIMARY KEY,
        message_rowid INTEGER REFERENCES messages (id) ON DELETE CASCADE,
        recipient     TEXT NOT NULL,
        payload       BLOB,               -- the content, until encrypted
        counter       INTEGER             -- the conversation counter it carries
    )""",
    """INSERT INTO outbox_v2 (id, message_rowid, recipient, payload)
        SELECT message_rowid, message_rowid, recipient, payload FROM outbox""",
    """CREATE TABLE outbox_envelopes_v2 (
        envelope_id TEXT PRIMARY KEY,
        outbox_id   INTEGER NOT NULL REFERENCES outbox_v2 (id) ON DELETE CASCADE,
        to_user     TEXT NOT NULL,
        to_device   TEXT NOT NULL,
        ciphertext  BLOB NOT NULL
    )""",
    """INSERT INTO outbox_envelopes_v2 (envelope_id, outbox_id, to_user, to_device, ciphertext)
        SELECT envelope_id, message_rowid, to_user, to_device, ciphertext FROM outbox_envelopes""",
    "DROP TABLE outbox_envelopes",
    "DROP TABLE outbox",
    "ALTER TABLE outbox_v2 RENAME TO outbox",
    "ALTER TABLE outbox_envelopes_v2 RENAME TO outbox_envelopes",
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

_SCHEMA_V3 = [
    # Several devices per account: contacts pin an account key (identity_key) and the
    # version of its signed device list; a verified contact's changed key blocks sending.
    "ALTER TABLE contacts ADD COLUMN verified INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE contacts ADD COLUMN list_version INTEGER NOT NULL DEFAULT 0",
    # Counters are numbered per sending device, so gaps are tracked per device.
    """CREATE TABLE counters (
        peer         TEXT NOT NULL,                  -- the conversation
        sender       TEXT NOT NULL,                  -- the peer, or us (another device of ours)
        device       TEXT NOT NULL,
        highest_seen INTEGER NOT NULL DEFAULT 0,
        missing      TEXT NOT NULL DEFAULT '[]',     -- counters not seen yet
        gap_notified TEXT NOT NULL DEFAULT '[]',     -- missing counters already shown
        PRIMARY KEY (peer, sender, device)
    )""",
    """INSERT INTO counters (peer, sender, device, highest_seen, missing, gap_notified)
        SELECT peer, peer, '', highest_seen, missing, gap_notified FROM conversations
        WHERE highest_seen > 0""",
    "ALTER TABLE conversations DROP COLUMN highest_seen",
    "ALTER TABLE conversations DROP COLUMN missing",
    "ALTER TABLE conversations DROP COLUMN gap_notified",
    # An event for one device only (history, verification), not every device of the user.
    "ALTER TABLE outbox ADD COLUMN to_device TEXT",
]

_SCHEMA_V4 = [
    # Groups: the verified chain of signed state updates (also the moderation log), Megolm
    # sessions, what waits to be applied, join requests and reports. Group messages live in
    # `messages` under the peer "#GROUP_ID", with the signed bytes a report needs.
    """CREATE TABLE group_updates (
        group_id  TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        update_bytes BLOB NOT NULL,
        signature TEXT NOT NULL,
        actor_key TEXT NOT NULL,          -- the account key that verified it
        PRIMARY KEY (group_id, seq)
    )""",
    """CREATE TABLE group_outbound (
        group_id    TEXT PRIMARY KEY,
        pickle      TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        messages    INTEGER NOT NULL DEFAULT 0,
        shared_with TEXT NOT NULL DEFAULT '[]'  -- "user/device" that have the key
    )""",
    """CREATE TABLE group_inbound (
        session_id    TEXT NOT NULL,
        sender        TEXT NOT NULL,          -- who shared it over Olm (authenticated)
        sender_device TEXT NOT NULL,
        group_id      TEXT NOT NULL,
        pickle        TEXT NOT NULL,
        PRIMARY KEY (session_id, sender, sender_device)
    )""",
    """CREATE TABLE group_inbox (
        id            INTEGER PRIMARY KEY,
        sender        TEXT NOT NULL,
        sender_device TEXT NOT NULL,
        body          BLOB NOT NULL          -- the Olm-carried group content, as received
    )""",
    """CREATE TABLE group_join_requests (
        group_id  TEXT NOT NULL,
        username  TEXT NOT NULL,
        invite_id TEXT NOT NULL,
        at_ms     INTEGER NOT NULL,
        PRIMARY KEY (group_id, username)
    )""",
    """CREATE TABLE group_reports (
        id        INTEGER PRIMARY KEY,
        group_id  TEXT NOT NULL,
        reporter  TEXT NOT NULL,
        sender    TEXT NOT NULL,
        message_id TEXT NOT NULL,
        text      TEXT NOT NULL,
        reason    TEXT NOT NULL,
        verified  INTEGER NOT NULL,          -- the sender's device signature checked out
        at_ms     INTEGER NOT NULL
    )""",
    "ALTER TABLE messages ADD COLUMN signed BLOB",
    "ALTER TABLE outbox ADD COLUMN multi BLOB",
]

_SCHEMA_V5 = [
    # Conversation order (client/ordering.py): each sending device's counter, and the
    # position it gives (a late message is placed before its sender's next one). The
    # messages stored so far keep their arrival order.
    "ALTER TABLE messages ADD COLUMN position INTEGER",
    "ALTER TABLE messages ADD COLUMN arrived_late INTEGER NOT NULL DEFAULT 0",
    "UPDATE messages SET position = id",
    "CREATE INDEX messages_by_position ON messages (peer, position, counter, id)",
    (
        "CREATE INDEX messages_by_counter ON messages (peer, sender, sender_device, counter) "
        "WHERE counter IS NOT NULL"
    ),
]

_SCHEMA_V6 = [
    # Delivery status (client/delivery_status.py): when the server accepted each of our
    # messages, and whether the peer said it sends no receipts (and whether we told it
    # that we send none).
    "ALTER TABLE messages ADD COLUMN sent_ok_ms INTEGER",
    # 1: sent while the peer said it sends no receipts (stays so when they come back on)
    "ALTER TABLE messages ADD COLUMN peer_receipts_off INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE conversations ADD COLUMN peer_receipts_off INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE conversations ADD COLUMN told_receipts_off INTEGER NOT NULL DEFAULT 0",
]

_SCHEMA_V7 = [
    # Group states other members' messages name (client/group_watch.py): a group whose
    # posts are held, and why; updates seen displaced by another at the same seq.
    """CREATE TABLE group_holds (
        group_id      TEXT PRIMARY KEY,
        kind          TEXT NOT NULL,     -- behind | fork | released
        seq           INTEGER NOT NULL,  -- the state the sender named
        hash          BLOB NOT NULL,
        sender        TEXT NOT NULL,
        sender_device TEXT NOT NULL,
        at_ms         INTEGER NOT NULL
    )""",
    """CREATE TABLE group_displaced (
        group_id TEXT NOT NULL,
        hash     BLOB NOT NULL,
        PRIMARY KEY (group_id, hash)
    )""",
    # Group messages kept until their key, their group's chain or the updates they name
    # arrive (the envelope as delivered: it is opened again then).
    """CREATE TABLE group_pending (
        id       INTEGER PRIMARY KEY,
        envelope BLOB NOT NULL,
        at_ms    INTEGER NOT NULL
    )""",
    # Every group message opened, by (Megolm session, message index): the same
    # ciphertext again is a redelivery, another one a replay (client/group_replays.py).
    """CREATE TABLE group_seen (
        session_id    TEXT NOT NULL,
        message_index INTEGER NOT NULL,
        body_hash     BLOB NOT NULL,
        PRIMARY KEY (session_id, message_index)
    )""",
]

MIGRATIONS: dict[int, list[str]] = {
    1: _SCHEMA_V1,
    2: _SCHEMA_V2,
    3: _SCHEMA_V3,
    4: _SCHEMA_V4,
    5: _SCHEMA_V5,
    6: _SCHEMA_V6,
    7: _SCHEMA_V7,
}
"""The statements that bring the schema from version N-1 to N."""

SCHEMA_VERSION = max(MIGRATIONS)
"""The ``PRAGMA user_version`` this code writes and reads."""
