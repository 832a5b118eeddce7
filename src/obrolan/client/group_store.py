"""The queries of group chats over the profile's store (tables of schema versions 4 and 7).

Called inside the client's transactions, like :class:`~obrolan.client.store.Store`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlcipher3 import dbapi2

from obrolan.client.store import now_ms
from obrolan.protocol.groups import SignedGroupUpdate

__all__ = ["GroupStore", "Outbound", "Report", "group_peer", "is_group_peer"]


def group_peer(group_id: str) -> str:
    """The ``messages.peer`` of a group's conversation (no username starts with ``#``)."""
    return "#" + group_id


def is_group_peer(peer: str) -> bool:
    """Whether a conversation's peer is a group's (:func:`group_peer`)."""
    return peer.startswith("#")


@dataclass(frozen=True, slots=True)
class Outbound:
    """This device's current Megolm session for a group."""

    pickle: str
    created_ms: int
    messages: int
    shared_with: frozenset[str]
    """``user/device`` pairs that were sent the session key."""


@dataclass(frozen=True, slots=True)
class Report:
    """A member's report of a group message, as an admin's device received it."""

    group_id: str
    reporter: str
    sender: str
    message_id: str
    text: str
    reason: str
    verified: bool
    """The reported message carries a valid signature of the sender's device."""
    at_ms: int

    def as_json(self) -> dict[str, object]:
        return {
            "group_id": self.group_id,
            "reporter": self.reporter,
            "sender": self.sender,
            "message_id": self.message_id,
            "text": self.text,
            "reason": self.reason,
            "verified": self.verified,
            "at_ms": self.at_ms,
        }


