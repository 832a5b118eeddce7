"""History moves from an old device to a new one end to end, resumable, and nothing stays.

The command-line test links a tablet with ``--with-history`` to a laptop holding
500 messages, kills the tablet halfway through the download, and resumes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from obrolan.client import Client
from obrolan.client.history_transfer import HistoryTransferFailed
from obrolan.client.models import MessageState
from tests.e2e.conftest import Cli, mailbox_rows
from tests.e2e.test_devices import link

MESSAGES = 500
PADDING = "x" * 700
"""Long enough that the archive spans several download pieces (killed after the first)."""


def blob_rows(data_dir: Path) -> int:
    with sqlite3.connect(f"file:{data_dir / 'blobs.db'}?mode=ro", uri=True) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM blobs").fetchone()
    return int(count)


def texts(client: Client) -> list[tuple[str, str, bool]]:
    return [
        (m.message_id, m.text, m.outgoing)
        for m in client.history("bob")
        if m.state is not MessageState.NOTICE
    ]


def link_tablet_killed_halfway(url: str, cli: Cli, laptop_dir: Path, tablet_dir: Path) -> None:
    """`obrolan link` on the tablet, approved with history; the tablet dies mid-download."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBROLAN_")}
    env["OBROLAN_FAILPOINTS"] = "attachments.after_piece"
    tablet = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "obrolan",
            "link",
            "--user",
            "alice",
            "--server",
            url,
            "--profile",
            str(tablet_dir),
            "--no-passphrase",
            "--name",
            "tablet",
            "--json",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tablet.stdout is not None
        shown = json.loads(tablet.stdout.readline())
        assert shown["qr"].startswith("obrolan://link?server=")
        approved = cli(
            "devices", "approve", shown["link_code"], "--with-history", "--profile", str(laptop_dir)
        )
        assert approved.returncode == 0, approved.stderr
        assert f"sent {MESSAGES} message(s)" in approved.stderr
        assert "with 1 contact(s) and their safety state" in approved.stderr  # bob
        assert tablet.wait(60) == -9  # killed after the first piece of the download
        assert tablet.stderr is not None
        assert "it knows your 1 contact(s), 0 of them verified" in tablet.stderr.read()
    finally:
        tablet.kill()
        tablet.wait()


async def test_link_with_history_survives_a_kill_halfway(server, cli: Cli, profiles) -> None:  # type: ignore[no-untyped-def]
    laptop_dir, bob_dir, tablet_dir = profiles("laptop"), profiles("bob"), profiles("tablet")
    cli.register("alice", laptop_dir, accept=("bob",))
    cli.register("bob", bob_dir, accept=("alice",))
    async with Client.open(laptop_dir, None) as laptop, Client.open(bob_dir, None) as bob:
        for n in range(MESSAGES // 2):
            await bob.send("alice", f"bob {n} {PADDING}")
            await laptop.send("bob", f"alice {n} {PADDING}")
        await bob.flush(60)
        await laptop.flush(60)
        await laptop.sync(60)
    await asyncio.to_thread(link_tablet_killed_halfway, server.url, cli, laptop_dir, tablet_dir)
    assert blob_rows(server.data_dir) == 1  # the history is staged until the tablet has it
    resumed = cli("sync", "--profile", str(tablet_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert f"imported {MESSAGES} message(s)" in resumed.stderr
    async with Client.open(laptop_dir, None) as laptop, Client.open(tablet_dir, None) as tab:
        assert len(texts(tab)) == MESSAGES
        assert texts(tab) == texts(laptop)
        await laptop.sync()
        await tab.sync()
    assert blob_rows(server.data_dir) == 0
    assert mailbox_rows(server.data_dir, to="alice") == 0


async def test_a_tampered_transfer_imports_nothing(server, profiles, pair) -> None:  # type: ignore[no-untyped-def]
    laptop, bob = pair
    for n in range(10):
        await bob.send("alice", f"secret {n}")
    await bob.flush(10)
    await laptop.sync()
    tablet = await link(server, profiles, laptop, "tablet", with_history=True)
    try:
        await laptop.send_history(tablet.device_id)
        [blob] = list((server.data_dir / "blobs").iterdir())
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit in the middle of a chunk
        blob.write_bytes(bytes(data))
        with pytest.raises(HistoryTransferFailed, match="nothing was imported"):
            await tablet.receive_history(timeout=30)
        assert tablet.history("bob") == []
        assert tablet.history_offer() is None
    finally:
        await tablet.close()
