"""The order of a conversation: each sending device's counters, whatever the arrival order.

The pure rule (obrolan.client.ordering) first, then the same rule applied by the
real store (a SQLCipher profile, no sockets) as messages arrive one by one.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from obrolan.client import store_schema
from obrolan.client.conversation import Conversations
from obrolan.client.ids import new_id
from obrolan.client.models import MessageState
from obrolan.client.ordering import WINDOW, order, place, sort_key
from obrolan.client.store import Store, now_ms
from obrolan.client.vault import create_vault
from obrolan.protocol import content

# --- the pure rule -----------------------------------------------------------------------------


def test_order_shows_bobs_three_reordered_messages_in_his_order() -> None:
    """bob's 1, 2, 3 delivered as 3, 1, 2 after alice's message show as 1, 2, 3; 1 and 2 late."""
    assert order([("alice", None), ("bob", 3), ("bob", 1), ("bob", 2)]) == [
        (0, False),
        (2, True),
        (3, True),
        (1, False),
    ]


def test_order_keeps_an_honest_interleaved_conversation_in_arrival_order() -> None:
    """Two people taking turns, counters in order: nothing moves, nothing is late."""
    arrivals = [("alice", 1), ("bob", 1), ("alice", 2), ("bob", 2), ("alice", 3), ("bob", 3)]
    assert order(arrivals) == [(i, False) for i in range(6)]


def test_order_puts_a_withheld_message_just_before_its_senders_next_one() -> None:
    """bob 2 is held back while alice talks: it goes just before bob 3, after alice's lines."""
    arrivals = [
        ("bob", 1),
        ("alice", None),
        ("alice", None),
        ("bob", 3),
        ("alice", None),
        ("bob", 2),
    ]
    assert order(arrivals) == [
        (0, False),
        (1, False),
        (2, False),
        (5, True),
        (3, False),
        (4, False),
    ]


def test_order_tracks_each_sending_device_apart() -> None:
    """Two devices of one account count apart: a late message of one does not move the other's."""
    arrivals = [("phone", 2), ("tablet", 1), ("phone", 1), ("tablet", 2)]
    assert order(arrivals) == [(2, True), (0, False), (1, False), (3, False)]


def test_order_of_a_fully_reversed_device_is_its_counter_order() -> None:
    """5, 4, 3, 2, 1 arriving show as 1 to 5, all but 5 marked late."""
    shown = order([("bob", c) for c in (5, 4, 3, 2, 1)])
    assert shown == [(4, True), (3, True), (2, True), (1, True), (0, False)]


def test_order_shows_every_device_in_counter_order_for_any_arrival_order() -> None:
    """Seeded shuffles of three devices' counters: each device always shows 1, 2, 3, …"""
    rng = random.Random(9)
    for _ in range(200):
        arrivals = [(d, c) for d in ("a", "b", "c") for c in range(1, rng.randint(1, 6) + 1)]
        rng.shuffle(arrivals)
        arrivals.insert(rng.randint(0, len(arrivals)), ("notice", None))
        shown = [arrivals[i] for i, _ in order(arrivals)]
        for device in ("a", "b", "c"):
            counters = [c for d, c in shown if d == device]
            assert counters == sorted(counters), (arrivals, shown)


def test_order_does_not_bury_a_senders_messages_behind_a_counter_far_ahead() -> None:
    """A sender who jumps to a huge counter cannot make its next messages (1, 2) sit back in
    history before it: only a counter at most WINDOW below a shown one is placed late."""
    arrivals = [("mallory", 10**9), ("alice", None), ("mallory", 1), ("mallory", 2)]
    assert order(arrivals) == [(0, False), (1, False), (2, False), (3, False)]
    edge = [("bob", WINDOW + 2), ("bob", 1), ("bob", 2)]  # 2 is within WINDOW, 1 is not
    assert order(edge) == [(2, True), (0, False), (1, False)]


def test_place_marks_late_only_below_a_shown_counter() -> None:
    """A message with no higher counter shown, or without a counter, keeps its arrival."""
    assert place(7, 3, None).position == 7 and not place(7, 3, None).arrived_late
    assert place(7, None, 2).position == 7 and not place(7, None, 2).arrived_late
    assert (place(7, 1, 4).position, place(7, 1, 4).arrived_late) == (4, True)
    assert sort_key(4, None, 4) < sort_key(4, 1, 7)


