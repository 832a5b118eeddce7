"""What every benchmark in bench/ shares: the machine line, core pinning, the server
process under measurement (its CPU time and RSS), percentiles and the results table.

The method (docs/performance.md): the server runs pinned to core 0 and the load
generator to core 1, so the server's own user+system CPU time over the measured
window, divided by the messages delivered in it, is a figure that hardly moves
when the machine is noisy; messages per second does move.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = [
    "LOAD_CORE",
    "SERVER_CORE",
    "CpuWindow",
    "ServerProcess",
    "describe_machine",
    "free_port",
    "percentile",
    "pin_load_generator",
    "print_table",
    "raise_fd_limit",
]

SERVER_CORE = 0
"""The core the server under test runs on (``taskset -c 0``)."""
LOAD_CORE = 1
"""The core the load generator runs on (``os.sched_setaffinity``)."""

READY_TIMEOUT = 30.0
"""Seconds a server may take to print its ready line or open its port."""


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown CPU"


# Decided once at import: after pin_load_generator() this process sees only its own core.
_CAN_PIN = (
    hasattr(os, "sched_setaffinity")
    and {SERVER_CORE, LOAD_CORE} <= os.sched_getaffinity(0)
    and shutil.which("taskset") is not None
)


def describe_machine() -> str:
    """One line naming the CPU, the cores, the kernel and Python, printed atop every run."""
    pinning = (
        f"server on core {SERVER_CORE}, load generator on core {LOAD_CORE}"
        if _CAN_PIN
        else "NOT pinned (needs 2 cores and taskset)"
    )
    return (
        f"machine: {_cpu_model()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}; {pinning}"
    )


def pin_load_generator() -> None:
    """Move this process onto the load generator's core, away from the server's."""
    if _CAN_PIN:
        os.sched_setaffinity(0, {LOAD_CORE})


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit; children inherit it.

    Returns:
        The new soft limit.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers without port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (``fraction`` 0.5 is the median).

    Returns:
        The value, or NaN when there are none.
    """
    if not sorted_values:
        return float("nan")
    rank = max(1, int(fraction * len(sorted_values) + 0.999999))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class ServerProcess:
    """A server under test: started pinned to ``SERVER_CORE``, measured by its pid.

    ``taskset`` replaces itself with the command (exec), so the pid psutil watches is
    the server's own; its threads are counted in its CPU times.
    """

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path) -> None:
        """Start ``argv`` pinned to the server core; stderr goes to ``log_dir/NAME.stderr``.

        Args:
            name: short label used in messages and the stderr file name.
            argv: the command line of the server.
            log_dir: where the server's stderr is kept (shown if it fails to start).
        """
        self.name = name
        pin = ["taskset", "-c", str(SERVER_CORE)] if _CAN_PIN else []
        self.stderr_path = log_dir / f"{name}.stderr"
        self._stderr = self.stderr_path.open("wb")
        self._popen = subprocess.Popen(
            [*pin, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            bufsize=0,  # unbuffered: select() must see every line the server prints
        )
        self.process = psutil.Process(self._popen.pid)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self._popen.pid

    def wait_for_line(self, pattern: str) -> re.Match[str]:
        """Read stdout until a line matches ``pattern``, then keep draining it in a thread.

        Raises:
            RuntimeError: the server exited or printed no such line within READY_TIMEOUT.
        """
        assert self._popen.stdout is not None
        stdout = self._popen.stdout
        deadline = time.monotonic() + READY_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=deadline - time.monotonic()):
                    continue
                line = stdout.readline().decode(errors="replace")
                if not line:
                    break
                match = re.search(pattern, line)
                if match:
                    # A full pipe would block the server: drain whatever it prints later.
                    threading.Thread(target=stdout.read, daemon=True).start()
                    self._check_pinned()
                    return match
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {self._stderr_tail()}")

    def wait_for_port(self, port: int) -> None:
        """Wait until 127.0.0.1:``port`` accepts a connection.

        Raises:
            RuntimeError: the server exited or the port stayed closed for READY_TIMEOUT.
        """
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and self._popen.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                self._check_pinned()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not open port {port}: {self._stderr_tail()}")

    def _check_pinned(self) -> None:
        if _CAN_PIN and self.process.cpu_affinity() != [SERVER_CORE]:
            self.stop()
            raise RuntimeError(f"{self.name} is not pinned to core {SERVER_CORE}")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server has used so far."""
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def rss_bytes(self) -> int:
        """The server's resident set size now."""
        return int(self.process.memory_info().rss)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; safe to call twice."""
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(10)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        if self._popen.stdout is not None:
            self._popen.stdout.close()
        self._stderr.close()

    def _stderr_tail(self) -> str:
        self._stderr.flush()
        tail = self.stderr_path.read_text(errors="replace")[-2000:].strip()
        return tail or f"exit code {self._popen.poll()}"


def _core_busy_seconds(core: int) -> float:
    times = psutil.cpu_times(percpu=True)[core]
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass
class CpuWindow:
    """CPU time of the server, of this load generator and of everything else on the
    server's core over one measured window (the last says whether the run was disturbed)."""

    server: ServerProcess
    wall_start: float = 0.0
    server_start: float = 0.0
    load_start: float = 0.0
    core_start: float = 0.0
    wall: float = 0.0
    server_cpu: float = 0.0
    load_cpu: float = 0.0
    others_cpu: float = 0.0
    """CPU time other processes took on the server's core (0 when it is not pinned)."""

    def start(self) -> None:
        """Open the window."""
        self.wall_start = time.perf_counter()
        self.server_start = self.server.cpu_seconds()
        self.load_start = time.process_time()
        self.core_start = _core_busy_seconds(SERVER_CORE) if _CAN_PIN else 0.0

    def stop(self) -> None:
        """Close the window and keep the elapsed wall and CPU seconds."""
        self.server_cpu = self.server.cpu_seconds() - self.server_start
        self.load_cpu = time.process_time() - self.load_start
        self.wall = time.perf_counter() - self.wall_start
        if _CAN_PIN:
            core = _core_busy_seconds(SERVER_CORE) - self.core_start
            self.others_cpu = max(0.0, core - self.server_cpu)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a Markdown table (pasted as is into docs/performance.md)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
    sys.stdout.flush()
