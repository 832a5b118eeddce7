"""How a device gets its profile: register an account, link to one, or recover one.

Each way creates the same thing: a local profile (the encrypted store, the
device's Olm account, the account key and data key) and a device the server
knows. A failure before the server said yes leaves no profile behind.

* **register** — a new account: a fresh account key signs a device list that
  holds only this device, and a recovery code is shown once.
* **link** — a new device of an existing account: it leaves an offer sealed
  with a link code's secret, an existing device approves it and answers with
  the account secrets inside an Olm pre-key message (the server relays only
  ciphertext; docs/protocol.md, linking).
* **recover** — every device is lost: the recovery code hands the username to
  a new account key; contacts see a changed key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obrolan.client import contact_sync
from obrolan.client.connection import Connection, ServerAddress
from obrolan.client.conversation import JOINED_LATE
from obrolan.client.ids import check_username, new_id
from obrolan.client.store import Store
from obrolan.client.vault import Vault, create_vault
from obrolan.crypto.account import (
    AccountKey,
    LinkCode,
    RecoveryCode,
    device_entry,
    open_device_list,
    seal_name,
)
from obrolan.crypto.device import DeviceIdentity
from obrolan.errors import (
    ConfigError,
    CryptoError,
    ProfileError,
    RemoteProtocolError,
    SignatureError,
)
from obrolan.protocol import content, frames
from obrolan.protocol.limits import PROTOCOL_VERSION
from obrolan.protocol.signing import auth_bytes

__all__ = [
    "Enrolled",
    "Server",
    "check_device_name",
    "default_device_name",
    "enrol_by_link",
    "enrol_by_recovery",
    "enrol_by_registration",
    "link_address",
]

_PROFILE_FILES = ("profile.json", "key", "store.db", "store.db-wal", "store.db-shm")
LINK_WAIT_SECONDS = 600.0
"""How long a new device waits for approval (the server's default link lifetime)."""


@dataclass(frozen=True, slots=True)
class Server:
    """The server a new profile will use, and how to reach it."""

    url: str
    insecure: bool = False
    ca_file: str | None = None

    @property
    def address(self) -> ServerAddress:
        """The parsed address (raises ConfigError for a bad or unsafe URL)."""
        return ServerAddress.parse(self.url, insecure=self.insecure, ca_file=self.ca_file)


@dataclass(slots=True)
class Enrolled:
    """A new device's open profile, ready for :class:`~obrolan.client.client.Client`."""

    vault: Vault
    store: Store
    identity: DeviceIdentity
    recovery_code: RecoveryCode | None = None
    """Shown once, after registration or recovery."""
    history_follows: bool = False
    """Linked with ``--with-history``: the approving device sends its history next."""


def default_device_name() -> str:
    """This computer's host name (sealed in the device list: only our devices read it)."""
    return (socket.gethostname() or "device")[:64]


def link_address(server_url: str, code: LinkCode) -> str:
    """What the QR code carries: the server and the link code."""
    from urllib.parse import quote

    return f"obrolan://link?server={quote(server_url, safe='')}&code={code.link_id}{code.secret}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _create_profile(
    profile_dir: Path,
    passphrase: str | None,
    server: Server,
    *,
    username: str,
    device_id: str,
    identity: DeviceIdentity,
    account: AccountKey,
    data_key: bytes,
) -> tuple[Vault, Store]:
    vault = create_vault(profile_dir, passphrase)
    store = Store(vault)
    with store.transaction():
        store.set_meta("server_url", server.address.url)
        store.set_meta("insecure", "1" if server.insecure else "0")
        store.set_meta("ca_file", server.ca_file or "")
        store.set_meta("username", username)
        store.set_meta("device_id", device_id)
        store.set_meta("account", identity.pickle(vault.pickle_key))
        store.set_meta("account_secret", _b64(account.secret))
        store.set_meta("data_key", _b64(data_key))
    return vault, store


def _remove_profile(profile_dir: Path) -> None:
    """Delete only the files a failed enrolment created, then the folder if empty."""
    for name in _PROFILE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(profile_dir / name)
    with contextlib.suppress(OSError):
        profile_dir.rmdir()


