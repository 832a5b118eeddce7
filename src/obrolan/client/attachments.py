"""Encrypted attachments: seal a file for the server's blob store, upload it, fetch and open it.

The server only ever holds ciphertext; the key and the digest travel inside the
end-to-end encrypted message, as a :class:`~obrolan.protocol.content.Attachment`
(docs/protocol.md, "Blob store" and §15.7)::

    journal = FileUploadJournal(profile / "uploads")
    async with BlobClient(address, "alice", "laptop", sign) as blobs:
        attachment = await blobs.upload_file(Path("photo.jpg"), [("bob", "phone")], journal)
    # ... alice sends `attachment` inside a text message; bob's device then runs:
    async with BlobClient(address, "bob", "phone", sign) as blobs:
        stored = await blobs.download(attachment, profile / "attachments")
    decrypt_attachment(stored, attachment, Path("photo.jpg"))

Blob format: the file is cut into chunks of ``chunk_size`` plaintext bytes (the last
may be shorter; an empty file is one empty chunk). Chunk ``i`` is sealed with
AES-256-GCM under a fresh 32-byte key, nonce ``i`` as 12 big-endian bytes, and
associated data ``"obrolan-attachment-v1" || i as 8 big-endian bytes || final`` (one
byte, 1 for the last chunk), so chunks cannot be reordered, dropped or cut off. The
blob is the sealed chunks one after the other; ``sha256`` is its SHA-256.

Memory stays flat at any file size: the file is read, sealed, hashed and sent a batch
of chunks at a time, and received to disk a piece at a time. Sealing is deterministic
for a given key, so an interrupted upload resumes by sealing the file again and
sending only the bytes past the server's offset; the key and blob id wait in an
:class:`UploadJournal` meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import mimetypes
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import aiohttp
import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from PIL import Image

from obrolan.client.connection import ServerAddress, close_session
from obrolan.client.ids import new_id
from obrolan.errors import (
    ConfigError,
    DecryptionError,
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
    "CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "TAG_BYTES",
    "THUMBNAIL_EDGE",
    "THUMBNAIL_MAX_BYTES",
    "BlobClient",
    "FileUploadJournal",
    "PendingUpload",
    "Progress",
    "Signer",
    "UploadJournal",
    "blob_size",
    "decrypt_attachment",
    "describe_file",
]

CHUNK_BYTES = 64 * 1024
"""Plaintext bytes per sealed chunk of the attachments this client sends."""
MAX_CHUNK_BYTES = 4 * 1024 * 1024
"""Largest ``chunk_size`` this client opens (a hostile value must not make it allocate much)."""
TAG_BYTES = 16
"""AES-GCM's tag: each sealed chunk is this much longer than its plaintext."""
THUMBNAIL_EDGE = 128
"""An image's thumbnail fits in a square of this many pixels."""
THUMBNAIL_MAX_BYTES = 8 * 1024
"""Largest thumbnail (JPEG) carried in a message; a larger one is left out."""
UPLOAD_ATTEMPTS = 3
"""Tries of one upload within a call, each resuming where the server's copy ends."""
RETRY_SECONDS = 1.0
"""Wait before the second try; doubled before each later one."""
REQUEST_TIMEOUT = 60.0
"""Seconds a connection attempt, or a wait for the next bytes, may take."""

_LABEL = b"obrolan-attachment-v1"
_MAX_THUMBNAIL_SOURCE_PIXELS = 24_000_000
"""Largest image (after JPEG's reduced decoding) that gets a thumbnail: ~100 MB decoded."""
_NOT_AN_IMAGE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
"""What Pillow raises for a file it cannot read as an image (or one too large to decode)."""
_BATCH_BYTES = 1024 * 1024
"""Plaintext sealed (and sent) per step; bounds the memory of an upload."""
_PIECE_BYTES = 256 * 1024
"""Largest piece of a download held in memory."""

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in all) of the blob as it goes up or down."""
Signer = Callable[[bytes], str]
"""The device's Ed25519 signature of some bytes, unpadded base64 (``DeviceIdentity.sign``)."""


