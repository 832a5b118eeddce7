"""Start and stop real ``obrolan serve`` processes for tests.

Example::

    with ServerProcess(tmp_path / "data") as server:
        async with aiohttp.ClientSession() as http:
            await http.get(server.url + "/v1/info")

The process is ``python -m obrolan.server serve --host 127.0.0.1 --port 0`` on its
own data directory; its stdout's ready line gives the real port, its stderr goes to
a file next to the data directory. Starting again after :meth:`ServerProcess.stop` or
:meth:`ServerProcess.kill` keeps the data directory and the port, so URLs that
clients hold stay valid.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["ServerProcess"]

_READY = re.compile(r"^obrolan server listening on (https?)://127\.0\.0\.1:(\d+)$")
_START_GUARD_SECONDS = 30.0
"""A server that is not ready by then has hung; the test fails instead of waiting forever."""
_STOP_GUARD_SECONDS = 15.0


class ServerProcess:
    """One real server process on 127.0.0.1 with a random free port.

    Args:
        data_dir: the server's ``--data``; reuse it to restart on the same database.
        args: more ``serve`` options, e.g. ``"--max-queue", "3"``.
        env: extra environment variables, e.g. ``{"OBROLAN_FAILPOINTS": "relay.after_store"}``.
    """

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.args = args
        self.env = env or {}
        self.stderr_path = data_dir.with_name(data_dir.name + ".stderr")
        self.port = 0
        """The listening port; 0 until the first start, then kept across restarts."""
        self.scheme = "http"
        self._process: subprocess.Popen[bytes] | None = None

    # --- addresses

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:PORT``."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint, ``ws(s)://127.0.0.1:PORT/v1/ws``."""
        return f"{self.scheme.replace('http', 'ws')}://127.0.0.1:{self.port}/v1/ws"

    @property
    def database(self) -> Path:
        """The server's SQLite file."""
        return self.data_dir / "obrolan.db"

    def mailbox(self) -> list[tuple[str, str, str, bytes]]:
        """The mailbox as the database file holds it now, in queue order.

        Each row is ``(recipient "user/device", envelope_id, sender "user/device", ciphertext)``;
        read with Python's own sqlite3, beside the running server.
        """
        with closing(sqlite3.connect(f"{self.database.as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT d.username || '/' || d.device_id, m.envelope_id,"
                " m.from_user || '/' || m.from_device, m.ciphertext"
                " FROM mailbox m JOIN devices d ON d.id = m.device ORDER BY m.seq"
            ).fetchall()
        return [(to, envelope_id, sender, bytes(data)) for to, envelope_id, sender, data in rows]

    @property
    def log_text(self) -> str:
        """What the server wrote to ``DATA/server.log`` so far."""
        return (self.data_dir / "server.log").read_text(encoding="utf-8")

    @property
    def stderr_text(self) -> str:
        """What the server wrote to stderr so far (across restarts)."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    # --- lifecycle

    def start(self) -> ServerProcess:
        """Start the process (on the port of the previous run, if any) and wait until it is ready.

        Raises:
            RuntimeError: the server exited or printed something else instead.
        """
        command = [
            sys.executable,
            "-m",
            "obrolan.server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data",
            str(self.data_dir),
            *self.args,
        ]
        with self.stderr_path.open("ab") as stderr:
            self._process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=stderr, env={**os.environ, **self.env}
            )
        line = self._read_ready_line()
        match = _READY.match(line)
        if match is None:
            self.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{self.stderr_text}")
        self.scheme, self.port = match[1], int(match[2])
        return self

    def _read_ready_line(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        deadline = time.monotonic() + _START_GUARD_SECONDS
        line = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    break
                chunk = os.read(stdout.fileno(), 1)
                if not chunk:
                    break
                line += chunk
        return line.decode(errors="replace").strip()

    def stop(self) -> int:
        """Send SIGTERM and wait for the graceful shutdown; returns the exit code."""
        return self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the process (a crash: no shutdown code runs)."""
        self._end(signal.SIGKILL)

    def send_signal(self, signum: signal.Signals) -> None:
        """Send a signal to the running process without waiting for it."""
        assert self._process is not None, "the server is not running"
        self._process.send_signal(signum)

    def wait(self) -> int:
        """Wait for the process to exit on its own; returns the exit code."""
        return self._end(None)

    def _end(self, signum: signal.Signals | None) -> int:
        process = self._process
        if process is None:
            return 0
        if signum is not None and process.poll() is None:
            process.send_signal(signum)
        try:
            code = process.wait(timeout=_STOP_GUARD_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if process.stdout is not None:
            process.stdout.close()
        self._process = None
        return code

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
