"""`obrolan search`, `export` and `import` as a person uses them, after a real chat."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from obrolan.cli.archive_commands import ARCHIVE_PASSPHRASE_ENV
from obrolan.client import Client
from tests.e2e.conftest import CLI_TIMEOUT, Cli, CliResult
from tests.support.server import ServerProcess

ARCHIVE_PASSPHRASE = "correct horse battery"


def _with_archive_passphrase(passphrase: str, *args: str) -> CliResult:
    """The real `obrolan` command with $OBROLAN_ARCHIVE_PASSPHRASE set (Cli passes none)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBROLAN_")}
    env[ARCHIVE_PASSPHRASE_ENV] = passphrase
    done = subprocess.run(
        [sys.executable, "-m", "obrolan", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return CliResult(done.returncode, done.stdout, done.stderr)


def _json(result: CliResult) -> Any:
    assert result.returncode == 0, result.stderr
    return result.json()


def _one_line_error(result: CliResult, *needles: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


async def _chat(alice: Client, bob: Client, menu: Path) -> str:
    """A short real conversation: a reply, a reaction, an edit, a delete, a file.

    Returns the file's message id, once alice's device holds the file.
    """
    first = await alice.send("bob", "lunch tomorrow at the noodle bar?")
    await alice.flush(timeout=30)
    await bob.sync()
    await bob.send("alice", "yes, noon works for me", reply_to=first.message_id)
    await bob.react(bob.resolve(first.message_id), "👍")
    await bob.flush(timeout=30)
    await alice.sync()
    await alice.edit(alice.resolve(first.message_id), "lunch tomorrow at the ramen bar?")
    oops = await alice.send("bob", "wrong chat, sorry")
    await alice.delete(oops)
    await alice.send("bob", "bring the umbrella ☔")
    await alice.flush(timeout=30)
    await bob.sync()
    sent = await bob.send_file("alice", menu, "the menu")
    await bob.flush(timeout=30)  # the file, and the read receipts
    await alice.sync()
    stored = alice.profile_dir / "attachments" / _blob_id(alice, sent.message_id)
    deadline = asyncio.get_running_loop().time() + 30
    while not stored.exists():  # fetched in the background after the sync
        assert asyncio.get_running_loop().time() < deadline, "the file never arrived"
        await asyncio.sleep(0.05)
    return sent.message_id


def _blob_id(client: Client, message_id: str) -> str:
    attachment = client.resolve(message_id).attachment
    assert attachment is not None
    return str(attachment["blob_id"])


async def test_archive_cli_export_then_import_gives_identical_history(
    pair: tuple[Client, Client],
    cli: Cli,
    server: ServerProcess,
    server_factory: Callable[..., ServerProcess],
    profiles: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    """alice's history, exported and imported into a new profile offline, is the same history."""
    alice, bob = pair
    menu = tmp_path / "menu.txt"
    menu.write_bytes(b"ramen, gyoza, tea\n" * 1000)
    file_message = await _chat(alice, bob, menu)
    blob_id = _blob_id(alice, file_message)
    await alice.close()  # the CLI opens the same profiles next
    await bob.close()
    source, restored = profiles("alice"), profiles("alice-restored")
    elsewhere = server_factory(name="server2")
    made = cli(
        "register",
        "alice",
        "--server",
        elsewhere.url,
        "--profile",
        str(restored),
        "--no-passphrase",
    )
    assert made.returncode == 0, made.stderr
    # Showing history marks bob's messages read: show it once before the export.
    assert cli("history", "bob", "--profile", str(source)).returncode == 0
    history = cli("history", "bob", "--json", "--profile", str(source))
    assert history.returncode == 0, history.stderr
    assert len(_json(history)) == 5
    server.stop()  # export and import never talk to a server
    elsewhere.stop()

    archive = tmp_path / "alice.obrolan"
    exported = _with_archive_passphrase(
        ARCHIVE_PASSPHRASE, "export", "--out", str(archive), "--profile", str(source)
    )
    assert exported.returncode == 0, exported.stderr
    assert f"exported 5 messages and 1 files to {archive}" in exported.stdout
    assert "export  100% [####################] 6/6 messages and files" in exported.stderr
    assert b"noodle" not in archive.read_bytes() and b"ramen" not in archive.read_bytes()

    imported = _with_archive_passphrase(
        ARCHIVE_PASSPHRASE, "import", str(archive), "--profile", str(restored)
    )
    assert imported.returncode == 0, imported.stderr
    assert "imported 5 messages and 1 files of alice's history" in imported.stdout
    again = cli("history", "bob", "--json", "--profile", str(restored))
    assert again.returncode == 0, again.stderr
    assert again.json() == history.json()
    stored = Path("attachments") / blob_id
    assert (restored / stored).read_bytes() == (source / stored).read_bytes()
    opened = cli(
        "download",
        file_message,
        "--out",
        str(tmp_path / "menu-again.txt"),
        "--profile",
        str(restored),
    )
    assert opened.returncode == 0, opened.stderr
    assert (tmp_path / "menu-again.txt").read_bytes() == menu.read_bytes()

    repeated = _json(
        _with_archive_passphrase(
            ARCHIVE_PASSPHRASE, "import", str(archive), "--profile", str(restored), "--json"
        )
    )
    assert (repeated["messages"], repeated["messages_present"]) == (0, 5)
    assert cli("history", "bob", "--json", "--profile", str(restored)).json() == history.json()

    found = cli("search", "ramen", "--profile", str(restored))
    assert found.returncode == 0, found.stderr
    (line,) = found.stdout.splitlines()
    assert "alice → bob: lunch tomorrow at the [ramen] bar?" in line
    assert cli("search", "noodle", "--profile", str(restored)).stdout == ""  # edited away
    assert cli("search", "wrong chat", "--profile", str(restored)).stdout == ""  # deleted


async def test_archive_cli_search_ranks_with_context_and_filters(
    pair: tuple[Client, Client], cli: Cli, profiles: Callable[[str], Path], tmp_path: Path
) -> None:
    """`obrolan search` shows the match in context; --with keeps one conversation; --json too."""
    alice, bob = pair
    menu = tmp_path / "menu.txt"
    menu.write_text("ramen\n")
    await _chat(alice, bob, menu)
    await alice.close()
    await bob.close()
    bob_profile = str(profiles("bob"))
    found = cli("search", "noon", "--profile", bob_profile)
    assert found.returncode == 0, found.stderr
    (line,) = found.stdout.splitlines()
    assert "bob → alice: yes, [noon] works for me" in line
    hits = _json(cli("search", "umbr", "--with", "alice", "--json", "--profile", bob_profile))
    assert [(h["sender"], h["snippet"]) for h in hits] == [("alice", "bring the [umbrella] ☔")]
    nothing = cli("search", "umbrella", "--with", "carol", "--profile", bob_profile)
    assert nothing.returncode == 0 and nothing.stdout == ""
    assert "no messages with carol match 'umbrella'" in nothing.stderr
    odd = cli("search", '"umbrella" NEAR(', "--profile", bob_profile)
    assert odd.returncode == 0 and odd.stdout == ""  # user text, never FTS5 syntax
    _one_line_error(cli("search", "   ", "--profile", bob_profile), "nothing to search for")


def test_archive_cli_search_with_wrong_passphrase_shows_nothing(
    cli: Cli, profiles: Callable[[str], Path]
) -> None:
    """A store opened with the wrong passphrase says so and prints no result."""
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
    cli.register("erin", profiles("erin"))
    sent = cli(
        "send", "erin", "the secret plans", "--profile", str(dave), passphrase="right passphrase"
    )
    assert sent.returncode == 0, sent.stderr
    wrong = cli("search", "secret", "--profile", str(dave), passphrase="wrong passphrase")
    _one_line_error(wrong, "wrong passphrase")
    assert wrong.stdout == ""
    right = cli("search", "secret", "--profile", str(dave), passphrase="right passphrase")
    assert "dave → erin: the [secret] plans" in right.stdout


def test_archive_cli_refuses_clearly(
    cli: Cli, profiles: Callable[[str], Path], tmp_path: Path
) -> None:
    """Existing file, short or wrong archive passphrase, not an archive: one line each."""
    alice = profiles("alice")
    cli.register("alice", alice)
    archive = tmp_path / "alice.obrolan"
    archive.write_text("my notes")
    p = ("--profile", str(alice))
    _one_line_error(
        _with_archive_passphrase(ARCHIVE_PASSPHRASE, "export", "--out", str(archive), *p),
        "already exists",
        "--force",
    )
    assert archive.read_text() == "my notes"
    _one_line_error(
        _with_archive_passphrase(ARCHIVE_PASSPHRASE, "import", str(archive), *p),
        "not an obrolan archive",
    )
    _one_line_error(
        _with_archive_passphrase("short", "export", "--out", str(archive), "--force", *p),
        "at least 8",
    )
    _one_line_error(cli("export", "--out", str(tmp_path / "x.obrolan"), *p), ARCHIVE_PASSPHRASE_ENV)
    forced = _with_archive_passphrase(
        ARCHIVE_PASSPHRASE, "export", "--out", str(archive), "--force", *p
    )
    assert forced.returncode == 0, forced.stderr
    wrong = _with_archive_passphrase("another passphrase", "import", str(archive), *p)
    _one_line_error(wrong, "wrong passphrase")
    _one_line_error(
        _with_archive_passphrase(ARCHIVE_PASSPHRASE, "import", str(tmp_path / "none"), *p),
        "no archive at",
    )
