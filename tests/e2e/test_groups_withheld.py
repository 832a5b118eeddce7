"""A server that withholds group updates, or shows members two states, is caught.

Every group message and key share names its sender's state (seq and hash of
its last update, spec §23.22). bob sits behind a shim that withholds what the
test says: the update that removes mallory, the answers to bob's requests,
another admin's concurrent update. Real server, real clients; the shim only
drops and later delivers whole envelopes, as a hostile relay can.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from obrolan.client import Client
from obrolan.client.groups import GroupError
from obrolan.client.models import MessageState
from obrolan.protocol import groups
from tests.support.shim import MaliciousServer


def is_olm(envelope: dict[str, Any]) -> bool:
    """An Olm envelope (updates, keys, syncs); a group message's has ``group_session``."""
    return "group_session" not in json.loads(base64.b64decode(envelope["ciphertext"]))


def texts(client: Client, group_id: str) -> list[str]:
    return [m.text for m in client.groups.history(group_id) if m.state is not MessageState.NOTICE]


def notices(client: Client, group_id: str) -> list[str]:
    return [m.text for m in client.groups.history(group_id) if m.state is MessageState.NOTICE]


def recipients_of_posts(shim: MaliciousServer) -> set[str]:
    """Everyone bob's group messages were uploaded to, through the shim."""
    return {
        r["to_user"]
        for frame in shim.sent_by_clients
        if frame.get("type") == "send_multi"
        for r in frame["envelope"]["recipients"]
    }


class Club:
    def __init__(self, shim: MaliciousServer, clients: dict[str, Client], group_id: str) -> None:
        self.shim, self.clients, self.group_id = shim, clients, group_id

    def __getitem__(self, name: str) -> Client:
        return self.clients[name]

    async def sync(self, *names: str) -> None:
        for _ in range(2):
            for name in names:
                await self.clients[name].flush(30)
            for name in names:
                await self.clients[name].sync(60)


@pytest.fixture
async def club(server, profiles: Callable[[str], Path]) -> AsyncIterator[Club]:  # type: ignore[no-untyped-def]
    """alice owns a group of bob (behind the shim), carol, dave (an admin) and mallory;
    everyone has posted once, so every member holds every other's session."""
    clients: dict[str, Client] = {}
    async with MaliciousServer(server.ws_url) as shim:
        try:
            for name in ("alice", "carol", "dave", "mallory"):
                clients[name] = await Client.register(profiles(name), server.url, name, None)
            clients["bob"] = await Client.register(profiles("bob"), shim.url, "bob", None)
            alice = clients["alice"]
            view = await alice.groups.create("Club", ["bob", "carol", "dave", "mallory"])
            await alice.groups.act(view.group_id, groups.Promote(user="dave"))
            club = Club(shim, clients, view.group_id)
            await club.sync(*clients)
            for name, client in clients.items():
                await client.groups.send(view.group_id, f"hello from {name}")
            await club.sync(*clients)
            yield club
        finally:
            for client in clients.values():
                await client.close()


async def withhold_removal_then_answers(club: Club) -> None:
    """alice removes mallory; the server keeps the removal from bob. carol, who has it,
    posts; her key share and message reach bob, her answer to bob's request does not."""
    alice, carol = club["alice"], club["carol"]
    club.shim.withhold = lambda e: e["from_user"] == "alice"
    await alice.groups.act(club.group_id, groups.Remove(user="mallory"), "spam")
    await club.sync("alice", "carol", "mallory")
    let_through: list[str] = []

    def removal_and_answers(envelope: dict[str, Any]) -> bool:
        if envelope["from_user"] == "carol" and is_olm(envelope):
            if not let_through:  # her new session's key, shared before her message
                let_through.append(envelope["envelope_id"])
                return False
            return True
        return envelope["from_user"] == "alice"

    club.shim.withhold = removal_and_answers
    await carol.groups.send(club.group_id, "mallory is gone")  # made under the newer state
    await club.sync("bob", "carol")


