"""Export: a profile's history written to one encrypted archive file (docs/protocol.md §21.2).

An archive holds history only: contacts (with their pinned identity keys),
conversation settings, messages (every column), the earlier texts of edited
messages, reactions, and the attachment files of the archived messages, byte
for byte (they are already encrypted at rest). It never holds the device's
identity, its Olm sessions, the outbox, the processed envelope ids or the
profile's meta: importing an archive can never clone a device. Messages whose
disappearing timer ran out are left out. The file's layout is
:mod:`~obrolan.client.archive_format`'s; this module chooses the rows::

    summary = export_history(vault, Path("history.obrolan"), "long passphrase", None)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlcipher3 import dbapi2

from obrolan import __version__
from obrolan.client.archive_format import (
    ATTACHMENTS_FOLDER,
    BLOB_NAME,
    FILE_PART_BYTES,
    PROGRESS_EVERY,
    End,
    FilePart,
    Manifest,
    MessageRecord,
    Progress,
    RecordWriter,
    Rows,
    quoted_names,
    table_columns,
)
from obrolan.client.durable_files import (
    create_private,
    flush_to_disk,
    hidden_sibling,
    place_new,
    sync_folder,
)
from obrolan.client.store import Store, now_ms
from obrolan.client.store_schema import SCHEMA_VERSION
from obrolan.client.vault import Vault
from obrolan.errors import ConfigError, InvalidState, StorageError

__all__ = ["ROW_BATCH", "ExportSummary", "export_history"]

ROW_BATCH = 1000
"""Contacts or conversations per record."""

_CONVERSATION_SETTINGS = ("peer", "accepted", "blocked", "timer_seconds")
"""What an archive keeps of a conversation; its counters belong to this device's sessions."""
_NOT_EXPIRED = "(expires_at_ms IS NULL OR expires_at_ms > :now)"


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote."""

    path: Path
    messages: int
    edits: int
    reactions: int
    contacts: int
    conversations: int
    files: int
    size: int
    """Bytes of the archive file."""

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "path": str(self.path)}


def export_history(
    vault: Vault,
    out: Path,
    passphrase: str,
    progress: Progress | None = None,
    *,
    overwrite: bool = False,
) -> ExportSummary:
    """Write the profile's history to an encrypted archive file.

    The rows come from one read snapshot (other processes may keep writing), and
    ``out`` appears only once complete (a temporary file is renamed).

    Args:
        vault: the open profile store.
        out: the archive file to create (mode 0600).
        passphrase: protects the archive (Argon2id with a fresh salt).
        progress: called now and then with (items done, items in all).
        overwrite: replace ``out`` if it exists.

    Raises:
        ConfigError: the passphrase is empty, or ``out`` exists and ``overwrite`` is false.
        InvalidState: a transaction is open on the vault.
        StorageError: the store cannot be read or the archive cannot be written.
    """
    if not passphrase:
        raise ConfigError("the archive passphrase is empty; choose one")
    if not overwrite and out.exists():
        raise ConfigError(f"{out} already exists; choose another file or allow replacing it")
    if vault.connection.in_transaction:
        raise InvalidState("a transaction is already open on this vault")
    owner = Store(vault).get_meta("username")  # also brings the schema up to date
    temporary = hidden_sibling(out, ".partial")
    try:
        file = create_private(temporary)
    except OSError as exc:
        raise StorageError(f"cannot write {out}: {exc.strerror}") from None
    try:
        with file:
            writer = RecordWriter(file, passphrase)
            counts = _write_history(vault, writer, owner, progress)
            flush_to_disk(file)
        _publish(temporary, out, overwrite)
        size = out.stat().st_size
    except OSError as exc:
        raise StorageError(f"cannot write {out}: {exc.strerror or exc}") from None
    except dbapi2.Error as exc:
        raise StorageError(f"cannot read the store: {exc}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return ExportSummary(path=out, size=size, **counts)


def _write_history(
    vault: Vault, writer: RecordWriter, owner: str | None, progress: Progress | None
) -> dict[str, int]:
    """Stream every record into ``writer`` from one read snapshot; returns the counts."""
    db = vault.connection
    now = {"now": now_ms()}
    db.execute("BEGIN")  # deferred: a read snapshot that blocks no writer
    try:
        columns = {
            "contacts": table_columns(db, "contacts"),
            "conversations": [
                c for c in table_columns(db, "conversations") if c in _CONVERSATION_SETTINGS
            ],
            # A position is a row id of this profile: the importing one places each message
            # again, in the same arrival order (client/ordering.py).
            "messages": [c for c in table_columns(db, "messages", skip="id") if c != "position"],
            "edits": table_columns(db, "edits", skip="message_rowid"),
            "reactions": table_columns(db, "reactions", skip="message_rowid"),
        }
        (message_total,) = db.execute(
            f"SELECT count(*) FROM messages WHERE {_NOT_EXPIRED}", now
        ).fetchone()
        files = _attachment_files(vault, now)
        total = message_total + len(files)
        writer.add(
            Manifest(
                owner=owner,
                exported_at_ms=now["now"],
                schema_version=SCHEMA_VERSION,
                software=f"obrolan {__version__}",
                messages=message_total,
                files=len(files),
                columns=columns,
            )
        )
        counts = {"contacts": 0, "conversations": 0, "edits": 0, "reactions": 0}
        for table in ("contacts", "conversations"):
            cursor = db.execute(f"SELECT {quoted_names(columns[table])} FROM {table} ORDER BY 1")
            while rows := cursor.fetchmany(ROW_BATCH):
                writer.add(Rows(table=table, rows=[list(r) for r in rows]))
                counts[table] += len(rows)
        if progress is not None:
            progress(0, total)
        messages = db.execute(
            f"SELECT id, {quoted_names(columns['messages'])} FROM messages WHERE {_NOT_EXPIRED} "
            "ORDER BY id",
            now,
        )
        edits = _ByMessage(
            db.execute(
                f"SELECT message_rowid, {quoted_names(columns['edits'])} FROM edits "
                "ORDER BY message_rowid, rowid"
            )
        )
        reactions = _ByMessage(
            db.execute(
                f"SELECT message_rowid, {quoted_names(columns['reactions'])} FROM reactions "
                "ORDER BY message_rowid, reactor"
            )
        )
        done = 0
        for rowid, *row in messages:
            message = MessageRecord(
                row=row, edits=edits.take(rowid), reactions=reactions.take(rowid)
            )
            writer.add(message)
            counts["edits"] += len(message.edits)
            counts["reactions"] += len(message.reactions)
            done += 1
            if progress is not None and done % PROGRESS_EVERY == 0:
                progress(done, total)
        files_written = 0
        for path in files:
            if _write_file(writer, path):
                files_written += 1
            done += 1
            if progress is not None:
                progress(done, total)
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
    writer.add(End(messages=message_total, files=files_written))
    writer.close()
    if progress is not None:
        progress(total, total)
    return {"messages": message_total, "files": files_written, **counts}


def _attachment_files(vault: Vault, now: dict[str, int]) -> list[Path]:
    """The files of the archived messages that this device holds, by blob id."""
    folder = vault.path / ATTACHMENTS_FOLDER
    if not folder.is_dir():
        return []
    names = set()
    for (meta,) in vault.connection.execute(
        f"SELECT attachment FROM messages WHERE attachment IS NOT NULL AND {_NOT_EXPIRED}", now
    ):
        try:
            name = json.loads(meta)["blob_id"]
        except (ValueError, TypeError, KeyError):
            continue  # metadata this code does not understand: the file stays out
        if isinstance(name, str) and BLOB_NAME.match(name) and (folder / name).is_file():
            names.add(name)
    return [folder / name for name in sorted(names)]


def _write_file(writer: RecordWriter, path: Path) -> bool:
    """Add one attachment file in parts; False if it vanished meanwhile (it expired)."""
    try:
        with path.open("rb") as file:
            part = file.read(FILE_PART_BYTES)
            while True:
                following = file.read(FILE_PART_BYTES)
                writer.add(FilePart(name=path.name, data=part, last=not following))
                if not following:
                    return True
                part = following
    except FileNotFoundError:
        return False


def _publish(temporary: Path, out: Path, overwrite: bool) -> None:
    """Give the finished archive its name: replacing ``out`` only if allowed."""
    if overwrite:
        os.replace(temporary, out)
    elif not place_new(temporary, out):
        raise ConfigError(f"{out} already exists; choose another file")
    sync_folder(out.parent)


class _ByMessage:
    """Rows ordered by message row id, taken group by group as the messages go by."""

    def __init__(self, cursor: dbapi2.Cursor) -> None:
        self._rows: Iterator[tuple[Any, ...]] = iter(cursor)
        self._next = next(self._rows, None)

    def take(self, rowid: int) -> list[list[Any]]:
        """The rows of message ``rowid``; rows of earlier (unarchived) messages are passed."""
        group = []
        while self._next is not None and self._next[0] <= rowid:
            if self._next[0] == rowid:
                group.append(list(self._next[1:]))
            self._next = next(self._rows, None)
        return group
