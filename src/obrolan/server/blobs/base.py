"""The ``BlobStore`` ABC: encrypted attachments, held until every addressed device fetched them.

A blob is opaque ciphertext of a size announced when it is created. Its uploader
appends bytes at the offset the store already holds, so an interrupted upload
resumes where it stopped; once complete, each device it is addressed to may read it,
and when every one of them has said it fetched the blob (or its time runs out) the
blob is deleted. Every backend keeps the semantics written in these docstrings.
Refusals are raised as :class:`~obrolan.errors.RequestRefused` with the wire code.

What a backend may hold: the blob id, the uploading account and device, the size,
how many bytes were received, the expiry time and upload deadline, the devices that
have not fetched it yet, and the ciphertext. Nothing else: no names, no types, no
creation or fetch times, nothing about who fetched it already.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from obrolan.server.address import DeviceAddress

__all__ = ["BlobStore", "NewBlob", "OpenBlob"]


@dataclass(frozen=True, slots=True)
class NewBlob:
    """A blob as its uploader announces it."""

    blob_id: str
    owner: DeviceAddress
    """The uploading device; only it may append to the blob."""
    size: int
    """The blob's exact size in bytes."""
    recipients: frozenset[DeviceAddress]
    """The devices that may read it; it is deleted once all of them fetched it."""
    expires_at: int
    """Seconds since the Unix epoch at which the blob is deleted, fetched or not."""
    upload_deadline: int
    """Seconds since the Unix epoch at which the blob is deleted if still incomplete."""


class OpenBlob(abc.ABC):
    """A complete blob opened for reading; it stays readable until closed, even if deleted."""

    size: int
    """The blob's size in bytes."""

    @abc.abstractmethod
    def chunks(self, offset: int) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset`` to its end, a bounded piece at a time."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the blob; closing twice is a no-op."""


class BlobStore(abc.ABC):
    """Where the server keeps blobs. Call :meth:`start` before anything else."""

    # --- lifecycle ---------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the store, bring its schema up to date, and drop leftovers of a crash.

        Raises:
            StorageError: the store cannot be opened or its schema is newer than this code.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the store; every completed write is durable. Closing twice is a no-op."""

    # --- uploads -----------------------------------------------------------------------

    @abc.abstractmethod
    async def create(self, blob: NewBlob, quota: int) -> tuple[bool, int]:
        """Announce a blob durably; returns ``(created, expires_at)``.

        A blob id the same device already announced with the same size is a repeated
        request: nothing changes and ``created`` is False (``expires_at`` is the stored
        one). Recipients must already be known to exist.

        Raises:
            RequestRefused: ``blob_exists`` if another device, or another size, holds the
                id; ``quota_exceeded`` if the owner's account would then hold more than
                ``quota`` bytes of blobs (counted at their announced sizes).
        """

    @abc.abstractmethod
    async def received(self, blob_id: str, owner: DeviceAddress) -> int:
        """How many bytes of its blob the owner has durably uploaded.

        Waits for an append to the same blob that is under way.

        Raises:
            RequestRefused: ``unknown_blob`` if there is no such blob of this owner.
        """

    @abc.abstractmethod
    async def append(
        self, blob_id: str, owner: DeviceAddress, offset: int, data: AsyncIterable[bytes]
    ) -> int:
        """Append ``data`` at ``offset``; returns how many bytes the blob then holds.

        Appends to one blob run one at a time. ``offset`` must equal the bytes held. Every
        byte written is durable when this returns or raises, even if ``data`` fails half
        way (a dropped connection): a retry resumes after the last byte kept. Bytes past
        the blob's size are not kept.

        Raises:
            RequestRefused: ``unknown_blob`` if there is no such blob of this owner,
                ``offset_mismatch`` if ``offset`` is not the bytes held,
                ``blob_too_large`` if ``data`` goes past the blob's size.
        """

    # --- downloads ---------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self, blob_id: str, reader: DeviceAddress) -> OpenBlob:
        """Open a complete blob for a device it is addressed to and that has not fetched it.

        Raises:
            RequestRefused: ``unknown_blob`` if the blob does not exist, is incomplete,
                or ``reader`` may not read it: one answer for all three.
        """

    @abc.abstractmethod
    async def fetched(self, blob_id: str, reader: DeviceAddress) -> None:
        """Record that ``reader`` has the blob; it may not read it again.

        When no addressed device is left, the blob is deleted (complete or not). A blob or
        device it does not concern is ignored, so repeating this is harmless.
        """

    @abc.abstractmethod
    async def forget_devices(self, devices: list[DeviceAddress]) -> None:
        """The devices left their accounts: they may read no blob any more, as if each had
        fetched every blob addressed to it (a blob no device is left waiting for is
        deleted). Blobs they uploaded stay until fetched or expired."""

    @abc.abstractmethod
    async def sweep_expired(self, now: int) -> int:
        """Delete every blob past its expiry, and every incomplete one past its upload
        deadline; returns how many."""

    # --- operator ----------------------------------------------------------------------

    @abc.abstractmethod
    async def disclose(self, username: str) -> dict[str, Any]:
        """What is held for and from one account, as JSON-ready data, never content.

        Keys: ``blobs_from_account`` (each: ``blob_id``, ``from_device``, ``size``,
        ``received``, ``expires_day``, ``waiting_for``: the "user/device" that have not
        fetched it) and ``blobs_for_account`` (blobs addressed to its devices and not yet
        fetched: ``blob_id``, ``to_device``, ``from_user``, ``from_device``, ``size``,
        ``expires_day``).
        """

    @abc.abstractmethod
    async def stats(self) -> dict[str, int]:
        """Counts for the operator: ``blobs`` and ``blob_bytes`` (bytes received and held)."""
