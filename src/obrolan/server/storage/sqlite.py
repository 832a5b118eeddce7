"""``SqliteStorage``: the embedded default backend, one SQLite file in the data directory.

Durability and deletion:

* WAL with ``synchronous=FULL``: a commit is on disk when it returns.
* Writes are committed in groups (:class:`_Writer`): the operations queued while the
  previous commit was on its way run in one transaction on the event loop's thread,
  then a helper thread runs the ``COMMIT`` (one fsync for the group) and the callers'
  futures resolve together. So "answer only after the durable write" costs one fsync
  per group, not per request, and no hand-off between threads per statement.
  Directory operations run in a savepoint each, so that one refused request leaves the
  others intact; mailbox writes decide every refusal before they write and need none.
* Acks' deletes have no future: they wait for the next commit, at most
  :data:`LAZY_COMMIT_SECONDS` later (a crash before it only means a redelivery, which
  clients drop by envelope id).
* ``secure_delete=ON`` zeroes deleted rows in the pages; once the writer has had no
  write for :data:`IDLE_CHECKPOINT_SECONDS` (or at the latest
  :data:`MAX_CHECKPOINT_DELAY_SECONDS` after a write) it runs
  ``wal_checkpoint(TRUNCATE)``, so no deleted ciphertext stays in the WAL either.

The writer keeps what the mailbox needs per message in memory instead of reading it
back: device row ids, each device's queue length and newest ``seq``, and the next
``seq`` (see :class:`_WriterDb`).

A ``send`` envelope's ciphertext sits in its mailbox row, as before multi-recipient
envelopes: the 1:1 path reads and deletes one row. A ``send_multi`` ciphertext is
stored once in ``ciphertexts``; each recipient's mailbox row points to it
(``ciphertext_id``, its own ``ciphertext`` NULL), and a trigger deletes it with the
last row that points to it, whatever deleted that row (ack, expiry, device removal).

Reads run on the event loop's thread over a second connection: they are short
indexed lookups, and in WAL mode a reader never waits for the writer's commit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import msgspec

from obrolan.errors import InvalidState, RequestRefused, StorageError, UnknownContact
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import (
    ClaimedDevice,
    DeviceKeys,
    Envelope,
    KeySuccession,
    MultiEnvelope,
    OneTimeKey,
    OutboundEnvelope,
    Recipient,
    SignedDeviceList,
)
from obrolan.server.address import DeviceAddress
from obrolan.server.storage.base import (
    NOT_HELD,
    Account,
    AccountDevices,
    PendingEnvelope,
    PublishedList,
    RecoveryKey,
    Storage,
    StoredEnvelopes,
    StoreResult,
)
from obrolan.server.storage.integrity import check_before_open, write_marker
from obrolan.server.storage.sqlite_schema import SCHEMA_VERSION, migrate, open_db
from obrolan.server.storage.stored_rows import mailbox_rows, stored_envelope

__all__ = [
    "IDLE_CHECKPOINT_SECONDS",
    "LAZY_COMMIT_SECONDS",
    "MAX_CHECKPOINT_DELAY_SECONDS",
    "SCHEMA_VERSION",
    "SqliteStorage",
]

_logger = logging.getLogger(__name__)

T = TypeVar("T")
_Op = Callable[["_WriterDb"], Any]

IDLE_CHECKPOINT_SECONDS = 0.5
"""How long the writer waits without writes before it truncates the WAL."""
MAX_CHECKPOINT_DELAY_SECONDS = 5.0
"""Under steady writes, the WAL is truncated at least this often."""
LAZY_COMMIT_SECONDS = 0.02
"""Acks' deletes wait at most this long for a commit they can share."""
_MAX_GROUP = 512
"""Most operations committed in one transaction."""

# --- the writer -------------------------------------------------------------------------


_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]
"""A caller's future, and the result or exception to resolve it with."""


class _Job(NamedTuple):
    """A durable operation, its caller's future, and whether it runs in a savepoint."""

    op: _Op
    future: asyncio.Future[Any]
    savepoint: bool


