"""``obrolan verify USER``: compare 7 emoji (or 3 numbers) with a contact, both online at once.

Interactive on purpose: the person answers whether the codes match what the
contact sees (the answer is read from stdin, so a pipe works too, but there is
no flag that says yes for them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TextIO

from obrolan.cli.common import add_verb, passphrase_for, print_json
from obrolan.cli.safe_text import one_line
from obrolan.client.client import Client
from obrolan.client.verification import DEFAULT_TIMEOUT, SasCodes, verify

__all__ = ["add_verify_command"]


async def cmd_verify(args: argparse.Namespace) -> int:
    # With --json, stdout carries only the result; the conversation goes to stderr.
    out = sys.stderr if args.json else sys.stdout

    async def confirm(codes: SasCodes) -> bool:
        peer, device = one_line(codes.peer), one_line(codes.peer_device)
        print(f"\nCompare with what {peer} sees (their device {device}):\n", file=out)
        print("    " + _render(codes, decimals=args.decimals) + "\n", file=out)
        print(f"Do these match what {peer} sees? [y/N] ", end="", file=out, flush=True)
        try:
            answer = await _read_line(sys.stdin)
        except asyncio.CancelledError:
            print(file=out, flush=True)  # the error that follows starts on its own line
            raise
        if not sys.stdin.isatty():  # a terminal echoed the answer and its newline
            print(answer.strip(), file=out, flush=True)
        return answer.strip().lower() in ("y", "yes")

    async with Client.open(args.profile, passphrase_for(args.profile)) as client:

        def started() -> None:
            print(
                f"waiting for {args.user} to run `obrolan verify {client.username}` "
                f"(up to {args.timeout:g} s)…",
                file=sys.stderr,
                flush=True,
            )

        codes = await verify(client, args.user, confirm, timeout=args.timeout, started=started)
    if args.json:
        print_json({"username": codes.peer, "device_id": codes.peer_device, "verified": True})
    else:
        print(f"{one_line(codes.peer)} is verified")
    return 0


def _render(codes: SasCodes, *, decimals: bool) -> str:
    if decimals:
        return "   ".join(str(number) for number in codes.decimals)
    return "   ".join(f"{emoji} {name}" for emoji, name in codes.emoji)


async def _read_line(stream: TextIO) -> str:
    """One line of ``stream``, read without blocking the event loop.

    So the peer's "no" or the timeout can end the question while it is asked.
    """
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    try:
        fd = stream.fileno()
        loop.add_reader(fd, readable.set)
    except (OSError, ValueError, NotImplementedError):
        return stream.readline()  # a regular file or /dev/null: reading it never waits
    data = b""
    try:
        while b"\n" not in data:
            readable.clear()
            await readable.wait()
            chunk = os.read(fd, 1024)
            if not chunk:
                break
            data += chunk
    finally:
        loop.remove_reader(fd)
    return data.decode(errors="replace").partition("\n")[0]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds above 0 and at most 3600"
        )
    return value


def add_verify_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``obrolan verify USER [--decimals] [--timeout S]``."""
    p = add_verb(
        sub,
        "verify",
        cmd_verify,
        "verify a contact by comparing emoji, both running it at the same time",
    )
    p.add_argument("user")
    p.add_argument(
        "--decimals",
        action="store_true",
        help="compare 3 numbers instead of 7 emoji (where emoji do not show)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"give up after S seconds (default {DEFAULT_TIMEOUT:g})",
    )
