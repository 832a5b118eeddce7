"""Nothing of an envelope stays on the server after its ack or its TTL: not in the file, not in the WAL."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from obrolan.protocol.frames import Ack
from tests.server.conftest import Connect, Online
from tests.server.exchange import offline, send, wait_until
from tests.support.raw_client import outbound
from tests.support.server import ServerProcess


def database_bytes(server: ServerProcess) -> bytes:
    """The database file and its WAL, as a forensic reader of the disk would see them."""
    return b"".join(
        path.read_bytes()
        for path in (server.database, server.database.with_name("obrolan.db-wal"))
        if path.exists()
    )


async def test_server_files_hold_no_ciphertext_after_acks(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """100 acked envelopes leave none of their bytes in obrolan.db or obrolan.db-wal."""
    alice_client, _ = await online(server, "alice")
    bob = await offline(server, online, "bob")
    markers = [f"CIPHERTEXT-MARKER-{i:03d}-{secrets.token_hex(8)}".encode() for i in range(100)]
    envelopes = [outbound(bob, marker + secrets.token_bytes(300)) for marker in markers]
    await send(alice_client, 1, *envelopes[:50])
    await send(alice_client, 2, *envelopes[50:])
    stored = database_bytes(server)
    assert all(marker in stored for marker in markers)  # the scan finds queued ciphertext

    bob_client = await connect(server.ws_url)
    await bob_client.authenticate(bob)
    received = await bob_client.until_drained()
    assert len(received) == 100
    await bob_client.send(Ack(envelope_ids=[e.envelope_id for e in received]))
    await wait_until(lambda: server.mailbox() == [])

    def no_marker_left() -> bool:
        remaining = database_bytes(server)
        return not any(marker in remaining for marker in markers)

    await wait_until(no_marker_left)
    assert server.database.with_name("obrolan.db-wal").stat().st_size == 0


async def test_server_deletes_unacked_envelopes_when_their_ttl_runs_out(
    server_factory: Callable[..., ServerProcess], connect: Connect, online: Online
) -> None:
    """With a 1 s TTL and a fast sweeper, an envelope nobody acked is deleted, unread."""
    server = server_factory("--envelope-ttl", "1", "--sweep-interval", "0.2")
    alice_client, _ = await online(server, "alice")
    bob = await offline(server, online, "bob")
    marker = f"EXPIRING-{secrets.token_hex(8)}".encode()
    await send(alice_client, 1, outbound(bob, marker))
    assert len(server.mailbox()) == 1

    await wait_until(lambda: server.mailbox() == [])
    await wait_until(lambda: marker not in database_bytes(server))
    bob_client = await connect(server.ws_url)
    await bob_client.authenticate(bob)
    assert await bob_client.until_drained() == []
