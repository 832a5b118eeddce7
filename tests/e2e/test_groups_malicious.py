"""Nobody but the group's own keys can change it: forged, stale, reordered and outsider input.

The attackers are a member without the role (mallory), an admin who was demoted
(dave), an outsider (oscar), and a shim in front of the real server that
delivers two updates in swapped order. Every client rejects, warns, and keeps
its view of the membership.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from obrolan.client import Client
from obrolan.client.group_store import group_peer
from obrolan.client.groups import GroupError
from obrolan.client.ids import new_id
from obrolan.client.models import MessageState
from obrolan.client.store import now_ms
from obrolan.crypto.group_state import new_group, next_update, sign_update
from obrolan.crypto.megolm import OutboundGroupSession
from obrolan.errors import ServerUnreachable
from obrolan.protocol import content, groups
from obrolan.protocol.frames import MultiEnvelope, Recipient
from obrolan.protocol.signing import group_message_bytes
from tests.support.shim import MaliciousServer


async def everyone_syncs(clients: list[Client]) -> None:
    for _ in range(2):
        for client in clients:
            await client.flush(30)
        for client in clients:
            await client.sync(60)


def warnings(client: Client, group_id: str) -> list[str]:
    return [
        m.text
        for m in client.groups.history(group_id)
        if m.state is MessageState.NOTICE and m.text.startswith("⚠")
    ]


def texts(client: Client, group_id: str) -> list[str]:
    return [m.text for m in client.groups.history(group_id) if m.state is not MessageState.NOTICE]


async def send_state(
    attacker: Client, to: list[str], group_id: str, updates: list[groups.SignedGroupUpdate]
) -> None:
    """The attacker's device sends signed updates of its choosing, end to end."""
    with attacker._store.transaction():
        for username in to:
            attacker.queue_olm(
                username,
                content.GroupState(
                    message_id=new_id(),
                    sent_at_ms=now_ms(),
                    group_id=group_id,
                    updates=updates,
                ),
                None,
            )
    await attacker.flush(30)


@pytest.fixture
async def setting(
    server, profiles: Callable[[str], Path]
) -> AsyncIterator[tuple[MaliciousServer, dict[str, Client], str]]:  # type: ignore[no-untyped-def]
    """alice owns a group of bob, carol (behind the shim), dave and mallory; oscar is outside."""
    clients: dict[str, Client] = {}
    async with MaliciousServer(server.ws_url) as shim:
        try:
            for name in ("alice", "bob", "dave", "mallory", "oscar"):
                clients[name] = await Client.register(profiles(name), server.url, name, None)
            clients["carol"] = await Client.register(profiles("carol"), shim.url, "carol", None)
            view = await clients["alice"].groups.create("Club", ["bob", "carol", "dave", "mallory"])
            await everyone_syncs(list(clients.values()))
            yield shim, clients, view.group_id
        finally:
            for client in clients.values():
                await client.close()


