"""Registration and challenge-response authentication of devices."""

from __future__ import annotations

import time
from collections.abc import Callable

from msgspec.structs import replace

from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import Authenticate, Devices, Error, GetDevices, OneTimeKey, Welcome
from tests.server.conftest import Connect, Online
from tests.support.raw_client import RawDevice, listed
from tests.support.server import ServerProcess

POLICY_VIOLATION = 1008


async def test_server_registers_and_authenticates_a_device(
    server: ServerProcess, connect: Connect
) -> None:
    """A registered device can authenticate on a new connection and is welcomed with its key count."""
    alice = RawDevice("alice")
    first = await connect(server.ws_url)
    assert first.challenge.versions == [1] and len(first.challenge.nonce) == 32
    welcome = await first.register(alice, one_time_keys=7)
    assert welcome == Welcome(version=1, username="alice", device_id="phone", one_time_keys=7)
    assert await first.until_drained() == []
    await first.close()

    second = await connect(server.ws_url)
    assert second.challenge.nonce != first.challenge.nonce
    assert await second.authenticate(alice) == welcome
    assert await second.until_drained() == []
    reply = await second.request(GetDevices(id=1, username="alice"))
    assert isinstance(reply, Devices) and (reply.id, reply.username) == (1, "alice")
    assert listed(reply.device_list, "alice") == [alice.keys()]
    assert reply.last_active == {"phone": time.strftime("%Y-%m-%d", time.gmtime())}


