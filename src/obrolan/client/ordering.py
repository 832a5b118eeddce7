"""Where a message goes in its conversation: each sending device's counter order.

The server chooses the order in which envelopes arrive, so showing a conversation
in arrival order would let it reorder what people said. Every message carries
its sending device's counter inside what is encrypted and authenticated
(``Plaintext.counter`` in 1:1 conversations, ``GroupMessage.counter`` in groups;
docs/protocol.md §15.5, §23.12), and the server cannot change it. The rule:

* Each message gets an *arrival* number when it is stored (its row id: later
  arrivals, higher numbers) and a *position*. Its position is its own arrival
  number, unless a message from the same sending device (same conversation,
  account and device) with a higher counter, at most :data:`WINDOW` higher, is
  already shown: then the message **arrived late**, and its position is that of
  the earliest such message in the conversation's order.
* A conversation is shown sorted by (position, counter, arrival).

Messages that share a position are always one device's, so among them the
counters decide, and the message whose own arrival number is the position (it
has the highest counter of them) comes last. Hence: each device's messages are
shown in the order of its counters; a late message appears just before the next
message its sender wrote after it, and is marked; everything else keeps arrival
order. A position never changes once given, so nothing already shown moves.

The window bounds what a sender can do with its own counters: one that jumps
far ahead does not make its next messages sit back in history, before the jump
(they are shown as they come); a server can still only delay a message, and a
message delayed by up to ``WINDOW`` of its sender's events goes back in place.

bob's 1, 2, 3, delivered as 3, 1, 2 after alice's "a"::

    >>> order([("alice", None), ("bob", 3), ("bob", 1), ("bob", 2)])
    [(0, False), (2, True), (3, True), (1, False)]

that is: a, bob 1 (late), bob 2 (late), bob 3. Messages without a counter
(notices, this device's own) are never late and never move.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

__all__ = ["WINDOW", "Placement", "order", "place", "sort_key"]

WINDOW = 1000
"""How far below a shown counter a message may be to be placed before it."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one newly stored message goes."""

    position: int
    arrived_late: bool
    """A message from the same device with a higher counter was already shown."""


def place(arrival: int, counter: int | None, next_shown: int | None) -> Placement:
    """Place a message that arrives now as number ``arrival``.

    Args:
        arrival: its arrival number (the store's row id).
        counter: its sending device's counter, or None (a notice, our own message).
        next_shown: the position of the earliest shown message (in the conversation's
            order) from the same sending device whose counter is above ``counter`` by at
            most :data:`WINDOW`, or None if there is none.
    """
    if counter is None or next_shown is None:
        return Placement(arrival, False)
    return Placement(next_shown, True)


def sort_key(position: int, counter: int | None, arrival: int) -> tuple[int, int, int]:
    """The key a conversation is sorted by (the store's ``ORDER BY``)."""
    return (position, 0 if counter is None else counter, arrival)


def order(arrivals: Sequence[tuple[Hashable, int | None]]) -> list[tuple[int, bool]]:
    """The display order of messages that arrived in this order.

    ``arrivals`` are (sending device, counter) in arrival order; the answer lists
    (index into ``arrivals``, arrived late), as the conversation shows them. The
    store applies :func:`place` one message at a time, with the same result.
    """
    placed: list[tuple[Hashable, int | None, Placement]] = []
    for arrival, (device, counter) in enumerate(arrivals):
        higher = [
            (sort_key(p.position, c, i), p.position)
            for i, (d, c, p) in enumerate(placed)
            if d == device
            and c is not None
            and counter is not None
            and counter < c <= counter + WINDOW
        ]
        placed.append(
            (device, counter, place(arrival, counter, min(higher)[1] if higher else None))
        )
    ranked = sorted(
        range(len(placed)), key=lambda i: sort_key(placed[i][2].position, placed[i][1], i)
    )
    return [(i, placed[i][2].arrived_late) for i in ranked]
