"""The relay: what the server does with each frame, and delivery to each device.

Backend-agnostic. A :class:`Session` is one WebSocket connection; it sees the
connection only as a :class:`Transport` (send one text message, close), storage as
:class:`~obrolan.server.storage.Storage` and wake-ups as
:class:`~obrolan.server.routing.Router`. :mod:`obrolan.server.app` plugs in aiohttp::

    relay = Relay(storage, router, Limits())
    await relay.start()
    session = relay.connect(transport)
    await session.open()                  # sends the challenge
    for message in connection:            # the web framework's receive loop
        await session.receive(message)
    await session.closed()

Frames of one connection are handled in order. A ``send`` does not hold up the frames
after it while its write commits: its write is queued at once, and a responder task
answers the queued sends in order as their commits come back (so sends pipelined on
one connection share commits and deliveries). Any other request first waits until the
sends before it are answered, so replies keep the order of requests. After
authentication a delivery task per connection pushes the device's envelopes in
storage order, at most ``delivery_window`` unacknowledged, and sends ``drained`` once
the backlog that existed at authentication is out.

Envelopes stored while their device's connection on this node is caught up (it has
pushed everything stored for the device before them, and its window has room) skip
the storage round trip: the responder pushes them to that connection itself, all of
one commit's envelopes for a device in one ``deliver`` frame (:meth:`Relay.hand_over`).
Everything else (a backlog, a reconnect, a full window, a device connected to another
node) goes the long way: a wake-up, then a read from storage in ``seq`` order.

An account's devices are those of its signed device list. The relay checks every list
(clients check again) and, when a device leaves the list, closes its connection with
:data:`CLOSE_DEVICE_REMOVED` and takes its blobs away. A new device that is not yet in
any list waits for its link's answer on an unauthenticated connection
(:mod:`obrolan.server.linking`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Coroutine
from typing import Any, NamedTuple, Protocol

from obrolan.crypto.signatures import verify, verify_device_keys, verify_one_time_key
from obrolan.errors import ObrolanError, RemoteProtocolError, RequestRefused, SignatureError
from obrolan.failpoints import failpoint
from obrolan.protocol.codes import FATAL_CODES, ErrorCode
from obrolan.protocol.frames import (
    Ack,
    Authenticate,
    Challenge,
    ClaimedKeys,
    ClaimKeys,
    ClientFrame,
    Deliver,
    DeviceKeys,
    Devices,
    DevicesPublished,
    Drained,
    Envelope,
    Error,
    GetDevices,
    KeySuccession,
    KeysUploaded,
    LinkAnswer,
    LinkApprove,
    LinkApproved,
    LinkFetch,
    LinkOffer,
    LinkWait,
    LinkWaiting,
    OneTimeKey,
    PublishDevices,
    Recipient,
    Recover,
    RecoverySet,
    Register,
    Send,
    SendMulti,
    Sent,
    SetRecovery,
    UploadKeys,
    Welcome,
    decode_client_frame,
    encode,
)
from obrolan.protocol.limits import SUPPORTED_VERSIONS, Limits
from obrolan.protocol.signing import recovery_key_bytes
from obrolan.server.account_checks import (
    bad_list,
    first_list,
    open_list,
    signed_recovery_key,
    usable_identity,
    usable_key,
)
from obrolan.server.address import DeviceAddress
from obrolan.server.auth import ConnectionChallenge, check_version
from obrolan.server.blobs.base import BlobStore
from obrolan.server.linking import Links
from obrolan.server.rate_limit import Limiter, RateLimits
from obrolan.server.routing.base import Router
from obrolan.server.storage.base import (
    RecoveryKey,
    Storage,
    StoredEnvelopes,
    StoreResult,
)

__all__ = [
    "CLOSE_DEVICE_REMOVED",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_REPLACED",
    "Relay",
    "Session",
    "Transport",
]

_logger = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
"""WebSocket close code when the server shuts down."""
CLOSE_POLICY_VIOLATION = 1008
"""WebSocket close code after an error frame with a fatal code, or no authentication in time."""
CLOSE_INTERNAL_ERROR = 1011
"""WebSocket close code when delivery to the device failed inside the server."""
CLOSE_REPLACED = 4000
"""WebSocket close code of an older connection when its device connects again."""
CLOSE_DEVICE_REMOVED = 4001
"""WebSocket close code of a device's connection when the device left its account's list."""

_FETCH = 64
"""Most envelopes read from storage at once (bounds memory per connection)."""
_MAX_SENDS_IN_FLIGHT = 64
"""Most sends of one connection queued and not yet answered; more wait for the answers."""
_ENVELOPE_JSON_OVERHEAD = 256
"""Upper bound of an envelope's JSON size besides its base64 ciphertext."""
_DRAINED = encode(Drained())


