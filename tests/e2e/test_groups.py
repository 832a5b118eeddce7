"""Groups whose admins are answerable: signed state, Megolm, moderation, reports.

Real server process on loopback; every member is a real in-process client with
its own profile. alice owns the group from two devices (laptop and phone).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from obrolan.client import Client
from obrolan.client.groups import GroupError
from obrolan.client.models import Message, MessageState
from obrolan.crypto.megolm import InboundGroupSession
from obrolan.errors import DecryptionError
from obrolan.protocol import groups
from obrolan.protocol.frames import MultiEnvelope
from obrolan.protocol.groups import GroupCiphertext, decode_group_ciphertext
from tests.e2e.test_devices import link
from tests.support.shim import MaliciousServer

MEMBERS = ("bob", "carol", "dave", "erin")


class Crowd:
    """alice (laptop + phone) and the other people, all in process."""

    def __init__(self, clients: dict[str, Client]) -> None:
        self.clients = clients

    def __getitem__(self, name: str) -> Client:
        return self.clients[name]

    async def sync(self, *names: str) -> None:
        """Everyone sends what is queued, then everyone receives (twice: answers to answers)."""
        chosen = names or tuple(self.clients)
        for _ in range(2):
            for name in chosen:
                await self.clients[name].flush(30)
            for name in chosen:
                await self.clients[name].sync(60)


@pytest.fixture
async def crowd(server, profiles: Callable[[str], Path]) -> AsyncIterator[Crowd]:  # type: ignore[no-untyped-def]
    clients: dict[str, Client] = {}
    try:
        for name in ("alice", *MEMBERS, "frank"):
            clients[name] = await Client.register(profiles(name), server.url, name, None)
        clients["alice-phone"] = await link(server, profiles, clients["alice"], "alice-phone")
        yield Crowd(clients)
    finally:
        for client in clients.values():
            await client.close()


def texts(client: Client, group_id: str) -> list[str]:
    return [
        m.text
        for m in client.groups.history(group_id)
        if m.state is not MessageState.NOTICE and not m.deleted
    ]


def notices(client: Client, group_id: str) -> list[str]:
    return [m.text for m in client.groups.history(group_id) if m.state is MessageState.NOTICE]


def find(client: Client, group_id: str, text: str) -> Message:
    [message] = [m for m in client.groups.history(group_id) if m.text == text]
    return message


async def make_group(crowd: Crowd) -> str:
    view = await crowd["alice"].groups.create("Team", list(MEMBERS))
    await crowd.sync()
    return view.group_id


def queued_ciphertext(sender: Client) -> GroupCiphertext:
    """The group ciphertext waiting in the sender's outbox (what the server will get)."""
    [entry] = [e for e in sender._store.outbox() if e.multi is not None]
    envelope = msgspec.json.decode(entry.multi, type=MultiEnvelope)
    return decode_group_ciphertext(envelope.ciphertext)


async def test_every_member_device_reads_it_and_a_removed_member_reads_nothing_after(
    crowd: Crowd,
) -> None:
    group_id = await make_group(crowd)
    everyone = ("alice", "alice-phone", *MEMBERS)
    for name in everyone:
        view = crowd[name].groups.view(group_id)
        assert sorted(view.members) == ["alice", *MEMBERS] and view.owner == "alice", name
    await crowd["bob"].groups.send(group_id, "hello team")
    await crowd.sync()
    for name in everyone:
        assert texts(crowd[name], group_id) == ["hello team"], name

    await crowd["alice"].groups.act(group_id, groups.Remove(user="erin"), "left the project")
    await crowd.sync()
    assert "erin" not in crowd["erin"].groups.view(group_id).members
    await crowd["dave"].groups.send(group_id, "after erin left")
    ciphertext = queued_ciphertext(crowd["dave"])
    await crowd.sync()
    for name in ("alice", "alice-phone", "bob", "carol", "dave"):
        assert texts(crowd[name], group_id)[-1] == "after erin left", name
    assert texts(crowd["erin"], group_id) == ["hello team"]
    # At the crypto level: none of the Megolm sessions erin holds decrypts the new message.
    erin = crowd["erin"]
    pickles = [r[0] for r in erin._store.connection.execute("SELECT pickle FROM group_inbound")]
    assert pickles
    for pickle in pickles:
        session = InboundGroupSession.from_pickle(pickle, erin._vault.pickle_key)
        assert session.session_id != ciphertext.group_session
        with pytest.raises(DecryptionError):
            session.decrypt(ciphertext.body)


