"""A newly linked device knows its account's groups at once, and misses no message.

The approving device sends the new device every group's chain at approval
(spec §23.8), not at its own next sync. A group message that reaches the new
device before that chain (or before its key) waits and is shown once the chain
is in (§23.16 step 6). Real server; the new tablet sits behind a shim that
holds back the approving laptop's envelopes where the test says.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from obrolan.client import Client
from obrolan.client.enrolment import LinkCode
from obrolan.client.models import MessageState
from tests.support.shim import MaliciousServer


def texts(client: Client, group_id: str) -> list[str]:
    return [m.text for m in client.groups.history(group_id) if m.state is not MessageState.NOTICE]


def notices(client: Client, group_id: str) -> list[str]:
    return [m.text for m in client.groups.history(group_id) if m.state is MessageState.NOTICE]


async def link_via(url: str, profile: Path, existing: Client) -> Client:
    """A new device of ``existing``'s account at ``url``, approved in process."""
    codes: asyncio.Queue[LinkCode] = asyncio.Queue()
    linking = asyncio.create_task(
        Client.link(profile, url, existing.username, None, codes.put_nowait, device_name="tablet")
    )
    await existing.approve(str(await asyncio.wait_for(codes.get(), 15)))
    return await asyncio.wait_for(linking, 15)


@pytest.fixture
async def pair(
    server, profiles: Callable[[str], Path]
) -> AsyncIterator[tuple[Client, Client, str]]:  # type: ignore[no-untyped-def]
    """alice's group with bob; both have synced."""
    alice = await Client.register(profiles("alice"), server.url, "alice", None)
    bob = await Client.register(profiles("bob"), server.url, "bob", None)
    try:
        view = await alice.groups.create("Club", ["bob"])
        for _ in range(2):
            for client in (alice, bob):
                await client.flush(30)
                await client.sync(60)
        yield alice, bob, view.group_id
    finally:
        await alice.close()
        await bob.close()


async def test_approval_sends_the_groups_to_the_new_device_at_once(server, profiles, pair) -> None:  # type: ignore[no-untyped-def]
    _, bob, group_id = pair
    codes: asyncio.Queue[LinkCode] = asyncio.Queue()
    linking = asyncio.create_task(
        Client.link(profiles("tablet"), server.url, "bob", None, codes.put_nowait)
    )
    await bob.approve(str(await asyncio.wait_for(codes.get(), 15)))
    await bob.close()  # as `obrolan devices approve` does: no sync after approving
    tablet = await asyncio.wait_for(linking, 15)
    try:
        await tablet.sync(60)
        assert sorted(tablet.groups.view(group_id).members) == ["alice", "bob"]
    finally:
        await tablet.close()


async def test_a_group_message_before_its_chain_waits_for_it(server, profiles, pair) -> None:  # type: ignore[no-untyped-def]
    alice, bob, group_id = pair
    async with MaliciousServer(server.ws_url) as shim:
        let_through: list[str] = []

        def chains(envelope: dict[str, Any]) -> bool:
            """bob's chain, and alice's answer to the tablet's request for it (her key
            share, the first, passes)."""
            sealed = json.loads(base64.b64decode(envelope["ciphertext"]))
            if envelope["from_user"] == "alice" and "group_session" not in sealed:
                if not let_through:
                    let_through.append(envelope["envelope_id"])
                    return False
                return True
            return envelope["from_user"] == "bob"

        shim.withhold = chains
        tablet = await link_via(shim.url, profiles("tablet"), bob)
        try:
            await alice.sync(60)  # a new connection: alice reads bob's list again
            await alice.groups.send(group_id, "hello bob's tablet")
            await alice.flush(30)
            await tablet.sync(60)
            await alice.sync(60)  # she answers the tablet's group_sync (held back too)
            await tablet.sync(60)
            assert tablet.groups.all() == []  # no chain yet
            assert not any("could not be read" in n for n in notices(tablet, "alice"))
            shim.withhold = None
            assert await shim.deliver_withheld() > 0
            await tablet.sync(60)
            assert texts(tablet, group_id) == ["hello bob's tablet"]
        finally:
            await tablet.close()
