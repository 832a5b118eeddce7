"""Connection benchmark: server memory per idle authenticated connection.

First the accounts are made: a server registers ``--count`` real devices (each
connection closes after its ``welcome``) and stops, so that the memory measured
next holds no trace of registration. Then a fresh server process on the same data,
pinned to core 0, gets one warm-up connection, its RSS is read, and ``--count``
connections are opened and authenticated (a fresh challenge each, signed by the
device's Ed25519 key; ``welcome`` is required of every one). After they settle, the
RSS is read again: the difference divided by the count is the memory one idle
authenticated connection costs. The same is done, without accounts or auth, for
bench/minimal_relay.py as the floor of an aiohttp WebSocket.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from _common import ServerProcess, describe_machine, pin_load_generator, print_table, raise_fd_limit
from _device import DEVICE_ID, BenchDevice
from _wsclient import RawWebSocket

__all__ = ["ConnectionsResult", "main"]

BENCH_DIR = Path(__file__).resolve().parent
TARGETS = ("obrolan", "minimal")
MAX_COUNT = 10_000
READY_LINE = r"listening on (http://\S+)"
OPEN_TIMEOUT = 600.0
"""Most seconds for registering or opening every connection (10,000 take about a minute)."""

BYTES_TARGET = 20_000
"""The issue's target: at most 20 kB of server memory per idle authenticated connection."""


@dataclass
class ConnectionsResult:
    """Server memory before and after ``count`` idle connections."""

    target: str
    count: int
    authenticated: int
    open_after_settle: int
    rss_before: int
    rss_after: int
    open_seconds: float
    server_cpu_seconds: float

    @property
    def bytes_per_connection(self) -> float:
        """Server RSS growth per connection."""
        return (self.rss_after - self.rss_before) / self.count

    def row(self) -> list[str]:
        """The table row of this run."""
        return [
            self.target,
            str(self.count),
            str(self.authenticated) if self.target == "obrolan" else "n/a (no auth)",
            str(self.open_after_settle),
            f"{self.rss_before / 2**20:.1f}",
            f"{self.rss_after / 2**20:.1f}",
            f"{self.bytes_per_connection / 1000:.1f}",
            f"{self.count / self.open_seconds:,.0f}",
            f"{self.server_cpu_seconds * 1e6 / self.count:,.0f}",
        ]


HEADERS = [
    "target",
    "connections",
    "welcome received",
    "open after settle",
    "RSS before MB",
    "RSS after MB",
    "kB per connection",
    "opened/s",
    "server CPU µs per open",
]


def start(target: str, workdir: Path, data: Path) -> tuple[ServerProcess, str]:
    """Start the target pinned to the server core; returns it and its WebSocket URL base."""
    if target == "obrolan":
        argv = [sys.executable, "-m", "obrolan.server", "serve", "--port", "0", "--data", str(data)]
    else:
        argv = [sys.executable, str(BENCH_DIR / "minimal_relay.py"), "--port", "0"]
    server = ServerProcess(target, argv, workdir)
    return server, server.wait_for_line(READY_LINE).group(1).replace("http://", "ws://", 1)


async def _bounded(
    count: int, concurrency: int, make: Callable[[int], Awaitable[RawWebSocket]]
) -> list[RawWebSocket]:
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> RawWebSocket:
        async with gate:
            return await make(index)

    async with asyncio.timeout(OPEN_TIMEOUT):
        return await asyncio.gather(*(one(i) for i in range(count)))


async def register_all(
    devices: list[BenchDevice], workdir: Path, data: Path, concurrency: int
) -> None:
    """Create every account on a server that is stopped afterwards."""
    server, base = start("obrolan", workdir, data)
    try:

        async def register(index: int) -> RawWebSocket:
            ws = await devices[index].register(f"{base}/v1/ws")
            ws.close()
            return ws

        await _bounded(len(devices), concurrency, register)
    finally:
        server.stop()


