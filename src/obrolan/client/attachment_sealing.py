"""The attachment blob: a file sealed in chunks, and opened again (docs/protocol.md §16.11).

The file is cut into chunks of ``chunk_size`` plaintext bytes (the last may be
shorter; an empty file is one empty chunk), each sealed as chunk ``i`` of a
:mod:`~obrolan.crypto.chunked_aead` stream under a fresh 32-byte key with the
context ``"obrolan-attachment-v1"``. The blob is the sealed chunks one after the
other; ``sha256`` is its SHA-256. No networking here: :mod:`obrolan.client.blob_client`
moves blobs, this module makes and opens them, a batch of chunks at a time so that
memory stays flat at any file size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Generator
from pathlib import Path

from obrolan.client.durable_files import flush_to_disk, hidden_sibling
from obrolan.crypto.chunked_aead import TAG_BYTES, ChunkOpener, ChunkSealer
from obrolan.errors import ConfigError, DecryptionError
from obrolan.protocol.content import Attachment

__all__ = [
    "CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "TAG_BYTES",
    "blob_digest",
    "blob_size",
    "check_shape",
    "decrypt_attachment",
    "failed_verification",
    "sealed_batches",
]

CHUNK_BYTES = 64 * 1024
"""Plaintext bytes per sealed chunk of the attachments this client sends."""
MAX_CHUNK_BYTES = 4 * 1024 * 1024
"""Largest ``chunk_size`` this client opens (a hostile value must not make it allocate much)."""

_CONTEXT = b"obrolan-attachment-v1"
_BATCH_BYTES = 1024 * 1024
"""Plaintext sealed (and sent) per step; bounds the memory of an upload."""


def _chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def blob_size(size: int, chunk_size: int) -> int:
    """The size of the blob that a file of ``size`` bytes seals into."""
    return size + _chunk_count(size, chunk_size) * TAG_BYTES


def sealed_batches(
    path: Path, key: bytes, size: int, chunk_size: int
) -> Generator[bytes, None, None]:
    """The blob of ``path``, about a megabyte at a time.

    Raises:
        ConfigError: the file changed size while it was read.
    """
    sealer = ChunkSealer(key, _CONTEXT)
    count = _chunk_count(size, chunk_size)
    batch = bytearray()
    with path.open("rb") as file:
        for index in range(count):
            final = index == count - 1
            length = size - chunk_size * index if final else chunk_size
            plain = file.read(length)
            if len(plain) != length or (final and file.read(1)):
                raise ConfigError(f"{path} changed while it was being sent; send it again")
            batch += sealer.seal(plain, final=final)
            if len(batch) >= _BATCH_BYTES or final:
                yield bytes(batch)
                batch.clear()


def blob_digest(path: Path, key: bytes, size: int, chunk_size: int) -> bytes:
    """The SHA-256 of the blob that ``path`` seals into under ``key``."""
    digest = hashlib.sha256()
    for batch in sealed_batches(path, key, size, chunk_size):
        digest.update(batch)
    return digest.digest()


def check_shape(attachment: Attachment) -> None:
    """Refuse an attachment record whose numbers this client will not act on.

    Raises:
        DecryptionError: its key, digest, size or chunk size is malformed.
    """
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


def failed_verification(attachment: Attachment) -> DecryptionError:
    """The error of a blob that is not what the sender uploaded."""
    return DecryptionError(
        f"attachment {attachment.name!r} failed verification: it is not what the sender "
        f"uploaded (altered or damaged), so it was not saved"
    )


def decrypt_attachment(
    ciphertext_path: Path, attachment: Attachment, out_path: Path, *, overwrite: bool = False
) -> None:
    """Decrypt a downloaded blob into ``out_path``, a chunk at a time.

    Nothing appears at ``out_path`` unless every chunk authenticates: the plaintext
    goes to a hidden file beside it, which replaces ``out_path`` only at the end. The
    file gets the user's usual mode (umask): it is theirs, out of the profile.

    Raises:
        ConfigError: ``out_path`` exists and ``overwrite`` is False.
        DecryptionError: the blob is altered, cut short or too long, or the attachment
            record is malformed.
        OSError: the blob cannot be read or the output cannot be written.
    """
    check_shape(attachment)
    if out_path.exists() and not overwrite:
        raise ConfigError(f"{out_path} already exists; choose another name, or replace it")
    count = _chunk_count(attachment.size, attachment.chunk_size)
    if ciphertext_path.stat().st_size != blob_size(attachment.size, attachment.chunk_size):
        raise failed_verification(attachment)
    opener = ChunkOpener(attachment.key, _CONTEXT)
    staging = hidden_sibling(out_path, ".part")
    try:
        with ciphertext_path.open("rb") as source, staging.open("xb") as target:
            for index in range(count):
                final = index == count - 1
                plain = (
                    attachment.size - attachment.chunk_size * index
                    if final
                    else (attachment.chunk_size)
                )
                sealed = source.read(plain + TAG_BYTES)
                try:
                    target.write(opener.open(sealed, final=final))
                except DecryptionError:
                    raise failed_verification(attachment) from None
            flush_to_disk(target)
        os.replace(staging, out_path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
