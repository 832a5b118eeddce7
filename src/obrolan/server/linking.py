"""Linking a new device: offers held in memory under a link id, never written to disk.

A new device, not yet part of any account, sends ``link_wait`` with its offer (sealed
with the link code's secret, which the server never sees) on an unauthenticated
connection and keeps that connection open. An existing device fetches the offer with
``link_fetch`` and answers it with ``link_approve``; the server pushes the answer to
the waiting connection. A link id serves one approval: afterwards it is remembered as
used until its time runs out, so that a second approval gets ``link_used``. When the
waiting connection goes away before an approval, the link is forgotten at once.

Everything lives in this process: a link waits on the node its new device is
connected to (routing between nodes does not carry links yet).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from obrolan.errors import RequestRefused
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import LinkAnswer

__all__ = ["LinkWaiter", "Links"]


class LinkWaiter(Protocol):
    """The connection of a new device that waits for its link's answer."""

    async def link_answered(self, answer: LinkAnswer) -> None:
        """Push the approving device's answer to the new device."""

    def link_expired(self, link_id: str) -> None:
        """The link's time ran out: close the connection unless it has authenticated since."""


@dataclass(slots=True)
class _Link:
    offer: bytes
    waiter: LinkWaiter | None
    """None once the waiting connection is gone (only a used link is kept then)."""
    timer: asyncio.TimerHandle
    used: bool = False


def _unknown(link_id: str) -> RequestRefused:
    return RequestRefused(
        ErrorCode.UNKNOWN_LINK, f"no new device waits under link {link_id} (or it expired)"
    )


class Links:
    """Every link of this server process.

    Args:
        ttl: seconds a link lives after ``link_wait``, approved or not.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._links: dict[str, _Link] = {}

    def wait(self, link_id: str, offer: bytes, waiter: LinkWaiter) -> None:
        """Hold ``offer`` under ``link_id`` for ``waiter`` until the TTL runs out.

        Raises:
            RequestRefused: ``link_exists`` if the link id is taken (waiting or used).
        """
        if link_id in self._links:
            raise RequestRefused(
                ErrorCode.LINK_EXISTS, f"link {link_id} is taken; show a new link code"
            )
        timer = asyncio.get_running_loop().call_later(self.ttl, self._expire, link_id)
        self._links[link_id] = _Link(offer, waiter, timer)

    def fetch(self, link_id: str) -> bytes:
        """The offer waiting under ``link_id``.

        Raises:
            RequestRefused: ``unknown_link`` if nobody waits under it (never did, expired,
                or the new device went away), ``link_used`` if it was approved already.
        """
        return self._waiting(link_id).offer

    async def approve(self, link_id: str, answer: bytes) -> None:
        """Push ``answer`` to the device waiting under ``link_id``, and use the link up.

        Raises:
            RequestRefused: as :meth:`fetch`.
        """
        link = self._waiting(link_id)
        waiter = link.waiter
        assert waiter is not None  # a link whose device went away is forgotten (leave)
        link.used = True
        link.offer = b""
        await waiter.link_answered(LinkAnswer(link_id=link_id, answer=answer))

    def leave(self, link_id: str, waiter: LinkWaiter) -> None:
        """``waiter``'s connection is gone: forget its link unless it was approved
        (a used link id stays used until it expires)."""
        link = self._links.get(link_id)
        if link is None or link.waiter is not waiter:
            return
        link.waiter = None
        if not link.used:
            link.timer.cancel()
            del self._links[link_id]

    def close(self) -> None:
        """Forget every link (the server stops)."""
        for link in self._links.values():
            link.timer.cancel()
        self._links.clear()

    def _waiting(self, link_id: str) -> _Link:
        link = self._links.get(link_id)
        if link is None:
            raise _unknown(link_id)
        if link.used:
            raise RequestRefused(
                ErrorCode.LINK_USED, f"link {link_id} was approved already; show a new link code"
            )
        return link

    def _expire(self, link_id: str) -> None:
        link = self._links.pop(link_id)
        if link.waiter is not None:
            link.waiter.link_expired(link_id)
