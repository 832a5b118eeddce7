"""Small conversations the server tests repeat: send and wait for `sent`, go offline, sync."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from obrolan.protocol.frames import (
    Deliver,
    Devices,
    Drained,
    Envelope,
    GetDevices,
    OutboundEnvelope,
    Send,
    Sent,
)
from tests.server.conftest import Online
from tests.support.raw_client import RawClient, RawDevice
from tests.support.server import ServerProcess

__all__ = ["POLL_GUARD_SECONDS", "delivered", "offline", "round_trip", "send", "wait_until"]

POLL_GUARD_SECONDS = 15.0
"""Polls give the server time to commit, checkpoint or sweep; they fail, never hang, past this."""


async def send(client: RawClient, request_id: int, *envelopes: OutboundEnvelope) -> Sent:
    """Send envelopes in one frame and return the `sent` reply (skipping deliveries)."""
    await client.send(Send(id=request_id, envelopes=list(envelopes)))
    while isinstance(reply := await client.recv(), Deliver | Drained):
        pass
    assert reply == Sent(id=request_id, envelope_ids=[e.envelope_id for e in envelopes]), reply
    return reply


async def offline(server: ServerProcess, online: Online, username: str) -> RawDevice:
    """Register a device and disconnect it."""
    client, device = await online(server, username)
    await client.close()
    return device


async def round_trip(client: RawClient, request_id: int) -> None:
    """Wait until the server has handled every frame this client sent before."""
    reply = await client.request(GetDevices(id=request_id, username="alice"))
    assert isinstance(reply, Devices), reply


def delivered(sender: RawDevice, *envelopes: OutboundEnvelope) -> list[Envelope]:
    """The envelopes as the recipient should receive them from ``sender``."""
    return [
        Envelope(e.envelope_id, sender.username, sender.device_id, e.ciphertext) for e in envelopes
    ]


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll for a state the server reaches asynchronously (no duration is asserted)."""
    async with asyncio.timeout(POLL_GUARD_SECONDS):
        while not condition():
            await asyncio.sleep(0.02)
