"""Which devices this client encrypts to and trusts: accounts' signed device lists.

The server hands out device lists; this module decides what they are worth.
A list counts only if the account key signs it: the key pinned for a contact on
first contact (or accepted later with ``trust``), and for our own account the
key this device holds. Devices outside a verified list are never encrypted to,
and a list older than one already seen is refused, so the server can neither
add a device nor bring back a removed one. A contact's changed account key is
a notice in the conversation, and for any contact, verified or not, sending
stops (messages are held, not encrypted) until the user trusts the new key. No I/O beyond the store; the client calls
it inside no transaction of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from obrolan.client.store import Store
from obrolan.crypto.account import open_device_list, open_successions
from obrolan.errors import SignatureError
from obrolan.protocol.frames import DeviceKeys, DeviceList, KeySuccession, SignedDeviceList

__all__ = ["DeviceView", "Directory"]

log = logging.getLogger("obrolan.client")

_OWN_LIST = "own_device_list_version"


@dataclass(slots=True)
class DeviceView:
    """What a fetched list means for this client."""

    devices: list[DeviceKeys]
    """The devices to encrypt to (empty when sending is blocked)."""
    notices: list[str] = field(default_factory=list)
    """Warnings for the user, shown in the conversation."""
    blocked: str | None = None
    """Why nothing may be sent to this user now (a changed key, not accepted yet)."""
    device_list: DeviceList | None = None
    """The verified list, when it was accepted."""
    earlier_keys: list[str] = field(default_factory=list)
    """Account keys that provably came before the list's, oldest first (§19.3)."""


class Directory:
    """Verifies device lists against pinned account keys and caches the devices they sign."""

    def __init__(self, store: Store, me: str, account_key: str) -> None:
        self._store = store
        self._me = me
        self._account_key = account_key

    def accept(
        self, username: str, signed: SignedDeviceList, successions: list[KeySuccession]
    ) -> DeviceView:
        """Check a list the server returned for ``username``; call inside a transaction."""
        view = self._accept(username, signed)
        if view.device_list is not None and successions:
            try:
                view.earlier_keys = open_successions(
                    successions, username, view.device_list.account_key
                )
            except SignatureError as exc:  # only what they would prove is lost
                log.warning("refused %s's key successions: %s", username, exc)
        return view

    def _accept(self, username: str, signed: SignedDeviceList) -> DeviceView:
        if username == self._me:
            return self._accept_own(signed)
        contact = self._store.contact(username)
        try:
            listed = open_device_list(signed, username, None)
        except SignatureError as exc:
            return self._refused(username, f"its signature does not verify ({exc})")
        key = listed.account_key
        notices = []
        if contact is None:
            self._store.pin_contact(username, key, listed.version)
        elif key == contact.identity_key:
            if contact.key_changed:  # the server shows the pinned key again: back to it
                self._store.clear_key_change(username)
            elif listed.version < contact.list_version:
                return self._refused(username, f"it is older than version {contact.list_version}")
        elif key != contact.changed_key:
            self._store.mark_key_changed(username, key)
            notices.append(
                f"⚠ {username}'s account key has changed: your messages to {username} are "
                f"held, and nothing is encrypted to the new key. Check the safety number with "
                f"{username} (obrolan safety-number {username}), then run "
                f"`obrolan trust {username}` to accept it and send them"
            )
            log.warning("%s's account key has changed", username)
        elif listed.version < contact.list_version:
            return self._refused(username, f"it is older than version {contact.list_version}")
        contact = self._store.contact(username)
        assert contact is not None
        self._store.set_list_version(username, listed.version)
        if contact.blocked_by_change:
            # Nothing is sent (the caller holds it); the devices of the pinned key and
            # their sessions stay, so their messages still open if the change was false.
            reason = (
                f"{username}'s account key has changed: check their safety number, then "
                f"run `obrolan trust {username}`"
            )
            return DeviceView([], notices, reason, listed)
        devices = [d.keys for d in listed.devices]
        self._store.save_devices(
            username, [(d.device_id, d.ed25519, d.curve25519) for d in devices]
        )
        return DeviceView(devices, notices, None, listed)

    def _accept_own(self, signed: SignedDeviceList) -> DeviceView:
        try:
            listed = open_device_list(signed, self._me, self._account_key)
        except SignatureError as exc:
            return self._refused(self._me, f"your account key did not sign it ({exc})")
        seen = int(self._store.get_meta(_OWN_LIST) or 0)
        if listed.version < seen:
            return self._refused(self._me, f"it is older than version {seen}")
        self._store.set_meta(_OWN_LIST, str(listed.version))
        devices = [d.keys for d in listed.devices]
        self._store.save_devices(
            self._me, [(d.device_id, d.ed25519, d.curve25519) for d in devices]
        )
        return DeviceView(devices, [], None, listed)

    def _refused(self, username: str, why: str) -> DeviceView:
        """Keep the devices of the last list that verified; tell the user."""
        log.warning("refused %s's device list: %s", username, why)
        cached = [
            DeviceKeys(device_id=d, ed25519=e, curve25519=c, signature="")
            for d, e, c in self._store.devices_of(username)
        ]
        notice = (
            f"the server showed a device list for {username} that was refused: {why}. "
            f"Only devices from the last list that verified are used"
        )
        return DeviceView(cached, [notice])
