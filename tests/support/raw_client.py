"""A raw protocol client for server tests: real vodozemac and account keys, frames by hand.

The real client library hides the protocol; server tests need to send exactly the
frames they mean, including wrong ones. Example::

    alice, bob = RawDevice("alice"), RawDevice("bob")
    client = await RawClient.connect(server.ws_url)
    welcome = await client.register(alice)
    drained = await client.until_drained()
    reply = await client.request(Send(id=1, envelopes=[outbound(bob, b"opaque bytes")]))
    reply = await client.request(SendMulti(id=2, envelope=multi([bob, carol], b"group bytes")))

    laptop = RawDevice("alice", "laptop", alice.account)   # a second device, same account
    reply = await client.request(alice.account.publish_frame(2, [alice, laptop]))
"""

from __future__ import annotations

import asyncio
import os
import secrets
import ssl
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import aiohttp
import msgspec
import vodozemac

from obrolan.crypto.account import (
    AccountKey,
    LinkCode,
    RecoveryCode,
    device_entry,
    open_device_list,
    seal_name,
)
from obrolan.protocol.content import NewDeviceOffer
from obrolan.protocol.frames import (
    Authenticate,
    Challenge,
    Deliver,
    DeviceKeys,
    Drained,
    Envelope,
    MultiEnvelope,
    OneTimeKey,
    OutboundEnvelope,
    PublishDevices,
    Recipient,
    Recover,
    Register,
    ServerFrame,
    SetRecovery,
    SignedDeviceList,
    Welcome,
    decode_server_frame,
    encode,
)
from obrolan.protocol.limits import PROTOCOL_VERSION
from obrolan.protocol.signing import auth_bytes, device_keys_bytes, one_time_key_bytes

__all__ = [
    "RECEIVE_GUARD_SECONDS",
    "RawAccount",
    "RawClient",
    "RawDevice",
    "envelope_id",
    "listed",
    "multi",
    "outbound",
    "recipient",
]

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


def recipient(device: RawDevice) -> Recipient:
    """``device`` as a recipient of a multi-recipient envelope."""
    return Recipient(to_user=device.username, to_device=device.device_id)


def multi(to: Sequence[RawDevice | Recipient], ciphertext: bytes) -> MultiEnvelope:
    """A multi-recipient envelope with a fresh id for these devices (in this order),
    carrying ``ciphertext`` (opaque to the server)."""
    return MultiEnvelope(
        envelope_id=envelope_id(),
        recipients=[r if isinstance(r, Recipient) else recipient(r) for r in to],
        ciphertext=ciphertext,
    )


def listed(device_list: SignedDeviceList, username: str) -> list[DeviceKeys]:
    """The keys of the devices in a signed list (its signatures checked)."""
    return [device.keys for device in open_device_list(device_list, username, None).devices]


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> ServerFrame:
    async with asyncio.timeout(RECEIVE_GUARD_SECONDS):
        message = await ws.receive()
    if message.type is not aiohttp.WSMsgType.TEXT:
        raise ConnectionError(
            f"expected a frame, got {message.type.name} {message.data!r} {message.extra!r}"
        )
    return decode_server_frame(message.data)


class RawAccount:
    """What every device of an account shares: the account key (it signs device lists),
    the data key (it seals device names) and the recovery code."""

    def __init__(self, username: str) -> None:
        self.username = username
        self.key = AccountKey.create()
        self.data_key = os.urandom(32)
        self.recovery = RecoveryCode.create()
        self.version = 0
        """The highest list version this account has signed."""

    def signed_list(
        self, devices: Sequence[RawDevice], *, version: int | None = None
    ) -> SignedDeviceList:
        """A list of ``devices`` signed by the account key, as the next version unless given."""
        version = self.version + 1 if version is None else version
        self.version = max(self.version, version)
        entries = [
            device_entry(
                device.keys(),
                seal_name(self.data_key, self.username, device.device_id, device.device_id),
            )
            for device in devices
        ]
        return self.key.sign_device_list(self.username, version, entries)

    def publish_frame(
        self, request_id: int, devices: Sequence[RawDevice], *, version: int | None = None
    ) -> PublishDevices:
        """A ``publish_devices`` frame with a list of ``devices`` (see :meth:`signed_list`)."""
        return PublishDevices(id=request_id, device_list=self.signed_list(devices, version=version))

    def set_recovery_frame(self, request_id: int, code: RecoveryCode) -> SetRecovery:
        """A ``set_recovery`` frame for ``code``, signed by the account key."""
        return SetRecovery(
            id=request_id,
            recovery_key=code.public_key,
            signature=self.key.sign_recovery_key(self.username, code.public_key),
        )