async def test_forged_stale_and_outsider_input_is_rejected(setting) -> None:  # type: ignore[no-untyped-def]
    _, c, group_id = setting
    alice, mallory, dave = c["alice"], c["mallory"], c["dave"]
    members = ["alice", "bob", "carol", "dave", "mallory"]
    victims = ["alice", "bob", "carol", "dave"]

    # 1. a member adds oscar, though only admins may add
    forged_add = sign_update(
        mallory._account,
        next_update(mallory.groups.view(group_id), "mallory", groups.Add(user="oscar"), now_ms()),
    )
    await send_state(mallory, victims, group_id, [forged_add])
    await everyone_syncs(list(c.values()))
    for name in victims:
        assert sorted(c[name].groups.view(group_id).members) == members, name
        assert any("mallory is not an admin" in w for w in warnings(c[name], group_id)), name

    # 2. dave was an admin, then demoted; he signs a removal anyway
    await alice.groups.act(group_id, groups.Promote(user="dave"))
    await alice.groups.act(group_id, groups.Demote(user="dave"), "abused the role")
    await everyone_syncs(list(c.values()))
    stale_admin = sign_update(
        dave._account,
        next_update(dave.groups.view(group_id), "dave", groups.Remove(user="bob"), now_ms()),
    )
    await send_state(dave, ["alice", "bob", "carol", "mallory"], group_id, [stale_admin])
    await everyone_syncs(list(c.values()))
    for name in ("alice", "bob", "carol", "mallory"):
        assert "bob" in c[name].groups.view(group_id).members, name
        assert any("dave is not an admin" in w for w in warnings(c[name], group_id)), name

    # 3. an old update, replayed: alice's promotion of dave
    [promotion] = [
        s
        for s, _ in alice.groups._rows.chain(group_id)
        if isinstance(groups.decode_group_update(s.update).action, groups.Promote)
    ]
    await send_state(mallory, victims, group_id, [promotion])
    await everyone_syncs(list(c.values()))
    for name in victims:
        view = c[name].groups.view(group_id)
        assert view.role("dave") == "member", name

    # 4. a member deletes someone else's message for everyone
    await c["bob"].groups.send(group_id, "bob's own words")
    await everyone_syncs(list(c.values()))
    [target] = [m for m in c["carol"].groups.history(group_id) if m.text == "bob's own words"]
    forged_delete = sign_update(
        mallory._account,
        next_update(
            mallory.groups.view(group_id),
            "mallory",
            groups.DeleteMessage(sender="bob", message_id=target.message_id),
            now_ms(),
        ),
    )
    await send_state(mallory, victims, group_id, [forged_delete])
    await everyone_syncs(list(c.values()))
    for name in victims:
        assert "bob's own words" in texts(c[name], group_id), name

    # 5. a malformed update
    await send_state(
        mallory,
        victims,
        group_id,
        [groups.SignedGroupUpdate(update=b"{not json", signature="A" * 86)],
    )
    await everyone_syncs(list(c.values()))
    for name in victims:
        assert any("malformed" in w for w in warnings(c[name], group_id)), name

    # 6. an outsider's device posts into the group with a session of its own
    oscar = c["oscar"]
    session = OutboundGroupSession.create()
    message = groups.GroupMessage(
        group_id=group_id,
        sender="oscar",
        sender_device=oscar.device_id,
        message_id=new_id(),
        sent_at_ms=now_ms(),
        text="let me in",
        counter=1,
        state_seq=0,
        state_hash=bytes(32),
    )
    raw = content.encode(message)
    signed = groups.SignedGroupMessage(
        message=raw, signature=oscar.sign_device(group_message_bytes(raw))
    )
    recipients = []
    for name in victims:
        for device in await oscar.verified_devices(name):
            recipients.append(Recipient(to_user=name, to_device=device.device_id))
    with oscar._store.transaction():
        for name in victims:
            oscar.queue_olm(
                name,
                content.GroupKey(
                    message_id=new_id(),
                    sent_at_ms=now_ms(),
                    group_id=group_id,
                    session_id=session.session_id,
                    session_key=session.session_key,
                    state_seq=0,
                    state_hash=bytes(32),
                ),
                None,
            )
        rowid = oscar._store.add_message(
            message_id=message.message_id,
            peer=group_peer(group_id),
            sender="oscar",
            sender_device=oscar.device_id,
            outgoing=True,
            text="let me in",
            sent_at_ms=message.sent_at_ms,
            state=MessageState.QUEUED,
        )
        assert rowid is not None
        oscar.queue_multi(
            MultiEnvelope(
                envelope_id=new_id(),
                recipients=recipients,
                ciphertext=content.encode(
                    groups.GroupCiphertext(
                        group_session=session.session_id,
                        body=session.encrypt(content.encode(signed)),
                    )
                ),
            ),
            rowid,
        )
    await everyone_syncs(list(c.values()))
    for name in victims:
        assert "let me in" not in texts(c[name], group_id), name
        assert any("oscar is not a member" in w for w in warnings(c[name], group_id)), name
        assert sorted(c[name].groups.view(group_id).members) == members, name


