"""Import: an archive's history added to a profile, all or nothing (docs/protocol.md §21.2).

Rows go into one transaction and files into a staging folder, and both are
committed only after the final chunk authenticated. Rows keep nothing of the
exporting store's row ids (edits and reactions follow their message), and a
message already present (same sender and message id) is kept as it is, with its
edits and reactions: importing the same archive twice changes nothing. Messages
whose disappearing timer ran out are not imported::

    imported = import_history(other_vault, Path("history.obrolan"), "long passphrase")
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlcipher3 import dbapi2

from obrolan.client.archive_format import (
    ARCHIVED_TABLES,
    ATTACHMENTS_FOLDER,
    BLOB_NAME,
    PROGRESS_EVERY,
    End,
    FilePart,
    Manifest,
    MessageRecord,
    Progress,
    Record,
    Rows,
    quoted_names,
    read_archive,
    table_columns,
)
from obrolan.client.durable_files import create_private, flush_to_disk, place_new, sync_folder
from obrolan.client.store import Store, now_ms, place_message
from obrolan.client.store_schema import SCHEMA_VERSION
from obrolan.client.vault import Vault
from obrolan.errors import StorageError

__all__ = ["NOT_SENT_BEFORE_EXPORT", "ImportSummary", "import_history"]

NOT_SENT_BEFORE_EXPORT = "not sent before the history was exported; send it again"
"""What a message queued in the exporting profile becomes in the importing one."""


@dataclass(frozen=True, slots=True)
class ImportSummary:
    """What an import added; what the profile already had is counted, not changed."""

    owner: str | None
    """Whose history it is (the exporting profile's username)."""
    messages: int
    messages_present: int
    """Messages the profile already had (kept as they were)."""
    messages_expired: int
    """Disappearing messages whose timer ran out since the export (not imported)."""
    edits: int
    reactions: int
    contacts: int
    conversations: int
    files: int
    files_present: int

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def import_history(
    vault: Vault, archive: Path, passphrase: str, progress: Progress | None = None
) -> ImportSummary:
    """Add an archive's history to a profile, all or nothing.

    Args:
        vault: the open profile store to import into.
        archive: the archive file.
        passphrase: the archive's passphrase.
        progress: called now and then with (items done, items in all).

    Raises:
        DecryptionError: wrong passphrase, or the archive is truncated or was altered.
        StorageError: the file is not an obrolan archive, is of a format or schema this
            obrolan does not know, is damaged inside, or the store cannot be written.
        InvalidState: a transaction is open on the vault.
    """
    Store(vault)  # brings the schema up to date before rows go in
    try:
        file = archive.open("rb")
    except OSError as exc:
        raise StorageError(f"cannot read {archive}: {exc.strerror}") from None
    staging = _Staging(vault.path / ATTACHMENTS_FOLDER)
    try:
        with file:
            records = read_archive(file, archive, passphrase)
            with vault.transaction() as db:
                summary = _Importer(db, archive, staging, progress).run(records)
    except OSError as exc:
        staging.unpublish()
        raise StorageError(f"cannot import {archive}: {exc.strerror or exc}") from None
    except BaseException:
        staging.unpublish()
        raise
    finally:
        staging.remove()
    return summary


class _Importer:
    """Applies the records of one archive inside the caller's transaction."""

    def __init__(
        self, db: dbapi2.Connection, archive: Path, staging: _Staging, progress: Progress | None
    ) -> None:
        self._db = db
        self._archive = archive
        self._staging = staging
        self._progress = progress
        self._now = now_ms()
        self._counts = dict.fromkeys(
            (
                "messages",
                "messages_present",
                "messages_expired",
                "edits",
                "reactions",
                "contacts",
                "conversations",
                "files_received",
            ),
            0,
        )
        self._done = 0

    def run(self, records: Iterator[Record]) -> ImportSummary:
        manifest = next(records)
        assert isinstance(manifest, Manifest)  # the reader checks the order
        self._prepare(manifest)
        total = manifest.messages + manifest.files
        self._report(total, force=True)
        for record in records:
            if isinstance(record, Rows):
                self._add_rows(record)
            elif isinstance(record, MessageRecord):
                self._add_message(record)
                self._report(total)
            elif isinstance(record, FilePart):
                if self._staging.write(record.name, record.data, record.last, self._damaged):
                    self._counts["files_received"] += 1
                    self._report(total, force=True)
            elif isinstance(record, End):
                self._check_end(record)
        self._staging.publish()  # before the commit: rows never point to missing files
        self._report(total, force=True)
        return ImportSummary(
            owner=manifest.owner,
            messages=self._counts["messages"],
            messages_present=self._counts["messages_present"],
            messages_expired=self._counts["messages_expired"],
            edits=self._counts["edits"],
            reactions=self._counts["reactions"],
            contacts=self._counts["contacts"],
            conversations=self._counts["conversations"],
            files=self._staging.new_files,
            files_present=self._staging.present_files,
        )

    def _prepare(self, manifest: Manifest) -> None:
        """Check the archive's tables against this store and build the statements."""
        newer = StorageError(
            f"{self._archive} comes from a newer obrolan (store schema "
            f"{manifest.schema_version}, this one reads {SCHEMA_VERSION}): update obrolan"
        )
        if manifest.schema_version > SCHEMA_VERSION or set(manifest.columns) != set(
            ARCHIVED_TABLES
        ):
            raise newer
        for table, names in manifest.columns.items():
            if not set(names) <= set(table_columns(self._db, table)):
                raise newer
        columns = manifest.columns
        self._insert = {
            table: f"INSERT OR IGNORE INTO {table} ({quoted_names(columns[table])}) "
            f"VALUES ({', '.join('?' * len(columns[table]))})"
            for table in ("contacts", "conversations", "messages")
        }
        for table in ("edits", "reactions"):
            names = ["message_rowid", *columns[table]]
            self._insert[table] = (
                f"INSERT OR IGNORE INTO {table} ({quoted_names(names)}) "
                f"VALUES ({', '.join('?' * len(names))})"
            )
        self._expiry = (
            columns["messages"].index("expires_at_ms")
            if "expires_at_ms" in columns["messages"]
            else None
        )

    def _add_rows(self, record: Rows) -> None:
        if record.table not in ("contacts", "conversations"):
            raise self._damaged(f"rows for table {record.table!r}")
        added = self._execute(record.table, record.rows)
        self._counts[record.table] += added

    def _add_message(self, record: MessageRecord) -> None:
        self._done += 1
        if self._expiry is not None:
            expires = record.row[self._expiry] if len(record.row) > self._expiry else None
            if isinstance(expires, int) and expires <= self._now:
                self._counts["messages_expired"] += 1
                return
        try:
            cursor = self._db.execute(self._insert["messages"], record.row)
        except dbapi2.Error as exc:
            raise self._damaged(f"a message does not fit the store: {exc}") from None
        if cursor.rowcount != 1:
            self._counts["messages_present"] += 1
            return  # kept as this profile has it, with its own edits and reactions
        self._counts["messages"] += 1
        rowid = cursor.lastrowid
        place_message(self._db, rowid)
        # The outbox is never archived: a message still queued at export was not sent.
        self._db.execute(
            "UPDATE messages SET state = 'failed', error = ? WHERE id = ? "
            "AND state IN ('queued', 'held')",
            (NOT_SENT_BEFORE_EXPORT, rowid),
        )
        for table in ("edits", "reactions"):
            rows = record.edits if table == "edits" else record.reactions
            self._counts[table] += self._execute(table, [[rowid, *row] for row in rows])

    def _execute(self, table: str, rows: list[list[Any]]) -> int:
        """Insert rows (existing ones are left alone); returns how many were added."""
        before = self._db.total_changes
        try:
            self._db.executemany(self._insert[table], rows)
        except dbapi2.Error as exc:
            raise self._damaged(f"{table} rows do not fit the store: {exc}") from None
        return int(self._db.total_changes - before)

    def _check_end(self, end: End) -> None:
        received = (
            self._counts["messages"]
            + self._counts["messages_present"]
            + self._counts["messages_expired"]
        )
        if (end.messages, end.files) != (received, self._counts["files_received"]):
            raise self._damaged("its end does not match what it holds")

    def _report(self, total: int, *, force: bool = False) -> None:
        if self._progress is not None and (force or self._done % PROGRESS_EVERY == 0):
            self._progress(min(self._done + self._counts["files_received"], total), total)

    def _damaged(self, detail: str) -> StorageError:
        return StorageError(f"{self._archive} is damaged: {detail}")


class _Staging:
    """Attachment files of an import, held apart until the rows are committed."""

    def __init__(self, attachments: Path) -> None:
        self._attachments = attachments
        self._folder: Path | None = None
        self._open: tuple[str, BinaryIO] | None = None
        self._staged: list[str] = []
        self._published: list[Path] = []
        self.new_files = 0
        self.present_files = 0

    def write(
        self, name: str, data: bytes, last: bool, damaged: Callable[[str], StorageError]
    ) -> bool:
        """Append a part to the file being received; True when the file is complete."""
        if self._open is None:
            if not BLOB_NAME.match(name) or name in self._staged:
                raise damaged(f"bad attachment name {name!r}")
            path = self._staging_folder() / name
            # Closed on the file's last part, or by remove().
            self._open = (name, create_private(path))
            self._staged.append(name)
        elif self._open[0] != name:
            raise damaged(f"attachment {self._open[0]!r} is cut short")
        file = self._open[1]
        file.write(data)
        if not last:
            return False
        flush_to_disk(file)
        file.close()
        self._open = None
        return True

    def publish(self) -> None:
        """Give each staged file its place in attachments/, unless one is there already."""
        if self._open is not None:
            raise StorageError(f"attachment {self._open[0]!r} is cut short in the archive")
        if self._folder is None:
            return
        for name in self._staged:
            if not place_new(self._folder / name, self._attachments / name):
                self.present_files += 1
                continue
            self._published.append(self._attachments / name)
            self.new_files += 1
        sync_folder(self._attachments)

    def unpublish(self) -> None:
        """Take back the files published for rows that were not committed."""
        for path in self._published:
            path.unlink(missing_ok=True)
        self._published = []

    def remove(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def _staging_folder(self) -> Path:
        if self._folder is None:
            self._attachments.mkdir(mode=0o700, exist_ok=True)
            self._folder = self._attachments / f".import-{secrets.token_hex(8)}"
            self._folder.mkdir(mode=0o700)
        return self._folder
