"""One WebSocket to the server: requests matched to answers by ``id``, pushes queued.

The connection does no retrying; :class:`obrolan.client.client.Client` reconnects
with exponential backoff and jitter. Everything aiohttp-specific on the client
side lives in this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import msgspec

from obrolan.errors import (
    ConfigError,
    DeviceRemoved,
    DeviceReplaced,
    RemoteProtocolError,
    RequestRefused,
    ServerUnreachable,
)
from obrolan.protocol import frames
from obrolan.protocol.codes import FATAL_CODES, ErrorCode
from obrolan.protocol.deliver_salvage import UnreadableEnvelope, salvage_deliver

__all__ = ["Connection", "ServerAddress", "close_session"]

REPLACED_CLOSE_CODE = 4000
REMOVED_CLOSE_CODE = 4001
"""The server closes an older connection of a device with this code when a newer one arrives."""
REQUEST_TIMEOUT = 30.0
"""Seconds to wait for the answer to one request before giving up on the connection."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where the server is and how to reach it safely."""

    url: str
    """Normalised ``http(s)://host:port``."""
    ws_url: str
    ssl: ssl.SSLContext | bool

    @classmethod
    def parse(
        cls, url: str, *, insecure: bool = False, ca_file: str | None = None
    ) -> ServerAddress:
        """Check a server URL and choose its TLS settings.

        ``https``/``wss`` verify the certificate (against ``ca_file`` if given, else the
        system store). Plain ``http``/``ws`` is accepted only to a loopback address
        unless ``insecure`` is set.

        Raises:
            ConfigError: the URL is malformed or would send traffic unencrypted.
        """
        parts = urlsplit(url if "://" in url else f"https://{url}")
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        if scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"bad server URL {url!r}: use https://HOST[:PORT]")
        host = parts.hostname
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ConfigError(f"bad port in server URL {url!r}") from None
        if scheme == "http" and not (insecure or _is_loopback(host)):
            raise ConfigError(
                f"refusing plain http to {host}: messages are end-to-end encrypted, but "
                f"metadata would travel in the clear. Use https://, or --insecure to accept it"
            )
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        tls: ssl.SSLContext | bool = False
        if scheme == "https":
            tls = ssl.create_default_context(cafile=ca_file)
        ws_scheme = "wss" if scheme == "https" else "ws"
        return cls(url=f"{scheme}://{netloc}", ws_url=f"{ws_scheme}://{netloc}/v1/ws", ssl=tls)


PushFrame = frames.Deliver | frames.Drained | frames.LinkAnswer | UnreadableEnvelope
ObrolanErrorLike = ServerUnreachable | RequestRefused | DeviceReplaced | DeviceRemoved


SESSION_CLOSE_SECONDS = 5.0
"""How long closing an HTTP session may take before it is given up on."""


