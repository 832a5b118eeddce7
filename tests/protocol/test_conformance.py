"""A client written from docs/protocol.md alone, against a real server process.

This module imports nothing from obrolan: it builds frames with the ``json``
module (not compact, members in its own order), signs the bytes the spec's §11
describes with vodozemac (device keys) and the ``cryptography`` package (account
and recovery keys, HKDF, AES-GCM), and talks to ``python -m obrolan.server serve``
over a real socket. If the server and the spec drift apart, these tests fail, and
so would a third-party client built from the spec.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
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
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

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
        [
            sys.executable,
            "-m",
            "obrolan.server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data",
            str(data_dir),
            *args,
        ],
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


def new_group_id(creator: str) -> str:
    """§23.2: 16 random bytes, then the first 16 of SHA-256 over the label, creator and them."""
    nonce = secrets.token_bytes(16)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"obrolan-group-id-v1\x00" + creator.encode() + b"\x00" + nonce)
    return base64.urlsafe_b64encode(nonce + digest.finalize()[:16]).rstrip(b"=").decode()


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


def unpadded(data: bytes) -> str:
    """Keys and signatures: standard base64 without padding (§2.2)."""
    return base64.b64encode(data).decode().rstrip("=")


def hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 with 32 bytes of output (§19.1, §20.1)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def base32_code(length: int) -> str:
    """Random characters of the RFC 4648 base32 alphabet (recovery and link codes)."""
    return "".join(secrets.choice(BASE32) for _ in range(length))


class SeedKey:
    """An Ed25519 key made from a 32-byte seed: account keys and recovery keys (§11)."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public = unpadded(self._key.public_key().public_bytes_raw())

    def sign(self, data: bytes) -> str:
        return unpadded(self._key.sign(data))


def recovery_key(code: str) -> SeedKey:
    """§19.1: the recovery key of a code, as typed (any case, dashes and spaces)."""
    normalized = code.replace("-", "").replace(" ", "").upper()
    return SeedKey(hkdf(normalized.encode(), b"", b"obrolan-recovery-v1"))


def today() -> str:
    return datetime.datetime.now(datetime.UTC).date().isoformat()


class Account:
    """An account's secrets as §17 makes them: account key, data key, recovery code."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.key = SeedKey(secrets.token_bytes(32))
        self.data_key = secrets.token_bytes(32)
        self.recovery_code = "-".join(base32_code(4) for _ in range(6))
        self.version = 0

    def entry(self, device: Device, name: str) -> Frame:
        """A ListedDevice: the name sealed with the data key (§17.3)."""
        nonce = secrets.token_bytes(12)
        aad = signed("obrolan-device-name-v1", self.user, device.device_id)
        sealed = nonce + AESGCM(self.data_key).encrypt(nonce, name.encode(), aad)
        return {"added": today(), "name": b64(sealed), "keys": device.keys()}

    def signed_list(self, devices: list[Device], version: int | None = None) -> Frame:
        """The next version of the list (or ``version``), signed by the account key (§17.1)."""
        self.version = self.version + 1 if version is None else version
        body = json.dumps(
            {
                "devices": [self.entry(d, f"device {d.device_id}") for d in devices],
                "version": self.version,
                "account_key": self.key.public,
                "username": self.user,
            },
            indent=2,
        ).encode()
        signature = self.key.sign(signed("obrolan-device-list-v1", body))
        return {"signature": signature, "device_list": b64(body)}


def open_list(signed_list: Frame, user: str, account_key: str) -> Frame:
    """§17.2: a list's signature, account, key and devices checked; returns the DeviceList."""
    body = base64.b64decode(signed_list["device_list"], validate=True)
    listed: Frame = json.loads(body)
    assert listed["username"] == user and listed["account_key"] == account_key
    verify(account_key, signed("obrolan-device-list-v1", body), signed_list["signature"])
    ids = [d["keys"]["device_id"] for d in listed["devices"]]
    assert len(ids) == len(set(ids))
    for device in listed["devices"]:
        keys = device["keys"]
        fields = (user, keys["device_id"], keys["ed25519"], keys["curve25519"])
        verify(keys["ed25519"], signed("obrolan-device-v1", *fields), keys["signature"])
    return listed