class _BlockingThread:
    """The thread that runs what blocks on the disk, a commit's fsync or a checkpoint, while
    the event loop goes on; each result comes back to the loop as one callback."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[
            tuple[Callable[[], Any], Callable[[Any, BaseException | None], None]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="obrolan-sqlite-fsync", daemon=True)
        self._thread.start()

    def call(
        self, work: Callable[[], T], then: Callable[[T | None, BaseException | None], None]
    ) -> None:
        """Run ``work()`` on the thread, then ``then(result, exception)`` on the loop."""
        self._queue.put((work, then))

    async def stop(self) -> None:
        """End the thread after the work already queued."""
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            work, then = item
            try:
                result, failure = work(), None
            except BaseException as exc:  # noqa: BLE001 - handed to the loop
                result, failure = None, exc
            self._loop.call_soon_threadsafe(then, result, failure)


class _Writer:
    """Every write, committed in groups.

    The statements run on the event loop's thread: they touch pages in memory and take
    microseconds, and there they cost no hand-off between threads per statement. Only
    the ``COMMIT`` (its fsync) and the WAL checkpoint run on :class:`_BlockingThread`;
    while one is in flight, new operations gather for the next group. So "answer only
    after the durable write" costs one fsync per group, and one trip to the thread and
    back, not per request.
    """

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self._path = path
        self._loop = loop
        self._db: _WriterDb | None = None
        self._thread: _BlockingThread | None = None
        self._jobs: list[_Job] = []
        self._lazy: list[_Op] = []
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._lazy_due = False
        self._scheduled = False  # a _dispatch is queued on the loop
        self._busy = False  # the connection is in the thread's hands
        self._idle: asyncio.Future[None] | None = None  # resolved when it is back
        self._checkpoint = _CheckpointSchedule()
        self._checkpoint_timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self._committed_changes = 0

    async def start(self) -> None:
        """Open and migrate the database (off the loop), start the thread."""
        self._db = await asyncio.to_thread(self._open)
        self._thread = _BlockingThread(self._loop)

    def _open(self) -> _WriterDb:
        try:
            conn = open_db(self._path, read_only=False, shared=True)
            migrate(conn, self._path)
            return _WriterDb(conn)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot set up the server database {self._path}: {exc}") from None

    def submit(self, op: _Op, *, savepoint: bool = False) -> asyncio.Future[Any]:
        """Queue ``op(db)``; its future resolves after the commit that contains it.

        With ``savepoint`` an exception from ``op`` undoes only its own writes. Without,
        ``op`` must raise :class:`RequestRefused` only before its first write; any other
        exception rolls back the whole group and fails every future in it.

        Raises:
            InvalidState: the writer is stopped.
        """
        if self._stopped:
            raise InvalidState("the storage is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.append(_Job(op, future, savepoint))
        self._schedule()
        return future

    def submit_lazy(self, op: _Op) -> None:
        """Queue ``op(db)`` to run and commit with the next group, within
        :data:`LAZY_COMMIT_SECONDS`. Nobody waits for it and a crash before that commit
        loses it: only for writes that may be repeated, like deletes. ``op`` must not raise.

        Raises:
            InvalidState: the writer is stopped.
        """
        if self._stopped:
            raise InvalidState("the storage is closed")
        self._lazy.append(op)
        if self._lazy_timer is None:
            self._lazy_timer = self._loop.call_later(LAZY_COMMIT_SECONDS, self._lazy_expired)

    async def stop(self) -> None:
        """Commit everything queued, checkpoint, close the connection, end the thread."""
        if self._stopped or self._db is None or self._thread is None:
            return
        self._stopped = True
        self._lazy_due = True
        while self._busy or self._jobs or self._lazy:
            if self._busy:
                self._idle = self._loop.create_future()
                await self._idle
            else:
                self._dispatch()
        for timer in (self._lazy_timer, self._checkpoint_timer):
            if timer is not None:
                timer.cancel()
        db, thread, self._db, self._thread = self._db, self._thread, None, None
        await asyncio.to_thread(_checkpoint, db.conn)
        db.conn.close()
        await thread.stop()

    # --- scheduling (all on the loop)

    def _lazy_expired(self) -> None:
        self._lazy_timer = None
        self._lazy_due = True
        self._schedule()

    def _schedule(self) -> None:
        """Dispatch soon: operations submitted in this turn of the loop join the group."""
        if not self._scheduled and not self._busy:
            self._scheduled = True
            self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Start a due checkpoint, or else the next group, unless the thread is busy."""
        self._scheduled = False
        if self._busy or self._db is None or self._thread is None:
            return  # the thread's answer dispatches again; or the writer is closed
        if self._checkpoint.seconds_left() == 0.0:
            self._busy = True
            self._thread.call(partial(_checkpoint, self._db.conn), self._checkpointed)
        elif self._jobs or (self._lazy and self._lazy_due):
            self._start_group(self._db, self._thread)

    def _start_group(self, db: _WriterDb, thread: _BlockingThread) -> None:
        """Run the queued operations in one transaction and hand its commit to the thread."""
        jobs, self._jobs = self._jobs[:_MAX_GROUP], self._jobs[_MAX_GROUP:]
        lazy, self._lazy = self._lazy, []
        self._lazy_due = False
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        try:
            db.ensure_loaded()
            db.conn.execute("BEGIN IMMEDIATE")
            for op in lazy:
                op(db)
            outcomes = [_apply(db, job) for job in jobs]
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error, or an op that broke its contract
            self._abort(db, exc, [job.future for job in jobs])
            self._schedule_more()
            return
        self._busy = True
        thread.call(partial(db.conn.execute, "COMMIT"), partial(self._committed, outcomes))

    def _committed(
        self, outcomes: list[_Outcome], _: object, failure: BaseException | None
    ) -> None:
        """The thread has run COMMIT: resolve the group's futures."""
        assert self._db is not None
        self._returned()
        if failure is not None:
            self._abort(self._db, failure, [future for future, _, _ in outcomes])
        else:
            if self._db.conn.total_changes != self._committed_changes:
                self._committed_changes = self._db.conn.total_changes
                self._checkpoint.wrote()
                self._arm_checkpoint()
            _settle(outcomes)
        self._schedule_more()

    def _checkpointed(self, complete: bool | None, failure: BaseException | None) -> None:
        self._returned()
        if failure is not None:
            _logger.error("WAL checkpoint failed", exc_info=failure)
        self._checkpoint.done(bool(complete) or failure is not None)
        self._arm_checkpoint()
        self._schedule_more()

    def _returned(self) -> None:
        self._busy = False
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _schedule_more(self) -> None:
        if self._jobs or (self._lazy and self._lazy_due):
            self._schedule()

    def _arm_checkpoint(self) -> None:
        """Make sure a timer wakes the writer when a checkpoint may be due. Each write moves
        the idle deadline; rather than move the timer on every commit, one that fires
        early sets itself again."""
        if self._checkpoint_timer is None and not self._stopped:
            left = self._checkpoint.seconds_left()
            if left is not None:
                self._checkpoint_timer = self._loop.call_later(left, self._checkpoint_expired)

    def _checkpoint_expired(self) -> None:
        self._checkpoint_timer = None
        if self._checkpoint.seconds_left() != 0.0:
            self._arm_checkpoint()
        elif not self._scheduled and not self._busy:
            self._scheduled = True
            self._loop.call_soon(self._dispatch)

    def _abort(self, db: _WriterDb, exc: BaseException, futures: list[asyncio.Future[Any]]) -> None:
        """Roll the transaction back and fail the futures still waiting on it."""
        if isinstance(exc, sqlite3.Error):
            _logger.error("database write failed, %d requests refused: %s", len(futures), exc)
        else:
            _logger.error("database write failed, %d requests refused", len(futures), exc_info=exc)
        if db.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                db.conn.execute("ROLLBACK")
        db.forget()  # the rolled-back writes had changed the in-memory view
        failure = StorageError(f"database write failed: {exc}")
        _settle([(future, None, failure) for future in futures])


def _apply(db: _WriterDb, job: _Job) -> _Outcome:
    """Run one durable operation in the open transaction."""
    if not job.savepoint:
        try:
            return job.future, job.op(db), None
        except RequestRefused as exc:  # decided before the op wrote anything
            return job.future, None, exc
    db.conn.execute("SAVEPOINT op")
    try:
        result = job.op(db)
    except Exception as exc:  # noqa: BLE001 - handed to the caller's future
        db.conn.execute("ROLLBACK TO op")
        db.conn.execute("RELEASE op")
        return job.future, None, exc
    db.conn.execute("RELEASE op")
    return job.future, result, None


def _settle(outcomes: list[_Outcome]) -> None:
    """Resolve the futures of one group."""
    for future, result, exc in outcomes:
        if future.cancelled():
            continue
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


