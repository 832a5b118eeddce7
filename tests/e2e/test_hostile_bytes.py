"""One message whose bytes do not decode stops nothing: the receiver refuses it and goes on.

A hostile sender (a stranger, or a member of a group) encrypts, with real Olm and
Megolm sessions, a plaintext whose JSON carries bytes that are not UTF-8 inside a
string. msgspec answers those with ``UnicodeDecodeError``, not a ``DecodeError``;
before the fix that escaped the inbox, the envelope was never acked, and every later
message to the device waited behind it for good. Now the receiver stores a
"could not be read" notice, acks the envelope, and the sender's next message arrives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from obrolan.client import Client
from obrolan.client.group_store import group_peer
from obrolan.client.ids import new_id
from obrolan.client.models import MessageState
from obrolan.client.store import now_ms
from obrolan.crypto.megolm import OutboundGroupSession
from obrolan.protocol import content, frames, groups
from obrolan.protocol.signing import group_message_bytes
from tests.e2e.conftest import Cli, mailbox_rows

BAD = b"\xff\xfe not UTF-8"
MARK = "MARK-WHERE-THE-BAD-BYTES-GO"


def notices(client: Client, peer: str) -> list[str]:
    return [m.text for m in client.history(peer) if m.state is MessageState.NOTICE]


def texts(messages: list) -> list[str]:  # type: ignore[type-arg]
    return [m.text for m in messages if m.state is not MessageState.NOTICE]


async def send_hostile_plaintext(sender: Client, to: str) -> None:
    """``sender`` seals, with its real Olm session, a Plaintext with BAD in its text."""
    conn = await sender._connected()
    envelopes = []
    with sender._store.transaction():
        for device in await _devices(sender, to):
            session = sender._sessions.latest_with(device.curve25519)
            assert session is not None, "send one good message first: it makes the session"
            plaintext = content.Plaintext(
                sender=sender.username,
                sender_device=sender.device_id,
                recipient=to,
                recipient_device=device.device_id,
                content=content.Text(message_id=new_id(), sent_at_ms=now_ms(), text=MARK),
                counter=sender._store.next_counter(to),
            )
            raw = content.encode(plaintext).replace(MARK.encode(), BAD)
            sealed = session.encrypt(raw, sender._identity.curve25519)
            sender._sessions.save(device.curve25519, session)
            envelopes.append(
                frames.OutboundEnvelope(
                    envelope_id=new_id(),
                    to_user=to,
                    to_device=device.device_id,
                    ciphertext=content.encode(sealed),
                )
            )
    sent = await conn.request(lambda i: frames.Send(id=i, envelopes=envelopes))
    assert isinstance(sent, frames.Sent)


async def _devices(sender: Client, username: str) -> list[frames.DeviceKeys]:
    return await sender.verified_devices(username)


async def test_a_plaintext_that_is_not_utf8_is_refused_and_the_next_message_arrives(
    pair: tuple[Client, Client],
    cli: Cli,
    profiles: Callable[[str], Path],
    server,  # type: ignore[no-untyped-def]
) -> None:
    """bob's inbox refuses the one message with a notice, acks it, and `obrolan sync` shows
    alice's next message (no traceback, exit 0); a later sync has nothing left."""
    alice, bob = pair
    await alice.send("bob", "hello")
    await alice.flush(30)
    await bob.sync()
    await bob.close()  # the CLI opens bob's profile next

    await send_hostile_plaintext(alice, "bob")
    await alice.send("bob", "after the bad one")
    await alice.flush(30)

    synced = cli("sync", "--profile", str(profiles("bob")))
    assert synced.returncode == 0, synced.stderr
    assert "after the bad one" in synced.stdout
    assert mailbox_rows(server.data_dir, "bob") == 0  # the bad envelope was acked too

    async with Client.open(profiles("bob"), None) as again:
        await again.sync()
        assert texts(again.history("alice")) == ["hello", "after the bad one"]
        (notice,) = [n for n in notices(again, "alice") if "could not be read" in n]
        assert "not valid UTF-8" in notice


@pytest.fixture
async def club(
    server, profiles: Callable[[str], Path]
) -> AsyncIterator[tuple[dict[str, Client], str]]:  # type: ignore[no-untyped-def]
    """alice's group of bob and mallory, the hostile member."""
    clients: dict[str, Client] = {}
    try:
        for name in ("alice", "bob", "mallory"):
            clients[name] = await Client.register(profiles(name), server.url, name, None)
        view = await clients["alice"].groups.create("Club", ["bob", "mallory"])
        await everyone_syncs(list(clients.values()))
        yield clients, view.group_id
    finally:
        for client in clients.values():
            await client.close()