def _check_new(profile_dir: Path, username: str) -> None:
    check_username(username)
    if (profile_dir / "profile.json").exists():
        raise ProfileError(f"a profile already exists at {profile_dir}")


def _first_list(
    account: AccountKey,
    data_key: bytes,
    username: str,
    identity: DeviceIdentity,
    device_id: str,
    name: str,
) -> tuple[frames.DeviceKeys, frames.SignedDeviceList]:
    keys = identity.device_keys(username, device_id)
    entry = device_entry(keys, seal_name(data_key, username, device_id, name))
    return keys, account.sign_device_list(username, 1, [entry])


async def _enrol_fresh(
    profile_dir: Path,
    server: Server,
    username: str,
    passphrase: str | None,
    name: str,
    old_code: RecoveryCode | None,
) -> Enrolled:
    """Register (``old_code`` None) or recover: a new account key, first list, recovery code."""
    conn = await Connection.open(server.address)
    created = False
    try:
        identity, account, data_key = DeviceIdentity.create(), AccountKey.create(), os.urandom(32)
        device_id = new_id()[:12]
        vault, store = await asyncio.to_thread(
            _create_profile,
            profile_dir,
            passphrase,
            server,
            username=username,
            device_id=device_id,
            identity=identity,
            account=account,
            data_key=data_key,
        )
        created = True
        one_time_keys = identity.new_one_time_keys(identity.max_one_time_keys)
        fallback = identity.new_fallback_key()
        with store.transaction():
            store.set_meta("account", identity.pickle(vault.pickle_key))
            store.set_meta("fallback_published", "1")
            if old_code is not None:
                store.set_meta(JOINED_LATE, "1")
        keys, device_list = _first_list(account, data_key, username, identity, device_id, name)
        recovery = RecoveryCode.create()
        nonce = conn.challenge.nonce
        signature = identity.sign(auth_bytes(nonce, username, device_id))
        recovery_key_signature = account.sign_recovery_key(username, recovery.public_key)
        frame: frames.Register | frames.Recover
        if old_code is None:
            frame = frames.Register(
                version=PROTOCOL_VERSION,
                username=username,
                device=keys,
                device_list=device_list,
                recovery_key=recovery.public_key,
                recovery_key_signature=recovery_key_signature,
                one_time_keys=one_time_keys,
                fallback_key=fallback,
                signature=signature,
            )
        else:
            frame = frames.Recover(
                version=PROTOCOL_VERSION,
                username=username,
                device=keys,
                device_list=device_list,
                recovery_key=recovery.public_key,
                recovery_key_signature=recovery_key_signature,
                one_time_keys=one_time_keys,
                fallback_key=fallback,
                signature=signature,
                recovery_signature=old_code.sign_recover(
                    nonce, username, account.public, recovery.public_key
                ),
            )
        await conn.handshake(frame)
    except BaseException:
        if created:
            vault.close()
            _remove_profile(profile_dir)
        raise
    finally:
        await conn.close()
    return Enrolled(vault, store, identity, recovery_code=recovery)


async def enrol_by_registration(
    profile_dir: Path, server: Server, username: str, passphrase: str | None, name: str
) -> Enrolled:
    """Create a new account with this as its first device.

    Raises:
        ProfileError: a profile already exists at ``profile_dir``.
        ServerUnreachable: nothing was created.
        RequestRefused: ``username_taken``…; nothing was kept.
    """
    _check_new(profile_dir, username)
    return await _enrol_fresh(profile_dir, server, username, passphrase, name, None)


async def enrol_by_recovery(
    profile_dir: Path,
    server: Server,
    username: str,
    code: RecoveryCode,
    passphrase: str | None,
    name: str,
) -> Enrolled:
    """Reclaim ``username`` with its recovery code: a new account key and a new code.

    Raises:
        RequestRefused: ``auth_failed`` — a wrong code or no such account (nothing changed).
    """
    _check_new(profile_dir, username)
    return await _enrol_fresh(profile_dir, server, username, passphrase, name, code)


