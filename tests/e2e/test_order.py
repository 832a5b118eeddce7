"""A server that reorders messages does not reorder the conversation (1:1 and groups).

alice's device is behind a malicious shim in front of a real server; the shim
delivers bob's messages 1, 2, 3 as 3, 1, 2. alice's history shows them as bob
wrote them, the late ones marked, in the API, in ``--json`` and in ``obrolan
history``. An honest conversation keeps the order its people took turns in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from obrolan.client import Client
from obrolan.client.models import Message, MessageState
from tests.e2e.conftest import Cli
from tests.support.shim import MaliciousServer

ALICE_BEHIND_SHIM = tuple[MaliciousServer, Client, Client]


def from_bob(envelope: dict[str, Any]) -> bool:
    return envelope["from_user"] == "bob"


def lines(messages: list[Message]) -> list[tuple[str, str, bool]]:
    return [
        (m.sender, m.text, m.arrived_late) for m in messages if m.state is not MessageState.NOTICE
    ]


@pytest.fixture
async def behind_shim(server, profiles: Callable[[str], Path]) -> AsyncIterator[ALICE_BEHIND_SHIM]:  # type: ignore[no-untyped-def]
    """alice (connected through the shim) and bob (straight to the server), who know each other."""
    async with MaliciousServer(server.ws_url) as shim:
        alice = await Client.register(profiles("alice"), shim.url, "alice", None)
        bob = await Client.register(profiles("bob"), server.url, "bob", None)
        alice.accept("bob")
        bob.accept("alice")
        clients = [alice, bob]
        try:
            yield shim, alice, bob
        finally:
            for client in clients:
                await client.close()


async def reopened(client: Client, profile: Path) -> Client:
    """The same device started again (so what waits for it comes as one backlog)."""
    await client.close()
    return await Client.load(profile, None)


async def test_alice_sees_bobs_reordered_messages_in_the_order_bob_wrote_them(
    behind_shim: ALICE_BEHIND_SHIM,
    profiles: Callable[[str], Path],
    cli: Cli,
) -> None:
    """bob's 1, 2, 3 delivered as 3, 1, 2 show as 1, 2, 3 after the earlier turns, 1 and 2 late."""
    shim, alice, bob = behind_shim
    await alice.send("bob", "hi bob")
    await alice.flush(30)
    await bob.sync(60)
    await bob.send("alice", "hi alice")
    await bob.flush(30)
    await alice.sync(60)
    alice = await reopened(alice, profiles("alice"))
    try:
        shim.reorder(from_bob, [2, 0, 1])
        for text in ("one", "two", "three"):
            await bob.send("alice", text)
        await bob.flush(30)
        await alice.sync(60)
        assert shim.reordered == 3
        history = alice.history("bob")
        assert lines(history) == [
            ("alice", "hi bob", False),
            ("bob", "hi alice", False),
            ("bob", "one", True),
            ("bob", "two", True),
            ("bob", "three", False),
        ]
        assert [m.sort_key for m in history] == sorted(m.sort_key for m in history)
        assert [m.counter for m in history[2:]] == [2, 3, 4]  # bob's "hi alice" was his 1
    finally:
        await alice.close()
    shown = cli("history", "bob", "--profile", str(profiles("alice")))
    assert shown.returncode == 0, shown.stderr
    marked = [line for line in shown.stdout.splitlines() if "(arrived late)" in line]
    assert len(marked) == 2 and "bob: one" in marked[0] and "bob: two" in marked[1]
    as_json = cli("history", "bob", "--profile", str(profiles("alice")), "--json").json()
    assert isinstance(as_json, list)
    assert [(m["text"], m["arrived_late"]) for m in as_json][-3:] == [
        ("one", True),
        ("two", True),
        ("three", False),
    ]
    assert [m["sort_key"] for m in as_json] == sorted(m["sort_key"] for m in as_json)


async def test_honest_turns_keep_the_order_people_took_them_in(
    behind_shim: ALICE_BEHIND_SHIM,
) -> None:
    """alice and bob take turns, two messages each time: both histories are those turns in order."""
    _, alice, bob = behind_shim
    expected = []
    for turn in range(3):
        for who, peer, other in ((alice, "bob", bob), (bob, "alice", alice)):
            for n in (1, 2):
                text = f"{who.username} turn {turn}.{n}"
                await who.send(peer, text)
                expected.append((who.username, text, False))
            await who.flush(30)
            await other.sync(60)
    assert lines(alice.history("bob")) == expected
    assert lines(bob.history("alice")) == expected


async def test_alice_sees_bobs_reordered_group_messages_in_the_order_bob_wrote_them(
    behind_shim: ALICE_BEHIND_SHIM,
    profiles: Callable[[str], Path],
) -> None:
    """In a group, bob's 1, 2, 3 delivered as 3, 1, 2 show as 1, 2, 3, 1 and 2 marked late."""
    shim, alice, bob = behind_shim
    view = await alice.groups.create("Arisan", ["bob"])
    group_id = view.group_id
    await alice.flush(30)
    await bob.sync(60)
    await bob.groups.send(group_id, "zero")  # shares bob's session with alice's device
    await bob.flush(30)
    await alice.sync(60)
    await alice.groups.send(group_id, "welcome")
    await alice.flush(30)
    await bob.sync(60)
    alice = await reopened(alice, profiles("alice"))
    try:
        shim.reorder(from_bob, [2, 0, 1])
        for text in ("one", "two", "three"):
            await bob.groups.send(group_id, text)
        await bob.flush(30)
        await alice.sync(60)
        assert shim.reordered == 3
        history = alice.groups.history(group_id)
        assert lines(history) == [
            ("bob", "zero", False),
            ("alice", "welcome", False),
            ("bob", "one", True),
            ("bob", "two", True),
            ("bob", "three", False),
        ]
        assert [m.counter for m in history if m.sender == "bob"] == [1, 2, 3, 4]
        assert lines(bob.groups.history(group_id)) == [
            ("bob", "zero", False),
            ("alice", "welcome", False),
            ("bob", "one", False),
            ("bob", "two", False),
            ("bob", "three", False),
        ]
    finally:
        await alice.close()
