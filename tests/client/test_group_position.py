"""Placing a sender's state of a group against this device's chain (spec §23.22)."""

from __future__ import annotations

import hashlib

import pytest

from obrolan.client.group_position import Position, place


def h(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


CHAIN = [h("create"), h("add carol"), h("remove mallory")]


@pytest.mark.parametrize(
    ("seq", "claimed", "displaced", "expected"),
    [
        (2, h("remove mallory"), set(), Position.SAME),
        (1, h("add carol"), set(), Position.SENDER_BEHIND),
        (0, h("create"), set(), Position.SENDER_BEHIND),
        (3, h("anything"), set(), Position.BEHIND),
        (10**6, h("anything"), set(), Position.BEHIND),
        (2, h("rename"), {h("rename")}, Position.LOST_RACE),
        (2, h("rename"), set(), Position.FORK),
        (1, h("add dave"), set(), Position.FORK),
        (2, h("add carol"), set(), Position.FORK),  # a real hash at the wrong seq
    ],
)
def test_place(seq: int, claimed: bytes, displaced: set[bytes], expected: Position) -> None:
    assert place(seq, claimed, CHAIN, displaced) is expected


def test_an_empty_chain_is_behind_everyone() -> None:
    assert place(0, h("create"), [], set()) is Position.BEHIND
