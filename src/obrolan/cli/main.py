"""The ``obrolan`` command: client verbs here, server verbs in server_commands.

Every error a person can cause (unknown user, unreachable server, wrong
passphrase, taken username, bad arguments) ends as one line on stderr and a
non-zero exit code; a traceback would be a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from obrolan import __version__
from obrolan.cli import (
    archive_commands,
    conversation_commands,
    device_commands,
    group_commands,
    server_commands,
)
from obrolan.cli.common import (
    SEND_TIMEOUT,
    Handler,
    ProgressBar,
    add_server_options,
    add_verb,
    passphrase_for,
    print_json,
    read_passphrase,
    refused_for_now,
    tell_refusal,
)
from obrolan.cli.render import format_event, print_messages, show
from obrolan.cli.safe_text import json_text, one_line
from obrolan.cli.verify_command import add_verify_command
from obrolan.client.client import Client
from obrolan.client.models import MessageState
from obrolan.client.retry_policy import is_retryable
from obrolan.errors import (
    ConfigError,
    IdentityChanged,
    ObrolanError,
    RequestRefused,
    ServerUnreachable,
)
from obrolan.protocol.codes import ErrorCode

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_KEY_CHANGED = 4
"""The recipient's account key changed: the message is held until `obrolan trust`."""
EXIT_INTERRUPTED = 130


# --- client verbs -------------------------------------------------------------------------


async def cmd_register(args: argparse.Namespace) -> int:
    passphrase = None if args.no_passphrase else read_passphrase(confirm=True)
    client = await Client.register(
        args.profile,
        args.server,
        args.username,
        passphrase,
        insecure=args.insecure,
        ca_file=args.ca_file,
        device_name=args.name,
    )
    try:
        me = client.whoami()
        code = client.recovery_code
    finally:
        await client.close()
    assert code is not None
    if args.json:
        print_json({**me.as_json(), "recovery_code": str(code)})
    else:
        print(f"registered {me.username} on {me.server_url} (device {me.device_id})")
        print(f"profile: {args.profile}")
        device_commands.print_recovery_code(code)
    return 0


