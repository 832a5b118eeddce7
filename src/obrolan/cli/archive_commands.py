"""Verbs over this device's history: search it, export it to an encrypted archive, import one.

None of them talks to the server. The archive's passphrase is its own: it comes
from ``$OBROLAN_ARCHIVE_PASSPHRASE`` or a prompt (asked twice on export), never
from the profile's passphrase.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import secrets
import sys
from datetime import datetime
from pathlib import Path

from obrolan.cli.common import ProgressBar, add_verb, passphrase_for, print_json
from obrolan.cli.render import SHORT_ID, show
from obrolan.cli.safe_text import one_line
from obrolan.client.archive import export_history, import_history
from obrolan.client.search import DEFAULT_MARKS, MAX_LIMIT, SearchHit, search
from obrolan.client.store import Store
from obrolan.client.vault import Vault, open_vault
from obrolan.errors import ConfigError

__all__ = ["ARCHIVE_PASSPHRASE_ENV", "add_parsers", "read_archive_passphrase"]

ARCHIVE_PASSPHRASE_ENV = "OBROLAN_ARCHIVE_PASSPHRASE"
MIN_ARCHIVE_PASSPHRASE = 8
"""Characters an export's passphrase needs at least: the archive may travel far."""
_BOLD = ("\x1b[1m", "\x1b[0m")


def read_archive_passphrase(*, confirm: bool) -> str:
    """``$OBROLAN_ARCHIVE_PASSPHRASE``, else a prompt on the terminal (twice if ``confirm``).

    Raises:
        ConfigError: no terminal and no variable, the two entries differ, or (``confirm``)
            the passphrase is shorter than MIN_ARCHIVE_PASSPHRASE.
    """
    passphrase = os.environ.get(ARCHIVE_PASSPHRASE_ENV)
    if passphrase is None:
        if not sys.stdin.isatty():
            raise ConfigError(
                f"an archive passphrase is needed: set {ARCHIVE_PASSPHRASE_ENV}, "
                f"or run in a terminal to be asked"
            )
        passphrase = getpass.getpass("Archive passphrase: ")
        if confirm and getpass.getpass("Archive passphrase again: ") != passphrase:
            raise ConfigError("the two archive passphrases differ")
    if confirm and len(passphrase) < MIN_ARCHIVE_PASSPHRASE:
        raise ConfigError(
            f"choose an archive passphrase of at least {MIN_ARCHIVE_PASSPHRASE} characters"
        )
    return passphrase


async def _open_store(profile: Path) -> Vault:
    """Open the profile's store (its passphrase as for every verb), schema up to date."""
    vault = await asyncio.to_thread(open_vault, profile, passphrase_for(profile))
    try:
        Store(vault)
    except BaseException:
        vault.close()
        raise
    return vault


def _format_hit(hit: SearchHit, marks: tuple[str, str], shown: tuple[str, str]) -> str:
    """A hit as one line; the snippet's ``marks`` become ``shown`` once the text is made safe."""
    when = datetime.fromtimestamp(hit.sent_at_ms / 1000).strftime("%Y-%m-%d %H:%M")
    sender, peer = one_line(hit.sender), one_line(hit.peer)
    arrow = sender if hit.sender == hit.peer else f"{sender} → {peer}"
    snippet = shown[0].join(
        shown[1].join(one_line(part) for part in piece.split(marks[1]))
        for piece in hit.snippet.split(marks[0])
    )
    return f"{when} [{one_line(hit.message_id[:SHORT_ID])}] {arrow}: {snippet}"


async def cmd_search(args: argparse.Namespace) -> int:
    query = " ".join(args.text)
    shown = _BOLD if sys.stdout.isatty() and not args.json else DEFAULT_MARKS
    # The snippet is the sender's text: it is made safe before the marks are drawn, so
    # they are words nobody can have typed, put in place of bold only after that.
    nonce = secrets.token_hex(8)
    marks = (f"\ue000{nonce}\ue001", f"\ue002{nonce}\ue003") if not args.json else shown
    with await _open_store(args.profile) as vault:
        hits = search(
            vault.connection, query, with_user=args.with_user, limit=args.limit, marks=marks
        )
    if args.json:
        print_json([hit.as_json() for hit in hits])
        return 0
    for hit in hits:
        show(_format_hit(hit, marks, shown))
    if not hits:
        where = f" with {args.with_user}" if args.with_user else ""
        print(f"no messages{where} match {query!r}", file=sys.stderr)
    return 0


async def cmd_export(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not args.force:
        raise ConfigError(
            f"{out} already exists; choose another file, or pass --force to replace it"
        )
    with await _open_store(args.profile) as vault:
        passphrase = read_archive_passphrase(confirm=True)
        bar = ProgressBar("export", sys.stderr, unit="messages and files")
        try:
            summary = await asyncio.to_thread(
                export_history, vault, out, passphrase, bar, overwrite=args.force
            )
        except BaseException:
            bar.abandon()
            raise
        bar.finish()
    if args.json:
        print_json(summary.as_json())
    else:
        print(
            f"exported {summary.messages:,} messages and {summary.files:,} files "
            f"to {out} ({summary.size:,} bytes, encrypted)"
        )
    return 0


async def cmd_import(args: argparse.Namespace) -> int:
    archive: Path = args.file
    if not archive.is_file():
        raise ConfigError(f"no archive at {archive}")
    with await _open_store(args.profile) as vault:
        me = Store(vault).get_meta("username")
        passphrase = read_archive_passphrase(confirm=False)
        bar = ProgressBar("import", sys.stderr, unit="messages and files")
        try:
            summary = await asyncio.to_thread(import_history, vault, archive, passphrase, bar)
        except BaseException:
            bar.abandon()
            raise
        bar.finish()
    if args.json:
        print_json(summary.as_json())
        return 0
    owner = one_line(summary.owner or "")  # an archive may be anyone's
    whose = f"{owner}'s " if owner else ""
    print(f"imported {summary.messages:,} messages and {summary.files:,} files of {whose}history")
    if summary.messages_present:
        print(f"{summary.messages_present:,} messages were already here and were kept as they are")
    if summary.messages_expired:
        print(f"{summary.messages_expired:,} disappearing messages had expired and were left out")
    if summary.owner and me and summary.owner != me:
        print(f"note: the history is {owner}'s; this profile is {me}'s", file=sys.stderr)
    return 0


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"use 1 to {MAX_LIMIT}")
    return value


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``search``, ``export`` and ``import`` verbs."""
    p = add_verb(sub, "search", cmd_search, "search this device's messages, best matches first")
    p.add_argument("text", nargs="+", help="words to find (the last one may be a prefix)")
    p.add_argument(
        "--with", dest="with_user", metavar="USER", help="only the conversation with USER"
    )
    p.add_argument(
        "--limit",
        type=_limit,
        default=20,
        metavar="N",
        help=f"at most N results (default 20, at most {MAX_LIMIT})",
    )

    p = add_verb(
        sub,
        "export",
        cmd_export,
        "write this device's history to an encrypted archive file (offline)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="the archive to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")

    p = add_verb(
        sub,
        "import",
        cmd_import,
        "add the history in an archive to this profile (offline; safe to repeat)",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="an archive made by `obrolan export`")
