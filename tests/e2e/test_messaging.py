"""Everyday messaging between two real clients through a real server."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from obrolan.client import Client, MessageState
from obrolan.client.vault import open_vault
from obrolan.errors import ConfigError
from tests.e2e.conftest import Cli, mailbox_rows
from tests.support.server import ServerProcess


async def _exchange(sender: Client, receiver: Client) -> None:
    """Let everything the sender queued reach the receiver."""
    await sender.flush(timeout=30)
    await receiver.sync()


async def test_reply_reaction_edit_and_delete_reach_the_other_side(
    pair: tuple[Client, Client],
    cli: Cli,
    profiles,  # type: ignore[no-untyped-def]
) -> None:
    """Replies quote, reactions replace, edits keep earlier text, deletes blank the message."""
    alice, bob = pair
    first = await alice.send("bob", "first")
    await _exchange(alice, bob)
    await bob.send("alice", "a reply", reply_to=first.message_id)
    await bob.react(bob.resolve(first.message_id), "👍")
    await bob.react(bob.resolve(first.message_id), "❤️")  # one per person: replaces 👍
    await _exchange(bob, alice)

    (mine, reply) = alice.history("bob")
    assert reply.reply_to == first.message_id and reply.text == "a reply"
    assert mine.reactions == {"bob": "❤️"}

    await alice.edit(mine, "first, edited")
    await _exchange(alice, bob)
    seen = bob.resolve(first.message_id)
    assert (seen.text, seen.edited, seen.earlier_texts) == ("first, edited", True, ("first",))

    await alice.delete(alice.resolve(first.message_id))
    await _exchange(alice, bob)
    gone = bob.resolve(first.message_id)
    assert gone.deleted and gone.text == "" and gone.earlier_texts == () and gone.reactions == {}

    with pytest.raises(ConfigError, match="your own"):
        await bob.delete(bob.resolve(first.message_id))  # not bob's message

    await bob.close()  # the CLI opens the same profile next
    history = cli("history", "alice", "--json", "--profile", str(profiles("bob"))).json()
    assert [(m["text"], m["deleted"], m["reply_to"]) for m in history] == [
        ("", True, None),
        ("a reply", False, first.message_id),
    ]


async def test_receipts_report_delivered_then_read_and_can_be_turned_off(
    pair: tuple[Client, Client],
) -> None:
    """alice sees "delivered" when bob's device stores her message, "read" when he shows it."""
    alice, bob = pair
    sent = await alice.send("bob", "did you get this?")
    await _exchange(alice, bob)
    await alice.sync()
    assert alice.resolve(sent.message_id).receipt == "delivered"

    assert await bob.mark_read("alice") == 1
    await _exchange(bob, alice)
    assert alice.resolve(sent.message_id).receipt == "read"

    bob.set_receipts(False)
    quiet = await alice.send("bob", "and this?")
    await _exchange(alice, bob)
    await bob.mark_read("alice")
    await _exchange(bob, alice)
    assert alice.resolve(quiet.message_id).receipt is None


async def test_typing_indicator_reaches_a_listening_client(pair: tuple[Client, Client]) -> None:
    """Typing is pushed live to a connected peer and never stored as a message."""
    alice, bob = pair
    events = bob.events()
    await bob.sync()
    await alice.sync()
    assert await alice.typing("bob", True)
    event = await asyncio.wait_for(anext(events), 30)
    assert (event.kind, event.peer, event.active) == ("typing", "alice", True)
    assert bob.history("alice") == []


async def test_disappearing_messages_vanish_from_both_stores_and_search(
    pair: tuple[Client, Client],
    profiles,  # type: ignore[no-untyped-def]
) -> None:
    """After the timer the message is gone from both SQLCipher stores and their search index."""
    alice, bob = pair
    await alice.set_timer("bob", 2)
    await _exchange(alice, bob)
    assert bob.timer("alice") == 2
    await alice.send("bob", "vanishingword soon")
    await _exchange(alice, bob)
    assert [m.text for m in bob.history("alice") if m.state is MessageState.RECEIVED] == [
        "vanishingword soon"
    ]

    await asyncio.sleep(2.5)  # the timer itself; what is checked is absence, not timing
    for client, name in ((alice, "alice"), (bob, "bob")):
        client.expire()
        vault = open_vault(profiles(name), None)  # read the store file directly
        try:
            db = vault.connection
            rows = db.execute("SELECT COUNT(*) FROM messages WHERE text LIKE '%vanishingword%'")
            hits = db.execute(
                "SELECT COUNT(*) FROM messages_fts WHERE messages_fts MATCH 'vanishingword'"
            )
            assert rows.fetchone()[0] == 0 and hits.fetchone()[0] == 0, name
        finally:
            vault.close()


async def test_stranger_waits_in_requests_and_blocked_user_is_dropped(
    server: ServerProcess,
    pair: tuple[Client, Client],
    profiles,  # type: ignore[no-untyped-def]
) -> None:
    """A first message from a stranger is a request; after a block nothing from them appears."""
    _, bob = pair
    carol = await Client.register(profiles("carol"), server.url, "carol", None)
    try:
        await carol.send("bob", "hello, we have not met")
        await carol.flush(timeout=30)
        assert await bob.sync() == []
        assert bob.requests() == ["carol"]
        bob.accept("carol")
        assert [m.text for m in bob.history("carol")] == ["hello, we have not met"]

        bob.block("carol")
        await carol.send("bob", "are you ignoring me?")
        await carol.flush(timeout=30)
        assert await bob.sync() == []
        assert [m.text for m in bob.history("carol")] == ["hello, we have not met"]
        async with asyncio.timeout(15):  # dropped, yet acked: the server deletes it
            while mailbox_rows(Path(server.data_dir), to="bob") != 0:
                await asyncio.sleep(0.05)
    finally:
        await carol.close()


async def test_withheld_envelope_shows_a_gap(
    server: ServerProcess, pair: tuple[Client, Client]
) -> None:
    """The server drops one envelope (a hostile operator): bob is told a message may be missing."""
    alice, bob = pair
    bob.set_receipts(False)
    for text in ("one", "two", "three"):
        await alice.send("bob", text)
    await alice.flush(timeout=30)
    server.stop()
    with sqlite3.connect(Path(server.data_dir) / "obrolan.db") as db:
        (second,) = db.execute("SELECT seq FROM mailbox ORDER BY seq LIMIT 1 OFFSET 1").fetchone()
        db.execute("DELETE FROM mailbox WHERE seq = ?", (second,))
    server.start()

    received = await bob.sync()
    texts = [m.text for m in received if m.state is MessageState.RECEIVED]
    notices = [m.text for m in received if m.state is MessageState.NOTICE]
    assert texts == ["one", "three"]
    assert len(notices) == 1 and "may be missing" in notices[0]
    assert await bob.sync() == []  # the gap is shown once


async def test_text_may_be_empty_only_with_an_attachment(
    pair: tuple[Client, Client], tmp_path: Path
) -> None:
    """§15.6: a file needs no caption (text ""); a message with neither is refused at once."""
    alice, bob = pair
    with pytest.raises(ConfigError, match="empty"):
        await alice.send("bob", "")
    assert alice.history("bob") == []  # nothing queued
    await bob.sync()  # bob's devices are published
    photo = tmp_path / "photo.bin"
    photo.write_bytes(b"not really a photo")
    await alice.send_file("bob", photo)
    await alice.flush(timeout=30)
    (arrived,) = await bob.sync()
    assert arrived.text == "" and arrived.attachment is not None
    assert arrived.attachment["size"] == len(b"not really a photo")  # the file's, not the blob's
