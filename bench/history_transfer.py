"""History transfer benchmark: how long a new device waits for N messages of history.

For each size it starts a real server (`python -m obrolan.server serve`, data on
disk), registers a laptop (a real profile), fills the laptop's store with N
generated messages straight into its SQLCipher tables (the real schema; this is
the benchmark's setup, not what is measured), links a tablet with the real link
flow and then times the two halves of ``--with-history``:

* ``send``: the laptop exports its history (Argon2id-sealed archive), uploads it
  as a blob for the tablet (chunked AES-256-GCM) and queues the ``history``
  message (:meth:`Client.send_history`);
* ``receive``: the tablet downloads, checks the digest, decrypts and imports it
  all or nothing (:meth:`Client.receive_history`).

It prints the machine, then per size: seconds for each half, the archive's size
(bytes on the wire), messages per second end to end, and the benchmark process's
peak RSS so far (both clients run in it; Argon2id takes 64 MiB per export and
import). Bounded: at most ``MAX_MESSAGES``; each size takes seconds to a minute.

Run: ``.venv/bin/python bench/history_transfer.py`` (sizes 1,000, 10,000 and
100,000; ``--sizes 1000`` for a quick look).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import ServerProcess, describe_machine, free_port, pin_load_generator, print_table

from obrolan.client import Client
from obrolan.client.ids import new_id
from obrolan.client.models import MessageState
from obrolan.client.store import now_ms
from obrolan.crypto.account import LinkCode

__all__ = ["main"]

MAX_MESSAGES = 500_000
BATCH = 20_000
WORDS = (
    "see",
    "you",
    "tomorrow",
    "lunch",
    "at",
    "the",
    "usual",
    "place",
    "sounds",
    "good",
    "did",
    "read",
    "chapter",
    "two",
    "yet",
    "haha",
    "ok",
    "sure",
    "thanks",
    "later",
)


def _fill(client: Client, total: int, seed: int) -> None:
    """N messages with 5 contacts, half outgoing, 3 to 20 words each (setup, not measured)."""
    rng = random.Random(seed)
    db = client._store.connection
    start = now_ms() - total * 1000
    for first in range(0, total, BATCH):
        rows = []
        for n in range(first, min(total, first + BATCH)):
            peer = f"contact{n % 5}"
            outgoing = n % 2 == 0
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20)))
            rows.append(
                (
                    new_id(),
                    peer,
                    "laptop" if outgoing else peer,
                    "d",
                    int(outgoing),
                    text,
                    start + n * 1000,
                    (MessageState.SENT if outgoing else MessageState.RECEIVED).value,
                )
            )
        with client._store.transaction():
            db.executemany(
                "INSERT INTO messages (message_id, peer, sender, sender_device, outgoing, text, "
                "sent_at_ms, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )


async def _one(url: str, folder: Path, size: int) -> list[str]:
    laptop = await Client.register(folder / "laptop", url, "laptop", None)
    try:
        _fill(laptop, size, size)
        codes: asyncio.Queue[LinkCode] = asyncio.Queue()
        linking = asyncio.create_task(
            Client.link(folder / "tablet", url, "laptop", None, codes.put_nowait)
        )
        await laptop.approve(str(await codes.get()), with_history=True)
        tablet = await linking
        try:
            started = time.perf_counter()
            await laptop.send_history(tablet.device_id)
            sent = time.perf_counter()
            await tablet.sync(60)  # the `history` message (one Olm envelope)
            pending = tablet.history_offer()
            assert pending is not None
            arrived = time.perf_counter()
            summary = await tablet.receive_history(timeout=600)
            done = time.perf_counter()
            assert summary.messages == size, summary
            archive = pending.archive.size
            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        finally:
            await tablet.close()
    finally:
        await laptop.close()
    return [
        f"{size:,}",
        f"{sent - started:.2f}",
        f"{done - arrived:.2f}",
        f"{archive / 1e6:.1f}",
        f"{size / (done - started):,.0f}",
        f"{peak_rss / 1024:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="1000,10000,100000",
        help="messages per run, comma-separated (default %(default)s)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(not 1 <= s <= MAX_MESSAGES for s in sizes):
        sys.exit(f"sizes must be 1 to {MAX_MESSAGES:,}")
    pin_load_generator()
    print(describe_machine())
    rows = []
    for size in sizes:
        folder = Path(tempfile.mkdtemp(prefix="obrolan-history-"))
        port = free_port()
        server = ServerProcess(
            "obrolan",
            [
                sys.executable,
                "-m",
                "obrolan.server",
                "serve",
                "--port",
                str(port),
                "--data",
                str(folder / "server"),
            ],
            folder,
        )
        try:
            server.wait_for_port(port)
            rows.append(asyncio.run(_one(f"http://127.0.0.1:{port}", folder, size)))
        finally:
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)
    print_table(
        [
            "messages",
            "send s",
            "receive s",
            "archive MB",
            "msgs/s end to end",
            "peak RSS so far MiB",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
