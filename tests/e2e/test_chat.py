"""Two real clients chat through a real server process; the server keeps nothing after delivery."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path

from obrolan.client import Client, MessageState
from tests.e2e.conftest import Cli, mailbox_ciphertexts, mailbox_rows


async def test_clients_exchange_messages_both_ways(pair: tuple[Client, Client]) -> None:
    """alice → bob and bob → alice decrypt, and both histories hold the conversation."""
    alice, bob = pair
    await alice.send("bob", "hi bob")
    await alice.flush(timeout=30)
    received = await bob.sync()
    assert [(m.sender, m.text) for m in received] == [("alice", "hi bob")]

    await bob.send("alice", "hi alice")
    await bob.flush(timeout=30)
    assert [m.text for m in await alice.sync()] == ["hi alice"]

    expected = [("alice", "hi bob"), ("bob", "hi alice")]
    assert [(m.sender, m.text) for m in alice.history("bob")] == expected
    assert [(m.sender, m.text) for m in bob.history("alice")] == expected
    assert alice.history("bob")[0].state is MessageState.SENT


async def test_offline_recipient_gets_message_on_connect_and_mailbox_empties(
    server,
    pair: tuple[Client, Client],  # type: ignore[no-untyped-def]
) -> None:
    """A message to an offline device waits on the server, arrives on connect, then is deleted."""
    alice, bob = pair
    for i in range(3):
        await alice.send("bob", f"while you were away {i}")
    await alice.flush(timeout=30)
    assert mailbox_rows(server.data_dir) == 3

    received = await bob.sync()
    assert [m.text for m in received] == [f"while you were away {i}" for i in range(3)]
    await _wait_for(lambda: mailbox_rows(server.data_dir, to="bob") == 0)
    assert mailbox_rows(server.data_dir, to="alice") == 1  # bob's delivery receipt waits for her
    await alice.sync()
    await _wait_for(lambda: mailbox_rows(server.data_dir) == 0)


async def test_live_delivery_streams_to_a_listening_client(pair: tuple[Client, Client]) -> None:
    """A connected device receives a message pushed the moment it is stored."""
    alice, bob = pair
    stream = bob.messages()
    await bob.sync()
    await alice.send("bob", "pushed live")
    message = await asyncio.wait_for(anext(stream), 30)
    assert (message.sender, message.text) == ("alice", "pushed live")


async def test_server_never_sees_plaintext_and_keeps_no_ciphertext_after_ack(
    server,
    pair: tuple[Client, Client],  # type: ignore[no-untyped-def]
) -> None:
    """100 marked messages: no marker on the server or in the devices' raw files; no ciphertext
    left on the server after acks."""
    alice, bob = pair
    markers = [f"MARKER-{uuid.uuid4().hex}" for _ in range(100)]
    for marker in markers:
        await alice.send("bob", f"secret {marker}")
    await alice.flush(timeout=60)
    stored = mailbox_ciphertexts(server.data_dir)
    assert len(stored) == 100

    def server_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in Path(server.data_dir).rglob("*") if p.is_file())

    # A probe from the Olm body of each envelope (its head is the sender's public key,
    # which the server keeps in its device table by design).
    # Files are read one after another while the server may checkpoint: poll, never trust one read.
    probes = [c[-48:-16] for c in stored]
    await _wait_for(lambda: all(p in server_bytes() for p in probes))  # the probes do work

    received = await bob.sync(timeout=60)
    assert sorted(m.text for m in received) == sorted(f"secret {m}" for m in markers)
    # Deleted rows are zeroed (secure_delete) and the WAL is truncated once the server is idle.
    await _wait_for(lambda: not any(p in server_bytes() for p in probes), timeout=30)
    await asyncio.sleep(0.5)
    assert not any(p in server_bytes() for p in probes)
    everything = server_bytes()
    assert not any(m.encode() in everything for m in markers)
    # Both devices keep the history, encrypted at rest: no marker in their raw files either.
    for client in pair:
        history = [m.text for m in client.history("bob" if client is alice else "alice")]
        assert len(history) == 100
        device_bytes = b"".join(
            p.read_bytes() for p in client.profile_dir.rglob("*") if p.is_file()
        )
        assert not any(m.encode() in device_bytes for m in markers)


async def test_disclose_after_chatting_holds_no_ciphertext_plaintext_or_contacts(
    server,
    pair: tuple[Client, Client],
    cli: Cli,  # type: ignore[no-untyped-def]
) -> None:
    """`admin disclose` prints the account's keys and days, and nothing of the conversation."""
    alice, bob = pair
    for client in pair:
        client.set_receipts(False)  # no receipt left waiting: the mailbox ends empty
    marker = f"MARKER-{uuid.uuid4().hex}"
    await alice.send("bob", marker)
    await alice.flush(timeout=30)
    ciphertext = mailbox_ciphertexts(server.data_dir)[0]
    await bob.sync()
    await bob.send("alice", "reply")
    await bob.flush(timeout=30)
    await alice.sync()
    await _wait_for(lambda: mailbox_rows(server.data_dir) == 0)

    result = cli("admin", "disclose", "alice", "--data", str(server.data_dir))
    assert result.returncode == 0, result.stderr
    disclosed = json.loads(result.stdout)
    assert disclosed["username"] == "alice"
    text = result.stdout
    assert marker not in text
    assert "reply" not in text
    assert "bob" not in text
    assert base64.b64encode(ciphertext[:30]).decode()[:20] not in text


async def _wait_for(condition, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    """Poll a condition the server reaches asynchronously (no timing is asserted)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)
