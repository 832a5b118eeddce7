"""The `obrolan` command as a person uses it: clear one-line errors, never a traceback."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli


@pytest.fixture
def two(cli: Cli, profiles) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    alice, bob = profiles("alice"), profiles("bob")
    cli.register("alice", alice, accept=("bob",))
    cli.register("bob", bob, accept=("alice",))
    return alice, bob


def _one_line_error(result, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_tour_register_send_sync_history_contacts_whoami(
    cli: Cli, two: tuple[Path, Path]
) -> None:
    """The README's tour works end to end through the real command."""
    alice, bob = two
    sent = cli("send", "bob", "hello from the tour", "--profile", str(alice))
    assert sent.returncode == 0 and "sent to bob" in sent.stdout
    synced = cli("sync", "--profile", str(bob))
    assert synced.returncode == 0 and "alice: hello from the tour" in synced.stdout
    history = cli("history", "alice", "--json", "--profile", str(bob)).json()
    assert [(m["sender"], m["text"], m["state"]) for m in history] == [
        ("alice", "hello from the tour", "received")
    ]
    contacts = cli("contacts", "--json", "--profile", str(bob)).json()
    assert [c["username"] for c in contacts] == ["alice"]
    me = cli("whoami", "--json", "--profile", str(alice)).json()
    assert me["username"] == "alice" and me["server"] == cli.server_url


def test_cli_safety_numbers_match_on_both_sides(cli: Cli, two: tuple[Path, Path]) -> None:
    """alice and bob compute the same 60 digits from their two identity keys."""
    alice, bob = two
    a = cli("safety-number", "bob", "--json", "--profile", str(alice)).json()
    b = cli("safety-number", "alice", "--json", "--profile", str(bob)).json()
    assert a["safety_number"] == b["safety_number"]
    assert len(a["safety_number"].replace(" ", "")) == 60


def test_cli_send_to_unknown_user_fails_clearly(cli: Cli, two: tuple[Path, Path]) -> None:
    """Sending to a username nobody has is one line: unknown user."""
    alice, _ = two
    _one_line_error(
        cli("send", "nobody", "hello?", "--profile", str(alice)), "unknown user: nobody"
    )
    history = cli("history", "nobody", "--json", "--profile", str(alice)).json()
    assert [m["state"] for m in history] == ["failed"]


def test_cli_register_taken_username_fails_and_leaves_no_profile(
    cli: Cli,
    two: tuple[Path, Path],
    profiles,  # type: ignore[no-untyped-def]
) -> None:
    """A taken username is refused, and no half-made profile is left behind."""
    result = cli(
        "register",
        "alice",
        "--server",
        cli.server_url,
        "--profile",
        str(profiles("alice2")),
        "--no-passphrase",
    )
    _one_line_error(result, "taken")
    assert not profiles("alice2").exists()


def test_cli_unreachable_server_fails_clearly(cli: Cli, profiles) -> None:  # type: ignore[no-untyped-def]
    """A server nobody listens on is one line: cannot reach."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = cli(
        "register",
        "carol",
        "--server",
        f"http://127.0.0.1:{port}",
        "--profile",
        str(profiles("carol")),
        "--no-passphrase",
    )
    _one_line_error(result, "cannot reach")
    assert not profiles("carol").exists()


def test_cli_wrong_passphrase_fails_and_shows_nothing(cli: Cli, profiles) -> None:  # type: ignore[no-untyped-def]
    """A profile opened with the wrong passphrase says so and prints no history."""
    dave = profiles("dave")
    made = cli(
        "register",
        "dave",
        "--server",
        cli.server_url,
        "--profile",
        str(dave),
        passphrase="right passphrase",
    )
    assert made.returncode == 0, made.stderr
    assert cli("whoami", "--profile", str(dave), passphrase="right passphrase").returncode == 0
    result = cli("history", "alice", "--profile", str(dave), passphrase="wrong passphrase")
    _one_line_error(result, "wrong passphrase")
    assert result.stdout == ""


def test_cli_missing_passphrase_without_terminal_says_how_to_give_one(cli: Cli, profiles) -> None:  # type: ignore[no-untyped-def]
    """No terminal and no OBROLAN_PASSPHRASE: the error names the variable."""
    result = cli("register", "erin", "--server", cli.server_url, "--profile", str(profiles("erin")))
    _one_line_error(result, "OBROLAN_PASSPHRASE")


def test_cli_missing_profile_says_register_first(cli: Cli, profiles) -> None:  # type: ignore[no-untyped-def]
    """Using a profile folder that holds nothing points to `obrolan register`."""
    _one_line_error(cli("sync", "--profile", str(profiles("ghost"))), "register")


def test_cli_refuses_plain_http_to_a_remote_host(cli: Cli, profiles) -> None:  # type: ignore[no-untyped-def]
    """Plain http to a non-loopback host is refused unless --insecure is given."""
    result = cli(
        "register",
        "frank",
        "--server",
        "http://chat.example.org",
        "--profile",
        str(profiles("frank")),
        "--no-passphrase",
    )
    _one_line_error(result, "refusing plain http", "--insecure")


def test_cli_bad_arguments_exit_with_usage(cli: Cli) -> None:
    """Unknown verbs and missing arguments exit 2 with argparse's usage line."""
    assert cli("frobnicate").returncode == 2
    assert cli("send").returncode == 2
    bad_name = cli(
        "register",
        "Not Valid!",
        "--server",
        cli.server_url,
        "--no-passphrase",
        "--profile",
        "/tmp/never-created-obrolan",
    )
    _one_line_error(bad_name, "invalid username")


def test_cli_warns_when_a_contacts_identity_key_changes(
    server,
    cli: Cli,
    two: tuple[Path, Path],
    profiles,  # type: ignore[no-untyped-def]
) -> None:
    """If the operator hands bob's name to a new key, alice's client warns instead of trusting it."""
    alice, bob = two
    assert cli("send", "bob", "hi", "--profile", str(alice)).returncode == 0
    assert cli("sync", "--profile", str(bob)).returncode == 0

    # A hostile operator deletes bob's account in the database and lets someone else take the name.
    server.stop()
    with sqlite3.connect(server.data_dir / "obrolan.db") as db:
        db.execute("PRAGMA foreign_keys = ON")  # devices, keys and mailbox rows cascade
        db.execute("DELETE FROM accounts WHERE username = 'bob'")
    server.start()
    impostor = profiles("impostor")
    cli.register("bob", impostor)
    assert cli("send", "alice", "trust me", "--profile", str(impostor)).returncode == 0

    synced = cli("sync", "--profile", str(alice))
    assert "account key has changed" in synced.stdout
    (contact,) = cli("contacts", "--json", "--profile", str(alice)).json()
    assert contact["key_changed"] is True
    impostor_key = cli("whoami", "--json", "--profile", str(impostor)).json()["account_key"]
    assert contact["changed_key"] == impostor_key
    number = cli("safety-number", "bob", "--json", "--profile", str(alice)).json()
    assert number["key_changed"] is True
    impostors_view = cli("safety-number", "alice", "--json", "--profile", str(impostor)).json()
    assert number["safety_number"] == impostors_view["safety_number"]  # covers the new key
