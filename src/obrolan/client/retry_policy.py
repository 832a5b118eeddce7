"""When the outbox sends again after the server refused it for now (pure: no I/O, no clock).

The server answers ``internal`` (its disk was full, say), ``queue_full`` (a
recipient device holds ``max_queue_per_device`` envelopes) or ``rate_limited``
(with ``retry_after_ms``) when the same request may pass later (spec §12, §13.1).
The outbox keeps the entry and sends it again on the same connection: after the
server's hint when it gave one, else after an exponential backoff with jitter.
Every other refusal of a request cannot pass by waiting: that entry fails with the
server's reason.
"""

from __future__ import annotations

from obrolan.protocol.codes import ErrorCode

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_START",
    "HINT_MAX",
    "RETRYABLE",
    "for_everyone",
    "is_retryable",
    "retry_delay",
]

RETRYABLE = frozenset({ErrorCode.INTERNAL, ErrorCode.QUEUE_FULL, ErrorCode.RATE_LIMITED})
"""Refusals after which the same request may pass later (spec §12)."""
BACKOFF_START = 0.5
"""Seconds before the first retry when the server gave no hint."""
BACKOFF_MAX = 30.0
"""The longest wait between two retries without a hint."""
HINT_MAX = 300.0
"""The longest ``retry_after_ms`` followed: a larger one is waited this long, then tried."""


def is_retryable(code: ErrorCode) -> bool:
    """True when the server refused for now: keep the entry and send it again later."""
    return code in RETRYABLE


def for_everyone(code: ErrorCode) -> bool:
    """True when the refusal holds for every entry (the server, or this account), not only
    for the recipient of the refused one (``queue_full`` is one recipient's full queue)."""
    return code is not ErrorCode.QUEUE_FULL


def retry_delay(attempt: int, retry_after_ms: int | None, jitter: float) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first).

    ``retry_after_ms`` is the server's hint (with ``rate_limited``), followed as given
    (up to :data:`HINT_MAX`). Without it: ``BACKOFF_START · 2^attempt``, capped at
    :data:`BACKOFF_MAX`, times a factor from 0.5 to 1 set by ``jitter`` (in [0, 1)),
    so clients refused together do not all come back at once.
    """
    if retry_after_ms is not None:
        return min(max(retry_after_ms, 0) / 1000, HINT_MAX)
    base = min(BACKOFF_START * 2.0 ** min(attempt, 32), BACKOFF_MAX)
    return base * (0.5 + min(max(jitter, 0.0), 1.0) / 2)
