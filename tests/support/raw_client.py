"""A raw protocol client for server tests: real vodozemac keys, frames by hand.

The real client library hides the protocol; server tests need to send exactly the
frames they mean, including wrong ones. Example::

    alice, bob = RawDevice("alice"), RawDevice("bob")
    client = await RawClient.connect(server.ws_url)
    welcome = await client.register(alice)
    drained = await client.until_drained()
    reply = await client.request(Send(id=1, envelopes=[outbound(bob, b"opaque bytes")]))
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from types import TracebackType
from typing import Self

import aiohttp
import msgspec
import vodozemac

from obrolan.protocol.frames import (
    Authenticate,
    Challenge,
    Deliver,
    DeviceKeys,
    Drained,
    Envelope,
    OneTimeKey,
    OutboundEnvelope,
    Register,
    ServerFrame,
    Welcome,
    decode_server_frame,
    encode,
)
from obrolan.protocol.limits import PROTOCOL_VERSION
from obrolan.protocol.signing import auth_bytes, device_keys_bytes, one_time_key_bytes

__all__ = ["RECEIVE_GUARD_SECONDS", "RawClient", "RawDevice", "envelope_id", "outbound"]

RECEIVE_GUARD_SECONDS = 15.0
"""A frame that has not come by then never will: the test fails instead of hanging."""


def envelope_id() -> str:
    """A fresh random envelope id, as real clients choose them."""
    return secrets.token_urlsafe(16)


def outbound(to: RawDevice, ciphertext: bytes) -> OutboundEnvelope:
    """An envelope with a fresh id for ``to``'s device, carrying ``ciphertext`` (opaque to the server)."""
    return OutboundEnvelope(
        envelope_id=envelope_id(),
        to_user=to.username,
        to_device=to.device_id,
        ciphertext=ciphertext,
    )


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> ServerFrame:
    async with asyncio.timeout(RECEIVE_GUARD_SECONDS):
        message = await ws.receive()
    if message.type is not aiohttp.WSMsgType.TEXT:
        raise ConnectionError(
            f"expected a frame, got {message.type.name} {message.data!r} {message.extra!r}"
        )
    return decode_server_frame(message.data)


class RawDevice:
    """A device identity: a real vodozemac Olm account and the signatures the protocol needs."""

    def __init__(self, username: str, device_id: str = "phone") -> None:
        self.username = username
        self.device_id = device_id
        self.account = vodozemac.Account()

    @property
    def ed25519(self) -> str:
        return self.account.ed25519_key.to_base64()

    def sign(self, data: bytes) -> str:
        """Ed25519 signature of ``data`` with this device's key, unpadded base64."""
        return self.account.sign(data).to_base64()

    def keys(self) -> DeviceKeys:
        """The device's public keys, self-signed for its account."""
        curve25519 = self.account.curve25519_key.to_base64()
        signature = self.sign(
            device_keys_bytes(self.username, self.device_id, self.ed25519, curve25519)
        )
        return DeviceKeys(
            device_id=self.device_id,
            ed25519=self.ed25519,
            curve25519=curve25519,
            signature=signature,
        )

    def _signed(self, key_id: str, key: vodozemac.Curve25519PublicKey) -> OneTimeKey:
        public = key.to_base64()
        return OneTimeKey(
            key_id=key_id, key=public, signature=self.sign(one_time_key_bytes(key_id, public))
        )

    def one_time_keys(self, count: int) -> list[OneTimeKey]:
        """``count`` new signed one-time keys (marked published in the account)."""
        self.account.generate_one_time_keys(count)
        keys = [self._signed(key_id, key) for key_id, key in self.account.one_time_keys.items()]
        self.account.mark_keys_as_published()
        return keys

    def fallback_key(self) -> OneTimeKey:
        """A new signed fallback key."""
        self.account.generate_fallback_key()  # type: ignore[attr-defined]
        ((key_id, key),) = self.account.fallback_key.items()  # type: ignore[attr-defined]
        self.account.mark_keys_as_published()
        return self._signed(key_id, key)

    def register_frame(
        self,
        nonce: bytes,
        *,
        one_time_keys: int = 5,
        fallback: bool = True,
        version: int = PROTOCOL_VERSION,
    ) -> Register:
        """A correct ``register`` frame answering ``nonce``."""
        return Register(
            version=version,
            username=self.username,
            device=self.keys(),
            one_time_keys=self.one_time_keys(one_time_keys) if one_time_keys else [],
            fallback_key=self.fallback_key() if fallback else None,
            signature=self.sign(auth_bytes(nonce, self.username, self.device_id)),
        )

    def authenticate_frame(self, nonce: bytes, *, version: int = PROTOCOL_VERSION) -> Authenticate:
        """A correct ``authenticate`` frame answering ``nonce``."""
        return Authenticate(
            version=version,
            username=self.username,
            device_id=self.device_id,
            signature=self.sign(auth_bytes(nonce, self.username, self.device_id)),
        )