class _CheckpointSchedule:
    """When the writer should truncate the WAL: once idle after a write, or at the latest
    :data:`MAX_CHECKPOINT_DELAY_SECONDS` after the first write since the last checkpoint,
    so a steady stream of requests cannot keep deleted ciphertext in the WAL."""

    def __init__(self) -> None:
        self._first_write: float | None = None
        self._last_write = 0.0

    def wrote(self) -> None:
        """A committed group changed the database."""
        self._last_write = time.monotonic()
        if self._first_write is None:
            self._first_write = self._last_write

    def seconds_left(self) -> float | None:
        """Seconds until the checkpoint is due (0.0: now), or None if nothing was written."""
        if self._first_write is None:
            return None
        due = min(
            self._last_write + IDLE_CHECKPOINT_SECONDS,
            self._first_write + MAX_CHECKPOINT_DELAY_SECONDS,
        )
        return max(0.0, due - time.monotonic())

    def done(self, complete: bool) -> None:
        """The checkpoint ran; if a reader held it up, try again after another idle period."""
        self._first_write = None
        if not complete:
            self.wrote()


def _checkpoint(conn: sqlite3.Connection) -> bool:
    """Copy the WAL into the database and truncate it; False if a reader held it up."""
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error as exc:
        _logger.error("WAL checkpoint failed: %s", exc)
        return True
    return bool(busy == 0)


# --- the writer's connection and its view of the mailbox --------------------------------

