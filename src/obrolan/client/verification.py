"""Interactive SAS verification of a contact, device to device, inside Olm.

Both people run it at the same time (``obrolan verify``); each side sends a
``verify_start`` to every device of the other at launch. When the starts
cross, the start with the smaller ``txn`` wins: the other side abandons its own
start and answers the winner's instead (and never answers a start whose txn is
larger than its own: it waits for that side to answer its start)::

    initiator I                              responder R
    verify_start{txn, commitment}    ──▶
                                     ◀──    verify_key{txn, R's SAS key}
    verify_key{txn, I's SAS key}     ──▶    (R checks the commitment)
            both show 7 emoji (or 3 numbers); each person says if they match
    verify_mac{txn, MACs}            ◀─▶    verify_mac{txn, MACs}

Each side checks the peer's MACs over the account key it pinned and the device
key from the peer's signed list, then marks the contact verified. A "no", a
``verify_cancel`` from the peer, a bad commitment or MAC, or the timeout ends it
with :class:`VerificationFailed`, and nothing is marked verified. Only events
from the peer user count, and after the two devices agree on a txn only that
device's events for that txn.

Choices within those rules: a fresh start that reached this device before the
run began counts (unless its own device cancelled it since); a newer start
from a device replaces the one answered; a second device of the peer that
answers our start after another did gets ``verify_cancel`` "cancelled", and so
does the peer when this run is cancelled (Ctrl-C).

::

    codes = await verify(client, "bob", confirm)  # confirm(codes) shows them, returns bool
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from obrolan.client.client import Client
from obrolan.client.ids import check_username, new_id
from obrolan.client.store import now_ms
from obrolan.crypto.sas import CommitmentMismatch, SasExchange
from obrolan.errors import ConfigError, CryptoError, ObrolanError, SignatureError
from obrolan.protocol import content

__all__ = [
    "DEFAULT_TIMEOUT",
    "START_FRESHNESS_MS",
    "Confirm",
    "SasCodes",
    "VerificationFailed",
    "verify",
]

log = logging.getLogger("obrolan.client.verification")

DEFAULT_TIMEOUT = 120.0
"""Seconds from launch until an unfinished verification is cancelled ("timeout")."""
START_FRESHNESS_MS = 10 * 60 * 1000
"""A ``verify_start`` whose ``sent_at_ms`` is further than this from our clock is stale."""
FLUSH_TIMEOUT = 10.0
"""Seconds to wait for the last MAC or cancel to reach the server before giving up on it."""

Reason = Literal["mismatch", "cancelled", "timeout", "bad_commitment", "bad_mac"]


@dataclass(frozen=True, slots=True)
class SasCodes:
    """What both people compare, and the exchange they come from."""

    peer: str
    peer_device: str
    txn: str
    initiator: bool
    """This side's start won (it committed first); False: it answered the peer's start."""
    emoji: tuple[tuple[str, str], ...]
    """7 (emoji, English name) pairs."""
    decimals: tuple[int, int, int]
    """3 numbers in 1000..9191, for where emoji do not show."""


Confirm = Callable[[SasCodes], bool | Awaitable[bool]]
"""Shows the codes to the person and returns whether they match the peer's (sync or async)."""


class VerificationFailed(ObrolanError):
    """Raised when a verification ends without marking the contact verified.

    ``reason`` is the ``verify_cancel`` reason; ``by_peer`` tells whether the
    peer's device ended it (its cancel arrived) or this side did.
    """

    def __init__(self, reason: Reason, message: str, *, by_peer: bool = False) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.by_peer = by_peer


_NOTHING_MARKED = "nothing was marked verified"


def _peer_cancel_message(peer: str, reason: str) -> str:
    why = {
        "mismatch": f"{peer} said the codes do not match",
        "timeout": f"{peer}'s device gave up waiting (timeout)",
        "bad_commitment": f"{peer}'s device says this device's SAS key did not match its "
        f"commitment: someone may be interfering",
        "bad_mac": f"{peer}'s device says this device's keys are not the ones it expected: "
        f"someone may be interfering",
    }.get(reason, f"{peer} cancelled the verification")
    return f"{why}; {_NOTHING_MARKED}"


@dataclass(slots=True)
class _Answering:
    """A peer's start this side answered with its key (it is the responder, so far)."""

    device: str
    start: content.VerifyStart
    sas: SasExchange