class Device:
    """One device: an Olm account and what the spec says it publishes."""

    def __init__(self, user: str, device_id: str = "dev1", account: Account | None = None) -> None:
        self.user = user
        self.device_id = device_id
        self.owner = account or Account(user)
        """The account's secrets, which every device of the account holds."""
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
        """§9 ``register``: the device, its account's first list and recovery key."""
        await self.send(self.first_device_frame("register", device, one_time_keys, fallback))
        return await self.receive()

    async def recover(self, device: Device, old_code: str) -> Frame:
        """§19.2: ``recover`` with a new account (``device.owner``) and the old code."""
        frame = self.first_device_frame("recover", device, 5, True)
        fields = (self.nonce, device.user, device.owner.key.public, frame["recovery_key"])
        old_key = recovery_key(old_code)
        frame["recovery_signature"] = old_key.sign(signed("obrolan-recover-v1", *fields))
        await self.send(frame)
        return await self.receive()

    def first_device_frame(
        self, kind: str, device: Device, one_time_keys: int, fallback: bool
    ) -> Frame:
        auth = signed("obrolan-auth-v1", self.nonce, device.user, device.device_id)
        recovery = recovery_key(device.owner.recovery_code).public
        return {
            "signature": device.sign(auth),
            "fallback_key": device.fallback_key() if fallback else None,
            "one_time_keys": device.one_time_keys(one_time_keys),
            "recovery_key_signature": device.owner.key.sign(
                signed("obrolan-recovery-key-v1", device.user, recovery)
            ),
            "recovery_key": recovery,
            "device_list": device.owner.signed_list([device], version=1),
            "device": device.keys(),
            "username": device.user,
            "version": 1,
            "type": kind,
        }

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
    assert devices["last_active"] == {}  # only for the caller's own account
    listed = open_list(devices["device_list"], bob.user, bob.owner.key.public)  # first contact
    (device,) = [entry["keys"] for entry in listed["devices"]]
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
    assert sent["envelope_ids"] == [envelope["envelope_id"]] and sent.get("skipped", []) == []
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
    """Before authentication: a frame that decodes gets not_authenticated with its id; one
    that does not gets the codec's error (§3.2, §4), with its id whenever readable (§6)."""
    conn = await connect()
    await conn.send({"type": "get_devices", "id": 9, "username": "somebody"})
    await conn.send({"type": "ack", "envelope_ids": []})
    await conn.ws.send_bytes(b"{}")
    await conn.ws.send_str("{not json")
    await conn.ws.send_str('{"type": "welcome", "id": 4}')
    await conn.ws.send_str('{"type": "get_devices", "id": 5, "username": "Not Valid"}')
    await conn.ws.send_str('{"type": "no_such_frame", "id": 6}')
    await conn.ws.send_str('{"type": "no_such_frame"}')
    answers = [await conn.receive() for _ in range(8)]
    assert [(a["type"], a["id"], a["code"]) for a in answers] == [
        ("error", 9, "not_authenticated"),
        ("error", None, "not_authenticated"),
        ("error", None, "malformed_frame"),
        ("error", None, "malformed_frame"),
        ("error", 4, "unknown_frame_type"),
        ("error", 5, "malformed_frame"),
        ("error", 6, "unknown_frame_type"),
        ("error", None, "unknown_frame_type"),
    ]


async def test_server_answers_a_malformed_request_with_its_id(connect: Connect) -> None:
    """§6: a request whose body is malformed is refused under its own id, so a client with
    several requests in flight knows which one failed; an unreadable id gives null."""
    _, conn = await registered(connect)
    await conn.ws.send_str('{"type": "claim_keys", "id": 21, "username": 7}')
    await conn.ws.send_str('{"type": "get_devices", "id": 22}')
    await conn.ws.send_str('{"type": "send", "id": 23, "envelopes": "none"}')
    await conn.ws.send_str('{"type": "get_devices", "id": -1, "username": "x"}')
    await conn.ws.send_str('{"type": "get_devices", "id": true, "username": 1}')
    await conn.ws.send_str('{"type": "ack", "id": 24, "envelope_ids": 3}')
    await conn.ws.send_str('{"type": "no_such_frame", "id": 25}')
    answers = [await conn.receive() for _ in range(7)]
    assert [(a["type"], a["id"], a["code"]) for a in answers] == [
        ("error", 21, "malformed_frame"),
        ("error", 22, "malformed_frame"),
        ("error", 23, "malformed_frame"),
        ("error", None, "malformed_frame"),
        ("error", None, "malformed_frame"),
        ("error", None, "malformed_frame"),  # an ack has no id
        ("error", 25, "unknown_frame_type"),
    ]


