"""A malicious server for tests: a WebSocket proxy in front of a real server that rewrites.

Clients connect to the shim as if it were the server. Every frame the server
sends passes through ``rewrite`` (which may change it, as a hostile operator
could), and every frame a client sends is recorded, so a test can check what
the client did with what it was shown::

    async with MaliciousServer(server.ws_url) as shim:
        shim.rewrite = add_device_to("bob", fake)
        alice = await Client.open(profile, None)  # profile's server_url is shim.url
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp import web

__all__ = ["MaliciousServer"]

Rewrite = Callable[[dict[str, Any]], dict[str, Any]]


class MaliciousServer:
    """A proxy on 127.0.0.1 that forwards /v1/ws to ``upstream`` and rewrites what comes back."""

    def __init__(self, upstream_ws: str) -> None:
        self._upstream = upstream_ws
        self.rewrite: Rewrite = lambda frame: frame
        self.sent_by_clients: list[dict[str, Any]] = []
        self.cut_on: Callable[[dict[str, Any]], bool] | None = None
        """When set: the first client frame it matches is not forwarded; the connection is
        cut instead (a network failure at that exact point), and the hook is cleared."""
        self.answer: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
        """When set: a client frame for which it returns a frame is not forwarded; that
        frame is sent back to the client instead (the server refusing, say)."""
        self.swap_from: str | None = None
        """When set: hold the next ``deliver`` from this user and send it after the one
        that follows it (two envelopes delivered in swapped order)."""
        self._held: str | None = None
        self._reorder: tuple[Callable[[dict[str, Any]], bool], list[int]] | None = None
        self._reordering: list[dict[str, Any]] = []
        self.reordered = 0
        """How many envelopes :meth:`reorder` has delivered in its order so far."""
        self.withhold: Callable[[dict[str, Any]], bool] | None = None
        """When set: envelopes it matches are not delivered but kept, until
        :meth:`deliver_withheld` (a server that keeps an update from some members)."""
        self.withheld: list[dict[str, Any]] = []
        self._client: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/v1/ws", self._proxy)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def reorder(self, matches: Callable[[dict[str, Any]], bool], order: list[int]) -> None:
        """Hold the next ``len(order)`` envelopes that ``matches`` (across ``deliver`` frames),
        then deliver them at once, ``order[i]`` being the index of the one sent i-th:
        ``reorder(lambda e: e["from_user"] == "bob", [2, 0, 1])`` delivers bob's 1, 2, 3
        as 3, 1, 2."""
        self._reorder, self._reordering = (matches, order), []

    def _reordered(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        """The ``deliver`` frame to send in place of ``frame`` (None: nothing to send now)."""
        if self._reorder is None or frame.get("type") != "deliver":
            return frame
        matches, order = self._reorder
        kept = []
        for envelope in frame["envelopes"]:
            (self._reordering if matches(envelope) else kept).append(envelope)
        if len(self._reordering) >= len(order):
            held, self._reordering, self._reorder = self._reordering, [], None
            kept += [held[i] for i in order] + held[len(order) :]
            self.reordered += len(order)
        return {**frame, "envelopes": kept} if kept else None

    def _withheld(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        """``frame`` without the envelopes :attr:`withhold` keeps back (None: nothing left)."""
        if self.withhold is None or frame.get("type") != "deliver":
            return frame
        kept = []
        for envelope in frame["envelopes"]:
            (self.withheld if self.withhold(envelope) else kept).append(envelope)
        return {**frame, "envelopes": kept} if kept else None

    async def deliver_withheld(self, which: Callable[[dict[str, Any]], bool] | None = None) -> int:
        """Deliver what was withheld (or the part ``which`` matches) to the client connected
        now; returns how many."""
        held = [e for e in self.withheld if which is None or which(e)]
        self.withheld = [e for e in self.withheld if e not in held]
        if held and self._client is not None:
            await self._client.send_str(json.dumps({"type": "deliver", "envelopes": held}))
        return len(held)

    def _hold(self, frame: dict[str, Any]) -> bool:
        return (
            self.swap_from is not None
            and self._held is None
            and frame.get("type") == "deliver"
            and all(e["from_user"] == self.swap_from for e in frame["envelopes"])
        )

    async def _proxy(self, request: web.Request) -> web.WebSocketResponse:
        client = web.WebSocketResponse(max_msg_size=0)
        await client.prepare(request)
        self._client = client
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(self._upstream, max_msg_size=0) as server,
        ):

            async def downstream() -> None:
                async for message in server:
                    if message.type is not aiohttp.WSMsgType.TEXT:
                        break
                    rewritten = self._reordered(self.rewrite(json.loads(message.data)))
                    rewritten = None if rewritten is None else self._withheld(rewritten)
                    if rewritten is None:
                        continue
                    frame = rewritten
                    if self._hold(frame):
                        self._held = json.dumps(frame)
                        continue
                    await client.send_str(json.dumps(frame))
                    if self._held is not None and frame.get("type") == "deliver":
                        held, self._held, self.swap_from = self._held, None, None
                        await client.send_str(held)
                await client.close(code=server.close_code or 1000)

            pump = asyncio.create_task(downstream())
            try:
                async for message in client:
                    if message.type is not aiohttp.WSMsgType.TEXT:
                        break
                    frame = json.loads(message.data)
                    self.sent_by_clients.append(frame)
                    if self.cut_on is not None and self.cut_on(frame):
                        self.cut_on = None
                        break
                    instead = None if self.answer is None else self.answer(frame)
                    if instead is not None:
                        await client.send_str(json.dumps(instead))
                        continue
                    await server.send_str(message.data)
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        return client
