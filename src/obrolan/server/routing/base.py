"""The ``Router`` ABC: tells a device's connection "you have new mail".

A router carries wake-ups only, never envelopes: the woken connection reads its
envelopes from storage. So a wake-up lost on the way costs latency (the envelope
goes out on the next wake-up or connection), never a message.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable

from obrolan.server.address import DeviceAddress

__all__ = ["Router", "WakeUp"]

WakeUp = Callable[[], None]
"""Called on the event loop, without arguments, when the device may have new mail."""


class Router(abc.ABC):
    """Delivers wake-ups from the connection that stored envelopes to the recipients'."""

    async def start(self) -> None:  # noqa: B027 - a no-op default, not an abstract method
        """Connect the backend. The in-process router needs nothing."""

    async def close(self) -> None:  # noqa: B027
        """Release the backend; calling it twice is a no-op."""

    @abc.abstractmethod
    def subscribe(self, device: DeviceAddress, wake: WakeUp) -> None:
        """Call ``wake`` whenever :meth:`publish` names ``device``, until unsubscribed.

        ``wake`` must be cheap and must not raise: it only flags work for later.
        """

    @abc.abstractmethod
    def unsubscribe(self, device: DeviceAddress, wake: WakeUp) -> None:
        """Stop calling ``wake`` for ``device``; a no-op if it is not subscribed."""

    @abc.abstractmethod
    async def publish(self, devices: Iterable[DeviceAddress]) -> None:
        """Wake every subscriber of each device, wherever it is connected.

        Best effort: a device without subscribers is skipped.
        """
