"""Token buckets: how fast one connection or one account may use the server.

Pure logic, no I/O and no clock of its own: callers pass ``now`` (``time.monotonic()``).
Every operation is O(1), so a check per frame costs a few float operations. ::

    frames = TokenBucket(rate=1000, burst=10_000, now=now)
    wait = frames.take(1, now)         # 0.0: go ahead; else seconds until it would pass
    sends = Buckets(rate=1000, burst=10_000)
    wait = sends.take("alice", 3, now)
    sends.charge("alice", 10, now)     # work found out afterwards (it may leave a debt)
    sends.prune(now)                   # forget accounts whose buckets are full again

A cost above the burst passes when the bucket is full and leaves a debt, so the burst
bounds how often, never whether, a large request (a blob, a large group's keys) can go.
"""

from __future__ import annotations

import dataclasses
import math

from obrolan.errors import RequestRefused
from obrolan.protocol.codes import ErrorCode

__all__ = ["Buckets", "Limiter", "RateLimits", "TokenBucket", "refuse_if_limited", "retry_after_ms"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RateLimits:
    """The server's rate limits (``obrolan serve`` options); each bucket holds
    ``burst_seconds`` of its rate."""

    frames_per_second: float = 1000.0
    """WebSocket messages per connection (every frame, acks included)."""
    sends_per_second: float = 1000.0
    """Envelopes uploaded per account (one per ``send`` envelope, one per ``send_multi``)."""
    claims_per_second: float = 200.0
    """One-time keys claimed per account (one per device answered in ``claimed_keys``)."""
    blob_bytes_per_second: float = 16 * 1024 * 1024
    """Blob bytes uploaded per account."""
    burst_seconds: float = 10.0
    """How much of each rate may be used at once after a quiet time."""
    max_unauthenticated: int = 256
    """Most connections open at once that are not authenticated (waiting links included)."""

    def burst(self, rate: float) -> float:
        """The size of a bucket of ``rate``: never below one unit."""
        return max(1.0, rate * self.burst_seconds)


def retry_after_ms(seconds: float) -> int:
    """A retry hint in whole milliseconds, at least 1."""
    return max(1, math.ceil(seconds * 1000))


def refuse_if_limited(wait: float, what: str) -> None:
    """Refuse with ``rate_limited`` when a bucket asked to ``wait`` seconds (0: go ahead).

    Raises:
        RequestRefused: ``rate_limited`` with the hint, its message saying what went too
            fast (``what``) and when to try again.
    """
    if wait:
        raise RequestRefused(
            ErrorCode.RATE_LIMITED,
            f"{what}; try again in {wait:.1f} s",
            retry_after_ms=retry_after_ms(wait),
        )


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; starts full."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = now

    def _refill(self, now: float) -> float:
        if now > self._stamp:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
        return self._tokens

    def take(self, cost: float, now: float) -> float:
        """Take ``cost`` tokens if the bucket holds them (or is full, for a cost above the
        burst): returns 0.0. Otherwise takes nothing and returns the seconds until it would."""
        tokens = self._refill(now)
        need = min(cost, self._burst)
        if tokens >= need:
            self._tokens = tokens - cost
            return 0.0
        return (need - tokens) / self._rate

    def charge(self, cost: float, now: float) -> None:
        """Take ``cost`` tokens whatever the bucket holds (work measured after it was done)."""
        self._tokens = self._refill(now) - cost

    def full(self, now: float) -> bool:
        """True when the bucket holds its whole burst (it is then as good as a new one)."""
        return self._refill(now) >= self._burst


class Buckets:
    """One :class:`TokenBucket` per key (an account); a missing key has a full bucket."""

    __slots__ = ("_buckets", "_burst", "_rate")

    def __init__(self, rate: float, burst: float) -> None:
        TokenBucket(rate, burst, 0.0)  # refuses a rate or burst that cannot work
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, now)
        return bucket

    def take(self, key: str, cost: float, now: float) -> float:
        """:meth:`TokenBucket.take` on ``key``'s bucket."""
        return self._bucket(key, now).take(cost, now)

    def charge(self, key: str, cost: float, now: float) -> None:
        """:meth:`TokenBucket.charge` on ``key``'s bucket."""
        self._bucket(key, now).charge(cost, now)

    def prune(self, now: float) -> None:
        """Forget the buckets that are full again, so memory follows recent use only."""
        full = [key for key, bucket in self._buckets.items() if bucket.full(now)]
        for key in full:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class Limiter:
    """The limits one relay enforces: a bucket per connection for frames, per account
    for envelopes sent, keys claimed and blob bytes, and the count of connections
    waiting to authenticate. Kept in memory, by connection or username, never by address.
    """

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self._sends = Buckets(limits.sends_per_second, limits.burst(limits.sends_per_second))
        self._claims = Buckets(limits.claims_per_second, limits.burst(limits.claims_per_second))
        self.blob_uploads = Buckets(
            limits.blob_bytes_per_second, limits.burst(limits.blob_bytes_per_second)
        )
        """Blob bytes uploaded, per account (charged by the blob store's HTTP handlers)."""
        self._unauthenticated = 0

    def frame_bucket(self, now: float) -> TokenBucket:
        """A new connection's bucket of frames."""
        rate = self.limits.frames_per_second
        return TokenBucket(rate, self.limits.burst(rate), now)

    def check_frames(self, wait: float) -> None:
        """Refuse a frame its connection's bucket asked to ``wait`` for (0: go ahead)."""
        rate = self.limits.frames_per_second
        refuse_if_limited(wait, f"more than {rate:g} frames a second on this connection")

    def check_sends(self, username: str, envelopes: int, now: float) -> None:
        """Take ``envelopes`` from the account's bucket of sends, or refuse."""
        rate = self.limits.sends_per_second
        wait = self._sends.take(username, envelopes, now)
        refuse_if_limited(wait, f"this account sent more than {rate:g} envelopes a second")

    def check_claim(self, username: str, now: float) -> None:
        """Take one key from the account's bucket of claims, or refuse; the rest of what
        the claim got is charged after it (:meth:`charge_claims`)."""
        rate = self.limits.claims_per_second
        wait = self._claims.take(username, 1, now)
        refuse_if_limited(wait, f"this account claimed more than {rate:g} keys a second")

    def charge_claims(self, username: str, claimed: int, now: float) -> None:
        """Charge a claim that got ``claimed`` keys (one was taken by :meth:`check_claim`)."""
        self._claims.charge(username, claimed - 1, now)

    def opened(self) -> None:
        """A connection was accepted: it waits to authenticate."""
        self._unauthenticated += 1

    def stopped_waiting(self) -> None:
        """A connection counted by :meth:`opened` authenticated or closed."""
        self._unauthenticated -= 1

    def full_of_unauthenticated(self) -> bool:
        """True while ``max_unauthenticated`` connections wait: a new one is refused."""
        return self._unauthenticated >= self.limits.max_unauthenticated

    def prune(self, now: float) -> None:
        """Forget the accounts whose buckets are full again."""
        for buckets in (self._sends, self._claims, self.blob_uploads):
            buckets.prune(now)
