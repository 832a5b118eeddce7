"""The profile's file helpers on a real file system: modes, atomic replacement, no clobbering."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from obrolan.client.durable_files import (
    create_private,
    flush_to_disk,
    hidden_sibling,
    place_new,
    sync_folder,
    write_atomically,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_durable_files_write_atomically_replaces_with_a_private_file(tmp_path: Path) -> None:
    """The file is replaced whole, is 0600 even where it was not, and nothing is left beside it."""
    target = tmp_path / "profile.json"
    target.write_bytes(b"old")
    target.chmod(0o644)
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["profile.json"]


def test_durable_files_create_private_never_clobbers(tmp_path: Path) -> None:
    """A new file is 0600; an existing one is refused, or kept byte for byte with exist_ok."""
    path = tmp_path / "blob.part"
    with create_private(path) as file:
        file.write(b"first half")
        flush_to_disk(file)
    assert _mode(path) == 0o600
    with pytest.raises(FileExistsError):
        create_private(path)
    with create_private(path, exist_ok=True) as file:
        file.seek(0, 2)
        file.write(b", second half")
    assert path.read_bytes() == b"first half, second half"
    sync_folder(tmp_path)


def test_durable_files_place_new_keeps_what_is_there(tmp_path: Path) -> None:
    """place_new names a file only where nothing is; an existing target is left untouched."""
    source, target = tmp_path / "staged", tmp_path / "final"
    source.write_bytes(b"staged")
    assert place_new(source, target)
    assert target.read_bytes() == b"staged"
    other = tmp_path / "other"
    other.write_bytes(b"other")
    assert not place_new(other, target)
    assert target.read_bytes() == b"staged"


def test_durable_files_hidden_sibling_is_fresh_and_hidden(tmp_path: Path) -> None:
    """Staging names sit beside the target, start with a dot, and differ each time."""
    target = tmp_path / "out.obrolan"
    names = {hidden_sibling(target, ".partial") for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert name.parent == tmp_path and name.name.startswith(".out.obrolan.")
        assert name.name.endswith(".partial")
