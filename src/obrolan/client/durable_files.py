"""Files that survive a crash and that only their owner can read.

The profile's files (the store's key, profile.json, upload records, attachments,
archives) are written the same few ways: created 0600 from the first byte, written
beside their final name and renamed into place, and made durable with an fsync of
the file and then of its folder, since a rename is only durable once the folder's
entry is::

    write_atomically(profile / "uploads" / "1f2e.json", b"{...}")
    with create_private(hidden_sibling(out, ".part")) as file:
        file.write(data)
        flush_to_disk(file)
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "create_private",
    "flush_to_disk",
    "hidden_sibling",
    "place_new",
    "sync_folder",
    "write_atomically",
]


def sync_folder(folder: Path) -> None:
    """Make the names just created, renamed or removed in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flush_to_disk(file: BinaryIO) -> None:
    """Push what was written to ``file`` through Python's buffer and the OS's to the disk."""
    file.flush()
    os.fsync(file.fileno())


def create_private(path: Path, *, exist_ok: bool = False) -> BinaryIO:
    """Open ``path`` for writing, created with mode 0600 (never readable by others).

    Args:
        exist_ok: open an existing file instead of failing, keeping its bytes (a
            resumed download truncates and seeks itself).

    Raises:
        FileExistsError: ``path`` exists and ``exist_ok`` is false.
        OSError: it cannot be created.
    """
    flags = os.O_WRONLY | os.O_CREAT | (0 if exist_ok else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    return open(fd, "wb")  # the caller closes it


def hidden_sibling(path: Path, suffix: str) -> Path:
    """A fresh hidden name beside ``path`` for the file that will become it."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with a 0600 file of ``data``, all or nothing, durably.

    A crash leaves either the old file or the new one at ``path``, never a part.

    Raises:
        OSError: the file cannot be written.
    """
    staging = hidden_sibling(path, ".tmp")
    try:
        with create_private(staging) as file:
            file.write(data)
            flush_to_disk(file)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def place_new(source: Path, target: Path) -> bool:
    """Give ``source`` the name ``target`` unless that exists; False if it does.

    The caller syncs ``target``'s folder (once, after placing several).
    """
    try:
        os.link(source, target)  # atomic: fails if ``target`` appeared meanwhile
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links (FAT on a USB stick)
        if target.exists():
            return False
        os.rename(source, target)
    return True