async def test_updates_delivered_in_swapped_order_are_rejected(setting) -> None:  # type: ignore[no-untyped-def]
    shim, c, group_id = setting
    alice, carol = c["alice"], c["carol"]
    shim.swap_from = "alice"  # the server holds alice's next envelope to carol back
    await alice.groups.act(group_id, groups.EditInfo(rules="be kind"))
    await alice.flush(30)
    await alice.groups.act(group_id, groups.Remove(user="mallory"), "spam")
    await alice.flush(30)
    await carol.sync(60)
    # The removal came first: refused, with a warning; the rules change that came second
    # applied. carol's device saw it was behind and asked alice's device for what it had
    # missed (group_sync), so once that answer is in, its view is alice's again.
    assert any("out of order" in w for w in warnings(carol, group_id)), warnings(carol, group_id)
    await everyone_syncs(list(c.values()))
    view = carol.groups.view(group_id)
    assert view.rules == "be kind" and "mallory" not in view.members
    assert view.head == alice.groups.view(group_id).head


async def test_an_outsider_asking_for_the_chain_gets_nothing(setting) -> None:  # type: ignore[no-untyped-def]
    _, c, group_id = setting
    oscar = c["oscar"]
    await c["alice"].groups.act(group_id, groups.EditInfo(rules="members only"))
    with oscar._store.transaction():
        oscar.queue_olm(
            "alice",
            content.GroupSync(
                message_id=new_id(),
                sent_at_ms=now_ms(),
                group_id=group_id,
                from_seq=0,
            ),
            None,
        )
    await everyone_syncs(list(c.values()))
    with pytest.raises(GroupError, match="no group"):
        oscar.groups.view(group_id)
    assert oscar.groups._rows.chain(group_id) == []
    assert oscar.groups.history(group_id) == []  # not even an update to reject arrived


async def test_nobody_can_start_a_group_under_someone_elses_id(setting, profiles) -> None:  # type: ignore[no-untyped-def]
    """oscar learns the group's id (an invite link is shared in the open) and, before alice
    adds erin, sends erin a create of that id signed by himself, making himself owner.
    erin's device refuses it, so the real group still reaches her once alice adds her."""
    shim, c, group_id = setting
    alice, oscar = c["alice"], c["oscar"]
    erin = await Client.register(profiles("erin"), shim.url, "erin", None)
    try:
        squat = sign_update(
            oscar._account,
            new_group(
                group_id, "oscar", groups.Create(title="Club", members=["erin", "alice"]), now_ms()
            ),
        )
        await send_state(oscar, ["erin"], group_id, [squat])
        await erin.sync(60)
        assert any("not made by oscar" in w for w in warnings(erin, group_id)), warnings(
            erin, group_id
        )
        with pytest.raises(GroupError, match="no group"):
            erin.groups.view(group_id)

        await alice.groups.act(group_id, groups.Add(user="erin"))
        await everyone_syncs([*c.values(), erin])
        view = erin.groups.view(group_id)
        assert view.owner == "alice" and view.head == alice.groups.view(group_id).head
    finally:
        await erin.close()


async def test_a_group_update_survives_the_connection_breaking_while_it_is_checked(
    server,
    profiles,  # type: ignore[no-untyped-def]
) -> None:
    """dave joins through carol, so checking the chain needs alice's key from the server;
    the connection breaks right then. The update stays stashed and applies once dave's
    device is connected again."""
    clients: list[Client] = []
    async with MaliciousServer(server.ws_url) as shim:
        try:
            alice = await Client.register(profiles("alice"), server.url, "alice", None)
            carol = await Client.register(profiles("carol"), server.url, "carol", None)
            dave = await Client.register(profiles("dave"), shim.url, "dave", None)
            clients += [alice, carol, dave]
            group_id = (await alice.groups.create("Club", ["carol"])).group_id
            await alice.groups.act(group_id, groups.Promote(user="carol"))
            await alice.flush(30)
            await carol.sync(60)
            await carol.groups.act(group_id, groups.Add(user="dave"))
            await carol.flush(30)
            shim.cut_on = lambda f: f.get("type") == "get_devices" and f["username"] == "alice"
            with contextlib.suppress(ServerUnreachable):  # the break ends this sync
                await dave.sync(60)
            await dave.sync(60)
            assert shim.cut_on is None  # the cut happened
            assert sorted(dave.groups.view(group_id).members) == ["alice", "carol", "dave"]
        finally:
            for client in clients:
                await client.close()
