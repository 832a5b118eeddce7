"""A minimal WebSocket client (RFC 6455) on a raw asyncio protocol, for load generation.

Why not aiohttp's client: on this machine the load generator runs on one core and
must outpace the server; aiohttp's client spends a future, a task switch and a
full decode on every frame, and a per-frame ``send`` syscall. This client hands
each text frame to a callback inside ``data_received`` and coalesces everything
written in one event-loop turn into one ``write``. Frames are masked with the
all-zero key (valid per the RFC, and the server unmasks them all the same), so
sending costs a header and no copy of the payload. It speaks to obrolan's server
and bench/minimal_relay.py only: no extensions, no TLS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable
from urllib.parse import urlsplit

__all__ = ["RawWebSocket"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ZERO_MASK = b"\x00\x00\x00\x00"
_TEXT, _CLOSE, _PING, _PONG = 0x1, 0x8, 0x9, 0xA


def _header(opcode: int, length: int) -> bytes:
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, 0x80 | length)) + _ZERO_MASK
    if length < 65536:
        return struct.pack("!BBH", first, 0xFE, length) + _ZERO_MASK
    return struct.pack("!BBQ", first, 0xFF, length) + _ZERO_MASK


class RawWebSocket(asyncio.Protocol):
    """One client WebSocket: text frames to a callback (or a queue), writes coalesced."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.on_text: Callable[[bytes], None] | None = None
        """Called with each text frame's payload; frames queue for :meth:`receive` while None."""
        self._buffer = bytearray()
        self._upgraded = False
        self._key = base64.b64encode(os.urandom(16))
        self._loop = asyncio.get_running_loop()
        self._handshake: asyncio.Future[None] = self._loop.create_future()
        self._received: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._out: list[bytes] = []
        self.closed = False

    @classmethod
    async def connect(cls, url: str, timeout: float = 30.0) -> RawWebSocket:
        """Open ``ws://host:port/path?query`` and complete the upgrade.

        Raises:
            ValueError: ``url`` is not ``ws://HOST:PORT/...``.
            RuntimeError: the server refused the upgrade.
            OSError, TimeoutError: no connection within ``timeout``.
        """
        parts = urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname or parts.port is None:
            raise ValueError(f"expected ws://HOST:PORT/PATH, not {url!r}")
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_connection(cls, parts.hostname, parts.port)
            assert protocol.transport is not None
            protocol.transport.write(
                f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {protocol._key.decode()}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            await protocol._handshake
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._received.put_nowait(None)
        if not self._handshake.done():
            self._handshake.set_exception(RuntimeError(f"connection lost during upgrade: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded and not self._read_upgrade():
            return
        self._read_frames()

    def _read_upgrade(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        expected = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        if not head.startswith("HTTP/1.1 101") or expected not in head:
            self._handshake.set_exception(RuntimeError(f"upgrade refused: {head.splitlines()[0]}"))
            assert self.transport is not None
            self.transport.close()
            return False
        self._upgraded = True
        self._handshake.set_result(None)
        return True

    def _read_frames(self) -> None:
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            length = second & 0x7F
            start = offset + 2
            if length == 126:
                if len(buffer) - offset < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, start)
                start += 2
            elif length == 127:
                if len(buffer) - offset < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, start)
                start += 8
            end = start + length
            if len(buffer) < end:
                break
            self._frame(first & 0x0F, bytes(buffer[start:end]))
            offset = end
        del buffer[:offset]

    def _frame(self, opcode: int, payload: bytes) -> None:
        # The servers this client talks to never fragment, compress or mask.
        if opcode == _TEXT:
            if self.on_text is not None:
                self.on_text(payload)
            else:
                self._received.put_nowait(payload)
        elif opcode == _PING:
            self._send(_PONG, payload)
        elif opcode == _CLOSE:
            self._send(_CLOSE, payload[:2])
            self.closed = True
            assert self.transport is not None
            self._loop.call_soon(self.transport.close)

    async def receive(self, timeout: float = 30.0) -> bytes:
        """The next text frame (only while ``on_text`` is None).

        Raises:
            RuntimeError: the connection closed first.
            TimeoutError: nothing arrived within ``timeout``.
        """
        async with asyncio.timeout(timeout):
            payload = await self._received.get()
        if payload is None:
            self._received.put_nowait(None)
            raise RuntimeError("the server closed the connection")
        return payload

    def send_text(self, payload: bytes) -> None:
        """Queue one text frame; everything queued in this loop turn goes in one write."""
        self._send(_TEXT, payload)

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.closed:
            return
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(_header(opcode, len(payload)))
        self._out.append(payload)

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def close(self) -> None:
        """Send a normal close frame and drop the connection."""
        if self.transport is None or self.closed:
            return
        self._send(_CLOSE, struct.pack("!H", 1000))
        self._flush()
        self.closed = True
        self.transport.close()
