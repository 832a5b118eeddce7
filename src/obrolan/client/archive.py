"""Encrypted archives of a profile's history: export to one file, import into a profile.

An archive holds history only: contacts (with their pinned identity keys),
conversation settings, messages (every column), the earlier texts of edited
messages, reactions, and the attachment files of the archived messages, byte
for byte (they are already encrypted at rest). It never holds the device's
identity, its Olm sessions, the outbox, the processed envelope ids or the
profile's meta: importing an archive can never clone a device. Neither export
nor import talks to the server.

::

    summary = export_history(vault, Path("history.obrolan"), "long passphrase", None)
    imported = import_history(other_vault, Path("history.obrolan"), "long passphrase")

File format, version 1 (integers big-endian)::

    "OBROLAN-ARCHIVE"   15 bytes, the magic
    version             1 byte (1)
    header length       2 bytes
    header              JSON {"kdf": Argon2id parameters with a fresh salt, "check": 16 bytes}
    chunk …             flags (1 byte, 1 = the final chunk), length (4 bytes), ciphertext

``master = Argon2id(passphrase, kdf)``; each chunk is AES-256-GCM under
``HKDF(master, "archive")`` with the chunk's index as its 96-bit nonce, and
binds SHA-256(magic … header), the index and the flags as associated data, so a
chunk that is altered, moved, dropped, or taken from another archive fails to
authenticate, and a file cut short lacks its final chunk. ``check`` is
``HKDF(master, "archive-check")``: a wrong passphrase is told apart from damage.
A chunk's plaintext is a run of records, each a 4-byte length and a msgpack
record: the manifest first, then contacts, conversations, messages (each with
its edits and reactions) and file parts, and ``end`` last in the final chunk.

Import is all or nothing: rows go into one transaction and files into a staging
folder, and both are committed only after the final chunk authenticated. Rows
keep nothing of the exporting store's row ids (edits and reactions follow their
message), and a message already present (same sender and message id) is kept as
it is, with its edits and reactions: importing the same archive twice changes
nothing. Messages whose disappearing timer ran out are neither exported nor
imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlcipher3 import dbapi2

from obrolan import __version__
from obrolan.client.store import SCHEMA_VERSION, Store, now_ms, place_message
from obrolan.client.vault import Vault
from obrolan.crypto.keys import Argon2Params, derive_key, subkey
from obrolan.errors import ConfigError, CryptoError, DecryptionError, InvalidState, StorageError
from obrolan.protocol.decoding import DECODE_ERRORS

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "ExportSummary",
    "ImportSummary",
    "Progress",
    "export_history",
    "import_history",
]

NOT_SENT_BEFORE_EXPORT = "not sent before the history was exported; send it again"
"""What a message queued in the exporting profile becomes in the importing one."""

MAGIC = b"OBROLAN-ARCHIVE"
FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20
"""Plaintext gathered before a chunk is sealed: memory stays flat at any history size."""
MAX_CHUNK_BYTES = 64 << 20
"""Largest chunk a reader accepts (a damaged length must not make it allocate gigabytes)."""
FILE_PART_BYTES = 256 << 10
"""Attachment files travel in parts of at most this size."""
ROW_BATCH = 1000
"""Contacts or conversations per record."""
PROGRESS_EVERY = 1000
"""Items (messages or files) between two progress reports."""

Progress = Callable[[int, int], None]
"""Called with (items done, items in all), items being messages and attachment files."""

_FINAL = 1
_HEADER_MAX = 4096
_CHECK_BYTES = 16
_LENGTH_BYTES = 4
_ATTACHMENTS = "attachments"
_BLOB_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_CONVERSATION_SETTINGS = ("peer", "accepted", "blocked", "timer_seconds")
"""What an archive keeps of a conversation; its counters belong to this device's sessions."""
_TABLES = ("contacts", "conversations", "messages", "edits", "reactions")
_NOT_EXPIRED = "(expires_at_ms IS NULL OR expires_at_ms > :now)"


