"""Megolm replays: another ciphertext at a (session, index) already opened is not shown.

mallory's device sends a message, then goes back to its session as it was
before (a device restored from a backup, or a member who does it on purpose)
and sends another at the same index. A server that delivers one ciphertext
twice, under a new envelope id, is a redelivery and changes nothing.
Real server, real clients; bob sits behind the shim.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from obrolan.client import Client
from obrolan.client.models import MessageState
from tests.support.shim import MaliciousServer


def texts(client: Client, group_id: str) -> list[str]:
    return [m.text for m in client.groups.history(group_id) if m.state is not MessageState.NOTICE]


def notices(client: Client, group_id: str) -> list[str]:
    return [m.text for m in client.groups.history(group_id) if m.state is MessageState.NOTICE]


async def everyone_syncs(clients: list[Client]) -> None:
    for _ in range(2):
        for client in clients:
            await client.flush(30)
        for client in clients:
            await client.sync(60)


@pytest.fixture
async def club(
    server, profiles: Callable[[str], Path]
) -> AsyncIterator[tuple[MaliciousServer, dict[str, Client], str]]:  # type: ignore[no-untyped-def]
    clients: dict[str, Client] = {}
    async with MaliciousServer(server.ws_url) as shim:
        try:
            for name in ("alice", "mallory"):
                clients[name] = await Client.register(profiles(name), server.url, name, None)
            clients["bob"] = await Client.register(profiles("bob"), shim.url, "bob", None)
            view = await clients["alice"].groups.create("Club", ["bob", "mallory"])
            await everyone_syncs(list(clients.values()))
            yield shim, clients, view.group_id
        finally:
            for client in clients.values():
                await client.close()


async def test_a_second_ciphertext_at_an_index_already_opened_is_flagged(club) -> None:  # type: ignore[no-untyped-def]
    _, c, group_id = club
    mallory = c["mallory"]
    await mallory.groups.send(group_id, "warm up")  # the session is shared; index 1 is next
    await everyone_syncs(list(c.values()))
    rows = mallory.groups._rows
    before = rows.outbound(group_id)
    assert before is not None
    await mallory.groups.send(group_id, "pay the dues to alice")
    with mallory._store.transaction():  # back to the session as it was: index 1 again
        rows.save_outbound(
            group_id,
            before.pickle,
            messages=before.messages,
            shared_with=before.shared_with,
            created_ms=before.created_ms,
        )
    await mallory.groups.send(group_id, "pay the dues to mallory")
    await everyone_syncs(list(c.values()))
    for name in ("alice", "bob"):
        shown = texts(c[name], group_id)
        assert "pay the dues to alice" in shown, name
        assert "pay the dues to mallory" not in shown, name
        assert any("a replay" in n for n in notices(c[name], group_id)), name


async def test_the_same_ciphertext_delivered_again_is_dropped_silently(club) -> None:  # type: ignore[no-untyped-def]
    shim, c, group_id = club
    bob = c["bob"]

    def twice(frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("type") != "deliver":
            return frame
        copies = [
            {**e, "envelope_id": secrets.token_urlsafe(16)}
            for e in frame["envelopes"]
            if e["from_user"] == "alice"
        ]
        return {**frame, "envelopes": frame["envelopes"] + copies}

    await c["alice"].groups.send(group_id, "only once")
    await c["alice"].flush(30)
    shim.rewrite = twice
    await bob.sync(60)
    shim.rewrite = lambda frame: frame
    assert texts(bob, group_id).count("only once") == 1
    assert not any("replay" in n or "could not be read" in n for n in notices(bob, group_id))
