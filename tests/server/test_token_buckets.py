"""The token buckets of obrolan.server.rate_limit, with explicit clocks."""

from __future__ import annotations

import pytest

from obrolan.errors import RequestRefused
from obrolan.protocol.codes import ErrorCode
from obrolan.server.rate_limit import (
    Buckets,
    RateLimits,
    TokenBucket,
    refuse_if_limited,
    retry_after_ms,
)


def test_a_bucket_starts_full_and_refuses_past_its_burst() -> None:
    """A full bucket lets a burst through at once, then says how long the next one waits."""
    bucket = TokenBucket(rate=2.0, burst=4.0, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(4)] == [0.0] * 4
    assert bucket.take(1, 0.0) == pytest.approx(0.5)
    assert bucket.take(1, 0.25) == pytest.approx(0.25)  # a refusal takes nothing
    assert bucket.take(1, 0.5) == 0.0


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    """Quiet time refills the bucket, never beyond its burst."""
    bucket = TokenBucket(rate=10.0, burst=5.0, now=0.0)
    assert bucket.take(5, 0.0) == 0.0
    assert bucket.take(3, 0.3) == 0.0
    assert not bucket.full(0.3)
    assert bucket.full(100.0)
    assert bucket.take(5, 100.0) == 0.0
    assert bucket.take(1, 100.0) == pytest.approx(0.1)


def test_a_cost_above_the_burst_passes_when_full_and_leaves_a_debt() -> None:
    """A request larger than the burst is not refused for ever: it waits for a full bucket."""
    bucket = TokenBucket(rate=1.0, burst=10.0, now=0.0)
    assert bucket.take(30, 0.0) == 0.0
    assert bucket.take(1, 0.0) == pytest.approx(21.0)  # 20 of debt, then 1 token
    assert bucket.take(30, 21.0) == pytest.approx(9.0)  # needs a full bucket again
    assert bucket.take(30, 30.0) == 0.0


def test_a_charge_is_taken_whatever_the_bucket_holds() -> None:
    """Work measured afterwards is charged, and the debt delays what comes next."""
    bucket = TokenBucket(rate=100.0, burst=100.0, now=0.0)
    assert bucket.take(1, 0.0) == 0.0
    bucket.charge(199, 0.0)
    assert bucket.take(1, 0.0) == pytest.approx(1.01)


def test_a_clock_that_goes_back_changes_nothing() -> None:
    """Refilling never goes backwards (monotonic clocks only, but be safe)."""
    bucket = TokenBucket(rate=1.0, burst=1.0, now=10.0)
    assert bucket.take(1, 10.0) == 0.0
    assert bucket.take(1, 5.0) == pytest.approx(1.0)


def test_buckets_keep_one_bucket_per_key_and_forget_full_ones() -> None:
    """Keys are independent; prune drops only buckets that have refilled."""
    buckets = Buckets(rate=1.0, burst=2.0)
    assert buckets.take("alice", 2, 0.0) == 0.0
    assert buckets.take("alice", 1, 0.0) == pytest.approx(1.0)
    assert buckets.take("bob", 2, 0.0) == 0.0
    buckets.charge("carol", 1, 0.0)
    assert len(buckets) == 3
    buckets.prune(1.0)  # carol is full again; alice and bob have one token of two
    assert len(buckets) == 2
    buckets.prune(2.0)
    assert len(buckets) == 0
    assert buckets.take("alice", 2, 2.0) == 0.0  # a forgotten key starts full


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 5.0)])
def test_a_bucket_that_cannot_work_is_refused(rate: float, burst: float) -> None:
    """A zero or negative rate or burst is a configuration error, not a silent block."""
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(rate, burst, 0.0)
    with pytest.raises(ValueError, match="positive"):
        Buckets(rate, burst)


def test_retry_hints_round_up_to_whole_milliseconds() -> None:
    """A hint is never 0 (the client would retry at once) and never too early."""
    assert retry_after_ms(0.0) == 1
    assert retry_after_ms(0.0101) == 11
    assert retry_after_ms(2.5) == 2500


def test_bursts_hold_burst_seconds_of_each_rate() -> None:
    """Each bucket's size is its rate times burst_seconds, at least one."""
    limits = RateLimits(burst_seconds=2.0)
    assert limits.burst(500.0) == 1000.0
    assert limits.burst(0.1) == 1.0


def test_a_refusal_names_what_went_too_fast_and_carries_the_hint() -> None:
    """No wait: nothing raised; a wait: rate_limited with the message and the hint."""
    refuse_if_limited(0.0, "unused")
    with pytest.raises(RequestRefused) as refused:
        refuse_if_limited(1.25, "more than 2 frames a second")
    assert refused.value.code is ErrorCode.RATE_LIMITED
    assert refused.value.message == "more than 2 frames a second; try again in 1.2 s"
    assert refused.value.retry_after_ms == 1250