async def test_server_spends_nonce_on_refused_register(connect: Connect) -> None:
    """After username_taken the nonce is used: the next attempt is auth_failed and close 1008."""
    taken, _ = await registered(connect)
    conn = await connect()
    refused = await conn.register(Device(taken.user, "other"))  # another account key, too
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


# --- several devices per account (§17 to §20) ------------------------------------------------


def days_around(request_day: str) -> set[str]:
    """The UTC day before and after a request (a test may run across midnight)."""
    return {request_day, today()}


async def test_spec_client_publishes_second_device_and_reads_signed_list(
    connect: Connect,
) -> None:
    """publish_devices adds a device; get_devices returns the list exactly as signed."""
    first, conn = await registered(connect)
    account = first.owner
    second = Device(first.user, "dev2", account)
    published = account.signed_list([first, second])
    day = today()
    answer = await conn.request({"type": "publish_devices", "id": 1, "device_list": published})
    assert answer == {"type": "devices_published", "id": 1, "version": 2}

    own = await conn.request({"type": "get_devices", "id": 2, "username": first.user})
    assert own["device_list"] == published  # the very bytes and signature, never re-encoded
    listed = open_list(own["device_list"], first.user, account.key.public)
    assert [d["keys"]["device_id"] for d in listed["devices"]] == ["dev1", "dev2"]
    assert listed["version"] == 2
    assert own["last_active"]["dev1"] in days_around(day)
    assert set(own["last_active"]) <= {"dev1", "dev2"}

    new_conn = await connect()
    welcome = await new_conn.authenticate(second)  # a listed device is one the server knows
    assert (welcome["type"], welcome["one_time_keys"]) == ("welcome", 0)
    assert await new_conn.receive() == {"type": "drained"}
    keys = {"type": "upload_keys", "id": 1, "one_time_keys": second.one_time_keys(3)}
    assert (await new_conn.request(keys))["one_time_keys"] == 3

    _, stranger = await registered(connect)
    seen = await stranger.request({"type": "get_devices", "id": 1, "username": first.user})
    assert seen["device_list"] == published and seen["last_active"] == {}

    again = await conn.request({"type": "publish_devices", "id": 3, "device_list": published})
    assert (again["type"], again["code"]) == ("error", "bad_device_list")  # not above version 2
    forged = Account(first.user).signed_list([first, second], version=3)
    refused = await conn.request({"type": "publish_devices", "id": 4, "device_list": forged})
    assert (refused["type"], refused["code"]) == ("error", "bad_device_list")  # another key


async def test_server_removes_device_that_left_the_list(connect: Connect) -> None:
    """A removed device's connection closes with 4001; envelopes for it are skipped."""
    first, conn = await registered(connect)
    second = Device(first.user, "dev2", first.owner)
    await conn.request(
        {
            "type": "publish_devices",
            "id": 1,
            "device_list": first.owner.signed_list([first, second]),
        }
    )
    second_conn = await connect()
    assert (await second_conn.authenticate(second))["type"] == "welcome"

    removed = first.owner.signed_list([first])
    answer = await conn.request({"type": "publish_devices", "id": 2, "device_list": removed})
    assert answer == {"type": "devices_published", "id": 2, "version": 3}
    while "closed" not in (closed := await second_conn.receive()):
        assert closed["type"] in ("deliver", "drained"), closed
    assert closed == {"closed": 4001, "reason": "device removed"}

    _, sender = await registered(connect)
    kept, dropped = envelope_for(first, b"x"), envelope_for(second, b"x")
    sent = await sender.request({"type": "send", "id": 1, "envelopes": [kept, dropped]})
    assert sent["envelope_ids"] == [kept["envelope_id"]]
    assert sent["skipped"] == [dropped["envelope_id"]]
    again = await connect()
    refused = await again.authenticate(second)
    assert (refused["code"], refused["id"]) == ("auth_failed", None)


