"""The device's side of the server's blob store: signed HTTP requests that move sealed blobs.

The server only ever holds ciphertext: :mod:`obrolan.client.attachment_sealing`
seals the file as it is read, a batch at a time, and this module sends what the
server lacks (an interrupted upload resumes at the server's offset, its key kept
in an :class:`~obrolan.client.upload_journal.UploadJournal`), and receives a blob
to disk a piece at a time (a broken-off download resumes from its ``.part`` file).
Requests are signed by the device (docs/protocol.md §16.1)::

    async with BlobClient(address, "alice", "laptop", sign) as blobs:
        attachment = await blobs.upload_file(Path("photo.jpg"), [("bob", "phone")], journal)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp

from obrolan.client.attachment_sealing import (
    CHUNK_BYTES,
    blob_digest,
    blob_size,
    check_shape,
    failed_verification,
    sealed_batches,
)
from obrolan.client.connection import ServerAddress, close_session
from obrolan.client.durable_files import create_private, flush_to_disk, sync_folder
from obrolan.client.ids import new_id
from obrolan.client.thumbnails import describe_file
from obrolan.client.upload_journal import PendingUpload, UploadJournal, upload_fingerprint
from obrolan.crypto.keys import random_key
from obrolan.errors import (
    ConfigError,
    InvalidState,
    ObrolanError,
    RemoteProtocolError,
    RequestRefused,
    ServerUnreachable,
)
from obrolan.failpoints import failpoint
from obrolan.protocol import blobs as wire
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.content import Attachment

__all__ = [
    "REQUEST_TIMEOUT",
    "RETRY_SECONDS",
    "UPLOAD_ATTEMPTS",
    "BlobClient",
    "Progress",
    "Signer",
]

UPLOAD_ATTEMPTS = 3
"""Tries of one upload within a call, each resuming where the server's copy ends."""
RETRY_SECONDS = 1.0
"""Wait before the second try; doubled before each later one."""
REQUEST_TIMEOUT = 60.0
"""Seconds a connection attempt, or a wait for the next bytes, may take."""

_PIECE_BYTES = 256 * 1024
"""Largest piece of a download held in memory."""

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in all) of the blob as it goes up or down."""
Signer = Callable[[bytes], str]
"""The device's Ed25519 signature of some bytes, unpadded base64 (``DeviceIdentity.sign``)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error)
    return str(exc) or type(exc).__name__