async def test_a_withheld_removal_holds_posts_until_its_update_comes(club: Club) -> None:
    bob, carol, mallory = club["bob"], club["carol"], club["mallory"]
    group_id = club.group_id
    await withhold_removal_then_answers(club)
    assert "mallory" in bob.groups.view(group_id).members  # bob has not seen the removal
    assert "mallory is gone" not in texts(bob, group_id)  # kept until the state is in
    assert any("asked for the missing updates" in n for n in notices(bob, group_id))
    before = recipients_of_posts(club.shim)
    with pytest.raises(GroupError, match="waiting for updates"):
        await bob.groups.send(group_id, "for mallory's eyes?")
    await bob.flush(30)
    assert recipients_of_posts(club.shim) == before  # nothing uploaded while held
    await mallory.sync(60)
    assert "for mallory's eyes?" not in texts(mallory, group_id)

    # The server lets carol's answer through (never alice's own copy): bob catches up,
    # shows carol's message, and his next post leaves mallory out.
    club.shim.withhold = lambda e: e["from_user"] == "alice"
    assert await club.shim.deliver_withheld(lambda e: e["from_user"] == "carol") > 0
    await club.sync("bob", "carol")
    assert "mallory" not in bob.groups.view(group_id).members
    assert "mallory is gone" in texts(bob, group_id)
    assert any("missing updates came" in n for n in notices(bob, group_id))
    club.shim.sent_by_clients.clear()
    await bob.groups.send(group_id, "welcome back to normal")
    await club.sync("bob", "carol", "mallory")
    assert recipients_of_posts(club.shim) == {"alice", "carol", "dave"}
    assert "welcome back to normal" in texts(carol, group_id)
    assert "welcome back to normal" not in texts(mallory, group_id)


async def test_two_states_at_the_same_seq_warn_and_hold_until_they_agree(club: Club) -> None:
    """dave renames the group while alice removes mallory, on the same state, and posts
    before he hears of alice's change; the server keeps dave's update from bob. dave's
    message shows bob the fork: he is warned and holds his posts until dave's update
    reaches him and the rule of §23.8 settles which one counts (alice's: the owner's)."""
    alice, bob, carol, dave = club["alice"], club["bob"], club["carol"], club["dave"]
    group_id = club.group_id
    club.shim.withhold = lambda e: e["from_user"] == "dave" and is_olm(e)
    await dave.groups.act(group_id, groups.EditInfo(title="Dave's club"))
    await alice.groups.act(group_id, groups.Remove(user="mallory"))
    await dave.groups.send(group_id, "under dave's title")
    await alice.flush(30)
    await dave.flush(30)
    await bob.sync(60)
    assert "mallory" not in bob.groups.view(group_id).members
    assert "under dave's title" in texts(bob, group_id)
    assert any("another state of this group" in n for n in notices(bob, group_id))
    with pytest.raises(GroupError, match="another state of the group"):
        await bob.groups.send(group_id, "which group am I in?")

    club.shim.withhold = None
    assert await club.shim.deliver_withheld() > 0
    await club.sync("alice", "bob", "carol", "dave")
    assert any("the two states agree again" in n for n in notices(bob, group_id))
    await bob.groups.send(group_id, "settled")
    await club.sync("alice", "bob", "carol", "dave")
    assert "settled" in texts(carol, group_id)
    heads = {
        name: club[name].groups.view(group_id).head for name in ("alice", "bob", "carol", "dave")
    }
    assert len(set(heads.values())) == 1
    assert "mallory" not in bob.groups.view(group_id).members


async def test_a_hold_can_be_released_by_the_user(club: Club) -> None:
    """A member's device that names a state it never shows would hold bob's posts for
    good: bob may release the hold, and says so in the conversation."""
    bob, carol = club["bob"], club["carol"]
    group_id = club.group_id
    await withhold_removal_then_answers(club)
    assert bob.groups.held(group_id) is not None
    assert bob.groups.release(group_id)
    assert bob.groups.held(group_id) is None
    await bob.groups.send(group_id, "posting anyway")
    await club.sync("bob", "carol")
    assert "posting anyway" in texts(carol, group_id)
    assert any("you released the hold" in n for n in notices(bob, group_id))
