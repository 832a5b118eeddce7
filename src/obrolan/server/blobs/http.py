"""The blob store's HTTP handlers under ``/v1/blobs``, and its sweeper.

::

    app = build_app(relay)
    add_routes(app, blob_store, storage, config)

Every request is signed by a registered device (:func:`_authenticate`); nothing is
kept between requests. Bodies stream through in pieces: the server never holds a
whole blob in memory. Refusals are JSON :class:`~obrolan.protocol.blobs.HttpError`
bodies with the status of :data:`~obrolan.protocol.blobs.STATUS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import msgspec
from aiohttp import web

from obrolan.crypto.signatures import verify
from obrolan.errors import RemoteProtocolError, RequestRefused, SignatureError
from obrolan.protocol import blobs as wire
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import DeviceId, Username
from obrolan.server.address import DeviceAddress
from obrolan.server.blobs.base import BlobStore, NewBlob
from obrolan.server.blobs.filesystem import READ_BYTES
from obrolan.server.config import ServerConfig
from obrolan.server.rate_limit import Buckets, refuse_if_limited
from obrolan.server.storage.base import Storage

__all__ = ["UPLOAD_WINDOW_SECONDS", "add_routes"]

_logger = logging.getLogger(__name__)

UPLOAD_WINDOW_SECONDS = 24 * 3600
"""An upload not complete this long after its blob was announced is deleted."""
_MAX_JSON_BYTES = 64 * 1024
"""Largest ``POST /v1/blobs`` body (100 recipients take under 10 KiB)."""
_BLOB_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}\Z")
_DECIMAL = re.compile(r"^[0-9]{1,15}\Z")
_RANGE = re.compile(r"^bytes=([0-9]{1,15})-\Z")
# A valid Ed25519 public key whose private key nobody has: an unknown device is checked
# against it, so every authentication failure costs the same work and reads the same.
_DECOY_KEY = "FmiQsd2mZtwvUb3ZPf5EQjNshuWn/Khc96vNeU+pGck"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refusal(
    code: ErrorCode,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    status: int | None = None,
    retry_after_ms: int | None = None,
) -> web.Response:
    if retry_after_ms is not None:
        headers = {**(headers or {}), "Retry-After": str(math.ceil(retry_after_ms / 1000))}
    return web.Response(
        status=status or wire.STATUS.get(code, 400),
        body=wire.encode(wire.HttpError(code=code, message=message, retry_after_ms=retry_after_ms)),
        content_type="application/json",
        headers=headers,
    )


def _answering(handler: Handler) -> Handler:
    """Turn a refusal into its JSON answer, and any other failure into ``internal``."""

    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestRefused as exc:
            return _refusal(exc.code, exc.message, retry_after_ms=exc.retry_after_ms)
        except Exception:
            _logger.exception("a blob request failed")
            return _refusal(ErrorCode.INTERNAL, "internal error")

    return answer


def _blob_id(request: web.Request) -> str:
    blob_id = request.match_info["blob_id"]
    if not _BLOB_ID.match(blob_id):
        raise RequestRefused(ErrorCode.UNKNOWN_BLOB, "no such blob for this device")
    return blob_id


async def _read_json(request: web.Request) -> bytes:
    body = bytearray()
    async for piece in request.content.iter_chunked(READ_BYTES):
        body += piece
        if len(body) > _MAX_JSON_BYTES:
            raise RequestRefused(
                ErrorCode.MALFORMED_FRAME, f"the body is over {_MAX_JSON_BYTES} bytes"
            )
    return bytes(body)


class _BlobHandlers:
    """The handlers of one server's blob routes."""

    def __init__(
        self, store: BlobStore, storage: Storage, config: ServerConfig, uploads: Buckets
    ) -> None:
        self._store = store
        self._storage = storage
        self._config = config
        self._uploads = uploads

    async def _authenticate(self, request: web.Request) -> DeviceAddress:
        """The device that signed this request.

        Raises:
            RequestRefused: ``auth_failed`` for missing or malformed headers, a time
                further than CLOCK_SKEW_SECONDS from the server's clock, or a signature
                that does not verify with the named device's key (one answer whether or
                not the account or device exists).
        """
        headers = request.headers
        username = headers.get(wire.HEADER_USER, "")
        device_id = headers.get(wire.HEADER_DEVICE, "")
        signed_at = headers.get(wire.HEADER_TIME, "")
        signature = headers.get(wire.HEADER_SIGNATURE, "")
        try:
            msgspec.convert(username, Username)
            msgspec.convert(device_id, DeviceId)
        except msgspec.ValidationError:
            raise RequestRefused(
                ErrorCode.AUTH_FAILED, "the request is not signed by a device"
            ) from None
        if not _DECIMAL.match(signed_at):
            raise RequestRefused(ErrorCode.AUTH_FAILED, f"{wire.HEADER_TIME} is not a time")
        skew = int(signed_at) - int(time.time())
        if abs(skew) > wire.CLOCK_SKEW_SECONDS:
            raise RequestRefused(
                ErrorCode.AUTH_FAILED,
                f"the request was signed {abs(skew)} seconds "
                f"{'ahead of' if skew > 0 else 'behind'} the server's clock (at most "
                f"{wire.CLOCK_SKEW_SECONDS} are accepted); set this device's clock",
            )
        device = DeviceAddress(username, device_id)
        keys = await self._storage.device_keys(device)
        signed = wire.blob_request_bytes(
            request.method, request.raw_path, int(signed_at), username, device_id
        )
        try:
            verify(keys.ed25519 if keys is not None else _DECOY_KEY, signed, signature)
        except SignatureError:
            raise RequestRefused(ErrorCode.AUTH_FAILED, "authentication failed") from None
        if keys is None:
            raise RequestRefused(ErrorCode.AUTH_FAILED, "authentication failed")
        return device

    async def _check_recipient(self, recipient: wire.BlobRecipient) -> DeviceAddress:
        device = DeviceAddress(recipient.user, recipient.device)
        if await self._storage.device_keys(device) is None:
            if await self._storage.account(recipient.user) is None:
                raise RequestRefused(ErrorCode.UNKNOWN_USER, f"no user {recipient.user}")
            raise RequestRefused(ErrorCode.UNKNOWN_DEVICE, f"unknown device {device}")
        return device

    async def create(self, request: web.Request) -> web.StreamResponse:
        owner = await self._authenticate(request)
        try:
            announced = wire.decode_create_blob(await _read_json(request))
        except RemoteProtocolError as exc:
            raise RequestRefused(ErrorCode.MALFORMED_FRAME, str(exc)) from None
        limit = self._config.max_blob_bytes
        if announced.size < 1:
            raise RequestRefused(ErrorCode.MALFORMED_FRAME, "a blob has at least one byte")
        if announced.size > limit:
            raise RequestRefused(
                ErrorCode.BLOB_TOO_LARGE,
                f"the blob is {announced.size} bytes, this server accepts at most {limit}",
            )
        if not announced.recipients:
            raise RequestRefused(ErrorCode.MALFORMED_FRAME, "a blob needs at least one recipient")
        if len(announced.recipients) > wire.MAX_RECIPIENTS:
            raise RequestRefused(
                ErrorCode.TOO_MANY_ITEMS,
                f"{len(announced.recipients)} recipients, at most {wire.MAX_RECIPIENTS}",
            )
        recipients = frozenset([await self._check_recipient(r) for r in announced.recipients])
        now = int(time.time())
        ttl = self._config.blob_ttl_seconds
        created, expires_at = await self._store.create(
            NewBlob(
                blob_id=announced.blob_id,
                owner=owner,
                size=announced.size,
                recipients=recipients,
                expires_at=now + ttl,
                upload_deadline=now + min(ttl, UPLOAD_WINDOW_SECONDS),
            ),
            self._config.blob_quota_bytes,
        )
        answer = wire.BlobCreated(
            blob_id=announced.blob_id,
            expires_at_day=time.strftime("%Y-%m-%d", time.gmtime(expires_at)),
        )
        return web.Response(
            status=201 if created else 200,
            body=wire.encode(answer),
            content_type="application/json",
        )

    async def offset(self, request: web.Request) -> web.StreamResponse:
        owner = await self._authenticate(request)
        held = await self._store.received(_blob_id(request), owner)
        return web.Response(status=200, headers={wire.HEADER_OFFSET: str(held)})

    async def append(self, request: web.Request) -> web.StreamResponse:
        owner = await self._authenticate(request)
        blob_id = _blob_id(request)
        offset = request.query.get("offset", "")
        if not _DECIMAL.match(offset):
            raise RequestRefused(ErrorCode.MALFORMED_FRAME, "give ?offset= as a whole number")
        self._admit_upload(owner.username)
        try:
            held = await self._store.append(
                blob_id, owner, int(offset), self._charged(owner.username, request.content)
            )
        except RequestRefused as exc:
            if exc.code is not ErrorCode.OFFSET_MISMATCH:
                raise
            held = await self._store.received(blob_id, owner)
            return _refusal(exc.code, exc.message, {wire.HEADER_OFFSET: str(held)})
        except (ConnectionError, aiohttp.ClientPayloadError):
            # The uploader went away mid-body (nobody reads this answer); what arrived is kept.
            _logger.debug("an upload broke off")
            return _refusal(ErrorCode.MALFORMED_FRAME, "the upload broke off")
        return web.Response(status=204, headers={wire.HEADER_OFFSET: str(held)})

    def _admit_upload(self, username: str) -> None:
        """Refuse a ``PUT`` while the account's upload bucket is empty (spec §13.1).

        Raises:
            RequestRefused: ``rate_limited``, with the hint.
        """
        wait = self._uploads.take(username, 1, time.monotonic())
        rate = self._config.rate_limits.blob_bytes_per_second
        refuse_if_limited(wait, f"this account uploaded more than {rate:g} blob bytes a second")

    async def _charged(self, username: str, body: aiohttp.StreamReader) -> AsyncIterator[bytes]:
        """The body in pieces, each charged to the account's upload bucket as it arrives."""
        async for piece in body.iter_chunked(READ_BYTES):
            self._uploads.charge(username, len(piece), time.monotonic())
            yield piece

    async def download(self, request: web.Request) -> web.StreamResponse:
        reader = await self._authenticate(request)
        blob = await self._store.open(_blob_id(request), reader)
        try:
            start = 0
            ranged = _RANGE.match(request.headers.get("Range", ""))
            if ranged:
                start = int(ranged[1])
                if start >= blob.size:
                    return _refusal(
                        ErrorCode.MALFORMED_FRAME,
                        f"the range starts at or past the blob's end ({blob.size} bytes)",
                        {"Content-Range": f"bytes */{blob.size}"},
                        status=416,
                    )
            response = web.StreamResponse(status=206 if ranged else 200)
            response.content_type = "application/octet-stream"
            response.content_length = blob.size - start
            if ranged:
                response.headers["Content-Range"] = f"bytes {start}-{blob.size - 1}/{blob.size}"
            await response.prepare(request)
            with contextlib.suppress(ConnectionError):  # the reader went away; it may resume
                async for piece in blob.chunks(start):
                    await response.write(piece)
                await response.write_eof()
            return response
        finally:
            await blob.close()

    async def fetched(self, request: web.Request) -> web.StreamResponse:
        reader = await self._authenticate(request)
        blob_id = request.match_info["blob_id"]
        if _BLOB_ID.match(blob_id):
            await self._store.fetched(blob_id, reader)
        return web.Response(status=204)

    async def sweeper(self, app: web.Application) -> AsyncIterator[None]:
        """Delete expired blobs every ``sweep_interval`` while the app runs (a cleanup context)."""
        task = asyncio.create_task(self._sweep_forever(), name="obrolan-blob-sweeper")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.sweep_interval)
            try:
                deleted = await self._store.sweep_expired(int(time.time()))
            except Exception:
                _logger.exception("deleting expired blobs failed")
                continue
            if deleted:
                _logger.info("deleted %d expired blobs", deleted)


def add_routes(
    app: web.Application,
    blob_store: BlobStore,
    storage: Storage,
    config: ServerConfig,
    uploads: Buckets,
) -> None:
    """Serve the blob store under ``/v1/blobs`` and sweep it while ``app`` runs.

    ``blob_store`` and ``storage`` must be started before the app serves requests;
    ``uploads`` are the accounts' buckets of blob bytes (the relay's, pruned by it).
    """
    handlers = _BlobHandlers(blob_store, storage, config, uploads)
    one = f"{wire.BLOBS_PATH}/{{blob_id}}"
    app.router.add_post(wire.BLOBS_PATH, _answering(handlers.create))
    app.router.add_route("HEAD", one, _answering(handlers.offset))
    app.router.add_put(one, _answering(handlers.append))
    app.router.add_get(one, _answering(handlers.download), allow_head=False)
    app.router.add_post(f"{one}/fetched", _answering(handlers.fetched))
    app.cleanup_ctx.append(handlers.sweeper)
