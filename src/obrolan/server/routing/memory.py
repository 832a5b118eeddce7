"""``MemoryRouter``: wake-ups between connections of one server process."""

from __future__ import annotations

from collections.abc import Iterable

from obrolan.server.address import DeviceAddress
from obrolan.server.routing.base import Router, WakeUp

__all__ = ["MemoryRouter"]


class MemoryRouter(Router):
    """Routes wake-ups inside one process (one node)."""

    def __init__(self) -> None:
        self._subscribers: dict[DeviceAddress, set[WakeUp]] = {}

    def subscribe(self, device: DeviceAddress, wake: WakeUp) -> None:
        self._subscribers.setdefault(device, set()).add(wake)

    def unsubscribe(self, device: DeviceAddress, wake: WakeUp) -> None:
        subscribers = self._subscribers.get(device)
        if subscribers is not None:
            subscribers.discard(wake)
            if not subscribers:
                del self._subscribers[device]

    async def publish(self, devices: Iterable[DeviceAddress]) -> None:
        for device in devices:
            for wake in self._subscribers.get(device, ()):
                wake()
