"""Bad input gets the spec's error code, never a crash: other clients keep being served."""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from obrolan.errors import RemoteProtocolError
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import Ack, Error, GetDevices, Send, decode_client_frame, encode
from tests.server.conftest import Connect, Online
from tests.server.exchange import send
from tests.support.raw_client import RawClient, RawDevice, outbound
from tests.support.server import ServerProcess

MESSAGE_TOO_BIG = 1009


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the whole module: each case must leave it serving."""
    with ServerProcess(tmp_path_factory.mktemp("bad-input") / "data") as server:
        yield server


async def assert_still_serving(server: ServerProcess, online: Online) -> None:
    """Two other clients can still exchange an envelope."""
    sender, _ = await online(server, f"s{secrets.token_hex(6)}")
    receiver, device = await online(server, f"r{secrets.token_hex(6)}")
    envelope = outbound(device, b"still here")
    await sender.send(Send(id=1, envelopes=[envelope]))
    (delivered,) = await receiver.deliveries(1)
    assert delivered.envelope_id == envelope.envelope_id
    await receiver.send(Ack(envelope_ids=[envelope.envelope_id]))


def _name() -> str:
    return f"u{secrets.token_hex(6)}"


async def _unauthenticated(server: ServerProcess, connect: Connect, online: Online) -> RawClient:
    return await connect(server.ws_url)


async def _authenticated(server: ServerProcess, connect: Connect, online: Online) -> RawClient:
    return (await online(server, _name()))[0]


Case = Callable[
    [ServerProcess, Connect, Online], Awaitable[tuple[RawClient, ErrorCode, int | None]]
]


def _text(text: str, *, authenticated: bool = False) -> Case:
    async def case(
        server: ServerProcess, connect: Connect, online: Online
    ) -> tuple[RawClient, ErrorCode, int | None]:
        client = await (_authenticated if authenticated else _unauthenticated)(
            server, connect, online
        )
        await client.send_text(text)
        return client, ErrorCode.MALFORMED_FRAME, None

    return case


async def _unknown_type(
    server: ServerProcess, connect: Connect, online: Online
) -> tuple[RawClient, ErrorCode, int | None]:
    client = await _authenticated(server, connect, online)
    await client.send_text('{"type": "explode", "id": 3}')
    return client, ErrorCode.UNKNOWN_FRAME_TYPE, 3  # its id is readable (spec §6)


async def _unknown_type_before_auth(
    server: ServerProcess, connect: Connect, online: Online
) -> tuple[RawClient, ErrorCode, int | None]:
    client = await _unauthenticated(server, connect, online)
    await client.send_text('{"type": "explode", "id": 6}')
    return client, ErrorCode.UNKNOWN_FRAME_TYPE, 6  # decoded first, in every state (§4)


async def _malformed_with_id(
    server: ServerProcess, connect: Connect, online: Online
) -> tuple[RawClient, ErrorCode, int | None]:
    client = await _authenticated(server, connect, online)
    await client.send_text('{"type": "get_devices", "id": 12, "username": ["bob"]}')
    return client, ErrorCode.MALFORMED_FRAME, 12


DEPTH = 100_000
"""Far deeper than msgspec's parser follows: it raises RecursionError."""


async def _server_frame_type(
    server: ServerProcess, connect: Connect, online: Online
) -> tuple[RawClient, ErrorCode, int | None]:
    client = await _unauthenticated(server, connect, online)
    await client.send_text('{"type": "drained"}')
    return client, ErrorCode.UNKNOWN_FRAME_TYPE, None


async def _binary(
    server: ServerProcess, connect: Connect, online: Online
) -> tuple[RawClient, ErrorCode, int | None]:
    client = await _authenticated(server, connect, online)
    await client.ws.send_bytes(encode(GetDevices(id=1, username="alice")))
    return client, ErrorCode.MALFORMED_FRAME, None


async def _invalid_utf8(
    server: ServerProcess, connect: Connect, online: Online
) -> tuple[RawClient, ErrorCode, int | None]:
    client = await _authenticated(server, connect, online)
    await client.ws.send_frame(b'{"type": "\xff"}', aiohttp.WSMsgType.TEXT)
    return client, ErrorCode.MALFORMED_FRAME, None


