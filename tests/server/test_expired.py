"""An envelope that expires unread is counted for its device, told in `welcome`, cleared by `ack`."""

from __future__ import annotations

import time
from collections.abc import Callable

from obrolan.protocol.frames import Ack, Devices, GetDevices
from tests.server.conftest import Connect, Online
from tests.server.exchange import offline, send, wait_until
from tests.server.test_admin import admin_json
from tests.support.raw_client import outbound
from tests.support.server import ServerProcess


async def test_welcome_counts_envelopes_that_expired_unread_until_acknowledged(
    server_factory: Callable[..., ServerProcess], connect: Connect, online: Online
) -> None:
    """The sweeper deletes the envelope; bob's next welcome says 1 until he acks it."""
    server = server_factory("--envelope-ttl", "1", "--sweep-interval", "0.2")
    alice_client, _ = await online(server, "alice")
    bob = await offline(server, online, "bob")
    await send(alice_client, 1, outbound(bob, b"never read"))
    await wait_until(lambda: server.mailbox() == [])

    first = await connect(server.ws_url)
    assert (await first.authenticate(bob)).expired == 1
    assert await first.until_drained() == []
    await first.close()

    again = await connect(server.ws_url)  # not acknowledged yet: still told
    assert (await again.authenticate(bob)).expired == 1
    await again.until_drained()
    data = str(server.data_dir)
    (device,) = (await admin_json("disclose", "bob", "--data", data))["devices"]
    assert device["expired_unread"] == 1  # the operator sees the count, nothing more
    await again.send(Ack(envelope_ids=[], expired=1))
    # Frames are handled in order: once this answer is here, the ack's write is done.
    assert isinstance(await again.request(GetDevices(id=1, username="bob")), Devices)
    (device,) = (await admin_json("disclose", "bob", "--data", data))["devices"]
    assert device["expired_unread"] == 0
    await again.close()

    last = await connect(server.ws_url)
    assert (await last.authenticate(bob)).expired == 0


async def test_delivery_skips_an_envelope_past_its_ttl_before_the_sweep(
    server_factory: Callable[..., ServerProcess], connect: Connect, online: Online
) -> None:
    """With the sweeper far off, an expired envelope is not delivered, and is counted."""
    server = server_factory("--envelope-ttl", "1", "--sweep-interval", "3600")
    alice_client, _ = await online(server, "alice")
    bob = await offline(server, online, "bob")
    stored_at = time.time()
    await send(alice_client, 1, outbound(bob, b"too late"))
    assert len(server.mailbox()) == 1
    await wait_until(lambda: time.time() > stored_at + 2)

    bob_client = await connect(server.ws_url)
    assert (await bob_client.authenticate(bob)).expired == 1
    assert await bob_client.until_drained() == []