async def test_spec_client_links_a_new_device(connect: Connect) -> None:
    """§20 end to end: link_wait, link_fetch, publish, link_approve, link_answer, authenticate."""
    existing, conn = await registered(connect)
    account = existing.owner

    # The new device: a link code, a sealed offer, and a connection that waits.
    new = Device(existing.user, "dev2", Account(existing.user))  # no secrets yet
    link_id, secret = base32_code(8), base32_code(16)
    offer_key = hkdf(secret.encode(), link_id.encode(), b"obrolan-link-offer-v1")
    one_time_key = new.one_time_keys(1)[0]
    offer = json.dumps(
        {"name": "tablet", "one_time_key": one_time_key, "device": new.keys(), "username": new.user}
    ).encode()
    nonce = secrets.token_bytes(12)
    sealed = nonce + AESGCM(offer_key).encrypt(nonce, offer, link_id.encode())
    waiting = await connect()
    await waiting.send({"type": "link_wait", "link_id": link_id, "offer": b64(sealed)})
    answer = await waiting.receive()
    assert answer["type"] == "link_waiting" and answer["link_id"] == link_id
    assert answer["expires_in_seconds"] > 0
    taken = await connect()
    await taken.send({"type": "link_wait", "link_id": link_id, "offer": b64(sealed)})
    assert (await taken.receive())["code"] == "link_exists"

    # The existing device: fetch, open, check, publish, approve.
    fetched = await conn.request({"type": "link_fetch", "id": 1, "link_id": link_id})
    assert fetched == {"type": "link_offer", "id": 1, "link_id": link_id, "offer": b64(sealed)}
    opened = base64.b64decode(fetched["offer"])
    shown = json.loads(AESGCM(offer_key).decrypt(opened[:12], opened[12:], link_id.encode()))
    assert shown["username"] == account.user and shown["device"] == new.keys()
    key = shown["one_time_key"]
    verify(
        shown["device"]["ed25519"],
        signed("obrolan-otk-v1", key["key_id"], key["key"]),
        key["signature"],
    )
    published = account.signed_list([existing, new])
    await conn.request({"type": "publish_devices", "id": 2, "device_list": published})
    link_secrets = {
        "history": False,
        "device_list": published,
        "data_key": b64(account.data_key),
        "account_secret": b64(account.key.seed),
        "approver_device": existing.device_id,
        "username": account.user,
    }
    session = existing.account.create_outbound_session(
        vodozemac.Curve25519PublicKey.from_base64(shown["device"]["curve25519"]),
        vodozemac.Curve25519PublicKey.from_base64(key["key"]),
    )
    message_type, body = session.encrypt(json.dumps(link_secrets).encode()).to_parts()
    olm = {"sender_key": existing.curve25519, "message_type": message_type, "body": b64(body)}
    approve = {"type": "link_approve", "link_id": link_id, "answer": b64(json.dumps(olm).encode())}
    approved = await conn.request(approve | {"id": 3})
    assert approved == {"type": "link_approved", "id": 3}
    used = await conn.request(approve | {"id": 4})
    assert (used["type"], used["code"]) == ("error", "link_used")
    unknown = await conn.request({"type": "link_fetch", "id": 5, "link_id": base32_code(8)})
    assert (unknown["type"], unknown["code"]) == ("error", "unknown_link")

    # The new device: open the answer, check it, authenticate on the same connection.
    pushed = await waiting.receive()
    assert pushed["type"] == "link_answer" and pushed["link_id"] == link_id
    sealed_answer = json.loads(base64.b64decode(pushed["answer"]))
    assert sealed_answer["message_type"] == 0
    pre_key = vodozemac.AnyOlmMessage.from_parts(0, base64.b64decode(sealed_answer["body"]))
    pre_key_message = pre_key.to_pre_key()
    assert pre_key_message is not None
    _, plaintext = new.account.create_inbound_session(
        vodozemac.Curve25519PublicKey.from_base64(sealed_answer["sender_key"]), pre_key_message
    )
    received = json.loads(plaintext)
    seed = base64.b64decode(received["account_secret"])
    listed = open_list(received["device_list"], new.user, SeedKey(seed).public)
    assert new.keys() in [d["keys"] for d in listed["devices"]]
    welcome = await waiting.authenticate(new)
    assert (welcome["type"], welcome["device_id"]) == ("welcome", "dev2")


