"""Where a sender's state of a group stands against this device's: pure comparison.

Every group message and key share names the sender's state: the ``seq`` of the
last update its device applied and that update's hash (``state_seq``,
``state_hash``, spec §23.22). A server that withholds an update from some
members, or shows two members two different updates at the same ``seq``, is
caught here, once any message made under the other state arrives.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from enum import Enum

__all__ = ["Position", "place"]


class Position(Enum):
    SAME = "same"
    """The sender's state is this device's."""
    SENDER_BEHIND = "sender_behind"
    """The sender had not yet applied this device's later updates: its state is an
    earlier one of this device's chain (a message in flight while an update was)."""
    BEHIND = "behind"
    """The sender applied updates this device does not hold: ask for them, hold posts."""
    LOST_RACE = "lost_race"
    """The sender's last update is one this device saw lose to another at the same
    ``seq`` (§23.8): the sender will drop it when the winner reaches it."""
    FORK = "fork"
    """Another update at a ``seq`` this device holds, never seen here: two states."""


def place(
    claimed_seq: int,
    claimed_hash: bytes,
    chain: Sequence[bytes],
    displaced: Container[bytes],
) -> Position:
    """The sender's claimed state against this device's ``chain`` (the hash of each
    update, index = ``seq``) and the hashes of updates it saw displaced."""
    if claimed_seq >= len(chain):
        return Position.BEHIND
    if chain[claimed_seq] == claimed_hash:
        return Position.SAME if claimed_seq == len(chain) - 1 else Position.SENDER_BEHIND
    if claimed_hash in displaced:
        return Position.LOST_RACE
    return Position.FORK
