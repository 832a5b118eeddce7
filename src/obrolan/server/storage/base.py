"""The ``Storage`` ABC: accounts, their signed device lists, one-time keys and the mailbox.

Every backend keeps the semantics written in these docstrings; the relay relies
on nothing else. Refusals are raised as :class:`~obrolan.errors.RequestRefused`
with the wire code, so the relay can send them as they are.

What a backend may hold is fixed by the design: usernames, the day an account was
created, the account's public account key, its signed device list (as the account
key signed it) and its version, the public recovery key, device public keys, the day
a device was created and last active, unclaimed public one-time keys, the fallback
key, and envelopes until they are acknowledged or expire. No IP addresses, no
contact lists, no timestamps finer than a day except an envelope's expiry.

The devices of an account are exactly those of its last accepted device list:
publishing a list (or recovering the account) removes the devices that left it,
with their queued envelopes and keys.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any, NamedTuple

from obrolan.protocol.frames import (
    ClaimedDevice,
    DeviceKeys,
    Envelope,
    KeySuccession,
    MultiEnvelope,
    OneTimeKey,
    OutboundEnvelope,
    Recipient,
    SignedDeviceList,
)
from obrolan.server.address import DeviceAddress

__all__ = [
    "NOT_HELD",
    "Account",
    "AccountDevices",
    "PendingEnvelope",
    "PublishedList",
    "RecoveryKey",
    "Storage",
    "StoreResult",
    "StoredEnvelopes",
]


class PublishedList(NamedTuple):
    """A device list whose signatures the relay has verified, as storage keeps it."""

    signed: SignedDeviceList
    """Kept exactly as signed: clients verify it again."""
    account_key: str
    version: int
    devices: list[DeviceKeys]
    """The listed devices' keys, in list order."""


class RecoveryKey(NamedTuple):
    """An account's recovery key and its account key's signature over it."""

    key: str
    signature: str
    """Ed25519 of the account key over :func:`obrolan.protocol.signing.recovery_key_bytes`."""


class Account(NamedTuple):
    """What the relay checks an account's signed requests against."""

    account_key: str | None
    """None for an account created before device lists (it cannot publish one)."""
    list_version: int
    """The version of the stored device list, 0 if there is none."""
    recovery_key: str | None
    recovery_key_signature: str | None
    """None for an account whose recovery key was set before the key was signed."""


class AccountDevices(NamedTuple):
    """Answer to :meth:`Storage.get_devices`."""

    device_list: SignedDeviceList
    last_active: dict[str, str]
    """Device id to the last UTC day it authenticated; empty unless asked for."""
    successions: list[KeySuccession]
    """How the account's earlier account keys led to the list's, oldest first."""


PendingEnvelope = tuple[int, Envelope]
"""``(seq, envelope)``: an envelope waiting for a device and its place in the queue."""


class StoredEnvelopes(NamedTuple):
    """What one ``send`` or ``send_multi`` stored for one recipient device.

    The relay hands these straight to the device's connection on this node when that
    connection has already delivered everything up to ``previous_seq``, instead of
    reading them back from storage.
    """

    device: DeviceAddress
    previous_seq: int
    """The ``seq`` of the device's envelope stored just before these; no envelope of the
    device lies between it and the first of ``envelopes``. -1 when the backend cannot tell
    (the relay then reads the device's queue from storage)."""
    envelopes: list[PendingEnvelope]
    """The newly stored envelopes in ``seq`` order; a resend of a queued envelope is not here."""


class StoreResult(NamedTuple):
    """What one ``send`` or ``send_multi`` stored, and what it did not."""

    stored: list[StoredEnvelopes]
    skipped: list[str]
    """Ids of envelopes not stored: for ``send``, because their device is not (or no longer)
    in the recipient's account, in the order of the send; for ``send_multi``, the envelope's
    id when no recipient was queued."""
    skipped_recipients: list[Recipient]
    """For ``send_multi``: the recipients not queued, in the order given (always empty
    for ``send``)."""


NOT_HELD: tuple[str, ...] = (
    "messages after delivery (deleted on acknowledgement, or when their TTL runs out)",
    "message content (only end-to-end ciphertext is ever stored)",
    "contact lists",
    "group membership",
    "IP addresses",
    "message timestamps (only an expiry time per queued envelope)",
    "passwords or anything password-like (devices authenticate with signatures)",
)
"""What the server never stores; :meth:`Storage.disclose` lists it for the operator."""


