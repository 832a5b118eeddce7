"""The server database's schema, its migrations, and how a connection is opened.

Each step of :data:`_MIGRATIONS` brings the schema one version up, in its own
transaction; ``PRAGMA user_version`` says which step a database is at.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from obrolan.errors import StorageError

__all__ = ["SCHEMA_VERSION", "migrate", "open_db"]

_logger = logging.getLogger(__name__)

_BUSY_TIMEOUT_MS = 2000

_SCHEMA_V1 = (
    """
    CREATE TABLE accounts (
        username TEXT PRIMARY KEY,
        created_day TEXT NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE devices (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
        device_id TEXT NOT NULL,
        ed25519 TEXT NOT NULL,
        curve25519 TEXT NOT NULL,
        signature TEXT NOT NULL,
        created_day TEXT NOT NULL,
        last_active_day TEXT NOT NULL,
        -- envelopes waiting in mailbox, kept in step by every mailbox write, so that
        -- a send checks the queue limit without counting rows
        queued INTEGER NOT NULL DEFAULT 0,
        UNIQUE (username, device_id)
    )
    """,
    """
    CREATE TABLE one_time_keys (
        id INTEGER PRIMARY KEY,
        device INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
        key_id TEXT NOT NULL,
        key TEXT NOT NULL,
        signature TEXT NOT NULL,
        UNIQUE (device, key_id)
    )
    """,
    """
    CREATE TABLE fallback_keys (
        device INTEGER PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
        key_id TEXT NOT NULL,
        key TEXT NOT NULL,
        signature TEXT NOT NULL
    )
    """,
    # AUTOINCREMENT: a seq is never reused after deletes, so seq grows in commit order
    # (there is one writer) and a delivery cursor never skips a new envelope.
    """
    CREATE TABLE mailbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        device INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
        envelope_id TEXT NOT NULL,
        from_user TEXT NOT NULL,
        from_device TEXT NOT NULL,
        ciphertext BLOB NOT NULL,
        expires_at INTEGER NOT NULL,
        UNIQUE (device, envelope_id)
    )
    """,
    "CREATE INDEX mailbox_by_device ON mailbox (device, seq)",
    "CREATE INDEX mailbox_by_expiry ON mailbox (expires_at)",
)


_SCHEMA_V2 = (
    # The writer keeps queue lengths in memory (see _WriterDb): no counter row to update
    # per message.
    "ALTER TABLE devices DROP COLUMN queued",
)


_SCHEMA_V3 = (
    # Device lists (issue 3). The signed list is kept as its bytes and signature, exactly
    # as the account key signed them; the devices table holds the listed devices' keys
    # (what authentication and claims read). Accounts created before this version have
    # no account key: no list can be checked against them, so they cannot publish one,
    # set a recovery key or be recovered (their devices still authenticate and receive).
    # Pre-release: such accounts are registered anew under another name.
    "ALTER TABLE accounts ADD COLUMN account_key TEXT",
    "ALTER TABLE accounts ADD COLUMN device_list BLOB",
    "ALTER TABLE accounts ADD COLUMN device_list_signature TEXT",
    "ALTER TABLE accounts ADD COLUMN list_version INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE accounts ADD COLUMN recovery_key TEXT",
)


_SCHEMA_V4 = (
    # Multi-recipient envelopes (issue 4): one ciphertext, stored once, for many devices.
    # The row is found again by its sender and envelope id, so a resend adds no copy.
    """
    CREATE TABLE ciphertexts (
        id INTEGER PRIMARY KEY,
        from_user TEXT NOT NULL,
        from_device TEXT NOT NULL,
        envelope_id TEXT NOT NULL,
        data BLOB NOT NULL,
        UNIQUE (from_user, from_device, envelope_id)
    )
    """,
    # The mailbox is rebuilt because its ciphertext becomes NULL-able (SQLite cannot drop
    # a NOT NULL): a row holds its own ciphertext (send) or points to a shared one
    # (send_multi), never both. No foreign key on ciphertext_id: its check would cost the
    # delete of every shared ciphertext a scan; the trigger below keeps them in step.
    # The ciphertext comes last, so that reading the other columns of a row whose
    # ciphertext spills into overflow pages never walks them.
    """
    CREATE TABLE mailbox_v4 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        device INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
        envelope_id TEXT NOT NULL,
        from_user TEXT NOT NULL,
        from_device TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        ciphertext_id INTEGER,
        ciphertext BLOB,
        CHECK ((ciphertext IS NULL) <> (ciphertext_id IS NULL)),
        UNIQUE (device, envelope_id)
    )
    """,
    """
    INSERT INTO mailbox_v4 (seq, device, envelope_id, from_user, from_device, expires_at,
        ciphertext)
    SELECT seq, device, envelope_id, from_user, from_device, expires_at, ciphertext
    FROM mailbox
    """,
    # Keep AUTOINCREMENT's high-water mark: a seq is never given twice.
    "DELETE FROM sqlite_sequence WHERE name = 'mailbox_v4'",
    (
        "INSERT INTO sqlite_sequence (name, seq)"
        " SELECT 'mailbox_v4', seq FROM sqlite_sequence WHERE name = 'mailbox'"
    ),
    "DROP TABLE mailbox",
    "ALTER TABLE mailbox_v4 RENAME TO mailbox",
    "CREATE INDEX mailbox_by_device ON mailbox (device, seq)",
    "CREATE INDEX mailbox_by_expiry ON mailbox (expires_at)",
    # Partial: a 1:1 row adds nothing to it.
    (
        "CREATE INDEX mailbox_by_ciphertext ON mailbox (ciphertext_id)"
        " WHERE ciphertext_id IS NOT NULL"
    ),
    # A 1:1 row's delete only tests the WHEN; a shared ciphertext goes with its last row.
    """
    CREATE TRIGGER mailbox_drops_shared_ciphertext AFTER DELETE ON mailbox
    WHEN OLD.ciphertext_id IS NOT NULL
    BEGIN
        DELETE FROM ciphertexts WHERE id = OLD.ciphertext_id
            AND NOT EXISTS (SELECT 1 FROM mailbox WHERE ciphertext_id = OLD.ciphertext_id);
    END
    """,
)


_SCHEMA_V5 = (
    # Key successions (a recovered account's earlier account keys stay provable): the
    # account key's signature over its recovery key, and each handover to a new key.
    # Accounts whose recovery key was set before this version have no signature; a
    # recovery from such a key is not recorded as a succession.
    "ALTER TABLE accounts ADD COLUMN recovery_key_signature TEXT",
    """
    CREATE TABLE key_successions (
        username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (username, seq)
    ) WITHOUT ROWID
    """,
)


_SCHEMA_V6 = (
    # How many envelopes of a device expired unread, kept only until the device says
    # it told its user (ack.expired): a count, nothing about who sent them.
    """
    CREATE TABLE expired_unread (
        device INTEGER PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
        count INTEGER NOT NULL CHECK (count > 0)
    )
    """,
)


def _run_all(statements: Sequence[str], conn: sqlite3.Connection) -> None:
    for statement in statements:
        conn.execute(statement)


_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = tuple(
    partial(_run_all, statements)
    for statements in (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4, _SCHEMA_V5, _SCHEMA_V6)
)
"""``_MIGRATIONS[n]`` brings a database from schema version n to n + 1."""
SCHEMA_VERSION = len(_MIGRATIONS)
"""The ``PRAGMA user_version`` this code writes and reads."""


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, one transaction per step."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{path} has schema version {version}, newer than this obrolan "
            f"understands ({SCHEMA_VERSION}); upgrade obrolan"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            _MIGRATIONS[target - 1](conn)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        _logger.info("database schema migrated to version %d", target)


def open_db(path: Path, *, read_only: bool, shared: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with our pragmas.

    ``shared``: more than one thread uses it, one at a time (the writer's).
    """
    try:
        if read_only:
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None
            )
        else:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=not shared)
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        if not read_only:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the server database {path}: {exc}") from None
    return conn
