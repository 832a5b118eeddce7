"""A client written from docs/protocol.md alone, against a real server process.

This module imports nothing from obrolan: it builds frames with the ``json``
module (not compact, members in its own order), signs the bytes the spec's §11
describes with vodozemac, and talks to ``python -m obrolan.server serve`` over a
real socket. If the server and the spec drift apart, these tests fail, and so
would a third-party client built from the spec.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import vodozemac

GUARD_SECONDS = 30.0
"""Longest wait for one frame; only a hung server reaches it (it is not a speed check)."""
MAX_QUEUE = 300
"""The main test server's ``--max-queue``, small enough to fill in a test."""

Frame = dict[str, Any]


# --- the server process ---------------------------------------------------------------------


def start_server(data_dir: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``obrolan.server serve`` on 127.0.0.1 port 0; returns it and its URL."""
    stderr = (data_dir.parent / f"{data_dir.name}.stderr").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "obrolan.server", "serve", "--host", "127.0.0.1", "--port", "0",
         "--data", str(data_dir), *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], GUARD_SECONDS)
    line = process.stdout.readline() if ready else ""
    match = re.fullmatch(r"obrolan server listening on (http://127\.0\.0\.1:\d+)\n", line)
    if match is None:
        process.kill()
        process.wait()
        raise RuntimeError(f"the server did not start: {line!r}")
    return process, match[1]


def stop_server(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL if it does not stop."""
    process.terminate()
    try:
        process.wait(GUARD_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the module, with a small queue limit."""
    process, url = start_server(tmp_path_factory.mktemp("server"), "--max-queue", str(MAX_QUEUE))
    yield url
    stop_server(process)


# --- the spec, in a few lines -------------------------------------------------------------


def b64(data: bytes) -> str:
    """``bytes`` fields: standard base64 with padding (§2.2)."""
    return base64.b64encode(data).decode()


def new_id() -> str:
    """Envelope and message ids: 16 random bytes, base64url without padding (§14)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


def username() -> str:
    """A fresh username, so tests sharing one server never collide."""
    return "u" + secrets.token_hex(6)


def signed(label: str, *fields: bytes | str) -> bytes:
    """The label and fields joined by NUL (§11)."""
    parts = [f if isinstance(f, bytes) else f.encode() for f in fields]
    return b"\x00".join([label.encode(), *parts])


def verify(ed25519: str, data: bytes, signature: str) -> None:
    """Check an Ed25519 signature; vodozemac raises if it does not verify."""
    key = vodozemac.Ed25519PublicKey.from_base64(ed25519)
    key.verify_signature(data, vodozemac.Ed25519Signature.from_base64(signature))


class Device:
    """One device: an Olm account and what the spec says it publishes."""

    def __init__(self, user: str, device_id: str = "dev1") -> None:
        self.user = user
        self.device_id = device_id
        self.account = vodozemac.Account()
        self.ed25519 = self.account.ed25519_key.to_base64()
        self.curve25519 = self.account.curve25519_key.to_base64()

    def sign(self, data: bytes) -> str:
        return self.account.sign(data).to_base64()

    def keys(self) -> Frame:
        label = "obrolan-device-v1"
        fields = (self.user, self.device_id, self.ed25519, self.curve25519)
        return {
            "device_id": self.device_id,
            "ed25519": self.ed25519,
            "curve25519": self.curve25519,
            "signature": self.sign(signed(label, *fields)),
        }

    def _signed_key(self, key_id: str, key: vodozemac.Curve25519PublicKey) -> Frame:
        public = key.to_base64()
        signature = self.sign(signed("obrolan-otk-v1", key_id, public))
        return {"key_id": key_id, "key": public, "signature": signature}

    def one_time_keys(self, count: int) -> list[Frame]:
        self.account.generate_one_time_keys(count)
        keys = [self._signed_key(k, v) for k, v in self.account.one_time_keys.items()]
        self.account.mark_keys_as_published()
        return keys

    def fallback_key(self) -> Frame:
        # Both exist in vodozemac 0.10; its type stubs omit them.
        self.account.generate_fallback_key()  # type: ignore[attr-defined]
        ((key_id, key),) = self.account.fallback_key.items()  # type: ignore[attr-defined]
        self.account.mark_keys_as_published()
        return self._signed_key(key_id, key)


class Connection:
    """One WebSocket to ``/v1/ws``, after the server's ``challenge``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, challenge: Frame) -> None:
        self.ws = ws
        self.challenge = challenge
        self.nonce = base64.b64decode(challenge["nonce"], validate=True)

    async def send(self, frame: Frame) -> None:
        await self.ws.send_str(json.dumps(frame, indent=1))

    async def receive(self) -> Frame:
        """The next frame; a close becomes ``{"closed": code, "reason": text}``."""
        message = await asyncio.wait_for(self.ws.receive(), GUARD_SECONDS)
        if message.type is aiohttp.WSMsgType.TEXT:
            frame: Frame = json.loads(message.data)
            return frame
        if message.type is aiohttp.WSMsgType.CLOSE:  # the code the server sent
            return {"closed": message.data, "reason": message.extra}
        return {"closed": self.ws.close_code, "reason": message.extra}

    async def request(self, frame: Frame) -> Frame:
        """Send a request and return the reply with its id, skipping pushes."""
        await self.send(frame)
        while (reply := await self.receive()).get("id", -1) != frame["id"]:
            assert reply["type"] in ("deliver", "drained"), reply
        return reply

    async def register(
        self, device: Device, one_time_keys: int = 5, fallback: bool = True
    ) -> Frame:
        auth = signed("obrolan-auth-v1", self.nonce, device.user, device.device_id)
        await self.send(
            {
                "signature": device.sign(auth),
                "fallback_key": device.fallback_key() if fallback else None,
                "one_time_keys": device.one_time_keys(one_time_keys),
                "device": device.keys(),
                "username": device.user,
                "version": 1,
                "type": "register",
            }
        )
        return await self.receive()

    async def authenticate(self, device: Device) -> Frame:
        auth = signed("obrolan-auth-v1", self.nonce, device.user, device.device_id)
        frame = {"type": "authenticate", "version": 1, "username": device.user}
        await self.send(frame | {"device_id": device.device_id, "signature": device.sign(auth)})
        return await self.receive()


Connect = Callable[..., Awaitable[Connection]]
"""``await connect(url=server)``: a new connection whose challenge has been read."""


@pytest.fixture
async def connect(server_url: str) -> AsyncIterator[Connect]:
    """``await connect()`` opens a connection and reads its challenge."""
    async with aiohttp.ClientSession() as http:

        async def open_connection(url: str = server_url) -> Connection:
            ws = await http.ws_connect(url.replace("http", "ws") + "/v1/ws", max_msg_size=0)
            message = await asyncio.wait_for(ws.receive(), GUARD_SECONDS)
            challenge = json.loads(message.data)
            assert challenge["type"] == "challenge"
            return Connection(ws, challenge)

        yield open_connection


async def registered(connect: Connect, one_time_keys: int = 5) -> tuple[Device, Connection]:
    """A new account, authenticated on an open connection that is past ``drained``."""
    device = Device(username())
    conn = await connect()
    assert (await conn.register(device, one_time_keys))["type"] == "welcome"
    assert await conn.receive() == {"type": "drained"}
    return device, conn


def envelope_for(receiver: Device, ciphertext: bytes) -> Frame:
    """An OutboundEnvelope with a fresh id."""
    return {
        "envelope_id": new_id(),
        "to_user": receiver.user,
        "to_device": receiver.device_id,
        "ciphertext": b64(ciphertext),
    }


# --- tests -----------------------------------------------------------------------------------


async def test_spec_client_reads_info_and_challenge(server_url: str, connect: Connect) -> None:
    """``GET /v1/info`` and ``challenge`` carry the versions and the same limits."""
    async with aiohttp.ClientSession() as http, http.get(server_url + "/v1/info") as response:
        assert response.content_type == "application/json"
        info = await response.json()
    conn = await connect()
    assert info["server"] == "obrolan" and info["versions"] == [1]
    assert conn.challenge["versions"] == [1] and len(conn.nonce) == 32
    assert conn.challenge["limits"] == info["limits"]
    assert info["limits"]["max_queue_per_device"] == MAX_QUEUE


async def test_spec_client_registers_then_gets_welcome_and_drained(connect: Connect) -> None:
    """``register`` answers ``welcome`` with the key count, then ``drained``."""
    device = Device(username())
    conn = await connect()
    welcome = await conn.register(device, one_time_keys=7)
    assert welcome == {
        "type": "welcome",
        "version": 1,
        "username": device.user,
        "device_id": device.device_id,
        "one_time_keys": 7,
    }
    assert await conn.receive() == {"type": "drained"}


async def test_spec_client_sends_olm_message_that_peer_decrypts(connect: Connect) -> None:
    """A message goes through every step of §15: keys, claim, Olm, send, deliver, checks, ack."""
    alice, alice_conn = await registered(connect)
    bob, bob_conn = await registered(connect)
    await bob_conn.ws.close()

    devices = await alice_conn.request({"type": "get_devices", "id": 1, "username": bob.user})
    (device,) = devices["devices"]
    fields = (bob.user, device["device_id"], device["ed25519"], device["curve25519"])
    verify(device["ed25519"], signed("obrolan-device-v1", *fields), device["signature"])
    claimed = await alice_conn.request({"type": "claim_keys", "id": 2, "username": bob.user})
    (entry,) = claimed["devices"]
    key = entry["one_time_key"]
    assert entry["device"] == device and entry["fallback"] is False
    verify(device["ed25519"], signed("obrolan-otk-v1", key["key_id"], key["key"]), key["signature"])

    session = alice.account.create_outbound_session(
        vodozemac.Curve25519PublicKey.from_base64(device["curve25519"]),
        vodozemac.Curve25519PublicKey.from_base64(key["key"]),
    )
    content = {"kind": "text", "message_id": new_id(), "sent_at_ms": int(time.time() * 1000)}
    plaintext = {
        "sender": alice.user,
        "sender_device": alice.device_id,
        "recipient": bob.user,
        "recipient_device": bob.device_id,
        "content": content | {"text": "Halo dari spesifikasi"},
    }
    message_type, body = session.encrypt(json.dumps(plaintext).encode()).to_parts()
    olm = {"sender_key": alice.curve25519, "message_type": message_type, "body": b64(body)}
    envelope = envelope_for(bob, json.dumps(olm).encode())
    sent = await alice_conn.request({"type": "send", "id": 3, "envelopes": [envelope]})
    assert sent == {"type": "sent", "id": 3, "envelope_ids": [envelope["envelope_id"]]}
    again = await alice_conn.request({"type": "send", "id": 4, "envelopes": [envelope]})
    assert again["type"] == "sent"  # idempotent: stored once

    bob_conn = await connect()
    assert (await bob_conn.authenticate(bob))["one_time_keys"] == 4
    deliver = await bob_conn.receive()
    (delivered,) = deliver["envelopes"]
    assert await bob_conn.receive() == {"type": "drained"}
    assert delivered == {
        "envelope_id": envelope["envelope_id"],
        "from_user": alice.user,
        "from_device": alice.device_id,
        "ciphertext": envelope["ciphertext"],
    }
    sealed = json.loads(base64.b64decode(delivered["ciphertext"], validate=True))
    assert sealed["message_type"] == 0 and sealed["sender_key"] == alice.curve25519
    pre_key = vodozemac.AnyOlmMessage.from_parts(0, base64.b64decode(sealed["body"])).to_pre_key()
    assert pre_key is not None
    sender_key = vodozemac.Curve25519PublicKey.from_base64(sealed["sender_key"])
    _, decrypted = bob.account.create_inbound_session(sender_key, pre_key)
    assert json.loads(decrypted) == plaintext
    await bob_conn.send({"type": "ack", "envelope_ids": [delivered["envelope_id"]]})

    replacement = await connect()
    assert (await replacement.authenticate(bob))["type"] == "welcome"
    assert await replacement.receive() == {"type": "drained"}  # acked: deleted
    closed = await bob_conn.receive()
    assert closed == {"closed": 4000, "reason": "replaced by a newer connection"}


async def test_server_hands_out_fallback_key_then_null(connect: Connect) -> None:
    """With no one-time key left a claim gets the fallback key; with neither, null."""
    _, conn = await registered(connect)
    with_fallback, without = Device(username()), Device(username())
    for device, fallback in ((with_fallback, True), (without, False)):
        other = await connect()
        welcome = await other.register(device, one_time_keys=0, fallback=fallback)
        assert welcome["one_time_keys"] == 0
    claim = {"type": "claim_keys", "username": with_fallback.user, "device_ids": ["dev1"]}
    first = await conn.request(claim | {"id": 1})
    second = await conn.request(claim | {"id": 2})
    empty = await conn.request({"type": "claim_keys", "id": 3, "username": without.user})
    assert first["devices"][0]["fallback"] is True
    assert second["devices"][0]["one_time_key"] == first["devices"][0]["one_time_key"]
    assert empty["devices"][0]["one_time_key"] is None


async def test_server_refuses_frames_before_authentication(connect: Connect) -> None:
    """Before authentication: not_authenticated with the frame's id, and codec errors with null."""
    conn = await connect()
    await conn.send({"type": "get_devices", "id": 9, "username": "somebody"})
    await conn.send({"type": "ack", "envelope_ids": []})
    await conn.ws.send_bytes(b"{}")
    await conn.ws.send_str("{not json")
    await conn.ws.send_str('{"type": "welcome", "id": 4}')
    await conn.ws.send_str('{"type": "get_devices", "id": 5, "username": "Not Valid"}')
    answers = [await conn.receive() for _ in range(6)]
    assert [(a["type"], a["id"], a["code"]) for a in answers] == [
        ("error", 9, "not_authenticated"),
        ("error", None, "not_authenticated"),
        ("error", None, "malformed_frame"),
        ("error", None, "malformed_frame"),
        ("error", None, "unknown_frame_type"),
        ("error", None, "malformed_frame"),
    ]


async def test_server_spends_nonce_on_refused_register(connect: Connect) -> None:
    """After username_taken the nonce is used: the next attempt is auth_failed and close 1008."""
    taken, _ = await registered(connect)
    conn = await connect()
    refused = await conn.register(Device(taken.user, "other"))
    assert (refused["code"], refused["id"]) == ("username_taken", None)
    failed = await conn.authenticate(taken)
    assert (failed["code"], failed["id"]) == ("auth_failed", None)
    assert (await conn.receive())["closed"] == 1008


async def test_server_fails_bad_signature_and_unknown_user_alike(connect: Connect) -> None:
    """auth_failed reads the same for an unknown account and a wrong signature."""
    known, _ = await registered(connect)
    answers = []
    for device in (Device(username()), Device(known.user, known.device_id)):
        conn = await connect()
        answers.append(await conn.authenticate(device))
        assert (await conn.receive())["closed"] == 1008
    assert answers[0] == answers[1]
    assert answers[0]["code"] == "auth_failed"


async def test_server_closes_on_unsupported_version(connect: Connect) -> None:
    """A version the server does not speak: unsupported_version, then close 1008."""
    device = Device(username())
    conn = await connect()
    auth = signed("obrolan-auth-v1", conn.nonce, device.user, device.device_id)
    frame = {"type": "authenticate", "version": 99, "username": device.user}
    await conn.send(frame | {"device_id": device.device_id, "signature": device.sign(auth)})
    answer = await conn.receive()
    assert (answer["code"], answer["id"]) == ("unsupported_version", None)
    assert (await conn.receive())["closed"] == 1008


async def test_server_refuses_bad_requests_of_authenticated_device(connect: Connect) -> None:
    """Refused requests get their error with the request's id; the connection stays usable."""
    device, conn = await registered(connect)
    peer, _ = await registered(connect)
    huge = envelope_for(peer, b"x" * (conn.challenge["limits"]["max_envelope_bytes"] + 1))
    too_many = [envelope_for(peer, b"x")] * (conn.challenge["limits"]["max_envelopes_per_send"] + 1)
    stranger = Device(username())
    requests: list[tuple[Frame, str]] = [
        ({"type": "get_devices", "username": stranger.user}, "unknown_user"),
        ({"type": "claim_keys", "username": peer.user, "device_ids": ["nope"]}, "unknown_device"),
        ({"type": "send", "envelopes": [envelope_for(stranger, b"x")]}, "unknown_user"),
        ({"type": "send", "envelopes": [huge]}, "envelope_too_large"),
        ({"type": "send", "envelopes": too_many}, "too_many_items"),
        (
            {"type": "upload_keys", "one_time_keys": Device(device.user).one_time_keys(1)},
            "bad_signature",
        ),
    ]
    for number, (frame, code) in enumerate(requests, start=10):
        answer = await conn.request(frame | {"id": number})
        assert (answer["type"], answer["code"]) == ("error", code), frame["type"]
    await conn.send({"type": "authenticate", "version": 1, "username": device.user})
    await conn.send({"type": "ack", "envelope_ids": [new_id()] * 1001})
    assert (await conn.receive())["code"] == "malformed_frame"  # no device_id, signature
    assert (await conn.receive())["code"] == "too_many_items"
    counted = await conn.request({"type": "upload_keys", "id": 99, "one_time_keys": []})
    assert counted == {"type": "keys_uploaded", "id": 99, "one_time_keys": 5}


async def test_server_refuses_second_authentication(connect: Connect) -> None:
    """register or authenticate on an authenticated connection: already_authenticated."""
    device, conn = await registered(connect)
    answer = await conn.authenticate(device)
    assert (answer["code"], answer["id"]) == ("already_authenticated", None)


async def test_server_closes_oversized_frame_with_1009(connect: Connect) -> None:
    """A message over max_frame_bytes closes the connection with 1009, no error frame."""
    _, conn = await registered(connect)
    await conn.ws.send_str(" " * (conn.challenge["limits"]["max_frame_bytes"] + 1))
    assert (await conn.receive())["closed"] == 1009


async def test_server_refuses_send_that_would_overfill_queue(connect: Connect) -> None:
    """A send that would put more than max_queue_per_device envelopes in a queue: queue_full."""
    _, conn = await registered(connect)
    peer, peer_conn = await registered(connect)
    await peer_conn.ws.close()
    batch = 100
    for number in range(MAX_QUEUE // batch):
        envelopes = [envelope_for(peer, b"x") for _ in range(batch)]
        assert (await conn.request({"type": "send", "id": number, "envelopes": envelopes}))[
            "type"
        ] == "sent"
    refused = await conn.request(
        {"type": "send", "id": 50, "envelopes": [envelope_for(peer, b"x")]}
    )
    assert refused["code"] == "queue_full"


async def test_server_keeps_delivery_window_until_ack(connect: Connect) -> None:
    """At most delivery_window envelopes are unacknowledged; an ack releases the rest."""
    _, sender = await registered(connect)
    receiver, receiver_conn = await registered(connect)
    await receiver_conn.ws.close()
    window = sender.challenge["limits"]["delivery_window"]
    ids = []
    for number, start in enumerate(range(0, window + 1, 100)):
        envelopes = [envelope_for(receiver, b"x") for _ in range(min(100, window + 1 - start))]
        ids += [e["envelope_id"] for e in envelopes]
        await sender.request({"type": "send", "id": number, "envelopes": envelopes})
    conn = await connect()
    assert (await conn.authenticate(receiver))["type"] == "welcome"
    delivered: list[str] = []
    while len(delivered) < window:
        frame = await conn.receive()
        delivered += [e["envelope_id"] for e in frame["envelopes"]]
    # The window is full: the next frame is the answer to this request, not a delivery.
    await conn.send({"type": "upload_keys", "id": 1, "one_time_keys": []})
    assert (await conn.receive())["type"] == "keys_uploaded"
    await conn.send({"type": "ack", "envelope_ids": delivered[:1]})
    last = await conn.receive()
    assert [e["envelope_id"] for e in last["envelopes"]] == ids[window:]
    assert delivered == ids[:window]
    assert await conn.receive() == {"type": "drained"}


async def test_server_closes_unauthenticated_connection_after_timeout(
    tmp_path: Path, connect: Connect
) -> None:
    """No register or authenticate in time: not_authenticated (id null), then close 1008."""
    process, url = start_server(tmp_path / "data", "--auth-timeout", "0.2")
    try:
        conn = await connect(url)
        answer = await conn.receive()
        assert (answer["code"], answer["id"]) == ("not_authenticated", None)
        assert (await conn.receive())["closed"] == 1008
    finally:
        stop_server(process)
