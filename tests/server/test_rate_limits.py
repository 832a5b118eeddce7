"""Rate limits (spec §13.1) on a real server: a burst past a limit gets ``rate_limited``
with a retry hint, nothing of the refused request is done, and after the hint the same
request passes on the same connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from obrolan.protocol import blobs as wire
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import (
    ClaimedKeys,
    ClaimKeys,
    Devices,
    Error,
    GetDevices,
    Send,
    Sent,
    ServerFrame,
)
from tests.server.conftest import Connect, Online
from tests.server.exchange import send
from tests.server.test_blobs import call, create
from tests.support.raw_client import RawClient, RawDevice, outbound
from tests.support.server import ServerProcess


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def rate_limited(reply: ServerFrame, request_id: int | None) -> int:
    """The retry hint of a ``rate_limited`` refusal of ``request_id``."""
    assert isinstance(reply, Error), reply
    assert (reply.code, reply.id) == (ErrorCode.RATE_LIMITED, request_id), reply
    assert reply.retry_after_ms is not None and reply.retry_after_ms > 0, reply
    return reply.retry_after_ms


async def wait_out(retry_after_ms: int) -> None:
    """Wait as long as the server's hint says (no duration is asserted)."""
    await asyncio.sleep(retry_after_ms / 1000)


async def test_frames_past_the_connection_limit_are_refused_and_the_connection_goes_on(
    server_factory: Callable[..., ServerProcess], online: Online
) -> None:
    """Of a burst of requests past --frame-rate, the excess gets rate_limited with its id;
    after the hint the connection is served again."""
    server = server_factory("--frame-rate", "2", "--rate-burst", "5")  # 10 frames at once
    client, device = await online(server, "alice")  # its register took one
    for request_id in range(1, 21):
        await client.send(GetDevices(id=request_id, username=device.username))
    replies = [await client.recv() for _ in range(20)]
    assert [getattr(reply, "id", None) for reply in replies] == list(range(1, 21))
    refused = [reply for reply in replies if not isinstance(reply, Devices)]
    assert all(isinstance(reply, Devices) for reply in replies[:9])  # within the burst
    assert refused, "20 frames at once passed a limit of 10"
    hints = [rate_limited(reply, reply.id) for reply in refused]
    await wait_out(hints[-1])
    again = await client.request(GetDevices(id=21, username=device.username))
    assert isinstance(again, Devices) and again.id == 21


async def test_sends_past_the_account_limit_are_refused_and_stored_after_the_hint(
    server_factory: Callable[..., ServerProcess], online: Online
) -> None:
    """--send-rate counts envelopes per account: a refused send stores nothing, and the
    same send passes after the hint."""
    server = server_factory("--send-rate", "1", "--rate-burst", "3")  # 3 envelopes at once
    client, _ = await online(server, "alice")
    _, bob = await online(server, "bob")
    first = [outbound(bob, b"1"), outbound(bob, b"2"), outbound(bob, b"3")]
    await send(client, 1, *first)
    later = outbound(bob, b"4")
    refusal = await client.request(Send(id=2, envelopes=[later]))
    hint = rate_limited(refusal, 2)
    assert later.envelope_id not in {row[1] for row in server.mailbox()}
    await wait_out(hint)
    reply = await client.request(Send(id=3, envelopes=[later]))
    assert reply == Sent(id=3, envelope_ids=[later.envelope_id])
    assert [row[1] for row in server.mailbox()] == [e.envelope_id for e in [*first, later]]


async def test_key_claims_past_the_account_limit_are_refused_and_claim_nothing(
    server_factory: Callable[..., ServerProcess], online: Online
) -> None:
    """--claim-rate counts keys handed out per account; a refused claim takes no key."""
    server = server_factory("--claim-rate", "1", "--rate-burst", "2")  # 2 keys at once
    client, _ = await online(server, "alice")
    await online(server, "bob", one_time_keys=5)
    claimed = []
    for request_id in (1, 2):
        reply = await client.request(ClaimKeys(id=request_id, username="bob"))
        assert isinstance(reply, ClaimedKeys), reply
        claimed.append(reply.devices[0].one_time_key)
    hint = rate_limited(await client.request(ClaimKeys(id=3, username="bob")), 3)
    await wait_out(hint)
    reply = await client.request(ClaimKeys(id=4, username="bob"))
    assert isinstance(reply, ClaimedKeys), reply
    third = reply.devices[0].one_time_key
    assert third is not None and not reply.devices[0].fallback
    assert third not in claimed  # the refused claim used up no key


async def test_unauthenticated_connections_past_the_cap_are_refused_with_503(
    server_factory: Callable[..., ServerProcess],
    connect: Connect,
    online: Online,
    http: aiohttp.ClientSession,
) -> None:
    """--max-unauthenticated refuses further upgrades (503, rate_limited, Retry-After)
    until one of the waiting connections authenticates or closes."""
    server = server_factory("--max-unauthenticated", "2")
    waiting = [await connect(server.ws_url) for _ in range(2)]
    async with http.get(server.url + "/v1/ws") as response:
        assert response.status == 503
        assert int(response.headers["Retry-After"]) >= 1
        refusal = wire.decode_http_error(await response.read())
    assert refusal.code is ErrorCode.RATE_LIMITED and refusal.retry_after_ms
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await RawClient.connect(server.ws_url)
    assert refused.value.status == 503
    await waiting[0].register(RawDevice("alice"))  # authenticated: no longer counted
    third = await connect(server.ws_url)
    await waiting[1].close()
    await third.register(RawDevice("bob"))
    assert (await third.until_drained()) == []
    await online(server, "carol")


async def test_blob_bytes_past_the_account_limit_are_refused_with_429(
    server_factory: Callable[..., ServerProcess], online: Online, http: aiohttp.ClientSession
) -> None:
    """--blob-upload-rate: a PUT past the account's bytes gets 429 rate_limited with a
    hint; nothing of it is kept, and after the hint the upload resumes where it stopped."""
    server = server_factory("--blob-upload-rate", "1000", "--rate-burst", "2")  # 2000 bytes
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")
    blob_id = await create(http, server, alice, 6000, bob)
    first = await call(
        http, server, alice, "PUT", wire.blob_path(blob_id, offset=0), data=bytes(3000)
    )  # passes on a full bucket, leaves a debt
    assert (first.status, first.offset) == (204, 3000), first
    refused = await call(
        http, server, alice, "PUT", wire.blob_path(blob_id, offset=3000), data=bytes(3000)
    )
    assert refused.status == 429, refused
    error = refused.error()
    assert error.code is ErrorCode.RATE_LIMITED and error.retry_after_ms, error
    assert int(refused.headers["Retry-After"]) * 1000 >= error.retry_after_ms
    held = await call(http, server, alice, "HEAD", wire.blob_path(blob_id))
    assert held.offset == 3000
    await wait_out(error.retry_after_ms)
    rest = await call(
        http, server, alice, "PUT", wire.blob_path(blob_id, offset=3000), data=bytes(3000)
    )
    assert (rest.status, rest.offset) == (204, 6000), rest