async def close_session(http: aiohttp.ClientSession) -> None:
    """Close an HTTP session, but never wait on it for long.

    aiohttp waits for every connection it started to report itself closed; one
    cancelled before its socket was made may never do so, and a client closing
    must not hang on it. The session counts as closed either way (no warning).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SESSION_CLOSE_SECONDS):
            await http.close()


class Connection:
    """An open WebSocket to the server, after its ``challenge`` arrived."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        challenge: frames.Challenge,
        address: ServerAddress,
    ) -> None:
        self.challenge = challenge
        self.address = address
        self._http = http
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[frames.ServerFrame]] = {}
        self.pushes: asyncio.Queue[PushFrame | None] = asyncio.Queue()
        """Deliver and Drained frames in arrival order; None once the connection is gone."""
        self.closed_reason: ObrolanErrorLike | None = None
        self._handshake: asyncio.Future[frames.Welcome | frames.LinkWaiting] | None = None
        self._reader = asyncio.create_task(self._read_loop(), name="obrolan-reader")

    @classmethod
    async def open(cls, address: ServerAddress) -> Connection:
        """Connect and read the server's ``challenge``.

        Raises:
            ServerUnreachable: the server cannot be reached or is not an obrolan server.
        """
        http = aiohttp.ClientSession()
        try:
            ws, challenge = await cls._connect(http, address)
        except BaseException:
            # Also when cancelled mid-connect (a client closing): an unclosed session would
            # print a traceback at exit.
            await close_session(http)
            raise
        return cls(http, ws, challenge, address)

    @staticmethod
    async def _connect(
        http: aiohttp.ClientSession, address: ServerAddress
    ) -> tuple[aiohttp.ClientWebSocketResponse, frames.Challenge]:
        try:
            ws = await http.ws_connect(
                address.ws_url,
                ssl=address.ssl,
                heartbeat=30.0,
                max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
            first = await asyncio.wait_for(ws.receive(), REQUEST_TIMEOUT)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ServerUnreachable(
                address.url, f"certificate not trusted ({exc.certificate_error})"
            ) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ServerUnreachable(address.url, _describe(exc)) from None
        if first.type != aiohttp.WSMsgType.TEXT:
            raise ServerUnreachable(address.url, "the server closed the connection")
        try:
            challenge = frames.decode_server_frame(first.data)
        except RemoteProtocolError:
            raise ServerUnreachable(address.url, "it does not speak the obrolan protocol") from None
        if not isinstance(challenge, frames.Challenge):
            raise ServerUnreachable(address.url, "the server did not send a challenge")
        return ws, challenge

    async def handshake(
        self, frame: frames.Register | frames.Authenticate | frames.Recover
    ) -> frames.Welcome:
        """Send ``register``, ``authenticate`` or ``recover`` and wait for ``welcome``.

        Raises:
            RequestRefused: the server refused (``auth_failed``, ``username_taken``, …).
            ServerUnreachable: the connection was lost first.
        """
        answer = await self._unnumbered(frame)
        assert isinstance(answer, frames.Welcome)
        return answer

    async def link_wait(self, frame: frames.LinkWait, timeout: float) -> frames.LinkAnswer:
        """Leave a new device's offer and wait up to ``timeout`` seconds for its answer.

        Raises:
            RequestRefused: the server refused the offer (``link_exists``, …).
            ServerUnreachable: the connection was lost, or no answer came in time.
        """
        await self._unnumbered(frame)  # link_waiting
        try:
            async with asyncio.timeout(timeout):
                push = await self.pushes.get()
        except TimeoutError:
            raise ServerUnreachable(
                self.address.url, "no device approved the link in time"
            ) from None
        if not isinstance(push, frames.LinkAnswer):
            raise self._lost()
        return push

    async def _unnumbered(
        self, frame: frames.Register | frames.Authenticate | frames.Recover | frames.LinkWait
    ) -> frames.Welcome | frames.LinkWaiting:
        self._handshake = asyncio.get_running_loop().create_future()
        await self.send(frame)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                return await self._handshake
        except TimeoutError:
            raise ServerUnreachable(self.address.url, "the server did not answer in time") from None
        finally:
            self._handshake = None

    async def request(self, make: Callable[[int], msgspec.Struct]) -> frames.ServerFrame:
        """Send the frame ``make(id)`` and wait for the answer with that id.

        Raises:
            RequestRefused: the server answered with an ``error`` frame.
            ServerUnreachable: the connection was lost or the answer did not come in time.
        """
        request_id = next(self._ids)
        future: asyncio.Future[frames.ServerFrame] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.send(make(request_id))
            async with asyncio.timeout(REQUEST_TIMEOUT):
                answer = await future
        except TimeoutError:
            raise ServerUnreachable(self.address.url, "the server did not answer in time") from None
        finally:
            self._pending.pop(request_id, None)
        if isinstance(answer, frames.Error):
            raise RequestRefused(answer.code, answer.message, retry_after_ms=answer.retry_after_ms)
        return answer

    async def send(self, frame: msgspec.Struct) -> None:
        """Send one frame that gets no answer (or whose answer comes via :meth:`request`)."""
        if self._ws.closed:
            raise self._lost()
        try:
            await self._ws.send_str(frames.encode(frame).decode())
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise ServerUnreachable(self.address.url, _describe(exc)) from None

    async def close(self) -> None:
        """Close the WebSocket and stop reading."""
        self._reader.cancel()
        try:
            await self._ws.close()
        finally:
            await close_session(self._http)
            self._fail_pending()

    @property
    def is_closed(self) -> bool:
        return self._ws.closed or self._reader.done()

    def _lost(self) -> ObrolanErrorLike:
        return self.closed_reason or ServerUnreachable(self.address.url, "connection lost")

    def _fail_pending(self) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(self._lost())
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._lost())
        self._pending.clear()

    async def _read_loop(self) -> None:
        try:
            async for message in self._ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                try:
                    frame = frames.decode_server_frame(message.data)
                except RemoteProtocolError:
                    salvaged = salvage_deliver(message.data)
                    if salvaged is None:
                        raise
                    # One bad envelope: keep the connection and the good ones.
                    frame, unreadable = salvaged
                    for refused in unreadable:
                        self.pushes.put_nowait(refused)
                self._dispatch(frame)
        except RemoteProtocolError as exc:
            self.closed_reason = ServerUnreachable(
                self.address.url, f"bad frame from server: {exc}"
            )
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            self.closed_reason = ServerUnreachable(self.address.url, _describe(exc))
        finally:
            if self._ws.close_code == REPLACED_CLOSE_CODE:
                self.closed_reason = DeviceReplaced()
            elif self._ws.close_code == REMOVED_CLOSE_CODE:
                self.closed_reason = DeviceRemoved()
            elif self.closed_reason is None and self._ws.close_code not in (None, 1000):
                reason = f"the server closed the connection (code {self._ws.close_code})"
                self.closed_reason = ServerUnreachable(self.address.url, reason)
            self._fail_pending()
            self.pushes.put_nowait(None)

    def _dispatch(self, frame: frames.ServerFrame) -> None:
        if isinstance(frame, (frames.Deliver, frames.Drained, frames.LinkAnswer)):
            self.pushes.put_nowait(frame)
            return
        request_id = getattr(frame, "id", None)
        if request_id is None:
            waiting = self._handshake
            if isinstance(frame, frames.Welcome | frames.LinkWaiting):
                if waiting is not None and not waiting.done():
                    waiting.set_result(frame)
            elif isinstance(frame, frames.Error):
                refusal = RequestRefused(
                    frame.code, frame.message, retry_after_ms=frame.retry_after_ms
                )
                if waiting is not None and not waiting.done():
                    waiting.set_exception(refusal)
                elif frame.code in FATAL_CODES or frame.code is ErrorCode.UNKNOWN_LINK:
                    self.closed_reason = refusal  # the server closes next: say why
            return
        future = self._pending.get(request_id)
        if future is not None and not future.done():
            future.set_result(frame)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error)
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"not an obrolan server (HTTP {exc.status})"
    text = str(exc)
    return text or type(exc).__name__


def is_fatal(code: ErrorCode) -> bool:
    """True when reconnecting cannot help (the server refused who we are)."""
    return code in (ErrorCode.AUTH_FAILED, ErrorCode.UNSUPPORTED_VERSION)