# --- the store applies the same rule -------------------------------------------------------------


@pytest.fixture
def alice(tmp_path: Path) -> Iterator[tuple[Store, Conversations]]:
    """alice's device: a real store, with bob accepted."""
    vault = create_vault(tmp_path / "alice", None)
    store = Store(vault)
    rules = Conversations(store, "alice", tmp_path / "alice" / "attachments")
    with store.transaction():
        store.open_conversation("bob", accepted=True)
    yield store, rules
    vault.close()


def _arrive(
    store: Store, rules: Conversations, device: str, counter: int | None, text: str
) -> None:
    with store.transaction():
        if counter is None:
            rules.notice("bob", text)
            return
        rules.receive(
            content.Plaintext(
                sender="bob",
                sender_device=device,
                recipient="alice",
                recipient_device="laptop",
                content=content.Text(message_id=new_id(), sent_at_ms=now_ms(), text=text),
                counter=counter,
            ),
            None,
        )


def test_store_history_shows_bobs_reordered_messages_in_his_order(
    alice: tuple[Store, Conversations],
) -> None:
    """Delivered 3, 1, 2: history is 1, 2, 3, with 1 and 2 marked as arrived late."""
    store, rules = alice
    for counter in (3, 1, 2):
        _arrive(store, rules, "phone", counter, f"bob {counter}")
    history = store.history("bob")
    assert [(m.text, m.arrived_late, m.counter) for m in history] == [
        ("bob 1", True, 1),
        ("bob 2", True, 2),
        ("bob 3", False, 3),
    ]
    assert [m.sort_key for m in history] == sorted(m.sort_key for m in history)
    assert [m.text for m in store.history("bob", limit=2)] == ["bob 2", "bob 3"]
    assert history[0].as_json()["arrived_late"] is True
    assert history[0].as_json()["sort_key"] == list(history[0].sort_key)


def test_store_history_is_the_pure_rules_order_for_any_arrival_order(
    alice: tuple[Store, Conversations],
) -> None:
    """Seeded shuffles of two devices' messages and notices: the store shows what order() says."""
    store, rules = alice
    rng = random.Random(4)
    arrivals: list[tuple[str, int | None]] = [
        (d, c) for d in ("phone", "tablet") for c in range(1, 7)
    ]
    rng.shuffle(arrivals)
    for spot in (3, 8):
        arrivals.insert(spot, ("notice", None))
    for index, (device, counter) in enumerate(arrivals):
        _arrive(store, rules, device, counter, str(index))
    expected = [(str(i), late) for i, late in order(arrivals)]
    assert [(m.text, m.arrived_late) for m in store.history("bob")] == expected
    assert all(
        m.state in (MessageState.RECEIVED, MessageState.NOTICE) for m in store.history("bob")
    )


def test_store_migrates_a_schema_4_profile_keeping_its_arrival_order(tmp_path: Path) -> None:
    """A profile made before ordering (schema 4) opens at schema 5: old messages keep their
    order, and a late arrival after the upgrade is placed among them by its counter."""
    vault = create_vault(tmp_path / "old", None)
    db = vault.connection
    with vault.transaction():
        for version in range(1, 5):
            for statement in store_schema.MIGRATIONS[version]:
                db.execute(statement)
        db.execute("PRAGMA user_version = 4")
        for counter in (1, 3):
            db.execute(
                "INSERT INTO messages (message_id, peer, sender, sender_device, outgoing, text, "
                "sent_at_ms, state, counter) VALUES (?, 'bob', 'bob', 'phone', 0, ?, 0, "
                "'received', ?)",
                (new_id(), f"bob {counter}", counter),
            )
    store = Store(vault)
    assert db.execute("PRAGMA user_version").fetchone() == (store_schema.SCHEMA_VERSION,)
    rules = Conversations(store, "alice", tmp_path / "old" / "attachments")
    _arrive(store, rules, "phone", 2, "bob 2")
    assert [(m.text, m.arrived_late) for m in store.history("bob")] == [
        ("bob 1", False),
        ("bob 2", True),
        ("bob 3", False),
    ]
    vault.close()