class Storage(abc.ABC):
    """Where the relay keeps its state. Call :meth:`start` before anything else."""

    # --- lifecycle ---------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the backend and bring its schema up to date.

        Raises:
            StorageError: the store cannot be opened or its schema is newer than this code.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish every write already requested, then release the backend.

        After it returns nothing deleted lingers in the backend's logs. Closing twice
        is a no-op.
        """

    # --- directory ---------------------------------------------------------------------

    @abc.abstractmethod
    async def create_account(
        self,
        username: str,
        device_list: PublishedList,
        recovery_key: RecoveryKey,
        one_time_keys: list[OneTimeKey],
        fallback_key: OneTimeKey | None,
        day: str,
    ) -> None:
        """Create an account with its first device list (one device) and that device's
        keys, atomically.

        Signatures must already be verified. ``day`` (``YYYY-MM-DD``) becomes both the
        account's and the device's created and last-active day.

        Raises:
            RequestRefused: ``username_taken`` if the username exists (nothing is written).
        """

    @abc.abstractmethod
    async def account(self, username: str) -> Account | None:
        """The account's keys and list version, or None if there is no such account."""

    @abc.abstractmethod
    async def device_keys(self, device: DeviceAddress) -> DeviceKeys | None:
        """The device's public keys, or None if the account or the device does not exist."""

    @abc.abstractmethod
    async def touch_device(self, device: DeviceAddress, day: str) -> bool:
        """Record that the device was active on ``day`` (a no-op when it already is).

        Returns False when the device does not exist (any more): it was removed since
        its keys were read.
        """

    @abc.abstractmethod
    async def get_devices(self, username: str, *, last_active: bool) -> AccountDevices:
        """The account's signed device list, as last published; with ``last_active``
        also each device's last active day.

        Raises:
            RequestRefused: ``unknown_user``, also for an account created before device
                lists (it has none).
        """

    @abc.abstractmethod
    async def publish_devices(
        self, username: str, device_list: PublishedList, day: str
    ) -> list[DeviceAddress]:
        """Replace the account's device list with a newer one, atomically.

        Signatures must already be verified. Devices that are new in the list (a new
        device id, or new keys under an old id) are created with ``day`` as their created
        and last-active day; devices that left it are deleted with their queued
        envelopes and keys. Returns the deleted devices.

        Raises:
            RequestRefused: ``bad_device_list`` if the account's account key is not the
                list's, or the list's version is not above the stored one (the check and
                the write are one step, so of two racing lists one fails).
        """

    @abc.abstractmethod
    async def recover(
        self,
        username: str,
        old_recovery_key: str,
        device_list: PublishedList,
        recovery_key: RecoveryKey,
        succession: KeySuccession | None,
        one_time_keys: list[OneTimeKey],
        fallback_key: OneTimeKey | None,
        day: str,
    ) -> list[DeviceAddress]:
        """Hand the account to a new account key, atomically: store the new list (one
        device), its device's keys, the new recovery key and ``succession`` (None when
        the old recovery key was never signed); delete every old device with its queued
        envelopes and keys. Returns the deleted devices.

        Raises:
            RequestRefused: ``auth_failed`` if the account does not exist or its recovery
                key is no longer ``old_recovery_key`` (nothing is written).
        """

    @abc.abstractmethod
    async def set_recovery(
        self, username: str, account_key: str, recovery_key: RecoveryKey
    ) -> None:
        """Replace the account's recovery key.

        Raises:
            RequestRefused: ``bad_signature`` if the account key is no longer
                ``account_key`` (the signature was checked against it).
        """

    @abc.abstractmethod
    async def upload_keys(
        self,
        device: DeviceAddress,
        one_time_keys: list[OneTimeKey],
        fallback_key: OneTimeKey | None,
        max_one_time_keys: int,
    ) -> int:
        """Add one-time keys (and replace the fallback key if one is given), atomically.

        Signatures must already be verified. A key id the device already holds is kept
        once. Returns how many unclaimed one-time keys the device holds afterwards.

        Raises:
            RequestRefused: ``too_many_items`` if the device would then hold more than
                ``max_one_time_keys`` unclaimed keys (nothing is written).
        """

    @abc.abstractmethod
    async def count_one_time_keys(self, device: DeviceAddress) -> int:
        """How many unclaimed one-time keys the device holds (0 for an unknown device)."""

    @abc.abstractmethod
    async def claim_keys(self, username: str, device_ids: list[str] | None) -> list[ClaimedDevice]:
        """Claim one key of each listed device (every device if None), in device id order.

        Each device gives one of its one-time keys, which is deleted in the same atomic
        step, so no two claims ever get the same one-time key. A device with none left
        gives its fallback key (``fallback=True``, not deleted); with neither, the
        entry's ``one_time_key`` is None.

        Raises:
            RequestRefused: ``unknown_user``, or ``unknown_device`` if a listed device id
                does not exist (nothing is claimed).
        """

    # --- mailbox -----------------------------------------------------------------------

    @abc.abstractmethod
    def store_envelopes(
        self,
        sender: DeviceAddress,
        envelopes: list[OutboundEnvelope],
        expires_at: int,
        max_queue: int,
    ) -> asyncio.Future[StoreResult]:
        """Queue a durable write of envelopes for their devices: all of them, or none.

        Returns at once, so that a connection can pipeline its sends; writes queued one
        after another are applied in that order. When the future's result is set, the
        envelopes survive a crash of the server. An envelope id the recipient device
        already has queued is stored once (a resend is a no-op). ``expires_at`` is in
        seconds since the Unix epoch. The result's ``stored`` has one entry per distinct
        recipient device, in the order the devices first appear in ``envelopes``;
        envelopes for a device the recipient's account does not have are not stored and
        are listed in ``skipped``.

        The future fails with :class:`RequestRefused`: ``unknown_user`` for a recipient
        account that does not exist, ``queue_full`` if a recipient would then have more
        than ``max_queue`` envelopes waiting.
        """

    @abc.abstractmethod
    def store_multi(
        self,
        sender: DeviceAddress,
        envelope: MultiEnvelope,
        expires_at: int,
        max_queue: int,
    ) -> asyncio.Future[StoreResult]:
        """Queue a durable write of one ciphertext for several devices, like
        :meth:`store_envelopes` (same ordering, durability and ``expires_at``).

        The ciphertext is held once, however many devices it is queued for; each device's
        queue gets an entry that reads as an ordinary envelope from ``sender`` (see
        :meth:`pending`), is deleted by that device's :meth:`ack` or at expiry, and the
        ciphertext goes with the last entry. ``envelope.recipients`` must be distinct (the
        relay checks). A recipient is not queued, and is listed in ``skipped_recipients``,
        when its account does not exist, the account has no such device, or its queue
        would then hold more than ``max_queue`` envelopes: one recipient never fails the
        others. When no recipient is queued, nothing is written and the envelope's id is
        in ``skipped``.

        A resend from the same sender device while any device still has the envelope
        queued writes no second copy: devices that have it queued keep their one entry
        (as with :meth:`store_envelopes`, and they are not in ``stored``), and a recipient
        that has not (its queue had been full) is queued to the ciphertext already held.

        The future never fails with :class:`RequestRefused`.
        """

    @abc.abstractmethod
    async def last_seq(self, device: DeviceAddress) -> int:
        """The ``seq`` of the newest envelope waiting for the device, 0 if there is none."""

    @abc.abstractmethod
    async def pending(
        self, device: DeviceAddress, after_seq: int, limit: int
    ) -> list[PendingEnvelope]:
        """Up to ``limit`` envelopes waiting for the device with ``seq > after_seq``.

        Ordered by ``seq``, which grows in the order envelopes were stored (commit
        order), so a reader that remembers the last seq it saw never misses a later
        envelope.
        """

    @abc.abstractmethod
    async def ack(self, device: DeviceAddress, envelope_ids: list[str]) -> None:
        """Delete these envelopes of the device (ids it does not have are ignored).

        Returns at once, without waiting for the deletion: it becomes durable (and visible
        to other readers) a moment later, and a crash before that redelivers the
        envelopes, which clients drop by id. Deleted ciphertext must not stay recoverable
        from the backend's files once the backend has been idle for a moment.
        """

    @abc.abstractmethod
    async def queue_length(self, device: DeviceAddress) -> int:
        """How many envelopes wait for the device (0 for an unknown device)."""

    @abc.abstractmethod
    async def sweep_expired(self, now: int) -> int:
        """Delete every envelope with ``expires_at <= now``; returns how many.

        Each deleted envelope is counted for its device (see :meth:`take_expired`).
        """

    @abc.abstractmethod
    async def take_expired(self, device: DeviceAddress, now: int) -> int:
        """Delete the device's envelopes past their TTL; how many expired unread, not yet told."""

    @abc.abstractmethod
    async def expired_told(self, device: DeviceAddress, count: int) -> None:
        """The device told its user of ``count`` expired envelopes: lower its count by that."""

    # --- operator ----------------------------------------------------------------------

    @abc.abstractmethod
    async def disclose(self, username: str) -> dict[str, Any]:
        """Everything held about one account, as JSON-ready data, never ciphertext.

        Keys: ``username``, ``created_day``, ``account_key`` (None for an account
        created before device lists), ``list_version``, ``recovery_key_held``,
        ``devices`` (each: ``device_id``,
        ``ed25519``, ``curve25519``, ``signature``, ``created_day``,
        ``last_active_day``, ``unclaimed_one_time_keys``, ``fallback_key_held``,
        ``expired_unread``: envelopes deleted unread at their TTL, until the device says it told its user),
        ``queued_for_account`` (envelopes waiting for its devices: ``envelope_id``,
        ``to_device``, ``from_user``, ``from_device``, ``size``, ``expires_day``),
        ``queued_from_account`` (envelopes it sent that still wait: ``envelope_id``,
        ``from_device``, ``to_user``, ``to_device``, ``size``, ``expires_day``), and
        ``not_held`` (:data:`NOT_HELD`). Both queue lists have one entry per waiting
        device; a ``send_multi`` envelope is listed for each of its devices, each time
        with the size of its one stored ciphertext.

        Raises:
            UnknownContact: no account has this username.
        """

    @abc.abstractmethod
    async def stats(self) -> dict[str, int]:
        """Counts for the operator: ``accounts``, ``devices``, ``one_time_keys``,
        ``queued_envelopes`` (queue entries: a ``send_multi`` envelope counts once per
        device it waits for) and ``queued_bytes`` (ciphertext bytes held: a ``send_multi``
        ciphertext counts once)."""