class BlobClient:
    """One device's requests to the server's blob store, each signed by the device.

    Use as ``async with BlobClient(address, username, device_id, signer) as blobs``.

    Args:
        address: the server (its TLS settings apply).
        signer: the device's Ed25519 signing function, e.g. ``DeviceIdentity.sign``.
    """

    def __init__(
        self, address: ServerAddress, username: str, device_id: str, signer: Signer
    ) -> None:
        self.address = address
        self.username = username
        self.device_id = device_id
        self._sign = signer
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=REQUEST_TIMEOUT, sock_read=REQUEST_TIMEOUT
            )
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            await close_session(self._http)
            self._http = None

    # --- the public verbs --------------------------------------------------------------

    async def upload_file(
        self,
        path: Path,
        recipients: Iterable[tuple[str, str]],
        journal: UploadJournal,
        progress: Progress | None = None,
    ) -> Attachment:
        """Encrypt ``path`` with a fresh key and upload it for these (username, device id)s.

        An upload of the same unchanged file to the same devices that was interrupted
        (in this call, or by a crash before it) resumes where the server's copy ends.

        Raises:
            ConfigError: no readable file at ``path``, no recipient, or the file changed.
            RequestRefused: ``blob_too_large``, ``quota_exceeded``, ``unknown_user``,
                ``unknown_device``, ``too_many_items``, ``auth_failed``.
            ServerUnreachable: the server could not be reached (the upload can resume).
        """
        try:
            stat = path.stat()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        if not path.is_file():
            raise ConfigError(f"{path} is not a file")
        addressed = sorted(set(recipients))
        if not addressed:
            raise ConfigError("an attachment needs at least one recipient device")
        fingerprint = upload_fingerprint(path, stat.st_size, stat.st_mtime_ns, addressed)
        pending = journal.load(fingerprint)
        if pending is None:
            pending = PendingUpload(new_id(), random_key(), CHUNK_BYTES)
            journal.save(fingerprint, pending)
        mime, thumbnail = await asyncio.to_thread(describe_file, path)
        total = blob_size(stat.st_size, pending.chunk_size)
        await self._create(pending.blob_id, total, addressed)
        digest = await self._upload(path, pending, stat.st_size, total, progress)
        journal.forget(fingerprint)
        return Attachment(
            blob_id=pending.blob_id,
            key=pending.key,
            sha256=digest,
            size=stat.st_size,
            chunk_size=pending.chunk_size,
            name=path.name,
            mime=mime,
            thumbnail=thumbnail,
        )

    async def download(
        self, attachment: Attachment, folder: Path, progress: Progress | None = None
    ) -> Path:
        """Fetch the attachment's blob into ``folder/BLOB_ID``, check it, and tell the server.

        The file is the ciphertext (encrypted at rest): open it with
        :func:`decrypt_attachment`. A download that broke off resumes from the bytes
        already in ``folder/BLOB_ID.part``. Only a blob whose SHA-256 matches the
        attachment's is kept; then the server is told this device has it, and deletes it
        once every device it was addressed to has.

        Raises:
            DecryptionError: the blob is not what the sender uploaded (nothing is kept).
            RequestRefused: ``unknown_blob`` (expired, or already fetched by this device).
            ServerUnreachable: the server could not be reached (the download can resume).
        """
        check_shape(attachment)
        total = blob_size(attachment.size, attachment.chunk_size)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        stored = folder / attachment.blob_id
        if stored.exists():
            await self.mark_fetched(attachment.blob_id)
            return stored
        partial = folder / f"{attachment.blob_id}.part"
        digest, have = await asyncio.to_thread(_resume_point, partial, total)
        if have < total:
            digest, have = await self._receive(
                attachment.blob_id, partial, (digest, have), total, progress
            )
        if have != total or digest.digest() != attachment.sha256:
            partial.unlink(missing_ok=True)
            raise failed_verification(attachment)
        os.replace(partial, stored)
        await asyncio.to_thread(sync_folder, folder)
        await self.mark_fetched(attachment.blob_id)
        return stored

    async def mark_fetched(self, blob_id: str) -> None:
        """Tell the server this device needs the blob no more (fetched, or not wanted).

        Repeating it is harmless.

        Raises:
            ServerUnreachable: the server could not be reached.
        """
        response = await self._call("POST", wire.blob_path(blob_id, fetched=True))
        response.release()

    # --- upload ------------------------------------------------------------------------

    async def _create(self, blob_id: str, size: int, recipients: list[tuple[str, str]]) -> None:
        body = wire.encode(
            wire.CreateBlob(
                blob_id=blob_id,
                size=size,
                recipients=[wire.BlobRecipient(user=u, device=d) for u, d in recipients],
            )
        )
        response = await self._call(
            "POST", wire.BLOBS_PATH, data=body, headers={"Content-Type": "application/json"}
        )
        response.release()

    async def _upload(
        self, path: Path, pending: PendingUpload, size: int, total: int, progress: Progress | None
    ) -> bytes:
        """Send what the server lacks of the blob; returns the whole blob's SHA-256."""
        failures = 0
        while True:
            offset = await self._offset(pending.blob_id)
            if progress is not None:
                progress(offset, total)
            if offset >= total:
                return await asyncio.to_thread(
                    blob_digest, path, pending.key, size, pending.chunk_size
                )
            body = _UploadBody(path, pending, size, offset, total, progress)
            try:
                held = await self._put(pending.blob_id, offset, body)
            except (RequestRefused, ServerUnreachable) as exc:
                body.raise_local_failure()
                retry = isinstance(exc, ServerUnreachable) or exc.code is ErrorCode.OFFSET_MISMATCH
                failures += 1
                if not retry or failures == UPLOAD_ATTEMPTS:
                    raise
                await asyncio.sleep(RETRY_SECONDS * 2 ** (failures - 1))
                continue
            finally:
                body.close()
            body.raise_local_failure()
            if held != total:
                raise RemoteProtocolError(f"the server holds {held} of {total} bytes after upload")
            return body.digest.digest()

    async def _offset(self, blob_id: str) -> int:
        response = await self._call("HEAD", wire.blob_path(blob_id))
        response.release()
        return _offset_header(response)

    async def _put(self, blob_id: str, offset: int, body: _UploadBody) -> int:
        response = await self._call(
            "PUT",
            wire.blob_path(blob_id, offset=offset),
            data=body.stream(),
            headers={"Content-Type": "application/octet-stream"},
        )
        response.release()
        return _offset_header(response)

    # --- download ----------------------------------------------------------------------

    async def _receive(
        self,
        blob_id: str,
        partial: Path,
        resumed: tuple[hashlib._Hash, int],
        total: int,
        progress: Progress | None,
    ) -> tuple[hashlib._Hash, int]:
        """Append the rest of the blob to ``partial``; returns its digest and length then.

        A blob longer than ``total`` counts as ``total + 1`` bytes, so it fails verification.
        """
        digest, have = resumed
        if progress is not None:
            progress(have, total)
        headers = {"Range": f"bytes={have}-"} if have else {}
        response = await self._call("GET", wire.blob_path(blob_id), headers=headers)
        try:
            if have and response.status != 206:
                digest, have = hashlib.sha256(), 0  # the whole blob came back: start again
                if progress is not None:
                    progress(have, total)
            with create_private(partial, exist_ok=True) as file:
                file.truncate(have)
                file.seek(have)
                async for piece in self._pieces(response):
                    if have + len(piece) > total:
                        have = total + 1
                        break
                    await asyncio.to_thread(file.write, piece)
                    digest.update(piece)
                    have += len(piece)
                    if progress is not None:
                        progress(have, total)
                    failpoint("attachments.after_piece")
                await asyncio.to_thread(flush_to_disk, file)
        finally:
            response.release()
        return digest, have

    async def _pieces(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for piece in response.content.iter_chunked(_PIECE_BYTES):
                yield piece
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ServerUnreachable(self.address.url, _describe(exc)) from None

    # --- requests ----------------------------------------------------------------------

    def _signed(self, method: str, path: str) -> dict[str, str]:
        now = int(time.time())
        signature = self._sign(
            wire.blob_request_bytes(method, path, now, self.username, self.device_id)
        )
        return {
            wire.HEADER_USER: self.username,
            wire.HEADER_DEVICE: self.device_id,
            wire.HEADER_TIME: str(now),
            wire.HEADER_SIGNATURE: signature,
        }

    async def _call(
        self,
        method: str,
        path: str,
        *,
        data: bytes | AsyncIterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one signed request; returns the response of a success (release it).

        Raises:
            RequestRefused: the server refused, with its code.
            ServerUnreachable: no answer, or an answer that is not the blob store's.
        """
        if self._http is None:
            raise InvalidState("use BlobClient as `async with BlobClient(...) as blobs`")
        try:
            response = await self._http.request(
                method,
                self.address.url + path,
                data=data,
                headers={**self._signed(method, path), **(headers or {})},
                ssl=self.address.ssl,
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            reason = f"certificate not trusted ({exc.certificate_error})"
            raise ServerUnreachable(self.address.url, reason) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ServerUnreachable(self.address.url, _describe(exc)) from None
        if response.status < 400:
            return response
        try:
            raise await self._refusal(response)
        finally:
            response.release()

    async def _refusal(self, response: aiohttp.ClientResponse) -> ObrolanError:
        try:
            body = await response.read()
            error = wire.decode_http_error(body)
        except (aiohttp.ClientError, OSError, TimeoutError, RemoteProtocolError):
            # No JSON (a HEAD answer, or not the blob store): the status says enough.
            by_status = {401: ErrorCode.AUTH_FAILED, 404: ErrorCode.UNKNOWN_BLOB}
            code = by_status.get(response.status)
            if code is None:
                reason = f"the server answered HTTP {response.status}"
                return ServerUnreachable(self.address.url, reason)
            return RequestRefused(code)
        return RequestRefused(error.code, error.message, retry_after_ms=error.retry_after_ms)


def _offset_header(response: aiohttp.ClientResponse) -> int:
    value = response.headers.get(wire.HEADER_OFFSET, "")
    if not value.isdigit():
        raise RemoteProtocolError(f"the server's answer has no {wire.HEADER_OFFSET}")
    return int(value)


def _resume_point(partial: Path, total: int) -> tuple[hashlib._Hash, int]:
    """The SHA-256 state over the bytes already downloaded, and their count."""
    digest = hashlib.sha256()
    try:
        with partial.open("rb") as file:
            have = 0
            while have < total and (piece := file.read(_PIECE_BYTES)):
                piece = piece[: total - have]
                digest.update(piece)
                have += len(piece)
    except FileNotFoundError:
        return digest, 0
    return digest, have


class _UploadBody:
    """The request body of one upload attempt: the blob past ``offset``, sealed as it goes.

    The whole blob is sealed and hashed (the digest covers what the server already
    holds), but only the bytes past ``offset`` are sent. A failure on this side (the
    file changed or cannot be read) ends the body and is raised by
    :meth:`raise_local_failure` rather than passing through the HTTP library.
    """

    def __init__(
        self,
        path: Path,
        pending: PendingUpload,
        size: int,
        offset: int,
        total: int,
        progress: Progress | None,
    ) -> None:
        self.digest = hashlib.sha256()
        self._batches = sealed_batches(path, pending.key, size, pending.chunk_size)
        # One thread of its own, so that close() runs after a batch still being sealed
        # when the request was abandoned (a generator cannot close while it runs).
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "obrolan-seal")
        self._offset = offset
        self._total = total
        self._progress = progress
        self._failure: ObrolanError | OSError | None = None

    async def stream(self) -> AsyncIterator[bytes]:
        position = 0
        while True:
            try:
                batch = await asyncio.get_running_loop().run_in_executor(
                    self._thread, next, self._batches, None
                )
            except (ObrolanError, OSError) as exc:
                self._failure = exc
                return
            if batch is None:
                return
            self.digest.update(batch)
            end = position + len(batch)
            if end > self._offset:
                yield batch[max(0, self._offset - position) :]
                failpoint("attachments.after_batch")
                if self._progress is not None:
                    self._progress(end, self._total)
            position = end

    def raise_local_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def close(self) -> None:
        self._thread.submit(self._batches.close)
        self._thread.shutdown(wait=False)