async def test_server_refuses_a_taken_username_and_keeps_the_connection(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """A second registration of a username gets username_taken; the connection stays open."""
    await online(server, "alice")
    client = await connect(server.ws_url)
    reply = await client.request(
        RawDevice("alice", "laptop").register_frame(client.challenge.nonce)
    )
    assert isinstance(reply, Error) and reply.code is ErrorCode.USERNAME_TAKEN and reply.id is None
    later = await client.request(GetDevices(id=2, username="alice"))
    assert isinstance(later, Error) and later.code is ErrorCode.NOT_AUTHENTICATED and later.id == 2


async def test_server_consumes_the_challenge_on_a_failed_register(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """After one attempt on a connection, even a correct authenticate fails: the nonce is used up."""
    _, alice = await online(server, "alice")
    client = await connect(server.ws_url)
    taken = await client.request(
        RawDevice("alice", "laptop").register_frame(client.challenge.nonce)
    )
    assert isinstance(taken, Error) and taken.code is ErrorCode.USERNAME_TAKEN
    reply = await client.request(alice.authenticate_frame(client.challenge.nonce))
    assert isinstance(reply, Error) and reply.code is ErrorCode.AUTH_FAILED
    assert (await client.expect_close())[0] == POLICY_VIOLATION


async def test_server_refuses_a_replayed_authenticate_frame(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """An authenticate frame captured on one connection fails on another, which is then closed."""
    _, alice = await online(server, "alice")
    victim = await connect(server.ws_url)
    captured = alice.authenticate_frame(victim.challenge.nonce)
    assert isinstance(await victim.request(captured), Welcome)

    attacker = await connect(server.ws_url)
    reply = await attacker.request(captured)
    assert isinstance(reply, Error) and reply.code is ErrorCode.AUTH_FAILED
    assert (await attacker.expect_close())[0] == POLICY_VIOLATION


async def test_server_refuses_a_bad_signature(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """A challenge signed by another key gets auth_failed and the connection is closed."""
    await online(server, "alice")
    impostor = RawDevice("alice")  # same names, different key
    client = await connect(server.ws_url)
    reply = await client.request(impostor.authenticate_frame(client.challenge.nonce))
    assert isinstance(reply, Error) and reply.code is ErrorCode.AUTH_FAILED
    assert (await client.expect_close())[0] == POLICY_VIOLATION


async def test_server_answers_unknown_accounts_exactly_like_bad_signatures(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """Unknown user, unknown device and bad signature get the identical error: no enumeration."""
    await online(server, "alice")
    attempts: list[Callable[[bytes], Authenticate]] = [
        RawDevice("alice").authenticate_frame,  # bad signature
        RawDevice("alice", "tablet").authenticate_frame,  # unknown device
        RawDevice("nobody").authenticate_frame,  # unknown user
    ]
    replies = []
    for frame_for in attempts:
        client = await connect(server.ws_url)
        replies.append(await client.request(frame_for(client.challenge.nonce)))
        assert (await client.expect_close())[0] == POLICY_VIOLATION
    assert replies[0] == replies[1] == replies[2]
    assert isinstance(replies[0], Error) and replies[0].code is ErrorCode.AUTH_FAILED


async def test_server_refuses_an_unknown_protocol_version(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """register or authenticate with a version the server does not speak: unsupported_version, closed."""
    _, alice = await online(server, "alice")
    client = await connect(server.ws_url)
    reply = await client.request(alice.authenticate_frame(client.challenge.nonce, version=99))
    assert isinstance(reply, Error) and reply.code is ErrorCode.UNSUPPORTED_VERSION
    assert (await client.expect_close())[0] == POLICY_VIOLATION

    client = await connect(server.ws_url)
    reply = await client.request(RawDevice("bob").register_frame(client.challenge.nonce, version=2))
    assert isinstance(reply, Error) and reply.code is ErrorCode.UNSUPPORTED_VERSION
    assert (await client.expect_close())[0] == POLICY_VIOLATION


async def test_server_refuses_requests_before_authentication(
    server: ServerProcess, connect: Connect
) -> None:
    """A request before register/authenticate gets not_authenticated; a register afterwards works."""
    client = await connect(server.ws_url)
    reply = await client.request(GetDevices(id=5, username="alice"))
    assert reply == Error(
        id=5, code=ErrorCode.NOT_AUTHENTICATED, message="register or authenticate first"
    )
    assert isinstance(await client.register(RawDevice("alice")), Welcome)


async def test_server_refuses_keys_that_are_not_signed_by_the_device(
    server: ServerProcess, connect: Connect
) -> None:
    """register with a forged one-time key or forged device keys gets bad_signature; nothing is created."""
    alice = RawDevice("alice")
    client = await connect(server.ws_url)
    frame = alice.register_frame(client.challenge.nonce)
    forged_key = OneTimeKey(
        key_id="forged", key=frame.one_time_keys[0].key, signature=frame.signature
    )
    reply = await client.request(replace(frame, one_time_keys=[*frame.one_time_keys, forged_key]))
    assert (
        isinstance(reply, Error)
        and reply.code is ErrorCode.BAD_SIGNATURE
        and "forged" in reply.message
    )

    client = await connect(server.ws_url)
    frame = alice.register_frame(client.challenge.nonce)
    other_keys = RawDevice("alice").keys()  # a curve25519 key alice's device did not sign
    forged_device = replace(frame.device, curve25519=other_keys.curve25519)
    reply = await client.request(replace(frame, device=forged_device))
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_SIGNATURE

    lookup = await connect(server.ws_url)
    await lookup.register(RawDevice("carol"))
    await lookup.until_drained()
    reply = await lookup.request(GetDevices(id=1, username="alice"))
    assert isinstance(reply, Error) and reply.code is ErrorCode.UNKNOWN_USER


async def test_server_refuses_a_second_authentication(
    server: ServerProcess, online: Online
) -> None:
    """register or authenticate on an authenticated connection gets already_authenticated."""
    client, alice = await online(server, "alice")
    reply = await client.request(alice.authenticate_frame(client.challenge.nonce))
    assert isinstance(reply, Error) and reply.code is ErrorCode.ALREADY_AUTHENTICATED


async def test_server_closes_the_older_connection_of_a_device(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """When a device authenticates again, its older connection is closed with 4000."""
    older, alice = await online(server, "alice")
    newer = await connect(server.ws_url)
    await newer.authenticate(alice)
    assert await older.expect_close() == (4000, "replaced by a newer connection")
    assert await newer.until_drained() == []


async def test_server_closes_connections_that_never_authenticate(
    server_factory: Callable[..., ServerProcess], connect: Connect
) -> None:
    """A connection that does not authenticate within --auth-timeout gets an error and is closed."""
    server = server_factory("--auth-timeout", "0.2")
    client = await connect(server.ws_url)
    reply = await client.recv()
    assert isinstance(reply, Error) and reply.code is ErrorCode.NOT_AUTHENTICATED
    assert (await client.expect_close())[0] == POLICY_VIOLATION