async def _invalid_username(
    server: ServerProcess, connect: Connect, online: Online
) -> tuple[RawClient, ErrorCode, int | None]:
    client = await _unauthenticated(server, connect, online)
    frame = json.loads(encode(RawDevice("valid").register_frame(client.challenge.nonce)))
    frame["username"] = "Not Valid!"
    text = json.dumps(frame)
    with pytest.raises(RemoteProtocolError) as refused:  # the codec decides the code
        decode_client_frame(text)
    await client.send_text(text)
    return client, refused.value.code, None


async def _before_auth(
    server: ServerProcess, connect: Connect, online: Online
) -> tuple[RawClient, ErrorCode, int | None]:
    client = await _unauthenticated(server, connect, online)
    await client.send(Send(id=9, envelopes=[]))
    return client, ErrorCode.NOT_AUTHENTICATED, 9


async def _unknown_version(
    server: ServerProcess, connect: Connect, online: Online
) -> tuple[RawClient, ErrorCode, int | None]:
    client = await _unauthenticated(server, connect, online)
    await client.send(RawDevice(_name()).register_frame(client.challenge.nonce, version=7))
    return client, ErrorCode.UNSUPPORTED_VERSION, None


async def _bad_signature(
    server: ServerProcess, connect: Connect, online: Online
) -> tuple[RawClient, ErrorCode, int | None]:
    _, device = await online(server, _name())
    client = await _unauthenticated(server, connect, online)
    await client.send(RawDevice(device.username).authenticate_frame(client.challenge.nonce))
    return client, ErrorCode.AUTH_FAILED, None


async def _replayed_challenge(
    server: ServerProcess, connect: Connect, online: Online
) -> tuple[RawClient, ErrorCode, int | None]:
    first, device = await online(server, _name())
    captured = device.authenticate_frame(first.challenge.nonce)
    client = await _unauthenticated(server, connect, online)
    await client.send(captured)
    return client, ErrorCode.AUTH_FAILED, None


async def _unknown_recipient(
    server: ServerProcess, connect: Connect, online: Online
) -> tuple[RawClient, ErrorCode, int | None]:
    client, _ = await online(server, _name())
    await client.send(Send(id=4, envelopes=[outbound(RawDevice(_name()), b"x")]))
    return client, ErrorCode.UNKNOWN_USER, 4


async def _oversize_envelope(
    server: ServerProcess, connect: Connect, online: Online
) -> tuple[RawClient, ErrorCode, int | None]:
    client, device = await online(server, _name())
    limit = client.challenge.limits.max_envelope_bytes
    await client.send(Send(id=5, envelopes=[outbound(device, bytes(limit + 1))]))
    return client, ErrorCode.ENVELOPE_TOO_LARGE, 5


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(_text("{not json"), id="malformed-json"),
        pytest.param(_text("[1, 2]", authenticated=True), id="not-an-object"),
        pytest.param(
            _text('{"type": "get_devices", "id": "x", "username": "bob"}', authenticated=True),
            id="wrong-field-type",
        ),
        pytest.param(_invalid_utf8, id="invalid-utf8"),
        pytest.param(_invalid_username, id="invalid-username"),
        pytest.param(_unknown_type, id="unknown-frame-type"),
        pytest.param(_unknown_type_before_auth, id="unknown-frame-type-before-auth"),
        pytest.param(_malformed_with_id, id="malformed-request-keeps-its-id"),
        pytest.param(_text("[" * DEPTH + "]" * DEPTH), id="nested-array"),
        pytest.param(
            _text(
                '{"type": "get_devices", "id": 2, "x": ' + "[" * DEPTH + "]" * DEPTH + "}",
                authenticated=True,
            ),
            id="nested-unknown-field",
        ),
        pytest.param(
            _text(
                '{"type": "get_devices", "id": 2, "username": '
                + '{"a":' * DEPTH
                + "1"
                + "}" * DEPTH
                + "}",
                authenticated=True,
            ),
            id="nested-object-field",
        ),
        pytest.param(_server_frame_type, id="server-frame-from-client"),
        pytest.param(_binary, id="binary-message"),
        pytest.param(_before_auth, id="request-before-auth"),
        pytest.param(_unknown_version, id="unknown-version"),
        pytest.param(_bad_signature, id="bad-signature"),
        pytest.param(_replayed_challenge, id="replayed-challenge"),
        pytest.param(_unknown_recipient, id="unknown-recipient"),
        pytest.param(_oversize_envelope, id="oversize-envelope"),
    ],
)
async def test_server_answers_bad_input_with_the_spec_code_and_keeps_serving(
    shared_server: ServerProcess, connect: Connect, online: Online, case: Case
) -> None:
    """Each bad input gets its error code (fatal ones close with 1008), and others are still served."""
    client, code, request_id = await case(shared_server, connect, online)
    reply = await client.recv()
    assert isinstance(reply, Error) and (reply.code, reply.id) == (code, request_id), reply
    if code in (ErrorCode.AUTH_FAILED, ErrorCode.UNSUPPORTED_VERSION):
        assert (await client.expect_close())[0] == 1008
    else:
        again = await client.request(GetDevices(id=77, username="nobody"))
        assert isinstance(again, Error) and again.id == 77  # the connection is still open
    await assert_still_serving(shared_server, online)


