"""CLI benchmark: the wall time of one `obrolan` command, as a user at a shell waits for it.

It starts a real server (`python -m obrolan.server serve`, data on disk), registers
bob and two profiles of alice's (one whose store key is a 0600 key file, as a bot's,
and one behind a passphrase, given in ``OBROLAN_PASSPHRASE`` so Argon2id runs as it
does for a person), and has bob send each of them ``--messages`` real messages
through the server, which they take in (setup, not measured). Then it runs each
command as its own process, ``--runs`` times after one unmeasured warm-up run, and
prints the median and the minimum wall time:

* ``python -c pass``: the interpreter alone, the floor under every command;
* ``obrolan --help``: imports and the argument parser;
* ``history bob`` and ``search lunch``: open the store, read, print, exit;
* ``sync`` with nothing waiting: also connect, authenticate, drain, exit;
* ``sync`` with 5 waiting: bob sends 5 messages before each run (not measured).

The command is the console script beside this Python (``.venv/bin/obrolan``).
Each command's process runs on the load generator's core, the server on its own
(bench/_common.py). ``--quick`` (2 runs, 20 messages) is a smoke run for tests.

Run: ``.venv/bin/python bench/cli.py`` (about a minute), or ``--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _common import ServerProcess, describe_machine, free_port, pin_load_generator, print_table

from obrolan.client import Client

__all__ = ["main"]

PASSPHRASE = "a bench passphrase, long enough"
WAITING = 5
"""Messages bob sends before each run of `sync` with something waiting."""
MAX_MESSAGES = 5000
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


def _obrolan() -> list[str]:
    """The `obrolan` console script of this Python's environment, as a user runs it."""
    script = Path(sys.executable).with_name("obrolan")
    if script.exists():
        return [str(script)]
    found = shutil.which("obrolan")
    return [found] if found else [sys.executable, "-m", "obrolan"]


def _load() -> str:
    return " ".join(f"{figure:.2f}" for figure in os.getloadavg())


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20)))


async def _register(folder: Path, url: str, username: str, passphrase: str | None) -> None:
    client = await Client.register(folder, url, username, passphrase)
    await client.close()


async def _send(bob: Path, recipients: Sequence[str], count: int, seed: int) -> None:
    """bob sends ``count`` messages to each recipient, and waits until the server has them."""
    rng = random.Random(seed)
    async with Client.open(bob, None) as client:
        for _ in range(count):
            for recipient in recipients:
                await client.send(recipient, _text(rng))
        await client.flush(timeout=120)


async def _take_in(profile: Path, passphrase: str | None) -> int:
    """The profile receives what waits, and accepts bob (as the user would, once)."""
    async with Client.open(profile, passphrase) as client:
        arrived = await client.sync(120)
        client.accept("bob")
        await client.flush(timeout=120)
    return len(arrived)


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    """Wall seconds of one command, from spawn to exit, and what it printed.

    Raises:
        RuntimeError: the command failed (its stderr is shown).
    """
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()}")
    return elapsed, done.stdout + done.stderr


def _measure(
    label: str, kind: str, argv: list[str], env: dict[str, str], runs: int, before: object = None
) -> list[str]:
    """One table row: ``runs`` timed runs after an unmeasured warm-up (page cache, .pyc)."""
    times = []
    for attempt in range(runs + 1):
        if callable(before):
            before()
        elapsed, printed = _run(argv, env)
        if not printed and argv[0] != sys.executable:  # an obrolan command that did nothing
            raise RuntimeError(f"{' '.join(argv)} printed nothing")
        if attempt:
            times.append(elapsed * 1000)
    return [
        label,
        kind,
        str(runs),
        f"{statistics.median(times):.0f}",
        f"{min(times):.0f}",
        f"{max(times):.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command (10)")
    parser.add_argument(
        "--messages",
        type=int,
        default=200,
        help="messages in each profile's conversation with bob (200)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 runs and 20 messages: a smoke run, not figures"
    )
    args = parser.parse_args()
    if args.quick:
        args.runs, args.messages = 2, 20
    if not 1 <= args.runs <= 1000 or not 1 <= args.messages <= MAX_MESSAGES:
        sys.exit(f"--runs must be 1 to 1000 and --messages 1 to {MAX_MESSAGES:,}")
    pin_load_generator()
    print(describe_machine())
    obrolan = _obrolan()
    print(
        f"command: {' '.join(obrolan)}; {args.runs} timed runs each, "
        f"{args.messages} messages per conversation"
    )
    folder = Path(tempfile.mkdtemp(prefix="obrolan-cli-bench-"))
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
            "--send-rate",
            "1000000",
        ],
        folder,
    )
    rows = []
    try:
        server.wait_for_port(port)
        url = f"http://127.0.0.1:{port}"
        bob = folder / "bob"
        profiles = {
            "keyfile": (folder / "alice-keyfile", "alice", None),
            "passphrase": (folder / "carol-passphrase", "carol", PASSPHRASE),
        }
        asyncio.run(_register(bob, url, "bob", None))
        for path, username, passphrase in profiles.values():
            asyncio.run(_register(path, url, username, passphrase))
        usernames = [username for _, username, _ in profiles.values()]
        asyncio.run(_send(bob, usernames, args.messages, 1))
        for path, _, passphrase in profiles.values():
            asyncio.run(_take_in(path, passphrase))
        base = {k: v for k, v in os.environ.items() if not k.startswith("OBROLAN_")}
        for path, _, _ in profiles.values():
            env = {**base, "OBROLAN_PROFILE": str(path), "OBROLAN_PASSPHRASE": PASSPHRASE}
            shown = json.loads(
                subprocess.run(
                    [*obrolan, "history", "bob", "--json"], env=env, capture_output=True, check=True
                ).stdout
            )
            if len(shown) != args.messages:
                raise RuntimeError(f"{path.name} shows {len(shown)} of {args.messages} messages")
        print(f"load average before: {_load()}")
        rows.append(
            _measure("python -c pass", "-", [sys.executable, "-c", "pass"], base, args.runs)
        )
        rows.append(_measure("obrolan --help", "-", [*obrolan, "--help"], base, args.runs))
        seed = iter(range(2, 1_000_000))
        for kind, (path, username, passphrase) in profiles.items():
            env = {**base, "OBROLAN_PROFILE": str(path)}
            if passphrase is not None:
                env["OBROLAN_PASSPHRASE"] = passphrase
            for label, verb in (
                ("history bob", ["history", "bob"]),
                ("search lunch", ["search", "lunch"]),
                ("sync, nothing waiting", ["sync"]),
            ):
                rows.append(_measure(label, kind, [*obrolan, *verb], env, args.runs))
            rows.append(
                _measure(
                    f"sync, {WAITING} waiting",
                    kind,
                    [*obrolan, "sync"],
                    env,
                    args.runs,
                    before=lambda username=username: asyncio.run(
                        _send(bob, [username], WAITING, next(seed))
                    ),
                )
            )
        print(f"load average after: {_load()} (other processes share this machine)")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print_table(["command", "profile", "runs", "median ms", "min ms", "max ms"], rows)


if __name__ == "__main__":
    main()