class RawDevice:
    """A device identity: a real vodozemac Olm account and the signatures the protocol needs.

    Args:
        account: the account it belongs to; a new one (new account key) if not given.
    """

    def __init__(
        self, username: str, device_id: str = "phone", account: RawAccount | None = None
    ) -> None:
        self.username = username
        self.device_id = device_id
        self.account = account or RawAccount(username)
        self.olm = vodozemac.Account()

    @property
    def ed25519(self) -> str:
        return self.olm.ed25519_key.to_base64()

    def sign(self, data: bytes) -> str:
        """Ed25519 signature of ``data`` with this device's key, unpadded base64."""
        return self.olm.sign(data).to_base64()

    def keys(self) -> DeviceKeys:
        """The device's public keys, self-signed for its account."""
        curve25519 = self.olm.curve25519_key.to_base64()
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
        self.olm.generate_one_time_keys(count)
        keys = [self._signed(key_id, key) for key_id, key in self.olm.one_time_keys.items()]
        self.olm.mark_keys_as_published()
        return keys

    def fallback_key(self) -> OneTimeKey:
        """A new signed fallback key."""
        self.olm.generate_fallback_key()  # type: ignore[attr-defined]
        ((key_id, key),) = self.olm.fallback_key.items()  # type: ignore[attr-defined]
        self.olm.mark_keys_as_published()
        return self._signed(key_id, key)

    def register_frame(
        self,
        nonce: bytes,
        *,
        one_time_keys: int = 5,
        fallback: bool = True,
        version: int = PROTOCOL_VERSION,
    ) -> Register:
        """A correct ``register`` frame answering ``nonce``: version 1 of the account's
        list, holding this device, and the account's recovery key."""
        return Register(
            version=version,
            username=self.username,
            device=self.keys(),
            device_list=self.account.signed_list([self], version=1),
            recovery_key=self.account.recovery.public_key,
            recovery_key_signature=self.account.key.sign_recovery_key(
                self.username, self.account.recovery.public_key
            ),
            one_time_keys=self.one_time_keys(one_time_keys) if one_time_keys else [],
            fallback_key=self.fallback_key() if fallback else None,
            signature=self.sign(auth_bytes(nonce, self.username, self.device_id)),
        )

    def recover_frame(
        self, nonce: bytes, old_code: RecoveryCode, *, one_time_keys: int = 5
    ) -> Recover:
        """A ``recover`` frame answering ``nonce``: this device, first of its (new) account
        key's list, takes the account over with the account's old recovery code."""
        account = self.account
        return Recover(
            version=PROTOCOL_VERSION,
            username=self.username,
            device=self.keys(),
            device_list=account.signed_list([self], version=1),
            recovery_key=account.recovery.public_key,
            recovery_key_signature=account.key.sign_recovery_key(
                self.username, account.recovery.public_key
            ),
            one_time_keys=self.one_time_keys(one_time_keys) if one_time_keys else [],
            fallback_key=self.fallback_key(),
            signature=self.sign(auth_bytes(nonce, self.username, self.device_id)),
            recovery_signature=old_code.sign_recover(
                nonce, self.username, account.key.public, account.recovery.public_key
            ),
        )

    def link_offer(self, code: LinkCode) -> bytes:
        """This device's ``link_wait`` offer, sealed with ``code``'s secret."""
        offer = NewDeviceOffer(
            username=self.username,
            device=self.keys(),
            one_time_key=self.one_time_keys(1)[0],
            name=self.device_id,
        )
        return code.seal_offer(offer)

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

    async def recover(self, device: RawDevice, old_code: RecoveryCode) -> Welcome:
        """Recover ``device``'s account onto ``device`` with ``old_code``; returns the welcome."""
        welcome = await self.request(device.recover_frame(self.challenge.nonce, old_code))
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
