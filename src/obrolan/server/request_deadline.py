"""Close a connection whose first HTTP request (a WebSocket upgrade or a blob request)
is not complete in time.

aiohttp bounds nothing before the first request but its keep-alive timer, so a client
trickling its request head a byte at a time would hold a connection (and its memory)
for as long as it likes. ::

    deadline = RequestDeadline(10.0)
    app.middlewares.append(deadline.middleware)            # a complete head stops the clock
    site = DeadlineSite(runner, deadline, host, port, ssl_context=None)

Only the head is bounded: a blob's body may stream for as long as it needs, and what
follows an upgrade is bounded by the relay's authentication timeout. Between two
requests on one kept-alive connection aiohttp's keep-alive timeout (``keepalive_timeout``
of the runner) bounds the next head.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from ssl import SSLContext

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = ["DeadlineSite", "RequestDeadline"]

_logger = logging.getLogger(__name__)


class RequestDeadline:
    """The clock of every connection that has not yet sent a complete request head.

    Args:
        seconds: how long a new connection has for its first request head.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        # Keyed by aiohttp's protocol object, which the middleware sees as request.protocol.
        # An entry lives at most `seconds`: the head, or the timer, removes it.
        self._waiting: dict[asyncio.BaseProtocol, asyncio.TimerHandle] = {}

    def protocol_factory(
        self, make: Callable[[], asyncio.BaseProtocol]
    ) -> Callable[[], asyncio.BaseProtocol]:
        """Wrap aiohttp's protocol factory so that each connection starts its clock."""
        return lambda: _ClockStarter(self, make())

    def _start(self, protocol: asyncio.BaseProtocol, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        self._waiting[protocol] = loop.call_later(self.seconds, self._expired, protocol, transport)

    def _expired(self, protocol: asyncio.BaseProtocol, transport: asyncio.BaseTransport) -> None:
        if self._waiting.pop(protocol, None) is not None and not transport.is_closing():
            _logger.debug("closed a connection without a request within %gs", self.seconds)
            transport.close()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A request head arrived: its connection's clock stops."""
        timer = self._waiting.pop(request.protocol, None)
        if timer is not None:
            timer.cancel()
        return await handler(request)


class _ClockStarter(asyncio.Protocol):
    """Stands in for aiohttp's protocol only until the connection is made: it starts the
    clock and hands the transport over, so it costs nothing per read afterwards."""

    def __init__(self, deadline: RequestDeadline, inner: asyncio.BaseProtocol) -> None:
        self._deadline = deadline
        self._inner = inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_protocol(self._inner)
        self._deadline._start(self._inner, transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Only reached when the connection was never made (a failed TLS handshake): aiohttp's
        protocol never saw it, so there is nothing to tell."""


class DeadlineSite(web.BaseSite):
    """A TCP site (like aiohttp's ``TCPSite``) whose connections have ``deadline`` for
    their first request head, and as long for a TLS handshake."""

    __slots__ = ("_deadline", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        deadline: RequestDeadline,
        host: str,
        port: int,
        *,
        ssl_context: SSLContext | None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._deadline = deadline
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None, "the runner is set up before its sites start"
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._deadline.protocol_factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=128,  # as aiohttp's TCPSite
            ssl_handshake_timeout=self._deadline.seconds if self._ssl_context else None,
        )
