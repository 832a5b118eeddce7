"""Whether the server's database may be opened: checked once at start, before any write.

A data folder remembers that it held a database: when the server makes a new one, it
writes a marker file beside it (``obrolan.db.created``). A database that is then
missing, empty or without its schema is refused rather than made anew, since a new one
would silently drop every account and every queued envelope. A file that SQLite cannot
read, or that fails ``PRAGMA quick_check``, is refused too. Each refusal is a
:class:`DamagedDatabase` whose message says what is wrong and what to do (the server
prints it as one plain message and exits non-zero). ``--new-database`` lets the operator
start afresh where a database was, but never over a damaged file.
"""

from __future__ import annotations

import datetime
import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

from obrolan.errors import StorageError

__all__ = [
    "BLOB_DATABASE",
    "MARKER_SUFFIX",
    "SERVER_DATABASE",
    "DamagedDatabase",
    "Role",
    "check_before_open",
    "marker_path",
    "write_marker",
]

_logger = logging.getLogger(__name__)

MARKER_SUFFIX = ".created"
"""The marker is the database's name with this added: ``obrolan.db.created``."""
_PROBLEMS_SHOWN = 5
"""Most lines of ``quick_check``'s answer quoted in the message."""
_NOT_STARTING_DAMAGED = "Not starting on a damaged database."
_RESTORE = (
    'What to do (docs/deploy.md, "Damaged database"): stop anything else using {folder}; '
    "if you keep a backup of {name}, restore it there (without any {name}-wal or "
    "{name}-shm of the lost one)"
)
_FRESH = (
    "; if not, start once with --new-database to begin again in this folder on purpose ({lost})."
)
_MOVE_AWAY = (
    "; if not, move {name}, with {name}-wal and {name}-shm if present, aside (keep them "
    "for inspection) and start once with --new-database ({lost})."
)


class Role(NamedTuple):
    """Which database is checked, in the words of its messages."""

    title: str
    """e.g. ``"server database"``."""
    holds: str
    """What it holds, after "every": ``"account and queued message"``."""
    starting_empty: str
    """What starting with an empty one would mean."""
    lost: str
    """What beginning again on purpose loses, and what users then do."""


SERVER_DATABASE = Role(
    "server database",
    "account and queued message",
    "a new, empty server, without any of its accounts or queued messages, and with every "
    "username free to be taken",
    "every account and queued message is lost; users register again",
)
BLOB_DATABASE = Role(
    "attachment database",
    "attachment waiting to be fetched",
    "deleting every attachment file waiting in blobs/ as unknown",
    "every attachment waiting to be fetched is lost; senders send those files again",
)


class DamagedDatabase(StorageError):
    """The database is missing, empty, unreadable or damaged where one existed."""


def marker_path(database: Path) -> Path:
    """The marker file that says ``database`` was made in this folder."""
    return database.with_name(database.name + MARKER_SUFFIX)


def write_marker(database: Path) -> None:
    """Record that this folder holds a database (if not recorded yet)."""
    marker = marker_path(database)
    if marker.exists():
        return
    day = datetime.datetime.now(datetime.UTC).date().isoformat()
    marker.write_text(
        f"obrolan: {database.name} in this folder was created or first checked on {day}.\n"
        f"While this file exists, the server refuses to start if {database.name} is missing,\n"
        "empty or has no schema, instead of starting empty. Restore the database from a\n"
        "backup, or start with --new-database to begin again on purpose.\n",
        encoding="utf-8",
    )
    _logger.info("marked %s as in use (%s)", database.parent, database.name)


def check_before_open(
    database: Path, *, new_database: bool = False, role: Role = SERVER_DATABASE
) -> bool:
    """Refuse a database that is missing, empty, unreadable or damaged where one existed.

    Args:
        database: the SQLite file (it need not exist).
        new_database: the operator asked to start afresh if no database is there.
        role: which database it is, for the messages.

    Returns:
        True when a new database is to be made (the folder never held one, or
        ``new_database``), False when an existing one passed the checks.

    Raises:
        DamagedDatabase: the message says what is wrong and what to do.
    """
    name, folder = database.name, database.parent
    title, lost = role.title, role.lost
    restore = _RESTORE.format(name=name, folder=folder)
    empty = f"\nNot starting: that would mean {role.starting_empty}.\n{restore}"
    empty += _FRESH.format(lost=lost)
    marked = marker_path(database).exists()
    if not database.exists():
        if marked and not new_database:
            raise DamagedDatabase(
                f"the {title} {database} is missing, but {marker_path(database).name} "
                f"says this folder held one.{empty}"
            )
        _set_aside_journal(database)
        return True
    size = database.stat().st_size
    if size == 0:
        if new_database:
            _set_aside_journal(database)
            return True
        raise DamagedDatabase(
            f"the {title} {database} is empty (0 bytes): every {role.holds} it held is "
            f"gone from it.{empty}\n(If this server never ran before, delete the empty file.)"
        )
    problems, has_schema = _inspect(database)
    if problems:
        shown = "; ".join(problems[:_PROBLEMS_SHOWN])
        more = (
            f" (and {len(problems) - _PROBLEMS_SHOWN} more)"
            if len(problems) > _PROBLEMS_SHOWN
            else ""
        )
        raise DamagedDatabase(
            f"the {title} {database} is damaged: {shown}{more}.\n"
            f"{_NOT_STARTING_DAMAGED}\n{restore}{_MOVE_AWAY.format(name=name, lost=lost)}"
        )
    if not has_schema:
        if marked and not new_database:
            raise DamagedDatabase(
                f"the {title} {database} has no obrolan tables, but "
                f"{marker_path(database).name} says this folder held a database.{empty}"
            )
        return True
    return False


def _set_aside_journal(database: Path) -> None:
    """Keep a WAL left by an earlier database out of the new one: SQLite would replay its
    pages into it. It is renamed, not deleted (it may be all that is left of the old
    data); the shared-memory index is only a cache of it."""
    wal = database.with_name(database.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        kept = wal.with_name(wal.name + ".before-new-database")
        wal.replace(kept)
        _logger.warning("an earlier database's WAL was set aside as %s", kept.name)
    database.with_name(database.name + "-shm").unlink(missing_ok=True)


def _inspect(database: Path) -> tuple[list[str], bool]:
    """What ``quick_check`` finds wrong (empty if nothing), and whether any table exists.

    Opened read-write, as the server will open it, so that a WAL left by a crash is
    part of what is checked.
    """
    try:
        with closing(sqlite3.connect(database, isolation_level=None)) as conn:
            tables = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
            has_schema = tables.fetchone()[0] > 0
            rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:  # "file is not a database", "disk image is malformed"
        return [_plain(exc)], False
    answers = [str(row[0]) for row in rows]
    if answers == ["ok"]:
        return [], has_schema
    return answers, has_schema


def _plain(exc: sqlite3.DatabaseError) -> str:
    message = str(exc)
    if "not a database" in message:
        return "SQLite says the file is not a database (its header is damaged or overwritten)"
    return f"SQLite says: {message}"
