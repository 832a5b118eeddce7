"""The mailbox: durable before `sent`, delivered in order, deleted on ack, idempotent, crash-safe."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import (
    Ack,
    Deliver,
    Devices,
    Error,
    GetDevices,
    OutboundEnvelope,
    Send,
    Sent,
)
from tests.server.conftest import Connect, Online
from tests.server.exchange import delivered, offline, round_trip, send, wait_until
from tests.support.raw_client import RawClient, RawDevice, envelope_id, outbound
from tests.support.server import ServerProcess


async def test_server_stores_envelopes_before_answering_sent(
    server: ServerProcess, online: Online
) -> None:
    """When `sent` arrives, every envelope is in the database file, with the sender set by the server."""
    alice_client, _ = await online(server, "alice")
    bob = await offline(server, online, "bob")
    envelopes = [outbound(bob, f"ciphertext {i}".encode()) for i in range(3)]
    await send(alice_client, 1, *envelopes)
    assert server.mailbox() == [
        ("bob/phone", e.envelope_id, "alice/phone", e.ciphertext) for e in envelopes
    ]


async def test_server_delivers_queued_envelopes_in_order_then_drained(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """An offline device gets its queue on connect, in storage order, then one `drained`."""
    alice_client, alice = await online(server, "alice")
    bob = await offline(server, online, "bob")
    envelopes = [outbound(bob, f"message {i}".encode()) for i in range(6)]
    await send(alice_client, 1, envelopes[0], envelopes[1])
    await send(alice_client, 2, envelopes[2])
    await send(alice_client, 3, *envelopes[3:])

    bob_client = await connect(server.ws_url)
    await bob_client.authenticate(bob)
    assert await bob_client.until_drained() == delivered(alice, *envelopes)


async def test_server_deletes_acked_envelopes_from_the_database(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """After `ack` the envelopes are gone from the mailbox table; unknown ids are ignored."""
    alice_client, _ = await online(server, "alice")
    bob = await offline(server, online, "bob")
    await send(alice_client, 1, outbound(bob, b"one"), outbound(bob, b"two"))
    bob_client = await connect(server.ws_url)
    await bob_client.authenticate(bob)
    received = await bob_client.until_drained()
    assert len(server.mailbox()) == 2

    await bob_client.send(Ack(envelope_ids=[e.envelope_id for e in received] + [envelope_id()]))
    await wait_until(lambda: server.mailbox() == [])  # the delete commits a moment later


async def test_server_pushes_to_a_connected_device_at_once(
    server: ServerProcess, online: Online
) -> None:
    """A device that is online receives a new envelope without reconnecting."""
    alice_client, alice = await online(server, "alice")
    bob_client, bob = await online(server, "bob")
    envelope = outbound(bob, b"live")
    await send(alice_client, 1, envelope)
    assert await bob_client.deliveries(1) == delivered(alice, envelope)


async def test_server_stores_a_resent_envelope_once(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """The same envelope id sent twice (and twice in one frame) is stored and delivered once."""
    alice_client, alice = await online(server, "alice")
    bob = await offline(server, online, "bob")
    envelope = outbound(bob, b"only once")
    await send(alice_client, 1, envelope)
    await send(alice_client, 2, envelope)
    await send(alice_client, 3, envelope, envelope)
    assert len(server.mailbox()) == 1

    bob_client = await connect(server.ws_url)
    await bob_client.authenticate(bob)
    assert await bob_client.until_drained() == delivered(alice, envelope)


async def test_server_keeps_a_sent_envelope_through_a_crash(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """kill -9 after `sent`, restart: the recipient gets the envelope exactly once."""
    alice_client, alice = await online(server, "alice")
    bob = await offline(server, online, "bob")
    envelope = outbound(bob, b"survives")
    await send(alice_client, 1, envelope)
    server.kill()
    server.start()

    bob_client = await connect(server.ws_url)
    await bob_client.authenticate(bob)
    assert await bob_client.until_drained() == delivered(alice, envelope)
    await bob_client.send(Ack(envelope_ids=[envelope.envelope_id]))
    await round_trip(bob_client, 1)
    await bob_client.close()

    again = await connect(server.ws_url)
    await again.authenticate(bob)
    assert await again.until_drained() == []


async def test_server_crash_before_sent_leaves_the_resend_idempotent(
    server_factory: Callable[..., ServerProcess], connect: Connect, online: Online
) -> None:
    """Killed after the durable write but before `sent`: the sender's resend is stored once."""
    server = server_factory(env={"OBROLAN_FAILPOINTS": "relay.after_store"})
    alice_client, alice = await online(server, "alice")
    bob = await offline(server, online, "bob")
    envelope = outbound(bob, b"written, never acknowledged")
    await alice_client.send(Send(id=1, envelopes=[envelope]))
    await alice_client.expect_close()
    assert server.stop() == -signal.SIGKILL  # the failpoint killed it before `sent`
    assert len(server.mailbox()) == 1

    server.env = {}
    server.start()
    alice_again = await connect(server.ws_url)
    await alice_again.authenticate(alice)
    await alice_again.until_drained()
    await send(alice_again, 1, envelope)

    bob_client = await connect(server.ws_url)
    await bob_client.authenticate(bob)
    assert await bob_client.until_drained() == delivered(alice, envelope)