class Transport(Protocol):
    """One connection as the relay sees it."""

    async def send(self, data: bytes) -> None:
        """Send ``data`` (UTF-8 JSON) as one text message; a no-op once the connection is gone.

        The message is handed to the connection before the first suspension, so messages
        go out in the order of the calls even when several tasks send.
        """

    def backlogged(self) -> bool:
        """True while earlier messages still wait in a buffer for the peer to read them
        (a send would then wait), or when the connection is gone."""

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code and reason."""


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def _json_size(envelope: Envelope) -> int:
    return (len(envelope.ciphertext) + 2) // 3 * 4 + _ENVELOPE_JSON_OVERHEAD


def _sent(request_id: int, envelope_ids: list[str], result: StoreResult) -> Sent:
    if not result.skipped:
        return Sent(
            id=request_id,
            envelope_ids=envelope_ids,
            skipped_recipients=result.skipped_recipients,
        )
    skipped = set(result.skipped)  # envelope ids are random: one id names one envelope
    stored = [envelope_id for envelope_id in envelope_ids if envelope_id not in skipped]
    return Sent(
        id=request_id,
        envelope_ids=stored,
        skipped=result.skipped,
        skipped_recipients=result.skipped_recipients,
    )


class _QueuedSend(NamedTuple):
    """A ``send`` or ``send_multi`` whose write is queued: what its answer needs."""

    request_id: int
    envelope_ids: list[str]
    outcome: asyncio.Future[StoreResult]
    multi: bool


class Relay:
    """The server's state shared by all connections: storage, router, limits, sessions.

    Args:
        blobs: the blob store, whose blobs for removed devices are dropped (none: no blobs).
        auth_timeout: seconds a connection may stay unauthenticated before it is closed.
        sweep_interval: seconds between two deletions of expired envelopes.
        link_ttl: seconds a new device's link offer waits for an approval.
        rate_limits: how fast a connection or an account may go (spec §13.1).
    """

    def __init__(
        self,
        storage: Storage,
        router: Router,
        limits: Limits,
        *,
        blobs: BlobStore | None = None,
        auth_timeout: float = 10.0,
        sweep_interval: float = 60.0,
        link_ttl: float = 600.0,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self.storage = storage
        self.router = router
        self.limits = limits
        self.blobs = blobs
        self.links = Links(link_ttl)
        self.auth_timeout = auth_timeout
        self._sweep_interval = sweep_interval
        self._sessions: set[Session] = set()
        self._by_device: dict[DeviceAddress, Session] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.limiter = Limiter(rate_limits or RateLimits())

    async def start(self) -> None:
        """Start the sweeper of expired envelopes."""
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="obrolan-sweeper")

    async def close(self) -> None:
        """Stop the sweeper and close every connection (going away)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.links.close()
        await asyncio.gather(*(s.shut_down() for s in list(self._sessions)))

    def connect(self, transport: Transport) -> Session:
        """A new session for a connection that has just been accepted (counted as
        unauthenticated until it authenticates or closes)."""
        session = Session(self, transport)
        self._sessions.add(session)
        self.limiter.opened()
        return session

    def attach(self, session: Session, device: DeviceAddress) -> None:
        """Make ``session`` the device's connection, replacing an older one."""
        older = self._by_device.get(device)
        self._by_device[device] = session
        if older is not None and older is not session:
            older.replaced()

    async def hand_over(self, stored: list[StoredEnvelopes]) -> None:
        """Give newly stored envelopes (in commit order) to their devices: to the device's
        connection on this node if there is one, else a wake-up through the router to
        wherever it is."""
        by_device: dict[DeviceAddress, list[StoredEnvelopes]] = {}
        for batch in stored:
            if batch.envelopes:  # else only resends of envelopes already queued
                by_device.setdefault(batch.device, []).append(batch)
        elsewhere = []
        for device, batches in by_device.items():
            session = self._by_device.get(device)
            if session is None:
                elsewhere.append(device)
            else:
                await session.offer(batches)
        if elsewhere:
            await self.router.publish(elsewhere)

    async def devices_removed(self, devices: list[DeviceAddress]) -> None:
        """Devices left their account's list (storage has deleted them with their queues
        and keys): close their connections and take their blobs away.

        The blob store commits on its own: after a crash in between, blobs for the removed
        devices stay until their TTL (their keys went with the deleted envelopes).
        """
        for device in devices:
            session = self._by_device.pop(device, None)
            if session is not None:
                session.removed()
        if devices and self.blobs is not None:
            await self.blobs.forget_devices(devices)

    def detach(self, session: Session) -> None:
        """Forget a session whose connection is gone."""
        self._sessions.discard(session)
        if session.device is not None and self._by_device.get(session.device) is session:
            del self._by_device[session.device]

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                deleted = await self.storage.sweep_expired(int(time.time()))
            except Exception:
                _logger.exception("deleting expired envelopes failed")
                continue
            if deleted:
                _logger.info("deleted %d expired envelopes", deleted)
            self.limiter.prune(time.monotonic())


