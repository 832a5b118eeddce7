"""The real client over TLS, across server restarts, and keeping its one-time keys stocked."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from obrolan.client import Client, connection
from obrolan.client.connection import Connection, ServerAddress, close_session
from obrolan.protocol.frames import ClaimedKeys, ClaimKeys
from tests.e2e.conftest import Cli
from tests.support.raw_client import RawClient, RawDevice
from tests.support.server import ServerProcess
from tests.support.tls import SelfSignedCertificate


def test_cli_over_tls_needs_a_trusted_certificate(
    server_factory: Callable[..., ServerProcess],
    tmp_path: Path,
    profiles,  # type: ignore[no-untyped-def]
) -> None:
    """https works with the server's CA given; without it the client refuses, in one line."""
    certificate = SelfSignedCertificate(tmp_path / "tls")
    server = server_factory(
        "--tls-cert", str(certificate.cert_path), "--tls-key", str(certificate.key_path)
    )
    assert server.url.startswith("https://")
    cli = Cli(server.url)

    untrusted = cli(
        "register",
        "alice",
        "--server",
        server.url,
        "--profile",
        str(profiles("alice")),
        "--no-passphrase",
    )
    assert untrusted.returncode == 1
    assert "certificate" in untrusted.stderr and not profiles("alice").exists()

    for name in ("alice", "bob"):
        made = cli(
            "register",
            name,
            "--server",
            server.url,
            "--profile",
            str(profiles(name)),
            "--no-passphrase",
            "--ca-file",
            str(certificate.cert_path),
        )
        assert made.returncode == 0, made.stderr
    assert cli("requests", "accept", "alice", "--profile", str(profiles("bob"))).returncode == 0
    assert cli("send", "bob", "over tls", "--profile", str(profiles("alice"))).returncode == 0
    synced = cli("sync", "--json", "--profile", str(profiles("bob")))
    assert [m["text"] for m in synced.json()] == ["over tls"]


async def test_client_reconnects_after_server_restart_and_keeps_streaming(
    server: ServerProcess, pair: tuple[Client, Client]
) -> None:
    """A listening client survives a server crash: it reconnects (backoff) and receives later messages."""
    alice, bob = pair
    stream = bob.messages()
    await alice.send("bob", "before the crash")
    assert (await asyncio.wait_for(anext(stream), 30)).text == "before the crash"

    server.kill()
    server.start()
    await alice.send("bob", "after the restart")
    assert (await asyncio.wait_for(anext(stream), 60)).text == "after the restart"


async def test_client_replenishes_one_time_keys_when_claims_use_them_up(
    server: ServerProcess, pair: tuple[Client, Client]
) -> None:
    """Claims drain bob's one-time keys; on his next connection the client uploads new ones."""
    _, bob = pair
    claimer = RawDevice("mallory")
    async with await RawClient.connect(server.ws_url) as raw:
        await raw.register(claimer)
        await raw.until_drained()
        claimed_ids = set()
        for request_id in range(1, 50):
            answer = await raw.request(ClaimKeys(id=request_id, username="bob"))
            assert isinstance(answer, ClaimedKeys)
            (device,) = answer.devices
            assert device.one_time_key is not None and not device.fallback
            claimed_ids.add(device.one_time_key.key_id)
        assert len(claimed_ids) == 49  # one left of the 50 published at registration

        assert _unclaimed_keys(server, "bob") == 1
        await bob.sync()  # bob's client sees the low count and publishes more
        assert _unclaimed_keys(server, "bob") == 50
        answer = await raw.request(ClaimKeys(id=99, username="bob"))
        assert isinstance(answer, ClaimedKeys)
        (device,) = answer.devices
        assert device.one_time_key is not None and not device.fallback
        assert device.one_time_key.key_id not in claimed_ids


def _unclaimed_keys(server: ServerProcess, username: str) -> int:
    with sqlite3.connect(f"file:{server.database}?mode=ro", uri=True) as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM one_time_keys JOIN devices ON devices.id = one_time_keys.device "
            "WHERE devices.username = ?",
            (username,),
        ).fetchone()
    return int(count)


async def test_a_connection_attempt_cancelled_midway_closes_what_it_opened() -> None:
    """A client closed while still connecting (the CLI's ``download`` when the file is
    already here) must leave no HTTP session open: one printed a traceback at exit."""
    held: list[asyncio.StreamWriter] = []  # accepted and never answered
    silent = await asyncio.start_server(lambda _, writer: held.append(writer), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    leaks: list[str] = []
    loop.set_exception_handler(lambda _, context: leaks.append(context["message"]))
    try:
        attempt = asyncio.create_task(
            Connection.open(ServerAddress.parse(f"http://127.0.0.1:{port}"))
        )
        while not held:
            await asyncio.sleep(0.01)
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        del attempt
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
        for writer in held:
            writer.close()
        silent.close()
    assert leaks == []


class _NeverClosed(asyncio.Protocol):
    """A connection aiohttp started whose socket never came: it never reports closed."""

    transport = None

    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def close(self) -> None:
        pass


async def test_closing_gives_up_on_a_connection_that_never_reports_closed(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """aiohttp waits for each connection it started to report itself closed; closing a
    client must not hang on one that never does (a connect cancelled before its socket)."""
    monkeypatch.setattr(connection, "SESSION_CLOSE_SECONDS", 0.2)
    connector = aiohttp.TCPConnector()
    connector._acquired.add(_NeverClosed())  # type: ignore[arg-type]  # aiohttp's own set
    session = aiohttp.ClientSession(connector=connector)
    async with asyncio.timeout(10):
        await close_session(session)
    assert session.closed
