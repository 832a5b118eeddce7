"""The aiohttp layer: ``GET /v1/info``, the WebSocket at ``/v1/ws``, and the process.

Everything aiohttp-specific lives here; :mod:`obrolan.server.relay` does the work.
There is no access log: it would hold clients' IP addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable

from aiohttp import WSMsgType, web

from obrolan import __version__
from obrolan.errors import ConfigError
from obrolan.protocol import blobs as http_wire
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import Info, encode
from obrolan.protocol.limits import SUPPORTED_VERSIONS, Limits
from obrolan.server.blobs.filesystem import FilesystemBlobStore
from obrolan.server.blobs.http import add_routes as add_blob_routes
from obrolan.server.config import ServerConfig
from obrolan.server.logs import configure_logging
from obrolan.server.relay import Relay
from obrolan.server.request_deadline import DeadlineSite, RequestDeadline
from obrolan.server.routing.memory import MemoryRouter
from obrolan.server.storage.sqlite import SqliteStorage

__all__ = ["build_app", "info", "run", "serve"]

_logger = logging.getLogger(__name__)

_HEARTBEAT_SECONDS = 30.0
"""A connection that does not answer a ping within half of this is closed."""
_SHUTDOWN_SECONDS = 5.0
"""How long shutdown waits for request handlers to finish."""
_CLOSE_SECONDS = 2.0
"""How long closing a connection waits for the client's close frame."""
_GC_YOUNG_THRESHOLD = 10_000
"""Net container allocations between two young-generation garbage collections. Python's
700 made the collector run every few messages under load, each time scanning every
envelope in flight (with their futures and frames): 17% of the server's CPU flat out.
Nearly all the relay's garbage is freed by reference counting anyway."""
_KEEPALIVE_SECONDS = 75.0
"""How long a kept-alive HTTP connection may wait for its next complete request head
(longer than the 15 s aiohttp clients keep an idle connection, so none reuses one the
server is closing). The first head has ``--request-timeout``."""
_READ_BYTES = 64 * 1024
"""Most bytes asked of a connection's socket per read (see _read_in_heap_sized_chunks)."""


def info(limits: Limits) -> bytes:
    """The JSON body of ``GET /v1/info``."""
    return encode(
        Info(
            server="obrolan", version=__version__, versions=list(SUPPORTED_VERSIONS), limits=limits
        )
    )


class _WebSocketTransport:
    """An aiohttp WebSocket as the relay's :class:`~obrolan.server.relay.Transport`."""

    def __init__(self, ws: web.WebSocketResponse, socket: asyncio.Transport | None) -> None:
        self._ws = ws
        self._socket = socket

    async def send(self, data: bytes) -> None:
        # aiohttp writes an uncompressed frame before its first await (only a full buffer
        # makes it wait), which is what keeps concurrent sends in call order.
        # A gone connection is not an error here: the receive loop ends and closes the session.
        with contextlib.suppress(ConnectionError):
            await self._ws.send_frame(data, WSMsgType.TEXT)

    def backlogged(self) -> bool:
        return self._socket is None or self._socket.get_write_buffer_size() > 0

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode())


def _read_in_heap_sized_chunks(transport: asyncio.Transport | None) -> None:
    """Make asyncio read this connection at most :data:`_READ_BYTES` at a time.

    asyncio's plain socket transport reads with ``recv(256 KiB)``; glibc serves an
    allocation that large with ``mmap``, so each read cost an mmap, an mremap and a
    munmap, with page faults (about 13% of the server's CPU under load). Below glibc's
    128 KiB threshold the buffer comes from the heap. A TLS transport reads into its own
    buffer and has no such attribute.
    """
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = _READ_BYTES  # type: ignore[attr-defined]


_BUSY_RETRY_SECONDS = 1
"""The retry hint of an upgrade refused while too many connections are unauthenticated."""
_BUSY = http_wire.encode(
    http_wire.HttpError(
        code=ErrorCode.RATE_LIMITED,
        message="too many connections are waiting to authenticate; try again shortly",
        retry_after_ms=_BUSY_RETRY_SECONDS * 1000,
    )
)


