"""How the server names one device: its account's username and its device id."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["DeviceAddress"]


class DeviceAddress(NamedTuple):
    """A device as storage and routing know it: ``(username, device_id)``."""

    username: str
    device_id: str

    def __str__(self) -> str:
        return f"{self.username}/{self.device_id}"
