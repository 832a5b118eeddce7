"""End-to-end fixtures: real `obrolan` CLI processes and in-process clients against a real server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from obrolan.client import Client
from obrolan.client.models import MessageState
from obrolan.errors import IdentityChanged

CLI_TIMEOUT = 60


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


@dataclass
class Cli:
    """Runs the real `obrolan` command in a subprocess."""

    server_url: str

    def __call__(
        self,
        *args: str,
        failpoints: str = "",
        passphrase: str | None = None,
        timeout: float = CLI_TIMEOUT,
        env_extra: dict[str, str] | None = None,
    ) -> CliResult:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OBROLAN_")}
        env.update(env_extra or {})
        if failpoints:
            env["OBROLAN_FAILPOINTS"] = failpoints
        if passphrase is not None:
            env["OBROLAN_PASSPHRASE"] = passphrase
        done = subprocess.run(
            [sys.executable, "-m", "obrolan", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return CliResult(done.returncode, done.stdout, done.stderr)

    def register(self, username: str, profile: Path, *, accept: tuple[str, ...] = ()) -> CliResult:
        """Register ``username``; ``accept`` names people whose messages are not requests."""
        result = self(
            "register",
            username,
            "--server",
            self.server_url,
            "--profile",
            str(profile),
            "--no-passphrase",
        )
        assert result.returncode == 0, result.stderr
        for peer in accept:
            accepted = self("requests", "accept", peer, "--profile", str(profile))
            assert accepted.returncode == 0, accepted.stderr
        return result


@pytest.fixture
def cli(server) -> Cli:  # type: ignore[no-untyped-def]
    return Cli(server.url)


@pytest.fixture
def profiles(tmp_path: Path) -> Callable[[str], Path]:
    """profiles("alice") → a fresh profile folder for alice."""
    return lambda name: tmp_path / "profiles" / name


@pytest.fixture
async def pair(server, profiles) -> AsyncIterator[tuple[Client, Client]]:  # type: ignore[no-untyped-def]
    """alice and bob, registered, as in-process clients (not yet connected)."""
    alice = await Client.register(profiles("alice"), server.url, "alice", None)
    bob = await Client.register(profiles("bob"), server.url, "bob", None)
    alice.accept("bob")  # they know each other: no message requests between them
    bob.accept("alice")
    try:
        yield alice, bob
    finally:
        await alice.close()
        await bob.close()


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll for a state the server reaches asynchronously (no duration is asserted)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def mailbox_rows(data_dir: Path, to: str | None = None) -> int:
    """How many envelopes the server's database holds (for user ``to``), read from the file."""
    query = "SELECT COUNT(*) FROM mailbox"
    params: tuple[str, ...] = ()
    if to is not None:
        query += " JOIN devices ON devices.id = mailbox.device WHERE devices.username = ?"
        params = (to,)
    with sqlite3.connect(f"file:{data_dir / 'obrolan.db'}?mode=ro", uri=True) as db:
        (count,) = db.execute(query, params).fetchone()
    return int(count)


def mailbox_ciphertexts(data_dir: Path) -> list[bytes]:
    with sqlite3.connect(f"file:{data_dir / 'obrolan.db'}?mode=ro", uri=True) as db:
        return [bytes(r[0]) for r in db.execute("SELECT ciphertext FROM mailbox")]


async def assert_sending_held(sender: Client, peer: str) -> None:
    """``peer``'s account key changed: ``sender``'s messages are held (not encrypted, not
    failed) until the user runs ``trust``; ``send_file`` is refused."""
    for text in ("should not leave", "still held"):
        queued = await sender.send(peer, text)
        await sender.flush(30)  # returns: held messages do not keep the outbox busy
        held = sender.message(queued.message_id, sender.username)
        assert held is not None and held.state is MessageState.HELD
    with pytest.raises(IdentityChanged):
        await sender.send_file(peer, Path(__file__))