class Session:
    """One connection: challenge, authentication, requests, and delivery to its device."""

    def __init__(self, relay: Relay, transport: Transport) -> None:
        self._relay = relay
        self._storage = relay.storage
        self._limits = relay.limits
        self._transport = transport
        self._challenge = ConnectionChallenge()
        self.device: DeviceAddress | None = None
        """The authenticated device, None before authentication."""
        self._counted_unauthenticated = True
        """Counted in the relay's unauthenticated connections (until authenticated or closed)."""
        self._frames = relay.limiter.frame_bucket(time.monotonic())
        self._closing = False
        self._auth_timer: asyncio.TimerHandle | None = None
        self._link: str | None = None
        """The link id this unauthenticated connection waits under, if any."""
        self._background: set[asyncio.Task[None]] = set()
        # Sends whose writes are queued, in request order, and the task answering them.
        # (Plain lists and futures made on demand keep an idle connection small.)
        self._sends: list[_QueuedSend] = []
        self._responder: asyncio.Task[None] | None = None
        # Delivery state: the task, its wake-up flag and the envelopes pushed but not acked.
        self._deliverer: asyncio.Task[None] | None = None
        self._woken = False
        self._wake_waiter: asyncio.Future[None] | None = None
        self._unacked: set[str] = set()
        self._cursor = 0
        """seq of the last envelope pushed; every older one was pushed, or deleted unread."""
        self._newest_offered = 0
        """seq of the newest envelope :meth:`offer` announced (all committed by then)."""
        self._drained = False
        self._parked = False
        """The delivery task waits for a wake-up: nothing it read is still being pushed."""
        self._parked_for_room = False
        """It waits because the window is full: an ack must wake it."""
        self._pushing: asyncio.Future[None] | None = None
        """Set while envelopes are pushed, so that two pushes never interleave their frames."""

    # --- what the transport layer calls --------------------------------------------------

    async def open(self) -> None:
        """Send the challenge and start the authentication deadline."""
        loop = asyncio.get_running_loop()
        self._auth_timer = loop.call_later(self._relay.auth_timeout, self._auth_expired)
        challenge = Challenge(
            versions=list(SUPPORTED_VERSIONS), nonce=self._challenge.nonce, limits=self._limits
        )
        await self._transport.send(encode(challenge))

    async def receive(self, data: bytes | str) -> None:
        """Handle one text message: answer it, or send an error frame (never raises).

        A ``send`` returns once its write is queued; its answer follows from the responder.
        """
        wait = self._frames.take(1, time.monotonic())
        try:
            frame = decode_client_frame(data)
        except RemoteProtocolError as exc:
            await self._answered()
            await self._refuse(exc.request_id, exc.code, str(exc))
            return
        if wait:
            await self._answered()
            await self._frames_limited(getattr(frame, "id", None), wait)
            return
        device = self.device
        if device is not None and (type(frame) is Send or type(frame) is SendMulti):
            self._queue_send(frame, device)
            if len(self._sends) >= _MAX_SENDS_IN_FLIGHT:
                await self._answered()
            return
        if type(frame) is not Ack:  # an ack has no answer to keep in order
            await self._answered()
        try:
            if device is None:
                await self._handle_unauthenticated(frame)
            else:
                await self._handle(frame, device)
        except Exception as exc:  # noqa: BLE001 - answered, as internal unless ours
            await self._answer_failure(getattr(frame, "id", None), type(frame).__name__, exc)

    async def receive_binary(self) -> None:
        """Answer a binary message: frames are JSON text."""
        wait = self._frames.take(1, time.monotonic())
        if wait:
            await self._frames_limited(None, wait)
            return
        await self._refuse(
            None, ErrorCode.MALFORMED_FRAME, "frames must be JSON text messages, not binary"
        )

    async def _frames_limited(self, request_id: int | None, wait: float) -> None:
        try:
            self._relay.limiter.check_frames(wait)
        except RequestRefused as refusal:
            await self._answer_failure(request_id, "any", refusal)

    async def closed(self) -> None:
        """The connection is gone: stop delivery and forget the session.

        A responder still at work finishes on its own: its sends are committed anyway, and
        the recipients must get them (a push cut short would leave a recipient's window
        counting envelopes it never received); its answers to this connection are no-ops.
        """
        self._closing = True
        self._uncount_unauthenticated()
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        if self._link is not None:
            self._relay.links.leave(self._link, self)
        await self._stop_delivery()
        self._relay.detach(self)

    # --- what the relay calls ------------------------------------------------------------

    async def offer(self, batches: list[StoredEnvelopes]) -> None:
        """Envelopes just stored for this device, in commit order: push now, in one go,
        those that directly follow what this connection has pushed, as far as the window
        allows; wake the delivery task to read any others from storage."""
        self._newest_offered = max(
            self._newest_offered, *(batch.envelopes[-1][0] for batch in batches)
        )
        ready: list[Envelope] = []
        taken = 0
        if (
            self._parked
            and self._drained
            and self._pushing is None
            and not self._closing
            and not self._transport.backlogged()
        ):
            room = self._limits.delivery_window - len(self._unacked)
            cursor = self._cursor
            for batch in batches:
                # previous_seq == cursor: nothing stored for the device lies in between
                if batch.previous_seq != cursor or len(ready) + len(batch.envelopes) > room:
                    break
                ready += [envelope for _, envelope in batch.envelopes]
                cursor = batch.envelopes[-1][0]
                taken += 1
            self._cursor = cursor
        if taken < len(batches):
            self._wake_up()
        if ready:
            await self._push_in_turn(ready)

    def replaced(self) -> None:
        """Another connection of the same device authenticated: close this one."""
        self._cancel_delivery()
        self._close_soon(CLOSE_REPLACED, "replaced by a newer connection")

    def removed(self) -> None:
        """The device left its account's list: close its connection."""
        self._cancel_delivery()
        self._close_soon(CLOSE_DEVICE_REMOVED, "device removed")

    async def link_answered(self, answer: LinkAnswer) -> None:
        """Push the answer to the new device waiting on this connection for its link."""
        await self._transport.send(encode(answer))

    def link_expired(self, link_id: str) -> None:
        """The link this connection waits under expired: close it, unless it authenticated."""
        if self.device is None and not self._closing:
            message = f"link {link_id} expired; show a new link code"
            self._spawn(self._time_out(ErrorCode.UNKNOWN_LINK, message, "link expired"))

    async def shut_down(self) -> None:
        """The server stops: close this connection."""
        self._cancel_delivery()
        await self._close(CLOSE_GOING_AWAY, "server shutting down")

    # --- authentication ------------------------------------------------------------------

    async def _handle_unauthenticated(self, frame: ClientFrame) -> None:
        match frame:
            case Register():
                await self._register(frame)
            case Authenticate():
                await self._authenticate(frame)
            case Recover():
                await self._recover(frame)
            case LinkWait():
                await self._link_wait(frame)
            case _:
                raise RequestRefused(ErrorCode.NOT_AUTHENTICATED, "register or authenticate first")

    async def _register(self, frame: Register) -> None:
        check_version(frame.version)
        device = frame.device
        self._challenge.verify(frame.username, device.device_id, device.ed25519, frame.signature)
        self._check_device(frame.username, device)
        self._check_keys(device.ed25519, frame.one_time_keys, frame.fallback_key)
        published = first_list(frame.device_list, frame.username, device)
        recovery = signed_recovery_key(
            frame.username,
            published.account_key,
            frame.recovery_key,
            frame.recovery_key_signature,
        )
        await self._storage.create_account(
            frame.username,
            published,
            recovery,
            frame.one_time_keys,
            frame.fallback_key,
            _today(),
        )
        _logger.debug("account registered")
        await self._start(DeviceAddress(frame.username, device.device_id), frame.version)

    async def _authenticate(self, frame: Authenticate) -> None:
        check_version(frame.version)
        device = DeviceAddress(frame.username, frame.device_id)
        keys = await self._storage.device_keys(device)
        self._challenge.verify(
            frame.username, frame.device_id, keys.ed25519 if keys else None, frame.signature
        )
        if not await self._storage.touch_device(device, _today()):  # removed meanwhile
            raise RequestRefused(ErrorCode.AUTH_FAILED, "authentication failed")
        _logger.debug("device authenticated")
        await self._start(device, frame.version)

    async def _recover(self, frame: Recover) -> None:
        """Hand the account to a new account key: checks that need no stored state first,
        so that a wrong code and an unknown user get the same ``auth_failed``."""
        check_version(frame.version)
        device, username = frame.device, frame.username
        self._challenge.verify(username, device.device_id, device.ed25519, frame.signature)
        self._check_device(username, device)
        self._check_keys(device.ed25519, frame.one_time_keys, frame.fallback_key)
        published = first_list(frame.device_list, username, device)
        recovery = signed_recovery_key(
            username, published.account_key, frame.recovery_key, frame.recovery_key_signature
        )
        account = await self._storage.account(username)
        old_recovery_key = account.recovery_key if account is not None else None
        self._challenge.verify_recovery(
            username,
            published.account_key,
            frame.recovery_key,
            old_recovery_key,
            frame.recovery_signature,
        )
        assert account is not None and old_recovery_key is not None  # verify_recovery refuses
        succession = None
        if account.account_key is not None and account.recovery_key_signature is not None:
            succession = KeySuccession(
                account_key=account.account_key,
                recovery_key=old_recovery_key,
                recovery_key_signature=account.recovery_key_signature,
                nonce=self._challenge.nonce,
                new_account_key=published.account_key,
                new_recovery_key=frame.recovery_key,
                recovery_signature=frame.recovery_signature,
            )
        removed = await self._storage.recover(
            username,
            old_recovery_key,
            published,
            recovery,
            succession,
            frame.one_time_keys,
            frame.fallback_key,
            _today(),
        )
        _logger.info("account recovered, %d devices removed", len(removed))
        await self._relay.devices_removed(removed)
        await self._start(DeviceAddress(username, device.device_id), frame.version)

    async def _link_wait(self, frame: LinkWait) -> None:
        """Hold the new device's offer; this connection then waits for the answer, exempt
        from the authentication deadline until the link expires."""
        if self._link is not None:
            raise RequestRefused(
                ErrorCode.LINK_EXISTS, f"this connection already waits under link {self._link}"
            )
        links = self._relay.links
        links.wait(frame.link_id, frame.offer, self)
        self._link = frame.link_id
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        waiting = LinkWaiting(link_id=frame.link_id, expires_in_seconds=math.ceil(links.ttl))
        await self._transport.send(encode(waiting))

    def _check_device(self, username: str, device: DeviceKeys) -> None:
        """Refuse device keys that are not self-signed, or whose Curve25519 key is unusable."""
        try:
            verify_device_keys(username, device)
        except SignatureError:
            raise RequestRefused(
                ErrorCode.BAD_SIGNATURE,
                f"the keys of device {device.device_id} are not self-signed",
            ) from None
        usable_identity(device)

    def _uncount_unauthenticated(self) -> None:
        if self._counted_unauthenticated:
            self._counted_unauthenticated = False
            self._relay.limiter.stopped_waiting()

    async def _start(self, device: DeviceAddress, version: int) -> None:
        """Welcome the authenticated device and start delivering to it."""
        self._uncount_unauthenticated()
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        self._relay.attach(self, device)
        self.device = device
        # Subscribe before reading the backlog's end: a wake-up can come early, never be lost.
        self._relay.router.subscribe(device, self._wake_up)
        one_time_keys = await self._storage.count_one_time_keys(device)
        # Envelopes past their TTL are deleted and counted now, not at the next sweep:
        # the device hears of them in this welcome, and none of them is delivered.
        expired = await self._storage.take_expired(device, int(time.time()))
        backlog_end = await self._storage.last_seq(device)
        welcome = Welcome(
            version=version,
            username=device.username,
            device_id=device.device_id,
            one_time_keys=one_time_keys,
            expired=expired,
        )
        await self._transport.send(encode(welcome))
        if not self._closing:
            self._deliverer = asyncio.create_task(self._deliver(device, backlog_end))

    def _auth_expired(self) -> None:
        if self.device is None and not self._closing:
            message = f"no authentication within {self._relay.auth_timeout:g} seconds"
            self._spawn(
                self._time_out(ErrorCode.NOT_AUTHENTICATED, message, "authentication timeout")
            )

    async def _time_out(self, code: ErrorCode, message: str, reason: str) -> None:
        """Tell an unauthenticated connection why its time is up, and close it."""
        await self._transport.send(encode(Error(id=None, code=code, message=message)))
        await self._close(CLOSE_POLICY_VIOLATION, reason)

    # --- requests of an authenticated device ---------------------------------------------

    async def _handle(self, frame: ClientFrame, device: DeviceAddress) -> None:
        match frame:
            case Ack():
                await self._ack(frame, device)
            case ClaimKeys():
                now = time.monotonic()
                self._relay.limiter.check_claim(device.username, now)
                claimed = await self._storage.claim_keys(frame.username, frame.device_ids)
                self._relay.limiter.charge_claims(device.username, len(claimed), now)
                reply = ClaimedKeys(id=frame.id, username=frame.username, devices=claimed)
                await self._transport.send(encode(reply))
            case GetDevices():
                await self._get_devices(frame, device)
            case UploadKeys():
                await self._upload_keys(frame, device)
            case PublishDevices():
                await self._publish_devices(frame, device)
            case SetRecovery():
                await self._set_recovery(frame, device)
            case LinkFetch():
                offer = self._relay.links.fetch(frame.link_id)
                await self._transport.send(
                    encode(LinkOffer(id=frame.id, link_id=frame.link_id, offer=offer))
                )
            case LinkApprove():
                await self._relay.links.approve(frame.link_id, frame.answer)
                await self._transport.send(encode(LinkApproved(id=frame.id)))
            case Register() | Authenticate() | Recover() | LinkWait():
                raise RequestRefused(
                    ErrorCode.ALREADY_AUTHENTICATED, "this connection is already authenticated"
                )

    async def _get_devices(self, frame: GetDevices, device: DeviceAddress) -> None:
        """The stored signed list; last active days only for the caller's own account."""
        own = frame.username == device.username
        found = await self._storage.get_devices(frame.username, last_active=own)
        reply = Devices(
            id=frame.id,
            username=frame.username,
            device_list=found.device_list,
            last_active=found.last_active,
            successions=found.successions,
        )
        await self._transport.send(encode(reply))

    async def _publish_devices(self, frame: PublishDevices, device: DeviceAddress) -> None:
        """Store a newer list signed by the account key; remove the devices that left it
        (the publishing device may be one of them: it gets the answer, then is closed)."""
        username = device.username
        account = await self._storage.account(username)
        if account is None or account.account_key is None:
            raise bad_list(f"account {username} has no account key (created before device lists)")
        published = open_list(frame.device_list, username, account.account_key)
        if published.version <= account.list_version:
            raise bad_list(
                f"list version {published.version} is not above the stored version "
                f"{account.list_version}"
            )
        if not published.devices:
            raise bad_list("a device list holds at least one device")
        limit = self._limits.max_devices_per_account
        if len(published.devices) > limit:
            raise RequestRefused(
                ErrorCode.TOO_MANY_ITEMS, f"a device list holds at most {limit} devices"
            )
        removed = await self._storage.publish_devices(username, published, _today())
        _logger.debug("device list published, %d devices removed", len(removed))
        await self._transport.send(encode(DevicesPublished(id=frame.id, version=published.version)))
        await self._relay.devices_removed(removed)

    async def _set_recovery(self, frame: SetRecovery, device: DeviceAddress) -> None:
        username = device.username
        account = await self._storage.account(username)
        account_key = account.account_key if account is not None else None
        if account_key is None:
            raise RequestRefused(
                ErrorCode.BAD_SIGNATURE,
                f"account {username} has no account key (created before device lists)",
            )
        try:
            verify(account_key, recovery_key_bytes(username, frame.recovery_key), frame.signature)
        except SignatureError:
            raise RequestRefused(
                ErrorCode.BAD_SIGNATURE, "the recovery key is not signed by the account key"
            ) from None
        await self._storage.set_recovery(
            username, account_key, RecoveryKey(frame.recovery_key, frame.signature)
        )
        await self._transport.send(encode(RecoverySet(id=frame.id)))

    def _queue_send(self, frame: Send | SendMulti, device: DeviceAddress) -> None:
        """Check a ``send`` or ``send_multi`` and queue its write; the responder answers it
        once committed."""
        limits = self._limits
        expires_at = int(time.time()) + limits.envelope_ttl_seconds
        try:
            if isinstance(frame, Send):
                envelope_ids = [envelope.envelope_id for envelope in frame.envelopes]
                self._check_send(frame)
                self._relay.limiter.check_sends(
                    device.username, len(frame.envelopes), time.monotonic()
                )
                outcome = self._storage.store_envelopes(
                    device, frame.envelopes, expires_at, limits.max_queue_per_device
                )
            else:
                envelope_ids = [frame.envelope.envelope_id]
                self._check_send_multi(frame)
                self._relay.limiter.check_sends(device.username, 1, time.monotonic())
                outcome = self._storage.store_multi(
                    device, frame.envelope, expires_at, limits.max_queue_per_device
                )
        except Exception as exc:  # noqa: BLE001 - refused before anything was queued: answered in turn
            outcome = asyncio.get_running_loop().create_future()
            outcome.set_exception(exc)
        self._sends.append(_QueuedSend(frame.id, envelope_ids, outcome, type(frame) is SendMulti))
        if self._responder is None:
            self._responder = asyncio.create_task(self._answer_sends())

    async def _answer_sends(self) -> None:
        """Answer the queued sends in request order, each once its write has committed.

        A batch's ``send`` envelopes are handed over to their devices before the answers
        (few devices each), its ``send_multi`` envelopes after them: a push to every
        device of a large group should not hold up the sender's ``sent``. When one batch
        has both for one device, they reach :meth:`Session.offer` out of commit order;
        it then leaves that device's connection to read its queue from storage, in order.
        """
        sends = self._sends
        try:
            while sends:
                with contextlib.suppress(Exception):  # a refusal is answered below
                    await sends[0].outcome
                count = 1
                while count < len(sends) and sends[count].outcome.done():
                    count += 1
                answered = sends[:count]
                del sends[:count]
                stored: list[StoredEnvelopes] = []
                fanned_out: list[StoredEnvelopes] = []
                for send in answered:
                    if send.outcome.exception() is None:
                        failpoint("relay.after_store")
                        result = send.outcome.result()
                        _logger.debug(
                            "stored %d envelopes for %d devices, skipped %d (%d recipients)",
                            len(send.envelope_ids) - len(result.skipped),
                            len(result.stored),
                            len(result.skipped),
                            len(result.skipped_recipients),
                        )
                        if send.multi:
                            fanned_out += result.stored
                        else:
                            stored += result.stored
                await self._relay.hand_over(stored)
                for send in answered:
                    failure = send.outcome.exception()
                    if failure is None:
                        sent = _sent(send.request_id, send.envelope_ids, send.outcome.result())
                        await self._transport.send(encode(sent))
                    else:
                        await self._answer_failure(send.request_id, "send", failure)
                if fanned_out:
                    await self._relay.hand_over(fanned_out)
        finally:
            self._responder = None

    async def _answered(self) -> None:
        """Wait until every queued send has been answered."""
        if self._responder is not None:
            await asyncio.wait((self._responder,))

    def _check_send(self, frame: Send) -> None:
        limits = self._limits
        envelopes = frame.envelopes
        if len(envelopes) > limits.max_envelopes_per_send:
            raise RequestRefused(
                ErrorCode.TOO_MANY_ITEMS,
                f"send has {len(envelopes)} envelopes, limit is {limits.max_envelopes_per_send}",
            )
        for envelope in envelopes:
            if len(envelope.ciphertext) > limits.max_envelope_bytes:
                raise RequestRefused(
                    ErrorCode.ENVELOPE_TOO_LARGE,
                    f"envelope {envelope.envelope_id} is {len(envelope.ciphertext)} bytes, "
                    f"limit is {limits.max_envelope_bytes}",
                )

    def _check_send_multi(self, frame: SendMulti) -> None:
        """Refuse too many recipients, a recipient named twice, or too large a ciphertext."""
        limits = self._limits
        envelope = frame.envelope
        recipients = envelope.recipients
        if len(recipients) > limits.max_recipients_per_envelope:
            raise RequestRefused(
                ErrorCode.TOO_MANY_ITEMS,
                f"envelope {envelope.envelope_id} has {len(recipients)} recipients, "
                f"limit is {limits.max_recipients_per_envelope}",
            )
        if len(envelope.ciphertext) > limits.max_envelope_bytes:
            raise RequestRefused(
                ErrorCode.ENVELOPE_TOO_LARGE,
                f"envelope {envelope.envelope_id} is {len(envelope.ciphertext)} bytes, "
                f"limit is {limits.max_envelope_bytes}",
            )
        seen: set[Recipient] = set()
        for recipient in recipients:
            if recipient in seen:
                raise RequestRefused(
                    ErrorCode.MALFORMED_FRAME,
                    f"envelope {envelope.envelope_id} names recipient "
                    f"{recipient.to_user}/{recipient.to_device} twice",
                )
            seen.add(recipient)

    async def _ack(self, frame: Ack, device: DeviceAddress) -> None:
        ids = frame.envelope_ids
        if len(ids) > self._limits.max_acks_per_frame:
            raise RequestRefused(
                ErrorCode.TOO_MANY_ITEMS,
                f"ack has {len(ids)} envelope ids, limit is {self._limits.max_acks_per_frame}",
            )
        in_flight = len(self._unacked)
        self._unacked.difference_update(ids)
        if self._parked_for_room and len(self._unacked) != in_flight:
            self._wake_up()  # the window has room again
        await self._storage.ack(device, ids)
        if frame.expired:
            await self._storage.expired_told(device, frame.expired)

    async def _upload_keys(self, frame: UploadKeys, device: DeviceAddress) -> None:
        keys = await self._storage.device_keys(device)
        if keys is None:  # removed from the account's list; its connection is closing
            raise RequestRefused(ErrorCode.UNKNOWN_DEVICE, f"no device {device}")
        self._check_keys(keys.ed25519, frame.one_time_keys, frame.fallback_key)
        count = await self._storage.upload_keys(
            device, frame.one_time_keys, frame.fallback_key, self._limits.max_one_time_keys
        )
        await self._transport.send(encode(KeysUploaded(id=frame.id, one_time_keys=count)))

    def _check_keys(
        self, ed25519: str, one_time_keys: list[OneTimeKey], fallback_key: OneTimeKey | None
    ) -> None:
        """Refuse too many one-time keys, or any key not signed by the device or unusable."""
        limit = self._limits.max_one_time_keys
        if len(one_time_keys) > limit:
            raise RequestRefused(
                ErrorCode.TOO_MANY_ITEMS, f"{len(one_time_keys)} one-time keys, limit is {limit}"
            )
        for key in [*one_time_keys, *([fallback_key] if fallback_key else [])]:
            try:
                verify_one_time_key(ed25519, key)
            except SignatureError:
                raise RequestRefused(
                    ErrorCode.BAD_SIGNATURE, f"the signature of key {key.key_id} does not verify"
                ) from None
            usable_key(key)

    # --- delivery --------------------------------------------------------------------------

    async def _deliver(self, device: DeviceAddress, backlog_end: int) -> None:
        """Push the device's envelopes in storage order, within the window; then wait for more."""
        window = self._limits.delivery_window
        try:
            while True:
                self._woken = False  # before reading: a wake-up during the read is kept
                room = min(window - len(self._unacked), _FETCH)
                if room > 0:
                    offered = self._newest_offered  # committed before the read below
                    rows = await self._storage.pending(device, self._cursor, room)
                    if rows:
                        self._cursor = rows[-1][0]
                        await self._push_in_turn([envelope for _, envelope in rows])
                    if len(rows) < room:  # caught up, also with every envelope offered so far
                        self._cursor = max(self._cursor, offered)
                    if not self._drained and (self._cursor >= backlog_end or len(rows) < room):
                        self._drained = True
                        await self._transport.send(_DRAINED)
                    if len(rows) == room:
                        continue
                if self._woken:
                    continue
                self._parked_for_room = room <= 0
                self._parked = True
                self._wake_waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._wake_waiter
                finally:
                    self._wake_waiter = None
                    self._parked = self._parked_for_room = False
        except Exception:
            _logger.exception("delivery to a device failed")
            self._close_soon(CLOSE_INTERNAL_ERROR, "internal server error")

    def _wake_up(self) -> None:
        """Make the delivery task read the device's queue again (cheap; never raises)."""
        self._woken = True
        waiter = self._wake_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _push_in_turn(self, envelopes: list[Envelope]) -> None:
        """:meth:`_push` once no other push is on the wire."""
        while self._pushing is not None:
            await asyncio.wait((self._pushing,))
        pushing = self._pushing = asyncio.get_running_loop().create_future()
        try:
            await self._push(envelopes)
        finally:
            self._pushing = None
            pushing.set_result(None)

    async def _push(self, envelopes: list[Envelope]) -> None:
        """Send envelopes in as few ``deliver`` frames as ``max_frame_bytes`` allows."""
        limit = self._limits.max_frame_bytes
        batch: list[Envelope] = []
        size = _ENVELOPE_JSON_OVERHEAD
        for envelope in envelopes:
            envelope_size = _json_size(envelope)
            if batch and size + envelope_size > limit:
                await self._transport.send(encode(Deliver(envelopes=batch)))
                batch, size = [], _ENVELOPE_JSON_OVERHEAD
            batch.append(envelope)
            size += envelope_size
            self._unacked.add(envelope.envelope_id)
        await self._transport.send(encode(Deliver(envelopes=batch)))
        _logger.debug("pushed %d envelopes", len(envelopes))

    def _cancel_delivery(self) -> None:
        if self._deliverer is not None:
            self._deliverer.cancel()
        if self.device is not None:
            self._relay.router.unsubscribe(self.device, self._wake_up)

    async def _stop_delivery(self) -> None:
        self._cancel_delivery()
        if self._deliverer is not None:
            await asyncio.wait([self._deliverer])  # its end, without its CancelledError
            self._deliverer = None

    # --- replies ---------------------------------------------------------------------------

    async def _answer_failure(
        self, request_id: int | None, frame_type: str, failure: BaseException
    ) -> None:
        """Answer a request that raised: its own code, or ``internal`` without details."""
        if not isinstance(failure, ObrolanError):
            _logger.error("internal error handling a %s frame", frame_type, exc_info=failure)
            await self._refuse(request_id, ErrorCode.INTERNAL, "internal server error")
        elif failure.code is ErrorCode.INTERNAL:
            _logger.error("request failed: %s", failure)
            await self._refuse(request_id, ErrorCode.INTERNAL, "internal server error")
        else:
            retry = failure.retry_after_ms if isinstance(failure, RequestRefused) else None
            await self._refuse(request_id, failure.code, str(failure), retry_after_ms=retry)

    async def _refuse(
        self,
        request_id: int | None,
        code: ErrorCode,
        message: str,
        *,
        retry_after_ms: int | None = None,
    ) -> None:
        """Send an error frame; close the connection after a fatal one."""
        error = Error(id=request_id, code=code, message=message, retry_after_ms=retry_after_ms)
        await self._transport.send(encode(error))
        if code in FATAL_CODES:
            await self._close(CLOSE_POLICY_VIOLATION, code.value)

    async def _close(self, code: int, reason: str) -> None:
        if not self._closing:
            self._closing = True
            await self._transport.close(code, reason)

    def _close_soon(self, code: int, reason: str) -> None:
        """Start closing from code that cannot wait for it (a callback, another session)."""
        if not self._closing:
            self._closing = True
            self._spawn(self._transport.close(code, reason))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)  # a task nobody references may be garbage-collected
        task.add_done_callback(self._background.discard)
