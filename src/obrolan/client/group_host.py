"""What the client lends its groups: identity, outbox, device lists and account keys."""

from __future__ import annotations

from typing import Protocol

from obrolan.protocol import content
from obrolan.protocol.frames import DeviceKeys, MultiEnvelope
from obrolan.protocol.limits import Limits

__all__ = ["GroupHost"]


class GroupHost(Protocol):
    """What the client lends the groups: its identity, outbox and device lists."""

    username: str
    device_id: str

    def queue_olm(self, username: str, body: content.Content, to_device: str | None) -> None:
        """Queue an Olm-encrypted event (inside the caller's transaction)."""

    def queue_multi(self, envelope: MultiEnvelope, message_rowid: int) -> None:
        """Queue a ready multi-recipient envelope (inside the caller's transaction)."""

    async def verified_devices(self, username: str) -> list[DeviceKeys]:
        """The devices of ``username``'s verified list (ours: without this device)."""

    async def account_key_of(self, username: str) -> str | None:
        """The account key pinned for ``username`` (looked up on first contact)."""

    async def earlier_account_keys(self, username: str) -> list[str]:
        """Keys that provably came before that one (recoveries), oldest first."""

    def device_key(self, username: str, device_id: str) -> str | None:
        """The Ed25519 key of a device in ``username``'s last verified list."""

    def sign_device(self, data: bytes) -> str:
        """Sign with this device's Ed25519 key."""

    def limits(self) -> Limits:
        """What the server announced (a larger group's message takes several uploads)."""
