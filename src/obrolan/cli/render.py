"""How the CLI shows messages and events to a person (``--json`` prints ``as_json`` instead).

Every string in a message or event came from someone else (or was built from what
they sent): it goes through :mod:`obrolan.cli.safe_text` here, so no control
character reaches the terminal and a newline in a text cannot start a line that
passes for another message.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from datetime import datetime

from obrolan.cli.common import print_json
from obrolan.cli.safe_text import block, fit, one_line
from obrolan.client.group_store import is_group_peer
from obrolan.client.models import Event, Message, MessageState

__all__ = ["SHORT_ID", "format_event", "format_message", "print_messages", "show"]

SHORT_ID = 8
"""Characters of a message id shown; any unique prefix works where a verb takes MESSAGE."""


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def format_message(message: Message) -> str:
    """One message as a line (plus indented lines for warnings and earlier texts)."""
    when = _when(message.sent_at_ms)
    if message.state is MessageState.NOTICE:
        return f"{when} · {block(message.text)}"
    sender, peer = one_line(message.sender), one_line(message.peer)
    if is_group_peer(message.peer):  # a group: which one, and who wrote
        arrow = f"{peer[: SHORT_ID + 1]} {sender}"
    else:
        arrow = f"{sender} → {peer}" if message.outgoing else sender
    text = "this message was deleted" if message.deleted else block(message.text)
    if message.attachment is not None:
        name, size = (one_line(str(message.attachment[k])) for k in ("name", "size"))
        text = f"[file {name}, {size} bytes] {text}"
    marks = []
    if message.edited and not message.deleted:
        marks.append("edited")
    if message.arrived_late:
        marks.append("arrived late")  # shown where its sender put it (client/ordering.py)
    if message.expires_at_ms is not None:
        marks.append(f"disappears {_when(message.expires_at_ms)}")
    if message.outgoing:
        state = {
            MessageState.QUEUED: "queued",
            MessageState.HELD: "held: their account key changed, see `obrolan trust`",
            MessageState.FAILED: f"not sent: {one_line(message.error or '')}",
        }.get(message.state, message.receipt or _DELIVERY.get(message.delivery or "", "sent"))
        marks.append(state)
    line = f"{when} [{one_line(message.message_id[:SHORT_ID])}] {arrow}: {text}"
    if marks:
        line += f"  ({', '.join(marks)})"
    if message.reply_to:
        line += f"\n    ↪ in reply to [{one_line(message.reply_to[:SHORT_ID])}]"
    if message.reactions:
        line += "\n    " + "  ".join(
            f"{one_line(e)} {one_line(who)}" for who, e in message.reactions.items()
        )
    if message.warning:
        line += f"\n    ⚠ {block(message.warning)}"
    return line


_DELIVERY = {
    "not_delivered": "not delivered: no receipt within the server's time limit",
    "unconfirmed": "unconfirmed: the recipient sends no receipts",
}
"""How a sent message without a receipt after the server's TTL is shown (delivery_status)."""


def format_event(event: Event) -> str | None:
    """An event as `listen` shows it; None for nothing to show."""
    peer = one_line(event.peer)
    if event.kind == "typing":
        return f"… {peer} is typing" if event.active else f"… {peer} stopped typing"
    if event.kind == "request":
        return f"✉ message request from {peer}: `obrolan requests accept {peer}`"
    if event.kind == "verify":
        return f"🔐 {peer} wants to verify with you: run `obrolan verify {peer}`"
    if event.kind == "history":
        return "⇣ history from your other device arrived: `obrolan sync` imports it"
    if event.message is None:
        return None
    prefix = (
        "updated: "
        if event.kind == "update" and event.message.state is not MessageState.NOTICE
        else ""
    )
    return prefix + format_message(event.message)


def show(text: str) -> None:
    """Print lines that hold others' text (made safe already); on a terminal, each row is
    broken before the terminal would wrap it, so nothing they sent starts a row."""
    if sys.stdout.isatty():
        text = fit(text, shutil.get_terminal_size().columns)
    print(text, flush=True)


def print_messages(messages: Sequence[Message], as_json: bool) -> None:
    if as_json:
        print_json([m.as_json() for m in messages])
        return
    for message in messages:
        show(format_message(message))
