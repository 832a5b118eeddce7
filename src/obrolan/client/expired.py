"""Envelopes that expired unread on the server (protocol §8): what to tell, what to ack.

Pure rules, no I/O. The server counts, per device, the envelopes it deleted unread at
their TTL and repeats the count in every ``welcome`` until the device acknowledges it
(``ack.expired``). An ack carries no answer, so the device remembers the number it
acknowledged last: a count at least that large may still include those (the ack was
lost with the connection), a smaller one proves the server took the ack.
"""

from __future__ import annotations

__all__ = ["expired_notice", "expired_to_tell"]


def expired_to_tell(acknowledged_before: int, expired: int) -> tuple[int, int]:
    """``(to tell the user now, to acknowledge)`` for a welcome's ``expired`` count."""
    if expired >= acknowledged_before:
        return expired - acknowledged_before, expired
    return expired, expired  # below what we acked: the server took it, all of these are new


def expired_notice(count: int) -> str:
    """The notice shown for ``count`` envelopes that expired unread."""
    messages = "message" if count == 1 else "messages"
    return (
        f"{count} {messages} sent to this device expired on the server before it connected"
        " (nobody can read them now; ask the senders to send again)"
    )