async def test_spec_client_recovers_an_account_with_its_code(connect: Connect) -> None:
    """§19: a wrong code is auth_failed; the right one hands the account to a new key."""
    lost, lost_conn = await registered(connect)
    _, observer = await registered(connect)

    wrong = await connect()
    refused = await wrong.recover(Device(lost.user, "new1"), base32_code(24))
    assert (refused["code"], refused["id"]) == ("auth_failed", None)
    assert (await wrong.receive())["closed"] == 1008

    new = Device(lost.user, "new1")  # a new account key, data key and recovery code
    conn = await connect()
    welcome = await conn.recover(new, lost.owner.recovery_code.lower().replace("-", " "))
    assert (welcome["type"], welcome["device_id"]) == ("welcome", "new1")
    assert await conn.receive() == {"type": "drained"}
    while "closed" not in (closed := await lost_conn.receive()):
        assert closed["type"] in ("deliver", "drained"), closed
    assert closed == {"closed": 4001, "reason": "device removed"}

    devices = await observer.request({"type": "get_devices", "id": 1, "username": lost.user})
    listed = open_list(devices["device_list"], lost.user, new.owner.key.public)  # a new key
    assert [d["keys"]["device_id"] for d in listed["devices"]] == ["new1"]
    assert listed["version"] == 1
    # §19.4: the old account key is provably the new one's predecessor
    [succession] = devices["successions"]
    assert succession["account_key"] == lost.owner.key.public
    assert succession["new_account_key"] == new.owner.key.public
    verify(
        succession["account_key"],
        signed("obrolan-recovery-key-v1", lost.user, succession["recovery_key"]),
        succession["recovery_key_signature"],
    )
    verify(
        succession["recovery_key"],
        signed(
            "obrolan-recover-v1",
            base64.b64decode(succession["nonce"]),
            lost.user,
            succession["new_account_key"],
            succession["new_recovery_key"],
        ),
        succession["recovery_signature"],
    )
    again = await connect()
    assert (await again.authenticate(lost))["code"] == "auth_failed"

    fresh = recovery_key(base32_code(24)).public
    to_sign = signed("obrolan-recovery-key-v1", lost.user, fresh)
    setting = {"type": "set_recovery", "recovery_key": fresh}
    bad = await conn.request(setting | {"id": 2, "signature": lost.owner.key.sign(to_sign)})
    assert (bad["type"], bad["code"]) == ("error", "bad_signature")  # the old account key
    answer = await conn.request(setting | {"id": 3, "signature": new.owner.key.sign(to_sign)})
    assert answer == {"type": "recovery_set", "id": 3}
    replaced = await connect()
    refused = await replaced.recover(Device(lost.user, "new2"), new.owner.recovery_code)
    assert refused["code"] == "auth_failed"  # the code set at recovery no longer works


async def test_server_keeps_a_waiting_link_past_the_auth_timeout_until_it_expires(
    tmp_path: Path, connect: Connect
) -> None:
    """A waiting connection outlives the auth timeout; at the link's expiry: unknown_link, 1008."""
    process, url = start_server(tmp_path / "data", "--auth-timeout", "0.1", "--link-ttl", "0.5")
    try:
        conn = await connect(url)
        link_id = base32_code(8)
        await conn.send({"type": "link_wait", "link_id": link_id, "offer": b64(b"sealed")})
        waiting = await conn.receive()
        assert waiting == {"type": "link_waiting", "link_id": link_id, "expires_in_seconds": 1}
        expired = await conn.receive()  # not the auth timeout's not_authenticated
        assert (expired["type"], expired["id"], expired["code"]) == ("error", None, "unknown_link")
        assert (await conn.receive())["closed"] == 1008
    finally:
        stop_server(process)


# --- groups: one Megolm ciphertext for many devices (§8, §23) ----------------------------------


def recipient(device: Device) -> Frame:
    """A Recipient of a multi-recipient envelope (§7.10)."""
    return {"to_device": device.device_id, "to_user": device.user}


async def olm_envelope(conn: Connection, sender: Device, receiver: Device, body: Frame) -> Frame:
    """§15.2: a pre-key message to the receiver's device carrying ``body``, as an envelope."""
    devices = await conn.request({"type": "get_devices", "id": 90, "username": receiver.user})
    listed = open_list(devices["device_list"], receiver.user, receiver.owner.key.public)
    (keys,) = [entry["keys"] for entry in listed["devices"]]
    claimed = await conn.request({"type": "claim_keys", "id": 91, "username": receiver.user})
    key = claimed["devices"][0]["one_time_key"]
    verify(keys["ed25519"], signed("obrolan-otk-v1", key["key_id"], key["key"]), key["signature"])
    session = sender.account.create_outbound_session(
        vodozemac.Curve25519PublicKey.from_base64(keys["curve25519"]),
        vodozemac.Curve25519PublicKey.from_base64(key["key"]),
    )
    plaintext = {
        "content": body,
        "recipient_device": receiver.device_id,
        "recipient": receiver.user,
        "sender_device": sender.device_id,
        "sender": sender.user,
    }
    message_type, sealed = session.encrypt(json.dumps(plaintext).encode()).to_parts()
    olm = {"body": b64(sealed), "message_type": message_type, "sender_key": sender.curve25519}
    return envelope_for(receiver, json.dumps(olm).encode())