# --- the blob format ---------------------------------------------------------------------


def _chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def blob_size(size: int, chunk_size: int) -> int:
    """The size of the blob that a file of ``size`` bytes seals into."""
    return size + _chunk_count(size, chunk_size) * TAG_BYTES


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _associated_data(index: int, final: bool) -> bytes:
    return _LABEL + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def _sealed_batches(
    path: Path, key: bytes, size: int, chunk_size: int
) -> Generator[bytes, None, None]:
    """The blob of ``path``, about :data:`_BATCH_BYTES` at a time.

    Raises:
        ConfigError: the file changed size while it was read.
    """
    aes = AESGCM(key)
    count = _chunk_count(size, chunk_size)
    batch = bytearray()
    with path.open("rb") as file:
        for index in range(count):
            final = index == count - 1
            length = size - chunk_size * index if final else chunk_size
            plain = file.read(length)
            if len(plain) != length or (final and file.read(1)):
                raise ConfigError(f"{path} changed while it was being sent; send it again")
            batch += aes.encrypt(_nonce(index), plain, _associated_data(index, final))
            if len(batch) >= _BATCH_BYTES or final:
                yield bytes(batch)
                batch.clear()


def _blob_digest(path: Path, key: bytes, size: int, chunk_size: int) -> bytes:
    digest = hashlib.sha256()
    for batch in _sealed_batches(path, key, size, chunk_size):
        digest.update(batch)
    return digest.digest()


def _check_shape(attachment: Attachment) -> None:
    if not (
        len(attachment.key) == 32
        and 1 <= attachment.chunk_size <= MAX_CHUNK_BYTES
        and attachment.size >= 0
        and len(attachment.sha256) == 32
    ):
        raise DecryptionError(
            f"attachment {attachment.name!r} cannot be opened: its key, digest, size or "
            f"chunk size is malformed"
        )


def _failed_verification(attachment: Attachment) -> DecryptionError:
    return DecryptionError(
        f"attachment {attachment.name!r} failed verification: it is not what the sender "
        f"uploaded (altered or damaged), so it was not saved"
    )