class GroupStore:
    """Rows of groups: chain, sessions, waiting group events, join requests, reports."""

    def __init__(self, db: dbapi2.Connection) -> None:
        self._db = db

    # --- the chain of state updates -----------------------------------------------------

    def add_update(
        self, group_id: str, seq: int, signed: SignedGroupUpdate, actor_key: str
    ) -> None:
        self._db.execute(
            "INSERT INTO group_updates (group_id, seq, update_bytes, signature, actor_key) "
            "VALUES (?, ?, ?, ?, ?)",
            (group_id, seq, signed.update, signed.signature, actor_key),
        )

    def drop_update(self, group_id: str, seq: int) -> None:
        """Forget the update at ``seq`` (the last one), which a concurrent one displaced."""
        self._db.execute(
            "DELETE FROM group_updates WHERE group_id = ? AND seq = ?", (group_id, seq)
        )

    def chain(self, group_id: str) -> list[tuple[SignedGroupUpdate, str]]:
        """Every verified update of the group, in order, with the key that verified it."""
        return [
            (SignedGroupUpdate(update=bytes(r[0]), signature=r[1]), r[2])
            for r in self._db.execute(
                "SELECT update_bytes, signature, actor_key FROM group_updates "
                "WHERE group_id = ? ORDER BY seq",
                (group_id,),
            )
        ]

    def group_ids(self) -> list[str]:
        """Every group this device holds a chain of (we may have left some)."""
        return [
            r[0]
            for r in self._db.execute(
                "SELECT DISTINCT group_id FROM group_updates ORDER BY group_id"
            )
        ]

    # --- Megolm sessions ----------------------------------------------------------------

    def outbound(self, group_id: str) -> Outbound | None:
        row = self._db.execute(
            "SELECT pickle, created_ms, messages, shared_with FROM group_outbound "
            "WHERE group_id = ?",
            (group_id,),
        ).fetchone()
        if row is None:
            return None
        return Outbound(row[0], row[1], row[2], frozenset(json.loads(row[3])))

    def save_outbound(
        self,
        group_id: str,
        pickle: str,
        *,
        messages: int,
        shared_with: frozenset[str],
        created_ms: int | None = None,
    ) -> None:
        self._db.execute(
            "INSERT INTO group_outbound (group_id, pickle, created_ms, messages, shared_with) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (group_id) DO UPDATE SET pickle = "
            "excluded.pickle, messages = excluded.messages, shared_with = excluded.shared_with",
            (group_id, pickle, created_ms or now_ms(), messages, json.dumps(sorted(shared_with))),
        )

    def drop_outbound(self, group_id: str) -> None:
        """Forget our session: the next message starts a new one (rotation)."""
        self._db.execute("DELETE FROM group_outbound WHERE group_id = ?", (group_id,))

    def save_inbound(
        self, session_id: str, group_id: str, sender: str, sender_device: str, pickle: str
    ) -> None:
        """Keep a session a member's device shared; the first copy wins (a later one may
        start at a later index, and nobody can rebind another device's session)."""
        self._db.execute(
            "INSERT OR IGNORE INTO group_inbound (session_id, sender, sender_device, group_id, "
            "pickle) VALUES (?, ?, ?, ?, ?)",
            (session_id, sender, sender_device, group_id, pickle),
        )

    def inbound(self, session_id: str, sender: str, sender_device: str) -> tuple[str, str] | None:
        """(group_id, pickle) of the session this sender's device shared with us."""
        row = self._db.execute(
            "SELECT group_id, pickle FROM group_inbound WHERE session_id = ? AND sender = ? "
            "AND sender_device = ?",
            (session_id, sender, sender_device),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    # --- group events waiting to be applied ---------------------------------------------

    def add_inbox(self, sender: str, sender_device: str, body: bytes) -> None:
        self._db.execute(
            "INSERT INTO group_inbox (sender, sender_device, body) VALUES (?, ?, ?)",
            (sender, sender_device, body),
        )

    def inbox(self) -> list[tuple[int, str, str, bytes]]:
        return [
            (r[0], r[1], r[2], bytes(r[3]))
            for r in self._db.execute(
                "SELECT id, sender, sender_device, body FROM group_inbox ORDER BY id"
            )
        ]

    def done_inbox(self, entry_id: int) -> None:
        self._db.execute("DELETE FROM group_inbox WHERE id = ?", (entry_id,))

    # --- group messages kept until what they need arrives ------------------------------

    def add_pending(self, envelope: bytes, most: int) -> list[bytes]:
        """Keep a group envelope to open again later; returns the ones dropped to keep at
        most ``most`` (the oldest first: a sender cannot fill the store)."""
        self._db.execute(
            "INSERT INTO group_pending (envelope, at_ms) VALUES (?, ?)", (envelope, now_ms())
        )
        dropped = self._db.execute(
            "SELECT id, envelope FROM group_pending ORDER BY id DESC LIMIT -1 OFFSET ?", (most,)
        ).fetchall()
        for row in dropped:
            self._db.execute("DELETE FROM group_pending WHERE id = ?", (row[0],))
        return [bytes(r[1]) for r in reversed(dropped)]

    def pending(self) -> list[tuple[int, bytes]]:
        return [
            (r[0], bytes(r[1]))
            for r in self._db.execute("SELECT id, envelope FROM group_pending ORDER BY id")
        ]

    def drop_pending(self, entry_id: int) -> None:
        self._db.execute("DELETE FROM group_pending WHERE id = ?", (entry_id,))

    # --- join requests and reports ------------------------------------------------------

    def add_join_request(self, group_id: str, username: str, invite_id: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO group_join_requests (group_id, username, invite_id, at_ms) "
            "VALUES (?, ?, ?, ?)",
            (group_id, username, invite_id, now_ms()),
        )

    def join_requests(self, group_id: str) -> list[tuple[str, str]]:
        """(username, invite_id) of people waiting to join, oldest first."""
        return [
            (r[0], r[1])
            for r in self._db.execute(
                "SELECT username, invite_id FROM group_join_requests WHERE group_id = ? "
                "ORDER BY at_ms",
                (group_id,),
            )
        ]

    def drop_join_request(self, group_id: str, username: str) -> None:
        self._db.execute(
            "DELETE FROM group_join_requests WHERE group_id = ? AND username = ?",
            (group_id, username),
        )

    def add_report(self, report: Report) -> None:
        self._db.execute(
            "INSERT INTO group_reports (group_id, reporter, sender, message_id, text, reason, "
            "verified, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                report.group_id,
                report.reporter,
                report.sender,
                report.message_id,
                report.text,
                report.reason,
                int(report.verified),
                report.at_ms,
            ),
        )

    def reports(self, group_id: str) -> list[Report]:
        return [
            Report(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7])
            for r in self._db.execute(
                "SELECT group_id, reporter, sender, message_id, text, reason, verified, at_ms "
                "FROM group_reports WHERE group_id = ? ORDER BY id",
                (group_id,),
            )
        ]

    # --- the signed bytes of group messages (for reports) -------------------------------

    def set_signed(self, rowid: int, signed: bytes) -> None:
        self._db.execute("UPDATE messages SET signed = ? WHERE id = ?", (signed, rowid))

    def signed_of(self, rowid: int) -> bytes | None:
        row = self._db.execute("SELECT signed FROM messages WHERE id = ?", (rowid,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])