@dataclass(frozen=True, slots=True)
class _Agreed:
    """The one device and txn the exchange settled on, with both SAS keys in."""

    device: str
    txn: str
    sas: SasExchange
    initiator: bool


async def verify(
    client: Client,
    peer: str,
    confirm: Confirm,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    started: Callable[[], None] | None = None,
) -> SasCodes:
    """Verify ``peer``'s account key with the peer's device, interactively; returns the codes.

    ``peer`` must run the same at the same time. ``started`` is called once our
    ``verify_start`` is queued (the peer is known). ``confirm`` is called once
    with the codes; True sends our MACs, False cancels ("mismatch"). On success
    the contact is marked verified (``client.contacts()``).

    Raises:
        VerificationFailed: a "no" on either side, a cancel, a bad commitment or
            MAC, or no agreement within ``timeout`` seconds.
        ConfigError: ``peer`` is this account, or its key changed and was not accepted.
        UnknownContact: the server does not know ``peer``.
        ServerUnreachable: the server could not be reached.
    """
    check_username(peer)
    if peer == client.username:
        raise ConfigError(
            "you cannot verify yourself: verify another person's account "
            "(your own devices are listed by `obrolan devices`)"
        )
    return await _Verification(client, peer, confirm).run(timeout, started)


class _Verification:
    """One run of :func:`verify`: the state kept between the peer's events."""

    def __init__(self, client: Client, peer: str, confirm: Confirm) -> None:
        self._client = client
        self._peer = peer
        self._confirm = confirm
        self._own_txn = new_id()
        self._own = SasExchange(self._own_txn, client.username, client.device_id, initiator=True)
        self._own_start_sent = False
        self._sent = False
        self._confirmed = False
        self._answering: _Answering | None = None
        self._agreed: _Agreed | None = None
        self._peer_mac: content.VerifyMac | None = None

    async def run(self, timeout: float, started: Callable[[], None] | None) -> SasCodes:
        kept = self._drain()
        try:
            async with asyncio.timeout(timeout):
                pinned = await self._pinned_key()
                await self._send(
                    content.VerifyStart(
                        message_id=new_id(),
                        sent_at_ms=now_ms(),
                        txn=self._own_txn,
                        commitment=self._own.commitment,
                    )
                )
                self._own_start_sent = True
                if started is not None:
                    started()
                for body in kept:
                    await self._before_agreement(body)
                while self._agreed is None:
                    await self._before_agreement(await self._next())
                codes = await self._conclude(self._agreed, pinned)
        except TimeoutError:
            await self._cancel_open("timeout")
            raise VerificationFailed("timeout", self._late(timeout)) from None
        except asyncio.CancelledError:  # Ctrl-C: tell the peer instead of leaving it waiting
            await self._cancel_open("cancelled")
            raise
        finally:
            if self._sent:
                await self._flush()
        return codes

    def _late(self, timeout: float) -> str:
        """What the timeout interrupted, for its error message."""
        if self._agreed is None:
            late = (
                f"{self._peer} did not answer within {timeout:g} s (they must run "
                f"`obrolan verify {self._client.username}` at the same time)"
            )
        elif self._confirmed:
            late = f"{self._peer} did not confirm the codes within {timeout:g} s"
        else:
            late = f"the codes were not confirmed within {timeout:g} s"
        return f"{late}; {_NOTHING_MARKED}"

    async def _conclude(self, agreed: _Agreed, pinned: str) -> SasCodes:
        """Show the codes, exchange MACs on a "yes", check the peer's, mark it verified."""
        codes = SasCodes(
            peer=self._peer,
            peer_device=agreed.device,
            txn=agreed.txn,
            initiator=agreed.initiator,
            emoji=tuple(agreed.sas.emoji()),
            decimals=agreed.sas.decimals(),
        )
        if not await self._compare(codes):
            await self._cancel("mismatch", agreed.txn, agreed.device)
            raise VerificationFailed(
                "mismatch",
                f"you said the codes do not match; {_NOTHING_MARKED} "
                f"(someone may be between you and {self._peer})",
            )
        self._confirmed = True
        account_mac, device_mac = agreed.sas.macs(
            self._client.account_key, self._client.whoami().ed25519
        )
        await self._send(
            content.VerifyMac(
                message_id=new_id(),
                sent_at_ms=now_ms(),
                txn=agreed.txn,
                account_key_mac=account_mac,
                device_key_mac=device_mac,
            ),
            agreed.device,
        )
        while self._peer_mac is None:
            await self._after_agreement(await self._next())
        device_key = self._client.device_key(self._peer, agreed.device)
        try:
            if device_key is None:
                raise SignatureError(f"device {agreed.device} is no longer in {self._peer}'s list")
            agreed.sas.verify_macs(
                pinned, device_key, self._peer_mac.account_key_mac, self._peer_mac.device_key_mac
            )
        except SignatureError as exc:
            await self._cancel("bad_mac", agreed.txn, agreed.device)
            raise VerificationFailed(
                "bad_mac",
                f"{self._peer}'s keys are not the ones the server gave this device ({exc}): "
                f"someone may be interfering; {_NOTHING_MARKED}",
            ) from None
        if not self._client.mark_verified(self._peer, pinned):
            raise VerificationFailed(
                "cancelled",
                f"{self._peer}'s account key changed during the verification; {_NOTHING_MARKED}",
            )
        return codes

    # --- before the two devices agree on a txn --------------------------------------------

    def _drain(self) -> list[content.Plaintext]:
        """Empty the inbox, keeping only the peer's fresh starts (the last one of each device).

        Keys, MACs and cancels there belong to earlier runs; a start may be the
        peer's current one, sent before this device was online.
        """
        starts: dict[str, content.Plaintext] = {}
        inbox = self._client.verification_inbox
        while not inbox.empty():
            body = inbox.get_nowait()
            kind = body.content
            if body.sender != self._peer:
                continue
            if isinstance(kind, content.VerifyStart) and _fresh(kind):
                starts[body.sender_device] = body
            elif isinstance(kind, content.VerifyCancel):
                kept = starts.get(body.sender_device)
                if kept is not None and _txn(kept) == kind.txn:
                    del starts[body.sender_device]
        return list(starts.values())

    async def _pinned_key(self) -> str:
        """The peer's account key as pinned here (looked up on first contact)."""
        pinned = await self._client.pinned_account_key(self._peer)
        if any(c.username == self._peer and c.key_changed for c in self._client.contacts()):
            raise ConfigError(
                f"{self._peer}'s account key has changed since this device first saw it: "
                f"accept the new key with `obrolan trust {self._peer}`, then verify it"
            )
        return pinned

    async def _before_agreement(self, body: content.Plaintext) -> None:
        """One event from the peer while no txn is agreed; sets ``_agreed`` once one is."""
        kind, device = body.content, body.sender_device
        answering = self._answering
        ours = answering is not None and (device, _txn(body)) == (
            answering.device,
            answering.start.txn,
        )
        if isinstance(kind, content.VerifyStart):
            if not _fresh(kind):
                return
            if answering is not None and answering.device == device and not ours:
                self._answering = answering = None  # that device started again: the old one is gone
            if answering is None and kind.txn < self._own_txn:
                await self._answer(device, kind)
        elif isinstance(kind, content.VerifyKey):
            if kind.txn == self._own_txn:  # our start won (any start we answered is abandoned)
                await self._accept(
                    _Agreed(device, kind.txn, self._own, initiator=True), kind.public_key, None
                )
                await self._send(
                    content.VerifyKey(
                        message_id=new_id(),
                        sent_at_ms=now_ms(),
                        txn=self._own_txn,
                        public_key=self._own.public_key,
                    ),
                    device,
                )
            elif ours and answering is not None:
                await self._accept(
                    _Agreed(device, kind.txn, answering.sas, initiator=False),
                    kind.public_key,
                    answering.start.commitment,
                )
        elif isinstance(kind, content.VerifyCancel) and (kind.txn == self._own_txn or ours):
            raise VerificationFailed(
                kind.reason, _peer_cancel_message(self._peer, kind.reason), by_peer=True
            )

    async def _answer(self, device: str, start: content.VerifyStart) -> None:
        """Become the responder for ``start``: send our fresh SAS key to its device."""
        sas = SasExchange(start.txn, self._client.username, self._client.device_id, initiator=False)
        self._answering = _Answering(device, start, sas)
        await self._send(
            content.VerifyKey(
                message_id=new_id(),
                sent_at_ms=now_ms(),
                txn=start.txn,
                public_key=sas.public_key,
            ),
            device,
        )

    async def _accept(self, agreed: _Agreed, key: str, commitment: bytes | None) -> None:
        """Settle on ``agreed`` and take the peer's SAS key; a bad key cancels the txn."""
        self._agreed = agreed
        try:
            agreed.sas.accept_peer(self._peer, agreed.device, key, commitment)
        except CommitmentMismatch:
            await self._cancel("bad_commitment", agreed.txn, agreed.device)
            raise VerificationFailed(
                "bad_commitment",
                f"{self._peer}'s device revealed another SAS key than it committed to: "
                f"someone may be interfering; {_NOTHING_MARKED}",
            ) from None
        except CryptoError as exc:
            await self._cancel("cancelled", agreed.txn, agreed.device)
            raise VerificationFailed(
                "cancelled",
                f"{self._peer}'s device sent an unusable SAS key ({exc}); {_NOTHING_MARKED}",
            ) from None

    # --- after: one device, one txn ------------------------------------------------------

    async def _compare(self, codes: SasCodes) -> bool:
        """Ask the person, while still reading the peer's events (its "no" ends the question)."""
        answer = asyncio.ensure_future(self._ask(codes))
        getter: asyncio.Future[content.Plaintext] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(self._next())
                await asyncio.wait({answer, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    await self._after_agreement(getter.result())
                else:
                    getter.cancel()
                if answer.done():
                    return answer.result()
        finally:
            for task in (answer, getter):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _ask(self, codes: SasCodes) -> bool:
        answer = self._confirm(codes)
        if inspect.isawaitable(answer):
            answer = await answer
        return bool(answer)

    async def _after_agreement(self, body: content.Plaintext) -> None:
        """One event from the peer once the txn is agreed: its MAC or its cancel."""
        agreed = self._agreed
        assert agreed is not None
        kind, device = body.content, body.sender_device
        if (device, _txn(body)) == (agreed.device, agreed.txn):
            if isinstance(kind, content.VerifyMac):
                self._peer_mac = self._peer_mac or kind
            elif isinstance(kind, content.VerifyCancel):
                raise VerificationFailed(
                    kind.reason, _peer_cancel_message(self._peer, kind.reason), by_peer=True
                )
        elif isinstance(kind, content.VerifyKey) and kind.txn == self._own_txn:
            # Another device of the peer answered our start too late: release it.
            await self._cancel("cancelled", kind.txn, device)

    # --- sending, receiving ---------------------------------------------------------------

    async def _next(self) -> content.Plaintext:
        """The next verification event from the peer user (others are not ours to read)."""
        while True:
            body = await self._client.verification_inbox.get()
            if body.sender == self._peer:
                return body
            log.info(
                "ignored a %s from %s/%s",
                type(body.content).__name__,
                body.sender,
                body.sender_device,
            )

    async def _send(self, body: content.Content, device: str | None = None) -> None:
        await self._client.send_verification(self._peer, body, to_device=device)
        self._sent = True

    async def _cancel(self, reason: Reason, txn: str, device: str | None) -> None:
        await self._send(
            content.VerifyCancel(message_id=new_id(), sent_at_ms=now_ms(), txn=txn, reason=reason),
            device,
        )

    async def _cancel_open(self, reason: Reason) -> None:
        """Cancel whatever the peer may still be waiting on."""
        if self._agreed is not None:
            await self._cancel(reason, self._agreed.txn, self._agreed.device)
            return
        if self._own_start_sent:
            await self._cancel(reason, self._own_txn, None)
        if self._answering is not None:
            await self._cancel(reason, self._answering.start.txn, self._answering.device)

    async def _flush(self) -> None:
        """Let the last MAC or cancel reach the server; the peer is waiting for it."""
        try:
            await self._client.flush(timeout=FLUSH_TIMEOUT)
        except ObrolanError as exc:
            log.warning("the last verification event may not have reached %s: %s", self._peer, exc)


def _fresh(start: content.VerifyStart) -> bool:
    return abs(now_ms() - start.sent_at_ms) <= START_FRESHNESS_MS


def _txn(body: content.Plaintext) -> str | None:
    """The txn a verification event belongs to (None for any other kind)."""
    kind = body.content
    return kind.txn if isinstance(kind, content.VERIFICATION) else None
