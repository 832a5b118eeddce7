"""Fixtures of the server tests: raw protocol clients against a real server process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.support.raw_client import RawClient, RawDevice
from tests.support.server import ServerProcess

Connect = Callable[..., Awaitable[RawClient]]
Online = Callable[..., Awaitable[tuple[RawClient, RawDevice]]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``await connect(url, ssl_context=None)`` → a :class:`RawClient`, closed after the test."""
    clients: list[RawClient] = []

    async def open_client(url: str, **kwargs: Any) -> RawClient:
        client = await RawClient.connect(url, **kwargs)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()


@pytest.fixture
def online(connect: Connect) -> Online:
    """``await online(server, "alice")`` → a connection with a newly registered device, drained."""

    async def register(
        server: ServerProcess, username: str, device_id: str = "phone", **register_options: Any
    ) -> tuple[RawClient, RawDevice]:
        device = RawDevice(username, device_id)
        client = await connect(server.ws_url)
        await client.register(device, **register_options)
        assert await client.until_drained() == []
        return client, device

    return register
