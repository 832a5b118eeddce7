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
import contextlib
import logging
import os
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

import msgspec

from obrolan.client.attachments import (
    BlobClient,
    FileUploadJournal,
    Progress,
    decrypt_attachment,
)
from obrolan.client.connection import Connection, ServerAddress, is_fatal
from obrolan.client.conversation import Conversations
from obrolan.client.ids import check_username, new_id
from obrolan.client.models import Contact, Event, Message, MessageState, Whoami
from obrolan.client.store import OutboxEntry, Store, now_ms
from obrolan.client.vault import Vault, create_vault, open_vault
from obrolan.crypto.device import DeviceIdentity
from obrolan.crypto.olm import OlmSession
from obrolan.crypto.safety import safety_number
from obrolan.crypto.signatures import verify_device_keys, verify_one_time_key
from obrolan.errors import (
    ConfigError,
    CryptoError,
    DecryptionError,
    DeviceReplaced,
    InvalidState,
    ObrolanError,
    ProfileError,
    RequestRefused,
    ServerUnreachable,
    SignatureError,
    UnknownContact,
)
from obrolan.failpoints import failpoint
from obrolan.protocol import content, frames
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.limits import PROTOCOL_VERSION
from obrolan.protocol.signing import auth_bytes

__all__ = ["Client"]

log = logging.getLogger("obrolan.client")

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
AUTO_DOWNLOAD_BYTES = 5 * 1024 * 1024
"""Default: files up to 5 MiB are fetched as soon as their message arrives."""
_PROFILE_FILES = ("profile.json", "key", "store.db", "store.db-wal", "store.db-shm")