class _Header(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kdf: Argon2Params
    check: Annotated[bytes, msgspec.Meta(min_length=_CHECK_BYTES, max_length=_CHECK_BYTES)]


class _Manifest(msgspec.Struct, frozen=True, tag="manifest", array_like=True):
    owner: str | None
    """The username of the exporting profile."""
    exported_at_ms: int
    schema_version: int
    software: str
    messages: int
    files: int
    columns: dict[str, list[str]]
    """Each table's archived columns, in the order the rows give them."""


class _Rows(msgspec.Struct, frozen=True, tag="rows", array_like=True):
    table: str
    rows: list[list[Any]]


class _Message(msgspec.Struct, frozen=True, tag="message", array_like=True):
    row: list[Any]
    edits: list[list[Any]]
    reactions: list[list[Any]]


class _FilePart(msgspec.Struct, frozen=True, tag="file", array_like=True):
    name: str
    data: bytes
    last: bool


class _End(msgspec.Struct, frozen=True, tag="end", array_like=True):
    messages: int
    files: int


_Record = _Manifest | _Rows | _Message | _FilePart | _End
_encode = msgspec.msgpack.Encoder().encode
_record_decoder: msgspec.msgpack.Decoder[_Record] = msgspec.msgpack.Decoder(_Record)


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


# --- export -------------------------------------------------------------------------------


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
    kdf = Argon2Params.new()
    master = derive_key(passphrase, kdf)
    header = _header_bytes(_Header(kdf=kdf, check=_check_value(master)))
    temporary = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot write {out}: {exc.strerror}") from None
    try:
        with open(fd, "wb") as file:
            file.write(header)
            writer = _ChunkWriter(file, subkey(master, "archive"), hashlib.sha256(header).digest())
            counts = _write_history(vault, writer, owner, progress)
            file.flush()
            os.fsync(file.fileno())
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
    vault: Vault, writer: _ChunkWriter, owner: str | None, progress: Progress | None
) -> dict[str, int]:
    """Stream every record into ``writer`` from one read snapshot; returns the counts."""
    db = vault.connection
    now = {"now": now_ms()}
    db.execute("BEGIN")  # deferred: a read snapshot that blocks no writer
    try:
        columns = {
            "contacts": _columns(db, "contacts"),
            "conversations": [
                c for c in _columns(db, "conversations") if c in _CONVERSATION_SETTINGS
            ],
            # A position is a row id of this profile: the importing one places each message
            # again, in the same arrival order (client/ordering.py).
            "messages": [c for c in _columns(db, "messages", skip="id") if c != "position"],
            "edits": _columns(db, "edits", skip="message_rowid"),
            "reactions": _columns(db, "reactions", skip="message_rowid"),
        }
        (message_total,) = db.execute(
            f"SELECT count(*) FROM messages WHERE {_NOT_EXPIRED}", now
        ).fetchone()
        files = _attachment_files(vault, now)
        total = message_total + len(files)
        writer.add(
            _Manifest(
                owner=owner, exported_at_ms=now["now"], schema_version=SCHEMA_VERSION,
                software=f"obrolan {__version__}", messages=message_total, files=len(files),
                columns=columns,
            )
        )
        counts = {"contacts": 0, "conversations": 0, "edits": 0, "reactions": 0}
        for table in ("contacts", "conversations"):
            cursor = db.execute(f"SELECT {_names(columns[table])} FROM {table} ORDER BY 1")
            while rows := cursor.fetchmany(ROW_BATCH):
                writer.add(_Rows(table=table, rows=[list(r) for r in rows]))
                counts[table] += len(rows)
        if progress is not None:
            progress(0, total)
        messages = db.execute(
            f"SELECT id, {_names(columns['messages'])} FROM messages WHERE {_NOT_EXPIRED} "
            "ORDER BY id",
            now,
        )
        edits = _ByMessage(db.execute(
            f"SELECT message_rowid, {_names(columns['edits'])} FROM edits "
            "ORDER BY message_rowid, rowid"
        ))
        reactions = _ByMessage(db.execute(
            f"SELECT message_rowid, {_names(columns['reactions'])} FROM reactions "
            "ORDER BY message_rowid, reactor"
        ))
        done = 0
        for rowid, *row in messages:
            message = _Message(row=row, edits=edits.take(rowid), reactions=reactions.take(rowid))
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
    writer.add(_End(messages=message_total, files=files_written))
    writer.close()
    if progress is not None:
        progress(total, total)
    return {"messages": message_total, "files": files_written, **counts}