async def test_admin_tools_are_enforced_by_every_client_and_logged(crowd: Crowd, profiles) -> None:  # type: ignore[no-untyped-def]
    group_id = await make_group(crowd)
    alice, bob, carol = crowd["alice"], crowd["bob"], crowd["carol"]
    await bob.groups.send(group_id, "spam spam spam")
    await crowd.sync()
    spam = find(carol, group_id, "spam spam spam")

    with pytest.raises(GroupError, match="not an admin"):  # a member cannot delete others'
        await carol.groups.act(
            group_id, groups.DeleteMessage(sender="bob", message_id=spam.message_id)
        )
    await alice.groups.act(
        group_id, groups.DeleteMessage(sender="bob", message_id=spam.message_id), "off-topic"
    )
    await alice.groups.act(group_id, groups.Mute(user="carol", until_ms=2**41), "flooding")
    # bob is offline when only admins may post from now on; his device posts before it
    # learns of it. Every receiver applies the rule anyway and hides the message.
    await bob.close()
    await alice.groups.act(
        group_id,
        groups.SetSettings(settings=groups.GroupSettings(who_can_post="admins")),
        "announcements only",
    )
    await alice.flush(30)
    bob = crowd.clients["bob"] = await Client.load(profiles("bob"), None)
    await bob.groups.send(group_id, "sneaking one in")  # checked against bob's stale state
    await crowd.sync()
    for name in ("alice", "alice-phone", *MEMBERS):
        client = crowd[name]
        assert "spam spam spam" not in texts(client, group_id), name
        if name != "bob":  # his own device keeps what he wrote
            assert "sneaking one in" not in texts(client, group_id), name
        log = [line for _, _, line in client.groups.log(group_id)]
        assert any("alice deleted a message of bob" in e and "off-topic" in e for e in log), log
        assert any("alice muted carol" in e and "flooding" in e for e in log), log
        assert any("announcements only" in e for e in log), log
    assert any("was not shown" in n for n in notices(crowd["dave"], group_id))
    with pytest.raises(GroupError, match=r"muted|only admins"):
        await carol.groups.send(group_id, "let me speak")
    with pytest.raises(GroupError, match="only admins"):
        await bob.groups.send(group_id, "and again")


async def test_invite_with_approval_and_a_verified_report(crowd: Crowd) -> None:
    group_id = await make_group(crowd)
    alice, frank, dave = crowd["alice"], crowd["frank"], crowd["dave"]
    link_text = await alice.groups.invite(group_id, 3600)
    assert await frank.groups.join(link_text) == group_id
    await crowd.sync("frank", "alice")
    assert alice.groups.join_requests(group_id) == [
        ("frank", link_text.split("invite=")[1].split("&")[0])
    ]
    with pytest.raises(GroupError):
        frank.groups.view(group_id)  # not in yet
    await alice.groups.approve(group_id, "frank", "a friend of dave")
    await crowd.sync()
    assert "frank" in frank.groups.view(group_id).members
    await frank.groups.send(group_id, "thanks for having me")
    await crowd["bob"].groups.send(group_id, "buy cheap pills here")
    await crowd.sync()
    assert texts(dave, group_id) == ["thanks for having me", "buy cheap pills here"]
    assert (
        await dave.groups.report(group_id, find(dave, group_id, "buy cheap pills here"), "spam")
        == 1
    )
    await crowd.sync("dave", "alice")
    [report] = alice.groups.reports(group_id)
    assert (report.reporter, report.sender, report.reason, report.verified) == (
        "dave",
        "bob",
        "spam",
        True,
    )
    assert report.text == "buy cheap pills here"
    assert any("alice approved frank" in e for _, _, e in alice.groups.log(group_id))


async def test_bad_group_input_changes_nothing(crowd: Crowd) -> None:
    group_id = await make_group(crowd)
    bob, alice = crowd["bob"], crowd["alice"]
    with pytest.raises(GroupError, match="no group"):
        bob.groups.resolve("nosuchgroup")
    with pytest.raises(GroupError, match="not an admin"):
        await bob.groups.act(group_id, groups.Remove(user="carol"))
    with pytest.raises(GroupError, match="owner"):
        await bob.groups.act(group_id, groups.Promote(user="carol"))
    with pytest.raises(GroupError, match="no such user"):
        await alice.groups.act(group_id, groups.Add(user="nosuchuser"))
    with pytest.raises(GroupError, match="no such user"):
        await alice.groups.create("Ghosts", ["nosuchuser"])
    with pytest.raises(GroupError, match="invite link"):
        await crowd["frank"].groups.join("https://example.org/not-an-invite")
    # an invite that was revoked lets nobody in
    link_text = await alice.groups.invite(group_id, 3600)
    invite_id = link_text.split("invite=")[1].split("&")[0]
    await alice.groups.act(group_id, groups.RevokeInvite(invite_id=invite_id))
    await crowd["frank"].groups.join(link_text)
    await crowd.sync("frank", "alice")
    assert alice.groups.join_requests(group_id) == []
    assert sorted(bob.groups.view(group_id).members) == ["alice", *MEMBERS]