async def measure(target: str, args: argparse.Namespace, workdir: Path) -> ConnectionsResult:
    """Open ``args.count`` idle connections to a fresh server and read its RSS growth."""
    data = Path(tempfile.mkdtemp(prefix="obrolan-data-", dir=workdir))
    devices = [BenchDevice(f"bc{i:05d}") for i in range(args.count + 1)]
    if target == "obrolan":
        print(f"registering {len(devices)} accounts ...", flush=True)
        await register_all(devices, workdir, data, args.concurrency)
    server, base = start(target, workdir, data)
    opened: list[RawWebSocket] = []
    try:

        async def connect(index: int) -> RawWebSocket:
            device = devices[index]
            if target == "obrolan":
                ws = await device.authenticate(f"{base}/v1/ws")
            else:
                ws = await RawWebSocket.connect(f"{base}/ws?device={device.username}/{DEVICE_ID}")
            opened.append(ws)
            return ws

        await connect(args.count)  # warm-up: imports, first allocations, database pages
        await asyncio.sleep(args.settle)
        rss_before = server.rss_bytes()
        cpu_before = server.cpu_seconds()
        print(f"opening {args.count} {target} connections ...", flush=True)
        began = time.perf_counter()
        await _bounded(args.count, args.concurrency, connect)
        open_seconds = time.perf_counter() - began
        server_cpu = server.cpu_seconds() - cpu_before
        await asyncio.sleep(args.settle)
        rss_after = server.rss_bytes()
        still_open = sum(not ws.closed for ws in opened[1:])
        return ConnectionsResult(
            target=target,
            count=args.count,
            authenticated=len(opened) - 1,  # authenticate() returned only after welcome
            open_after_settle=still_open,
            rss_before=rss_before,
            rss_after=rss_after,
            open_seconds=open_seconds,
            server_cpu_seconds=server_cpu,
        )
    finally:
        for ws in opened:
            ws.close()
        server.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--help`` describes every option."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: python bench/connections.py --count 10000",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=2000,
        help=f"idle connections, at most {MAX_COUNT} (default 2000)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="connections being opened at once (default 64)"
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds to wait before reading RSS (default 2)"
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, from {', '.join(TARGETS)} (default all)",
    )
    args = parser.parse_args(argv)
    args.target_list = [t for t in args.targets.split(",") if t]
    unknown = set(args.target_list) - set(TARGETS)
    if unknown:
        parser.error(
            f"unknown target(s) {', '.join(sorted(unknown))}; choose from {', '.join(TARGETS)}"
        )
    if not 1 <= args.count <= MAX_COUNT or args.concurrency < 1 or not 0 <= args.settle <= 60:
        parser.error(f"--count must be 1..{MAX_COUNT}, --concurrency positive, --settle 0..60")
    return args


async def run(args: argparse.Namespace) -> list[ConnectionsResult]:
    """Each target in turn, each on fresh server processes."""
    with tempfile.TemporaryDirectory(prefix="obrolan-bench-") as tmp:
        return [await measure(target, args, Path(tmp)) for target in args.target_list]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the machine, the table and the verdict."""
    args = parse_args(argv)
    print(describe_machine(), flush=True)
    pin_load_generator()
    limit = raise_fd_limit()
    if limit < args.count + 100:
        print(
            f"the open-file limit is {limit}: raise it (ulimit -Hn) for {args.count} connections",
            file=sys.stderr,
        )
        return 2
    results = asyncio.run(run(args))
    print()
    print_table(HEADERS, [r.row() for r in results])
    print()
    failed = False
    for result in results:
        if result.open_after_settle != result.count:
            print(
                f"{result.target}: only {result.open_after_settle} of {result.count} stayed open",
                file=sys.stderr,
            )
            failed = True
        if result.target == "obrolan":
            per = result.bytes_per_connection
            verdict = "met" if per <= BYTES_TARGET else f"NOT met ({per / BYTES_TARGET:.1f}x)"
            print(
                f"obrolan <= {BYTES_TARGET / 1000:g} kB per idle authenticated connection: {verdict} ({per / 1000:.1f} kB)"
            )
            print(f"obrolan held {result.open_after_settle} concurrent authenticated connections")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
