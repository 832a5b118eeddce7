"""Verbs for an account's devices: link, devices, recover, recovery-code, trust."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys

from obrolan.cli.common import (
    Handler,
    ProgressBar,
    add_server_options,
    add_verb,
    ask,
    passphrase_for,
    print_json,
    read_passphrase,
)
from obrolan.cli.render import show
from obrolan.cli.safe_text import one_line
from obrolan.client.client import Client
from obrolan.client.enrolment import link_address
from obrolan.crypto.account import LinkCode, RecoveryCode
from obrolan.errors import ConfigError, RequestRefused
from obrolan.protocol.codes import ErrorCode

__all__ = ["add_parsers", "print_recovery_code", "receive_history"]

RECOVERY_CODE_ENV = "OBROLAN_RECOVERY_CODE"
"""Where `obrolan recover` reads the code from when set (for scripts); else it asks."""


def print_recovery_code(code: RecoveryCode, stream: io.TextIOBase | None = None) -> None:
    """Show a recovery code once, with what it is for."""
    out = stream or sys.stdout
    print(
        f"\nRecovery code: {code}\n"
        "Write it down and keep it somewhere safe: it is shown only this once.\n"
        "If you lose every device, it lets you take back your username on a new one\n"
        "(`obrolan recover`). It does not bring back your history: only another of your\n"
        "devices or an export holds that.",
        file=out,
    )


def _show_link_code(server_url: str, code: LinkCode, as_json: bool) -> None:
    address = link_address(server_url, code)
    if as_json:  # one line, so a program can read it while the command waits
        print(json.dumps({"link_code": str(code), "qr": address}), flush=True)
        return
    import segno  # only `link` draws a QR code: not imported by every command (50 ms)

    qr = io.StringIO()
    segno.make(address, error="m").terminal(out=qr, compact=True)
    print(qr.getvalue(), end="")
    print(f"Link code: {code}")
    print("On one of your devices, run:  obrolan devices approve CODE  (or scan this QR code)")
    print("Waiting for approval (up to 10 minutes)…", flush=True)


async def cmd_link(args: argparse.Namespace) -> int:
    username = args.user or ask("Username: ", instead="give it with --user NAME")
    passphrase = None if args.no_passphrase else read_passphrase(confirm=True)
    try:
        client = await Client.link(
            args.profile,
            args.server,
            username,
            passphrase,
            lambda code: _show_link_code(args.server, code, args.json),
            insecure=args.insecure,
            ca_file=args.ca_file,
            device_name=args.name,
        )
    except RequestRefused as exc:
        if exc.code != ErrorCode.UNKNOWN_LINK:
            raise
        raise ConfigError(
            "no device approved the link before its code expired: run `obrolan link` "
            "again for a new code"
        ) from None
    try:
        me = client.whoami()
        contacts = client.contacts()
        verified = sum(c.verified for c in contacts)
        print(
            f"linked {me.username}'s new device {me.device_id}; it knows your "
            f"{len(contacts)} contact(s), {verified} of them verified",
            file=sys.stderr,
        )
        if client.history_follows:
            await receive_history(client)
    finally:
        await client.close()
    if args.json:
        print_json(me.as_json())
    return 0


async def receive_history(client: Client) -> None:
    """Import the history another device of ours is sending, with a progress bar."""
    print("receiving your history from your other device…", file=sys.stderr)
    bar = ProgressBar("history", sys.stderr, unit="bytes")
    try:
        summary = await client.receive_history(bar)
    except BaseException:
        bar.abandon()
        raise
    bar.finish()
    print(f"imported {summary.messages} message(s) from your other device", file=sys.stderr)


async def cmd_devices(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        devices = await client.devices()
    if args.json:
        print_json([d.as_json() for d in devices])
        return 0
    for device in devices:  # the names and dates come from the devices and the server
        mark = "  (this device)" if device.current else ""
        active = one_line(device.last_active or "never")
        show(
            f"{one_line(device.device_id)}  {one_line(device.name)}  "
            f"added {one_line(device.added)}  last active {active}{mark}"
        )
    return 0


async def cmd_approve(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        approval = await client.approve(args.code, with_history=args.with_history)
        device = approval.device
        print(
            f"added device {one_line(device.device_id)} ({one_line(device.name)}) "
            f"to {client.username}, "
            f"with {approval.contacts_shared} contact(s) and their safety state",
            file=sys.stderr,
        )
        if approval.contacts_left_out:
            print(
                f"{approval.contacts_left_out} contact(s) you talked to least did not fit; "
                f"the new device will trust their keys on first contact, so compare safety "
                f"numbers there if it matters",
                file=sys.stderr,
            )
        if args.with_history:
            await _send_history(client, device.device_id)
    if args.json:
        print_json(
            {
                **device.as_json(),
                "contacts_shared": approval.contacts_shared,
                "contacts_left_out": approval.contacts_left_out,
            }
        )
    return 0


async def _send_history(client: Client, device_id: str) -> int:
    shown = one_line(device_id)
    print(f"sending your history to {shown}…", file=sys.stderr)
    bar = ProgressBar("history", sys.stderr, unit="bytes")
    try:
        count = await client.send_history(device_id, bar)
    except BaseException:
        bar.abandon()
        raise
    bar.finish()
    print(f"sent {count} message(s) to {shown}", file=sys.stderr)
    return count


async def cmd_send_history(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        count = await _send_history(client, args.device)
    if args.json:
        print_json({"device_id": args.device, "messages": count})
    return 0


async def cmd_rename(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        await client.rename_device(args.device, args.name)
    print(f"renamed {args.device} to {args.name.strip()}", file=sys.stderr)
    return 0


async def cmd_remove(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        await client.remove_device(args.device)
    print(f"removed {args.device}: it receives nothing new", file=sys.stderr)
    return 0


async def cmd_recover(args: argparse.Namespace) -> int:
    code = os.environ.get(RECOVERY_CODE_ENV) or ask(
        "Recovery code: ", secret=True, instead=f"set {RECOVERY_CODE_ENV}"
    )
    passphrase = None if args.no_passphrase else read_passphrase(confirm=True)
    try:
        client = await Client.recover(
            args.profile,
            args.server,
            args.user,
            code,
            passphrase,
            insecure=args.insecure,
            ca_file=args.ca_file,
            device_name=args.name,
        )
    except RequestRefused as exc:
        if exc.code != ErrorCode.AUTH_FAILED:
            raise
        raise ConfigError(
            f"the recovery code is wrong, or there is no account {args.user}: nothing changed"
        ) from None
    try:
        me = client.whoami()
        new_code = client.recovery_code
    finally:
        await client.close()
    assert new_code is not None
    if args.json:
        print_json({**me.as_json(), "recovery_code": str(new_code)})
        return 0
    print(f"recovered {me.username} on {me.server_url} (device {me.device_id})")
    print(
        "Your contacts will see that your account key changed; ask them to compare safety "
        "numbers again."
    )
    print_recovery_code(new_code)
    return 0


async def cmd_recovery_code(args: argparse.Namespace) -> int:
    if not args.rotate:
        raise ConfigError(
            "the recovery code is shown only once; `obrolan recovery-code --rotate` makes a "
            "new one (the old one stops working)"
        )
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        code = await client.rotate_recovery_code()
    if args.json:
        print_json({"recovery_code": str(code)})
    else:
        print_recovery_code(code)
    return 0


async def cmd_trust(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        changed = client.trust(args.user)
    if changed:
        print(
            f"accepted {args.user}'s new account key; held messages go with the next sync, "
            f"listen or send. Verify it with `obrolan verify {args.user}` to mark it verified"
        )
    else:
        print(f"{args.user}'s account key has not changed: nothing to accept", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def verb(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        return add_verb(sub, name, handler, help_text)

    p = verb("link", cmd_link, "make this a new device of your account (shows a code)")
    p.add_argument("--user", metavar="USERNAME", help="your username (asked if not given)")
    add_server_options(p)

    p = verb("devices", cmd_devices, "list, approve, rename or remove your account's devices")
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    def action(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        return add_verb(actions, name, handler, help_text)

    a = action("approve", cmd_approve, "add the new device that shows CODE")
    a.add_argument("code", metavar="CODE")
    a.add_argument(
        "--with-history",
        action="store_true",
        help="then send it this device's history (end-to-end encrypted)",
    )
    a = action("send-history", cmd_send_history, "send this device's history to DEVICE")
    a.add_argument("device", metavar="DEVICE")
    a = action("rename", cmd_rename, "rename one of your devices")
    a.add_argument("device", metavar="DEVICE")
    a.add_argument("name", metavar="NAME")
    a = action("remove", cmd_remove, "remove a device: it receives nothing new")
    a.add_argument("device", metavar="DEVICE")

    p = verb("recover", cmd_recover, "take your username back on a new device (recovery code)")
    p.add_argument("user", metavar="USERNAME")
    add_server_options(p)

    p = verb("recovery-code", cmd_recovery_code, "make a new recovery code")
    p.add_argument("--rotate", action="store_true", help="replace the current code")

    p = verb("trust", cmd_trust, "accept a contact's changed account key")
    p.add_argument("user")
