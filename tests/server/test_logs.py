"""Logs hold no IP addresses, and at the default level no line per message or connection."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

from obrolan.protocol.frames import Ack, Send, Sent
from obrolan.server.logs import redact_addresses
from tests.server.conftest import Connect, Online
from tests.server.exchange import offline, round_trip, send
from tests.support.raw_client import RawDevice, outbound
from tests.support.server import ServerProcess

_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)$"
)
LIFECYCLE = re.compile(
    r"database schema migrated to version \d+|obrolan server \S+ started on port \d+|shutting down"
    r"|stopped|created a new, empty server database|marked \S+ as in use \((obrolan|blobs)\.db\)"
)


async def chat(server: ServerProcess, connect: Connect, online: Online) -> list[str]:
    """Register, send, deliver, ack, and fail an authentication; returns the names and ids used."""
    alice_client, alice = await online(server, "alice")
    bob = await offline(server, online, "bob")
    envelopes = [outbound(bob, f"message {i}".encode()) for i in range(20)]
    for n, envelope in enumerate(envelopes):
        await send(alice_client, n + 1, envelope)
    bob_client = await connect(server.ws_url)
    await bob_client.authenticate(bob)
    await bob_client.until_drained()
    await bob_client.send(Ack(envelope_ids=[e.envelope_id for e in envelopes]))
    await round_trip(bob_client, 1)
    intruder = await connect(server.ws_url)
    await intruder.request(RawDevice("alice").authenticate_frame(intruder.challenge.nonce))
    await alice_client.send_text("{not json")
    await alice_client.recv()
    return [alice.username, bob.username, *(e.envelope_id for e in envelopes)]


def messages(text: str) -> list[str]:
    """The message part of every log record (tracebacks belong to their record)."""
    return [match["message"] for line in text.splitlines() if (match := _LINE.match(line))]


async def test_server_logs_no_addresses_and_no_per_message_lines_at_info(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """After a chat at the default level, the log has only lifecycle lines and no client address."""
    used = await chat(server, connect, online)
    assert server.stop() == 0
    for text in (server.log_text, server.stderr_text):
        assert "127.0.0.1" not in text
        assert not any(name in text for name in used)
        assert all(LIFECYCLE.fullmatch(message) for message in messages(text)), text


async def test_server_logs_per_message_lines_only_at_debug(
    server_factory: Callable[..., ServerProcess], connect: Connect, online: Online
) -> None:
    """At DEBUG the relay logs each frame's work, still without any IP address."""
    server = server_factory("--log-level", "DEBUG")
    await chat(server, connect, online)
    server.stop()
    assert "stored 1 envelopes" in server.log_text
    assert "127.0.0.1" not in server.log_text and "127.0.0.1" not in server.stderr_text


async def test_server_blanks_addresses_that_libraries_log(
    server: ServerProcess, online: Online
) -> None:
    """aiohttp's own "error handling request from <address>" lines reach the log with the address blanked."""
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        assert raw.recv(64).startswith(b"HTTP/1.")
    client, _ = await online(server, "alice")  # served after the bad request
    assert await client.request(Send(id=1, envelopes=[])) == Sent(id=1, envelope_ids=[])
    server.stop()
    assert "[address]" in server.log_text
    assert "127.0.0.1" not in server.log_text and "127.0.0.1" not in server.stderr_text


def test_redaction_covers_ipv4_ipv6_and_mapped_addresses() -> None:
    """Every address form a socket library prints is blanked; versions and log times are not."""
    assert (
        redact_addresses("from 192.168.1.20:5555 and 10.0.0.1.")
        == "from [address]:5555 and [address]."
    )
    assert redact_addresses("peer ::1, [2001:db8::8a2e:370:7334]:443, ::ffff:127.0.0.1") == (
        "peer [address], [[address]]:443, [address]"
    )
    assert redact_addresses("obrolan 0.1.0 on protocol 1.2.3") == "obrolan 0.1.0 on protocol 1.2.3"