async def test_server_names_the_envelope_and_limit_when_too_large(
    server_factory: Callable[..., ServerProcess], online: Online
) -> None:
    """A configured --max-envelope-bytes is announced and enforced, with a message naming sizes."""
    server = server_factory("--max-envelope-bytes", "1000")
    client, device = await online(server, "alice")
    assert client.challenge.limits.max_envelope_bytes == 1000
    too_big = outbound(device, bytes(1001))
    reply = await client.request(Send(id=1, envelopes=[outbound(device, bytes(1000)), too_big]))
    assert reply == Error(
        id=1,
        code=ErrorCode.ENVELOPE_TOO_LARGE,
        message=f"envelope {too_big.envelope_id} is 1001 bytes, limit is 1000",
    )
    assert server.mailbox() == []
    fits = outbound(device, bytes(1000))
    await send(client, 2, fits)
    assert [row[1] for row in server.mailbox()] == [fits.envelope_id]
    await assert_still_serving(server, online)


async def test_server_closes_a_connection_that_sends_an_oversize_message(
    shared_server: ServerProcess, online: Online
) -> None:
    """A message over max_frame_bytes closes that connection with 1009; the server keeps serving."""
    client, _ = await online(shared_server, _name())
    await client.send_text(" " * (client.challenge.limits.max_frame_bytes + 1))
    assert (await client.expect_close())[0] == MESSAGE_TOO_BIG
    await assert_still_serving(shared_server, online)


async def test_server_accepts_a_message_of_exactly_max_frame_bytes(
    shared_server: ServerProcess, online: Online
) -> None:
    """Only a message over max_frame_bytes closes with 1009: one of exactly that size is read
    (here whitespace, so malformed_frame) and the connection stays open."""
    client, _ = await online(shared_server, _name())
    await client.send_text(" " * client.challenge.limits.max_frame_bytes)
    reply = await client.recv()
    assert isinstance(reply, Error) and reply.code is ErrorCode.MALFORMED_FRAME, reply
    again = await client.request(GetDevices(id=78, username="nobody"))
    assert isinstance(again, Error) and again.id == 78


async def test_server_refuses_queue_full_and_keeps_serving(
    server_factory: Callable[..., ServerProcess], online: Online
) -> None:
    """queue_full refuses the send but the full device and others keep working."""
    server = server_factory("--max-queue", "1")
    client, _ = await online(server, "alice")
    bob_client, bob = await online(server, "bob")
    await bob_client.close()
    await send(client, 1, outbound(bob, b"1"))
    reply = await client.request(Send(id=2, envelopes=[outbound(bob, b"2")]))
    assert isinstance(reply, Error) and (reply.id, reply.code) == (2, ErrorCode.QUEUE_FULL)
    await assert_still_serving(server, online)


def test_server_data_dir_holds_only_its_files(shared_server: ServerProcess) -> None:
    """The data directory holds the databases (with WAL files and the markers that they
    exist), the blob folder and the log."""
    names = {p.name for p in Path(shared_server.data_dir).iterdir()}
    databases = {
        f"{db}{suffix}"
        for db in ("obrolan.db", "blobs.db")
        for suffix in ("", "-wal", "-shm", ".created")
    }
    assert names <= databases | {"blobs", "server.log"}