async def queued_until_drained(conn: Connection) -> list[Frame]:
    """Every envelope delivered on a fresh connection before ``drained``."""
    envelopes: list[Frame] = []
    while (frame := await conn.receive()) != {"type": "drained"}:
        assert frame["type"] == "deliver", frame
        envelopes += frame["envelopes"]
    return envelopes


async def test_spec_client_sends_one_group_message_to_two_devices(connect: Connect) -> None:
    """§23.14/§23.15: a group key over Olm, then one send_multi; each device gets both once,
    decrypts the Megolm message, checks the device signature and acks; then nothing is left."""
    alice, alice_conn = await registered(connect)
    members = [await registered(connect) for _ in range(2)]
    for _, conn in members:
        await conn.ws.close()
    group_id = new_group_id(alice.user)
    now = int(time.time() * 1000)

    megolm = vodozemac.GroupSession()
    group_key = {
        "session_key": megolm.session_key.to_base64(),
        "session_id": megolm.session_id,
        "group_id": group_id,
        "sent_at_ms": now,
        "message_id": new_id(),
        "kind": "group_key",
    }
    keys = [await olm_envelope(alice_conn, alice, device, group_key) for device, _ in members]
    sent = await alice_conn.request({"type": "send", "id": 1, "envelopes": keys})
    assert sent["envelope_ids"] == [k["envelope_id"] for k in keys]

    message = json.dumps(
        {
            "text": "Halo semua, dari spesifikasi",
            "sent_at_ms": now,
            "message_id": new_id(),
            "sender_device": alice.device_id,
            "sender": alice.user,
            "group_id": group_id,
        }
    ).encode()
    signed_message = {
        "signature": alice.sign(signed("obrolan-group-message-v1", message)),
        "message": b64(message),
    }
    body = megolm.encrypt(json.dumps(signed_message).encode()).to_bytes()
    ciphertext = json.dumps({"body": b64(body), "group_session": megolm.session_id}).encode()
    stranger = Device(username())  # no such account: skipped, not an error
    envelope = {
        "ciphertext": b64(ciphertext),
        "recipients": [recipient(device) for device, _ in members] + [recipient(stranger)],
        "envelope_id": new_id(),
    }
    multi = {"type": "send_multi", "envelope": envelope}
    answer = await alice_conn.request(multi | {"id": 2})
    assert answer == {
        "type": "sent",
        "id": 2,
        "envelope_ids": [envelope["envelope_id"]],
        "skipped": [],
        "skipped_recipients": [recipient(stranger)],
    }
    assert await alice_conn.request(multi | {"id": 3}) == answer | {"id": 3}  # stored once

    own = await alice_conn.request({"type": "get_devices", "id": 4, "username": alice.user})
    (alice_keys,) = [
        d["keys"]
        for d in open_list(own["device_list"], alice.user, alice.owner.key.public)["devices"]
    ]
    for device, _ in members:
        conn = await connect()
        assert (await conn.authenticate(device))["type"] == "welcome"
        key_envelope, group_envelope = await queued_until_drained(conn)  # key first (§8)
        assert key_envelope["envelope_id"] in sent["envelope_ids"]
        assert group_envelope == {
            "envelope_id": envelope["envelope_id"],
            "from_user": alice.user,
            "from_device": alice.device_id,
            "ciphertext": envelope["ciphertext"],
        }
        olm = json.loads(base64.b64decode(key_envelope["ciphertext"]))
        pre_key = vodozemac.AnyOlmMessage.from_parts(0, base64.b64decode(olm["body"])).to_pre_key()
        assert pre_key is not None
        _, opened = device.account.create_inbound_session(
            vodozemac.Curve25519PublicKey.from_base64(olm["sender_key"]), pre_key
        )
        shared = json.loads(opened)["content"]
        inbound = vodozemac.InboundGroupSession(vodozemac.SessionKey(shared["session_key"]))

        sealed = json.loads(base64.b64decode(group_envelope["ciphertext"]))
        assert "sender_key" not in sealed and sealed["group_session"] == inbound.session_id
        decrypted = inbound.decrypt(
            vodozemac.MegolmMessage.from_bytes(base64.b64decode(sealed["body"]))
        )
        received = json.loads(decrypted.plaintext)
        raw_message = base64.b64decode(received["message"])
        verify(
            alice_keys["ed25519"],
            signed("obrolan-group-message-v1", raw_message),
            received["signature"],
        )
        shown = json.loads(raw_message)
        assert (shown["group_id"], shown["sender"]) == (group_id, group_envelope["from_user"])
        ids = [key_envelope["envelope_id"], group_envelope["envelope_id"]]
        await conn.send({"type": "ack", "envelope_ids": ids})

        again = await connect()  # replaces conn (4000) once the ack has been taken
        assert (await again.authenticate(device))["type"] == "welcome"
        assert await queued_until_drained(again) == []
        assert (await conn.receive())["closed"] == 4000


