"""Megolm replays: every group message opened, by (session, message index).

Megolm decrypts a message at an index already used as readily as the first
time. The same ciphertext again is a redelivery (dropped without a word); a
different ciphertext at an index already used cannot come from the sender's
session advancing honestly, so it is a replay and is not shown (spec §23.16).
"""

from __future__ import annotations

import hashlib
from enum import Enum

from sqlcipher3 import dbapi2

__all__ = ["Seen", "SeenIndexes"]


class Seen(Enum):
    NEW = "new"
    SAME = "same"
    """This exact ciphertext was opened before."""
    REPLAY = "replay"
    """Another ciphertext was opened at this (session, index)."""


class SeenIndexes:
    """The ``group_seen`` rows (inside the caller's transaction)."""

    def __init__(self, db: dbapi2.Connection) -> None:
        self._db = db

    def check(self, session_id: str, index: int, body: bytes) -> Seen:
        row = self._db.execute(
            "SELECT body_hash FROM group_seen WHERE session_id = ? AND message_index = ?",
            (session_id, index),
        ).fetchone()
        if row is None:
            return Seen.NEW
        return Seen.SAME if bytes(row[0]) == _digest(body) else Seen.REPLAY

    def record(self, session_id: str, index: int, body: bytes) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO group_seen (session_id, message_index, body_hash) "
            "VALUES (?, ?, ?)",
            (session_id, index, _digest(body)),
        )


def _digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()