async def cmd_send(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        reply_to = None if args.reply_to is None else client.resolve(args.reply_to).message_id
        if args.group is not None:
            text = args.text or args.user  # `send --group G TEXT`: TEXT lands in `user`
            if args.file is not None or not text:
                raise ConfigError("a group message is text: obrolan send --group GROUP TEXT")
            group_id = client.groups.resolve(args.group)
            queued = await client.groups.send(group_id, text, reply_to)
        elif args.user is None:
            raise ConfigError("say whom to: obrolan send USER TEXT (or --group GROUP TEXT)")
        elif args.file is None:
            if not args.text:
                raise ConfigError("say something, or attach a file with --file PATH")
            queued = await client.send(args.user, args.text, reply_to=reply_to)
        else:
            bar = ProgressBar("upload", sys.stderr, unit="bytes")
            try:
                queued = await client.send_file(
                    args.user, args.file, args.text or "", reply_to=reply_to, progress=bar
                )
            except BaseException:
                bar.abandon()
                raise
            bar.finish()
        try:
            await client.flush(timeout=SEND_TIMEOUT, on_refusal=tell_refusal)
        except ServerUnreachable as exc:
            raise ServerUnreachable(
                exc.url,
                f"{exc.reason}; the message is queued and will be sent by the next "
                f"`obrolan sync`, `listen` or `send`",
            ) from None
        except RequestRefused as exc:
            if not is_retryable(exc.code):
                raise
            raise ObrolanError(
                f"{refused_for_now(exc)}; the message is queued and will be sent by the next "
                f"`obrolan sync`, `listen` or `send`"
            ) from None
        message = client.message(queued.message_id, client.username) or queued
    if message.state is MessageState.FAILED:
        raise ObrolanError(f"not sent: {message.error}")
    if message.state is MessageState.HELD:
        if args.json:
            print_json(message.as_json())
        print(f"obrolan: {held_line(message.peer)}", file=sys.stderr)
        return EXIT_KEY_CHANGED
    if args.json:
        print_json(message.as_json())
    else:
        print(f"sent to {args.group or args.user}")
    return 0


async def cmd_download(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        message = client.resolve(args.message)
        bar = ProgressBar("download", sys.stderr, unit="bytes")
        try:
            path = await client.download(message, args.out, progress=bar)
        except BaseException:
            bar.abandon()
            raise
        bar.finish()
    if args.json:
        print_json({"message_id": message.message_id, "path": str(path)})
    else:
        print(f"saved {one_line(str(path))}")  # the name is the sender's
    return 0


async def cmd_sync(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        messages = await client.sync()
        if client.history_offer() is not None:
            await device_commands.receive_history(client)
        for peer in {m.peer for m in messages}:
            await client.mark_read(peer)
        requests = client.requests()
        refusal = client.outbox_refusal
        if refusal is None:
            with contextlib.suppress(ServerUnreachable, RequestRefused):
                await client.flush(timeout=SEND_TIMEOUT)  # the read receipts
        else:  # refused for now: the next run sends what is queued
            print(
                f"obrolan: {refused_for_now(refusal)}; what you wrote stays queued and will "
                f"be retried by the next `obrolan sync`, `listen` or `send`",
                file=sys.stderr,
            )
    print_messages(messages, args.json)
    if not args.json:
        if not messages:
            print("no new messages", file=sys.stderr)
        if requests:
            print(
                f"message requests from {one_line(', '.join(requests))}: see `obrolan requests`",
                file=sys.stderr,
            )
    return 0


async def cmd_listen(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        if not args.json:
            print(f"listening as {client.username} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        async for event in client.events():
            if args.json:
                print(json_text(event.as_json()), flush=True)
            elif (line := format_event(event)) is not None:
                show(line)
            if event.kind == "message":
                await client.mark_read(event.peer)
    return 0


async def cmd_history(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        messages = client.history(args.user, args.limit)
        await client.mark_read(args.user)  # the receipts go out with the next sync or send
    print_messages(messages, args.json)
    if not args.json and not messages:
        print(f"no messages with {args.user}", file=sys.stderr)
    return 0


async def cmd_contacts(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        contacts = client.contacts()
    if args.json:
        print_json([c.as_json() for c in contacts])
        return 0
    for contact in contacts:
        flag = "  ✓ verified" if contact.verified else ""
        if contact.key_changed:
            flag = (
                "  ⚠ account key changed, messages held: compare safety numbers, then "
                f"`obrolan trust {one_line(contact.username)}`"
            )
        print(f"{one_line(contact.username)}{flag}")
    if not contacts:
        print("no contacts yet", file=sys.stderr)
    return 0


async def cmd_whoami(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        me = client.whoami()
    if args.json:
        print_json(me.as_json())
    else:
        print(
            f"{me.username} on {me.server_url}\ndevice {me.device_id}\n"
            f"account key {me.account_key}\ndevice key {me.ed25519}"
        )
    return 0


async def cmd_safety_number(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        number = await client.safety_number(args.user)
        changed = any(c.username == args.user and c.key_changed for c in client.contacts())
    if args.json:
        print_json({"username": args.user, "safety_number": number, "key_changed": changed})
        return 0
    groups = number.split()
    for row in range(0, len(groups), 4):
        print(" ".join(groups[row : row + 4]))
    print(f"Compare these digits with {args.user}, in person or on a call you trust.")
    if changed:
        print(f"⚠ {args.user}'s account key has changed since you first talked.")
    return 0


def held_line(peer: str) -> str:
    """What `send` says of a message held because ``peer``'s account key changed."""
    who = one_line(peer)
    return (
        f"{who}'s account key changed: the message is held, nothing was encrypted to the "
        f"new key. Check the safety number with {who} (`obrolan safety-number {who}`), "
        f"then run `obrolan trust {who}` to send it"
    )


# --- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="obrolan",
        description="End-to-end encrypted messenger whose server keeps nothing after delivery.",
    )
    parser.add_argument("--version", action="version", version=f"obrolan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def verb(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        return add_verb(sub, name, handler, help_text)

    p = verb("register", cmd_register, "create an account and this device's profile")
    p.add_argument("username")
    add_server_options(p)

    p = verb("send", cmd_send, "send a text message (to a user, or to a group with --group)")
    p.add_argument("user", nargs="?", help="the recipient (not with --group)")
    p.add_argument("text", nargs="?", default="")
    p.add_argument("--group", metavar="GROUP", help="post TEXT in this group (id or title)")
    p.add_argument("--file", type=Path, metavar="PATH", help="attach a file (encrypted, resumable)")
    p.add_argument(
        "--reply-to", metavar="MESSAGE", help="quote a message (its id, or the start of it)"
    )

    p = verb("download", cmd_download, "fetch, verify and decrypt a message's file")
    p.add_argument("message", metavar="MESSAGE", help="its id, or the start of it")
    p.add_argument("--out", type=Path, metavar="PATH", help="file or folder (default: here)")

    verb("sync", cmd_sync, "fetch and print what is waiting, send the outbox, exit")
    verb("listen", cmd_listen, "print messages as they arrive, until Ctrl-C")

    p = verb("history", cmd_history, "print the conversation with a user, from this device")
    p.add_argument("user")
    p.add_argument("--limit", type=int, default=None, help="only the last N messages")

    verb("contacts", cmd_contacts, "list the people this device has talked to")
    verb("whoami", cmd_whoami, "print this profile's account, device and server")

    p = verb(
        "safety-number", cmd_safety_number, "print the safety number to compare with a contact"
    )
    p.add_argument("user")
    add_verify_command(sub)

    conversation_commands.add_parsers(sub)
    device_commands.add_parsers(sub)
    group_commands.add_parsers(sub)
    archive_commands.add_parsers(sub)
    server_commands.add_parsers(sub)
    return parser


_FRIENDLY = {
    ErrorCode.USERNAME_TAKEN: "that username is taken on this server",
    ErrorCode.AUTH_FAILED: "the server does not accept this device (was it removed from its account?)",
    ErrorCode.UNKNOWN_LINK: "no new device waits with that link code: check it, or it expired "
    "(show a new one with `obrolan link`)",
    ErrorCode.LINK_USED: "that link code was already used: show a new one with `obrolan link`",
    ErrorCode.UNSUPPORTED_VERSION: "the server speaks another protocol version: update obrolan",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``obrolan`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "send" and args.user is None and args.group is None:
        parser.error("send needs USER TEXT, or --group GROUP TEXT")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except IdentityChanged as exc:
        print(f"obrolan: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_KEY_CHANGED
    except RequestRefused as exc:
        # A refusal's message is the server's text: shown like anything from someone else.
        print(f"obrolan: {one_line(_FRIENDLY.get(exc.code, exc.message))}", file=sys.stderr)
        return EXIT_ERROR
    except ObrolanError as exc:
        print(f"obrolan: {one_line(str(exc))}", file=sys.stderr)  # it may quote remote text
        return EXIT_ERROR
    except OSError as exc:
        reason = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
        print(f"obrolan: {one_line(reason)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
