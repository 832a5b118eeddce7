"""Multi-recipient envelopes (`send_multi`): one ciphertext stored once, queued for many
devices, each delivering and acking it on its own; gone after the last ack or its TTL."""

from __future__ import annotations

import secrets
import signal
import sqlite3
from collections.abc import Callable
from contextlib import closing

from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import (
    Ack,
    Devices,
    DevicesPublished,
    Envelope,
    Error,
    GetDevices,
    MultiEnvelope,
    Recipient,
    SendMulti,
    Sent,
)
from tests.server.conftest import Connect, Online
from tests.server.exchange import offline, send, wait_until
from tests.server.test_admin import admin_json
from tests.server.test_deletion import database_bytes
from tests.support.raw_client import RawClient, RawDevice, multi, outbound, recipient
from tests.support.server import ServerProcess


def marked(size: int = 300) -> tuple[bytes, bytes]:
    """A marker and a ciphertext that holds it, so the database can be searched for it."""
    marker = f"GROUP-MARKER-{secrets.token_hex(8)}".encode()
    return marker, marker + secrets.token_bytes(size)


def copies(server: ServerProcess, marker: bytes) -> int:
    """How many ciphertexts the server holds (in mailbox rows or shared) that contain ``marker``."""
    with closing(sqlite3.connect(f"{server.database.as_uri()}?mode=ro", uri=True)) as db:
        (own,) = db.execute(
            "SELECT COUNT(*) FROM mailbox WHERE instr(ciphertext, ?) > 0", (marker,)
        ).fetchone()
        (shared,) = db.execute(
            "SELECT COUNT(*) FROM ciphertexts WHERE instr(data, ?) > 0", (marker,)
        ).fetchone()
    return int(own) + int(shared)