async def everyone_syncs(clients: list[Client]) -> None:
    for _ in range(2):
        for client in clients:
            await client.flush(30)
        for client in clients:
            await client.sync(60)


async def test_a_group_message_that_is_not_utf8_stops_nothing(club, server) -> None:  # type: ignore[no-untyped-def]
    """mallory's Megolm message whose SignedGroupMessage JSON is not UTF-8 is refused with a
    notice by every member; her next group message, and alice's, still arrive."""
    c, group_id = club
    mallory = c["mallory"]
    victims = ["alice", "bob"]
    session = OutboundGroupSession.create()
    message = groups.GroupMessage(
        group_id=group_id,
        sender="mallory",
        sender_device=mallory.device_id,
        message_id=new_id(),
        sent_at_ms=now_ms(),
        text="never shown",
        counter=1,
        state_seq=mallory.groups.view(group_id).seq,
        state_hash=mallory.groups.view(group_id).head,
    )
    raw = content.encode(message)
    signed = groups.SignedGroupMessage(
        message=raw, signature=mallory.sign_device(group_message_bytes(raw))
    )
    hostile = content.encode(signed).replace(signed.signature.encode(), BAD)
    recipients = [
        frames.Recipient(to_user=name, to_device=device.device_id)
        for name in victims
        for device in await mallory.verified_devices(name)
    ]
    with mallory._store.transaction():
        for name in victims:
            mallory.queue_olm(
                name,
                content.GroupKey(
                    message_id=new_id(),
                    sent_at_ms=now_ms(),
                    group_id=group_id,
                    session_id=session.session_id,
                    session_key=session.session_key,
                    state_seq=mallory.groups.view(group_id).seq,
                    state_hash=mallory.groups.view(group_id).head,
                ),
                None,
            )
        rowid = mallory._store.add_message(
            message_id=message.message_id,
            peer=group_peer(group_id),
            sender="mallory",
            sender_device=mallory.device_id,
            outgoing=True,
            text="never shown",
            sent_at_ms=message.sent_at_ms,
            state=MessageState.QUEUED,
        )
        assert rowid is not None
        mallory.queue_multi(
            frames.MultiEnvelope(
                envelope_id=new_id(),
                recipients=recipients,
                ciphertext=content.encode(
                    groups.GroupCiphertext(
                        group_session=session.session_id,
                        body=session.encrypt(hostile),
                    )
                ),
            ),
            rowid,
        )
    await mallory.flush(30)
    await mallory.groups.send(group_id, "mallory again, politely")
    await c["alice"].groups.send(group_id, "alice still here")
    await everyone_syncs(list(c.values()))
    for name in victims:
        shown = texts(c[name].groups.history(group_id))
        assert "never shown" not in shown, name
        assert "mallory again, politely" in shown, name
        assert "alice still here" in shown or name == "alice", name
        assert any("could not be read" in n and "UTF-8" in n for n in notices(c[name], "mallory"))
        assert mailbox_rows(server.data_dir, name) == 0, name


async def test_a_group_update_that_is_not_utf8_stops_nothing(club, server) -> None:  # type: ignore[no-untyped-def]
    """mallory sends a group state whose signed update's JSON is not UTF-8: it is refused
    (a warning), and the group goes on for everyone."""
    c, group_id = club
    mallory = c["mallory"]
    update = b'{"group_id":"' + BAD + b'","seq":1}'
    bad = groups.SignedGroupUpdate(update=update, signature="A" * 86)
    plaintext_level = content.GroupState(
        message_id=new_id(),
        sent_at_ms=now_ms(),
        group_id=group_id,
        updates=[bad],
    )
    with mallory._store.transaction():
        for name in ("alice", "bob"):
            mallory.queue_olm(name, plaintext_level, None)
    await mallory.flush(30)
    await mallory.groups.send(group_id, "after my bad update")
    await everyone_syncs(list(c.values()))
    for name in ("alice", "bob"):
        client = c[name]
        assert "after my bad update" in texts(client.groups.history(group_id)), name
        assert sorted(client.groups.view(group_id).members) == ["alice", "bob", "mallory"]
        warned = [m.text for m in client.groups.history(group_id) if "malformed" in m.text]
        assert warned, name
        assert mailbox_rows(server.data_dir, name) == 0, name
    await c["bob"].groups.send(group_id, "bob goes on")
    await everyone_syncs(list(c.values()))
    assert "bob goes on" in texts(c["alice"].groups.history(group_id))
