"""Verbs that change a conversation: react, edit, delete, timer, requests, block, settings."""

from __future__ import annotations

import argparse
import re
import sys

from obrolan.cli.common import Handler, add_verb, deliver, passphrase_for, print_json
from obrolan.cli.safe_text import one_line
from obrolan.client.client import Client
from obrolan.client.conversation import describe_timer
from obrolan.errors import ConfigError

__all__ = ["add_parsers", "parse_duration", "parse_size"]

_DURATION = re.compile(r"^(\d+)([smhd])\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int | None:
    """``"90s"``, ``"5m"``, ``"1h"``, ``"7d"`` → seconds; ``"off"`` → None."""
    if text == "off":
        return None
    match = _DURATION.match(text)
    if match is None or int(match[1]) == 0:
        raise ConfigError(f"bad duration {text!r}: use e.g. 30s, 5m, 1h, 7d, or off")
    return int(match[1]) * _UNIT_SECONDS[match[2]]


def parse_size(text: str) -> int:
    """``"512K"``, ``"5M"``, ``"1G"`` or plain bytes → bytes."""
    match = re.match(r"^(\d+)([KMG]?)\Z", text.upper())
    if match is None:
        raise ConfigError(f"bad size {text!r}: use e.g. 0, 512K, 5M, 1G")
    return int(match[1]) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match[2]]


async def cmd_react(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        message = client.resolve(args.message)
        await client.react(message, "" if args.remove else args.emoji or "")
        outcome = await deliver(client)
    print(f"reaction {outcome}")
    return 0


async def cmd_edit(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        await client.edit(client.resolve(args.message), args.text)
        outcome = await deliver(client)
    print(f"edit {outcome}")
    return 0


async def cmd_delete(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        await client.delete(client.resolve(args.message))
        outcome = await deliver(client)
    print(f"deleted for everyone ({outcome})")
    return 0


async def cmd_timer(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        if args.duration is None:
            print(
                f"disappearing messages with {args.user}: {describe_timer(client.timer(args.user))}"
            )
            return 0
        await client.set_timer(args.user, parse_duration(args.duration))
        outcome = await deliver(client)
    print(f"disappearing messages with {args.user}: {args.duration} ({outcome})")
    return 0


async def cmd_requests(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        if args.action is None:
            waiting = client.requests()
            if args.json:
                print_json(
                    [
                        {"username": peer, "messages": [m.as_json() for m in client.history(peer)]}
                        for peer in waiting
                    ]
                )
            elif not waiting:
                print("no message requests", file=sys.stderr)
            for peer in [] if args.json else waiting:
                count = len(client.history(peer))
                shown = one_line(peer)
                print(f"{shown}: {count} message(s) waiting (`obrolan requests accept {shown}`)")
            return 0
        if args.user is None:
            raise ConfigError(
                f"say whose request to {args.action}: obrolan requests {args.action} USER"
            )
        if args.action == "accept":
            client.accept(args.user)
            print(f"accepted {args.user}: `obrolan history {args.user}` shows their messages")
        else:
            client.block(args.user)
            print(f"declined and blocked {args.user}")
    return 0


async def cmd_block(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        client.block(args.user, blocked=args.command == "block")
    print(f"{args.command}ed {args.user}")
    return 0


def _parse_rotation(text: str) -> tuple[int, int]:
    """``"100,7d"`` → (100 messages, 7 days)."""
    match = re.match(r"^(\d+),(\d+)d\Z", text)
    if match is None:
        raise ConfigError(f"bad rotation {text!r}: use MESSAGES,DAYSd like 100,7d")
    return int(match[1]), int(match[2])


async def cmd_settings(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        if args.receipts is not None:
            client.set_receipts(args.receipts == "on")
        if args.auto_download is not None:
            client.set_auto_download(parse_size(args.auto_download))
        if args.group_rotation is not None:
            messages, days = _parse_rotation(args.group_rotation)
            client.groups.set_rotation(messages, days)
        receipts = "on" if client.receipts else "off"
        auto_download = client.auto_download_bytes
        blocked = client.blocked()
        rotation = client.groups.rotation
    if args.json:
        print_json(
            {
                "receipts": receipts,
                "auto_download_bytes": auto_download,
                "blocked": blocked,
                "group_rotation": {"messages": rotation[0], "days": rotation[1]},
            }
        )
    else:
        print(f"receipts: {receipts}")
        print(f"files fetched at once up to: {auto_download:,} bytes")
        print(f"blocked: {one_line(', '.join(blocked)) or 'nobody'}")
        print(f"group keys replaced after: {rotation[0]} messages or {rotation[1]} days")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the conversation verbs to the ``obrolan`` command."""

    def verb(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        return add_verb(sub, name, handler, help_text)

    p = verb("react", cmd_react, "react to a message with one emoji (replaces your earlier one)")
    p.add_argument("message", metavar="MESSAGE", help="its id, or the start of it")
    p.add_argument("emoji", nargs="?")
    p.add_argument("--remove", action="store_true", help="withdraw your reaction")

    p = verb("edit", cmd_edit, "change the text of one of your messages")
    p.add_argument("message", metavar="MESSAGE")
    p.add_argument("text")

    p = verb("delete", cmd_delete, "delete one of your messages for everyone (within 48 hours)")
    p.add_argument("message", metavar="MESSAGE")

    p = verb("timer", cmd_timer, "show or set disappearing messages for a conversation")
    p.add_argument("user")
    p.add_argument("duration", nargs="?", help="e.g. 30s, 5m, 1h, 7d, or off")

    p = verb("requests", cmd_requests, "list, accept or decline message requests")
    p.add_argument("action", nargs="?", choices=["accept", "decline"])
    p.add_argument("user", nargs="?")

    p = verb("block", cmd_block, "drop everything a user sends, silently")
    p.add_argument("user")
    p = verb("unblock", cmd_block, "stop blocking a user")
    p.add_argument("user")

    p = verb("settings", cmd_settings, "show or change this device's settings")
    p.add_argument("--receipts", choices=["on", "off"], help="send delivery and read receipts")
    p.add_argument(
        "--auto-download",
        metavar="SIZE",
        help="fetch files up to SIZE at once (e.g. 5M, 0 = never)",
    )
    p.add_argument(
        "--group-rotation",
        metavar="N,Dd",
        help="start a new group key after N messages or D days (default 100,7d)",
    )