def _attachment_files(vault: Vault, now: dict[str, int]) -> list[Path]:
    """The files of the archived messages that this device holds, by blob id."""
    folder = vault.path / _ATTACHMENTS
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
        if isinstance(name, str) and _BLOB_NAME.match(name) and (folder / name).is_file():
            names.add(name)
    return [folder / name for name in sorted(names)]


def _write_file(writer: _ChunkWriter, path: Path) -> bool:
    """Add one attachment file in parts; False if it vanished meanwhile (it expired)."""
    try:
        with path.open("rb") as file:
            part = file.read(FILE_PART_BYTES)
            while True:
                following = file.read(FILE_PART_BYTES)
                writer.add(_FilePart(name=path.name, data=part, last=not following))
                if not following:
                    return True
                part = following
    except FileNotFoundError:
        return False


def _publish(temporary: Path, out: Path, overwrite: bool) -> None:
    """Give the finished archive its name: replacing ``out`` only if allowed."""
    if overwrite:
        os.replace(temporary, out)
    elif not _place(temporary, out):
        raise ConfigError(f"{out} already exists; choose another file")
    _sync_folder(out.parent)


class _ChunkWriter:
    """Gathers records into chunks of about CHUNK_BYTES and seals each with AES-256-GCM."""

    def __init__(self, file: BinaryIO, key: bytes, header_digest: bytes) -> None:
        self._file = file
        self._aead = AESGCM(key)
        self._digest = header_digest
        self._index = 0
        self._pending: list[bytes] = []
        self._size = 0

    def add(self, record: _Record) -> None:
        encoded = _encode(record)
        self._pending += (len(encoded).to_bytes(_LENGTH_BYTES, "big"), encoded)
        self._size += _LENGTH_BYTES + len(encoded)
        if self._size >= CHUNK_BYTES:
            self._seal(final=False)

    def close(self) -> None:
        """Seal what is left as the final chunk (the last record must be ``end``)."""
        self._seal(final=True)

    def _seal(self, *, final: bool) -> None:
        flags = _FINAL if final else 0
        sealed = self._aead.encrypt(
            _nonce(self._index), b"".join(self._pending), _aad(self._digest, self._index, flags)
        )
        self._file.write(bytes([flags]) + len(sealed).to_bytes(_LENGTH_BYTES, "big"))
        self._file.write(sealed)
        self._index += 1
        self._pending = []
        self._size = 0


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