class Client:
    """One device of one account: its local store, identity and server connection."""

    def __init__(self, profile_dir: Path, vault: Vault, store: Store, identity: DeviceIdentity) -> None:
        self.profile_dir = profile_dir
        self._vault = vault
        self._store = store
        self._identity = identity
        self.username = _required(store.get_meta("username"))
        self.device_id = _required(store.get_meta("device_id"))
        self.address = ServerAddress.parse(
            _required(store.get_meta("server_url")),
            insecure=store.get_meta("insecure") == "1",
            ca_file=store.get_meta("ca_file") or None,
        )
        self._conn: Connection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._expirer: asyncio.Task[None] | None = None
        self._conversations = Conversations(store, self.username, profile_dir / "attachments")
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        """What happened, after it was stored; None wakes a reader after a fatal error."""
        self._outbox_wakeup = asyncio.Event()
        self._outbox_idle = asyncio.Event()
        self._drained = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._last_error: ObrolanError | None = None
        self._fatal: ObrolanError | None = None
        self._resync = False
        """The current connection was closed on purpose: reconnect at once."""
        self._tasks: set[asyncio.Task[None]] = set()
        """Background attachment work (downloads, releases)."""
        self._known_devices: set[str] = set()
        """Users whose device list was fetched on the current connection."""

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
    ) -> Client:
        """Create a new account on the server and a profile for its first device.

        ``passphrase`` None stores a random key in a 0600 file (for bots).

        Raises:
            ConfigError: bad username or server URL.
            ProfileError: a profile already exists at ``profile_dir``.
            ServerUnreachable: the server cannot be reached; nothing was created.
            RequestRefused: the server refused (``username_taken``); nothing was kept.
        """
        check_username(username)
        address = ServerAddress.parse(server_url, insecure=insecure, ca_file=ca_file)
        if (profile_dir / "profile.json").exists():
            raise ProfileError(f"a profile already exists at {profile_dir}")
        conn = await Connection.open(address)
        created = False
        try:
            vault = await asyncio.to_thread(create_vault, profile_dir, passphrase)
            created = True
            store = Store(vault)
            identity = DeviceIdentity.create()
            device_id = new_id()[:12]
            one_time_keys = identity.new_one_time_keys(identity.max_one_time_keys)
            fallback = identity.new_fallback_key()
            with store.transaction():
                store.set_meta("server_url", address.url)
                store.set_meta("insecure", "1" if insecure else "0")
                store.set_meta("ca_file", ca_file or "")
                store.set_meta("username", username)
                store.set_meta("device_id", device_id)
                store.set_meta("account", identity.pickle(vault.pickle_key))
            signature = identity.sign(auth_bytes(conn.challenge.nonce, username, device_id))
            await conn.handshake(
                frames.Register(
                    version=PROTOCOL_VERSION,
                    username=username,
                    device=identity.device_keys(username, device_id),
                    one_time_keys=one_time_keys,
                    fallback_key=fallback,
                    signature=signature,
                )
            )
        except BaseException:
            if created:
                vault.close()
                _remove_profile(profile_dir)
            raise
        finally:
            await conn.close()
        return cls(profile_dir, vault, store, identity)

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
        )

    async def send(self, username: str, text: str, *, reply_to: str | None = None) -> Message:
        """Queue a text message for ``username``; it is in the durable outbox on return.

        The background connection (started if needed) sends it as soon as it can;
        :meth:`flush` waits for that. ``reply_to`` quotes a message of the conversation.
        """
        check_username(username)
        if username == self.username:
            raise ConfigError("you cannot send a message to yourself on a single device")
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
        check_username(username)
        if username == self.username:
            raise ConfigError("you cannot send a file to yourself on a single device")
        devices = await self._fetch_devices(await self._connected(), username)
        if not devices:
            raise ConfigError(f"{username} has no device that can receive files")
        async with self._blobs() as blobs:
            attachment = await blobs.upload_file(
                path,
                [(username, d.device_id) for d in devices],
                FileUploadJournal(self.profile_dir / "uploads"),
                progress,
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
            raise ConfigError(f"{message_ref!r} matches {len(matches)} messages: give more of its id")
        return matches[0][1]

    async def react(self, message: Message, emoji: str) -> None:
        """React to a message with one emoji (replacing ours), or "" to withdraw it."""
        rowid = self._row_of(message)
        with self._store.transaction():
            self._conversations.react(rowid, emoji)
            self._queue(message.peer, content.Reaction(
                message_id=new_id(), sent_at_ms=now_ms(), target=message.message_id, emoji=emoji
            ))

    async def edit(self, message: Message, text: str) -> None:
        """Replace the text of one of our messages; the peer sees it as edited."""
        rowid = self._row_of(message)
        at = now_ms()
        with self._store.transaction():
            self._conversations.edit(rowid, message, text, at)
            self._queue(message.peer, content.Edit(
                message_id=new_id(), sent_at_ms=at, target=message.message_id, text=text
            ))

    async def delete(self, message: Message) -> None:
        """Delete one of our messages for everyone (within 48 hours of sending it)."""
        rowid = self._row_of(message)
        at = now_ms()
        with self._store.transaction():
            self._conversations.delete(rowid, message, at)
            self._queue(message.peer, content.Delete(
                message_id=new_id(), sent_at_ms=at, target=message.message_id
            ))
        self._conversations.released.clear()  # our own upload: the recipients release it

    async def set_timer(self, username: str, seconds: int | None) -> None:
        """Turn disappearing messages on (``seconds``) or off (None) for a conversation."""
        check_username(username)
        message_id = new_id()
        with self._store.transaction():
            self._conversations.set_timer(username, seconds, message_id)
            self._queue(username, content.Timer(message_id=message_id, sent_at_ms=now_ms(),
                                                seconds=seconds))

    async def typing(self, username: str, active: bool) -> bool:
        """Tell ``username`` we started or stopped typing; False when offline (not sent)."""
        if self._conn is None:
            return False
        with self._store.transaction():
            self._queue(username, content.Typing(message_id=new_id(), sent_at_ms=now_ms(),
                                                 active=active))
        return True

    async def mark_read(self, username: str) -> int:
        """Report the peer's messages as read (if receipts are on); returns how many."""
        unread = self._store.unread_from(username)
        if not unread:
            return 0
        with self._store.transaction():
            self._store.mark_read(username, unread)
            if self.receipts:
                self._queue(username, content.Receipt(
                    message_id=new_id(), sent_at_ms=now_ms(), targets=unread, status="read"
                ))
        return len(unread)

    @property
    def receipts(self) -> bool:
        """Whether this device sends delivery and read receipts (default on)."""
        return self._store.get_meta("receipts") != "off"

    def set_receipts(self, enabled: bool) -> None:
        with self._store.transaction():
            self._store.set_meta("receipts", "on" if enabled else "off")

    def requests(self) -> list[str]:
        """People whose first messages wait for this user to accept them."""
        return [c.peer for c in self._store.conversations() if not c.accepted and not c.blocked]

    def accept(self, username: str) -> None:
        """Accept a message request: the conversation becomes a normal one."""
        with self._store.transaction():
            self._store.open_conversation(username, accepted=True)
            self._store.set_conversation(username, accepted=True, blocked=False)

    def block(self, username: str, blocked: bool = True) -> None:
        """Drop everything ``username`` sends from now on, silently (or stop doing so)."""
        check_username(username)
        with self._store.transaction():
            self._store.open_conversation(username, accepted=not blocked)
            self._store.set_conversation(username, blocked=blocked)

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

    def _queue(self, peer: str, body: content.Content, *, message_rowid: int | None = None) -> None:
        """Put an event in the outbox (inside the caller's transaction) and wake the sender."""
        counter = None if isinstance(body, content.EPHEMERAL) else self._store.next_counter(peer)
        self._store.enqueue(peer, content.encode(body), message_rowid=message_rowid, counter=counter)
        self._outbox_idle.clear()
        self._outbox_wakeup.set()
        self.start()

    def message(self, message_id: str, sender: str | None = None) -> Message | None:
        """A stored message by id (the latest state)."""
        for candidate in self._store.messages_by_id(message_id):
            if sender is None or candidate.sender == sender:
                return candidate
        return None

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the outbox is empty.

        Raises:
            ServerUnreachable: the server could not be reached (the outbox keeps the messages).
            RequestRefused: the server refused this device (``auth_failed``).
        """
        self.start()
        await self._wait(lambda: self._conn is not None and self._outbox_idle.is_set(), timeout)

    async def sync(self, timeout: float | None = 30.0) -> list[Message]:
        """Connect, receive everything that waits, send the outbox; return what arrived.

        An already connected client reconnects: the server's ``drained`` after a
        fresh authentication is the only exact "nothing else waits". Programs that
        stay online read :meth:`messages` instead.

        Raises:
            ServerUnreachable: the server could not be reached.
        """
        self.start()
        if self._conn is not None and self._drained.is_set():
            self._drained.clear()
            self._resync = True
            await self._conn.close()
        await self._wait(
            lambda: self._conn is not None and self._drained.is_set() and self._outbox_idle.is_set(),
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
        """The 60-digit number both sides compare to verify each other's identity key.

        Looks the contact up on the server on first contact.
        """
        check_username(username)
        contact = self._store.contact(username)
        if contact is None:
            self.start()
            await self._wait(lambda: self._conn is not None, 30.0)
            assert self._conn is not None
            await self._fetch_devices(self._conn, username)
            contact = self._store.contact(username)
            if contact is None:
                raise UnknownContact(username)
        return safety_number(self.username, self._identity.ed25519, username, contact.current_key)

    # --- the connection loop ------------------------------------------------------------

    async def _wait(self, condition: Callable[[], bool], timeout: float | None) -> None:
        """Wait for ``condition``, raising the connection's error if it fails first."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    if self._fatal is not None:
                        raise self._fatal
                    if self._conn is None and self._last_error is not None:
                        raise self._last_error
                    self._state_changed.clear()
                    await self._state_changed.wait()
        except TimeoutError:
            raise self._last_error or ServerUnreachable(self.address.url, "timed out") from None

    def _notify(self) -> None:
        self._state_changed.set()

    async def _run(self) -> None:
        delay = BACKOFF_START
        while True:
            try:
                conn = await Connection.open(self.address)
            except ServerUnreachable as exc:
                self._last_error = exc
                self._notify()
            else:
                try:
                    await self._session(conn)
                except (RequestRefused, DeviceReplaced) as exc:
                    if isinstance(exc, DeviceReplaced) or is_fatal(exc.code):
                        # Retrying cannot help: stop, and tell whoever waits.
                        self._fatal = exc
                        self._events.put_nowait(None)
                        self._notify()
                        return
                    self._last_error = exc
                except ServerUnreachable as exc:
                    if not self._resync:
                        self._last_error = exc
                finally:
                    if self._conn is not None:  # authenticated: the server was fine until now
                        delay = BACKOFF_START
                    self._conn = None
                    self._known_devices.clear()
                    await conn.close()
                    self._notify()
            if self._resync:
                self._resync = False
                continue
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _session(self, conn: Connection) -> None:
        signature = self._identity.sign(auth_bytes(conn.challenge.nonce, self.username, self.device_id))
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
        self._conn = conn
        self._last_error = None
        self._notify()
        await self._replenish_keys(conn, welcome.one_time_keys)
        outbox = asyncio.create_task(self._outbox_loop(conn), name="obrolan-outbox")
        try:
            while (push := await conn.pushes.get()) is not None:
                if isinstance(push, frames.Deliver):
                    await self._receive(conn, push.envelopes)
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
        target = self._identity.max_one_time_keys
        if on_server >= target // 2:
            return
        keys = self._identity.new_one_time_keys(target - on_server)
        with self._store.transaction():
            self._store.set_meta("account", self._identity.pickle(self._vault.pickle_key))
        await conn.request(lambda i: frames.UploadKeys(id=i, one_time_keys=keys))

    # --- outbox -------------------------------------------------------------------------

    async def _outbox_loop(self, conn: Connection) -> None:
        while True:
            self._outbox_wakeup.clear()
            for entry in list(self._store.outbox()):
                await self._send_entry(conn, entry)
            if self._store.outbox_size() == 0:
                self._outbox_idle.set()
                self._notify()
            await self._outbox_wakeup.wait()

    async def _send_entry(self, conn: Connection, entry: OutboxEntry) -> None:
        envelopes = entry.envelopes
        if entry.payload is not None:
            try:
                envelopes = await self._encrypt(conn, entry)
            except UnknownContact as exc:
                self._fail(entry, str(exc))
                return
            if not envelopes:
                self._fail(entry, f"{entry.recipient} has no device that can receive messages")
                return
            failpoint("outbox.after_encrypt")
        try:
            await conn.request(
                lambda i: frames.Send(
                    id=i,
                    envelopes=[
                        frames.OutboundEnvelope(envelope_id=e, to_user=u, to_device=d, ciphertext=c)
                        for e, u, d, c in envelopes
                    ],
                )
            )
        except RequestRefused as exc:
            if exc.code in (
                ErrorCode.UNKNOWN_USER, ErrorCode.UNKNOWN_DEVICE, ErrorCode.ENVELOPE_TOO_LARGE
            ):
                self._fail(entry, exc.message)
                return
            raise
        failpoint("outbox.after_sent")
        with self._store.transaction():
            if entry.message_rowid is not None:
                self._store.set_state(entry.message_rowid, MessageState.SENT)
            self._store.dequeue(entry.id)

    def _fail(self, entry: OutboxEntry, reason: str) -> None:
        with self._store.transaction():
            if entry.message_rowid is not None:
                self._store.set_state(entry.message_rowid, MessageState.FAILED, reason)
            self._store.dequeue(entry.id)
        log.warning("not sent to %s: %s", entry.recipient, reason)

    async def _encrypt(self, conn: Connection, entry: OutboxEntry) -> list[tuple[str, str, str, bytes]]:
        recipient = entry.recipient
        assert entry.payload is not None
        devices = await self._fetch_devices(conn, recipient)
        without_session = [d for d in devices if not self._store.sessions_for(d.curve25519)]
        one_time_keys: dict[str, frames.OneTimeKey] = {}
        if without_session:
            claimed = await conn.request(
                lambda i: frames.ClaimKeys(
                    id=i, username=recipient, device_ids=[d.device_id for d in without_session]
                )
            )
            assert isinstance(claimed, frames.ClaimedKeys)
            one_time_keys = self._verified_claims(recipient, devices, claimed.devices)
        body = content.decode_content(entry.payload)
        # From here to the commit: no await, so no other task touches these sessions.
        envelopes = []
        with self._store.transaction():
            for device in devices:
                session = self._session_with(device.curve25519)
                if session is None:
                    key = one_time_keys.get(device.device_id)
                    if key is None:
                        log.warning("%s/%s has no one-time key left", recipient, device.device_id)
                        continue
                    session = self._identity.outbound_session(device.curve25519, key.key)
                plaintext = content.Plaintext(
                    sender=self.username,
                    sender_device=self.device_id,
                    recipient=recipient,
                    recipient_device=device.device_id,
                    content=body,
                    counter=entry.counter,
                )
                sealed = session.encrypt(content.encode(plaintext), self._identity.curve25519)
                self._store.save_session(
                    device.curve25519, session.session_id, session.pickle(self._vault.pickle_key)
                )
                envelopes.append((new_id(), recipient, device.device_id, content.encode(sealed)))
            self._store.save_envelopes(entry.id, envelopes)
        return envelopes

    def _verified_claims(
        self,
        username: str,
        devices: list[frames.DeviceKeys],
        claimed: Iterable[frames.ClaimedDevice],
    ) -> dict[str, frames.OneTimeKey]:
        known = {d.device_id: d for d in devices}
        keys = {}
        for item in claimed:
            device = known.get(item.device.device_id)
            if device is None or device != item.device or item.one_time_key is None:
                continue  # a device we did not verify, or one with no key: skip it
            try:
                verify_one_time_key(device.ed25519, item.one_time_key)
            except SignatureError:
                log.warning("%s/%s: one-time key signature does not verify", username, device.device_id)
                continue
            keys[device.device_id] = item.one_time_key
        return keys

    def _session_with(self, curve25519: str) -> OlmSession | None:
        for _, pickle in self._store.sessions_for(curve25519)[:1]:
            return OlmSession.from_pickle(pickle, self._vault.pickle_key)
        return None

    async def _fetch_devices(self, conn: Connection, username: str) -> list[frames.DeviceKeys]:
        """The user's devices whose self-signatures verify; pins the identity on first contact."""
        try:
            answer = await conn.request(lambda i: frames.GetDevices(id=i, username=username))
        except RequestRefused as exc:
            if exc.code == ErrorCode.UNKNOWN_USER:
                raise UnknownContact(username) from None
            raise
        assert isinstance(answer, frames.Devices)
        devices = []
        for device in answer.devices:
            try:
                verify_device_keys(username, device)
            except SignatureError:
                log.warning("%s/%s: device keys do not verify; ignored", username, device.device_id)
                continue
            devices.append(device)
        with self._store.transaction():
            self._store.save_devices(username, [(d.device_id, d.ed25519, d.curve25519) for d in devices])
            if devices:
                self._check_identity(username, devices)
        self._known_devices.add(username)
        return devices

    def _check_identity(self, username: str, devices: list[frames.DeviceKeys]) -> None:
        contact = self._store.contact(username)
        if contact is None:
            self._store.pin_contact(username, devices[0].ed25519)
        elif (
            all(d.ed25519 != contact.identity_key for d in devices)
            and contact.changed_key != devices[0].ed25519
        ):
            log.warning("%s's identity key has changed", username)
            self._store.mark_key_changed(username, devices[0].ed25519)

    # --- inbox --------------------------------------------------------------------------

    async def _receive(self, conn: Connection, envelopes: list[frames.Envelope]) -> None:
        acked = []
        for envelope in envelopes:
            if not self._store.is_processed(envelope.envelope_id):
                events = await self._open_envelope(conn, envelope)
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
        except msgspec.DecodeError:
            return self._store_undecryptable(envelope, "the envelope is malformed")
        sender = self._store.device_by_curve(sealed.sender_key)
        claimed = (envelope.from_user, envelope.from_device)
        if (sender is None or sender[:2] != claimed) and envelope.from_user not in self._known_devices:
            # Unknown key, or moved to another device: refresh that user's devices once.
            with contextlib.suppress(UnknownContact):
                await self._fetch_devices(conn, envelope.from_user)
            sender = self._store.device_by_curve(sealed.sender_key)
        if sender is None or sender[:2] != claimed:
            return self._store_undecryptable(envelope, "the sender's key does not match its device")
        # From here to the commit: no await, so no other task touches these sessions.
        try:
            session, plaintext, new_session = self._decrypt(sealed)
            body = content.decode_plaintext(plaintext)
        except (CryptoError, msgspec.DecodeError) as exc:
            return self._store_undecryptable(envelope, f"it could not be decrypted ({exc})")
        if (body.sender, body.sender_device, body.recipient, body.recipient_device) != (
            envelope.from_user,
            envelope.from_device,
            self.username,
            self.device_id,
        ):
            return self._store_undecryptable(envelope, "it was addressed to someone else")
        failpoint("inbox.after_decrypt")
        contact = self._store.contact(body.sender)
        warning = None
        if contact is not None and contact.key_changed:
            warning = f"{body.sender}'s identity key has changed"
        with self._store.transaction():
            events = self._conversations.receive(body, warning)
            delivered = [
                e.message.message_id
                for e in events
                if e.kind == "message" and e.message is not None
                and e.message.state is MessageState.RECEIVED
            ]
            if delivered and self.receipts:
                self._queue(body.sender, content.Receipt(
                    message_id=new_id(), sent_at_ms=now_ms(), targets=delivered, status="delivered"
                ))
            self._store.save_session(
                sealed.sender_key, session.session_id, session.pickle(self._vault.pickle_key)
            )
            if new_session:
                self._store.set_meta("account", self._identity.pickle(self._vault.pickle_key))
            self._store.mark_processed(envelope.envelope_id)
        failpoint("inbox.after_store")
        return events

    def _decrypt(self, sealed: content.OlmCiphertext) -> tuple[OlmSession, bytes, bool]:
        pre_key = sealed.message_type == content.OLM_PRE_KEY
        for _, pickle in self._store.sessions_for(sealed.sender_key):
            session = OlmSession.from_pickle(pickle, self._vault.pickle_key)
            if pre_key:
                if session.matches(sealed):
                    # Its session exists: a failure is a replay, never a reason for a new session.
                    return session, session.decrypt(sealed), False
                continue
            with contextlib.suppress(DecryptionError):
                return session, session.decrypt(sealed), False
        if not pre_key:
            raise DecryptionError("no session decrypts this message")
        session, plaintext = self._identity.inbound_session(sealed.sender_key, sealed)
        return session, plaintext, True

    def _store_undecryptable(self, envelope: frames.Envelope, reason: str) -> list[Event]:
        log.warning("dropped a message from %s: %s", envelope.from_user, reason)
        with self._store.transaction():
            rowid = self._store.add_message(
                message_id=envelope.envelope_id,
                peer=envelope.from_user,
                sender=envelope.from_user,
                sender_device=envelope.from_device,
                outgoing=False,
                text=f"a message from {envelope.from_user} could not be read: {reason}",
                sent_at_ms=now_ms(),
                state=MessageState.NOTICE,
            )
            self._store.mark_processed(envelope.envelope_id)
        if rowid is None:
            return []
        return [Event("message", envelope.from_user, self._store.message(rowid))]


class _Opened:
    """``async with Client.open(...)``: load, optionally connect, always close."""

    def __init__(self, cls: type[Client], profile_dir: Path, passphrase: str | None, online: bool) -> None:
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


def _remove_profile(profile_dir: Path) -> None:
    """Delete only the files a failed registration created, then the folder if empty."""
    for name in _PROFILE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(profile_dir / name)
    with contextlib.suppress(OSError):
        profile_dir.rmdir()
