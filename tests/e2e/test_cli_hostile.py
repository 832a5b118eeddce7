"""A hostile sender cannot forge what bob's terminal shows (docs/security.md, the terminal).

mallory is a real in-process client; bob is the real `obrolan` command. Everything
mallory controls (message text, file name, reaction, group title, description,
rules, reasons, a device name in bob's own account) carries ESC sequences, a
carriage return, C1 and DEL, bidi overrides and a newline that starts a forged
line. bob's outputs hold none of those characters (only the newlines the CLI
writes), the forged line is indented under its message, and --json has the exact
text.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from obrolan.cli.safe_text import CONTINUATION, columns
from obrolan.client import Client
from obrolan.crypto.account import LinkCode
from obrolan.protocol import groups
from tests.e2e.conftest import Cli
from tests.support.server import ServerProcess
from tests.support.shim import MaliciousServer

FORGED = "2026-12-03 08:30 [deadbeef] alice: mallory is fine, send her the code"
HOSTILE = (
    "hi\x1b[2J\x1b[H\x1b[1;31m⚠ your key changed, run obrolan trust mallory\x1b[0m"
    f"\n{FORGED}"
    "\r\x9b2J \x1b]52;c;cHduZWQ=\x07 \u202egnp.exe\u202c \u2066x\u2069 \x7f\x08 end"
)
HOSTILE_NAME = "file\x1b[2J\u202etxt.exe\n2026 alice: hi\x9b"
HOSTILE_TITLE = "team\x1b[31m\u202eevil\n#99 forged"
HOSTILE_REASON = "because\x1b[2J\n#7    2026-12-03 08:30 UTC  bob promoted mallory"
HOSTILE_EMOJI = "\x1b[2J\u202e👍\n"
HOSTILE_DEVICE = "phone\x1b[2J\u202e\n2026 bob: device ok\x7f"

BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def assert_inert(output: str) -> None:
    """No C0 (but the CLI's newlines), DEL, C1 or bidi control in ``output``."""
    bad = sorted(
        {
            f"U+{ord(c):04X}"
            for c in output
            if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F or ord(c) in BIDI
        }
    )
    assert not bad, (bad, output)


def assert_forged_line_indented(output: str, forged: str = FORGED) -> None:
    """Every line holding the forged text starts with the continuation mark."""
    holding = [line for line in output.splitlines() if forged in line]
    assert holding, output
    assert all(line.startswith(CONTINUATION) for line in holding), holding


@pytest.fixture
async def mallory(
    server: ServerProcess, cli: Cli, profiles: Callable[[str], Path]
) -> AsyncIterator[Client]:
    """bob (a CLI profile, who accepted mallory) and mallory (an in-process client)."""
    cli.register("bob", profiles("bob"), accept=("mallory",))
    client = await Client.register(profiles("mallory"), server.url, "mallory", None)
    client.accept("bob")
    try:
        yield client
    finally:
        await client.close()


def bob_runs(cli: Cli, profiles: Callable[[str], Path], *args: str) -> str:
    result = cli(*args, "--profile", str(profiles("bob")))
    assert result.returncode == 0, result.stderr
    assert_inert(result.stderr)
    return result.stdout


async def test_hostile_message_file_and_reaction_are_inert_in_sync_and_history(
    cli: Cli, profiles: Callable[[str], Path], mallory: Client, tmp_path: Path
) -> None:
    """sync and history show mallory's text, file name and reaction defused; --json keeps them."""
    await asyncio.to_thread(bob_runs, cli, profiles, "send", "mallory", "hello mallory")
    await mallory.sync(30)
    [hello] = [m for m in mallory.history("bob") if m.text == "hello mallory"]
    await mallory.react(hello, HOSTILE_EMOJI)
    await mallory.send("bob", HOSTILE)
    hostile_file = tmp_path / HOSTILE_NAME
    hostile_file.write_bytes(b"not an exe")
    await mallory.send_file("bob", hostile_file, "the file")
    await mallory.flush(30)

    synced = await asyncio.to_thread(bob_runs, cli, profiles, "sync")
    history = await asyncio.to_thread(bob_runs, cli, profiles, "history", "mallory")
    for output in (synced, history):
        assert_inert(output)
        assert_forged_line_indented(output)
        assert "\\x1b[2J" in output and "\\u202egnp.exe" in output
    assert "file\\x1b[2J\\u202etxt.exe\\n2026 alice: hi\\x9b" in history
    assert "\\x1b[2J\\u202e👍\\n mallory" in history

    as_json = json.loads(
        await asyncio.to_thread(bob_runs, cli, profiles, "history", "mallory", "--json")
    )
    assert [m["text"] for m in as_json if m["sender"] == "mallory"] == [HOSTILE, "the file"]
    assert as_json[-1]["attachment"]["name"] == HOSTILE_NAME
    [mine] = [m for m in as_json if m["text"] == "hello mallory"]
    assert mine["reactions"] == {"mallory": HOSTILE_EMOJI}
    raw = await asyncio.to_thread(
        cli, "history", "mallory", "--json", "--profile", str(profiles("bob"))
    )
    assert_inert(raw.stdout.replace("\n", ""))

    found = await asyncio.to_thread(bob_runs, cli, profiles, "search", "obrolan", "trust")
    assert_inert(found)
    assert "[obrolan] [trust] mallory" in found and len(found.splitlines()) == 1
    found_json = json.loads(
        await asyncio.to_thread(bob_runs, cli, profiles, "search", "trust", "--json")
    )
    assert [hit["text"] for hit in found_json] == [HOSTILE]

    [filed] = [m for m in as_json if m["text"] == "the file"]
    saved = await asyncio.to_thread(
        bob_runs,
        cli,
        profiles,
        "download",
        filed["message_id"][:8],
        "--out",
        str(tmp_path / "out.bin"),
    )
    assert_inert(saved)


async def test_hostile_group_fields_are_inert_in_group_info_log_history_and_list(
    cli: Cli, profiles: Callable[[str], Path], mallory: Client
) -> None:
    """A group's title, description, rules, reasons, messages and reports from mallory are
    shown defused."""
    view = await mallory.groups.create(HOSTILE_TITLE, ["bob"])
    group_id = view.group_id
    await mallory.groups.act(
        group_id, groups.EditInfo(description=HOSTILE, rules=HOSTILE), HOSTILE_REASON
    )
    await mallory.groups.act(group_id, groups.Promote(user="bob"), HOSTILE_REASON)
    await mallory.groups.send(group_id, HOSTILE)
    [posted] = [m for m in mallory.groups.history(group_id) if m.text == HOSTILE]
    assert await mallory.groups.report(group_id, posted, HOSTILE_REASON) == 1
    await mallory.flush(30)
    synced = await asyncio.to_thread(bob_runs, cli, profiles, "sync")
    assert_inert(synced)
    assert_forged_line_indented(synced)

    for verb in ("info", "log", "history", "reports"):
        output = await asyncio.to_thread(bob_runs, cli, profiles, "group", verb, group_id[:12])
        assert_inert(output)
        if verb != "log":
            assert_forged_line_indented(output)
        if verb == "reports":
            assert "because\\x1b[2J\\n#7" in output
    log = await asyncio.to_thread(bob_runs, cli, profiles, "group", "log", group_id[:12])
    assert_forged_line_indented(log, "#7    2026-12-03 08:30 UTC  bob promoted mallory")
    listed = await asyncio.to_thread(bob_runs, cli, profiles, "group", "list")
    assert_inert(listed)
    assert "team\\x1b[31m\\u202eevil\\n#99 forged" in listed and len(listed.splitlines()) == 1

    info = json.loads(
        await asyncio.to_thread(bob_runs, cli, profiles, "group", "info", group_id[:12], "--json")
    )
    assert (info["title"], info["description"], info["rules"]) == (HOSTILE_TITLE, HOSTILE, HOSTILE)
    log_json = json.loads(
        await asyncio.to_thread(bob_runs, cli, profiles, "group", "log", group_id[:12], "--json")
    )
    assert log_json[-1]["entry"].endswith(HOSTILE_REASON)


async def test_hostile_message_is_inert_in_listen(
    cli: Cli, profiles: Callable[[str], Path], mallory: Client
) -> None:
    """`listen` prints mallory's live message defused: no screen cleared, forged line indented."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBROLAN_")}
    listener = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "obrolan",
        "listen",
        "--profile",
        str(profiles("bob")),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert listener.stderr is not None and listener.stdout is not None
    try:
        started = await asyncio.wait_for(listener.stderr.readline(), 60)
        assert b"listening as bob" in started
        await mallory.send("bob", HOSTILE + " live")
        await mallory.flush(30)
        shown: list[str] = []
        while not shown or "end live" not in shown[-1]:
            line = await asyncio.wait_for(listener.stdout.readline(), 60)
            assert line, "listen ended early"
            shown.append(line.decode())
    finally:
        listener.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(listener.communicate(), 30)
    output = "".join(shown)
    assert b"Traceback" not in err
    assert_inert(output)
    assert_forged_line_indented(output)


async def test_hostile_device_name_is_inert_in_devices_and_approve(
    server: ServerProcess, cli: Cli, profiles: Callable[[str], Path], mallory: Client
) -> None:
    """A device asking into bob's account with a hostile name is shown defused, when approved
    and in `devices`; --json has the exact name."""
    codes: asyncio.Queue[LinkCode] = asyncio.Queue()
    linking = asyncio.create_task(
        Client.link(
            profiles("bob-phone"),
            server.url,
            "bob",
            None,
            codes.put_nowait,
            device_name=HOSTILE_DEVICE,
        )
    )
    code = await asyncio.wait_for(codes.get(), 15)
    approved = await asyncio.to_thread(
        cli, "devices", "approve", str(code), "--profile", str(profiles("bob"))
    )
    assert approved.returncode == 0, approved.stderr
    assert_inert(approved.stderr)
    phone = await asyncio.wait_for(linking, 15)
    await phone.close()
    listed = await asyncio.to_thread(bob_runs, cli, profiles, "devices")
    assert_inert(listed)
    assert "phone\\x1b[2J\\u202e\\n2026 bob: device ok\\x7f" in listed
    assert len(listed.splitlines()) == 2
    as_json = json.loads(await asyncio.to_thread(bob_runs, cli, profiles, "devices", "--json"))
    assert HOSTILE_DEVICE in [d["name"] for d in as_json]


async def test_hostile_server_error_text_is_inert_on_stderr(
    server: ServerProcess, cli: Cli, profiles: Callable[[str], Path]
) -> None:
    """A server's refusal text with ESC, a newline and an override stays one inert line."""
    hostile_error = "no device\x1b[2J\n2026-12-03 08:30 [deadbeef] alice: hi\u202e\x9b"
    async with MaliciousServer(server.ws_url) as shim:
        shim.rewrite = lambda frame: (
            {**frame, "code": "bad_device_list", "message": hostile_error}
            if frame.get("type") == "error"
            else frame
        )
        carol = profiles("carol")
        made = await asyncio.to_thread(
            cli,
            "register",
            "carol",
            "--server",
            shim.url,
            "--profile",
            str(carol),
            "--no-passphrase",
        )
        assert made.returncode == 0, made.stderr
        refused = await asyncio.to_thread(
            cli, "devices", "approve", "AAAA-BBBB-CCCC-DDDD-EEEE-FFFF", "--profile", str(carol)
        )
    assert refused.returncode == 1
    assert_inert(refused.stderr)
    assert "no device\\x1b[2J\\n2026-12-03" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def on_terminal(*args: str, width: int) -> str:
    """Run ``obrolan ARGS`` with its stdout on a pseudo-terminal ``width`` columns wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, width, 0, 0))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OBROLAN_") and k not in ("COLUMNS", "LINES")
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "obrolan", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0 and b"Traceback" not in err, err
    return b"".join(chunks).decode().replace("\r\n", "\n")


async def test_padding_to_the_terminal_width_cannot_put_a_forged_line_at_column_0(
    cli: Cli, profiles: Callable[[str], Path], mallory: Client
) -> None:
    """Spaces that fill bob's 80-column row end in a break: the forged text is indented."""
    prefix = "2026-12-03 08:30 [abcdefgh] mallory: "  # what history prints before the text
    padded = "ok" + " " * (80 - len(prefix) - 2) + FORGED
    await mallory.send("bob", padded)
    await mallory.flush(30)
    await asyncio.to_thread(bob_runs, cli, profiles, "sync")
    shown_at_80 = ""
    for width in (80, 100):
        shown = await asyncio.to_thread(
            on_terminal, "history", "mallory", "--profile", str(profiles("bob")), width=width
        )
        assert_inert(shown)
        rows = shown.splitlines()
        assert all(sum(map(columns, row)) <= width for row in rows), shown
        assert not any(row.startswith(FORGED[:20]) for row in rows), shown
        shown_at_80 = shown_at_80 or shown
    assert_forged_line_indented(shown_at_80, FORGED[:20])
