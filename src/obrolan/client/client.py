"""The async client that programs, bots and the CLI use.

::

    async with Client.open(profile_dir, passphrase) as client:
        await client.send("bob", "hi")
        async for message in client.messages():
            print(message.sender, message.text)

Two rules keep it crash-safe (docs/architecture.md):

* A message the user writes is in the outbox (one local transaction) before
  :meth:`Client.send` returns; it is encrypted once, and its ciphertext is kept
  until the server says ``sent``, so a resend is the same envelope.
* A received envelope is decrypted and stored, together with the advanced
  session and its envelope id, in one local transaction before it is acked.

Olm sessions are loaded, used and saved with no ``await`` in between, so the
inbox and the outbox never interleave on one session.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from obrolan.client import contact_sync, retry_policy
from obrolan.client.archive import ImportSummary
from obrolan.client.attachments import (
    BlobClient,
    FileUploadJournal,
    Progress,
    decrypt_attachment,
)
from obrolan.client.connection import Connection, ServerAddress, is_fatal
from obrolan.client.conversation import Conversations
from obrolan.client.directory import DeviceView, Directory
from obrolan.client.enrolment import (
    Enrolled,
    Server,
    check_device_name,
    default_device_name,
    enrol_by_link,
    enrol_by_recovery,
    enrol_by_registration,
)
from obrolan.client.group_store import is_group_peer
from obrolan.client.groups import Groups
from obrolan.client.history_transfer import INCOMING as INCOMING_HISTORY
from obrolan.client.history_transfer import HistoryTransfers
from obrolan.client.ids import check_username, new_id
from obrolan.client.inbox_notices import InboxNotices
from obrolan.client.models import (
    Approval,
    Contact,
    Device,
    Event,
    Message,
    MessageState,
    Whoami,
)
from obrolan.client.olm_sessions import OlmSessions
from obrolan.client.store import OutboxEntry, Store, now_ms
from obrolan.client.vault import Vault, open_vault
from obrolan.crypto.account import (
    AccountKey,
    LinkCode,
    RecoveryCode,
    device_entry,
    open_name,
    seal_name,
)
from obrolan.crypto.device import DeviceIdentity
from obrolan.crypto.safety import safety_number
from obrolan.crypto.signatures import verify_one_time_key
from obrolan.errors import (
    ConfigError,
    CryptoError,
    DeviceRemoved,
    DeviceReplaced,
    IdentityChanged,
    InvalidState,
    ObrolanError,
    RemoteProtocolError,
    RequestRefused,
    ServerUnreachable,
    SignatureError,
    UnknownContact,
)
from obrolan.failpoints import failpoint
from obrolan.protocol import content, frames
from obrolan.protocol import groups as groups_wire
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.decoding import decode_json
from obrolan.protocol.deliver_salvage import UnreadableEnvelope
from obrolan.protocol.frames import DeviceList, ListedDevice, SignedDeviceList
from obrolan.protocol.limits import PROTOCOL_VERSION, Limits
from obrolan.protocol.signing import auth_bytes

__all__ = ["Client"]

log = logging.getLogger("obrolan.client")

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
VIEW_TTL = 300.0
"""Seconds a fetched device list is used before it is looked at again (a contact's new
device is encrypted to at the latest this long after it was added)."""
AUTO_DOWNLOAD_BYTES = 5 * 1024 * 1024
"""Default: files up to 5 MiB are fetched as soon as their message arrives."""
_COPIED_TO_OWN_DEVICES = (
    content.Text,
    content.Reaction,
    content.Edit,
    content.Delete,
    content.Timer,
)
"""Kinds our other devices get a copy of, so every device shows the whole conversation."""


class Client:
    """One device of one account: its local store, identity and server connection."""

    def __init__(
        self, profile_dir: Path, vault: Vault, store: Store, identity: DeviceIdentity
    ) -> None:
        self.profile_dir = profile_dir
        self._vault = vault
        self._store = store
        self._identity = identity
        self._sessions = OlmSessions(store, identity, vault.pickle_key)
        self.username = _required(store.get_meta("username"))
        self.device_id = _required(store.get_meta("device_id"))
        self.address = ServerAddress.parse(
            _required(store.get_meta("server_url")),
            insecure=store.get_meta("insecure") == "1",
            ca_file=store.get_meta("ca_file") or None,
        )
        self._account = AccountKey(base64.b64decode(_required(store.get_meta("account_secret"))))
        self._data_key = base64.b64decode(_required(store.get_meta("data_key")))
        self._directory = Directory(store, self.username, self._account.public)
        self.recovery_code: RecoveryCode | None = None
        """Set right after registration, recovery or rotation: show it once, then forget it."""
        self.history_follows = False
        """Set right after linking with history: another device is sending it."""
        self.verification_inbox: asyncio.Queue[content.Plaintext] = asyncio.Queue(maxsize=64)
        """Verification events from verified devices, for :mod:`obrolan.client.verification`."""
        self._conn: Connection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._expirer: asyncio.Task[None] | None = None
        self._conversations = Conversations(store, self.username, profile_dir / "attachments")
        self._history = HistoryTransfers(
            vault, store, profile_dir / "history", self._blobs, self._announce_history
        )
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        """What happened, after it was stored; None wakes a reader after a fatal error."""
        self._notices = InboxNotices(
            store, self._conversations, self.username, self._events.put_nowait
        )
        self.groups = Groups(
            store,
            self,
            self._account,
            vault.pickle_key,
            self._conversations,
            self._events.put_nowait,
        )
        """This device's group chats (:mod:`obrolan.client.groups`)."""
        self._outbox_wakeup = asyncio.Event()
        self._outbox_idle = asyncio.Event()
        self._drained = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._last_error: ObrolanError | None = None
        self._failures = 0
        """Connection attempts that failed so far (a wait fails on a new one only)."""
        self._fatal: ObrolanError | None = None
        self._resync = False
        """The current connection was closed on purpose: reconnect at once."""
        self._tasks: set[asyncio.Task[None]] = set()
        """Background attachment work (downloads, releases)."""
        self._views: dict[str, DeviceView] = {}
        """Device lists checked on the current connection, by username."""
        self._viewed_at: dict[str, float] = {}
        """When each of those was fetched (``time.monotonic``)."""
        self._last_active: dict[str, str] = {}
        """Our own devices' last active day, as the server last told it."""
        self._refusal: RequestRefused | None = None
        """The server's last refusal for now of an outbox request, while it waits to retry."""
        self._failed_copies: set[tuple[str, str, str]] = set()
        """(username, device, reason) of copies that failed, each told to the user once."""

    # --- opening and closing ------------------------------------------------------------

    @classmethod
    async def register(
        cls,
        profile_dir: Path,
        server_url: str,
        username: str,
        passphrase: str | None,
        *,
        insecure: bool = False,
        ca_file: str | None = None,
        device_name: str | None = None,
    ) -> Client:
        """Create a new account on the server and a profile for its first device.

        ``passphrase`` None stores a random key in a 0600 file (for bots). The
        account's recovery code is in :attr:`recovery_code`: show it once.

        Raises:
            ConfigError: bad username or server URL.
            ProfileError: a profile already exists at ``profile_dir``.
            ServerUnreachable: the server cannot be reached; nothing was created.
            RequestRefused: the server refused (``username_taken``); nothing was kept.
        """
        server = Server(server_url, insecure, ca_file)
        name = check_device_name(device_name or default_device_name())
        return cls._enrolled(
            profile_dir,
            await enrol_by_registration(profile_dir, server, username, passphrase, name),
        )

    @classmethod
    async def recover(
        cls,
        profile_dir: Path,
        server_url: str,
        username: str,
        recovery_code: str,
        passphrase: str | None,
        *,
        insecure: bool = False,
        ca_file: str | None = None,
        device_name: str | None = None,
    ) -> Client:
        """Reclaim ``username`` on a new device with its recovery code (every device lost).

        The account gets a new account key (contacts see a changed key) and a new
        recovery code (:attr:`recovery_code`). Old history is not on the server.

        Raises:
            CryptoError: the code is not in the recovery code's form.
            RequestRefused: ``auth_failed``: a wrong code or no such account; nothing changed.
        """
        code = RecoveryCode.parse(recovery_code)
        server = Server(server_url, insecure, ca_file)
        name = check_device_name(device_name or default_device_name())
        return cls._enrolled(
            profile_dir,
            await enrol_by_recovery(profile_dir, server, username, code, passphrase, name),
        )

    @classmethod
    async def link(
        cls,
        profile_dir: Path,
        server_url: str,
        username: str,
        passphrase: str | None,
        show_code: Callable[[LinkCode], None],
        *,
        insecure: bool = False,
        ca_file: str | None = None,
        device_name: str | None = None,
        wait_seconds: float = 600.0,
    ) -> Client:
        """Make this a new device of ``username``'s account: ``show_code`` gets the link
        code to show; an existing device approves it (``obrolan devices approve CODE``).

        Raises:
            ServerUnreachable: the server cannot be reached, or nobody approved in time.
            SignatureError: the answer was not a valid approval (nothing was kept).
        """
        server = Server(server_url, insecure, ca_file)
        name = check_device_name(device_name or default_device_name())
        enrolled = await enrol_by_link(
            profile_dir, server, username, passphrase, name, show_code, wait_seconds
        )
        client = cls._enrolled(profile_dir, enrolled)
        client.history_follows = enrolled.history_follows
        try:
            await client.sync()  # publish one-time keys now, so others can reach this device
        except BaseException:
            await client.close()
            raise
        return client

    @classmethod
    def _enrolled(cls, profile_dir: Path, enrolled: Enrolled) -> Client:
        client = cls(profile_dir, enrolled.vault, enrolled.store, enrolled.identity)
        client.recovery_code = enrolled.recovery_code
        return client

    @classmethod
    def open(cls, profile_dir: Path, passphrase: str | None, *, online: bool = True) -> _Opened:
        """Open a profile: ``async with Client.open(dir, passphrase) as client``.

        With ``online`` the client connects in the background, and keeps
        reconnecting with exponential backoff and jitter until it is closed.

        Raises (on enter):
            ProfileError: no profile at ``profile_dir``.
            WrongPassphrase: the store did not open with this passphrase.
        """
        return _Opened(cls, profile_dir, passphrase, online)

    @classmethod
    async def load(cls, profile_dir: Path, passphrase: str | None) -> Client:
        """Open a profile without connecting (see :meth:`open`)."""
        vault = await asyncio.to_thread(open_vault, profile_dir, passphrase)
        try:
            store = Store(vault)
            identity = DeviceIdentity.from_pickle(
                _required(store.get_meta("account")), vault.pickle_key
            )
            client = cls(profile_dir, vault, store, identity)
            client.expire()  # nothing past its timer is ever shown, online or not
            with store.transaction():
                store.forget_old_processed()  # dedupe ids outlive the server's TTL, no more
            return client
        except BaseException:
            vault.close()
            raise

    def start(self) -> None:
        """Connect in the background (idempotent)."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="obrolan-client")
            self._expirer = asyncio.create_task(self._expire_loop(), name="obrolan-expiry")

    def expire(self) -> int:
        """Delete the messages whose disappearing timer ran out; returns how many."""
        before = self._store.message_count()
        with self._store.transaction():
            self._conversations.expire()
        if self._runner is not None:  # online: tell the server; offline, the TTL cleans up
            self._after_changes([])
        else:
            self._conversations.released.clear()
        return before - self._store.message_count()

    async def _expire_loop(self) -> None:
        while True:
            self.expire()
            upcoming = self._store.next_expiry()
            delay = 60.0 if upcoming is None else max(0.0, (upcoming - now_ms()) / 1000)
            await asyncio.sleep(min(delay, 60.0) + 0.01)

    async def close(self) -> None:
        """Disconnect and close the local store; queued messages stay queued."""
        for task in (self._runner, self._expirer, *self._tasks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._runner = self._expirer = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        self._vault.close()

    # --- what programs call -------------------------------------------------------------

    def sign(self, data: bytes) -> str:
        """Sign with this device's Ed25519 key (blob requests and other signed protocol bytes)."""
        return self._identity.sign(data)

    def whoami(self) -> Whoami:
        """This profile's account, device and server."""
        return Whoami(
            self.username,
            self.device_id,
            self.address.url,
            self._identity.ed25519,
            self._identity.curve25519,
            self._account.public,
        )

    # --- this account's devices ---------------------------------------------------------

    async def devices(self) -> list[Device]:
        """This account's devices, from its signed list, with the last day each was active."""
        listed = await self._own_list()
        return [
            Device(
                device_id=d.keys.device_id,
                name=open_name(self._data_key, self.username, d.keys.device_id, d.name),
                added=d.added,
                last_active=self._last_active.get(d.keys.device_id),
                ed25519=d.keys.ed25519,
                current=d.keys.device_id == self.device_id,
            )
            for d in listed.devices
        ]

    async def _own_list(self) -> DeviceList:
        view = await self._fetch_devices(await self._connected(), self.username, fresh=True)
        if view.device_list is None:
            raise SignatureError(
                "the server's list of your devices is not signed by your account key: "
                "do not trust it (see the log)"
            )
        return view.device_list

    async def _publish(self, devices: list[ListedDevice]) -> SignedDeviceList:
        """Sign and publish the next version of our device list."""
        listed = await self._own_list()
        signed = self._account.sign_device_list(self.username, listed.version + 1, devices)
        await (await self._connected()).request(
            lambda i: frames.PublishDevices(id=i, device_list=signed)
        )
        self._views.pop(self.username, None)
        return signed

    async def approve(self, code_text: str, *, with_history: bool = False) -> Approval:
        """Add the new device showing ``code_text`` to this account and hand it the secrets.

        The secrets include our contacts (pinned keys, verification, conversation
        settings), so the new device trusts nobody anew and knows whom we talk to.
        ``with_history`` tells the new device that :meth:`send_history` follows.

        Raises:
            CryptoError: the code is malformed, or wrong (the offer does not open).
            ConfigError: the new device wants to join another account.
            RequestRefused: ``unknown_link`` (wrong or expired), ``link_used``.
        """
        code = LinkCode.parse(code_text)
        conn = await self._connected()
        fetched = await conn.request(lambda i: frames.LinkFetch(id=i, link_id=code.link_id))
        assert isinstance(fetched, frames.LinkOffer)
        offer = code.open_offer(fetched.offer)
        if offer.username != self.username:
            raise ConfigError(
                f"this code links a device to {offer.username}'s account, and this device "
                f"belongs to {self.username}: approve it from one of {offer.username}'s devices"
            )
        listed = await self._own_list()
        if any(d.keys.device_id == offer.device.device_id for d in listed.devices):
            raise ConfigError(f"device {offer.device.device_id} is already in this account")
        most = conn.challenge.limits.max_devices_per_account
        if len(listed.devices) >= most:
            raise ConfigError(
                f"this account has {len(listed.devices)} devices, the most this server allows: "
                f"remove one first (`obrolan devices remove DEVICE`)"
            )
        entry = device_entry(
            offer.device,
            seal_name(self._data_key, self.username, offer.device.device_id, offer.name),
        )
        published = await self._publish([*listed.devices, entry])
        bare = content.LinkSecrets(
            username=self.username,
            approver_device=self.device_id,
            account_secret=self._account.secret,
            data_key=self._data_key,
            device_list=published,
            history=with_history,
        )
        known = contact_sync.linked_contacts(self._store)
        shared = contact_sync.fit_link_answer(bare, known)
        secrets = msgspec.structs.replace(bare, contacts=shared)
        session = self._identity.outbound_session(offer.device.curve25519, offer.one_time_key.key)
        sealed = session.encrypt(content.encode(secrets), self._identity.curve25519)
        with self._store.transaction():
            self._sessions.save(offer.device.curve25519, session)
        await conn.request(
            lambda i: frames.LinkApprove(id=i, link_id=code.link_id, answer=content.encode(sealed))
        )
        if self.groups.share_with_own_device(offer.device.device_id):
            with contextlib.suppress(ServerUnreachable):
                await self.flush(30)  # the chains go now: the new device knows its groups (§23.8)
        device = Device(
            offer.device.device_id, offer.name, entry.added, None, offer.device.ed25519, False
        )
        return Approval(device, len(shared), len(known) - len(shared))

    async def rename_device(self, device_id: str, name: str) -> None:
        """Give one of this account's devices a new name (sealed: only our devices read it)."""
        name = check_device_name(name)
        listed = await self._own_list()
        self._own_entry(listed, device_id)
        sealed = seal_name(self._data_key, self.username, device_id, name)
        await self._publish(
            [
                msgspec.structs.replace(d, name=sealed) if d.keys.device_id == device_id else d
                for d in listed.devices
            ]
        )

    async def remove_device(self, device_id: str) -> None:
        """Sign a list without ``device_id``: it receives nothing new, peers stop using it."""
        if device_id == self.device_id:
            raise ConfigError("this is the device you are using: remove it from another device")
        listed = await self._own_list()
        self._own_entry(listed, device_id)
        await self._publish([d for d in listed.devices if d.keys.device_id != device_id])

    @staticmethod
    def _own_entry(listed: DeviceList, device_id: str) -> ListedDevice:
        for device in listed.devices:
            if device.keys.device_id == device_id:
                return device
        raise ConfigError(f"no device {device_id!r} in this account (see `obrolan devices`)")

    # --- what groups need (GroupHost) -----------------------------------------------------

    def queue_olm(self, username: str, body: content.Content, to_device: str | None) -> None:
        self._queue(username, body, to_device=to_device)

    def queue_multi(self, envelope: frames.MultiEnvelope, message_rowid: int) -> None:
        peer = self._store.message(message_rowid).peer  # "#GROUP_ID", for the logs
        self._store.enqueue(peer, None, message_rowid=message_rowid, multi=frames.encode(envelope))
        self._outbox_idle.clear()
        self._outbox_wakeup.set()
        self.start()

    async def verified_devices(self, username: str) -> list[frames.DeviceKeys]:
        view = await self._fetch_devices(await self._connected(), username)
        return [
            d
            for d in view.devices
            if view.blocked is None and (username, d.device_id) != (self.username, self.device_id)
        ]

    async def account_key_of(self, username: str) -> str | None:
        if username == self.username:
            return self._account.public
        try:
            contact = await self._contact(username)
        except UnknownContact:
            return None
        return None if contact.blocked_by_change else contact.current_key

    async def earlier_account_keys(self, username: str) -> list[str]:
        key = await self.account_key_of(username)
        view = await self._fetch_devices(await self._connected(), username)
        listed = view.device_list
        return view.earlier_keys if listed is not None and listed.account_key == key else []

    def sign_device(self, data: bytes) -> str:
        return self._identity.sign(data)

    def limits(self) -> Limits:
        return Limits() if self._conn is None else self._conn.challenge.limits

    # --- what verification (SAS) needs ---------------------------------------------------

    @property
    def account_key(self) -> str:
        """This account's public account key."""
        return self._account.public

    async def pinned_account_key(self, username: str) -> str:
        """The account key this device holds for ``username`` now (looked up on first contact)."""
        return (await self._contact(username)).current_key

    def device_key(self, username: str, device_id: str) -> str | None:
        """The Ed25519 key of a device in ``username``'s last verified list."""
        for known_id, ed25519, _ in self._store.devices_of(username):
            if known_id == device_id:
                return ed25519
        return None

    def mark_verified(self, username: str, account_key: str) -> bool:
        """Mark ``username`` verified if ``account_key`` is still the key pinned for them."""
        with self._store.transaction():
            done = self._store.set_verified(username, account_key)
            if done:
                self._conversations.notice(username, f"you verified {username}'s account key")
                self._tell_own_devices(username)
        return done

    async def send_verification(
        self, username: str, body: content.Content, to_device: str | None = None
    ) -> None:
        """Queue a verification event for ``username``'s devices (or one of them)."""
        with self._store.transaction():
            self._queue(username, body, to_device=to_device)

    def _verification_event(self, body: content.Plaintext) -> list[Event]:
        with contextlib.suppress(asyncio.QueueFull):  # nobody is verifying: old ones drop
            self.verification_inbox.put_nowait(body)
        if isinstance(body.content, content.VerifyStart):
            return [Event("verify", body.sender)]
        return []

    # --- history between our devices -----------------------------------------------------

    async def send_history(self, device_id: str, progress: Progress | None = None) -> int:
        """Send this device's history to our device ``device_id``; returns how many messages.

        Resumable: after an interruption, call it again.
        """
        if device_id == self.device_id:
            raise ConfigError("that is this device")
        self._own_entry(await self._own_list(), device_id)
        count = await self._history.send(self.username, device_id, progress)
        await self.flush(timeout=60.0)
        return count

    async def _announce_history(self, device_id: str, body: content.HistoryTransfer) -> None:
        with self._store.transaction():
            self._queue(self.username, body, to_device=device_id)

    async def receive_history(
        self, progress: Progress | None = None, timeout: float | None = 600.0
    ) -> ImportSummary:
        """Wait for the history another device of ours sends, then import it.

        Resumes an interrupted download. Raises HistoryTransferFailed when it does
        not authenticate (nothing is imported).
        """
        self.start()
        await self._wait(lambda: self.history_offer() is not None, timeout)
        summary = await self._history.receive(progress)
        assert summary is not None
        return summary

    def history_offer(self) -> content.HistoryTransfer | None:
        """The history message that arrived and is not imported yet (its archive's size…)."""
        return self._history.pending()

    async def rotate_recovery_code(self) -> RecoveryCode:
        """Make a new recovery code; the old one stops working. Show the new one once."""
        code = RecoveryCode.create()
        signature = self._account.sign_recovery_key(self.username, code.public_key)
        await (await self._connected()).request(
            lambda i: frames.SetRecovery(id=i, recovery_key=code.public_key, signature=signature)
        )
        return code

    async def send(self, username: str, text: str, *, reply_to: str | None = None) -> Message:
        """Queue a text message for ``username``; it is in the durable outbox on return.

        The background connection (started if needed) sends it as soon as it can;
        :meth:`flush` waits for that. ``reply_to`` quotes a message of the conversation.
        To a contact whose account key changed and was not accepted, it is held
        (``MessageState.HELD``, nothing encrypted) until :meth:`trust`.
        """
        self._check_sendable(username)
        with self._store.transaction():
            rowid, body = self._conversations.prepare_text(
                username, new_id(), text, reply_to, None, self.device_id
            )
            self._queue(username, body, message_rowid=rowid)
        return self._store.message(rowid)

    async def send_file(
        self,
        username: str,
        path: Path,
        text: str = "",
        *,
        reply_to: str | None = None,
        progress: Progress | None = None,
    ) -> Message:
        """Encrypt and upload a file for ``username``'s devices, then queue a message with it.

        The upload resumes after an interruption (run the same call again).

        Raises:
            ServerUnreachable: the upload needs the server; nothing was queued.
            RequestRefused: ``blob_too_large``, ``quota_exceeded``, …
            ConfigError: no such file, or ``username`` has no device.
        """
        self._check_sendable(username)
        conn = await self._connected()
        view = await self._fetch_devices(conn, username)
        if view.blocked is not None:
            raise IdentityChanged(username)
        if not view.devices:
            raise ConfigError(f"{username} has no device that can receive files")
        own = (await self._fetch_devices(conn, self.username)).devices
        recipients = [(username, d.device_id) for d in view.devices] + [
            (self.username, d.device_id) for d in own if d.device_id != self.device_id
        ]
        async with self._blobs() as blobs:
            attachment = await blobs.upload_file(
                path, recipients, FileUploadJournal(self.profile_dir / "uploads"), progress
            )
        with self._store.transaction():
            rowid, body = self._conversations.prepare_text(
                username, new_id(), text, reply_to, attachment, self.device_id
            )
            self._queue(username, body, message_rowid=rowid)
        return self._store.message(rowid)

    async def download(
        self, message: Message, out: Path | None = None, *, progress: Progress | None = None
    ) -> Path:
        """Fetch (unless already on this device), verify and decrypt a message's file.

        ``out`` is a file or folder (default: the current folder, under the sender's
        file name). Returns the decrypted file's path.

        Raises:
            ConfigError: the message has no file, or the output exists.
            DecryptionError: the blob is not what the sender uploaded (nothing is written).
        """
        attachment = self._store.attachment_of(self._row_of(message))
        if attachment is None:
            raise ConfigError("that message has no file")
        stored = self.profile_dir / "attachments" / attachment.blob_id
        if not stored.exists():
            async with self._blobs() as blobs:
                stored = await blobs.download(attachment, stored.parent, progress)
        name = Path(attachment.name).name or attachment.blob_id  # never a path from the sender
        target = out or Path.cwd()
        if target.is_dir():
            target = target / name
        await asyncio.to_thread(decrypt_attachment, stored, attachment, target)
        return target

    @property
    def auto_download_bytes(self) -> int:
        """Files up to this size are fetched as soon as their message arrives."""
        return int(self._store.get_meta("auto_download_bytes") or AUTO_DOWNLOAD_BYTES)

    def set_auto_download(self, size: int) -> None:
        with self._store.transaction():
            self._store.set_meta("auto_download_bytes", str(size))

    def _blobs(self) -> BlobClient:
        return BlobClient(self.address, self.username, self.device_id, self.sign)

    async def _connected(self) -> Connection:
        self.start()
        await self._wait(lambda: self._conn is not None, 30.0)
        assert self._conn is not None
        return self._conn

    def _after_changes(self, events: list[Event]) -> None:
        """Side effects of stored events: fetch small files, release deleted ones."""
        for event in events:
            message = event.message
            if event.kind != "message" or message is None or message.attachment is None:
                continue
            size = message.attachment.get("size")
            if isinstance(size, int) and size <= self.auto_download_bytes:
                self._background(self.download_to_store(message))
        released, self._conversations.released = self._conversations.released, []
        for blob_id in released:
            self._background(self._release(blob_id))

    async def download_to_store(self, message: Message) -> None:
        """Fetch a message's file into this device's encrypted attachment folder."""
        attachment = self._store.attachment_of(self._row_of(message))
        if attachment is not None:
            async with self._blobs() as blobs:
                await blobs.download(attachment, self.profile_dir / "attachments")

    async def _release(self, blob_id: str) -> None:
        async with self._blobs() as blobs:
            await blobs.mark_fetched(blob_id)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run best-effort work (a failure is logged; the blob's TTL is the backstop)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.warning("attachment work failed: %s", finished.exception())

        task.add_done_callback(done)

    def resolve(self, message_ref: str) -> Message:
        """The message whose id is, or starts with, ``message_ref`` (as `history` shows it).

        Raises:
            ConfigError: no message, or several, match.
        """
        matches = self._store.find_by_prefix(message_ref)
        if not matches:
            raise ConfigError(f"no message {message_ref!r} on this device")
        if len(matches) > 1:
            raise ConfigError(
                f"{message_ref!r} matches {len(matches)} messages: give more of its id"
            )
        return matches[0][1]

    async def react(self, message: Message, emoji: str) -> None:
        """React to a message with one emoji (replacing ours), or "" to withdraw it."""
        rowid = self._row_of(message)
        self._check_sendable(message.peer)
        with self._store.transaction():
            self._conversations.react(rowid, emoji)
            self._queue(
                message.peer,
                content.Reaction(
                    message_id=new_id(), sent_at_ms=now_ms(), target=message.message_id, emoji=emoji
                ),
            )

    async def edit(self, message: Message, text: str) -> None:
        """Replace the text of one of our messages; the peer sees it as edited."""
        rowid = self._row_of(message)
        self._check_sendable(message.peer)
        at = now_ms()
        with self._store.transaction():
            self._conversations.edit(rowid, message, text, at)
            self._queue(
                message.peer,
                content.Edit(
                    message_id=new_id(), sent_at_ms=at, target=message.message_id, text=text
                ),
            )

    async def delete(self, message: Message) -> None:
        """Delete one of our messages for everyone (within 48 hours of sending it)."""
        rowid = self._row_of(message)
        self._check_sendable(message.peer)
        at = now_ms()
        with self._store.transaction():
            self._conversations.delete(rowid, message, at)
            self._queue(
                message.peer,
                content.Delete(message_id=new_id(), sent_at_ms=at, target=message.message_id),
            )
        self._conversations.released.clear()  # our own upload: the recipients release it

    async def set_timer(self, username: str, seconds: int | None) -> None:
        """Turn disappearing messages on (``seconds``) or off (None) for a conversation."""
        self._check_sendable(username)
        message_id = new_id()
        with self._store.transaction():
            self._conversations.set_timer(username, seconds, message_id)
            self._queue(
                username, content.Timer(message_id=message_id, sent_at_ms=now_ms(), seconds=seconds)
            )

    async def typing(self, username: str, active: bool) -> bool:
        """Tell ``username`` we started or stopped typing; False when offline (not sent)."""
        if self._conn is None:
            return False
        with self._store.transaction():
            self._queue(
                username, content.Typing(message_id=new_id(), sent_at_ms=now_ms(), active=active)
            )
        return True

    async def mark_read(self, username: str) -> int:
        """Report the peer's messages as read (if receipts are on); returns how many."""
        unread = self._store.unread_from(username)
        if not unread:
            return 0
        with self._store.transaction():
            self._store.mark_read(username, unread)
            if self.receipts and not is_group_peer(username):  # no receipts in groups
                self._queue(
                    username,
                    content.Receipt(
                        message_id=new_id(), sent_at_ms=now_ms(), targets=unread, status="read"
                    ),
                )
        return len(unread)

    @property
    def receipts(self) -> bool:
        """Whether this device sends delivery and read receipts (default on)."""
        return self._store.get_meta("receipts") != "off"

    def set_receipts(self, enabled: bool) -> None:
        with self._store.transaction():
            self._store.set_meta("receipts", "on" if enabled else "off")
            if enabled:
                self._store.forget_told_receipts_off()

    def requests(self) -> list[str]:
        """People whose first messages wait for this user to accept them."""
        return [c.peer for c in self._store.conversations() if not c.accepted and not c.blocked]

    def accept(self, username: str) -> None:
        """Accept a message request: the conversation becomes a normal one."""
        with self._store.transaction():
            self._store.open_conversation(username, accepted=True)
            self._store.set_conversation(username, accepted=True, blocked=False)
            self._tell_own_devices(username)

    def block(self, username: str, blocked: bool = True) -> None:
        """Drop everything ``username`` sends from now on, silently (or stop doing so)."""
        check_username(username)
        with self._store.transaction():
            self._store.open_conversation(username, accepted=not blocked)
            self._store.set_conversation(username, blocked=blocked)
            self._tell_own_devices(username)

    def _tell_own_devices(self, username: str) -> None:
        """Queue what we now know of ``username`` for our other devices (in a transaction).

        With no other device the entry goes nowhere; a device linked later is told at linking.
        """
        linked = contact_sync.linked_contact(self._store, username)
        if linked is None:  # a contact not met yet has no key to tell about
            return
        update = content.ContactUpdate(message_id=new_id(), sent_at_ms=now_ms(), contact=linked)
        self._store.enqueue(self.username, content.encode(update))
        if self._runner is not None:  # online: now; offline (`block`, `trust`): next time
            self._outbox_idle.clear()
            self._outbox_wakeup.set()

    def _adopt(self, device_id: str, contact: content.LinkedContact) -> list[Event]:
        """Take in what another device of ours knows of a contact (spec §18.1)."""
        username = contact.username
        if username == self.username:
            return []
        before = self._store.contact(username)
        adopted = contact_sync.adopt(self._store, contact)
        self._views.pop(username, None)
        after = self._store.contact(username)
        notice = None
        if adopted is contact_sync.Adopted.OTHER_KEY:
            notice = (
                f"⚠ your device {device_id} was shown another account key for {username} "
                f"than this device: compare safety numbers with {username}, then "
                f"`obrolan trust {username}` if the new key is theirs"
            )
        elif adopted is contact_sync.Adopted.TRUSTED:
            notice = f"you accepted {username}'s new account key on your device {device_id}"
            self._store.release_held(username)
            self._wake_outbox()
        elif after is not None and after.verified and not (before and before.verified):
            notice = f"you verified {username}'s account key on your device {device_id}"
        if notice is None:
            return []
        return [Event("message", username, self._conversations.notice(username, notice))]

    def blocked(self) -> list[str]:
        return [c.peer for c in self._store.conversations() if c.blocked]

    def timer(self, username: str) -> int | None:
        conversation = self._store.conversation(username)
        return None if conversation is None else conversation.timer_seconds

    def _row_of(self, message: Message) -> int:
        found = self._store.find(message.peer, message.message_id)
        if found is None:
            raise ConfigError(f"no message {message.message_id} on this device")
        return found[0]

    def _check_sendable(self, username: str) -> None:
        check_username(username)
        if username == self.username:
            raise ConfigError("you cannot send a message to yourself")

    def _queue(
        self,
        peer: str,
        body: content.Content,
        *,
        message_rowid: int | None = None,
        to_device: str | None = None,
    ) -> None:
        """Put an event in the outbox (inside the caller's transaction) and wake the sender."""
        counter = None if isinstance(body, content.EPHEMERAL) else self._store.next_counter(peer)
        self._store.enqueue(
            peer,
            content.encode(body),
            message_rowid=message_rowid,
            counter=counter,
            to_device=to_device,
        )
        contact = self._store.contact(peer)
        if message_rowid is not None and contact is not None and contact.blocked_by_change:
            self._store.set_state(message_rowid, MessageState.HELD)
        self._outbox_idle.clear()
        self._outbox_wakeup.set()
        self.start()

    def message(self, message_id: str, sender: str | None = None) -> Message | None:
        """A stored message by id (the latest state)."""
        for candidate in self._store.messages_by_id(message_id):
            if sender is None or candidate.sender == sender:
                return candidate
        return None

    @property
    def outbox_refusal(self) -> RequestRefused | None:
        """What the server said when it last refused the outbox for now (``internal``,
        ``queue_full``, ``rate_limited``): the outbox waits and retries on the same
        connection. None once it took the outbox again."""
        return self._refusal

    async def flush(
        self,
        timeout: float | None = None,
        *,
        on_refusal: Callable[[RequestRefused], None] | None = None,
    ) -> None:
        """Wait until the outbox is empty.

        ``on_refusal`` is called with each refusal for now while it waits (the
        outbox retries it with backoff, or after the server's ``retry_after_ms``).

        Raises:
            ServerUnreachable: the server could not be reached (the outbox keeps the messages).
            RequestRefused: the server refused this device (``auth_failed``), or kept
                refusing the outbox for now until the timeout (the messages stay queued).
        """
        self.start()
        told = self._refusals(on_refusal)
        await self._wait_or_refused(
            lambda: told() and self._conn is not None and self._outbox_idle.is_set(), timeout
        )

    def _refusals(self, on_refusal: Callable[[RequestRefused], None] | None) -> Callable[[], bool]:
        """A condition part that tells ``on_refusal`` of each new refusal (always True)."""
        seen: list[RequestRefused] = []

        def told() -> bool:
            refusal = self._refusal
            if on_refusal is not None and refusal is not None and refusal not in seen:
                seen.append(refusal)
                on_refusal(refusal)
            return True

        return told

    async def _wait_or_refused(self, condition: Callable[[], bool], timeout: float | None) -> None:
        """:meth:`_wait`, raising the server's refusal when the wait timed out because of it."""
        try:
            await self._wait(condition, timeout)
        except ServerUnreachable as exc:
            if self._refusal is None or exc.reason != "timed out":
                raise
            raise self._refusal from None

    async def sync(
        self,
        timeout: float | None = 30.0,
        *,
        on_refusal: Callable[[RequestRefused], None] | None = None,
    ) -> list[Message]:
        """Connect, receive everything that waits, send the outbox; return what arrived.

        An already connected client reconnects: the server's ``drained`` after a
        fresh authentication is the only exact "nothing else waits". Programs that
        stay online read :meth:`messages` instead. When the server refuses the
        outbox for now, ``on_refusal`` hears what it said and sync returns without
        waiting for the retries (:attr:`outbox_refusal`; the messages stay queued).

        Raises:
            ServerUnreachable: the server could not be reached.
        """
        self.start()
        if self._conn is not None and self._drained.is_set():
            self._drained.clear()
            self._resync = True
            await self._conn.close()
        told = self._refusals(on_refusal)
        await self._wait(
            lambda: (
                told()
                and self._conn is not None
                and self._drained.is_set()
                and (self._outbox_idle.is_set() or self._refusal is not None)
            ),
            timeout,
        )
        if self._tasks:  # the files that arrived small enough to fetch at once
            await asyncio.wait(set(self._tasks), timeout=timeout)
        received = []
        while not self._events.empty():
            event = self._events.get_nowait()
            if event is not None and event.kind == "message" and event.message is not None:
                received.append(event.message)
        return received

    async def messages(self) -> AsyncIterator[Message]:
        """Incoming messages (and notices) as they are stored, forever (connects if needed)."""
        async for event in self.events():
            if event.kind == "message" and event.message is not None:
                yield event.message

    async def events(self) -> AsyncIterator[Event]:
        """Everything that happens, as it is stored: messages, updates, typing, requests, gaps."""
        self.start()
        while True:
            event = await self._events.get()
            if event is None:
                assert self._fatal is not None
                raise self._fatal
            yield event

    def history(self, username: str, limit: int | None = None) -> list[Message]:
        """The conversation with ``username`` as stored on this device, oldest first."""
        return self._store.history(username, limit)

    def contacts(self) -> list[Contact]:
        """Everyone this device has talked to."""
        return self._store.contacts()

    async def safety_number(self, username: str) -> str:
        """The 60-digit number both sides compare to verify each other's account key.

        It covers the two account keys, so adding or removing a device does not
        change it. Looks the contact up on the server on first contact.
        """
        check_username(username)
        contact = await self._contact(username)
        return safety_number(self.username, self._account.public, username, contact.current_key)

    async def _contact(self, username: str) -> Contact:
        """The contact, looked up on the server on first contact."""
        contact = self._store.contact(username)
        if contact is None:
            await self._fetch_devices(await self._connected(), username)
            contact = self._store.contact(username)
            if contact is None:
                raise UnknownContact(username)
        return contact

    def trust(self, username: str) -> bool:
        """Accept a contact's changed account key (after checking the safety number).

        Returns False when the key had not changed. The contact is no longer
        verified: verify again to mark the new key verified. Messages held for the
        change are queued again and go to the new key's devices.
        """
        check_username(username)
        contact = self._store.contact(username)
        if contact is None:
            raise UnknownContact(username)
        if not contact.key_changed:
            return False
        with self._store.transaction():
            self._store.trust_changed_key(username)
            self._store.release_held(username)
            self._conversations.notice(
                username,
                f"you accepted {username}'s new account key (not verified): held messages "
                f"to {username} are sent to its devices",
            )
            self._tell_own_devices(username)
        self._views.pop(username, None)
        self._wake_outbox()
        return True

    def _wake_outbox(self) -> None:
        """Let a running outbox look at its entries again (offline: the next connection)."""
        if self._runner is not None:
            self._outbox_idle.clear()
            self._outbox_wakeup.set()

    # --- the connection loop ------------------------------------------------------------

    async def _wait(self, condition: Callable[[], bool], timeout: float | None) -> None:
        """Wait for ``condition``, raising the connection's error if it fails first.

        A failure from before the wait began does not count: the next attempt may work.
        """
        failures = self._failures
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    if self._fatal is not None:
                        raise self._fatal
                    if (
                        self._conn is None
                        and self._last_error is not None
                        and (self._failures > failures)
                    ):
                        raise self._last_error
                    self._state_changed.clear()
                    await self._state_changed.wait()
        except TimeoutError:
            raise self._last_error or ServerUnreachable(self.address.url, "timed out") from None

    def _notify(self) -> None:
        self._state_changed.set()

    def _failed(self, exc: ObrolanError) -> None:
        self._last_error = exc
        self._failures += 1
        self._notify()

    async def _run(self) -> None:
        delay = BACKOFF_START
        while True:
            try:
                conn = await Connection.open(self.address)
            except ServerUnreachable as exc:
                self._failed(exc)
            else:
                try:
                    await self._session(conn)
                except (RequestRefused, DeviceReplaced, DeviceRemoved) as exc:
                    if not isinstance(exc, RequestRefused) or is_fatal(exc.code):
                        # Retrying cannot help: stop, and tell whoever waits.
                        self._fatal = exc
                        self._events.put_nowait(None)
                        self._notify()
                        return
                    self._failed(exc)
                except ServerUnreachable as exc:
                    if not self._resync:
                        self._failed(exc)
                finally:
                    if self._conn is not None:  # authenticated: the server was fine until now
                        delay = BACKOFF_START
                    self._conn = None
                    self._refusal = None
                    self._views.clear()
                    await conn.close()
                    self._notify()
            if self._resync:
                self._resync = False
                continue
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _session(self, conn: Connection) -> None:
        signature = self._identity.sign(
            auth_bytes(conn.challenge.nonce, self.username, self.device_id)
        )
        welcome = await conn.handshake(
            frames.Authenticate(
                version=PROTOCOL_VERSION,
                username=self.username,
                device_id=self.device_id,
                signature=signature,
            )
        )
        log.info("connected to %s as %s/%s", self.address.url, self.username, self.device_id)
        self._drained.clear()
        if self._store.outbox_size():  # held entries, say: this connection looks at them again
            self._outbox_idle.clear()
        self._conn = conn
        self._last_error = None
        self._notify()
        self._store.set_envelope_ttl(conn.challenge.limits.envelope_ttl_seconds)
        await self._notices.tell_expired(conn, welcome.expired)
        await self._replenish_keys(conn, welcome.one_time_keys)
        for event in await self.groups.process_inbox():  # stashed before a crash
            self._events.put_nowait(event)
        outbox = asyncio.create_task(self._outbox_loop(conn), name="obrolan-outbox")
        try:
            while (push := await conn.pushes.get()) is not None:
                if isinstance(push, frames.Deliver):
                    await self._receive(conn, push.envelopes)
                elif isinstance(push, UnreadableEnvelope):
                    await self._notices.refuse_envelope(conn, push)
                else:
                    with self._store.transaction():
                        for event in self._conversations.gaps():
                            self._events.put_nowait(event)
                    self._drained.set()
                    self._notify()
                if outbox.done():
                    outbox.result()  # re-raise what stopped it
        finally:
            outbox.cancel()
            with contextlib.suppress(asyncio.CancelledError, ObrolanError):
                await outbox
        raise conn.closed_reason or ServerUnreachable(self.address.url, "connection lost")

    async def _replenish_keys(self, conn: Connection, on_server: int) -> None:
        """Top up one-time keys; a linked device also publishes its first fallback key."""
        target = self._identity.max_one_time_keys
        needs_fallback = self._store.get_meta("fallback_published") is None
        if on_server >= target // 2 and not needs_fallback:
            return
        keys = (
            self._identity.new_one_time_keys(target - on_server) if on_server < target // 2 else []
        )
        fallback = self._identity.new_fallback_key() if needs_fallback else None
        with self._store.transaction():
            self._store.set_meta("account", self._identity.pickle(self._vault.pickle_key))
        await conn.request(
            lambda i: frames.UploadKeys(id=i, one_time_keys=keys, fallback_key=fallback)
        )
        if needs_fallback:
            with self._store.transaction():
                self._store.set_meta("fallback_published", "1")

    # --- outbox -------------------------------------------------------------------------

    async def _outbox_loop(self, conn: Connection) -> None:
        attempt = 0
        while True:
            self._outbox_wakeup.clear()
            refused = await self._outbox_pass(conn)
            if refused is not None:  # refused for now: the same connection, a bit later
                self._refusal = refused
                self._notify()
                delay = retry_policy.retry_delay(attempt, refused.retry_after_ms, random.random())
                log.warning("the server refused for now (%s); retrying in %.1f s", refused, delay)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self._refusal = None
            if all(self._is_held(e) for e in self._store.outbox()):
                self._outbox_idle.set()  # what is held waits for `trust`, not for the server
                self._notify()
            await self._outbox_wakeup.wait()

    async def _outbox_pass(self, conn: Connection) -> RequestRefused | None:
        """Send what is queued, in order; a refusal for now holds back the rest of that
        recipient's entries (a full queue), or of all of them (``retry_policy``)."""
        refused: RequestRefused | None = None
        waiting: set[str] = set()
        for entry in list(self._store.outbox()):
            if entry.recipient in waiting:
                continue
            try:
                await self._send_entry(conn, entry)
            except RequestRefused as exc:
                if not retry_policy.is_retryable(exc.code):
                    raise
                refused = exc
                if retry_policy.for_everyone(exc.code):
                    break
                waiting.add(entry.recipient)
        return refused

    async def _send_entry(self, conn: Connection, entry: OutboxEntry) -> None:
        envelopes = entry.envelopes
        if entry.payload is not None:
            try:
                envelopes = await self._encrypt(conn, entry)
            except IdentityChanged:
                self._hold(entry)
                return
            except UnknownContact as exc:
                self._fail(entry, str(exc))
                return
            except RequestRefused as exc:  # the server refused a lookup for this entry
                if retry_policy.is_retryable(exc.code):
                    raise
                self._fail(entry, exc.message)
                return
            if not envelopes:
                if entry.recipient == self.username:  # a copy for our other devices: none
                    with self._store.transaction():
                        self._store.dequeue(entry.id)
                    return
                self._fail(entry, f"{entry.recipient} has no device that can receive messages")
                return
            failpoint("outbox.after_encrypt")
        request: Callable[[int], msgspec.Struct]
        if entry.multi is not None:
            multi = decode_json(entry.multi, frames.MultiEnvelope, "queued envelope")
            request = lambda i: frames.SendMulti(id=i, envelope=multi)
        else:
            request = lambda i: frames.Send(
                id=i,
                envelopes=[
                    frames.OutboundEnvelope(envelope_id=e, to_user=u, to_device=d, ciphertext=c)
                    for e, u, d, c in envelopes
                ],
            )
        try:
            sent = await conn.request(request)
        except RequestRefused as exc:
            if retry_policy.is_retryable(exc.code):
                raise  # kept: the outbox sends it again later (the same envelopes)
            self._fail(entry, exc.message)  # waiting cannot help: unknown_user, too large…
            return
        if isinstance(sent, frames.Sent) and (sent.skipped or sent.skipped_recipients):
            # Devices that left their account since we looked: drop them, look again next time.
            self._views.clear()
        failpoint("outbox.after_sent")
        with self._store.transaction():
            if entry.message_rowid is not None:
                self._store.set_state(entry.message_rowid, MessageState.SENT)
            self._store.dequeue(entry.id)

    def _hold(self, entry: OutboxEntry) -> None:
        """Keep an entry to a contact whose changed key was not accepted (not encrypted)."""
        with self._store.transaction():
            if entry.message_rowid is not None:
                self._store.set_state(entry.message_rowid, MessageState.HELD)
            elif entry.payload is not None and isinstance(
                content.decode_content(entry.payload), content.Typing
            ):
                self._store.dequeue(entry.id)  # stale long before the key is accepted
        log.info("held for %s: their account key changed", entry.recipient)

    def _is_held(self, entry: OutboxEntry) -> bool:
        """True for an entry that waits for the user to accept its recipient's new key."""
        if entry.payload is None or entry.recipient == self.username:
            return False  # encrypted before the change, a group's, or for our own devices
        contact = self._store.contact(entry.recipient)
        return contact is not None and contact.blocked_by_change

    def _fail(self, entry: OutboxEntry, reason: str) -> None:
        with self._store.transaction():
            if entry.message_rowid is not None:
                self._store.set_state(entry.message_rowid, MessageState.FAILED, reason)
            self._store.dequeue(entry.id)
        log.warning("not sent to %s: %s", entry.recipient, reason)

    async def _encrypt(
        self, conn: Connection, entry: OutboxEntry
    ) -> list[tuple[str, str, str, bytes]]:
        """Encrypt the entry once per device: the recipient's, and a copy for our other ones."""
        assert entry.payload is not None
        body = content.decode_content(entry.payload)
        targets = await self._targets(conn, entry, body)
        one_time_keys: dict[tuple[str, str], frames.OneTimeKey] = {}
        for username in {u for u, _ in targets}:
            without_session = [
                d
                for u, d in targets
                if u == username and not self._sessions.has_any_with(d.curve25519)
            ]
            if without_session:
                one_time_keys.update(await self._claim(conn, username, without_session))
        # From here to the commit: no await, so no other task touches these sessions.
        envelopes = []
        with self._store.transaction():
            for username, device in targets:
                session = self._sessions.latest_with(device.curve25519)
                if session is None:
                    key = one_time_keys.get((username, device.device_id))
                    if key is None:
                        log.warning("%s/%s has no one-time key left", username, device.device_id)
                        continue
                    try:
                        session = self._identity.outbound_session(device.curve25519, key.key)
                    except CryptoError as exc:  # this device's copy fails, nothing else
                        self._copy_failed(entry, username, device.device_id, str(exc))
                        continue
                own_copy = username == self.username and entry.recipient != self.username
                plaintext = content.Plaintext(
                    sender=self.username,
                    sender_device=self.device_id,
                    recipient=username,
                    recipient_device=device.device_id,
                    content=body,
                    counter=entry.counter,
                    sent_to=entry.recipient if own_copy else None,
                )
                sealed = session.encrypt(content.encode(plaintext), self._identity.curve25519)
                self._sessions.save(device.curve25519, session)
                envelopes.append((new_id(), username, device.device_id, content.encode(sealed)))
            self._store.save_envelopes(entry.id, envelopes)
        return envelopes

    def _copy_failed(self, entry: OutboxEntry, username: str, device_id: str, why: str) -> None:
        """Tell the user (once per device and reason) that one device gets no copy."""
        log.warning("no copy for %s/%s: %s", username, device_id, why)
        if (username, device_id, why) in self._failed_copies:
            return
        self._failed_copies.add((username, device_id, why))
        whose = "your" if username == self.username else f"{username}'s"
        text = (
            f"⚠ a message could not be encrypted for {whose} device {device_id}: {why}. "
            f"That device gets nothing until it publishes keys that work; the other "
            f"devices are not affected"
        )
        if entry.recipient != self.username:  # not for our own devices' bookkeeping
            notice = self._conversations.notice(entry.recipient, text)
            self._events.put_nowait(Event("message", entry.recipient, notice))

    async def _targets(
        self, conn: Connection, entry: OutboxEntry, body: content.Content
    ) -> list[tuple[str, frames.DeviceKeys]]:
        """(username, device) pairs the entry goes to, from verified device lists only."""
        view = await self._fetch_devices(conn, entry.recipient)
        if view.blocked is not None:
            raise IdentityChanged(entry.recipient)
        targets = [
            (entry.recipient, d)
            for d in view.devices
            if entry.to_device in (None, d.device_id)
            and (entry.recipient, d.device_id) != (self.username, self.device_id)
        ]
        if not targets:
            return []  # nobody to deliver to: no copies for our own devices either
        if (
            entry.recipient != self.username
            and entry.to_device is None
            and isinstance(body, _COPIED_TO_OWN_DEVICES)
        ):
            own = (await self._fetch_devices(conn, self.username)).devices
            targets += [(self.username, d) for d in own if d.device_id != self.device_id]
        return targets

    async def _claim(
        self, conn: Connection, username: str, devices: list[frames.DeviceKeys]
    ) -> dict[tuple[str, str], frames.OneTimeKey]:
        """Claim a one-time key of each device; keep only keys its own Ed25519 key signed."""
        try:
            claimed = await conn.request(
                lambda i: frames.ClaimKeys(
                    id=i, username=username, device_ids=[d.device_id for d in devices]
                )
            )
        except RequestRefused as exc:
            if exc.code not in (ErrorCode.UNKNOWN_DEVICE, ErrorCode.UNKNOWN_USER):
                raise
            log.warning("%s: the server has no keys for the signed devices (%s)", username, exc)
            return {}
        assert isinstance(claimed, frames.ClaimedKeys)
        known = {d.device_id: d for d in devices}
        keys = {}
        for item in claimed.devices:
            device = known.get(item.device.device_id)
            if (
                device is None
                or (device.ed25519, device.curve25519)
                != (item.device.ed25519, item.device.curve25519)
                or item.one_time_key is None
            ):
                continue  # a device we did not verify, or one with no key: skip it
            try:
                verify_one_time_key(device.ed25519, item.one_time_key)
            except SignatureError:
                log.warning(
                    "%s/%s: one-time key signature does not verify", username, device.device_id
                )
                continue
            keys[(username, device.device_id)] = item.one_time_key
        return keys

    async def _fetch_devices(
        self, conn: Connection, username: str, *, fresh: bool = False
    ) -> DeviceView:
        """The user's devices from their signed list (once per connection unless ``fresh``).

        Pins the account key on first contact; warns in the conversation when it changed.
        """
        age = time.monotonic() - self._viewed_at.get(username, -VIEW_TTL)
        if not fresh and username in self._views and age < VIEW_TTL:
            return self._views[username]
        try:
            answer = await conn.request(lambda i: frames.GetDevices(id=i, username=username))
        except RequestRefused as exc:
            if exc.code == ErrorCode.UNKNOWN_USER:
                raise UnknownContact(username) from None
            raise
        assert isinstance(answer, frames.Devices)
        with self._store.transaction():
            view = self._directory.accept(username, answer.device_list, answer.successions)
            if username != self.username:
                for text in view.notices:
                    event = Event("message", username, self._conversations.notice(username, text))
                    self._events.put_nowait(event)
        self._views[username] = view
        self._viewed_at[username] = time.monotonic()
        self._last_active = answer.last_active if username == self.username else self._last_active
        return view

    # --- inbox --------------------------------------------------------------------------

    async def _receive(self, conn: Connection, envelopes: list[frames.Envelope]) -> None:
        acked = []
        for envelope in envelopes:
            if not self._store.is_processed(envelope.envelope_id):
                try:
                    events = await self._open_envelope(conn, envelope)
                except RemoteProtocolError as exc:  # one bad envelope never stops the inbox
                    events = self._notices.undecryptable(envelope, str(exc))
                events += await self.groups.process_inbox()
                self._after_changes(events)
                for event in events:
                    self._events.put_nowait(event)
            acked.append(envelope.envelope_id)
        failpoint("inbox.before_ack")
        limit = conn.challenge.limits.max_acks_per_frame
        for start in range(0, len(acked), limit):
            await conn.send(frames.Ack(envelope_ids=acked[start : start + limit]))

    async def _open_envelope(self, conn: Connection, envelope: frames.Envelope) -> list[Event]:
        try:
            sealed = content.decode_olm_ciphertext(envelope.ciphertext)
        except RemoteProtocolError:
            return self._open_group_envelope(envelope)
        sender = self._store.device_by_curve(sealed.sender_key)
        claimed = (envelope.from_user, envelope.from_device)
        if sender is None or sender[:2] != claimed:
            # Unknown key, or moved to another device: look at that user's list again.
            with contextlib.suppress(UnknownContact):
                await self._fetch_devices(conn, envelope.from_user, fresh=True)
            sender = self._store.device_by_curve(sealed.sender_key)
        if sender is not None and sender[:2] != claimed:
            return self._notices.undecryptable(
                envelope, "the sender's key does not match its device"
            )
        # From here to the commit: no await, so no other task touches these sessions.
        try:
            session, plaintext, new_session = self._sessions.open(sealed)
        except CryptoError as exc:
            return self._notices.undecryptable(envelope, f"it could not be decrypted ({exc})")
        try:
            body = content.decode_plaintext(plaintext)
        except RemoteProtocolError as exc:
            # Decrypted, so the session moved on: keep it, refuse only this message.
            with self._store.transaction():
                self._sessions.save(sealed.sender_key, session, new_inbound=new_session)
            return self._notices.undecryptable(envelope, str(exc))
        if (body.sender, body.sender_device, body.recipient, body.recipient_device) != (
            envelope.from_user,
            envelope.from_device,
            self.username,
            self.device_id,
        ):
            return self._notices.undecryptable(envelope, "it was addressed to someone else")
        failpoint("inbox.after_decrypt")
        with self._store.transaction():
            events = self._apply(body, verified=sender is not None)
            self._sessions.save(sealed.sender_key, session, new_inbound=new_session)
            self._store.mark_processed(envelope.envelope_id)
        failpoint("inbox.after_store")
        return events

    def _open_group_envelope(self, envelope: frames.Envelope) -> list[Event]:
        """A Megolm message of a group (one ciphertext for every member device)."""
        try:
            sealed = groups_wire.decode_group_ciphertext(envelope.ciphertext)
        except RemoteProtocolError:
            return self._notices.undecryptable(envelope, "the envelope is malformed")
        with self._store.transaction():
            events = self.groups.receive_message(envelope, sealed)
            self._store.mark_processed(envelope.envelope_id)
        return events

    def _apply(self, body: content.Plaintext, *, verified: bool) -> list[Event]:
        """What a decrypted event does, by who sent it (inside the inbox transaction)."""
        own = body.sender == self.username
        kind = body.content
        if not verified:
            # A device its account key did not sign: never trusted as ours, shown as unverified.
            if own or body.sent_to is not None or not isinstance(kind, content.Text):
                log.warning(
                    "ignored an event from %s/%s, a device not in %s's signed list",
                    body.sender,
                    body.sender_device,
                    body.sender,
                )
                return []
            unverified = (
                f"sent from a device that {body.sender}'s account key has not signed: "
                f"it may not be {body.sender}"
            )
            return self._conversations.receive(body, unverified)
        if isinstance(kind, content.VERIFICATION):
            return self._verification_event(body)
        if isinstance(kind, content.GROUP_CONTROL):
            self.groups.stash(body)  # applied after this transaction: it may need lookups
            return []
        if own:
            if isinstance(kind, content.HistoryTransfer):
                self._store.set_meta(INCOMING_HISTORY, content.encode(kind).decode())
                self._notify()
                return [Event("history", self.username)]
            if isinstance(kind, content.ContactUpdate):
                return self._adopt(body.sender_device, kind.contact)
            if body.sent_to is None:
                return []
            return self._conversations.receive(body, None)
        if body.sent_to is not None or isinstance(kind, content.OWN_DEVICES_ONLY):
            return []  # only our own devices send transcripts, history and contact updates
        contact = self._store.contact(body.sender)
        warning: str | None = None
        if contact is not None and contact.key_changed:
            warning = f"{body.sender}'s account key has changed"
        events = self._conversations.receive(body, warning)
        delivered = [
            e.message.message_id
            for e in events
            if e.kind == "message"
            and e.message is not None
            and e.message.state is MessageState.RECEIVED
        ]
        if delivered and self.receipts:
            self._queue(
                body.sender,
                content.Receipt(
                    message_id=new_id(), sent_at_ms=now_ms(), targets=delivered, status="delivered"
                ),
            )
        elif delivered and not self._store.told_receipts_off(body.sender):
            # Once per peer: without it, the peer's device would call its messages
            # "not delivered" after the server's TTL (§15.11). It covers no message.
            self._queue(
                body.sender,
                content.Receipt(message_id=new_id(), sent_at_ms=now_ms(), targets=[], status="off"),
            )
            self._store.told_receipts_off(body.sender, True)
        return events


class _Opened:
    """``async with Client.open(...)``: load, optionally connect, always close."""

    def __init__(
        self, cls: type[Client], profile_dir: Path, passphrase: str | None, online: bool
    ) -> None:
        self._args = (cls, profile_dir, passphrase, online)
        self._client: Client | None = None

    async def __aenter__(self) -> Client:
        cls, profile_dir, passphrase, online = self._args
        self._client = await cls.load(profile_dir, passphrase)
        if online:
            self._client.start()
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()


def _required(value: str | None) -> str:
    if value is None:
        raise InvalidState("the profile is incomplete: register again")
    return value