class RawClient:
    """One WebSocket connection to the server, speaking frames as the test writes them."""

    def __init__(
        self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, challenge: Challenge
    ) -> None:
        self._http = http
        self.ws = ws
        self.challenge = challenge
        """The server's first frame on this connection."""

    @classmethod
    async def connect(cls, url: str, *, ssl_context: ssl.SSLContext | None = None) -> RawClient:
        """Connect to ``ws(s)://…/v1/ws`` and read the challenge."""
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(url, ssl=ssl_context or True, max_msg_size=0)
            first = await _receive(ws)
        except BaseException:
            await http.close()
            raise
        assert isinstance(first, Challenge), first
        return cls(http, ws, first)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.ws.close()
        await self._http.close()

    # --- frames

    async def send(self, frame: msgspec.Struct) -> None:
        """Send one frame as a JSON text message."""
        await self.ws.send_str(encode(frame).decode())

    async def send_text(self, text: str) -> None:
        """Send any text message, valid or not."""
        await self.ws.send_str(text)

    async def recv(self) -> ServerFrame:
        """The next frame from the server.

        Raises:
            ConnectionError: the server closed the connection instead.
        """
        return await _receive(self.ws)

    async def request(self, frame: msgspec.Struct) -> ServerFrame:
        """Send a frame and return the next frame from the server."""
        await self.send(frame)
        return await self.recv()

    async def expect_close(self) -> tuple[int, str]:
        """Wait for the server to close the connection; returns the close code and reason."""
        async with asyncio.timeout(RECEIVE_GUARD_SECONDS):
            message = await self.ws.receive()
        if message.type is aiohttp.WSMsgType.CLOSE:
            return int(message.data), message.extra or ""
        assert message.type is aiohttp.WSMsgType.CLOSED, (message.type, message.data)
        return self.ws.close_code or 0, ""

    # --- conversations

    async def register(
        self, device: RawDevice, *, one_time_keys: int = 5, fallback: bool = True
    ) -> Welcome:
        """Register ``device`` as a new account on this connection; returns the welcome."""
        frame = device.register_frame(
            self.challenge.nonce, one_time_keys=one_time_keys, fallback=fallback
        )
        welcome = await self.request(frame)
        assert isinstance(welcome, Welcome), welcome
        return welcome

    async def authenticate(self, device: RawDevice) -> Welcome:
        """Authenticate this connection as ``device``; returns the welcome."""
        welcome = await self.request(device.authenticate_frame(self.challenge.nonce))
        assert isinstance(welcome, Welcome), welcome
        return welcome

    async def until_drained(self) -> list[Envelope]:
        """Every envelope delivered up to the ``drained`` frame, in order."""
        envelopes: list[Envelope] = []
        while not isinstance(frame := await self.recv(), Drained):
            assert isinstance(frame, Deliver), frame
            envelopes.extend(frame.envelopes)
        return envelopes

    async def deliveries(self, count: int) -> list[Envelope]:
        """The next ``count`` delivered envelopes (skipping ``drained``)."""
        envelopes: list[Envelope] = []
        while len(envelopes) < count:
            frame = await self.recv()
            if isinstance(frame, Drained):
                continue
            assert isinstance(frame, Deliver), frame
            envelopes.extend(frame.envelopes)
        return envelopes
