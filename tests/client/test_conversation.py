"""The conversation rules on a real SQLCipher store: who may change what, and gaps."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from obrolan.client.client import Client
from obrolan.client.conversation import JOINED_LATE, Conversations
from obrolan.client.ids import new_id
from obrolan.client.models import MessageState
from obrolan.client.store import MAX_TRACKED_GAP, PROCESSED_KEEP_MS, Store, now_ms
from obrolan.client.vault import create_vault
from obrolan.crypto.device import DeviceIdentity
from obrolan.protocol import content

HOUR_MS = 3600 * 1000


@pytest.fixture
def bob(tmp_path: Path) -> Iterator[tuple[Store, Conversations]]:
    """bob's device: a real store, with alice already accepted."""
    vault = create_vault(tmp_path / "bob", None)
    store = Store(vault)
    rules = Conversations(store, "bob", tmp_path / "bob" / "attachments")
    with store.transaction():
        store.open_conversation("alice", accepted=True)
    yield store, rules
    vault.close()


def _from(sender: str, body: content.Content, counter: int | None = None) -> content.Plaintext:
    return content.Plaintext(
        sender=sender,
        sender_device="d1",
        recipient="bob",
        recipient_device="d2",
        content=body,
        counter=counter,
    )


def _text(text: str, sent_at_ms: int | None = None) -> content.Text:
    return content.Text(message_id=new_id(), sent_at_ms=sent_at_ms or now_ms(), text=text)


def _receive(store: Store, rules: Conversations, plaintext: content.Plaintext) -> list[str]:
    with store.transaction():
        return [event.kind for event in rules.receive(plaintext, None)]


def test_conversation_ignores_edit_and_delete_of_someone_elses_message(
    bob: tuple[Store, Conversations],
) -> None:
    """carol cannot edit or delete alice's message, even inside a conversation they share."""
    store, rules = bob
    original = _text("alice wrote this")
    _receive(store, rules, _from("alice", original))
    # A forged edit arrives in carol's conversation, targeting alice's message id.
    forged_edit = content.Edit(
        message_id=new_id(), sent_at_ms=now_ms(), target=original.message_id, text="forged"
    )
    assert _receive(store, rules, _from("carol", forged_edit)) == []
    forged_delete = content.Delete(
        message_id=new_id(), sent_at_ms=now_ms(), target=original.message_id
    )
    assert _receive(store, rules, _from("carol", forged_delete)) == []
    (message,) = store.history("alice")
    assert (message.text, message.deleted, message.edited) == ("alice wrote this", False, False)


def test_conversation_honours_delete_only_within_the_window(
    bob: tuple[Store, Conversations],
) -> None:
    """A delete sent 49 hours after its message is ignored; one sent after 1 hour applies."""
    store, rules = bob
    old = _text("old", sent_at_ms=now_ms() - 50 * HOUR_MS)
    recent = _text("recent", sent_at_ms=now_ms() - HOUR_MS)
    for body in (old, recent):
        _receive(store, rules, _from("alice", body))
    for target in (old, recent):
        delete = content.Delete(message_id=new_id(), sent_at_ms=now_ms(), target=target.message_id)
        _receive(store, rules, _from("alice", delete))
    assert [(m.text, m.deleted) for m in store.history("alice")] == [
        ("old", False),
        ("", True),
    ]


def test_conversation_keeps_one_reaction_per_person(bob: tuple[Store, Conversations]) -> None:
    """Each person has at most one reaction on a message; "" withdraws it."""
    store, rules = bob
    body = _text("react to me")
    _receive(store, rules, _from("alice", body))
    for emoji in ("👍", "😂"):
        reaction = content.Reaction(
            message_id=new_id(), sent_at_ms=now_ms(), target=body.message_id, emoji=emoji
        )
        _receive(store, rules, _from("alice", reaction))
    with store.transaction():
        row = store.find("alice", body.message_id)
        assert row is not None
        rules.react(row[0], "🎉")
    (message,) = store.history("alice")
    assert message.reactions == {"alice": "😂", "bob": "🎉"}
    withdraw = content.Reaction(
        message_id=new_id(), sent_at_ms=now_ms(), target=body.message_id, emoji=""
    )
    _receive(store, rules, _from("alice", withdraw))
    assert store.history("alice")[0].reactions == {"bob": "🎉"}


def test_conversation_reports_a_gap_once_and_a_late_arrival_fills_it(
    bob: tuple[Store, Conversations],
) -> None:
    """Counters 1 and 3 arrive: one gap notice; counter 2 arriving later closes the gap."""
    store, rules = bob
    _receive(store, rules, _from("alice", _text("one"), counter=1))
    _receive(store, rules, _from("alice", _text("three"), counter=3))
    with store.transaction():
        (gap,) = rules.gaps()
        assert rules.gaps() == []
    assert gap.message is not None and gap.message.state is MessageState.NOTICE
    _receive(store, rules, _from("alice", _text("two"), counter=2))
    assert store.counters_with_gaps() == []