async def enrol_by_link(
    profile_dir: Path,
    server: Server,
    username: str,
    passphrase: str | None,
    name: str,
    show_code: Callable[[LinkCode], None],
    wait_seconds: float = LINK_WAIT_SECONDS,
) -> Enrolled:
    """Join ``username``'s account: show a link code, wait for an existing device's answer.

    Raises:
        ServerUnreachable: the server cannot be reached, or no device approved in time.
        SignatureError: the answer is not a valid approval for this device.
    """
    _check_new(profile_dir, username)
    identity = DeviceIdentity.create()
    device_id = new_id()[:12]
    (one_time_key,) = identity.new_one_time_keys(1)
    code = LinkCode.create()
    offer = content.NewDeviceOffer(
        username=username,
        device=identity.device_keys(username, device_id),
        one_time_key=one_time_key,
        name=name,
    )
    conn = await Connection.open(server.address)
    try:
        waiting = conn.link_wait(
            frames.LinkWait(link_id=code.link_id, offer=code.seal_offer(offer)), wait_seconds
        )
        task = asyncio.ensure_future(waiting)
        await asyncio.sleep(0)
        if not task.done():
            show_code(code)
        answer = await task
    finally:
        await conn.close()
    session, secrets = _open_answer(identity, answer.answer, username, offer.device)
    account = AccountKey(secrets.account_secret)
    vault, store = await asyncio.to_thread(
        _create_profile,
        profile_dir,
        passphrase,
        server,
        username=username,
        device_id=device_id,
        identity=identity,
        account=account,
        data_key=secrets.data_key,
    )
    try:
        approver = open_device_list(secrets.device_list, username, account.public)
        with store.transaction():
            store.set_meta("account", identity.pickle(vault.pickle_key))
            store.save_devices(
                username,
                [(d.keys.device_id, d.keys.ed25519, d.keys.curve25519) for d in approver.devices],
            )
            store.set_meta("own_device_list_version", str(approver.version))
            store.set_meta(JOINED_LATE, "1")
            sender = next(
                d.keys for d in approver.devices if d.keys.device_id == secrets.approver_device
            )
            store.save_session(
                sender.curve25519, session.session_id, session.pickle(vault.pickle_key)
            )
            for contact in secrets.contacts:
                if contact.username != username:  # our own account is no contact
                    contact_sync.adopt(store, contact)
    except BaseException:
        vault.close()
        _remove_profile(profile_dir)
        raise
    return Enrolled(vault, store, identity, history_follows=secrets.history)


def _open_answer(
    identity: DeviceIdentity, answer: bytes, username: str, device: frames.DeviceKeys
) -> tuple[Any, content.LinkSecrets]:
    """Decrypt and check the approving device's answer."""
    try:
        sealed = content.decode_olm_ciphertext(answer)
        session, plaintext = identity.inbound_session(sealed.sender_key, sealed)
        secrets = content.decode_link_secrets(plaintext)
        account = AccountKey(secrets.account_secret)
    except (RemoteProtocolError, CryptoError) as exc:
        raise SignatureError(f"the approval could not be read: {exc}") from None
    if secrets.username != username:
        raise SignatureError(f"the approval is for {secrets.username}, not {username}")
    listed = open_device_list(secrets.device_list, username, account.public)
    ours = [d for d in listed.devices if d.keys == device]
    approver = [d for d in listed.devices if d.keys.device_id == secrets.approver_device]
    if not ours:
        raise SignatureError("the approving device did not add this device to the account")
    if not approver or approver[0].keys.curve25519 != sealed.sender_key:
        raise SignatureError("the approval does not come from a device of the account")
    return session, secrets


def check_device_name(name: str) -> str:
    """A device's name as people type it: 1 to 64 characters once trimmed.

    Raises:
        ConfigError: empty or too long.
    """
    trimmed = name.strip()
    if not 1 <= len(trimmed) <= 64:
        raise ConfigError("a device name is 1 to 64 characters")
    return trimmed
