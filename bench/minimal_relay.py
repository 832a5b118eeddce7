"""The floor for bench/relay.py: an in-memory aiohttp WebSocket relay, no auth, no storage.

It speaks obrolan's own frames through obrolan's own codec (``send`` → ``sent`` and a
``deliver`` push, ``ack`` drops the envelope), so the load generator drives it exactly
as it drives the real relay. What it leaves out is what the real relay adds: the
challenge and signature check, the durable mailbox, the delivery window. A device
names itself in the URL, ``/ws?device=USER/DEVICE``, unchecked.

Run: ``python bench/minimal_relay.py --port 0`` prints
``minimal relay listening on http://127.0.0.1:PORT`` when ready; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket

from aiohttp import WSMsgType, web

from obrolan.errors import RemoteProtocolError
from obrolan.protocol import frames
from obrolan.protocol.limits import Limits

__all__ = ["MinimalRelay", "serve"]

Device = tuple[str, str]


class MinimalRelay:
    """Envelopes held in memory per device until acknowledged; pushed when sent."""

    def __init__(self) -> None:
        self.connections: dict[Device, web.WebSocketResponse] = {}
        self.held: dict[Device, dict[str, frames.Envelope]] = {}

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """One device's connection: relay its ``send`` frames, drop what it ``ack``s."""
        username, _, device_id = request.query.get("device", "").partition("/")
        ws = web.WebSocketResponse(max_msg_size=Limits().max_frame_bytes)
        await ws.prepare(request)
        me = (username, device_id)
        self.connections[me] = ws
        held = self.held.setdefault(me, {})
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    break
                try:
                    frame = frames.decode_client_frame(message.data)
                except RemoteProtocolError as exc:
                    error = frames.Error(id=None, code=exc.code, message=str(exc))
                    await ws.send_str(frames.encode(error).decode())
                    continue
                if isinstance(frame, frames.Send):
                    await self._relay(username, device_id, frame)
                    ids = [envelope.envelope_id for envelope in frame.envelopes]
                    sent = frames.Sent(id=frame.id, envelope_ids=ids)
                    await ws.send_str(frames.encode(sent).decode())
                elif isinstance(frame, frames.Ack):
                    for envelope_id in frame.envelope_ids:
                        held.pop(envelope_id, None)
        finally:
            del self.connections[me]
        return ws

    async def _relay(self, username: str, device_id: str, frame: frames.Send) -> None:
        for outbound in frame.envelopes:
            to = (outbound.to_user, outbound.to_device)
            envelope = frames.Envelope(
                envelope_id=outbound.envelope_id,
                from_user=username,
                from_device=device_id,
                ciphertext=outbound.ciphertext,
            )
            self.held.setdefault(to, {})[outbound.envelope_id] = envelope
            peer = self.connections.get(to)
            if peer is not None:
                await peer.send_str(frames.encode(frames.Deliver(envelopes=[envelope])).decode())


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, after printing the ready line."""
    app = web.Application()
    app.router.add_get("/ws", MinimalRelay().websocket)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.create_server((host, port), backlog=4096)
    await web.SockSite(runner, sock).start()
    print(f"minimal relay listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    """Parse ``--host``/``--port`` and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
