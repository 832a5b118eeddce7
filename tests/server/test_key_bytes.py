"""The server checks the bytes of every Curve25519 key it is given, not only its signature.

A properly signed all-zero or low-order key (identity, one-time or fallback) would make
every sender's session creation fail; the server refuses it with ``bad_key`` and stores
nothing, and keeps accepting good keys.
"""

from __future__ import annotations

import base64

from msgspec.structs import replace

from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import DeviceKeys, Error, KeysUploaded, OneTimeKey, UploadKeys
from obrolan.protocol.signing import device_keys_bytes, one_time_key_bytes
from tests.server.conftest import Connect, Online
from tests.support.raw_client import RawDevice
from tests.support.server import ServerProcess

_P = 2**255 - 19
ZERO = bytes(32)
ORDER_8 = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
P_MINUS_1 = (_P - 1).to_bytes(32, "little")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def signed_key(device: RawDevice, key_id: str, raw: bytes) -> OneTimeKey:
    """A one-time key with these bytes, properly signed by ``device``."""
    public = b64(raw)
    return OneTimeKey(
        key_id=key_id, key=public, signature=device.sign(one_time_key_bytes(key_id, public))
    )


class BadIdentity(RawDevice):
    """A device whose Curve25519 identity key is the given bytes, properly self-signed."""

    def __init__(self, username: str, curve25519: bytes, device_id: str = "phone") -> None:
        super().__init__(username, device_id)
        self.curve25519 = b64(curve25519)

    def keys(self) -> DeviceKeys:
        signature = self.sign(
            device_keys_bytes(self.username, self.device_id, self.ed25519, self.curve25519)
        )
        return DeviceKeys(
            device_id=self.device_id,
            ed25519=self.ed25519,
            curve25519=self.curve25519,
            signature=signature,
        )


async def test_server_refuses_a_signed_all_zero_one_time_key(
    server: ServerProcess, online: Online
) -> None:
    """upload_keys with a signed all-zero one-time key: bad_key naming the key, nothing stored;
    the same device's good keys are then accepted."""
    client, device = await online(server, "bob", one_time_keys=0, fallback=False)
    good = device.one_time_keys(3)
    zero = signed_key(device, "AAAAAAAAAZZ", ZERO)
    reply = await client.request(UploadKeys(id=1, one_time_keys=[*good, zero]))
    assert isinstance(reply, Error) and reply.id == 1, reply
    assert reply.code is ErrorCode.BAD_KEY
    assert "AAAAAAAAAZZ" in reply.message and "not a usable Curve25519" in reply.message
    assert await client.request(UploadKeys(id=2, one_time_keys=[])) == KeysUploaded(
        id=2, one_time_keys=0
    )
    assert await client.request(UploadKeys(id=3, one_time_keys=good)) == KeysUploaded(
        id=3, one_time_keys=3
    )


async def test_server_refuses_a_low_order_fallback_key(
    server: ServerProcess, online: Online
) -> None:
    """A signed fallback key of order 8 (high bit set, as X25519 ignores it) is refused."""
    client, device = await online(server, "bob", one_time_keys=0, fallback=False)
    flipped = ORDER_8[:31] + bytes([ORDER_8[31] | 0x80])
    for request_id, raw in enumerate([ORDER_8, flipped, P_MINUS_1], start=1):
        fallback = signed_key(device, "AAAAAAAAAAA", raw)
        reply = await client.request(
            UploadKeys(id=request_id, one_time_keys=[], fallback_key=fallback)
        )
        assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_KEY, (raw.hex(), reply)
    assert await client.request(
        UploadKeys(id=9, one_time_keys=[], fallback_key=device.fallback_key())
    ) == KeysUploaded(id=9, one_time_keys=0)


async def test_server_refuses_register_with_a_zero_one_time_key(
    server: ServerProcess, connect: Connect
) -> None:
    """register carrying a signed all-zero one-time key: bad_key, and no account is made."""
    device = RawDevice("carol")
    client = await connect(server.ws_url)
    frame = device.register_frame(client.challenge.nonce, one_time_keys=2)
    zero = signed_key(device, "AAAAAAAAAZZ", ZERO)
    frame = replace(frame, one_time_keys=[*frame.one_time_keys, zero])
    reply = await client.request(frame)
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_KEY, reply
    again = await connect(server.ws_url)
    await again.register(device)  # the same username was not taken: nothing was stored


async def test_server_refuses_a_low_order_identity_key(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """register with a self-signed identity key of low order: bad_key; so is a device list
    that adds such a device. A good device registers and links as before."""
    for raw in [ZERO, P_MINUS_1, ORDER_8]:
        device = BadIdentity("mallory", raw)
        client = await connect(server.ws_url)
        reply = await client.request(device.register_frame(client.challenge.nonce))
        assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_KEY, (raw.hex(), reply)
        assert "curve25519" in reply.message
    alice_client, alice = await online(server, "alice")
    laptop = BadIdentity("alice", ORDER_8, "laptop")
    laptop.account = alice.account
    reply = await alice_client.request(alice.account.publish_frame(1, [alice, laptop]))
    assert isinstance(reply, Error) and reply.id == 1 and reply.code is ErrorCode.BAD_KEY, reply
    good_laptop = RawDevice("alice", "tablet", alice.account)
    reply = await alice_client.request(alice.account.publish_frame(2, [alice, good_laptop]))
    assert not isinstance(reply, Error), reply
