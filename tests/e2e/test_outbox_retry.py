"""A refusal for now (internal, queue_full, rate_limited) is retried on the same connection.

A shim in front of the real server answers the first ``send`` frames with an
``error`` frame instead of forwarding them, as a server whose disk is full or whose
recipient queue is full would. Before the fix the refusal ended the outbox task:
nothing was sent again until something was pushed or the client reconnected, and
``obrolan send`` said "cannot reach … timed out" though the server had answered at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from obrolan.client import Client
from obrolan.client.models import MessageState
from obrolan.errors import RequestRefused
from tests.e2e.conftest import Cli
from tests.support.shim import MaliciousServer


class Refuser:
    """Answers the first ``times`` ``send`` frames with ``code``; logs what passes."""

    def __init__(self, code: str, times: int, retry_after_ms: int | None = None) -> None:
        self.code, self.left, self.retry_after_ms = code, times, retry_after_ms
        self.log: list[tuple[str, str]] = []

    def answer(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        self.log.append(("client", frame.get("type", "?")))
        if frame.get("type") != "send" or self.left == 0:
            return None
        self.left -= 1
        self.log.append(("shim", "error"))
        return {
            "type": "error",
            "id": frame["id"],
            "code": self.code,
            "message": f"refused for the test ({self.code})",
            "retry_after_ms": self.retry_after_ms,
        }

    def seen(self, frame: dict[str, Any]) -> dict[str, Any]:
        self.log.append(("server", frame.get("type", "?")))
        return frame

    def between_refusal_and_sent(self) -> list[tuple[str, str]]:
        """What crossed the shim from the first refused send to the answer that took it."""
        start = self.log.index(("client", "send"))
        end = self.log.index(("server", "sent"), start)
        return self.log[start : end + 1]


def install(shim: MaliciousServer, refuser: Refuser) -> None:
    shim.answer = refuser.answer
    shim.rewrite = refuser.seen


@pytest.mark.parametrize(
    ("code", "retry_after_ms"), [("internal", None), ("queue_full", None), ("rate_limited", 300)]
)
async def test_a_refusal_for_now_is_retried_on_the_same_connection(
    server,
    profiles: Callable[[str], Path],
    code: str,
    retry_after_ms: int | None,  # type: ignore[no-untyped-def]
) -> None:
    async with MaliciousServer(server.ws_url) as shim:
        alice = await Client.register(profiles("alice"), shim.url, "alice", None)
        bob = await Client.register(profiles("bob"), server.url, "bob", None)
        alice.accept("bob")
        bob.accept("alice")
        try:
            await alice.sync()  # connected, drained: nothing more will be pushed to alice
            refuser = Refuser(code, 2, retry_after_ms)
            install(shim, refuser)
            told: list[RequestRefused] = []
            queued = await alice.send("bob", "after two refusals")
            await alice.flush(20, on_refusal=told.append)
            sent = alice.message(queued.message_id, "alice")
            assert sent is not None and sent.state is MessageState.SENT
            assert [m.text for m in await bob.sync()] == ["after two refusals"]
            assert told and {t.code.value for t in told} == {code}
            passed = refuser.between_refusal_and_sent()
            assert passed.count(("client", "send")) == 3
            assert {who for who, _ in passed if who == "server"} == {"server"}
            assert [f for w, f in passed if w == "server"] == ["sent"]  # nothing pushed
            authentications = [f for f in shim.sent_by_clients if f["type"] == "authenticate"]
            assert len(authentications) == 1  # the same connection throughout
            assert alice.outbox_refusal is None
        finally:
            await alice.close()
            await bob.close()


async def test_a_refusal_that_waiting_cannot_help_fails_that_message_only(
    server,
    profiles: Callable[[str], Path],  # type: ignore[no-untyped-def]
) -> None:
    async with MaliciousServer(server.ws_url) as shim:
        alice = await Client.register(profiles("alice"), shim.url, "alice", None)
        bob = await Client.register(profiles("bob"), server.url, "bob", None)
        alice.accept("bob")
        bob.accept("alice")
        try:
            install(shim, Refuser("too_many_items", 1))
            first = await alice.send("bob", "refused for good")
            second = await alice.send("bob", "goes")
            await alice.flush(20)
            failed = alice.message(first.message_id, "alice")
            assert failed is not None and failed.state is MessageState.FAILED
            assert "refused for the test (too_many_items)" in (failed.error or "")
            went = alice.message(second.message_id, "alice")
            assert went is not None and went.state is MessageState.SENT
            received = await bob.sync()
            assert [m.text for m in received if m.state is not MessageState.NOTICE] == ["goes"]
            assert any("may be missing" in m.text for m in received)  # its counter was used
        finally:
            await alice.close()
            await bob.close()


async def test_cli_send_says_what_the_server_said_and_sends_on_the_same_connection(
    server,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    async with MaliciousServer(server.ws_url) as shim:
        cli, direct = Cli(shim.url), Cli(server.url)
        alice, bob = tmp_path / "alice", tmp_path / "bob"
        await asyncio.to_thread(cli.register, "alice", alice)
        await asyncio.to_thread(direct.register, "bob", bob, accept=("alice",))
        refuser = Refuser("queue_full", 2)
        before = len(shim.sent_by_clients)
        install(shim, refuser)
        sent = await asyncio.to_thread(
            cli, "send", "bob", "held by a full queue", "--profile", str(alice)
        )
        assert sent.returncode == 0, sent.stderr
        assert "sent to bob" in sent.stdout
        assert "the server refused for now: queue_full" in sent.stderr
        assert "will retry" in sent.stderr and "cannot reach" not in sent.stderr
        ours = shim.sent_by_clients[before:]
        assert [f["type"] for f in ours].count("authenticate") == 1
        synced = await asyncio.to_thread(direct, "sync", "--profile", str(bob))
        assert "held by a full queue" in synced.stdout


async def test_cli_sync_says_what_the_server_said_and_leaves_the_message_queued(
    server,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    async with MaliciousServer(server.ws_url) as shim:
        cli, direct = Cli(shim.url), Cli(server.url)
        alice, bob = tmp_path / "alice", tmp_path / "bob"
        await asyncio.to_thread(cli.register, "alice", alice)
        await asyncio.to_thread(direct.register, "bob", bob, accept=("alice",))
        install(shim, Refuser("internal", 1000))  # the server's disk stays full
        queued = await asyncio.to_thread(
            cli, "send", "bob", "waits for the disk", "--profile", str(alice)
        )
        assert queued.returncode == 1
        assert "the server refused for now: internal" in queued.stderr
        assert "queued" in queued.stderr and "cannot reach" not in queued.stderr
        synced = await asyncio.to_thread(cli, "sync", "--profile", str(alice))
        assert synced.returncode == 0, synced.stderr
        assert "the server refused for now: internal" in synced.stderr
        assert "stays queued" in synced.stderr and "cannot reach" not in synced.stderr
        shim.answer = None  # the disk has room again
        assert (await asyncio.to_thread(cli, "sync", "--profile", str(alice))).returncode == 0
        arrived = await asyncio.to_thread(direct, "sync", "--profile", str(bob))
        assert "waits for the disk" in arrived.stdout
