"""The archive file (docs/protocol.md §21.2): its header, its sealed chunks and its records.

File format, version 1 (integers big-endian)::

    "OBROLAN-ARCHIVE"   15 bytes, the magic
    version             1 byte (1)
    header length       2 bytes
    header              JSON {"kdf": Argon2id parameters with a fresh salt, "check": 16 bytes}
    chunk …             flags (1 byte, 1 = the final chunk), length (4 bytes), ciphertext

``master = Argon2id(passphrase, kdf)``; the chunks are one
:mod:`~obrolan.crypto.chunked_aead` stream under ``HKDF(master, "archive")`` whose
context is SHA-256(magic … header), so a chunk that is altered, moved, dropped, or
taken from another archive fails to authenticate, and a file cut short lacks its
final chunk. ``check`` is ``HKDF(master, "archive-check")``: a wrong passphrase is
told apart from damage. A chunk's plaintext is a run of records, each a 4-byte
length and a msgpack record: the manifest first, then contacts, conversations,
messages (each with its edits and reactions) and file parts, and ``end`` last in
the final chunk. What the records mean to a profile is in
:mod:`~obrolan.client.archive_export` and :mod:`~obrolan.client.archive_import`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import msgspec
from sqlcipher3 import dbapi2

from obrolan.crypto.chunked_aead import ChunkOpener, ChunkSealer
from obrolan.crypto.keys import Argon2Params, derive_key, subkey
from obrolan.errors import CryptoError, DecryptionError, StorageError
from obrolan.protocol.decoding import DECODE_ERRORS

__all__ = [
    "ARCHIVED_TABLES",
    "ATTACHMENTS_FOLDER",
    "BLOB_NAME",
    "CHUNK_BYTES",
    "FILE_PART_BYTES",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_CHUNK_BYTES",
    "PROGRESS_EVERY",
    "End",
    "FilePart",
    "Manifest",
    "MessageRecord",
    "Progress",
    "Record",
    "RecordWriter",
    "Rows",
    "quoted_names",
    "read_archive",
    "table_columns",
]

MAGIC = b"OBROLAN-ARCHIVE"
FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20
"""Plaintext gathered before a chunk is sealed: memory stays flat at any history size."""
MAX_CHUNK_BYTES = 64 << 20
"""Largest chunk a reader accepts (a damaged length must not make it allocate gigabytes)."""
FILE_PART_BYTES = 256 << 10
"""Attachment files travel in parts of at most this size."""
ARCHIVED_TABLES = ("contacts", "conversations", "messages", "edits", "reactions")
"""The store's tables an archive carries rows of, as its manifest names them."""
ATTACHMENTS_FOLDER = "attachments"
"""The profile's folder of attachment files (named by blob id) that archives carry."""
PROGRESS_EVERY = 1000
"""Items (messages or files) between two progress reports, in export and import."""
BLOB_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
"""An attachment file's name (its blob id): nothing that could leave the folder."""

Progress = Callable[[int, int], None]
"""Called with (items done, items in all), items being messages and attachment files."""

_FINAL = 1
_HEADER_MAX = 4096
_CHECK_BYTES = 16
_LENGTH_BYTES = 4


