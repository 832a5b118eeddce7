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
from obrolan.server.config import DATABASE_NAME
from obrolan.server.storage.base import Storage
from obrolan.server.storage.sqlite import SqliteStorage

__all__ = ["disclose", "stats"]

T = TypeVar("T")


def disclose(data_dir: Path, username: str) -> dict[str, Any]:
    """Everything the server holds about ``username``, never ciphertext.

    See :meth:`obrolan.server.storage.Storage.disclose` for the keys.

    Raises:
        UnknownContact: no account has this username.
        ConfigError: ``data_dir`` holds no server database.
    """
    return _read(data_dir, lambda storage: storage.disclose(username))


def stats(data_dir: Path) -> dict[str, int]:
    """Counts of accounts, devices, one-time keys, queued envelopes and their bytes.

    Raises:
        ConfigError: ``data_dir`` holds no server database.
    """
    return _read(data_dir, lambda storage: storage.stats())


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
