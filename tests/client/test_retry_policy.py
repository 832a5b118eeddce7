"""The outbox's retry policy after a refusal for now (client/retry_policy.py)."""

from __future__ import annotations

import pytest

from obrolan.client.retry_policy import (
    BACKOFF_MAX,
    BACKOFF_START,
    HINT_MAX,
    for_everyone,
    is_retryable,
    retry_delay,
)
from obrolan.protocol.codes import ErrorCode


def test_only_refusals_for_now_are_retried() -> None:
    assert {c for c in ErrorCode if is_retryable(c)} == {
        ErrorCode.INTERNAL,
        ErrorCode.QUEUE_FULL,
        ErrorCode.RATE_LIMITED,
    }
    assert not is_retryable(ErrorCode.ENVELOPE_TOO_LARGE)
    assert not is_retryable(ErrorCode.UNKNOWN_USER)


def test_a_full_queue_holds_back_only_its_recipient() -> None:
    assert not for_everyone(ErrorCode.QUEUE_FULL)
    assert for_everyone(ErrorCode.INTERNAL) and for_everyone(ErrorCode.RATE_LIMITED)


def test_the_backoff_doubles_from_half_a_second_to_its_cap_with_jitter() -> None:
    highest = [retry_delay(n, None, 0.999999) for n in range(12)]
    lowest = [retry_delay(n, None, 0.0) for n in range(12)]
    assert highest[0] == pytest.approx(BACKOFF_START) and lowest[0] == BACKOFF_START / 2
    assert highest[:4] == pytest.approx([0.5, 1.0, 2.0, 4.0])
    assert max(highest) == pytest.approx(BACKOFF_MAX) and highest[-1] == pytest.approx(30.0)
    assert all(low <= high for low, high in zip(lowest, highest, strict=True))
    assert retry_delay(10_000, None, 0.5) <= BACKOFF_MAX  # no overflow, still capped


def test_the_servers_hint_is_followed_up_to_its_cap() -> None:
    assert retry_delay(0, 250, 0.9) == 0.25
    assert retry_delay(7, 1500, 0.0) == 1.5  # the hint, not the backoff
    assert retry_delay(0, 0, 0.5) == 0.0
    assert retry_delay(0, -5, 0.5) == 0.0
    assert retry_delay(0, 10**9, 0.5) == HINT_MAX