def queued(server: ServerProcess) -> list[tuple[str, str]]:
    """Every queue entry as ``("user/device", envelope id)``, in queue order."""
    with closing(sqlite3.connect(f"{server.database.as_uri()}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT d.username || '/' || d.device_id, m.envelope_id"
            " FROM mailbox m JOIN devices d ON d.id = m.device ORDER BY m.seq"
        ).fetchall()
    return [(to, envelope_id) for to, envelope_id in rows]


def entries(envelope: MultiEnvelope, *to: RawDevice) -> list[tuple[str, str]]:
    """The queue entries ``envelope`` should have for these devices."""
    return [(f"{d.username}/{d.device_id}", envelope.envelope_id) for d in to]


def as_delivered(sender: RawDevice, envelope: MultiEnvelope) -> list[Envelope]:
    """``envelope`` as each of its recipients should receive it from ``sender``."""
    return [Envelope(envelope.envelope_id, sender.username, sender.device_id, envelope.ciphertext)]


async def send_multi(
    client: RawClient, request_id: int, envelope: MultiEnvelope, *skipped: RawDevice
) -> None:
    """Send ``envelope``; it must be stored, and only ``skipped`` left out."""
    reply = await client.request(SendMulti(id=request_id, envelope=envelope))
    assert reply == Sent(
        id=request_id,
        envelope_ids=[envelope.envelope_id],
        skipped_recipients=[recipient(device) for device in skipped],
    ), reply


async def with_laptop(
    server: ServerProcess, connect: Connect, online: Online, username: str
) -> tuple[RawClient, RawDevice, RawClient, RawDevice]:
    """An account with two devices, phone and laptop, both connected and drained."""
    phone_client, phone = await online(server, username)
    laptop = RawDevice(username, "laptop", phone.account)
    published = await phone_client.request(phone.account.publish_frame(1, [phone, laptop]))
    assert published == DevicesPublished(id=1, version=2), published
    laptop_client = await connect(server.ws_url)
    await laptop_client.authenticate(laptop)
    assert await laptop_client.until_drained() == []
    return phone_client, phone, laptop_client, laptop


async def settled(client: RawClient, device: RawDevice, request_id: int) -> None:
    """Wait until the server has handled every frame ``device``'s client sent before
    (nothing was pushed in between)."""
    reply = await client.request(GetDevices(id=request_id, username=device.username))
    assert isinstance(reply, Devices), reply


async def acked(
    client: RawClient, device: RawDevice, envelope: MultiEnvelope, request_id: int
) -> None:
    """``device`` acks ``envelope``; returns once the server has taken the ack."""
    await client.send(Ack(envelope_ids=[envelope.envelope_id]))
    await settled(client, device, request_id)


async def test_server_stores_a_group_envelope_once_and_deletes_it_after_the_last_ack(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """One send_multi to 5 devices of 3 users: one ciphertext and 5 queue entries; the
    connected devices get it pushed, the others on connecting, each once; it stays until
    the last device acks, then no byte of it is left in the database or its WAL."""
    dave_client, dave = await online(server, "dave")
    alice_client, alice, alice_laptop_client, alice_laptop = await with_laptop(
        server, connect, online, "alice"
    )
    bob_client, bob, bob_laptop_client, bob_laptop = await with_laptop(
        server, connect, online, "bob"
    )
    carol_client, carol = await online(server, "carol")
    await alice_laptop_client.close()
    await bob_client.close()
    marker, ciphertext = marked()
    envelope = multi([alice, alice_laptop, bob, bob_laptop, carol], ciphertext)
    expected = as_delivered(dave, envelope)

    await send_multi(dave_client, 1, envelope)
    assert copies(server, marker) == 1
    assert queued(server) == entries(envelope, alice, alice_laptop, bob, bob_laptop, carol)
    online_now = ((alice_client, alice), (bob_laptop_client, bob_laptop), (carol_client, carol))
    for request_id, (client, device) in enumerate(online_now, 10):
        assert await client.deliveries(1) == expected
        await acked(client, device, envelope, request_id)
    await wait_until(lambda: queued(server) == entries(envelope, alice_laptop, bob))
    assert copies(server, marker) == 1  # kept for the two devices still to fetch it

    alice_laptop_again = await connect(server.ws_url)
    await alice_laptop_again.authenticate(alice_laptop)
    assert await alice_laptop_again.until_drained() == expected
    await acked(alice_laptop_again, alice_laptop, envelope, 20)
    await wait_until(lambda: queued(server) == entries(envelope, bob))
    assert copies(server, marker) == 1

    bob_again = await connect(server.ws_url)
    await bob_again.authenticate(bob)
    assert await bob_again.until_drained() == expected
    await acked(bob_again, bob, envelope, 21)
    await wait_until(lambda: queued(server) == [] and copies(server, marker) == 0)
    await wait_until(lambda: marker not in database_bytes(server))

    for request_id, (client, device) in enumerate(online_now, 30):
        await settled(client, device, request_id)  # nothing was pushed twice
    carol_again = await connect(server.ws_url)
    await carol_again.authenticate(carol)
    assert await carol_again.until_drained() == []


async def test_server_deletes_a_group_envelope_when_its_ttl_runs_out(
    server_factory: Callable[..., ServerProcess], connect: Connect, online: Online
) -> None:
    """With a short TTL, the entries nobody acked expire and the ciphertext goes with them,
    also from the files."""
    server = server_factory("--envelope-ttl", "2", "--sweep-interval", "0.2")
    dave_client, _ = await online(server, "dave")
    bob_client, bob = await online(server, "bob")
    carol = await offline(server, online, "carol")
    marker, ciphertext = marked()
    envelope = multi([bob, carol], ciphertext)
    await send_multi(dave_client, 1, envelope)
    assert [e.envelope_id for e in await bob_client.deliveries(1)] == [envelope.envelope_id]
    await acked(bob_client, bob, envelope, 2)

    await wait_until(lambda: queued(server) == [] and copies(server, marker) == 0)
    await wait_until(lambda: marker not in database_bytes(server))
    carol_client = await connect(server.ws_url)
    await carol_client.authenticate(carol)
    assert await carol_client.until_drained() == []


async def test_server_skips_unknown_removed_and_full_recipients(
    server_factory: Callable[..., ServerProcess], connect: Connect, online: Online
) -> None:
    """An unknown user, a device removed from its list and a device whose queue is full
    are listed in skipped_recipients; the others get the envelope. With nobody left, the
    envelope is skipped and nothing is stored. Once the full queue has room, a resend
    queues the copy already held for it."""
    server = server_factory("--max-queue", "1")
    dave_client, dave = await online(server, "dave")
    alice_client, alice, alice_laptop_client, alice_laptop = await with_laptop(
        server, connect, online, "alice"
    )
    removed = await alice_client.request(alice.account.publish_frame(2, [alice]))
    assert removed == DevicesPublished(id=2, version=3), removed
    await alice_laptop_client.expect_close()
    bob = await offline(server, online, "bob")
    filler = outbound(bob, b"fills bob's queue")
    await send(dave_client, 1, filler)
    carol = await offline(server, online, "carol")
    nobody = RawDevice("nobody")
    marker, ciphertext = marked()
    envelope = multi([nobody, alice_laptop, bob, carol, alice], ciphertext)

    await send_multi(dave_client, 2, envelope, nobody, alice_laptop, bob)
    assert queued(server) == [("bob/phone", filler.envelope_id), *entries(envelope, carol, alice)]
    assert copies(server, marker) == 1
    assert await alice_client.deliveries(1) == as_delivered(dave, envelope)

    lonely_marker, lonely_ciphertext = marked()
    lonely = multi([nobody, bob, alice_laptop], lonely_ciphertext)
    reply = await dave_client.request(SendMulti(id=3, envelope=lonely))
    assert reply == Sent(
        id=3,
        envelope_ids=[],
        skipped=[lonely.envelope_id],
        skipped_recipients=[recipient(nobody), recipient(bob), recipient(alice_laptop)],
    )
    nobody_at_all = multi([], b"for no one")
    reply = await dave_client.request(SendMulti(id=4, envelope=nobody_at_all))
    assert reply == Sent(id=4, envelope_ids=[], skipped=[nobody_at_all.envelope_id])
    assert copies(server, lonely_marker) == 0
    assert len(queued(server)) == 3

    bob_client = await connect(server.ws_url)
    await bob_client.authenticate(bob)
    assert [e.envelope_id for e in await bob_client.until_drained()] == [filler.envelope_id]
    await bob_client.send(Ack(envelope_ids=[filler.envelope_id]))
    await settled(bob_client, bob, 1)
    await send_multi(dave_client, 5, envelope, nobody, alice_laptop)
    assert await bob_client.deliveries(1) == as_delivered(dave, envelope)
    assert queued(server) == entries(envelope, carol, alice, bob)
    assert copies(server, marker) == 1


async def test_server_refuses_too_many_recipients_a_recipient_twice_or_too_large_a_ciphertext(
    server_factory: Callable[..., ServerProcess], connect: Connect, online: Online
) -> None:
    """Past max_recipients_per_envelope: too_many_items; past max_envelope_bytes:
    envelope_too_large; a recipient named twice: malformed_frame; before authentication:
    not_authenticated. Nothing is stored; exactly at the limits the envelope is taken."""
    server = server_factory("--max-envelope-bytes", "1000")
    dave_client, _ = await online(server, "dave")
    bob = await offline(server, online, "bob")
    carol = await offline(server, online, "carol")
    limits = dave_client.challenge.limits
    assert limits.max_recipients_per_envelope == 2000
    strangers = [
        Recipient(to_user=f"user{i:04d}", to_device="phone")
        for i in range(limits.max_recipients_per_envelope)
    ]

    too_many = multi([bob, *strangers], b"x")
    reply = await dave_client.request(SendMulti(id=1, envelope=too_many))
    assert isinstance(reply, Error) and reply.id == 1 and reply.code is ErrorCode.TOO_MANY_ITEMS
    too_large = multi([bob], b"x" * 1001)
    reply = await dave_client.request(SendMulti(id=2, envelope=too_large))
    assert isinstance(reply, Error) and reply.code is ErrorCode.ENVELOPE_TOO_LARGE
    twice = multi([bob, carol, bob], b"x")
    reply = await dave_client.request(SendMulti(id=3, envelope=twice))
    assert isinstance(reply, Error) and reply.code is ErrorCode.MALFORMED_FRAME
    assert "bob/phone" in reply.message
    stranger_client = await connect(server.ws_url)
    reply = await stranger_client.request(SendMulti(id=4, envelope=multi([bob], b"x")))
    assert isinstance(reply, Error) and reply.code is ErrorCode.NOT_AUTHENTICATED
    assert queued(server) == []

    at_the_limits = multi([bob, *strangers[1:]], b"x" * 1000)
    reply = await dave_client.request(SendMulti(id=5, envelope=at_the_limits))
    assert reply == Sent(
        id=5, envelope_ids=[at_the_limits.envelope_id], skipped_recipients=strangers[1:]
    )
    assert queued(server) == entries(at_the_limits, bob)


async def test_server_stores_a_resent_group_envelope_once(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """The same envelope sent again, also pipelined, gets the same answer; nothing is
    stored or delivered twice."""
    dave_client, dave = await online(server, "dave")
    bob = await offline(server, online, "bob")
    carol_client, carol = await online(server, "carol")
    marker, ciphertext = marked()
    envelope = multi([bob, carol], ciphertext)
    expected = as_delivered(dave, envelope)

    await send_multi(dave_client, 1, envelope)
    assert await carol_client.deliveries(1) == expected
    await dave_client.send(SendMulti(id=2, envelope=envelope))
    await dave_client.send(SendMulti(id=3, envelope=envelope))
    for request_id in (2, 3):
        assert await dave_client.recv() == Sent(id=request_id, envelope_ids=[envelope.envelope_id])
    assert copies(server, marker) == 1
    assert queued(server) == entries(envelope, bob, carol)
    await settled(carol_client, carol, 1)  # no second push

    bob_client = await connect(server.ws_url)
    await bob_client.authenticate(bob)
    assert await bob_client.until_drained() == expected


async def test_server_pushes_the_held_copy_when_a_resend_carries_other_bytes(
    server: ServerProcess, online: Online
) -> None:
    """A resend under the same id with different bytes (a client bug or a replay) queues
    and pushes the copy already held: every device gets the same bytes, once stored."""
    dave_client, dave = await online(server, "dave")
    bob = await offline(server, online, "bob")
    erin_client, erin = await online(server, "erin")
    marker, ciphertext = marked()
    envelope = multi([bob], ciphertext)
    await send_multi(dave_client, 1, envelope)
    other_marker, other = marked()
    again = MultiEnvelope(
        envelope_id=envelope.envelope_id,
        recipients=[recipient(bob), recipient(erin)],
        ciphertext=other,
    )
    await send_multi(dave_client, 2, again)
    assert await erin_client.deliveries(1) == as_delivered(dave, envelope)
    assert copies(server, marker) == 1 and copies(server, other_marker) == 0


async def test_server_keeps_a_sent_group_envelope_through_a_crash(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """kill -9 after `sent`, restart: every device gets the envelope once, and the
    ciphertext goes after the last ack."""
    dave_client, dave = await online(server, "dave")
    _, alice, _, alice_laptop = await with_laptop(server, connect, online, "alice")
    _, bob = await online(server, "bob")
    marker, ciphertext = marked()
    envelope = multi([alice, alice_laptop, bob], ciphertext)
    await send_multi(dave_client, 1, envelope)
    server.kill()
    server.start()

    assert copies(server, marker) == 1
    for request_id, device in enumerate((alice, alice_laptop, bob), 1):
        client = await connect(server.ws_url)
        await client.authenticate(device)
        assert await client.until_drained() == as_delivered(dave, envelope)
        await acked(client, device, envelope, request_id)
    await wait_until(lambda: queued(server) == [] and copies(server, marker) == 0)


async def test_server_crash_before_sent_leaves_the_group_resend_idempotent(
    server_factory: Callable[..., ServerProcess], connect: Connect, online: Online
) -> None:
    """Killed after the durable write but before `sent`: the resend after the restart
    adds no copy and no entry, and each device gets the envelope once."""
    server = server_factory(env={"OBROLAN_FAILPOINTS": "relay.after_store"})
    dave_client, dave = await online(server, "dave")
    bob = await offline(server, online, "bob")
    carol = await offline(server, online, "carol")
    marker, ciphertext = marked()
    envelope = multi([bob, carol], ciphertext)
    await dave_client.send(SendMulti(id=1, envelope=envelope))
    await dave_client.expect_close()
    assert server.stop() == -signal.SIGKILL  # the failpoint killed it before `sent`
    assert copies(server, marker) == 1

    server.env = {}
    server.start()
    dave_again = await connect(server.ws_url)
    await dave_again.authenticate(dave)
    await dave_again.until_drained()
    await send_multi(dave_again, 1, envelope)
    assert copies(server, marker) == 1
    assert queued(server) == entries(envelope, bob, carol)
    for device in (bob, carol):
        client = await connect(server.ws_url)
        await client.authenticate(device)
        assert await client.until_drained() == as_delivered(dave, envelope)


async def test_server_drops_a_removed_devices_entry_and_the_ciphertext_with_the_last(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """A device removed from its list takes its queue entry along; when the account is
    recovered onto a new device, the last entry goes and the ciphertext with it."""
    dave_client, dave = await online(server, "dave")
    alice_client, alice, alice_laptop_client, alice_laptop = await with_laptop(
        server, connect, online, "alice"
    )
    await alice_client.close()
    marker, ciphertext = marked()
    envelope = multi([alice, alice_laptop], ciphertext)
    await send_multi(dave_client, 1, envelope)
    assert await alice_laptop_client.deliveries(1) == as_delivered(dave, envelope)

    removed = await alice_laptop_client.request(alice.account.publish_frame(2, [alice]))
    assert removed == DevicesPublished(id=2, version=3), removed
    assert queued(server) == entries(envelope, alice)
    assert copies(server, marker) == 1

    new_phone = RawDevice("alice", "new-phone")
    recovering = await connect(server.ws_url)
    await recovering.recover(new_phone, alice.account.recovery)
    assert queued(server) == []
    await wait_until(lambda: copies(server, marker) == 0)
    await wait_until(lambda: marker not in database_bytes(server))


async def test_admin_counts_a_group_ciphertext_once(server: ServerProcess, online: Online) -> None:
    """stats: a group envelope is one queue entry per device, but its bytes count once;
    disclose lists each entry with the size of the one ciphertext, never the ciphertext."""
    dave_client, _ = await online(server, "dave")
    bob = await offline(server, online, "bob")
    carol = await offline(server, online, "carol")
    marker, ciphertext = marked(500)
    envelope = multi([bob, carol], ciphertext)
    await send_multi(dave_client, 1, envelope)
    direct = outbound(bob, b"one to one")
    await send(dave_client, 2, direct)
    data = str(server.data_dir)

    stats = await admin_json("stats", "--data", data)
    assert (stats["queued_envelopes"], stats["queued_bytes"]) == (3, len(ciphertext) + 10)
    sender_side = await admin_json("disclose", "dave", "--data", data)
    assert [
        (q["envelope_id"], q["to_user"], q["to_device"], q["size"])
        for q in sender_side["queued_from_account"]
    ] == [
        (envelope.envelope_id, "bob", "phone", len(ciphertext)),
        (envelope.envelope_id, "carol", "phone", len(ciphertext)),
        (direct.envelope_id, "bob", "phone", 10),
    ]
    bob_side = await admin_json("disclose", "bob", "--data", data)
    assert [
        (q["envelope_id"], q["from_user"], q["size"]) for q in bob_side["queued_for_account"]
    ] == [
        (envelope.envelope_id, "dave", len(ciphertext)),
        (direct.envelope_id, "dave", 10),
    ]
    assert marker.decode() not in str(sender_side) + str(bob_side)
