"""``FilesystemBlobStore``: ciphertext in files under ``DATA/blobs/``, metadata in ``DATA/blobs.db``.

Durability and deletion:

* Each blob is one file named by its id. An append writes at the offset the
  database records, then fsyncs the file, and only then records the new length
  (SQLite, WAL, ``synchronous=FULL``). After a crash the file may hold bytes past
  the recorded length; the next append truncates them, and a reader never sees them
  (a blob is readable only once its recorded length is its size).
* A deleted blob's row goes first (committed), then its file is unlinked. Files
  without a row, left by a crash between the two, are removed at start-up.
  Overwriting a file before unlinking it would not reliably reach the old blocks on
  journaling or copy-on-write filesystems and SSDs, so it is not done: the file only
  ever held ciphertext whose key the server never had.
* The metadata database uses ``secure_delete=ON`` and is checkpointed with
  ``wal_checkpoint(TRUNCATE)`` after each deletion, so deleted rows do not linger in
  the WAL either.

The database is used from one thread of its own; file reads and writes run in the
event loop's default executor, in pieces of at most :data:`READ_BYTES`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from obrolan.errors import InvalidState, RequestRefused, StorageError
from obrolan.protocol.codes import ErrorCode
from obrolan.server.address import DeviceAddress
from obrolan.server.blobs.base import BlobStore, NewBlob, OpenBlob
from obrolan.server.storage.integrity import BLOB_DATABASE, check_before_open, write_marker

__all__ = ["BLOBS_DATABASE_NAME", "BLOBS_DIR_NAME", "READ_BYTES", "FilesystemBlobStore"]

_logger = logging.getLogger(__name__)

T = TypeVar("T")

BLOBS_DIR_NAME = "blobs"
"""The folder of blob files inside the server's data directory."""
BLOBS_DATABASE_NAME = "blobs.db"
"""The blob store's SQLite file inside the server's data directory."""
READ_BYTES = 256 * 1024
"""Largest piece of a blob read into memory at once."""
_SCHEMA_VERSION = 1
_BUSY_TIMEOUT_MS = 2000
_SCHEMA = (
    """
    CREATE TABLE blobs (
        blob_id TEXT PRIMARY KEY,
        owner_user TEXT NOT NULL,
        owner_device TEXT NOT NULL,
        size INTEGER NOT NULL,
        received INTEGER NOT NULL DEFAULT 0,
        expires_at INTEGER NOT NULL,
        upload_deadline INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    "CREATE INDEX blobs_by_owner ON blobs (owner_user)",
    "CREATE INDEX blobs_by_expiry ON blobs (expires_at)",
    # A row per device that may still read the blob: fetching deletes the row.
    """
    CREATE TABLE blob_recipients (
        blob_id TEXT NOT NULL REFERENCES blobs (blob_id) ON DELETE CASCADE,
        username TEXT NOT NULL,
        device_id TEXT NOT NULL,
        PRIMARY KEY (blob_id, username, device_id)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX blob_recipients_by_device ON blob_recipients (username, device_id)",
)


def _day(seconds: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def _unknown_blob() -> RequestRefused:
    return RequestRefused(ErrorCode.UNKNOWN_BLOB, "no such blob for this device")


class _KeyedLocks:
    """One asyncio lock per key, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: collections.Counter[str] = collections.Counter()

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]


class _FileBlob(OpenBlob):
    """A complete blob file opened for reading."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self._file = file
        self.size = size

    async def chunks(self, offset: int) -> AsyncIterator[bytes]:
        await asyncio.to_thread(self._file.seek, offset)
        left = self.size - offset
        while left > 0:
            piece = await asyncio.to_thread(self._file.read, min(READ_BYTES, left))
            if not piece:
                raise StorageError("a blob file is shorter than its recorded size")
            left -= len(piece)
            yield piece

    async def close(self) -> None:
        await asyncio.to_thread(self._file.close)


def _open_for_append(path: Path, offset: int) -> BinaryIO:
    """The blob file positioned at ``offset``, with any unrecorded tail cut off."""
    file = open(path, "r+b")  # noqa: SIM115 - closed by the caller after the append
    file.truncate(offset)
    file.seek(offset)
    return file


def _write(file: BinaryIO, data: bytes) -> None:
    # Straight to the OS: the file's length then shows what the store has taken in.
    file.write(data)
    file.flush()


def _sync_and_close(file: BinaryIO) -> None:
    try:
        file.flush()
        os.fsync(file.fileno())
    finally:
        file.close()


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemBlobStore(BlobStore):
    """Blobs as files in ``data_dir/blobs/``, their metadata in ``data_dir/blobs.db``.

    Args:
        data_dir: the server's data directory.
        read_only: open the metadata only to read it (``obrolan admin``, beside a
            running server); nothing is created or cleaned up.
        new_database: make new metadata even where the folder's marker says it existed
            (see :mod:`obrolan.server.storage.integrity`).
    """

    def __init__(
        self, data_dir: Path, *, read_only: bool = False, new_database: bool = False
    ) -> None:
        self.folder = data_dir / BLOBS_DIR_NAME
        self.database = data_dir / BLOBS_DATABASE_NAME
        self._read_only = read_only
        self._new_database = new_database
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._locks = _KeyedLocks()

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="obrolan-blobs"
        )
        try:
            await self._run(self._connect)
        except BaseException:
            self._executor.shutdown()
            self._executor = None
            raise
        if not self._read_only:
            await self._run(self._remove_orphans)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        finally:
            executor.shutdown()

    def _connect(self) -> None:
        try:
            if self._read_only:
                uri = f"{self.database.resolve().as_uri()}?mode=ro"
                db = sqlite3.connect(uri, uri=True, isolation_level=None)
            else:
                # Before anything is made: new metadata would delete every blob file as
                # an orphan (DamagedDatabase says what to do instead).
                check_before_open(
                    self.database, new_database=self._new_database, role=BLOB_DATABASE
                )
                self.folder.mkdir(mode=0o700, exist_ok=True)
                db = sqlite3.connect(self.database, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            if not self._read_only:
                db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA secure_delete = ON")
            db.execute("PRAGMA foreign_keys = ON")
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open the blob store {self.database}: {exc}") from None
        if version > _SCHEMA_VERSION:
            db.close()
            raise StorageError(
                f"{self.database} has schema version {version}, newer than this obrolan "
                f"understands ({_SCHEMA_VERSION}); upgrade obrolan"
            )
        if version < _SCHEMA_VERSION and not self._read_only:
            with self._transaction(db):
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        if not self._read_only:
            write_marker(self.database)
        self._db = db

    def _disconnect(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        if not self._read_only:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()

    def _remove_orphans(self) -> None:
        held = {row[0] for row in self._conn().execute("SELECT blob_id FROM blobs")}
        for path in self.folder.iterdir():
            if path.name not in held:
                path.unlink(missing_ok=True)

    # --- helpers -----------------------------------------------------------------------

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function`` on the database's own thread."""
        if self._executor is None:
            raise InvalidState("the blob store is not open: call start() first")
        call = functools.partial(function, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db

    @staticmethod
    @contextlib.contextmanager
    def _transaction(db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _file(self, blob_id: str) -> Path:
        return self.folder / blob_id

    def _forget_files(self, blob_ids: list[str]) -> None:
        """Unlink deleted blobs' files and empty the WAL (runs after the commit)."""
        for blob_id in blob_ids:
            self._file(blob_id).unlink(missing_ok=True)
        if blob_ids:
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # --- uploads -----------------------------------------------------------------------

    async def create(self, blob: NewBlob, quota: int) -> tuple[bool, int]:
        created, expires_at = await self._run(self._create, blob, quota)
        if created:
            await asyncio.to_thread(_sync_folder, self.folder)
        return created, expires_at

    def _create(self, blob: NewBlob, quota: int) -> tuple[bool, int]:
        db = self._conn()
        owner = blob.owner
        with self._transaction(db):
            row = db.execute(
                "SELECT owner_user, owner_device, size, expires_at FROM blobs WHERE blob_id = ?",
                (blob.blob_id,),
            ).fetchone()
            if row is not None:
                if tuple(row[:3]) == (owner.username, owner.device_id, blob.size):
                    return False, int(row[3])
                raise RequestRefused(ErrorCode.BLOB_EXISTS, "another blob has this id")
            (used,) = db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM blobs WHERE owner_user = ?",
                (owner.username,),
            ).fetchone()
            if used + blob.size > quota:
                raise RequestRefused(
                    ErrorCode.QUOTA_EXCEEDED,
                    f"this account's blobs would take {used + blob.size} bytes, its quota is "
                    f"{quota}; they are deleted once fetched, or when they expire",
                )
            db.execute(
                "INSERT INTO blobs (blob_id, owner_user, owner_device, size, expires_at,"
                " upload_deadline) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    blob.blob_id,
                    owner.username,
                    owner.device_id,
                    blob.size,
                    blob.expires_at,
                    blob.upload_deadline,
                ),
            )
            db.executemany(
                "INSERT INTO blob_recipients (blob_id, username, device_id) VALUES (?, ?, ?)",
                [(blob.blob_id, r.username, r.device_id) for r in blob.recipients],
            )
            # Inside the transaction: a committed row always has its file.
            self._file(blob.blob_id).open("wb").close()
        return True, blob.expires_at

    def _owned(self, blob_id: str, owner: DeviceAddress) -> tuple[int, int]:
        row = (
            self._conn()
            .execute(
                "SELECT size, received FROM blobs"
                " WHERE blob_id = ? AND owner_user = ? AND owner_device = ?",
                (blob_id, owner.username, owner.device_id),
            )
            .fetchone()
        )
        if row is None:
            raise _unknown_blob()
        return int(row[0]), int(row[1])

    async def received(self, blob_id: str, owner: DeviceAddress) -> int:
        async with self._locks.hold(blob_id):
            return (await self._run(self._owned, blob_id, owner))[1]

    async def append(
        self, blob_id: str, owner: DeviceAddress, offset: int, data: AsyncIterable[bytes]
    ) -> int:
        async with self._locks.hold(blob_id):
            size, held = await self._run(self._owned, blob_id, owner)
            if offset != held:
                raise RequestRefused(
                    ErrorCode.OFFSET_MISMATCH,
                    f"the server holds {held} bytes of this blob; continue at offset {held}",
                )
            try:
                file = await asyncio.to_thread(_open_for_append, self._file(blob_id), held)
            except FileNotFoundError:
                raise _unknown_blob() from None  # deleted since the lookup above
            written = held
            overflow = False
            try:
                async for piece in data:
                    room = size - written
                    overflow = len(piece) > room
                    kept = piece[:room] if overflow else piece
                    if kept:
                        await asyncio.to_thread(_write, file, kept)
                        written += len(kept)
                    if overflow:
                        break
            finally:
                # Kept even when the body breaks off: the next attempt resumes after it.
                await asyncio.shield(self._keep(blob_id, file, held, written))
            if overflow:
                raise RequestRefused(
                    ErrorCode.BLOB_TOO_LARGE,
                    f"the upload goes past the blob's size of {size} bytes",
                )
            return written

    async def _keep(self, blob_id: str, file: BinaryIO, held: int, written: int) -> None:
        await asyncio.to_thread(_sync_and_close, file)
        if written > held:
            await self._run(self._record_received, blob_id, written)

    def _record_received(self, blob_id: str, written: int) -> None:
        self._conn().execute("UPDATE blobs SET received = ? WHERE blob_id = ?", (written, blob_id))

    # --- downloads ---------------------------------------------------------------------

    async def open(self, blob_id: str, reader: DeviceAddress) -> OpenBlob:
        size = await self._run(self._readable, blob_id, reader)
        try:
            file = await asyncio.to_thread(self._file(blob_id).open, "rb")
        except FileNotFoundError:
            raise _unknown_blob() from None  # deleted since the lookup above
        return _FileBlob(file, size)

    def _readable(self, blob_id: str, reader: DeviceAddress) -> int:
        row = (
            self._conn()
            .execute(
                "SELECT b.size FROM blobs b JOIN blob_recipients r USING (blob_id)"
                " WHERE b.blob_id = ? AND r.username = ? AND r.device_id = ?"
                " AND b.received = b.size",
                (blob_id, reader.username, reader.device_id),
            )
            .fetchone()
        )
        if row is None:
            raise _unknown_blob()
        return int(row[0])

    async def fetched(self, blob_id: str, reader: DeviceAddress) -> None:
        await self._run(self._fetched, blob_id, reader)

    def _fetched(self, blob_id: str, reader: DeviceAddress) -> None:
        db = self._conn()
        with self._transaction(db):
            gone = db.execute(
                "DELETE FROM blob_recipients WHERE blob_id = ? AND username = ? AND device_id = ?",
                (blob_id, reader.username, reader.device_id),
            ).rowcount
            left = db.execute(
                "SELECT 1 FROM blob_recipients WHERE blob_id = ? LIMIT 1", (blob_id,)
            ).fetchone()
            deleted = bool(gone) and left is None
            if deleted:
                db.execute("DELETE FROM blobs WHERE blob_id = ?", (blob_id,))
        if deleted:
            self._forget_files([blob_id])

    async def forget_devices(self, devices: list[DeviceAddress]) -> None:
        await self._run(self._forget_devices, devices)

    def _forget_devices(self, devices: list[DeviceAddress]) -> None:
        db = self._conn()
        with self._transaction(db):
            touched = {
                blob_id
                for device in devices
                for (blob_id,) in db.execute(
                    "DELETE FROM blob_recipients WHERE username = ? AND device_id = ?"
                    " RETURNING blob_id",
                    tuple(device),
                ).fetchall()
            }
            deleted = [
                blob_id
                for blob_id in sorted(touched)
                if db.execute(
                    "SELECT 1 FROM blob_recipients WHERE blob_id = ? LIMIT 1", (blob_id,)
                ).fetchone()
                is None
            ]
            db.executemany("DELETE FROM blobs WHERE blob_id = ?", [(b,) for b in deleted])
        self._forget_files(deleted)

    async def sweep_expired(self, now: int) -> int:
        return await self._run(self._sweep, now)

    def _sweep(self, now: int) -> int:
        db = self._conn()
        with self._transaction(db):
            expired = [
                row[0]
                for row in db.execute(
                    "SELECT blob_id FROM blobs WHERE expires_at <= ?"
                    " OR (received < size AND upload_deadline <= ?)",
                    (now, now),
                )
            ]
            db.executemany("DELETE FROM blobs WHERE blob_id = ?", [(b,) for b in expired])
        self._forget_files(expired)
        return len(expired)

    # --- operator ----------------------------------------------------------------------

    async def disclose(self, username: str) -> dict[str, Any]:
        return await self._run(self._disclose, username)

    def _disclose(self, username: str) -> dict[str, Any]:
        db = self._conn()
        uploaded = []
        for blob_id, device, size, received, expires_at in db.execute(
            "SELECT blob_id, owner_device, size, received, expires_at FROM blobs"
            " WHERE owner_user = ? ORDER BY blob_id",
            (username,),
        ).fetchall():
            waiting = db.execute(
                "SELECT username || '/' || device_id FROM blob_recipients WHERE blob_id = ?"
                " ORDER BY username, device_id",
                (blob_id,),
            ).fetchall()
            uploaded.append(
                {
                    "blob_id": blob_id,
                    "from_device": device,
                    "size": size,
                    "received": received,
                    "expires_day": _day(expires_at),
                    "waiting_for": [row[0] for row in waiting],
                }
            )
        addressed = [
            {
                "blob_id": blob_id,
                "to_device": device,
                "from_user": from_user,
                "from_device": from_device,
                "size": size,
                "expires_day": _day(expires_at),
            }
            for blob_id, device, from_user, from_device, size, expires_at in db.execute(
                "SELECT b.blob_id, r.device_id, b.owner_user, b.owner_device, b.size,"
                " b.expires_at FROM blob_recipients r JOIN blobs b USING (blob_id)"
                " WHERE r.username = ? ORDER BY b.blob_id, r.device_id",
                (username,),
            )
        ]
        return {"blobs_from_account": uploaded, "blobs_for_account": addressed}

    async def stats(self) -> dict[str, int]:
        return await self._run(self._stats)

    def _stats(self) -> dict[str, int]:
        count, held = (
            self._conn()
            .execute("SELECT COUNT(*), COALESCE(SUM(received), 0) FROM blobs")
            .fetchone()
        )
        return {"blobs": int(count), "blob_bytes": int(held)}
