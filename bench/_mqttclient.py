"""A minimal MQTT 3.1.1 client for QoS 1 publish and subscribe, for load generation.

It drives Debian's mosquitto as the C anchor of bench/relay.py. Why not paho-mqtt or
aiomqtt: measured here, aiomqtt's load generator spent about 500 µs of CPU per
message (a task and an ``asyncio.wait`` per received message, a future per
publish), so it, not the broker, was the bottleneck. This client, like
bench/_wsclient.py, handles packets inside ``data_received`` and coalesces each
loop turn's writes. It implements exactly what the benchmark needs: CONNECT,
SUBSCRIBE at QoS 1, PUBLISH at QoS 1 (with PUBACK both ways); keep-alive is off.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

__all__ = ["RawMqtt"]

_CONNACK, _PUBLISH, _PUBACK, _SUBACK = 2, 3, 4, 9


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(text: bytes) -> bytes:
    return struct.pack("!H", len(text)) + text


class RawMqtt(asyncio.Protocol):
    """One MQTT client connection; received PUBLISH payloads go to ``on_message``."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.transport: asyncio.Transport | None = None
        self.on_message: Callable[[bytes], None] | None = None
        """Called with each received PUBLISH payload (its PUBACK is sent for it)."""
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[int]] = {}
        """CONNACK (key 0) and SUBACK (by packet id) answers awaited during setup."""

    @classmethod
    async def connect(cls, host: str, port: int, client_id: str, timeout: float = 30.0) -> RawMqtt:
        """Connect with a clean session and wait for CONNACK.

        Raises:
            RuntimeError: the broker refused the connection.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_connection(lambda: cls(client_id), host, port)
            connack = protocol._expect(0)
            variable = (
                _string(b"MQTT") + bytes((4, 0x02)) + struct.pack("!H", 0)
            )  # clean, no keep-alive
            protocol._packet(0x10, variable + _string(client_id.encode()))
            code = await connack
        if code != 0:
            raise RuntimeError(f"broker refused {client_id}: CONNACK code {code}")
        return protocol

    async def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1 and wait for SUBACK.

        Raises:
            RuntimeError: the broker did not grant QoS 1.
        """
        packet_id = self._packet_id()
        suback = self._expect(packet_id)
        self._packet(0x82, struct.pack("!H", packet_id) + _string(topic.encode()) + b"\x01")
        granted = await asyncio.wait_for(suback, 30.0)
        if granted != 1:
            raise RuntimeError(f"broker granted QoS {granted} on {topic}, not 1")

    def publish(self, topic: bytes, payload: bytes) -> None:
        """Queue a QoS 1 PUBLISH; the broker's PUBACK is read and dropped."""
        body = _string(topic) + struct.pack("!H", self._packet_id()) + payload
        self._packet(0x32, body)

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _expect(self, key: int) -> asyncio.Future[int]:
        future: asyncio.Future[int] = self._loop.create_future()
        self._waiting[key] = future
        return future

    def _packet(self, first: int, body: bytes) -> None:
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(bytes((first,)) + _varint(len(body)))
        self._out.append(body)

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(RuntimeError(f"broker closed the connection: {exc}"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= 2:
            length, shift, position = 0, 0, offset + 1
            while True:
                if position >= len(buffer):
                    del buffer[:offset]
                    return
                byte = buffer[position]
                length |= (byte & 0x7F) << shift
                shift += 7
                position += 1
                if not byte & 0x80:
                    break
            end = position + length
            if len(buffer) < end:
                break
            self._handle(buffer[offset] >> 4, buffer[offset], bytes(buffer[position:end]))
            offset = end
        del buffer[:offset]

    def _handle(self, kind: int, first: int, body: bytes) -> None:
        if kind == _PUBLISH:
            (topic_length,) = struct.unpack_from("!H", body)
            start = 2 + topic_length
            if first & 0x06:  # QoS 1: a packet id follows the topic, and needs a PUBACK
                self._packet(0x40, body[start : start + 2])
                start += 2
            if self.on_message is not None:
                self.on_message(body[start:])
        elif kind == _CONNACK:
            self._answer(0, body[1])
        elif kind == _SUBACK:
            self._answer(struct.unpack_from("!H", body)[0], body[2])

    def _answer(self, key: int, value: int) -> None:
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(value)

    def close(self) -> None:
        """Send DISCONNECT and drop the connection."""
        if self.transport is not None and not self.transport.is_closing():
            self._packet(0xE0, b"")
            self._flush()
            self.transport.close()