def build_app(relay: Relay) -> web.Application:
    """The aiohttp application serving one relay."""
    info_body = info(relay.limits)

    async def get_info(request: web.Request) -> web.Response:
        return web.Response(body=info_body, content_type="application/json")

    async def websocket(request: web.Request) -> web.StreamResponse:
        if relay.limiter.full_of_unauthenticated():
            return web.Response(
                status=503,
                body=_BUSY,
                content_type="application/json",
                headers={"Retry-After": str(_BUSY_RETRY_SECONDS)},
            )
        ws = web.WebSocketResponse(
            # aiohttp refuses a message of max_msg_size bytes itself; the spec closes only
            # on one larger than max_frame_bytes.
            max_msg_size=relay.limits.max_frame_bytes + 1,
            compress=False,  # ciphertext does not compress; deflate would only cost CPU
            heartbeat=_HEARTBEAT_SECONDS,
            timeout=_CLOSE_SECONDS,
            decode_text=False,  # msgspec parses the UTF-8 bytes itself
        )
        # Counted as unauthenticated from here, so that upgrades in progress count too.
        session = relay.connect(_WebSocketTransport(ws, request.transport))
        try:
            await ws.prepare(request)
            _read_in_heap_sized_chunks(request.transport)
            await session.open()
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    await session.receive(message.data)
                elif message.type is WSMsgType.BINARY:
                    await session.receive_binary()
                elif message.type is WSMsgType.ERROR:
                    # e.g. a message over max_frame_bytes: aiohttp has closed with 1009
                    _logger.debug("connection closed after a WebSocket error: %s", message.data)
                    break
        finally:
            await session.closed()
        return ws

    app = web.Application()
    app.router.add_get("/v1/info", get_info)
    app.router.add_get("/v1/ws", websocket)
    return app


def _url(config: ServerConfig, port: int) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"{config.scheme}://{host}:{port}"


async def serve(config: ServerConfig, on_ready: Callable[[str], None]) -> None:
    """Run the server until SIGTERM or SIGINT, then shut down gracefully.

    ``on_ready`` gets the server's URL (with the real port) once it accepts connections.

    Raises:
        ConfigError: the address cannot be bound or the TLS files cannot be loaded.
        StorageError: the database cannot be opened.
    """
    ssl_context = config.ssl_context()
    storage = SqliteStorage(config.database, new_database=config.new_database)
    blob_store = FilesystemBlobStore(config.data_dir, new_database=config.new_database)
    router = MemoryRouter()
    relay = Relay(
        storage,
        router,
        config.limits,
        blobs=blob_store,
        auth_timeout=config.auth_timeout,
        sweep_interval=config.sweep_interval,
        link_ttl=config.link_ttl,
        rate_limits=config.rate_limits,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await storage.start()
    app = build_app(relay)
    add_blob_routes(app, blob_store, storage, config, relay.limiter.blob_uploads)
    deadline = RequestDeadline(config.request_timeout)
    app.middlewares.append(deadline.middleware)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=_SHUTDOWN_SECONDS,
        keepalive_timeout=max(_KEEPALIVE_SECONDS, config.request_timeout),
    )
    try:
        await blob_store.start()
        await router.start()
        await relay.start()
        await runner.setup()
        site = DeadlineSite(runner, deadline, config.host, config.port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {config.host} port {config.port}: {exc.strerror}; "
                f"choose another --host or --port"
            ) from None
        port = runner.addresses[0][1]
        _logger.info("obrolan server %s started on port %d", __version__, port)
        on_ready(_url(config, port))
        await stop.wait()
        _logger.info("shutting down")
    finally:
        await relay.close()
        await runner.cleanup()
        await router.close()
        await blob_store.close()
        await storage.close()
    _logger.info("stopped")


def run(config: ServerConfig, on_ready: Callable[[str], None]) -> None:
    """Create the data directory, set up logging and run :func:`serve` to the end."""
    _, *older = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *older)
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the data directory {config.data_dir}: {exc.strerror}"
        ) from None
    configure_logging(config.log_file, config.log_level)
    asyncio.run(serve(config, on_ready))
