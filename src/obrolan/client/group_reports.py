"""Reports: a member sends a group message, with its sender's signature, to the admins.

An admin checks the signature against the reported sender's signed device list, so a
report proves what was said, or says plainly that it does not (protocol §23.19).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from obrolan.client.conversation import Conversations
from obrolan.client.group_store import GroupStore, Report, group_peer
from obrolan.client.ids import new_id
from obrolan.client.models import Event
from obrolan.client.store import Store, now_ms
from obrolan.crypto.group_state import GroupView
from obrolan.crypto.signatures import verify
from obrolan.errors import RemoteProtocolError, SignatureError
from obrolan.protocol import content, groups
from obrolan.protocol.signing import group_message_bytes

if TYPE_CHECKING:
    from obrolan.client.groups import GroupHost

__all__ = ["GroupReports"]


class GroupReports:
    """Sends reports to a group's admins, and takes in the ones sent to this admin."""

    def __init__(
        self, store: Store, rows: GroupStore, host: GroupHost, conversations: Conversations
    ) -> None:
        self._store = store
        self._rows = rows
        self._host = host
        self._conversations = conversations

    def send(self, view: GroupView, signed: bytes, reason: str) -> int:
        """Queue the report of ``signed`` (a stored ``SignedGroupMessage``) to every other
        admin of ``view``; returns how many."""
        reported = groups.decode_signed_group_message(signed)
        admins = [a for a in view.admins if a != self._host.username]
        with self._store.transaction():
            for admin in admins:
                report = content.GroupReport(
                    message_id=new_id(),
                    sent_at_ms=now_ms(),
                    group_id=view.group_id,
                    reported=reported,
                    reason=reason,
                )
                self._host.queue_olm(admin, report, None)
        return len(admins)

    async def receive(
        self, view: GroupView | None, reporter: str, report: content.GroupReport
    ) -> list[Event]:
        """Keep a member's report if this device is an admin of ``view`` (the group's)."""
        if view is None or not view.is_admin(self._host.username) or reporter not in view.members:
            return []
        try:
            message = groups.decode_group_message(report.reported.message)
        except RemoteProtocolError:
            return []
        await self._host.verified_devices(message.sender)
        device_key = self._host.device_key(message.sender, message.sender_device)
        verified = False
        if device_key is not None and message.group_id == report.group_id:
            try:
                verify(
                    device_key,
                    group_message_bytes(report.reported.message),
                    report.reported.signature,
                )
                verified = True
            except SignatureError:
                pass
        peer = group_peer(report.group_id)
        with self._store.transaction():
            self._rows.add_report(
                Report(
                    report.group_id,
                    reporter,
                    message.sender,
                    message.message_id,
                    message.text,
                    report.reason,
                    verified,
                    now_ms(),
                )
            )
            proof = "signature verified" if verified else "⚠ the sender's signature does NOT verify"
            notice = self._conversations.notice(
                peer,
                f"{reporter} reported a message of {message.sender} ({proof}): {report.reason}",
            )
        return [Event("message", peer, notice)]
