"""The key directory: devices, one-time keys claimed exactly once, fallback keys, upload limits."""

from __future__ import annotations

import asyncio

from msgspec.structs import replace

from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import (
    ClaimedDevice,
    ClaimedKeys,
    ClaimKeys,
    Devices,
    Error,
    GetDevices,
    KeysUploaded,
    OneTimeKey,
    UploadKeys,
)
from tests.server.conftest import Online
from tests.support.raw_client import RawClient, listed
from tests.support.server import ServerProcess


async def claim(
    client: RawClient, request_id: int, username: str, device_ids: list[str] | None = None
) -> list[ClaimedDevice]:
    reply = await client.request(ClaimKeys(id=request_id, username=username, device_ids=device_ids))
    assert isinstance(reply, ClaimedKeys) and reply.id == request_id, reply
    return reply.devices


async def test_server_never_hands_out_a_one_time_key_twice(
    server: ServerProcess, online: Online
) -> None:
    """50 concurrent claims on a device with 30 one-time keys: 30 distinct keys, then the fallback key."""
    bob_client, bob = await online(server, "bob", one_time_keys=0, fallback=False)
    uploaded = bob.one_time_keys(30)
    fallback = bob.fallback_key()
    assert await bob_client.request(
        UploadKeys(id=1, one_time_keys=uploaded, fallback_key=fallback)
    ) == KeysUploaded(id=1, one_time_keys=30)
    claimers = [(await online(server, f"claimer{i}"))[0] for i in range(10)]

    async def claim_five(client: RawClient) -> list[ClaimedDevice]:
        for request_id in range(1, 6):  # pipelined: five requests in flight per connection
            await client.send(ClaimKeys(id=request_id, username="bob"))
        devices: list[ClaimedDevice] = []
        for _ in range(5):
            reply = await client.recv()
            assert isinstance(reply, ClaimedKeys), reply
            devices.extend(reply.devices)
        return devices

    claimed = [
        d for batch in await asyncio.gather(*(claim_five(c) for c in claimers)) for d in batch
    ]
    assert len(claimed) == 50
    one_time = [d.one_time_key for d in claimed if not d.fallback]
    assert sorted(k.key_id for k in one_time if k) == sorted(k.key_id for k in uploaded)
    assert [d.one_time_key for d in claimed if d.fallback] == [fallback] * 20
    assert all(d.device == bob.keys() for d in claimed)


async def test_server_answers_null_when_a_device_has_no_keys_left(
    server: ServerProcess, online: Online
) -> None:
    """Without one-time and fallback keys, a claim returns the device with a null key."""
    alice_client, _ = await online(server, "alice")
    _, bob = await online(server, "bob", one_time_keys=1, fallback=False)
    first, second = await claim(alice_client, 1, "bob"), await claim(alice_client, 2, "bob")
    assert first[0].one_time_key is not None and not first[0].fallback
    assert second == [ClaimedDevice(device=bob.keys(), one_time_key=None, fallback=False)]


async def test_server_replaces_the_fallback_key_and_counts_one_time_keys(
    server: ServerProcess, online: Online
) -> None:
    """upload_keys adds one-time keys once per id, replaces the fallback key and answers the count."""
    bob_client, bob = await online(server, "bob", one_time_keys=2)
    fresh = bob.one_time_keys(3)
    new_fallback = bob.fallback_key()
    reply = await bob_client.request(
        UploadKeys(id=1, one_time_keys=fresh + fresh[:1], fallback_key=new_fallback)
    )
    assert reply == KeysUploaded(id=1, one_time_keys=5)
    assert await bob_client.request(UploadKeys(id=2, one_time_keys=[])) == KeysUploaded(
        id=2, one_time_keys=5
    )

    for request_id in range(3, 8):
        await claim(bob_client, request_id, "bob")
    (device,) = await claim(bob_client, 8, "bob")
    assert device.fallback and device.one_time_key == new_fallback


async def test_server_caps_one_time_keys_per_device(server: ServerProcess, online: Online) -> None:
    """A device never holds more than max_one_time_keys; a refused upload stores nothing."""
    bob_client, bob = await online(server, "bob", one_time_keys=60)
    limit = bob_client.challenge.limits.max_one_time_keys
    reply = await bob_client.request(UploadKeys(id=1, one_time_keys=bob.one_time_keys(limit - 59)))
    assert isinstance(reply, Error) and reply.id == 1 and reply.code is ErrorCode.TOO_MANY_ITEMS
    reply = await bob_client.request(UploadKeys(id=2, one_time_keys=bob.one_time_keys(limit + 1)))
    assert isinstance(reply, Error) and reply.code is ErrorCode.TOO_MANY_ITEMS
    assert await bob_client.request(
        UploadKeys(id=3, one_time_keys=bob.one_time_keys(limit - 60))
    ) == KeysUploaded(id=3, one_time_keys=limit)


async def test_server_refuses_uploaded_keys_with_bad_signatures(
    server: ServerProcess, online: Online
) -> None:
    """A one-time or fallback key not signed by the device gets bad_signature; nothing is stored."""
    bob_client, bob = await online(server, "bob", one_time_keys=0)
    good, other = bob.one_time_keys(2)
    forged = replace(good, signature=other.signature)
    reply = await bob_client.request(UploadKeys(id=1, one_time_keys=[other, forged]))
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_SIGNATURE
    reply = await bob_client.request(UploadKeys(id=2, one_time_keys=[], fallback_key=forged))
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_SIGNATURE
    assert await bob_client.request(UploadKeys(id=3, one_time_keys=[])) == KeysUploaded(
        id=3, one_time_keys=0
    )


async def test_server_lists_and_claims_devices_by_id(server: ServerProcess, online: Online) -> None:
    """get_devices lists a user's devices; claim_keys can name some; unknown names are refused."""
    alice_client, alice = await online(server, "alice", one_time_keys=2)
    reply = await alice_client.request(GetDevices(id=1, username="alice"))
    assert isinstance(reply, Devices) and listed(reply.device_list, "alice") == [alice.keys()]
    (claimed,) = await claim(alice_client, 2, "alice", ["phone", "phone"])
    assert claimed.device == alice.keys() and isinstance(claimed.one_time_key, OneTimeKey)

    reply = await alice_client.request(
        ClaimKeys(id=3, username="alice", device_ids=["phone", "tablet"])
    )
    assert isinstance(reply, Error) and reply.id == 3 and reply.code is ErrorCode.UNKNOWN_DEVICE
    for request in (GetDevices(id=4, username="nobody"), ClaimKeys(id=5, username="nobody")):
        reply = await alice_client.request(request)
        assert (
            isinstance(reply, Error)
            and reply.id == request.id
            and reply.code is ErrorCode.UNKNOWN_USER
        )
    (unchanged,) = await claim(alice_client, 6, "alice")
    assert (
        unchanged.one_time_key is not None and not unchanged.fallback
    )  # the refused claim took nothing
