"""What every client verb of the ``obrolan`` command shares: profile, passphrase, output."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import platformdirs

from obrolan.cli.safe_text import block, json_text, one_line
from obrolan.client.retry_policy import is_retryable
from obrolan.client.vault import needs_passphrase
from obrolan.errors import ConfigError, RequestRefused, ServerUnreachable

if TYPE_CHECKING:
    from obrolan.client.client import Client

__all__ = [
    "SEND_TIMEOUT",
    "Handler",
    "ProgressBar",
    "add_server_options",
    "add_verb",
    "ask",
    "default_profile",
    "deliver",
    "passphrase_for",
    "print_json",
    "read_passphrase",
    "refused_for_now",
    "tell_refusal",
]

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
"""A client verb: an async function of the parsed arguments, returning the exit code."""


def default_profile() -> Path:
    """``$OBROLAN_PROFILE``, else the user's data dir (e.g. ~/.local/share/obrolan/default)."""
    configured = os.environ.get("OBROLAN_PROFILE")
    if configured:
        return Path(configured)
    return Path(platformdirs.user_data_dir("obrolan")) / "default"


def read_passphrase(*, confirm: bool = False) -> str:
    """``$OBROLAN_PASSPHRASE``, else a prompt on the terminal.

    Raises:
        ConfigError: no terminal to ask on and no environment variable.
    """
    configured = os.environ.get("OBROLAN_PASSPHRASE")
    if configured is not None:
        return configured
    if not sys.stdin.isatty():
        raise ConfigError(
            "a passphrase is needed: set OBROLAN_PASSPHRASE, or run in a terminal to be asked"
        )
    passphrase = getpass.getpass("Passphrase: ")
    if confirm:
        if len(passphrase) < 8:
            raise ConfigError("choose a passphrase of at least 8 characters")
        if getpass.getpass("Passphrase again: ") != passphrase:
            raise ConfigError("the two passphrases differ")
    return passphrase


def ask(prompt: str, *, secret: bool = False, instead: str) -> str:
    """A line typed on the terminal; ``instead`` says how to give it without one.

    Raises:
        ConfigError: no terminal to ask on, or nothing was typed.
    """
    if not sys.stdin.isatty():
        raise ConfigError(f"nothing to ask on (no terminal): {instead}")
    try:
        answer = (getpass.getpass(prompt) if secret else input(prompt)).strip()
    except EOFError:
        answer = ""
    if not answer:
        raise ConfigError(f"nothing was typed: {instead}")
    return answer


SEND_TIMEOUT = 15.0
"""Seconds a verb waits for the server to take what it queued before leaving it queued."""


def refused_for_now(refusal: RequestRefused) -> str:
    """What the server said when it refused the outbox for now, as one line."""
    said = one_line(refusal.message)  # the server's text: shown like anything from outside
    line = f"the server refused for now: {refusal.code.value}"
    if said and said != refusal.code.value.replace("_", " "):
        line += f" ({said})"
    return line


def tell_refusal(refusal: RequestRefused) -> None:
    """``on_refusal`` of flush and sync: one line on stderr as soon as the server says it."""
    print(f"obrolan: {refused_for_now(refusal)}; will retry", file=sys.stderr, flush=True)


async def deliver(client: Client) -> str:
    """Send what was queued; say so honestly when the server cannot be reached or refuses."""
    try:
        await client.flush(timeout=SEND_TIMEOUT, on_refusal=tell_refusal)
    except ServerUnreachable as exc:
        print(
            f"obrolan: {one_line(str(exc))}; queued, it will go with the next sync, listen or send",
            file=sys.stderr,
        )
        return "queued"
    except RequestRefused as exc:
        if not is_retryable(exc.code):
            raise
        print(
            f"obrolan: {refused_for_now(exc)}; queued, it will go with the next sync, listen "
            f"or send",
            file=sys.stderr,
        )
        return "queued"
    return "sent"


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """The options of a verb that makes a new profile: register, link, recover."""
    parser.add_argument(
        "--server", required=True, metavar="URL", help="e.g. https://chat.example.org"
    )
    parser.add_argument(
        "--no-passphrase",
        action="store_true",
        help="keep the store key in a 0600 file instead (for unattended bots)",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="allow plain http to a non-loopback host"
    )
    parser.add_argument(
        "--ca-file", metavar="PEM", help="trust this CA for the server's certificate"
    )
    parser.add_argument(
        "--name", metavar="NAME", help="this device's name (default: the host name)"
    )


def passphrase_for(profile: Path) -> str | None:
    return read_passphrase() if needs_passphrase(profile) else None


def print_json(value: object) -> None:
    """``value`` as JSON with the exact text, no control character raw (safe_text.json_text)."""
    print(json_text(value, indent=2))


_PROFILE_OPTIONS = argparse.ArgumentParser(add_help=False)
_PROFILE_OPTIONS.add_argument(
    "--profile",
    type=Path,
    default=None,
    metavar="DIR",
    help="the device's profile folder (default: $OBROLAN_PROFILE or the user data dir)",
)
_PROFILE_OPTIONS.add_argument("--json", action="store_true", help="print data as JSON")
_PROFILE_OPTIONS.add_argument(
    "-v", "--verbose", action="store_true", help="log what the client does"
)


def add_verb(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Handler,
    help_text: str,
) -> argparse.ArgumentParser:
    """Add a client verb taking --profile, --json and --verbose; returns its parser."""
    parser = sub.add_parser(name, parents=[_PROFILE_OPTIONS], help=help_text, description=help_text)
    parser.set_defaults(func=_run_async(handler))
    return parser


def _run_async(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if args.profile is None:
            args.profile = default_profile()
        log = logging.StreamHandler()
        log.setFormatter(_SafeFormatter("%(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, handlers=[log])
        return asyncio.run(handler(args))

    return run


class _SafeFormatter(logging.Formatter):
    """Log lines may quote what others sent: controls shown, further lines indented."""

    def format(self, record: logging.LogRecord) -> str:
        return block(super().format(record), indent="    ")


class ProgressBar:
    """``export  42% [########............] 1,234/2,900 messages and files`` on a stream.

    On a terminal the line is redrawn in place (``\\r``); elsewhere (a log, a pipe)
    only the final line is written, by :meth:`finish`.
    """

    WIDTH = 20

    def __init__(self, label: str, stream: TextIO, *, unit: str) -> None:
        self._label = label
        self._unit = unit
        self._stream = stream
        self._tty = stream.isatty()
        self._line = ""

    def __call__(self, done: int, total: int) -> None:
        """Draw the bar for ``done`` of ``total`` (a progress callback)."""
        line = self._render(done, total)
        if line != self._line:
            self._line = line
            if self._tty:
                self._stream.write("\r" + line)
                self._stream.flush()

    def finish(self) -> None:
        """End the bar: its last state, on a line of its own."""
        if self._line:
            self._stream.write(("\r" if self._tty else "") + self._line + "\n")
            self._stream.flush()

    def abandon(self) -> None:
        """Leave a half-drawn bar so that an error message starts on its own line."""
        if self._tty and self._line:
            self._stream.write("\n")
            self._stream.flush()

    def _render(self, done: int, total: int) -> str:
        fraction = done / total if total else 1.0
        filled = round(fraction * self.WIDTH)
        return (
            f"{self._label:<7} {fraction:4.0%} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
            f"{done:,}/{total:,} {self._unit}"
        )