_INSERT_ENVELOPE = (
    "INSERT OR IGNORE INTO mailbox"
    " (seq, device, envelope_id, from_user, from_device, ciphertext, expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SHARED_ENTRY = (
    "INSERT OR IGNORE INTO mailbox"
    " (seq, device, envelope_id, from_user, from_device, ciphertext_id, expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class _WriterDb:
    """The writer's connection, and what it keeps in memory so that a message
    costs one insert and one delete, not reads and counter updates besides.

    * Device row ids by address: a device keeps its row for its whole life, so an entry
      never changes; a miss reads the table. A device removed from its account's list
      loses its row (and its queue, by cascade) in a directory operation of this writer,
      which drops its entries here at once (:meth:`forget_devices`).
    * Each device's queue length, for the ``queue_full`` check without counting rows.
    * Each device's newest ``seq`` and the next ``seq`` to give: the writer numbers
      envelopes itself, so a send knows their order without reading it back.

    The counts are taken once at start (one ``GROUP BY``) and kept in step by every
    mailbox write; a rolled-back transaction makes them be counted again.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._rowids: dict[DeviceAddress, int] = {}
        self._queued: dict[int, int] = {}
        self._newest: dict[int, int] = {}
        self._next_seq = 1
        self._loaded = False
        self.ensure_loaded()

    def forget(self) -> None:
        """Drop the in-memory view; the next group counts again."""
        self._rowids.clear()
        self._loaded = False

    def ensure_loaded(self) -> None:
        """Count queue lengths and newest seqs from the table, if not done since the last
        :meth:`forget`."""
        if self._loaded:
            return
        queued: dict[int, int] = {}
        newest: dict[int, int] = {}
        for device, count, seq in self.conn.execute(
            "SELECT device, COUNT(*), MAX(seq) FROM mailbox GROUP BY device"
        ):
            queued[device] = count
            newest[device] = seq
        # AUTOINCREMENT's high-water mark: a seq is never given twice, even after deletes.
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'mailbox'").fetchone()
        self._queued, self._newest = queued, newest
        self._next_seq = max(row[0] if row else 0, *newest.values(), 0) + 1
        self._loaded = True

    def find_rowid(self, device: DeviceAddress) -> int | None:
        """The device's row id, None if the account or the device does not exist."""
        rowid = self._rowids.get(device)
        if rowid is not None:
            return rowid
        row = self.conn.execute(
            "SELECT id FROM devices WHERE username = ? AND device_id = ?", device
        ).fetchone()
        if row is None:
            return None
        self._rowids[device] = rowid = int(row[0])
        return rowid

    def device_rowid(self, device: DeviceAddress) -> int:
        """The device's row id.

        Raises:
            RequestRefused: ``unknown_user`` or ``unknown_device``.
        """
        rowid = self.find_rowid(device)
        if rowid is not None:
            return rowid
        if self.conn.execute(
            "SELECT 1 FROM accounts WHERE username = ?", (device.username,)
        ).fetchone():
            raise RequestRefused(
                ErrorCode.UNKNOWN_DEVICE, f"user {device.username} has no device {device.device_id}"
            )
        raise RequestRefused(ErrorCode.UNKNOWN_USER, f"no user {device.username}")

    def forget_devices(self, rows: list[tuple[DeviceAddress, int]]) -> None:
        """Drop what is kept in memory about devices whose rows were just deleted."""
        for device, rowid in rows:
            self._rowids.pop(device, None)
            self._queued.pop(rowid, None)
            self._newest.pop(rowid, None)

    def store(
        self,
        sender: DeviceAddress,
        envelopes: list[OutboundEnvelope],
        expires_at: int,
        max_queue: int,
    ) -> StoreResult:
        """Insert envelopes for their devices, all or none (see ``Storage.store_envelopes``).

        Raises:
            RequestRefused: before anything is written.
        """
        by_recipient: dict[DeviceAddress, dict[str, OutboundEnvelope]] = {}
        for envelope in envelopes:
            recipient = DeviceAddress(envelope.to_user, envelope.to_device)
            by_recipient.setdefault(recipient, {}).setdefault(envelope.envelope_id, envelope)
        # Every refusal is decided before the first insert, so no savepoint is needed.
        planned = []
        gone: set[DeviceAddress] = set()
        for recipient, group in by_recipient.items():
            try:
                rowid = self.device_rowid(recipient)
            except RequestRefused as exc:
                if exc.code is not ErrorCode.UNKNOWN_DEVICE:
                    raise
                gone.add(recipient)  # not in the account's list (any more): skipped
                continue
            self._check_room(recipient, rowid, group, max_queue)
            planned.append((recipient, rowid, group))
        skipped = (
            [e.envelope_id for e in envelopes if DeviceAddress(e.to_user, e.to_device) in gone]
            if gone
            else []
        )
        from_user, from_device = sender
        stored = []
        for recipient, rowid, group in planned:
            first = self._next_seq
            rows = [
                (seq, rowid, envelope_id, from_user, from_device, envelope.ciphertext, expires_at)
                for seq, (envelope_id, envelope) in enumerate(group.items(), first)
            ]
            self._next_seq = first + len(rows)
            added = self.conn.executemany(_INSERT_ENVELOPE, rows).rowcount
            if added < len(rows):  # resends of envelopes still queued were ignored
                kept = {
                    seq
                    for (seq,) in self.conn.execute(
                        "SELECT seq FROM mailbox WHERE device = ? AND seq >= ?", (rowid, first)
                    )
                }
                rows = [row for row in rows if row[0] in kept]
            previous = self._newest.get(rowid, 0)
            if rows:
                self._queued[rowid] = self._queued.get(rowid, 0) + len(rows)
                self._newest[rowid] = rows[-1][0]
            stored.append(
                StoredEnvelopes(
                    recipient,
                    previous,
                    [(row[0], Envelope(row[2], from_user, from_device, row[5])) for row in rows],
                )
            )
        return StoreResult(stored, skipped, [])

    def store_multi(
        self,
        sender: DeviceAddress,
        envelope: MultiEnvelope,
        expires_at: int,
        max_queue: int,
    ) -> StoreResult:
        """Store one ciphertext once and queue it for each recipient that can take it
        (see ``Storage.store_multi``). Never raises :class:`RequestRefused`."""
        envelope_id = envelope.envelope_id
        queued: list[tuple[DeviceAddress, int]] = []
        skipped: list[Recipient] = []
        for recipient in envelope.recipients:
            address = DeviceAddress(recipient.to_user, recipient.to_device)
            rowid = self.find_rowid(address)
            if rowid is None or self._waiting_after(rowid, (envelope_id,), max_queue) > max_queue:
                skipped.append(recipient)
            else:
                queued.append((address, rowid))
        if not queued:
            return StoreResult([], [envelope_id], skipped)
        from_user, from_device = sender
        held = self.conn.execute(
            "SELECT id, data FROM ciphertexts WHERE from_user = ? AND from_device = ?"
            " AND envelope_id = ?",
            (from_user, from_device, envelope_id),
        ).fetchone()
        data = envelope.ciphertext
        if held is not None:  # a resend: queue the copy already held, write no other
            shared, data = int(held[0]), bytes(held[1])
        else:
            cursor = self.conn.execute(
                "INSERT INTO ciphertexts (from_user, from_device, envelope_id, data)"
                " VALUES (?, ?, ?, ?)",
                (from_user, from_device, envelope_id, envelope.ciphertext),
            )
            assert cursor.lastrowid is not None
            shared = cursor.lastrowid
        first = self._next_seq
        rows = [
            (seq, rowid, envelope_id, from_user, from_device, shared, expires_at)
            for seq, (_, rowid) in enumerate(queued, first)
        ]
        self._next_seq = first + len(rows)
        added = self.conn.executemany(_INSERT_SHARED_ENTRY, rows).rowcount
        if added < len(rows):  # devices that have the envelope id queued already
            kept = {
                seq
                for (seq,) in self.conn.execute(
                    "SELECT seq FROM mailbox WHERE ciphertext_id = ? AND seq >= ?",
                    (shared, first),
                )
            }
            rows = [row for row in rows if row[0] in kept]
            if not rows and held is None:  # ids taken by other senders' envelopes
                self.conn.execute("DELETE FROM ciphertexts WHERE id = ?", (shared,))
        delivered = Envelope(envelope_id, from_user, from_device, data)  # what is stored
        stored = []
        by_rowid = {rowid: address for address, rowid in queued}
        for seq, rowid, *_ in rows:
            self._queued[rowid] = self._queued.get(rowid, 0) + 1
            previous = self._newest.get(rowid, 0)
            self._newest[rowid] = seq
            stored.append(StoredEnvelopes(by_rowid[rowid], previous, [(seq, delivered)]))
        return StoreResult(stored, [], skipped)

    def _check_room(
        self,
        recipient: DeviceAddress,
        rowid: int,
        group: dict[str, OutboundEnvelope],
        max_queue: int,
    ) -> None:
        waiting = self._waiting_after(rowid, group, max_queue)
        if waiting > max_queue:
            raise RequestRefused(
                ErrorCode.QUEUE_FULL,
                f"device {recipient} would have {waiting} envelopes waiting, limit is {max_queue}",
            )

    def _waiting_after(self, rowid: int, envelope_ids: Collection[str], max_queue: int) -> int:
        """How many envelopes the device would have waiting with these queued too: an upper
        bound while that is within ``max_queue``, else counted from the table, where
        resends of queued envelopes count once."""
        waiting = self._queued.get(rowid, 0) + len(envelope_ids)
        if waiting <= max_queue:
            return waiting
        (queued,) = self.conn.execute(
            "SELECT COUNT(*) FROM mailbox WHERE device = ?", (rowid,)
        ).fetchone()
        self._queued[rowid] = queued
        already = sum(
            1
            for envelope_id in envelope_ids
            if self.conn.execute(
                "SELECT 1 FROM mailbox WHERE device = ? AND envelope_id = ?", (rowid, envelope_id)
            ).fetchone()
        )
        return int(queued) + len(envelope_ids) - already

    def ack(self, device: DeviceAddress, envelope_ids: list[str]) -> None:
        """Delete these envelopes of the device; unknown ids and devices are ignored."""
        try:
            rowid = self.device_rowid(device)
        except RequestRefused:
            return
        deleted = self.conn.executemany(
            "DELETE FROM mailbox WHERE device = ? AND envelope_id = ?",
            [(rowid, envelope_id) for envelope_id in envelope_ids],
        ).rowcount
        if deleted:
            self._queued[rowid] -= deleted

    def drop(self, rowid: int, seqs: list[int]) -> None:
        """Delete these mailbox rows of the device (unreadable ones: see ``pending``)."""
        deleted = self.conn.executemany(
            "DELETE FROM mailbox WHERE device = ? AND seq = ?", [(rowid, seq) for seq in seqs]
        ).rowcount
        if deleted and rowid in self._queued:
            self._queued[rowid] -= deleted

    def sweep(self, now: int, device: DeviceAddress | None = None) -> int:
        """Delete every envelope (of ``device``, or all) with ``expires_at <= now``.

        Each is counted in ``expired_unread`` for its device; returns how many.
        """
        if device is None:
            rows = self.conn.execute(
                "DELETE FROM mailbox WHERE expires_at <= ? RETURNING device", (now,)
            ).fetchall()
        else:
            rowid = self.find_rowid(device)
            if rowid is None:
                return 0
            rows = self.conn.execute(
                "DELETE FROM mailbox WHERE device = ? AND expires_at <= ? RETURNING device",
                (rowid, now),
            ).fetchall()
        for rowid, count in collections.Counter(row[0] for row in rows).items():
            self._queued[rowid] -= count
            self.conn.execute(
                "INSERT INTO expired_unread (device, count) VALUES (?, ?)"
                " ON CONFLICT (device) DO UPDATE SET count = count + excluded.count",
                (rowid, count),
            )
        return len(rows)

    def expired_told(self, device: DeviceAddress, count: int) -> None:
        """The device told its user of ``count`` expired envelopes: forget that many."""
        rowid = self.find_rowid(device)
        if rowid is None or count <= 0:
            return
        self.conn.execute(
            "DELETE FROM expired_unread WHERE device = ? AND count <= ?", (rowid, count)
        )
        self.conn.execute(
            "UPDATE expired_unread SET count = count - ? WHERE device = ?", (count, rowid)
        )


# --- directory writes (each in a savepoint) -----------------------------------------------


def _insert_keys(
    conn: sqlite3.Connection,
    rowid: int,
    one_time_keys: Sequence[OneTimeKey],
    fallback_key: OneTimeKey | None,
) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO one_time_keys (device, key_id, key, signature) VALUES (?, ?, ?, ?)",
        [(rowid, k.key_id, k.key, k.signature) for k in one_time_keys],
    )
    if fallback_key is not None:
        conn.execute(
            "INSERT OR REPLACE INTO fallback_keys (device, key_id, key, signature) VALUES (?, ?, ?, ?)",
            (rowid, fallback_key.key_id, fallback_key.key, fallback_key.signature),
        )


