"""Envelopes read back from storage are checked like envelopes from the wire.

A database can be damaged after the fact (a flipped byte, a bad disk, an operator's
SQL): a stored row whose envelope id, sender or ciphertext is not what the protocol
allows must not reach a device, since the client refuses a ``deliver`` frame holding
it whole, and one that is not even of the right type makes the server fail the whole
delivery. Such a row is reported as unreadable, with why, so that storage can skip
and delete it and go on with the rest of the queue. When the file is damaged under
the rows, they are read one by one, so that one that cannot be read does not hide the
others.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import typing
from typing import Any

from obrolan.errors import StorageError
from obrolan.protocol.frames import DeviceId, Envelope, EnvelopeId, Username

__all__ = ["mailbox_rows", "stored_envelope"]

_logger = logging.getLogger(__name__)

_QUERY = (
    "SELECT m.seq, m.envelope_id, m.from_user, m.from_device, IFNULL(m.ciphertext,"
    " (SELECT c.data FROM ciphertexts c WHERE c.id = m.ciphertext_id))"
    " FROM mailbox m WHERE {where} ORDER BY m.seq LIMIT ?"
)


def _pattern(annotated: object) -> re.Pattern[str]:
    """The compiled pattern of a protocol string type (``Annotated[str, Meta(pattern)]``)."""
    _, meta = typing.get_args(annotated)
    return re.compile(meta.pattern)


_ENVELOPE_ID = _pattern(EnvelopeId)
_USERNAME = _pattern(Username)
_DEVICE_ID = _pattern(DeviceId)


def _text(value: object, pattern: re.Pattern[str]) -> bool:
    return isinstance(value, str) and pattern.search(value) is not None


def stored_envelope(
    envelope_id: object, from_user: object, from_device: object, data: object
) -> Envelope | str:
    """The envelope a mailbox row holds, or why it cannot be delivered (a phrase about
    the row, never its content): each column must be what
    :class:`~obrolan.protocol.frames.Envelope` allows on the wire.
    """
    if envelope_id is None:  # NOT NULL in the schema: the row itself could not be read
        return "it cannot be read from the file"
    if not _text(envelope_id, _ENVELOPE_ID):
        return "its envelope id is not a valid envelope id"
    if not _text(from_user, _USERNAME) or not _text(from_device, _DEVICE_ID):
        return "its sender is not a valid username and device id"
    if data is None:
        return "its ciphertext is missing"
    if not isinstance(data, bytes):
        return f"its ciphertext is {type(data).__name__}, not bytes"
    assert isinstance(envelope_id, str) and isinstance(from_user, str)
    assert isinstance(from_device, str)
    return Envelope(envelope_id, from_user, from_device, data)


def mailbox_rows(
    reader: sqlite3.Connection, rowid: int, after_seq: int, limit: int, now: int
) -> list[tuple[Any, ...]]:
    """The device's unexpired mailbox rows after ``after_seq`` as stored: ``(seq,
    envelope_id, from_user, from_device, ciphertext)``, for :func:`stored_envelope`.

    When the file is damaged under them, each row is read on its own, and one that
    cannot be read comes back with its columns None.

    Raises:
        StorageError: not even the rows' places can be read.
    """
    try:
        return reader.execute(
            _QUERY.format(where="m.device = ? AND m.seq > ? AND m.expires_at > ?"),
            (rowid, after_seq, now, limit),
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        _logger.error("reading a device's queue failed, reading it row by row: %s", exc)
    try:
        seqs = reader.execute(
            "SELECT seq FROM mailbox WHERE device = ? AND seq > ? AND expires_at > ?"
            " ORDER BY seq LIMIT ?",
            (rowid, after_seq, now, limit),
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"the server database cannot be read: {exc}") from None
    rows: list[tuple[Any, ...]] = []
    for (seq,) in seqs:
        try:
            row = reader.execute(_QUERY.format(where="m.seq = ?"), (seq, 1)).fetchone()
        except sqlite3.DatabaseError:
            row = (seq, None, None, None, None)
        if row is not None:
            rows.append(row)
    return rows