async def test_server_skips_recipients_it_cannot_queue(connect: Connect) -> None:
    """A full queue and an unknown device are skipped; with nobody left, the envelope is."""
    _, conn = await registered(connect)
    full, full_conn = await registered(connect)
    room, room_conn = await registered(connect)
    await full_conn.ws.close()
    await room_conn.ws.close()
    for number in range(MAX_QUEUE // 100):
        envelopes = [envelope_for(full, b"x") for _ in range(100)]
        assert (await conn.request({"type": "send", "id": number, "envelopes": envelopes}))[
            "type"
        ] == "sent"
    gone = Device(room.user, "nodevice")
    envelope = {
        "envelope_id": new_id(),
        "ciphertext": b64(b"megolm"),
        "recipients": [recipient(full), recipient(room), recipient(gone)],
    }
    answer = await conn.request({"type": "send_multi", "id": 10, "envelope": envelope})
    assert answer["envelope_ids"] == [envelope["envelope_id"]] and answer["skipped"] == []
    assert answer["skipped_recipients"] == [recipient(full), recipient(gone)]

    lonely = {
        "envelope_id": new_id(),
        "ciphertext": b64(b"megolm"),
        "recipients": [recipient(full)],
    }
    answer = await conn.request({"type": "send_multi", "id": 11, "envelope": lonely})
    assert (answer["envelope_ids"], answer["skipped"]) == ([], [lonely["envelope_id"]])
    nobody = lonely | {"envelope_id": new_id(), "recipients": []}
    answer = await conn.request({"type": "send_multi", "id": 12, "envelope": nobody})
    assert (answer["envelope_ids"], answer["skipped"]) == ([], [nobody["envelope_id"]])

    reader = await connect()
    assert (await reader.authenticate(room))["type"] == "welcome"
    (delivered,) = await queued_until_drained(reader)
    assert delivered["envelope_id"] == envelope["envelope_id"]


async def test_server_refuses_bad_send_multi(connect: Connect) -> None:
    """Too many recipients, too large a ciphertext, a recipient twice: errors with the id."""
    device, conn = await registered(connect)
    peer, _ = await registered(connect)
    limits = conn.challenge["limits"]
    many = [recipient(Device(f"user{i:05d}")) for i in range(limits["max_recipients_per_envelope"])]
    cases: list[tuple[list[Frame], int, str]] = [
        ([recipient(peer), *many], 1, "too_many_items"),
        ([recipient(peer)], limits["max_envelope_bytes"] + 1, "envelope_too_large"),
        ([recipient(peer), recipient(device), recipient(peer)], 1, "malformed_frame"),
    ]
    for number, (recipients, size, code) in enumerate(cases, start=20):
        envelope = {
            "envelope_id": new_id(),
            "recipients": recipients,
            "ciphertext": b64(b"x" * size),
        }
        answer = await conn.request({"type": "send_multi", "id": number, "envelope": envelope})
        assert (answer["type"], answer["code"]) == ("error", code), code
    stranger = await connect()
    await stranger.send(
        {
            "type": "send_multi",
            "id": 30,
            "envelope": {
                "envelope_id": new_id(),
                "recipients": [recipient(peer)],
                "ciphertext": b64(b"x"),
            },
        }
    )
    answer = await stranger.receive()
    assert (answer["code"], answer["id"]) == ("not_authenticated", 30)