async def test_a_group_message_costs_one_encryption_and_one_upload(server, profiles) -> None:  # type: ignore[no-untyped-def]
    members = [f"member{n}" for n in range(5)]
    clients: list[Client] = []
    async with MaliciousServer(server.ws_url) as recorder:  # rewrites nothing: it counts
        try:
            alice = await Client.register(profiles("alice"), recorder.url, "alice", None)
            clients.append(alice)
            for name in members:
                clients.append(await Client.register(profiles(name), server.url, name, None))
            group_id = (await alice.groups.create("Many", members)).group_id
            await alice.groups.send(group_id, "first: the session key goes out over Olm")
            await alice.flush(30)
            before = len(recorder.sent_by_clients)
            await alice.groups.send(group_id, "second")
            await alice.flush(30)
            uploads = [
                f for f in recorder.sent_by_clients[before:] if f["type"] in ("send", "send_multi")
            ]
            assert [f["type"] for f in uploads] == ["send_multi"]
            assert len(uploads[0]["envelope"]["recipients"]) == len(members)
            for client in clients[1:]:
                await client.sync(60)
                assert texts(client, group_id)[-1] == "second"
        finally:
            for client in clients:
                await client.close()


async def test_without_approval_the_inviting_device_alone_lets_people_in(crowd: Crowd) -> None:
    group_id = await make_group(crowd)
    alice, phone, frank = crowd["alice"], crowd["alice-phone"], crowd["frank"]
    await alice.groups.act(
        group_id, groups.SetSettings(settings=groups.GroupSettings(approval=False))
    )
    link_text = await alice.groups.invite(group_id, 3600)
    await crowd.sync()
    await frank.groups.join(link_text)
    await crowd.sync()
    await crowd.sync()
    assert "frank" in frank.groups.view(group_id).members
    # both of alice's devices hold the same chain: one approval, no fork
    assert phone.groups.view(group_id).head == alice.groups.view(group_id).head
    log = [e for _, _, e in crowd["bob"].groups.log(group_id)]
    assert sum("approved frank" in e for e in log) == 1


async def test_a_group_larger_than_the_servers_recipient_limit_takes_several_uploads(
    server_factory,
    profiles,  # type: ignore[no-untyped-def]
) -> None:
    server = server_factory("--max-recipients", "2")
    members = [f"member{n}" for n in range(5)]
    clients: list[Client] = []
    async with MaliciousServer(server.ws_url) as recorder:
        try:
            alice = await Client.register(profiles("alice"), recorder.url, "alice", None)
            clients.append(alice)
            for name in members:
                clients.append(await Client.register(profiles(name), server.url, name, None))
            group_id = (await alice.groups.create("Many", members)).group_id
            before = len(recorder.sent_by_clients)
            await alice.groups.send(group_id, "to all five")
            await alice.flush(30)
            uploads = [f for f in recorder.sent_by_clients[before:] if f["type"] == "send_multi"]
            assert sorted(len(f["envelope"]["recipients"]) for f in uploads) == [1, 2, 2]
            for client in clients[1:]:
                await client.sync(60)
                assert texts(client, group_id) == ["to all five"]
        finally:
            for client in clients:
                await client.close()


async def test_the_server_never_holds_group_state_device_names_or_history_in_the_clear(
    server,
    profiles,  # type: ignore[no-untyped-def]
) -> None:
    """Markers in a group's title, rules and messages, a mute's reason, a report, a device's
    name and a history transfer: none is ever in the server's files, even while queued."""
    markers = {
        name: f"MARK{name.upper()}{n:03d}x"
        for n, name in enumerate(
            ("title", "rules", "message", "reason", "report", "device", "history")
        )
    }
    alice = await Client.register(profiles("alice"), server.url, "alice", None)
    bob = await Client.register(profiles("bob"), server.url, "bob", None)
    carol = await Client.register(profiles("carol"), server.url, "carol", None)
    alice.accept("bob")
    bob.accept("alice")
    clients = [alice, bob, carol]

    def server_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in Path(server.data_dir).rglob("*") if p.is_file())

    def forms(marker: str) -> list[bytes]:
        """The marker, and the middle of its base64 at each alignment (bytes fields are
        base64 in JSON: an unsealed name would hide that way)."""
        raw = marker.encode()
        found = [raw]
        for offset in range(3):
            encoded = base64.b64encode(b"\0" * offset + raw)
            found.append(encoded[4 : len(encoded) - 4])
        return found

    def leaked() -> list[str]:
        everything = server_bytes()
        return [k for k, m in markers.items() if any(f in everything for f in forms(m))]

    try:
        await bob.send("alice", f"history line {markers['history']}")
        await bob.flush(30)
        await alice.sync(60)
        group_id = (await alice.groups.create(markers["title"], ["bob", "carol"])).group_id
        await alice.groups.act(group_id, groups.EditInfo(rules=markers["rules"]))
        await alice.flush(30)
        assert leaked() == []  # queued for bob and carol: ciphertext only
        for client in (bob, carol):
            await client.sync(60)
        await bob.groups.send(group_id, markers["message"])
        await bob.flush(30)
        assert leaked() == []
        await carol.sync(60)
        await alice.sync(60)
        await alice.groups.act(group_id, groups.Mute(user="bob", until_ms=2**41), markers["reason"])
        await carol.groups.report(
            group_id, find(carol, group_id, markers["message"]), markers["report"]
        )
        await carol.flush(30)
        assert leaked() == []
        phone = await link(server, profiles, alice, markers["device"], with_history=True)
        clients.append(phone)
        await alice.send_history(phone.device_id)
        assert leaked() == []  # the history waits on the server as a sealed blob
        await phone.receive_history(timeout=60)
        assert any(markers["history"] in m.text for m in phone.history("bob"))
        for client in clients:
            await client.sync(60)
        assert leaked() == []
    finally:
        for client in clients:
            await client.close()