# --- import -------------------------------------------------------------------------------


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
    staging = _Staging(vault.path / _ATTACHMENTS)
    try:
        with file:
            records = _read_archive(file, archive, passphrase)
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
            ("messages", "messages_present", "messages_expired", "edits", "reactions",
             "contacts", "conversations", "files_received"), 0
        )
        self._done = 0

    def run(self, records: Iterator[_Record]) -> ImportSummary:
        manifest = next(records)
        assert isinstance(manifest, _Manifest)  # the reader checks the order
        self._prepare(manifest)
        total = manifest.messages + manifest.files
        self._report(total, force=True)
        for record in records:
            if isinstance(record, _Rows):
                self._add_rows(record)
            elif isinstance(record, _Message):
                self._add_message(record)
                self._report(total)
            elif isinstance(record, _FilePart):
                if self._staging.write(record.name, record.data, record.last, self._damaged):
                    self._counts["files_received"] += 1
                    self._report(total, force=True)
            elif isinstance(record, _End):
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

    def _prepare(self, manifest: _Manifest) -> None:
        """Check the archive's tables against this store and build the statements."""
        newer = StorageError(
            f"{self._archive} comes from a newer obrolan (store schema "
            f"{manifest.schema_version}, this one reads {SCHEMA_VERSION}): update obrolan"
        )
        if manifest.schema_version > SCHEMA_VERSION or set(manifest.columns) != set(_TABLES):
            raise newer
        for table, names in manifest.columns.items():
            if not set(names) <= set(_columns(self._db, table)):
                raise newer
        columns = manifest.columns
        self._insert = {
            table: f"INSERT OR IGNORE INTO {table} ({_names(columns[table])}) "
                   f"VALUES ({', '.join('?' * len(columns[table]))})"
            for table in ("contacts", "conversations", "messages")
        }
        for table in ("edits", "reactions"):
            names = ["message_rowid", *columns[table]]
            self._insert[table] = (
                f"INSERT OR IGNORE INTO {table} ({_names(names)}) "
                f"VALUES ({', '.join('?' * len(names))})"
            )
        self._expiry = (
            columns["messages"].index("expires_at_ms")
            if "expires_at_ms" in columns["messages"] else None
        )

    def _add_rows(self, record: _Rows) -> None:
        if record.table not in ("contacts", "conversations"):
            raise self._damaged(f"rows for table {record.table!r}")
        added = self._execute(record.table, record.rows)
        self._counts[record.table] += added

    def _add_message(self, record: _Message) -> None:
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
            "UPDATE messages SET state = 'failed', error = ? WHERE id = ? AND state = 'queued'",
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

    def _check_end(self, end: _End) -> None:
        received = self._counts["messages"] + self._counts["messages_present"] + self._counts[
            "messages_expired"
        ]
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
            if not _BLOB_NAME.match(name) or name in self._staged:
                raise damaged(f"bad attachment name {name!r}")
            path = self._staging_folder() / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            # Closed on the file's last part, or by remove().
            self._open = (name, open(fd, "wb"))  # noqa: SIM115
            self._staged.append(name)
        elif self._open[0] != name:
            raise damaged(f"attachment {self._open[0]!r} is cut short")
        file = self._open[1]
        file.write(data)
        if not last:
            return False
        file.flush()
        os.fsync(file.fileno())
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
            if not _place(self._folder / name, self._attachments / name):
                self.present_files += 1
                continue
            self._published.append(self._attachments / name)
            self.new_files += 1
        _sync_folder(self._attachments)

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


def _read_archive(file: BinaryIO, path: Path, passphrase: str) -> Iterator[_Record]:
    """Check the header and passphrase, then yield the records of each authenticated chunk.

    The first record is the manifest, the last one ``end``, in the final chunk,
    followed by nothing; anything else raises.

    Raises:
        StorageError: not an archive, an unknown format, or a damaged header or record.
        DecryptionError: wrong passphrase, or a chunk is altered, missing or cut short.
    """
    magic = file.read(len(MAGIC) + 3)
    if len(magic) < len(MAGIC) + 3 or not magic.startswith(MAGIC):
        raise StorageError(f"{path} is not an obrolan archive")
    if magic[len(MAGIC)] != FORMAT_VERSION:
        raise StorageError(
            f"{path} is an obrolan archive of format {magic[len(MAGIC)]}; this obrolan reads "
            f"format {FORMAT_VERSION}: update obrolan"
        )
    length = int.from_bytes(magic[-2:], "big")
    body = file.read(length)
    if length > _HEADER_MAX or len(body) < length:
        raise StorageError(f"{path} is damaged: its header is cut short or too long")
    try:
        header = msgspec.json.decode(body, type=_Header)
    except DECODE_ERRORS as exc:  # a header that is not UTF-8 too: an archive is foreign bytes
        raise StorageError(f"{path} is damaged: its header is invalid ({exc})") from None
    try:
        master = derive_key(passphrase, header.kdf)
    except CryptoError:
        raise StorageError(f"{path} is damaged: its key parameters are invalid") from None
    if not secrets.compare_digest(_check_value(master), header.check):
        raise DecryptionError(
            f"wrong passphrase for the archive {path} (or its header was altered)"
        )
    return _records(file, path, AESGCM(subkey(master, "archive")),
                    hashlib.sha256(magic + body).digest())


