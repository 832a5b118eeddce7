"""A connection that does not complete its request head in time is closed (--request-timeout)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tests.server.conftest import Online
from tests.support.server import ServerProcess

CLOSE_GUARD_SECONDS = 15.0
"""A connection the server has not closed by then never will be: the test fails."""
PARTIAL_UPGRADE = (
    b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
)


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection."""
    received = b""
    while chunk := await reader.read(1024):
        received += chunk
    return received


async def test_a_half_sent_upgrade_is_closed_and_others_are_served(
    server_factory: Callable[..., ServerProcess], online: Online
) -> None:
    """An upgrade whose head never ends is closed after --request-timeout, unanswered."""
    server = server_factory("--request-timeout", "0.5")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(PARTIAL_UPGRADE)
        await writer.drain()
        received = await asyncio.wait_for(_closed_by_server(reader), CLOSE_GUARD_SECONDS)
        assert received == b""
    finally:
        writer.close()
    client, _ = await online(server, "alice")  # a complete upgrade is served as ever
    assert client.challenge is not None


async def test_an_upgrade_trickled_byte_by_byte_is_closed(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """Sending the head a byte at a time does not keep the connection open."""
    server = server_factory("--request-timeout", "0.5")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

    async def trickle() -> None:
        head = PARTIAL_UPGRADE + b"X-Padding: " + b"a" * 100_000
        with contextlib.suppress(ConnectionError):
            for index in range(len(head)):
                writer.write(head[index : index + 1])
                await writer.drain()
                await asyncio.sleep(0.05)

    trickling = asyncio.create_task(trickle())
    try:
        await asyncio.wait_for(_closed_by_server(reader), CLOSE_GUARD_SECONDS)
    finally:
        trickling.cancel()
        writer.close()
