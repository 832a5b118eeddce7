"""What ``obrolan admin`` prints: everything held about an account, and counts.

Both read the server's database read-only, so they work while the server runs
(SQLite WAL lets readers in beside the writer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from obrolan.errors import ConfigError
from obrolan.server.blobs.filesystem import BLOBS_DATABASE_NAME, FilesystemBlobStore
from obrolan.server.config import DATABASE_NAME
from obrolan.server.storage.base import Storage
from obrolan.server.storage.sqlite import SqliteStorage

__all__ = ["disclose", "stats"]

T = TypeVar("T")


def disclose(data_dir: Path, username: str) -> dict[str, Any]:
    """Everything the server holds about ``username``, never ciphertext.

    See :meth:`obrolan.server.storage.Storage.disclose` for the keys, and
    :meth:`obrolan.server.blobs.BlobStore.disclose` for the blobs' keys added to them.

    Raises:
        UnknownContact: no account has this username.
        ConfigError: ``data_dir`` holds no server database.
    """
    held = _read(data_dir, lambda storage: storage.disclose(username))
    no_blobs: dict[str, Any] = {"blobs_from_account": [], "blobs_for_account": []}
    return {**held, **_read_blobs(data_dir, lambda blobs: blobs.disclose(username), no_blobs)}


def stats(data_dir: Path) -> dict[str, int]:
    """Counts of accounts, devices, one-time keys, queued envelopes and their bytes,
    and of blobs and their bytes.

    Raises:
        ConfigError: ``data_dir`` holds no server database.
    """
    counts = _read(data_dir, lambda storage: storage.stats())
    no_blobs = {"blobs": 0, "blob_bytes": 0}
    return {**counts, **_read_blobs(data_dir, lambda blobs: blobs.stats(), no_blobs)}


def _read(data_dir: Path, query: Callable[[Storage], Awaitable[T]]) -> T:
    database = data_dir / DATABASE_NAME
    if not database.is_file():
        raise ConfigError(
            f"no obrolan server database in {data_dir}; pass the server's --data directory"
        )

    async def read() -> T:
        storage = SqliteStorage(database, read_only=True)
        await storage.start()
        try:
            return await query(storage)
        finally:
            await storage.close()

    return asyncio.run(read())


def _read_blobs(
    data_dir: Path, query: Callable[[FilesystemBlobStore], Awaitable[T]], nothing: T
) -> T:
    """Read the blob store; ``nothing`` when the server never ran with one."""
    if not (data_dir / BLOBS_DATABASE_NAME).is_file():
        return nothing

    async def read() -> T:
        blobs = FilesystemBlobStore(data_dir, read_only=True)
        await blobs.start()
        try:
            return await query(blobs)
        finally:
            await blobs.close()

    return asyncio.run(read())
