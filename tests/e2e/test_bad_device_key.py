"""One device whose key cannot be used costs only that device's copy, not the outbox.

A shim in front of the real server answers alice's ``claim_keys`` for bob's phone
with an all-zero Curve25519 one-time key, properly signed by the phone's own
Ed25519 key (the test holds the phone's keys; the real server refuses such an
upload, so only a hostile server, or a hostile device through an older server,
serves one). Before the fix, starting the Olm session raised out of the outbox
loop: the message stayed queued and every later message, to anyone, behind it.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

from obrolan.client import Client
from obrolan.client.models import MessageState
from obrolan.crypto.account import LinkCode
from obrolan.protocol.signing import one_time_key_bytes
from tests.support.shim import MaliciousServer

ZERO = base64.b64encode(bytes(32)).decode().rstrip("=")


def zero_key_for(device: Client) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Serve an all-zero one-time key for ``device``, signed by the device itself."""

    def rewrite(frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("type") != "claimed_keys":
            return frame
        for item in frame["devices"]:
            if item["device"]["device_id"] == device.device_id and item["one_time_key"]:
                key_id = item["one_time_key"]["key_id"]
                item["one_time_key"] = {
                    "key_id": key_id,
                    "key": ZERO,
                    "signature": device.sign(one_time_key_bytes(key_id, ZERO)),
                }
        return frame

    return rewrite


def notices(client: Client, peer: str) -> list[str]:
    return [m.text for m in client.history(peer) if m.state is MessageState.NOTICE]


async def test_a_signed_zero_key_fails_one_copy_and_every_other_message_goes(
    server,
    profiles: Callable[[str], Path],  # type: ignore[no-untyped-def]
) -> None:
    async with MaliciousServer(server.ws_url) as shim:
        alice = await Client.register(profiles("alice"), shim.url, "alice", None)
        bob = await Client.register(profiles("bob"), server.url, "bob", None)
        carol = await Client.register(profiles("carol"), server.url, "carol", None)
        codes: asyncio.Queue[LinkCode] = asyncio.Queue()
        linking = asyncio.create_task(
            Client.link(profiles("bob-phone"), server.url, "bob", None, codes.put_nowait)
        )
        await bob.approve(str(await asyncio.wait_for(codes.get(), 15)))
        phone = await asyncio.wait_for(linking, 15)
        for me, them in ((alice, "bob"), (alice, "carol"), (bob, "alice"), (phone, "alice")):
            me.accept(them)
        carol.accept("alice")
        try:
            shim.rewrite = zero_key_for(phone)
            first = await alice.send("bob", "to bob's good device")
            await alice.flush(20)
            later = await alice.send("carol", "and later to carol")
            await alice.flush(20)

            assert [m.text for m in await bob.sync()] == ["to bob's good device"]
            assert [m.text for m in await carol.sync()] == ["and later to carol"]
            assert not [m for m in await phone.sync() if m.state is not MessageState.NOTICE]
            for queued in (first, later):
                sent = alice.message(queued.message_id, "alice")
                assert sent is not None and sent.state is MessageState.SENT
            [failed] = [n for n in notices(alice, "bob") if phone.device_id in n]
            assert "not a usable Curve25519 key" in failed
            # The next message claims a fresh key for the phone: once the server serves a
            # good one, the phone gets messages again.
            shim.rewrite = lambda frame: frame
            await alice.send("bob", "now to both")
            await alice.flush(20)
            assert [m.text for m in await phone.sync()] == ["now to both"]
        finally:
            for client in (alice, bob, phone, carol):
                await client.close()
