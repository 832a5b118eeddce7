"""What the sender's device says about a message it sent: a pure rule, no I/O.

The server keeps nothing per sender about envelopes that expire unread (protocol
§8), so the sender's device judges for itself: a message the server accepted
(`sent`) that got no delivery receipt within the server's announced
``envelope_ttl_seconds`` has been deleted unread, unless the recipient turned its
receipts off (it said so with a receipt of status ``off``, §15.11), in which case
nobody can tell and the message is only "unconfirmed".
"""

from __future__ import annotations

__all__ = ["NOT_DELIVERED", "UNCONFIRMED", "delivery_status"]

NOT_DELIVERED = "not_delivered"
"""No delivery receipt within the server's TTL: the server deleted it unread."""
UNCONFIRMED = "unconfirmed"
"""The TTL ran out without a receipt, but the recipient sends no receipts."""


def delivery_status(
    *,
    outgoing: bool,
    group: bool,
    state: str,
    receipt: str | None,
    sent_at_ms: int | None,
    ttl_seconds: int | None,
    peer_receipts_off: bool,
    now_ms: int,
) -> str | None:
    """``not_delivered``, ``unconfirmed`` or None (nothing to say beyond state and receipt).

    ``group``: the message went to a group. ``sent_at_ms`` is when the server acknowledged the message (this device's clock),
    ``ttl_seconds`` the server's announced envelope TTL; either unknown gives None.
    """
    if not outgoing or group or state != "sent" or receipt is not None:
        return None  # group messages carry no receipts (§23): nothing to judge by
    if sent_at_ms is None or ttl_seconds is None:
        return None
    if now_ms < sent_at_ms + ttl_seconds * 1000:
        return None  # the recipient may still fetch it
    return UNCONFIRMED if peer_receipts_off else NOT_DELIVERED
