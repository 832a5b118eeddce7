"""The server process: its info endpoint, start-up errors in one line, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

import obrolan
from obrolan.protocol.limits import Limits
from tests.server.conftest import Online
from tests.support.server import ServerProcess

GOING_AWAY = 1001
START_GUARD_SECONDS = 60


async def serve_and_fail(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` with options that must make it exit at once."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "obrolan.server", "serve", *args],
        capture_output=True,
        text=True,
        timeout=START_GUARD_SECONDS,
        check=False,
    )


async def test_server_info_names_versions_and_configured_limits(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """GET /v1/info gives the software version, protocol versions and the limits as configured."""
    server = server_factory(
        "--max-envelope-bytes", "1000", "--envelope-ttl", "60", "--max-queue", "5"
    )
    async with aiohttp.ClientSession() as http, http.get(server.url + "/v1/info") as response:
        assert response.status == 200 and response.content_type == "application/json"
        info = json.loads(await response.read())
    expected = Limits(max_envelope_bytes=1000, envelope_ttl_seconds=60, max_queue_per_device=5)
    assert info == {
        "server": "obrolan",
        "version": obrolan.__version__,
        "versions": [1],
        "limits": msgspec.to_builtins(expected),
    }


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_server_shuts_down_gracefully_on_a_signal(
    server: ServerProcess, online: Online, signum: signal.Signals
) -> None:
    """SIGTERM or SIGINT: connections are closed with 1001, the WAL is folded in, exit code 0."""
    client, _ = await online(server, "alice")
    server.send_signal(signum)
    assert (await client.expect_close())[0] == GOING_AWAY
    assert await asyncio.to_thread(server.wait) == 0
    wal = server.database.with_name("obrolan.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert server.log_text.splitlines()[-1].endswith("stopped")


async def test_server_refuses_a_port_in_use_in_one_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A second server on a taken port exits 1 with one friendly line, no traceback."""
    result = await serve_and_fail("--port", str(server.port), "--data", str(tmp_path / "second"))
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"obrolan: cannot listen on 127.0.0.1 port {server.port}")
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--tls-cert", "cert.pem"],
            "obrolan: TLS needs both --tls-cert and --tls-key (or neither)",
        ),
        (
            ["--tls-cert", "missing.pem", "--tls-key", "missing.pem"],
            "obrolan: cannot load TLS certificate",
        ),
    ],
    ids=["half-tls", "missing-tls-files"],
)
async def test_server_refuses_a_bad_tls_configuration_in_one_line(
    tmp_path: Path, options: list[str], message: str
) -> None:
    """TLS settings that cannot work stop the server with one line saying what to fix."""
    result = await serve_and_fail("--port", "0", "--data", str(tmp_path / "data"), *options)
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(message)