async def test_the_group_key_is_replaced_after_the_configured_number_of_messages(
    crowd: Crowd,
) -> None:
    group_id = await make_group(crowd)
    bob = crowd["bob"]
    bob.groups.set_rotation(2, 7)
    with pytest.raises(GroupError, match="rotate after"):
        bob.groups.set_rotation(0, 7)
    sessions = []
    for n in range(5):
        await bob.groups.send(group_id, f"message {n}")
        sessions.append(queued_ciphertext(bob).group_session)
        await bob.flush(30)
    assert sessions[0] == sessions[1] != sessions[2] == sessions[3] != sessions[4]
    await crowd.sync()
    assert texts(crowd["carol"], group_id) == [f"message {n}" for n in range(5)]


async def test_a_members_newly_linked_device_gets_the_groups_and_their_messages(
    crowd: Crowd,
    server,
    profiles,  # type: ignore[no-untyped-def]
) -> None:
    group_id = await make_group(crowd)
    bob = crowd["bob"]
    tablet = crowd.clients["bob-tablet"] = await link(server, profiles, bob, "bob-tablet")
    await bob.flush(30)
    await tablet.sync(60)
    assert sorted(tablet.groups.view(group_id).members) == ["alice", *MEMBERS]
    await crowd["alice"].sync(60)  # a new connection: alice looks at bob's list again
    await crowd["alice"].groups.send(group_id, "hello bob's tablet too")
    await crowd.sync()
    assert texts(tablet, group_id) == ["hello bob's tablet too"]


async def test_two_changes_at_the_same_time_end_the_same_everywhere(crowd: Crowd) -> None:
    group_id = await make_group(crowd)
    alice, dave, carol = crowd["alice"], crowd["dave"], crowd["carol"]
    await alice.groups.act(group_id, groups.Promote(user="dave"))
    await alice.groups.act(group_id, groups.Promote(user="carol"))
    await crowd.sync()
    # Two admins act on the same state before either hears of the other.
    await dave.groups.act(group_id, groups.EditInfo(rules="no spoilers"), "dave's rules")
    await carol.groups.act(group_id, groups.Mute(user="erin", until_ms=2**41), "flooding")
    await crowd.sync()
    await crowd.sync()
    heads = {
        name: crowd[name].groups.view(group_id).head for name in crowd.clients if name != "frank"
    }
    assert len(set(heads.values())) == 1, heads
    view = crowd["bob"].groups.view(group_id)
    assert view.rules == "no spoilers" and view.members["erin"].muted_until_ms == 2**41
    log = [line for _, _, line in crowd["bob"].groups.log(group_id)]
    assert sum("muted erin" in line for line in log) == 1
    assert sum("changed the rules" in line for line in log) == 1


async def test_a_change_cannot_race_a_higher_roles_change(crowd: Crowd) -> None:
    """dave is demoted by the owner while, unaware, he removes bob: the owner's update
    counts on every device and dave, no longer an admin, cannot make his again."""
    group_id = await make_group(crowd)
    alice, dave = crowd["alice"], crowd["dave"]
    await alice.groups.act(group_id, groups.Promote(user="dave"))
    await crowd.sync()
    await alice.groups.act(group_id, groups.Demote(user="dave"), "too hasty")
    await dave.groups.act(group_id, groups.Remove(user="bob"))
    await crowd.sync()
    await crowd.sync()
    for name in ("alice", "alice-phone", *MEMBERS):
        view = crowd[name].groups.view(group_id)
        assert "bob" in view.members and view.role("dave") == "member", name
    assert any("could not be made again" in n for n in notices(dave, group_id))
