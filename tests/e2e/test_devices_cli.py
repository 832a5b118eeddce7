"""The device, recovery and group verbs of the `obrolan` command, as a person uses them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import Cli

CODE = re.compile(r"Recovery code: ([A-Z2-7]{4}(?:-[A-Z2-7]{4}){5})")


def register(cli: Cli, name: str, profile: Path) -> str:
    """Register and return the recovery code the command showed once."""
    result = cli.register(name, profile)
    match = CODE.search(result.stdout)
    assert match is not None, result.stdout
    assert "shown only this once" in result.stdout
    return match[1]


def test_devices_list_rename_and_remove(cli: Cli, profiles) -> None:  # type: ignore[no-untyped-def]
    laptop = profiles("laptop")
    register(cli, "alice", laptop)
    [me] = cli("devices", "--json", "--profile", str(laptop)).json()
    assert me["current"] and me["last_active"] is not None
    renamed = cli("devices", "rename", me["device_id"], "work laptop", "--profile", str(laptop))
    assert renamed.returncode == 0, renamed.stderr
    listed = cli("devices", "--profile", str(laptop))
    assert "work laptop" in listed.stdout and "(this device)" in listed.stdout
    refused = cli("devices", "remove", me["device_id"], "--profile", str(laptop))
    assert refused.returncode == 1 and "the device you are using" in refused.stderr
    too_long = cli("devices", "rename", me["device_id"], "x" * 65, "--profile", str(laptop))
    assert too_long.returncode == 1 and "1 to 64 characters" in too_long.stderr
    unnamed = cli(
        "register",
        "bob",
        "--server",
        cli.server_url,
        "--name",
        " ",
        "--profile",
        str(profiles("bob")),
        "--no-passphrase",
    )
    assert unnamed.returncode == 1 and "1 to 64 characters" in unnamed.stderr
    assert not (profiles("bob") / "profile.json").exists()
    unknown = cli("devices", "remove", "nosuchdevice", "--profile", str(laptop))
    assert unknown.returncode == 1 and "no device 'nosuchdevice'" in unknown.stderr
    wrong = cli("devices", "approve", "AAAA-BBBB-CCCC-DDDD-EEEE-FFFF", "--profile", str(laptop))
    assert wrong.returncode == 1 and "no new device waits with that link code" in wrong.stderr


def test_recover_rotate_and_trust(cli: Cli, profiles) -> None:  # type: ignore[no-untyped-def]
    alice, bob = profiles("alice"), profiles("bob")
    first_code = register(cli, "alice", alice)
    register(cli, "bob", bob)
    assert cli("send", "alice", "hi", "--profile", str(bob)).returncode == 0
    rotated = cli("recovery-code", "--rotate", "--profile", str(alice))
    assert rotated.returncode == 0, rotated.stderr
    new_code = CODE.search(rotated.stdout)
    assert new_code is not None and new_code[1] != first_code
    shutil.rmtree(alice)

    stale = cli(
        "recover",
        "alice",
        "--server",
        cli.server_url,
        "--profile",
        str(alice),
        "--no-passphrase",
        env_extra={"OBROLAN_RECOVERY_CODE": first_code},
    )
    assert stale.returncode == 1 and "recovery code is wrong" in stale.stderr
    malformed = cli(
        "recover",
        "alice",
        "--server",
        cli.server_url,
        "--profile",
        str(alice),
        "--no-passphrase",
        env_extra={"OBROLAN_RECOVERY_CODE": "letmein"},
    )
    assert malformed.returncode == 1 and "24 letters" in malformed.stderr
    recovered = cli(
        "recover",
        "alice",
        "--server",
        cli.server_url,
        "--profile",
        str(alice),
        "--no-passphrase",
        env_extra={"OBROLAN_RECOVERY_CODE": new_code[1]},
    )
    assert recovered.returncode == 0, recovered.stderr
    assert "account key changed" in recovered.stdout and CODE.search(recovered.stdout)

    sent = cli("send", "alice", "who is this?", "--profile", str(bob))
    assert sent.returncode == 4, sent.stderr  # held, verified or not, until bob trusts
    assert "obrolan trust alice" in sent.stderr
    contacts = cli("contacts", "--profile", str(bob))
    assert "account key changed" in contacts.stdout and "obrolan trust alice" in contacts.stdout
    trusted = cli("trust", "alice", "--profile", str(bob))
    assert trusted.returncode == 0 and "accepted alice's new account key" in trusted.stdout
    again = cli("trust", "alice", "--profile", str(bob))
    assert "nothing to accept" in again.stderr


def test_group_verbs(cli: Cli, profiles) -> None:  # type: ignore[no-untyped-def]
    alice, bob = profiles("alice"), profiles("bob")
    register(cli, "alice", alice)
    register(cli, "bob", bob)
    created = cli(
        "group", "create", "Book club", "--members", "bob", "--json", "--profile", str(alice)
    )
    assert created.returncode == 0, created.stderr
    group_id = created.json()["group_id"]  # type: ignore[index]
    assert cli("sync", "--profile", str(bob)).returncode == 0
    info = cli("group", "info", "Book club", "--profile", str(bob))
    assert "alice  owner" in info.stdout and "bob  member" in info.stdout
    posted = cli("send", "--group", group_id[:8], "chapter one is great", "--profile", str(bob))
    assert posted.returncode == 0, posted.stderr
    synced = cli("sync", "--profile", str(alice))
    assert f"#{group_id[:8]} bob" in synced.stdout and "chapter one is great" in synced.stdout
    muted = cli(
        "group",
        "mute",
        "Book club",
        "bob",
        "--for",
        "1h",
        "--reason",
        "spoilers",
        "--profile",
        str(alice),
    )
    assert muted.returncode == 0, muted.stderr
    assert cli("sync", "--profile", str(bob)).returncode == 0
    refused = cli("send", "--group", "Book club", "chapter two…", "--profile", str(bob))
    assert refused.returncode == 1 and "muted" in refused.stderr
    log = cli("group", "log", "Book club", "--profile", str(bob))
    assert "alice muted bob" in log.stdout and "spoilers" in log.stdout
    not_admin = cli("group", "remove", "Book club", "alice", "--profile", str(bob))
    assert not_admin.returncode == 1 and "Traceback" not in not_admin.stderr
    unknown = cli("group", "info", "No such club", "--profile", str(bob))
    assert unknown.returncode == 1 and "no group" in unknown.stderr
    nothing_held = cli("group", "release", "Book club", "--profile", str(bob))
    assert nothing_held.returncode == 0 and "nothing waits" in nothing_held.stderr


def test_link_shows_a_qr_code_and_the_code(cli: Cli, profiles) -> None:  # type: ignore[no-untyped-def]
    register(cli, "alice", profiles("laptop"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBROLAN_")}
    waiting = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "obrolan",
            "link",
            "--user",
            "alice",
            "--server",
            cli.server_url,
            "--profile",
            str(profiles("phone")),
            "--no-passphrase",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stdout is not None
        lines = []
        while not any(line.startswith("Link code:") for line in lines):
            line = waiting.stdout.readline()
            assert line, "the command ended before showing a code"
            lines.append(line)
        assert sum("█" in line or "▀" in line or "▄" in line for line in lines) > 10  # the QR
        assert re.fullmatch(r"Link code: [A-Z2-7]{4}(-[A-Z2-7]{4}){5}\n", lines[-1])
    finally:
        waiting.kill()
        waiting.wait()
    assert not (profiles("phone") / "profile.json").exists()  # nothing kept without approval


def test_group_moderation_verbs(cli: Cli, profiles) -> None:  # type: ignore[no-untyped-def]
    alice, bob, carol = profiles("alice"), profiles("bob"), profiles("carol")
    for name, profile in (("alice", alice), ("bob", bob), ("carol", carol)):
        register(cli, name, profile)
    assert (
        cli("group", "create", "Club", "--members", "bob", "--profile", str(alice)).returncode == 0
    )
    link = cli("group", "invite", "Club", "--expires", "1h", "--profile", str(alice)).stdout.strip()
    assert link.startswith("obrolan://join?")
    assert cli("group", "join", link, "--profile", str(carol)).returncode == 0
    assert cli("sync", "--profile", str(alice)).returncode == 0
    assert cli("group", "requests", "Club", "--profile", str(alice)).stdout.split() == ["carol"]
    approved = cli(
        "group", "approve", "Club", "carol", "--reason", "friend", "--profile", str(alice)
    )
    assert approved.returncode == 0, approved.stderr
    for profile in (bob, carol):
        assert cli("sync", "--profile", str(profile)).returncode == 0
    assert cli("send", "--group", "Club", "rude words", "--profile", str(bob)).returncode == 0
    assert cli("sync", "--profile", str(carol)).returncode == 0
    [rude] = [
        m
        for m in cli("group", "history", "Club", "--json", "--profile", str(carol)).json()
        if m["text"] == "rude words"
    ]  # type: ignore[index, union-attr]
    reported = cli(
        "group",
        "report",
        "Club",
        rude["message_id"][:8],
        "--reason",
        "insults",
        "--profile",
        str(carol),
    )
    assert reported.returncode == 0 and "reported to 1 admin" in reported.stdout
    assert cli("sync", "--profile", str(alice)).returncode == 0
    reports = cli("group", "reports", "Club", "--profile", str(alice))
    assert "carol reported bob" in reports.stdout and "signature verified" in reports.stdout
    deleted = cli(
        "group",
        "delete",
        "Club",
        rude["message_id"][:8],
        "--reason",
        "insults",
        "--profile",
        str(alice),
    )
    assert deleted.returncode == 0, deleted.stderr
    # bob leaves before his device learns of the deletion: two updates at the same seq.
    # The owner's counts everywhere; bob's device makes his leaving again on top of it.
    left = cli("group", "leave", "Club", "--profile", str(bob))
    assert left.returncode == 0, left.stderr
    for profile in (alice, carol, bob, alice, carol):
        assert cli("sync", "--profile", str(profile)).returncode == 0
    log = cli("group", "log", "Club", "--profile", str(carol)).stdout
    assert "alice approved carol" in log and "deleted a message of bob" in log
    assert "bob left" in log
    info = cli("group", "info", "Club", "--json", "--profile", str(carol)).json()
    assert sorted(info["members"]) == ["alice", "carol"]  # type: ignore[index]


def test_a_group_update_stored_before_a_crash_is_applied_on_the_next_run(
    cli: Cli,
    profiles,  # type: ignore[no-untyped-def]
) -> None:
    """bob's device is killed right after it stored the group's state and before it
    applied it; the next run applies it (it was acked, so the server has it no more)."""
    alice, bob = profiles("alice"), profiles("bob")
    register(cli, "alice", alice)
    register(cli, "bob", bob)
    assert (
        cli("group", "create", "Club", "--members", "bob", "--profile", str(alice)).returncode == 0
    )
    killed = cli("sync", "--profile", str(bob), failpoints="inbox.after_store")
    assert killed.returncode == -9
    assert cli("group", "info", "Club", "--profile", str(bob)).returncode == 1  # not applied yet
    assert cli("sync", "--profile", str(bob)).returncode == 0
    info = cli("group", "info", "Club", "--profile", str(bob))
    assert info.returncode == 0 and "alice  owner" in info.stdout


def test_link_and_recover_without_a_terminal_say_what_to_give(cli: Cli, profiles) -> None:  # type: ignore[no-untyped-def]
    linked = cli(
        "link", "--server", cli.server_url, "--profile", str(profiles("x")), "--no-passphrase"
    )
    assert linked.returncode == 1 and "--user" in linked.stderr
    recovered = cli(
        "recover",
        "alice",
        "--server",
        cli.server_url,
        "--profile",
        str(profiles("y")),
        "--no-passphrase",
    )
    assert recovered.returncode == 1 and "OBROLAN_RECOVERY_CODE" in recovered.stderr


def test_a_link_code_that_expires_unapproved_says_so(server_factory, profiles) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--link-ttl", "1")
    waited = Cli(server.url)(
        "link",
        "--user",
        "alice",
        "--server",
        server.url,
        "--profile",
        str(profiles("phone")),
        "--no-passphrase",
    )
    assert waited.returncode == 1, waited.stderr
    assert "expired" in waited.stderr and "obrolan link" in waited.stderr
    assert not (profiles("phone") / "profile.json").exists()


def test_group_rotation_setting(cli: Cli, profiles) -> None:  # type: ignore[no-untyped-def]
    profile = profiles("alice")
    register(cli, "alice", profile)
    changed = cli("settings", "--group-rotation", "50,3d", "--json", "--profile", str(profile))
    assert changed.json()["group_rotation"] == {"messages": 50, "days": 3}  # type: ignore[index]
    bad = cli("settings", "--group-rotation", "lots", "--profile", str(profile))
    assert bad.returncode == 1 and "MESSAGES,DAYSd" in bad.stderr