def _insert_device(conn: sqlite3.Connection, username: str, device: DeviceKeys, day: str) -> int:
    cursor = conn.execute(
        "INSERT INTO devices (username, device_id, ed25519, curve25519, signature, created_day,"
        " last_active_day) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (username, device.device_id, device.ed25519, device.curve25519, device.signature, day, day),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


_decode_succession = msgspec.json.Decoder(KeySuccession).decode


def _store_list(
    conn: sqlite3.Connection,
    username: str,
    device_list: PublishedList,
    recovery_key: RecoveryKey | None,
) -> None:
    """Set the account's list (and, unless None, its recovery key)."""
    conn.execute(
        "UPDATE accounts SET account_key = ?, device_list = ?, device_list_signature = ?,"
        " list_version = ? WHERE username = ?",
        (
            device_list.account_key,
            device_list.signed.device_list,
            device_list.signed.signature,
            device_list.version,
            username,
        ),
    )
    if recovery_key is not None:
        _store_recovery_key(conn, username, recovery_key)


def _store_recovery_key(conn: sqlite3.Connection, username: str, recovery: RecoveryKey) -> None:
    conn.execute(
        "UPDATE accounts SET recovery_key = ?, recovery_key_signature = ? WHERE username = ?",
        (recovery.key, recovery.signature, username),
    )


def _replace_devices(
    db: _WriterDb, username: str, devices: list[DeviceKeys], day: str, *, keep: bool
) -> list[DeviceAddress]:
    """Make the account's device rows those of ``devices``; returns the devices deleted.

    With ``keep``, a device whose id and keys are unchanged keeps its row (its queue and
    keys); one with new keys under an old id is a new device. Deleting a row deletes its
    queue, one-time keys and fallback key (foreign key cascade; ``secure_delete`` zeroes
    them). Their blobs are the blob store's, which the relay tells separately.
    """
    conn = db.conn
    wanted = {(d.device_id, d.ed25519, d.curve25519) for d in devices} if keep else set()
    held = set()
    removed: list[tuple[DeviceAddress, int]] = []
    for rowid, device_id, ed25519, curve25519 in conn.execute(
        "SELECT id, device_id, ed25519, curve25519 FROM devices WHERE username = ?", (username,)
    ).fetchall():
        if (device_id, ed25519, curve25519) in wanted:
            held.add(device_id)
        else:
            removed.append((DeviceAddress(username, device_id), rowid))
    conn.executemany("DELETE FROM devices WHERE id = ?", [(rowid,) for _, rowid in removed])
    db.forget_devices(removed)
    for device in devices:
        if device.device_id not in held:
            _insert_device(conn, username, device, day)
    return [device for device, _ in removed]


def _create_account(
    db: _WriterDb,
    username: str,
    device_list: PublishedList,
    recovery_key: RecoveryKey,
    one_time_keys: list[OneTimeKey],
    fallback_key: OneTimeKey | None,
    day: str,
) -> None:
    conn = db.conn
    try:
        conn.execute("INSERT INTO accounts (username, created_day) VALUES (?, ?)", (username, day))
    except sqlite3.IntegrityError:
        raise RequestRefused(ErrorCode.USERNAME_TAKEN, f"username {username} is taken") from None
    _store_list(conn, username, device_list, recovery_key)
    (device,) = device_list.devices
    _insert_keys(conn, _insert_device(conn, username, device, day), one_time_keys, fallback_key)


def _publish_devices(
    db: _WriterDb, username: str, device_list: PublishedList, day: str
) -> list[DeviceAddress]:
    row = db.conn.execute(
        "SELECT account_key, list_version FROM accounts WHERE username = ?", (username,)
    ).fetchone()
    if row is None or row[0] != device_list.account_key:
        raise RequestRefused(
            ErrorCode.BAD_DEVICE_LIST, f"the list is not signed by {username}'s account key"
        )
    if device_list.version <= row[1]:
        raise RequestRefused(
            ErrorCode.BAD_DEVICE_LIST,
            f"list version {device_list.version} is not above the stored version {row[1]}",
        )
    _store_list(db.conn, username, device_list, None)
    return _replace_devices(db, username, device_list.devices, day, keep=True)


def _recover(
    db: _WriterDb,
    username: str,
    old_recovery_key: str,
    device_list: PublishedList,
    recovery_key: RecoveryKey,
    succession: KeySuccession | None,
    one_time_keys: list[OneTimeKey],
    fallback_key: OneTimeKey | None,
    day: str,
) -> list[DeviceAddress]:
    row = db.conn.execute(
        "SELECT recovery_key FROM accounts WHERE username = ?", (username,)
    ).fetchone()
    if row is None or row[0] != old_recovery_key:  # changed since the signature was checked
        raise RequestRefused(ErrorCode.AUTH_FAILED, "authentication failed")
    if succession is not None:
        db.conn.execute(
            "INSERT INTO key_successions (username, seq, record) VALUES (?, (SELECT"
            " COUNT(*) FROM key_successions WHERE username = ?), ?)",
            (username, username, msgspec.json.encode(succession)),
        )
    _store_list(db.conn, username, device_list, recovery_key)
    removed = _replace_devices(db, username, device_list.devices, day, keep=False)
    (device,) = device_list.devices
    rowid = db.device_rowid(DeviceAddress(username, device.device_id))
    _insert_keys(db.conn, rowid, one_time_keys, fallback_key)
    return removed


def _set_recovery(
    db: _WriterDb, username: str, account_key: str, recovery_key: RecoveryKey
) -> None:
    changed = db.conn.execute(
        "UPDATE accounts SET recovery_key = ?, recovery_key_signature = ?"
        " WHERE username = ? AND account_key = ?",
        (recovery_key.key, recovery_key.signature, username, account_key),
    ).rowcount
    if not changed:
        raise RequestRefused(ErrorCode.BAD_SIGNATURE, "the account key has changed")


def _touch_device(db: _WriterDb, device: DeviceAddress, day: str) -> bool:
    row = db.conn.execute(
        "SELECT id, last_active_day FROM devices WHERE username = ? AND device_id = ?", device
    ).fetchone()
    if row is None:
        return False
    if row[1] != day:  # day resolution: at most one write per device and day
        db.conn.execute("UPDATE devices SET last_active_day = ? WHERE id = ?", (day, row[0]))
    return True


def _upload_keys(
    db: _WriterDb,
    device: DeviceAddress,
    one_time_keys: list[OneTimeKey],
    fallback_key: OneTimeKey | None,
    max_one_time_keys: int,
) -> int:
    rowid = db.device_rowid(device)
    _insert_keys(db.conn, rowid, one_time_keys, fallback_key)
    (count,) = db.conn.execute(
        "SELECT COUNT(*) FROM one_time_keys WHERE device = ?", (rowid,)
    ).fetchone()
    if count > max_one_time_keys:
        raise RequestRefused(
            ErrorCode.TOO_MANY_ITEMS,
            f"device would hold {count} one-time keys, limit is {max_one_time_keys}",
        )
    return int(count)


def _claim_keys(db: _WriterDb, username: str, device_ids: list[str] | None) -> list[ClaimedDevice]:
    conn = db.conn
    rows = conn.execute(
        "SELECT id, device_id, ed25519, curve25519, signature FROM devices"
        " WHERE username = ? ORDER BY device_id",
        (username,),
    ).fetchall()
    if not rows:
        raise RequestRefused(ErrorCode.UNKNOWN_USER, f"no user {username}")
    if device_ids is not None:
        by_id = {row[1]: row for row in rows}
        for device_id in device_ids:
            if device_id not in by_id:
                raise RequestRefused(
                    ErrorCode.UNKNOWN_DEVICE, f"user {username} has no device {device_id}"
                )
        rows = [by_id[device_id] for device_id in sorted(set(device_ids))]
    claimed = []
    for rowid, device_id, ed25519, curve25519, signature in rows:
        keys = DeviceKeys(
            device_id=device_id, ed25519=ed25519, curve25519=curve25519, signature=signature
        )
        taken = conn.execute(
            "DELETE FROM one_time_keys WHERE id ="
            " (SELECT id FROM one_time_keys WHERE device = ? ORDER BY id LIMIT 1)"
            " RETURNING key_id, key, signature",
            (rowid,),
        ).fetchall()
        if taken:
            claimed.append(ClaimedDevice(device=keys, one_time_key=OneTimeKey(*taken[0])))
            continue
        fallback = conn.execute(
            "SELECT key_id, key, signature FROM fallback_keys WHERE device = ?", (rowid,)
        ).fetchone()
        claimed.append(
            ClaimedDevice(
                device=keys,
                one_time_key=OneTimeKey(*fallback) if fallback else None,
                fallback=fallback is not None,
            )
        )
    return claimed


_SIZE = (
    "IFNULL(length(m.ciphertext),"
    " (SELECT length(data) FROM ciphertexts c WHERE c.id = m.ciphertext_id))"
)
"""A mailbox row's ciphertext size, its own or the shared one's (never the bytes)."""


def _expires_day(expires_at: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(expires_at))


# --- the backend ------------------------------------------------------------------------


class SqliteStorage(Storage):
    """Storage in one SQLite file.

    Args:
        path: the database file (created with its schema if missing, unless read-only).
        read_only: open an existing database for reading only, e.g. for ``obrolan admin``
            while the server runs; write methods then raise :class:`InvalidState`.
        new_database: make a new database even where the folder's marker says one
            existed (see :mod:`obrolan.server.storage.integrity`).
    """

    def __init__(self, path: Path, *, read_only: bool = False, new_database: bool = False) -> None:
        self._path = path
        self._read_only = read_only
        self._new_database = new_database
        self._writer: _Writer | None = None
        self._reader: sqlite3.Connection | None = None
        # A device's row id never changes while it exists, so the hot read path (pending)
        # resolves an address once per device and process; removing devices clears this.
        self._rowids: dict[DeviceAddress, int] = {}
        self._unreadable: set[int] = set()
        """Seqs of mailbox rows found unreadable whose delete failed: skipped quietly."""

    # --- lifecycle

    async def start(self) -> None:
        if self._read_only:
            if not self._path.is_file():
                raise StorageError(f"no server database at {self._path}")
            reader = open_db(self._path, read_only=True)
            version = reader.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                reader.close()
                raise StorageError(
                    f"{self._path} has schema version {version}, this obrolan reads {SCHEMA_VERSION}"
                )
        else:
            # Raises DamagedDatabase before anything is written to a damaged folder.
            fresh = await asyncio.to_thread(
                check_before_open, self._path, new_database=self._new_database
            )
            self._writer = _Writer(self._path, asyncio.get_running_loop())
            await self._writer.start()
            if fresh:
                _logger.info("created a new, empty server database")
            await asyncio.to_thread(write_marker, self._path)
            reader = open_db(self._path, read_only=False)
            reader.execute("PRAGMA query_only = ON")
        self._reader = reader

    async def close(self) -> None:
        # The reader goes first: the writer's final TRUNCATE checkpoint waits for readers.
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            raise InvalidState(
                "storage not started or already closed; did you forget to call start()?"
            )
        return self._reader

    def _writer_or_fail(self) -> _Writer:
        if self._writer is None:
            if self._read_only:
                raise InvalidState("storage was opened read-only")
            raise InvalidState(
                "storage not started or already closed; did you forget to call start()?"
            )
        return self._writer

    def _write(
        self, op: Callable[..., T], *args: Any, savepoint: bool = False
    ) -> asyncio.Future[T]:
        return self._writer_or_fail().submit(lambda db: op(db, *args), savepoint=savepoint)

    def _rowid(self, device: DeviceAddress) -> int | None:
        rowid = self._rowids.get(device)
        if rowid is None:
            row = (
                self._read()
                .execute(
                    "SELECT id FROM devices WHERE username = ? AND device_id = ?", tuple(device)
                )
                .fetchone()
            )
            if row is None:
                return None
            rowid = self._rowids[device] = row[0]
        return rowid

    # --- directory

    async def create_account(
        self,
        username: str,
        device_list: PublishedList,
        recovery_key: RecoveryKey,
        one_time_keys: list[OneTimeKey],
        fallback_key: OneTimeKey | None,
        day: str,
    ) -> None:
        await self._write(
            _create_account,
            username,
            device_list,
            recovery_key,
            one_time_keys,
            fallback_key,
            day,
            savepoint=True,
        )

    async def account(self, username: str) -> Account | None:
        row = (
            self._read()
            .execute(
                "SELECT account_key, list_version, recovery_key, recovery_key_signature"
                " FROM accounts WHERE username = ?",
                (username,),
            )
            .fetchone()
        )
        return Account(*row) if row else None

    async def device_keys(self, device: DeviceAddress) -> DeviceKeys | None:
        row = (
            self._read()
            .execute(
                "SELECT device_id, ed25519, curve25519, signature FROM devices"
                " WHERE username = ? AND device_id = ?",
                tuple(device),
            )
            .fetchone()
        )
        return DeviceKeys(*row) if row else None

    async def touch_device(self, device: DeviceAddress, day: str) -> bool:
        return await self._write(_touch_device, device, day)

    async def get_devices(self, username: str, *, last_active: bool) -> AccountDevices:
        db = self._read()
        row = db.execute(
            "SELECT device_list, device_list_signature FROM accounts WHERE username = ?",
            (username,),
        ).fetchone()
        if row is None or row[0] is None:  # none, or created before device lists
            raise RequestRefused(ErrorCode.UNKNOWN_USER, f"no user {username}")
        days: dict[str, str] = {}
        if last_active:
            days = dict(
                db.execute(
                    "SELECT device_id, last_active_day FROM devices WHERE username = ?",
                    (username,),
                ).fetchall()
            )
        successions = [
            _decode_succession(record)
            for (record,) in db.execute(
                "SELECT record FROM key_successions WHERE username = ? ORDER BY seq",
                (username,),
            )
        ]
        return AccountDevices(
            SignedDeviceList(device_list=row[0], signature=row[1]), days, successions
        )

    async def publish_devices(
        self, username: str, device_list: PublishedList, day: str
    ) -> list[DeviceAddress]:
        removed = await self._write(_publish_devices, username, device_list, day, savepoint=True)
        if removed:
            self._rowids.clear()  # after the commit: a read before it may have cached them
        return removed

    async def recover(
        self,
        username: str,
        old_recovery_key: str,
        device_list: PublishedList,
        recovery_key: RecoveryKey,
        succession: KeySuccession | None,
        one_time_keys: list[OneTimeKey],
        fallback_key: OneTimeKey | None,
        day: str,
    ) -> list[DeviceAddress]:
        removed = await self._write(
            _recover,
            username,
            old_recovery_key,
            device_list,
            recovery_key,
            succession,
            one_time_keys,
            fallback_key,
            day,
            savepoint=True,
        )
        self._rowids.clear()  # after the commit: a read before it may have cached them
        return removed

    async def set_recovery(
        self, username: str, account_key: str, recovery_key: RecoveryKey
    ) -> None:
        await self._write(_set_recovery, username, account_key, recovery_key, savepoint=True)

    async def upload_keys(
        self,
        device: DeviceAddress,
        one_time_keys: list[OneTimeKey],
        fallback_key: OneTimeKey | None,
        max_one_time_keys: int,
    ) -> int:
        return await self._write(
            _upload_keys, device, one_time_keys, fallback_key, max_one_time_keys, savepoint=True
        )

    async def count_one_time_keys(self, device: DeviceAddress) -> int:
        return self._count_rows("one_time_keys", device)

    async def claim_keys(self, username: str, device_ids: list[str] | None) -> list[ClaimedDevice]:
        return await self._write(_claim_keys, username, device_ids, savepoint=True)

    # --- mailbox

    def store_envelopes(
        self,
        sender: DeviceAddress,
        envelopes: list[OutboundEnvelope],
        expires_at: int,
        max_queue: int,
    ) -> asyncio.Future[StoreResult]:
        return self._write(_WriterDb.store, sender, envelopes, expires_at, max_queue)

    def store_multi(
        self,
        sender: DeviceAddress,
        envelope: MultiEnvelope,
        expires_at: int,
        max_queue: int,
    ) -> asyncio.Future[StoreResult]:
        return self._write(_WriterDb.store_multi, sender, envelope, expires_at, max_queue)

    async def last_seq(self, device: DeviceAddress) -> int:
        rowid = self._rowid(device)
        if rowid is None:
            return 0
        (seq,) = (
            self._read()
            .execute("SELECT MAX(seq) FROM mailbox WHERE device = ?", (rowid,))
            .fetchone()
        )
        return int(seq or 0)

    async def pending(
        self, device: DeviceAddress, after_seq: int, limit: int
    ) -> list[PendingEnvelope]:
        """Up to ``limit`` envelopes after ``after_seq``; a stored row that cannot be
        delivered (damaged in the file) is skipped and deleted, and more are read in its
        place, so that fewer than ``limit`` still means the queue has no more."""
        rowid = self._rowid(device)
        if rowid is None:
            return []
        found: list[PendingEnvelope] = []
        while True:
            want = limit - len(found)
            rows = mailbox_rows(self._read(), rowid, after_seq, want, int(time.time()))
            unreadable: list[tuple[int, str]] = []
            for seq, *columns in rows:
                if seq in self._unreadable:
                    continue
                envelope = stored_envelope(*columns)
                if isinstance(envelope, str):
                    unreadable.append((seq, envelope))
                else:
                    found.append((seq, envelope))
            if unreadable:
                await self._drop_unreadable(rowid, unreadable)
            if len(found) == limit or len(rows) < want:
                return found
            after_seq = rows[-1][0]

    async def _drop_unreadable(self, rowid: int, rows: list[tuple[int, str]]) -> None:
        """Delete mailbox rows that cannot be delivered, and say so in the log by their
        ``seq`` only (a row's content may be anything, including what it should be)."""
        for seq, reason in rows:
            _logger.error(
                "stored envelope seq %d is unreadable (%s): skipped, the rest of the "
                "device's queue is delivered",
                seq,
                reason,
            )
        seqs = [seq for seq, _ in rows]
        try:
            await self._write(_WriterDb.drop, rowid, seqs, savepoint=True)
        except StorageError as exc:  # the page is damaged for writing too
            self._unreadable.update(seqs)
            _logger.error(
                "the %d unreadable envelopes could not be deleted (%s): they stay skipped; "
                "restart the server to have the database checked",
                len(seqs),
                exc,
            )
        else:
            _logger.info("deleted %d unreadable envelopes", len(seqs))

    async def ack(self, device: DeviceAddress, envelope_ids: list[str]) -> None:
        # A lost delete only means a redelivery, which clients drop by id: nobody waits
        # for it, and it shares the next commit.
        self._writer_or_fail().submit_lazy(lambda db: db.ack(device, envelope_ids))

    async def queue_length(self, device: DeviceAddress) -> int:
        return self._count_rows("mailbox", device)

    def _count_rows(self, table: str, device: DeviceAddress) -> int:
        """Rows of ``table`` (one_time_keys or mailbox) that belong to ``device``."""
        rowid = self._rowid(device)
        if rowid is None:
            return 0
        query = f"SELECT COUNT(*) FROM {table} WHERE device = ?"
        (count,) = self._read().execute(query, (rowid,)).fetchone()
        return int(count)

    async def sweep_expired(self, now: int) -> int:
        return await self._write(_WriterDb.sweep, now)

    async def take_expired(self, device: DeviceAddress, now: int) -> int:
        await self._write(_WriterDb.sweep, now, device)
        rowid = self._rowid(device)
        if rowid is None:
            return 0
        row = (
            self._read()
            .execute("SELECT count FROM expired_unread WHERE device = ?", (rowid,))
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    async def expired_told(self, device: DeviceAddress, count: int) -> None:
        await self._write(_WriterDb.expired_told, device, count)

    # --- operator

    async def disclose(self, username: str) -> dict[str, Any]:
        db = self._read()
        account = db.execute(
            "SELECT created_day, account_key, list_version, recovery_key IS NOT NULL"
            " FROM accounts WHERE username = ?",
            (username,),
        ).fetchone()
        if account is None:
            raise UnknownContact(username)
        devices = [
            {
                "device_id": device_id,
                "ed25519": ed25519,
                "curve25519": curve25519,
                "signature": signature,
                "created_day": created_day,
                "last_active_day": last_active_day,
                "unclaimed_one_time_keys": one_time_keys,
                "fallback_key_held": bool(fallback),
                "expired_unread": expired,
            }
            for (
                device_id,
                ed25519,
                curve25519,
                signature,
                created_day,
                last_active_day,
                one_time_keys,
                fallback,
                expired,
            ) in db.execute(
                "SELECT d.device_id, d.ed25519, d.curve25519, d.signature, d.created_day,"
                " d.last_active_day,"
                " (SELECT COUNT(*) FROM one_time_keys k WHERE k.device = d.id),"
                " EXISTS (SELECT 1 FROM fallback_keys f WHERE f.device = d.id),"
                " IFNULL((SELECT e.count FROM expired_unread e WHERE e.device = d.id), 0)"
                " FROM devices d WHERE d.username = ? ORDER BY d.device_id",
                (username,),
            )
        ]
        queued_for = [
            {
                "envelope_id": envelope_id,
                "to_device": to_device,
                "from_user": from_user,
                "from_device": from_device,
                "size": size,
                "expires_day": _expires_day(expires_at),
            }
            for envelope_id, to_device, from_user, from_device, size, expires_at in db.execute(
                f"SELECT m.envelope_id, d.device_id, m.from_user, m.from_device, {_SIZE},"
                " m.expires_at FROM mailbox m JOIN devices d ON d.id = m.device"
                " WHERE d.username = ? ORDER BY m.seq",
                (username,),
            )
        ]
        queued_from = [
            {
                "envelope_id": envelope_id,
                "from_device": from_device,
                "to_user": to_user,
                "to_device": to_device,
                "size": size,
                "expires_day": _expires_day(expires_at),
            }
            for envelope_id, from_device, to_user, to_device, size, expires_at in db.execute(
                f"SELECT m.envelope_id, m.from_device, d.username, d.device_id, {_SIZE},"
                " m.expires_at FROM mailbox m JOIN devices d ON d.id = m.device"
                " WHERE m.from_user = ? ORDER BY m.seq",
                (username,),
            )
        ]
        return {
            "username": username,
            "created_day": account[0],
            "account_key": account[1],
            "list_version": account[2],
            "recovery_key_held": bool(account[3]),
            "earlier_account_keys": [
                _decode_succession(record).account_key
                for (record,) in db.execute(
                    "SELECT record FROM key_successions WHERE username = ? ORDER BY seq",
                    (username,),
                )
            ],
            "devices": devices,
            "queued_for_account": queued_for,
            "queued_from_account": queued_from,
            "not_held": list(NOT_HELD),
        }

    async def stats(self) -> dict[str, int]:
        accounts, devices, one_time_keys, queued, queued_bytes = (
            self._read()
            .execute(
                "SELECT (SELECT COUNT(*) FROM accounts), (SELECT COUNT(*) FROM devices),"
                " (SELECT COUNT(*) FROM one_time_keys), (SELECT COUNT(*) FROM mailbox),"
                " (SELECT COALESCE(SUM(length(ciphertext)), 0) FROM mailbox)"
                " + (SELECT COALESCE(SUM(length(data)), 0) FROM ciphertexts)"
            )
            .fetchone()
        )
        return {
            "accounts": accounts,
            "devices": devices,
            "one_time_keys": one_time_keys,
            "queued_envelopes": queued,
            "queued_bytes": queued_bytes,
        }
