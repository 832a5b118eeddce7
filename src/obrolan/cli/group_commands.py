"""`obrolan group …`: group chats whose admins are answerable, and their moderation log."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from obrolan.cli.common import Handler, add_verb, deliver, passphrase_for, print_json
from obrolan.cli.conversation_commands import parse_duration
from obrolan.cli.render import print_messages, show
from obrolan.cli.safe_text import block, one_line
from obrolan.client.client import Client
from obrolan.client.group_store import group_peer
from obrolan.client.groups import GroupError
from obrolan.client.store import now_ms
from obrolan.crypto.group_state import GroupView
from obrolan.errors import ConfigError
from obrolan.protocol import groups

__all__ = ["add_parsers"]


def _view_json(view: GroupView) -> dict[str, object]:
    return {
        "group_id": view.group_id,
        "title": view.title,
        "description": view.description,
        "rules": view.rules,
        "settings": {
            "who_can_post": view.settings.who_can_post,
            "who_can_add": view.settings.who_can_add,
            "approval": view.settings.approval,
        },
        "members": {
            name: {"role": m.role, "muted_until_ms": m.muted_until_ms}
            for name, m in sorted(view.members.items())
        },
        "seq": view.seq,
    }


def _print_view(view: GroupView) -> None:
    """Title, description, rules and member names are the members': shown via safe_text."""
    show(f"{one_line(view.title)}  ({one_line(view.group_id)})")
    if view.description:  # labelled, so its first line cannot pass for one of ours
        show(f"description: {block(view.description)}")
    if view.rules:
        show(f"rules: {block(view.rules)}")
    s = view.settings
    print(
        f"who can post: {s.who_can_post}; who can add: {s.who_can_add}; "
        f"join approval: {'on' if s.approval else 'off'}"
    )
    for name, member in sorted(view.members.items()):
        muted = ""
        if member.muted_until_ms > now_ms():
            until = datetime.fromtimestamp(member.muted_until_ms / 1000, UTC)
            muted = f"  (muted until {until:%Y-%m-%d %H:%M} UTC)"
        print(f"  {one_line(name)}  {one_line(member.role)}{muted}")


async def _with_group(
    args: argparse.Namespace, work: Callable[[Client, str], Awaitable[int]]
) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        group_id = client.groups.resolve(args.group)
        return await work(client, group_id)


def _acting(make: Callable[[argparse.Namespace], groups.GroupAction], done: str) -> Handler:
    """A verb that signs one state change, checks it, sends it and prints ``done``."""

    async def handler(args: argparse.Namespace) -> int:
        async def work(client: Client, group_id: str) -> int:
            view = await client.groups.act(group_id, make(args), getattr(args, "reason", ""))
            await deliver(client)
            if args.json:
                print_json(_view_json(view))
            else:
                print(done.format(**vars(args)))
            return 0

        return await _with_group(args, work)

    return handler


async def cmd_create(args: argparse.Namespace) -> int:
    members = [m.strip() for m in (args.members or "").split(",") if m.strip()]
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        view = await client.groups.create(args.name, members)
        await deliver(client)
    if args.json:
        print_json(_view_json(view))
    else:
        names = one_line(", ".join(sorted(view.members)))
        print(f"created {one_line(view.title)} ({one_line(view.group_id)}) with {names}")
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        views = client.groups.all()
        me = client.username
    if args.json:
        print_json([_view_json(v) for v in views])
        return 0
    for view in views:
        role = view.role(me) or "left"
        show(
            f"{one_line(view.group_id[:8])}  {one_line(view.title)}  "
            f"({len(view.members)} members, you: {one_line(role)})"
        )
    if not views:
        print("no groups yet: `obrolan group create NAME --members a,b`", file=sys.stderr)
    return 0