def test_conversation_tracks_a_bounded_gap_below_a_huge_counter(
    bob: tuple[Store, Conversations],
) -> None:
    """A sender's counter far ahead records at most MAX_TRACKED_GAP missing numbers (not one
    per skipped number, which a hostile counter would make billions of), and still shows."""
    store, rules = bob
    _receive(store, rules, _from("alice", _text("one"), counter=1))
    _receive(store, rules, _from("alice", _text("far"), counter=MAX_TRACKED_GAP + 5000))
    (counters,) = store.counters_with_gaps()
    assert len(counters.missing) == MAX_TRACKED_GAP
    assert counters.missing[-1] == MAX_TRACKED_GAP + 4999
    assert [m.text for m in store.history("alice")] == ["one", "far"]


def test_conversation_drops_everything_from_a_blocked_user(
    bob: tuple[Store, Conversations],
) -> None:
    """A blocked user's messages are not stored at all."""
    store, rules = bob
    with store.transaction():
        store.open_conversation("mallory", accepted=False)
        store.set_conversation("mallory", blocked=True)
    assert _receive(store, rules, _from("mallory", _text("let me in"))) == []
    assert store.history("mallory") == []


async def test_client_forgets_processed_ids_older_than_twice_the_ttl(tmp_path: Path) -> None:
    """Dedupe ids are kept 60 days (twice the server's TTL), then dropped when a profile opens."""
    vault = create_vault(tmp_path / "p", None)
    store = Store(vault)
    with store.transaction():
        for key, value in (
            ("username", "bob"),
            ("device_id", "d2"),
            ("server_url", "http://127.0.0.1:1"),
        ):
            store.set_meta(key, value)
        store.set_meta("account", DeviceIdentity.create().pickle(vault.pickle_key))
        store.set_meta("account_secret", base64.b64encode(bytes(32)).decode())
        store.set_meta("data_key", base64.b64encode(bytes(32)).decode())
        vault.connection.executemany(
            "INSERT INTO processed (envelope_id, at_ms) VALUES (?, ?)",
            [
                ("old-envelope-id-000001", now_ms() - PROCESSED_KEEP_MS - 1000),
                ("new-envelope-id-000001", now_ms()),
            ],
        )
    vault.close()
    client = await Client.load(tmp_path / "p", None)
    try:
        assert not client._store.is_processed("old-envelope-id-000001")
        assert client._store.is_processed("new-envelope-id-000001")
    finally:
        await client.close()


def test_counters_are_per_sending_device(bob: tuple[Store, Conversations]) -> None:
    """Two devices of alice number their events on their own: no false gap between them."""
    store, rules = bob
    for device in ("laptop", "phone"):
        for counter in (1, 2):
            plaintext = content.Plaintext(
                sender="alice",
                sender_device=device,
                recipient="bob",
                recipient_device="d2",
                content=_text(f"{device} {counter}"),
                counter=counter,
            )
            _receive(store, rules, plaintext)
    with store.transaction():
        assert rules.gaps() == []
    assert len(store.history("alice")) == 4


def test_a_sent_transcript_from_our_other_device_is_our_message(
    bob: tuple[Store, Conversations],
) -> None:
    """A copy of what bob's other device sent to carol shows as bob's own, sent message."""
    store, rules = bob
    copy = content.Plaintext(
        sender="bob",
        sender_device="bob-phone",
        recipient="bob",
        recipient_device="d2",
        content=_text("sent from my phone"),
        counter=1,
        sent_to="carol",
    )
    _receive(store, rules, copy)
    (message,) = store.history("carol")
    assert message.outgoing and message.sender == "bob" and message.state is MessageState.SENT
    conversation = store.conversation("carol")
    assert conversation is not None and conversation.accepted


def test_a_device_that_joined_late_counts_from_the_first_counter_it_sees(
    bob: tuple[Store, Conversations],
) -> None:
    """Linked or recovered: alice's 41st message is the first this device sees, not a gap;
    a gap after it is still one."""
    store, _ = bob
    with store.transaction():
        store.set_meta(JOINED_LATE, "1")
    rules = Conversations(store, "bob", Path("/nonexistent"))
    _receive(store, rules, _from("alice", _text("forty-one"), counter=41))
    with store.transaction():
        assert rules.gaps() == []
    _receive(store, rules, _from("alice", _text("forty-three"), counter=43))
    with store.transaction():
        (gap,) = rules.gaps()
    assert gap.message is not None and "1 message(s) from alice" in gap.message.text
