"""Groups whose posts wait: this device is behind another member's, or the two forked.

When a message or key share names a state this device does not hold
(:mod:`obrolan.client.group_position`), the device asks the sender's device for
the missing updates (``group_sync``, §23.9) and holds its own posts in the
group until they arrive and check out: so once any member's message made after
a removal reaches it, it shares nothing more with the removed member, however
long the server withholds the removal itself. A state that differs at a
``seq`` it holds (a fork) is warned of plainly and holds posts until the two
agree. The user may release a hold (a member who lies about its state could
otherwise hold everyone's posts); a new fork holds again. Spec §23.22.

Called inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlcipher3 import dbapi2

from obrolan.client.group_position import Position, place
from obrolan.client.group_store import GroupStore
from obrolan.client.ids import new_id
from obrolan.client.models import Event
from obrolan.client.store import now_ms
from obrolan.crypto.group_state import update_hash
from obrolan.protocol import content

__all__ = ["GroupWatch", "Hold", "Verdict"]

Notice = Callable[[str, str], Event]
"""(group_id, text) → the notice stored in the group's conversation."""
QueueOlm = Callable[[str, content.Content, str | None], None]


@dataclass(frozen=True, slots=True)
class Hold:
    kind: str
    """``behind`` (waiting for updates), ``fork`` or ``released`` (by the user)."""
    seq: int
    hash: bytes
    sender: str
    device: str


@dataclass(frozen=True, slots=True)
class Verdict:
    position: Position
    wait: bool
    """Keep the message until the updates it names arrive (then open it again)."""
    events: list[Event]


class GroupWatch:
    """The ``group_holds`` and ``group_displaced`` rows, and what they decide."""

    def __init__(
        self, db: dbapi2.Connection, rows: GroupStore, queue_olm: QueueOlm, notice: Notice
    ) -> None:
        self._db = db
        self._rows = rows
        self._queue_olm = queue_olm
        self._notice = notice

    def check(
        self, group_id: str, sender: str, device: str, seq: int, claimed: bytes, *, member: bool
    ) -> Verdict:
        """Place the state a message or key share of ``sender``'s ``device`` names. Only a
        member's word holds posts; someone this device does not list as a member (perhaps
        added by an update it lacks) is asked for the updates, and its message waits."""
        chain = self._chain(group_id)
        position = place(seq, claimed, chain, self._displaced(group_id))
        if not member:
            if position is Position.BEHIND:
                self._ask(sender, device, group_id, len(chain) - 1)
            return Verdict(position, position is Position.BEHIND, [])
        held = self.hold_of(group_id)
        events: list[Event] = []
        if position is Position.BEHIND:
            if held is not None and held.kind == "released":
                return Verdict(position, False, [])
            if held is None or (held.kind == "behind" and seq > held.seq):
                self._hold(group_id, Hold("behind", seq, claimed, sender, device))
                self._ask(sender, device, group_id, len(chain) - 1)
            if held is None:
                events.append(
                    self._notice(
                        group_id,
                        f"⚠ {sender}'s device names update {seq} of this group, and this device "
                        f"holds only up to {len(chain) - 1}: it asked for the missing updates, "
                        f"and your posts here wait until they arrive and check out",
                    )
                )
            return Verdict(position, True, events)
        if position is Position.FORK and (held is None or held.kind != "fork"):
            self._hold(group_id, Hold("fork", seq, claimed, sender, device))
            self._ask(sender, device, group_id, seq)  # their update at seq: §23.8 decides
            events.append(self._notice(group_id, _fork_warning(sender, seq)))
        return Verdict(position, False, events)

    def recheck(self, group_id: str) -> list[Event]:
        """After updates were applied: lift, keep or turn the group's hold into a fork."""
        held = self.hold_of(group_id)
        if held is None:
            return []
        position = place(held.seq, held.hash, self._chain(group_id), self._displaced(group_id))
        if position is Position.BEHIND:
            return []
        if position is Position.FORK:
            if held.kind == "fork":
                return []
            self._hold(group_id, Hold("fork", held.seq, held.hash, held.sender, held.device))
            return [self._notice(group_id, _fork_warning(held.sender, held.seq))]
        self._db.execute("DELETE FROM group_holds WHERE group_id = ?", (group_id,))
        if held.kind == "released":
            return []
        what = "the two states agree again" if held.kind == "fork" else "the missing updates came"
        return [self._notice(group_id, f"✓ {what}: your posts in this group go out again")]

    def refusal(self, group_id: str) -> str | None:
        """Why this device may not post in the group now (None: it may)."""
        held = self.hold_of(group_id)
        if held is None or held.kind == "released":
            return None
        if held.kind == "behind":
            return (
                f"this device is waiting for updates of the group that {held.sender}'s device "
                f"named (up to update {held.seq}); run `obrolan sync`, or, if they never come, "
                f"`obrolan group release` to post anyway"
            )
        return (
            f"{held.sender}'s device shows another state of the group (update {held.seq}); "
            f"compare `obrolan group log` with them, then `obrolan group release` to post anyway"
        )

    def release(self, group_id: str) -> bool:
        """The user lets posts go out despite the hold; returns whether there was one."""
        cursor = self._db.execute(
            "UPDATE group_holds SET kind = 'released' WHERE group_id = ? AND kind != 'released'",
            (group_id,),
        )
        return bool(cursor.rowcount > 0)

    def displaced(self, group_id: str, signed_hash: bytes) -> None:
        """Remember an update that lost to another at the same ``seq`` (§23.8)."""
        self._db.execute(
            "INSERT OR IGNORE INTO group_displaced (group_id, hash) VALUES (?, ?)",
            (group_id, signed_hash),
        )

    def hold_of(self, group_id: str) -> Hold | None:
        row = self._db.execute(
            "SELECT kind, seq, hash, sender, sender_device FROM group_holds WHERE group_id = ?",
            (group_id,),
        ).fetchone()
        return None if row is None else Hold(row[0], row[1], bytes(row[2]), row[3], row[4])

    def _hold(self, group_id: str, hold: Hold) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO group_holds "
            "(group_id, kind, seq, hash, sender, sender_device, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (group_id, hold.kind, hold.seq, hold.hash, hold.sender, hold.device, now_ms()),
        )

    def _ask(self, sender: str, device: str, group_id: str, from_seq: int) -> None:
        sync = content.GroupSync(
            message_id=new_id(), sent_at_ms=now_ms(), group_id=group_id, from_seq=from_seq
        )
        self._queue_olm(sender, sync, device)

    def _chain(self, group_id: str) -> list[bytes]:
        return [update_hash(signed) for signed, _ in self._rows.chain(group_id)]

    def _displaced(self, group_id: str) -> set[bytes]:
        return {
            bytes(r[0])
            for r in self._db.execute(
                "SELECT hash FROM group_displaced WHERE group_id = ?", (group_id,)
            )
        }


def _fork_warning(sender: str, seq: int) -> str:
    return (
        f"⚠ {sender}'s device shows another state of this group than this device "
        f"(another update {seq}): the server may be showing members different groups. "
        f"Your posts here are held until the two agree; compare `obrolan group log` "
        f"with {sender}"
    )
