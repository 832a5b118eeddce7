"""kill -9 at the worst moments: nothing acknowledged is lost, nothing is shown twice.

Clients are real `obrolan` processes; a failpoint (OBROLAN_FAILPOINTS) SIGKILLs
one at an exact point, which is what `kill -9` at that instant would do.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, mailbox_rows, wait_until

KILLED = -signal.SIGKILL


def _texts(result) -> list[str]:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, result.stderr
    return [m["text"] for m in result.json()]


@pytest.fixture
def two(cli: Cli, profiles) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    alice, bob = profiles("alice"), profiles("bob")
    cli.register("alice", alice, accept=("bob",))
    cli.register("bob", bob, accept=("alice",))
    return alice, bob


def test_server_killed_after_ack_delivers_exactly_once_after_restart(
    server,
    cli: Cli,
    two: tuple[Path, Path],  # type: ignore[no-untyped-def]
) -> None:
    """kill -9 the server after it acked an envelope: the recipient gets it once after restart."""
    alice, bob = two
    assert cli("send", "bob", "survives the crash", "--profile", str(alice)).returncode == 0
    server.kill()
    server.start()
    assert _texts(cli("sync", "--json", "--profile", str(bob))) == ["survives the crash"]
    assert _texts(cli("sync", "--json", "--profile", str(bob))) == []
    assert [m["text"] for m in cli("history", "alice", "--json", "--profile", str(bob)).json()] == [
        "survives the crash"
    ]


@pytest.mark.parametrize("point", ["outbox.after_encrypt", "outbox.after_sent"])
def test_sender_killed_with_message_in_outbox_delivers_exactly_once(
    server,
    cli: Cli,
    two: tuple[Path, Path],
    point: str,  # type: ignore[no-untyped-def]
) -> None:
    """kill -9 the sender before the send, or after the server stored it: delivered once."""
    alice, bob = two
    killed = cli(
        "send", "bob", "written before the crash", "--profile", str(alice), failpoints=point
    )
    assert killed.returncode == KILLED
    history = cli("history", "bob", "--json", "--profile", str(alice)).json()
    assert [(m["text"], m["state"]) for m in history] == [("written before the crash", "queued")]

    assert cli("sync", "--profile", str(alice)).returncode == 0  # the restarted client resends
    assert [
        m["state"] for m in cli("history", "bob", "--json", "--profile", str(alice)).json()
    ] == ["sent"]
    assert _texts(cli("sync", "--json", "--profile", str(bob))) == ["written before the crash"]
    assert _texts(cli("sync", "--json", "--profile", str(bob))) == []


def test_sender_with_server_down_keeps_message_and_sends_it_later(
    server,
    cli: Cli,
    two: tuple[Path, Path],  # type: ignore[no-untyped-def]
) -> None:
    """`send` while the server is down says so and keeps the message; a later sync delivers it."""
    alice, bob = two
    server.stop()
    result = cli("send", "bob", "sent while offline", "--profile", str(alice))
    assert result.returncode == 1
    assert "queued" in result.stderr and "cannot reach" in result.stderr
    server.start()
    assert cli("sync", "--profile", str(alice)).returncode == 0
    assert _texts(cli("sync", "--json", "--profile", str(bob))) == ["sent while offline"]


@pytest.mark.parametrize(
    ("point", "shown_after_restart"),
    [
        ("inbox.after_decrypt", ["first"]),  # not stored yet: decrypted again after restart
        ("inbox.after_store", []),  # stored, not acked: the redelivery is recognised
        ("inbox.before_ack", []),
    ],
)
def test_receiver_killed_before_ack_shows_message_once_and_session_still_works(
    server,
    cli: Cli,
    two: tuple[Path, Path],
    point: str,
    shown_after_restart: list[str],  # type: ignore[no-untyped-def]
) -> None:
    """kill -9 the recipient after decrypting, before acking: shown once, next messages decrypt."""
    alice, bob = two
    assert cli("send", "bob", "first", "--profile", str(alice)).returncode == 0
    assert cli("sync", "--profile", str(bob), failpoints=point).returncode == KILLED
    assert mailbox_rows(server.data_dir, to="bob") == 1  # never acked

    assert _texts(cli("sync", "--json", "--profile", str(bob))) == shown_after_restart
    assert [m["text"] for m in cli("history", "alice", "--json", "--profile", str(bob)).json()] == [
        "first"
    ]

    assert cli("send", "bob", "second", "--profile", str(alice)).returncode == 0
    assert _texts(cli("sync", "--json", "--profile", str(bob))) == ["second"]
    assert cli("send", "alice", "reply", "--profile", str(bob)).returncode == 0
    assert _texts(cli("sync", "--json", "--profile", str(alice))) == ["reply"]
    wait_until(lambda: mailbox_rows(server.data_dir, to="alice") == 0)