async def cmd_info(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        view = client.groups.view(client.groups.resolve(args.group))
        held = client.groups.held(view.group_id)
    if args.json:
        print_json({**_view_json(view), "posts_held": held})
    else:
        _print_view(view)
        if held is not None:
            print(f"⚠ your posts here wait: {held}")
    return 0


async def cmd_release(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        group_id = client.groups.resolve(args.group)
        reason = client.groups.held(group_id)
        released = client.groups.release(group_id)
    if args.json:
        print_json({"released": released})
    elif released:
        print(f"your posts in {one_line(group_id[:8])} go out again (they waited: {reason})")
    else:
        print(f"nothing waits in {one_line(group_id[:8])}: your posts go out", file=sys.stderr)
    return 0


async def cmd_log(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        entries = client.groups.log(client.groups.resolve(args.group))
    if args.json:
        print_json([{"seq": s, "at_ms": at, "entry": line} for s, at, line in entries])
        return 0
    for seq, at_ms, line in entries:
        when = datetime.fromtimestamp(at_ms / 1000, UTC)
        show(f"#{seq:<4} {when:%Y-%m-%d %H:%M} UTC  {block(line)}")  # quotes titles, reasons
    return 0


async def cmd_history(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile), online=False) as client:
        messages = client.groups.history(client.groups.resolve(args.group), args.limit)
    print_messages(messages, args.json)
    return 0


async def cmd_invite(args: argparse.Namespace) -> int:
    seconds = parse_duration(args.expires)
    if seconds is None:
        raise ConfigError("an invite link must expire: give --expires like 1h or 7d")

    async def work(client: Client, group_id: str) -> int:
        link = await client.groups.invite(group_id, seconds)
        await deliver(client)
        print_json({"link": link}) if args.json else print(link)
        return 0

    return await _with_group(args, work)


async def cmd_join(args: argparse.Namespace) -> int:
    async with Client.open(args.profile, passphrase_for(args.profile)) as client:
        group_id = await client.groups.join(args.link)
        await deliver(client)
    print(
        f"asked to join {one_line(group_id)}: you are in once an admin approves (`obrolan sync`)",
        file=sys.stderr,
    )
    return 0


async def cmd_requests(args: argparse.Namespace) -> int:
    async def work(client: Client, group_id: str) -> int:
        waiting = client.groups.join_requests(group_id)
        if args.json:
            print_json([{"username": u, "invite_id": i} for u, i in waiting])
        for username, _ in waiting if not args.json else []:
            print(one_line(username))
        if not waiting and not args.json:
            print("nobody waits to join", file=sys.stderr)
        return 0

    return await _with_group(args, work)


def _answering(approve: bool) -> Handler:
    async def handler(args: argparse.Namespace) -> int:
        async def work(client: Client, group_id: str) -> int:
            answer = client.groups.approve if approve else client.groups.reject
            await answer(group_id, args.user, args.reason)
            await deliver(client)
            print(f"{'approved' if approve else 'rejected'} {args.user}")
            return 0

        return await _with_group(args, work)

    return handler


async def cmd_mute(args: argparse.Namespace) -> int:
    seconds = parse_duration(args.duration)
    until = 0 if seconds is None else now_ms() + seconds * 1000
    return await _acting(
        lambda a: groups.Mute(user=a.user, until_ms=until),
        "muted {user} for {duration}" if seconds else "unmuted {user}",
    )(args)


async def cmd_delete(args: argparse.Namespace) -> int:
    async def work(client: Client, group_id: str) -> int:
        message = client.resolve(args.message)
        if message.peer != group_peer(group_id):
            raise GroupError("that message is not in this group")
        await client.groups.act(
            group_id,
            groups.DeleteMessage(sender=message.sender, message_id=message.message_id),
            args.reason,
        )
        await deliver(client)
        print("deleted for everyone")
        return 0

    return await _with_group(args, work)


async def cmd_report(args: argparse.Namespace) -> int:
    async def work(client: Client, group_id: str) -> int:
        admins = await client.groups.report(group_id, client.resolve(args.message), args.reason)
        await deliver(client)
        print(f"reported to {admins} admin(s)")
        return 0

    return await _with_group(args, work)


async def cmd_reports(args: argparse.Namespace) -> int:
    async def work(client: Client, group_id: str) -> int:
        reports = client.groups.reports(group_id)
        if args.json:
            print_json([r.as_json() for r in reports])
            return 0
        for r in reports:
            proof = "signature verified" if r.verified else "⚠ signature does NOT verify"
            show(
                f"{one_line(r.reporter)} reported {one_line(r.sender)} "
                f"[{one_line(r.message_id[:8])}] ({proof}): {one_line(r.reason)}\n"
                f"    “{block(r.text)}”"
            )
        if not reports:
            print("no reports", file=sys.stderr)
        return 0

    return await _with_group(args, work)


def _settings(args: argparse.Namespace, current: groups.GroupSettings) -> groups.GroupSettings:
    approval = current.approval if args.approval is None else args.approval == "on"
    return groups.GroupSettings(
        who_can_post=args.who_can_post or current.who_can_post,
        who_can_add=args.who_can_add or current.who_can_add,
        approval=approval,
    )


async def cmd_settings(args: argparse.Namespace) -> int:
    async def work(client: Client, group_id: str) -> int:
        current = client.groups.view(group_id).settings
        view = await client.groups.act(
            group_id, groups.SetSettings(settings=_settings(args, current)), args.reason
        )
        await deliver(client)
        _print_view(view) if not args.json else print_json(_view_json(view))
        return 0

    return await _with_group(args, work)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "group",
        help="group chats: create, moderate, read the log",
        description="Group chats whose admins are answerable.",
    )
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)

    def verb(
        name: str,
        handler: Handler,
        help_text: str,
        *,
        target: bool = True,
        user: bool = False,
        reason: bool = False,
    ) -> argparse.ArgumentParser:
        p = add_verb(actions, name, handler, help_text)
        if target:
            p.add_argument("group", metavar="GROUP", help="its id (or the start of it) or title")
        if user:
            p.add_argument("user", metavar="USER")
        if reason:
            p.add_argument("--reason", default="", help="shown in the moderation log")
        return p

    p = verb("create", cmd_create, "create a group (you are its owner)", target=False)
    p.add_argument("name")
    p.add_argument("--members", metavar="A,B", help="usernames to add")
    verb("list", cmd_list, "list your groups", target=False)
    verb("info", cmd_info, "title, rules, settings and members")
    verb(
        "release",
        cmd_release,
        "post again although another member's device named a state this one lacks",
    )
    verb("log", cmd_log, "the signed moderation log: who did what, to whom, when, why")
    p = verb("history", cmd_history, "the group's messages on this device")
    p.add_argument("--limit", type=int, default=None)
    verb(
        "add",
        _acting(lambda a: groups.Add(user=a.user), "added {user}"),
        "add a member",
        user=True,
        reason=True,
    )
    verb(
        "remove",
        _acting(lambda a: groups.Remove(user=a.user), "removed {user}"),
        "remove a member (they read nothing sent after)",
        user=True,
        reason=True,
    )
    verb(
        "promote",
        _acting(lambda a: groups.Promote(user=a.user), "{user} is now an admin"),
        "make a member an admin (owner)",
        user=True,
        reason=True,
    )
    verb(
        "demote",
        _acting(lambda a: groups.Demote(user=a.user), "{user} is now a member"),
        "make an admin a member (owner)",
        user=True,
        reason=True,
    )
    verb(
        "transfer",
        _acting(lambda a: groups.Transfer(user=a.user), "{user} owns the group now"),
        "hand ownership to a member (owner)",
        user=True,
        reason=True,
    )
    p = verb(
        "rules",
        _acting(lambda a: groups.EditInfo(rules=a.text), "rules updated"),
        "set the group's rules",
        reason=True,
    )
    p.add_argument("text")
    p = verb(
        "describe",
        _acting(lambda a: groups.EditInfo(title=a.title, description=a.description), "updated"),
        "set the title or description",
        reason=True,
    )
    p.add_argument("--title")
    p.add_argument("--description")
    p = verb("settings", cmd_settings, "who may post, who may add, join approval", reason=True)
    p.add_argument("--who-can-post", choices=("admins", "all"))
    p.add_argument("--who-can-add", choices=("admins", "all"))
    p.add_argument("--approval", choices=("on", "off"))
    p = verb("invite", cmd_invite, "make an invite link")
    p.add_argument("--expires", default="7d", help="e.g. 1h, 7d (default 7d)")
    p = verb(
        "revoke",
        _acting(lambda a: groups.RevokeInvite(invite_id=a.invite), "revoked"),
        "revoke an invite link",
        reason=True,
    )
    p.add_argument("invite", metavar="INVITE_ID")
    p = verb("join", cmd_join, "ask to join with an invite link", target=False)
    p.add_argument("link")
    verb("requests", cmd_requests, "who asks to join")
    verb("approve", _answering(True), "let someone in", user=True, reason=True)
    verb("reject", _answering(False), "turn a join request down", user=True, reason=True)
    p = verb("mute", cmd_mute, "mute a member for a while", user=True, reason=True)
    p.add_argument("--for", dest="duration", required=True, help="e.g. 30m, 1h, 1d, or off")
    p = verb("delete", cmd_delete, "delete a message for everyone (admins)", reason=True)
    p.add_argument("message", metavar="MESSAGE")
    p = verb("report", cmd_report, "report a message to the admins, with proof of its sender")
    p.add_argument("message", metavar="MESSAGE")
    p.add_argument("--reason", required=True)
    verb("reports", cmd_reports, "reports members sent (admins)")
    verb("leave", _acting(lambda a: groups.Leave(), "you left the group"), "leave the group")