def _records(file: BinaryIO, path: Path, aead: AESGCM, digest: bytes) -> Iterator[_Record]:
    index = 0
    while True:
        frame = file.read(1 + _LENGTH_BYTES)
        if len(frame) < 1 + _LENGTH_BYTES:
            raise DecryptionError(f"{path} is truncated: it ends before its final part")
        flags, length = frame[0], int.from_bytes(frame[1:], "big")
        if flags not in (0, _FINAL) or length > MAX_CHUNK_BYTES:
            raise DecryptionError(f"{path} is damaged or was altered at part {index}")
        sealed = file.read(length)
        if len(sealed) < length:
            raise DecryptionError(f"{path} is truncated: it ends inside part {index}")
        try:
            plain = aead.decrypt(_nonce(index), sealed, _aad(digest, index, flags))
        except InvalidTag:
            raise DecryptionError(
                f"{path} is damaged or was altered: part {index} does not authenticate"
            ) from None
        records = _parse_chunk(plain, path)
        final = flags == _FINAL
        for position, record in enumerate(records):
            first = index == 0 and position == 0
            last = final and position == len(records) - 1
            if isinstance(record, _Manifest) != first or isinstance(record, _End) != last:
                raise StorageError(f"{path} is damaged: its records are out of order")
            yield record
        if final:
            if file.read(1):
                raise DecryptionError(f"{path} has data after its end: it was altered")
            return
        index += 1


def _parse_chunk(plain: bytes, path: Path) -> list[_Record]:
    records = []
    view = memoryview(plain)
    offset = 0
    try:
        while offset < len(view):
            length = int.from_bytes(view[offset : offset + _LENGTH_BYTES], "big")
            start = offset + _LENGTH_BYTES
            if start + length > len(view):
                raise StorageError(f"{path} is damaged: a record is cut short")
            records.append(_record_decoder.decode(view[start : start + length]))
            offset = start + length
    except DECODE_ERRORS as exc:
        raise StorageError(f"{path} is damaged: {exc}") from None
    if not records:
        raise StorageError(f"{path} is damaged: a part holds no records")
    return records


# --- shared -------------------------------------------------------------------------------


def _header_bytes(header: _Header) -> bytes:
    body = msgspec.json.encode(header)
    return MAGIC + bytes([FORMAT_VERSION]) + len(body).to_bytes(2, "big") + body


def _check_value(master: bytes) -> bytes:
    return subkey(master, "archive-check")[:_CHECK_BYTES]


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(digest: bytes, index: int, flags: int) -> bytes:
    return digest + index.to_bytes(8, "big") + bytes([flags])


def _place(source: Path, target: Path) -> bool:
    """Give ``source`` the name ``target`` unless that exists; False if it does."""
    try:
        os.link(source, target)  # atomic: fails if ``target`` appeared meanwhile
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links (FAT on a USB stick)
        if target.exists():
            return False
        os.rename(source, target)
    return True


def _sync_folder(folder: Path) -> None:
    """Make the names just written in ``folder`` durable."""
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _columns(db: dbapi2.Connection, table: str, *, skip: str | None = None) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})") if row[1] != skip]


def _names(columns: list[str]) -> str:
    return ", ".join(f'"{name}"' for name in columns)
