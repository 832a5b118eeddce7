"""A real obrolan device as the benchmarks use it: real keys, raw WebSocket frames.

The benchmarks speak the wire protocol directly (obrolan's own codec over one
bench/_wsclient.py WebSocket per device) rather than through ``obrolan.client``:
the load generator must stay cheap, and the client's outbox, store and reconnect
logic are not what is measured.
Registration and authentication are the real ones: a fresh challenge per connection,
answered with an Ed25519 signature of the device's own key.
"""

from __future__ import annotations

import msgspec
from _wsclient import RawWebSocket

from obrolan.crypto import DeviceIdentity, verify_device_keys, verify_one_time_key
from obrolan.crypto.account import AccountKey, RecoveryCode, device_entry
from obrolan.crypto.olm import OlmSession
from obrolan.errors import RequestRefused
from obrolan.protocol import frames
from obrolan.protocol.limits import PROTOCOL_VERSION
from obrolan.protocol.signing import auth_bytes

__all__ = ["DEVICE_ID", "BenchDevice", "expect_frame", "receive_frame"]

DEVICE_ID = "bench"
"""Every benchmark account has one device with this id."""

HANDSHAKE_TIMEOUT = 30.0
"""Seconds to wait for the server's answer to one setup frame."""


async def receive_frame(ws: RawWebSocket) -> frames.ServerFrame:
    """The next frame from the server, decoded with obrolan's codec.

    Raises:
        RuntimeError: the connection closed.
        TimeoutError: nothing arrived within HANDSHAKE_TIMEOUT.
    """
    return frames.decode_server_frame(await ws.receive(HANDSHAKE_TIMEOUT))


async def expect_frame(ws: RawWebSocket, kind: type[msgspec.Struct]) -> frames.ServerFrame:
    """The next frame of type ``kind``, skipping pushes such as ``drained``.

    Raises:
        RequestRefused: the server answered with an error frame.
        RuntimeError: the server closed the connection.
    """
    while True:
        frame = await receive_frame(ws)
        if isinstance(frame, kind):
            return frame
        if isinstance(frame, frames.Error):
            raise RequestRefused(frame.code, frame.message)


class BenchDevice:
    """One benchmark account with its single device."""

    def __init__(self, username: str) -> None:
        """A new account name with a fresh device identity (nothing sent yet)."""
        self.username = username
        self.identity = DeviceIdentity.create()
        self.account = AccountKey.create()

    async def _open(self, ws_url: str) -> tuple[RawWebSocket, bytes]:
        ws = await RawWebSocket.connect(ws_url, HANDSHAKE_TIMEOUT)
        challenge = await expect_frame(ws, frames.Challenge)
        assert isinstance(challenge, frames.Challenge)
        return ws, challenge.nonce

    async def register(self, ws_url: str, one_time_keys: int = 0) -> RawWebSocket:
        """Create the account on the server; the connection comes back authenticated.

        Args:
            one_time_keys: how many signed one-time keys (plus a fallback key) to publish.

        Raises:
            RequestRefused: the server refused.
            RuntimeError: the server closed the connection.
        """
        ws, nonce = await self._open(ws_url)
        keys = self.identity.new_one_time_keys(one_time_keys) if one_time_keys else []
        device = self.identity.device_keys(self.username, DEVICE_ID)
        register = frames.Register(
            version=PROTOCOL_VERSION,
            username=self.username,
            device=device,
            device_list=self.account.sign_device_list(
                self.username, 1, [device_entry(device, b"")]
            ),
            recovery_key=RecoveryCode.create().public_key,
            one_time_keys=keys,
            fallback_key=self.identity.new_fallback_key() if one_time_keys else None,
            signature=self.identity.sign(auth_bytes(nonce, self.username, DEVICE_ID)),
        )
        ws.send_text(frames.encode(register))
        await expect_frame(ws, frames.Welcome)
        return ws

    async def authenticate(self, ws_url: str) -> RawWebSocket:
        """Open a new connection and authenticate it as this (registered) device.

        Raises:
            RequestRefused: the server refused.
            RuntimeError: the server closed the connection.
        """
        ws, nonce = await self._open(ws_url)
        authenticate = frames.Authenticate(
            version=PROTOCOL_VERSION,
            username=self.username,
            device_id=DEVICE_ID,
            signature=self.identity.sign(auth_bytes(nonce, self.username, DEVICE_ID)),
        )
        ws.send_text(frames.encode(authenticate))
        await expect_frame(ws, frames.Welcome)
        return ws

    async def claim_session(self, ws: RawWebSocket, peer: str) -> OlmSession:
        """Claim a key of ``peer``'s device over ``ws`` and start an Olm session with it.

        Raises:
            RequestRefused: the server refused.
            RuntimeError: the peer has no key to claim.
            SignatureError: the claimed keys are not signed by the peer's device.
        """
        ws.send_text(frames.encode(frames.ClaimKeys(id=1, username=peer)))
        claimed = await expect_frame(ws, frames.ClaimedKeys)
        assert isinstance(claimed, frames.ClaimedKeys)
        [device] = claimed.devices
        if device.one_time_key is None:
            raise RuntimeError(f"{peer} has no one-time key to claim")
        verify_device_keys(peer, device.device)
        verify_one_time_key(device.device.ed25519, device.one_time_key)
        return self.identity.outbound_session(device.device.curve25519, device.one_time_key.key)

    def local_session(self, peer: BenchDevice) -> OlmSession:
        """An Olm session with ``peer`` from a key it hands over directly (no server)."""
        [key] = peer.identity.new_one_time_keys(1)
        return self.identity.outbound_session(peer.identity.curve25519, key.key)