class _Header(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kdf: Argon2Params
    check: Annotated[bytes, msgspec.Meta(min_length=_CHECK_BYTES, max_length=_CHECK_BYTES)]


class Manifest(msgspec.Struct, frozen=True, tag="manifest", array_like=True):
    """The first record: whose history, from which store, and how much of it."""

    owner: str | None
    """The username of the exporting profile."""
    exported_at_ms: int
    schema_version: int
    software: str
    messages: int
    files: int
    columns: dict[str, list[str]]
    """Each table's archived columns, in the order the rows give them."""


class Rows(msgspec.Struct, frozen=True, tag="rows", array_like=True):
    """Rows of ``contacts`` or ``conversations``."""

    table: str
    rows: list[list[Any]]


class MessageRecord(msgspec.Struct, frozen=True, tag="message", array_like=True):
    """One message's row, with the rows of its edits and reactions."""

    row: list[Any]
    edits: list[list[Any]]
    reactions: list[list[Any]]


class FilePart(msgspec.Struct, frozen=True, tag="file", array_like=True):
    """A part of an attachment file; a file's parts follow one another."""

    name: str
    data: bytes
    last: bool


class End(msgspec.Struct, frozen=True, tag="end", array_like=True):
    """The last record: what the archive holds, so that a reader can tell it is whole."""

    messages: int
    files: int


Record = Manifest | Rows | MessageRecord | FilePart | End
_encode = msgspec.msgpack.Encoder().encode
_record_decoder: msgspec.msgpack.Decoder[Record] = msgspec.msgpack.Decoder(Record)


# --- writing ------------------------------------------------------------------------------


class RecordWriter:
    """Writes an archive to ``file``: the header, then records gathered into sealed chunks.

    Each chunk holds about :data:`CHUNK_BYTES` of records; :meth:`close` seals the
    rest as the final chunk (the last record must be :class:`End`).

    Args:
        file: where the archive goes, from its first byte.
        passphrase: derives the archive's key (Argon2id with a fresh salt).
    """

    def __init__(self, file: BinaryIO, passphrase: str) -> None:
        kdf = Argon2Params.new()
        master = derive_key(passphrase, kdf)
        header = _header_bytes(_Header(kdf=kdf, check=_check_value(master)))
        file.write(header)
        self._file = file
        self._sealer = ChunkSealer(subkey(master, "archive"), hashlib.sha256(header).digest())
        self._pending: list[bytes] = []
        self._size = 0

    def add(self, record: Record) -> None:
        encoded = _encode(record)
        self._pending += (len(encoded).to_bytes(_LENGTH_BYTES, "big"), encoded)
        self._size += _LENGTH_BYTES + len(encoded)
        if self._size >= CHUNK_BYTES:
            self._seal(final=False)

    def close(self) -> None:
        """Seal what is left as the final chunk."""
        self._seal(final=True)

    def _seal(self, *, final: bool) -> None:
        sealed = self._sealer.seal(b"".join(self._pending), final=final)
        flags = _FINAL if final else 0
        self._file.write(bytes([flags]) + len(sealed).to_bytes(_LENGTH_BYTES, "big"))
        self._file.write(sealed)
        self._pending = []
        self._size = 0


def _header_bytes(header: _Header) -> bytes:
    body = msgspec.json.encode(header)
    return MAGIC + bytes([FORMAT_VERSION]) + len(body).to_bytes(2, "big") + body


def _check_value(master: bytes) -> bytes:
    return subkey(master, "archive-check")[:_CHECK_BYTES]


# --- reading ------------------------------------------------------------------------------


def read_archive(file: BinaryIO, path: Path, passphrase: str) -> Iterator[Record]:
    """Check the header and passphrase, then yield the records of each authenticated chunk.

    The first record is the manifest, the last one ``end``, in the final chunk,
    followed by nothing; anything else raises.

    Raises:
        StorageError: not an archive, an unknown format, or a damaged header or record.
        DecryptionError: wrong passphrase, or a chunk is altered, missing or cut short.
    """
    magic = file.read(len(MAGIC) + 3)
    if len(magic) < len(MAGIC) + 3 or not magic.startswith(MAGIC):
        raise StorageError(f"{path} is not an obrolan archive")
    if magic[len(MAGIC)] != FORMAT_VERSION:
        raise StorageError(
            f"{path} is an obrolan archive of format {magic[len(MAGIC)]}; this obrolan reads "
            f"format {FORMAT_VERSION}: update obrolan"
        )
    length = int.from_bytes(magic[-2:], "big")
    body = file.read(length)
    if length > _HEADER_MAX or len(body) < length:
        raise StorageError(f"{path} is damaged: its header is cut short or too long")
    try:
        header = msgspec.json.decode(body, type=_Header)
    except DECODE_ERRORS as exc:  # a header that is not UTF-8 too: an archive is foreign bytes
        raise StorageError(f"{path} is damaged: its header is invalid ({exc})") from None
    try:
        master = derive_key(passphrase, header.kdf)
    except CryptoError:
        raise StorageError(f"{path} is damaged: its key parameters are invalid") from None
    if not secrets.compare_digest(_check_value(master), header.check):
        raise DecryptionError(
            f"wrong passphrase for the archive {path} (or its header was altered)"
        )
    opener = ChunkOpener(subkey(master, "archive"), hashlib.sha256(magic + body).digest())
    return _records(file, path, opener)


def _records(file: BinaryIO, path: Path, opener: ChunkOpener) -> Iterator[Record]:
    while True:
        index = opener.index
        frame = file.read(1 + _LENGTH_BYTES)
        if len(frame) < 1 + _LENGTH_BYTES:
            raise DecryptionError(f"{path} is truncated: it ends before its final part")
        flags, length = frame[0], int.from_bytes(frame[1:], "big")
        if flags not in (0, _FINAL) or length > MAX_CHUNK_BYTES:
            raise DecryptionError(f"{path} is damaged or was altered at part {index}")
        sealed = file.read(length)
        if len(sealed) < length:
            raise DecryptionError(f"{path} is truncated: it ends inside part {index}")
        final = flags == _FINAL
        try:
            plain = opener.open(sealed, final=final)
        except DecryptionError:
            raise DecryptionError(
                f"{path} is damaged or was altered: part {index} does not authenticate"
            ) from None
        records = _parse_chunk(plain, path)
        for position, record in enumerate(records):
            first = index == 0 and position == 0
            last = final and position == len(records) - 1
            if isinstance(record, Manifest) != first or isinstance(record, End) != last:
                raise StorageError(f"{path} is damaged: its records are out of order")
            yield record
        if final:
            if file.read(1):
                raise DecryptionError(f"{path} has data after its end: it was altered")
            return


def _parse_chunk(plain: bytes, path: Path) -> list[Record]:
    records = []
    view = memoryview(plain)
    offset = 0
    try:
        while offset < len(view):
            length = int.from_bytes(view[offset : offset + _LENGTH_BYTES], "big")
            start = offset + _LENGTH_BYTES
            if start + length > len(view):
                raise StorageError(f"{path} is damaged: a record is cut short")
            records.append(_record_decoder.decode(view[start : start + length]))
            offset = start + length
    except DECODE_ERRORS as exc:
        raise StorageError(f"{path} is damaged: {exc}") from None
    if not records:
        raise StorageError(f"{path} is damaged: a part holds no records")
    return records


# --- the store's tables -------------------------------------------------------------------


def table_columns(db: dbapi2.Connection, table: str, *, skip: str | None = None) -> list[str]:
    """The columns of ``table`` in this store, in their order (without ``skip``)."""
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})") if row[1] != skip]


def quoted_names(columns: list[str]) -> str:
    """Column names for an SQL statement: quoted, comma-separated."""
    return ", ".join(f'"{name}"' for name in columns)
