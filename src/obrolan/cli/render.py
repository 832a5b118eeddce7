"""How the CLI shows messages and events to a person (``--json`` prints ``as_json`` instead)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from obrolan.cli.common import print_json
from obrolan.client.group_store import is_group_peer
from obrolan.client.models import Event, Message, MessageState

__all__ = ["SHORT_ID", "format_event", "format_message", "print_messages"]

SHORT_ID = 8
"""Characters of a message id shown; any unique prefix works where a verb takes MESSAGE."""


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def format_message(message: Message) -> str:
    """One message as a line (plus indented lines for warnings and earlier texts)."""
    when = _when(message.sent_at_ms)
    if message.state is MessageState.NOTICE:
        return f"{when} · {message.text}"
    if is_group_peer(message.peer):  # a group: which one, and who wrote
        arrow = f"{message.peer[: SHORT_ID + 1]} {message.sender}"
    else:
        arrow = f"{message.sender} → {message.peer}" if message.outgoing else message.sender
    text = "this message was deleted" if message.deleted else message.text
    if message.attachment is not None:
        text = f"[file {message.attachment['name']}, {message.attachment['size']} bytes] {text}"
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
            MessageState.FAILED: f"not sent: {message.error}",
        }.get(message.state, message.receipt or "sent")
        marks.append(state)
    line = f"{when} [{message.message_id[:SHORT_ID]}] {arrow}: {text}"
    if marks:
        line += f"  ({', '.join(marks)})"
    if message.reply_to:
        line += f"\n    ↪ in reply to [{message.reply_to[:SHORT_ID]}]"
    if message.reactions:
        line += "\n    " + "  ".join(f"{e} {who}" for who, e in message.reactions.items())
    if message.warning:
        line += f"\n    ⚠ {message.warning}"
    return line


def format_event(event: Event) -> str | None:
    """An event as `listen` shows it; None for nothing to show."""
    if event.kind == "typing":
        return f"… {event.peer} is typing" if event.active else f"… {event.peer} stopped typing"
    if event.kind == "request":
        return f"✉ message request from {event.peer}: `obrolan requests accept {event.peer}`"
    if event.kind == "verify":
        return f"🔐 {event.peer} wants to verify with you: run `obrolan verify {event.peer}`"
    if event.kind == "history":
        return "⇣ history from your other device arrived: `obrolan sync` imports it"
    if event.message is None:
        return None
    prefix = "updated: " if event.kind == "update" and event.message.state is not MessageState.NOTICE else ""
    return prefix + format_message(event.message)


def print_messages(messages: Sequence[Message], as_json: bool) -> None:
    if as_json:
        print_json([m.as_json() for m in messages])
        return
    for message in messages:
        print(format_message(message), flush=True)