async def test_server_redelivers_unacked_envelopes_on_the_next_connection(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """An envelope delivered but not acked comes again on the device's next connection."""
    alice_client, alice = await online(server, "alice")
    bob_client, bob = await online(server, "bob")
    envelope = outbound(bob, b"again")
    await send(alice_client, 1, envelope)
    assert await bob_client.deliveries(1) == delivered(alice, envelope)
    await bob_client.close()

    bob_again = await connect(server.ws_url)
    await bob_again.authenticate(bob)
    assert await bob_again.until_drained() == delivered(alice, envelope)


async def test_server_keeps_at_most_the_delivery_window_unacked(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """With 300 queued, 256 (the window) are pushed; the rest and `drained` follow the acks."""
    alice_client, _ = await online(server, "alice")
    bob = await offline(server, online, "bob")
    envelopes = [outbound(bob, i.to_bytes(2, "big")) for i in range(300)]
    for n in range(3):
        await send(alice_client, n + 1, *envelopes[n * 100 : (n + 1) * 100])

    bob_client = await connect(server.ws_url)
    window = bob_client.challenge.limits.delivery_window
    assert window == 256
    await bob_client.authenticate(bob)
    first = await bob_client.deliveries(window)
    assert len(first) == window
    await round_trip(bob_client, 1)  # nothing more was pushed before this reply

    await bob_client.send(Ack(envelope_ids=[e.envelope_id for e in first]))
    rest = await bob_client.until_drained()
    assert [e.envelope_id for e in first + rest] == [e.envelope_id for e in envelopes]


async def test_server_refuses_sends_to_unknown_users_and_skips_unknown_devices(
    server: ServerProcess, online: Online
) -> None:
    """A frame naming an unknown user is refused as a whole; an envelope for a device the
    account does not have is skipped (named in sent.skipped) and the others are stored."""
    alice_client, _ = await online(server, "alice")
    bob = await offline(server, online, "bob")
    good = outbound(bob, b"good")
    to_unknown_device = outbound(RawDevice("bob", "tablet"), b"skipped")
    to_unknown_user = outbound(RawDevice("nobody"), b"bad")

    reply = await alice_client.request(Send(id=1, envelopes=[good, to_unknown_user]))
    assert isinstance(reply, Error) and reply.id == 1 and reply.code is ErrorCode.UNKNOWN_USER
    assert server.mailbox() == []
    reply = await alice_client.request(Send(id=2, envelopes=[to_unknown_device, good]))
    assert reply == Sent(
        id=2, envelope_ids=[good.envelope_id], skipped=[to_unknown_device.envelope_id]
    )
    assert [(to, envelope_id) for to, envelope_id, _, _ in server.mailbox()] == [
        ("bob/phone", good.envelope_id)
    ]


async def test_server_refuses_a_send_beyond_the_queue_limit(
    server_factory: Callable[..., ServerProcess], online: Online
) -> None:
    """With --max-queue 3, a fourth waiting envelope gets queue_full; a resend does not count."""
    server = server_factory("--max-queue", "3")
    alice_client, _ = await online(server, "alice")
    bob = await offline(server, online, "bob")
    first, second, third = (outbound(bob, b"x") for _ in range(3))
    await send(alice_client, 1, first, second)

    reply = await alice_client.request(Send(id=2, envelopes=[third, outbound(bob, b"y")]))
    assert isinstance(reply, Error) and reply.id == 2 and reply.code is ErrorCode.QUEUE_FULL
    assert len(server.mailbox()) == 2
    await send(alice_client, 3, first, second, third)
    assert len(server.mailbox()) == 3


async def test_server_refuses_too_many_envelopes_or_acks_in_one_frame(
    server: ServerProcess, online: Online
) -> None:
    """More envelopes than max_envelopes_per_send, or ids than max_acks_per_frame: too_many_items."""
    alice_client, _ = await online(server, "alice")
    bob = await offline(server, online, "bob")
    limits = alice_client.challenge.limits
    reply = await alice_client.request(
        Send(
            id=1, envelopes=[outbound(bob, b"x") for _ in range(limits.max_envelopes_per_send + 1)]
        )
    )
    assert isinstance(reply, Error) and reply.id == 1 and reply.code is ErrorCode.TOO_MANY_ITEMS
    reply = await alice_client.request(
        Ack(envelope_ids=[envelope_id() for _ in range(limits.max_acks_per_frame + 1)])
    )
    assert isinstance(reply, Error) and reply.id is None and reply.code is ErrorCode.TOO_MANY_ITEMS
    assert server.mailbox() == []


async def test_server_delivers_concurrent_senders_to_one_device(
    server: ServerProcess, online: Online
) -> None:
    """Envelopes sent from many connections at once all arrive, each once."""
    bob_client, bob = await online(server, "bob")
    senders = [(await online(server, f"sender{i}"))[0] for i in range(8)]
    batches = [[outbound(bob, f"{i}-{n}".encode()) for n in range(5)] for i in range(len(senders))]
    await asyncio.gather(
        *(send(client, 1, *batch) for client, batch in zip(senders, batches, strict=True))
    )
    received = await bob_client.deliveries(40)
    assert sorted(e.envelope_id for e in received) == sorted(
        e.envelope_id for batch in batches for e in batch
    )


async def test_server_counts_queued_envelopes_again_after_a_restart(
    server_factory: Callable[..., ServerProcess], connect: Connect, online: Online
) -> None:
    """The queue limit holds across a restart, and an ack makes room again."""
    server = server_factory("--max-queue", "3")
    alice_client, alice = await online(server, "alice")
    bob = await offline(server, online, "bob")
    await send(alice_client, 1, *(outbound(bob, b"x") for _ in range(3)))
    server.stop()
    server.start()

    alice_again = await connect(server.ws_url)
    await alice_again.authenticate(alice)
    await alice_again.until_drained()
    fourth = outbound(bob, b"fourth")
    reply = await alice_again.request(Send(id=1, envelopes=[fourth]))
    assert isinstance(reply, Error) and reply.id == 1 and reply.code is ErrorCode.QUEUE_FULL

    bob_client = await connect(server.ws_url)
    await bob_client.authenticate(bob)
    received = await bob_client.until_drained()
    await bob_client.send(Ack(envelope_ids=[received[0].envelope_id]))
    await round_trip(bob_client, 1)  # the server has taken the ack
    await send(alice_again, 2, fourth)
    assert len(server.mailbox()) == 3


async def pipelined_sends(client: RawClient, envelopes: list[OutboundEnvelope]) -> None:
    """Send each envelope in its own frame without waiting, then wait for every `sent`."""
    for request_id, envelope in enumerate(envelopes, 1):
        await client.send(Send(id=request_id, envelopes=[envelope]))
    answered: set[int] = set()
    while len(answered) < len(envelopes):
        reply = await client.recv()
        assert isinstance(reply, Sent), reply
        answered.add(reply.id)


async def test_server_delivers_interleaved_senders_in_storage_order_exactly_once(
    server: ServerProcess, online: Online
) -> None:
    """Ten senders at once to one live device: it gets every envelope once, in mailbox order."""
    bob_client, bob = await online(server, "bob")
    window = bob_client.challenge.limits.delivery_window
    senders = [(await online(server, f"sender{i}"))[0] for i in range(10)]
    batches = [[outbound(bob, f"{i}-{n}".encode()) for n in range(30)] for i in range(10)]
    await asyncio.gather(
        *(pipelined_sends(client, batch) for client, batch in zip(senders, batches, strict=True))
    )
    stored_order = [envelope_id for _, envelope_id, _, _ in server.mailbox()]
    assert sorted(stored_order) == sorted(e.envelope_id for batch in batches for e in batch)

    first = await bob_client.deliveries(window)
    reply = await bob_client.request(GetDevices(id=1, username="bob"))
    assert isinstance(reply, Devices), reply  # the window held the rest back
    await bob_client.send(Ack(envelope_ids=[e.envelope_id for e in first]))
    rest = await bob_client.deliveries(len(stored_order) - window)
    assert [e.envelope_id for e in first + rest] == stored_order


async def test_server_delivers_to_an_acking_device_exactly_once_per_sender_order(
    server: ServerProcess, online: Online
) -> None:
    """Ten senders at once while the device acks in bursts (the window fills and empties):
    nothing is lost or doubled, each sender's envelopes arrive in the order it sent them,
    and the mailbox empties."""
    bob_client, bob = await online(server, "bob")
    window = bob_client.challenge.limits.delivery_window
    senders = [(await online(server, f"sender{i}"))[0] for i in range(10)]
    batches = [[outbound(bob, f"{i}-{n}".encode()) for n in range(60)] for i in range(10)]
    expected = sum(len(batch) for batch in batches)

    async def receive_and_ack() -> list[str]:
        received: list[str] = []
        unacked: list[str] = []
        while len(received) < expected:
            frame = await bob_client.recv()
            if isinstance(frame, Deliver):
                ids = [e.envelope_id for e in frame.envelopes]
                received += ids
                unacked += ids
            if len(unacked) >= window // 2 or len(received) == expected:
                await bob_client.send(Ack(envelope_ids=unacked))
                unacked = []
        return received

    receiving = asyncio.create_task(receive_and_ack())
    await asyncio.gather(
        *(pipelined_sends(client, batch) for client, batch in zip(senders, batches, strict=True))
    )
    received = await receiving
    assert len(received) == len(set(received)) == expected
    for batch in batches:
        sent_order = [e.envelope_id for e in batch]
        assert [i for i in received if i in set(sent_order)] == sent_order
    await wait_until(lambda: server.mailbox() == [])


async def test_server_answers_pipelined_requests_in_request_order(
    server: ServerProcess, online: Online
) -> None:
    """Sends, a refused send and a request sent without waiting are answered in that order."""
    alice_client, alice = await online(server, "alice")
    bob_client, bob = await online(server, "bob")
    first, last = outbound(bob, b"first"), outbound(bob, b"last")
    await alice_client.send(Send(id=1, envelopes=[first]))
    await alice_client.send(Send(id=2, envelopes=[outbound(RawDevice("nobody"), b"x")]))
    await alice_client.send(Send(id=3, envelopes=[last]))
    await alice_client.send(GetDevices(id=4, username="bob"))
    replies = [await alice_client.recv() for _ in range(4)]
    assert replies[0] == Sent(id=1, envelope_ids=[first.envelope_id])
    assert isinstance(replies[1], Error) and replies[1].id == 2
    assert replies[1].code is ErrorCode.UNKNOWN_USER
    assert replies[2] == Sent(id=3, envelope_ids=[last.envelope_id])
    assert isinstance(replies[3], Devices) and replies[3].id == 4
    assert await bob_client.deliveries(2) == delivered(alice, first, last)