def decrypt_attachment(
    ciphertext_path: Path, attachment: Attachment, out_path: Path, *, overwrite: bool = False
) -> None:
    """Decrypt a downloaded blob into ``out_path``, a chunk at a time.

    Nothing appears at ``out_path`` unless every chunk authenticates: the plaintext
    goes to a hidden file beside it, which replaces ``out_path`` only at the end.

    Raises:
        ConfigError: ``out_path`` exists and ``overwrite`` is False.
        DecryptionError: the blob is altered, cut short or too long, or the attachment
            record is malformed.
        OSError: the blob cannot be read or the output cannot be written.
    """
    _check_shape(attachment)
    if out_path.exists() and not overwrite:
        raise ConfigError(f"{out_path} already exists; choose another name, or replace it")
    count = _chunk_count(attachment.size, attachment.chunk_size)
    if ciphertext_path.stat().st_size != blob_size(attachment.size, attachment.chunk_size):
        raise _failed_verification(attachment)
    aes = AESGCM(attachment.key)
    staging = out_path.with_name(f".{out_path.name}.{secrets.token_hex(4)}.part")
    try:
        with ciphertext_path.open("rb") as source, staging.open("xb") as target:
            for index in range(count):
                final = index == count - 1
                plain = attachment.size - attachment.chunk_size * index if final else (
                    attachment.chunk_size
                )
                sealed = source.read(plain + TAG_BYTES)
                try:
                    target.write(aes.decrypt(_nonce(index), sealed, _associated_data(index, final)))
                except InvalidTag:
                    raise _failed_verification(attachment) from None
            target.flush()
            os.fsync(target.fileno())
        os.replace(staging, out_path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def describe_file(path: Path) -> tuple[str, bytes | None]:
    """The file's media type, and for an image a JPEG thumbnail (None if it is not one).

    The thumbnail fits in :data:`THUMBNAIL_EDGE` pixels square and
    :data:`THUMBNAIL_MAX_BYTES`; an image whose thumbnail cannot be that small gets none.
    """
    guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        with Image.open(path) as image:
            mime = image.get_format_mimetype() or guessed
            image.draft("RGB", (THUMBNAIL_EDGE * 2, THUMBNAIL_EDGE * 2))  # JPEG: decode small
            if image.width * image.height > _MAX_THUMBNAIL_SOURCE_PIXELS:
                return mime, None  # decoding it would take hundreds of megabytes
            image.thumbnail((THUMBNAIL_EDGE, THUMBNAIL_EDGE))
            preview = image.convert("RGB")
    except _NOT_AN_IMAGE:
        return guessed, None
    for quality in (80, 65, 50, 35, 20):
        jpeg = io.BytesIO()
        preview.save(jpeg, "JPEG", quality=quality, optimize=True)
        if jpeg.tell() <= THUMBNAIL_MAX_BYTES:
            return mime, jpeg.getvalue()
    return mime, None


# --- resuming uploads ----------------------------------------------------------------------


class PendingUpload(msgspec.Struct, frozen=True):
    """What an interrupted upload needs to resume: its blob id and key."""

    blob_id: str
    key: bytes
    chunk_size: int


class UploadJournal(Protocol):
    """Where unfinished uploads wait, by a fingerprint of the file and its recipients.

    A record holds the attachment's key: keep it as safe as the file it encrypts.
    """

    def load(self, fingerprint: str) -> PendingUpload | None:
        """The unfinished upload of this fingerprint, if any."""

    def save(self, fingerprint: str, pending: PendingUpload) -> None:
        """Remember an upload durably before its first byte is sent."""

    def forget(self, fingerprint: str) -> None:
        """Drop a finished upload's record (a no-op if there is none)."""


class FileUploadJournal:
    """An :class:`UploadJournal` of small 0600 JSON files in one folder (``PROFILE/uploads``).

    A record lives only while its upload is unfinished. It holds the key of a file that
    lies unencrypted on the same disk, so it exposes nothing a reader of the disk could
    not read already.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, fingerprint: str) -> Path:
        return self.folder / f"{fingerprint}.json"

    def load(self, fingerprint: str) -> PendingUpload | None:
        try:
            return msgspec.json.decode(self._path(fingerprint).read_bytes(), type=PendingUpload)
        except FileNotFoundError:
            return None
        except msgspec.DecodeError:
            return None  # a damaged record: the upload starts afresh

    def save(self, fingerprint: str, pending: PendingUpload) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = self.folder / f".{fingerprint}.{secrets.token_hex(4)}"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(msgspec.json.encode(pending))
                file.flush()
                os.fsync(file.fileno())
            os.replace(staging, self._path(fingerprint))
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        _sync_folder(self.folder)

    def forget(self, fingerprint: str) -> None:
        self._path(fingerprint).unlink(missing_ok=True)


def _fingerprint(path: Path, size: int, mtime_ns: int, recipients: list[tuple[str, str]]) -> str:
    """Names one upload: the same file, unchanged, to the same devices."""
    parts = [str(path.resolve()), str(size), str(mtime_ns), *(f"{u}/{d}" for u, d in recipients)]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- talking to the blob store ---------------------------------------------------------------


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
        fingerprint = _fingerprint(path, stat.st_size, stat.st_mtime_ns, addressed)
        pending = journal.load(fingerprint)
        if pending is None:
            pending = PendingUpload(new_id(), AESGCM.generate_key(bit_length=256), CHUNK_BYTES)
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
        _check_shape(attachment)
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
            raise _failed_verification(attachment)
        os.replace(partial, stored)
        await asyncio.to_thread(_sync_folder, folder)
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
                    _blob_digest, path, pending.key, size, pending.chunk_size
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
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as file:
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
                file.flush()
                await asyncio.to_thread(os.fsync, file.fileno())
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
        except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError):
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
        self._batches = _sealed_batches(path, pending.key, size, pending.chunk_size)
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
