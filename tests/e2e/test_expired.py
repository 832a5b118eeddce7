"""Envelopes that expire unread: the receiver is told at once, the sender sees it was not delivered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from obrolan.client import Client
from obrolan.client.models import MessageState
from tests.e2e.conftest import Cli, mailbox_rows
from tests.support.server import ServerProcess

GUARD_SECONDS = 30


async def until(condition: Callable[[], bool]) -> None:
    """Poll for a state reached asynchronously (no duration is asserted)."""
    async with asyncio.timeout(GUARD_SECONDS):
        while not condition():
            await asyncio.sleep(0.05)


async def registered(
    server: ServerProcess, profiles: Callable[[str], Path]
) -> tuple[Client, Client]:
    alice = await Client.register(profiles("alice"), server.url, "alice", None)
    bob = await Client.register(profiles("bob"), server.url, "bob", None)
    alice.accept("bob")
    bob.accept("alice")
    return alice, bob


async def test_expired_envelope_is_told_to_the_receiver_and_shown_not_delivered_to_the_sender(
    server_factory: Callable[..., ServerProcess], profiles: Callable[[str], Path]
) -> None:
    """bob is offline past the TTL: his next sync says so once; alice's message is "not delivered"."""
    server = server_factory("--envelope-ttl", "1", "--sweep-interval", "0.2")
    alice, bob = await registered(server, profiles)
    try:
        await bob.sync()
        await bob.close()
        await alice.send("bob", "you will never read this")
        await alice.flush(timeout=30)
        (sent,) = alice.history("bob")
        assert sent.state is MessageState.SENT and sent.delivery is None  # within the TTL
        await until(lambda: mailbox_rows(Path(server.data_dir), to="bob") == 0)

        async with Client.open(profiles("bob"), None) as bob_again:
            arrived = await bob_again.sync()
            notices = [m.text for m in arrived if m.state is MessageState.NOTICE]
            assert len(notices) == 1
            assert notices[0].startswith(
                "1 message sent to this device expired on the server before it connected"
            )
            assert [m.text for m in arrived if m.state is MessageState.RECEIVED] == []
            again = await bob_again.sync()  # acknowledged: not told twice
            assert [m for m in again if m.state is MessageState.NOTICE] == []

        await until(lambda: alice.history("bob")[0].delivery == "not_delivered")
    finally:
        await alice.close()
        await bob.close()

    shown = Cli(server.url)("history", "bob", "--profile", str(profiles("alice")), "--json")
    assert shown.returncode == 0, shown.stderr
    (message,) = shown.json()  # type: ignore[misc]
    assert message["delivery"] == "not_delivered"
    text = Cli(server.url)("history", "bob", "--profile", str(profiles("alice")))
    assert "not delivered" in text.stdout


async def test_receipts_off_makes_the_senders_messages_unconfirmed_not_undelivered(
    server_factory: Callable[..., ServerProcess], profiles: Callable[[str], Path]
) -> None:
    """bob sends no receipts and says so once: after the TTL alice's messages are "unconfirmed"."""
    server = server_factory("--envelope-ttl", "1", "--sweep-interval", "0.2")
    alice, bob = await registered(server, profiles)
    try:
        bob.set_receipts(False)
        await alice.send("bob", "read but never confirmed")
        await alice.flush(timeout=30)
        received = await bob.sync()
        assert [m.text for m in received] == ["read but never confirmed"]
        await bob.flush(timeout=30)  # the one receipt of status "off", covering nothing
        await alice.sync()
        (first,) = alice.history("bob")
        assert first.receipt is None

        await until(lambda: alice.history("bob")[0].delivery == "unconfirmed")
        bob.set_receipts(True)
        await alice.send("bob", "now with receipts")
        await alice.flush(timeout=30)
        await bob.sync()
        await bob.flush(timeout=30)
        await alice.sync()
        later = alice.history("bob")
        assert later[1].receipt == "delivered" and later[1].delivery is None
        assert later[0].delivery == "unconfirmed"  # sent while bob's receipts were off
    finally:
        await alice.close()
        await bob.close()
