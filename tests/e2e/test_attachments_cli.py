"""Files through the real `obrolan` command: send, automatic or explicit download, release."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, wait_until
from tests.support.server import ServerProcess


@pytest.fixture
def two(cli: Cli, profiles) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    alice, bob = profiles("alice"), profiles("bob")
    cli.register("alice", alice, accept=("bob",))
    cli.register("bob", bob, accept=("alice",))
    return alice, bob


def _blobs_on_server(server: ServerProcess) -> list[Path]:
    folder = Path(server.data_dir) / "blobs"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_cli_file_is_fetched_at_once_when_small_and_decrypts_identically(
    server: ServerProcess, cli: Cli, two: tuple[Path, Path], tmp_path: Path
) -> None:
    """A small file rides along with sync; `download` writes the same bytes; the server forgets it."""
    alice, bob = two
    original = tmp_path / "notes.bin"
    original.write_bytes(os.urandom(300_000))
    sent = cli(
        "send", "bob", "here are the notes", "--file", str(original), "--profile", str(alice)
    )
    assert sent.returncode == 0, sent.stderr
    assert len(_blobs_on_server(server)) == 1

    synced = cli("sync", "--profile", str(bob))
    assert "[file notes.bin, 300000 bytes] here are the notes" in synced.stdout
    wait_until(lambda: _blobs_on_server(server) == [])  # bob's only device fetched it

    (message,) = cli("history", "alice", "--json", "--profile", str(bob)).json()
    out = tmp_path / "received.bin"
    got = cli("download", message["message_id"][:8], "--out", str(out), "--profile", str(bob))
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == original.read_bytes()
    again = cli("download", message["message_id"][:8], "--out", str(out), "--profile", str(bob))
    assert again.returncode == 1 and "exists" in again.stderr


def test_cli_large_file_waits_for_download_and_a_delete_releases_it(
    server: ServerProcess, cli: Cli, two: tuple[Path, Path], tmp_path: Path
) -> None:
    """Above the auto-download size a file stays on the server until fetched or deleted."""
    alice, bob = two
    assert cli("settings", "--auto-download", "0", "--profile", str(bob)).returncode == 0
    original = tmp_path / "big.bin"
    original.write_bytes(os.urandom(200_000))
    assert cli("send", "bob", "--file", str(original), "--profile", str(alice)).returncode == 0
    assert cli("sync", "--profile", str(bob)).returncode == 0
    assert len(_blobs_on_server(server)) == 1  # not fetched: over bob's size setting

    (message,) = cli("history", "bob", "--json", "--profile", str(alice)).json()
    assert cli("delete", message["message_id"][:8], "--profile", str(alice)).returncode == 0
    listener = cli("sync", "--profile", str(bob))
    assert listener.returncode == 0
    wait_until(lambda: _blobs_on_server(server) == [])  # bob's client released it
    (gone,) = cli("history", "alice", "--json", "--profile", str(bob)).json()
    assert gone["deleted"] is True and gone["attachment"] is None


def test_cli_send_missing_file_fails_clearly(
    cli: Cli, two: tuple[Path, Path], tmp_path: Path
) -> None:
    """A file that is not there is one line, and nothing is queued."""
    alice, _ = two
    result = cli("send", "bob", "--file", str(tmp_path / "nope.bin"), "--profile", str(alice))
    assert result.returncode == 1 and "nope.bin" in result.stderr
    assert cli("history", "bob", "--json", "--profile", str(alice)).json() == []
