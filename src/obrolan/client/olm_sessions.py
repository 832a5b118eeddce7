"""This device's Olm sessions with other devices, as the store keeps them (pickled).

No ``await`` anywhere: a caller that opens or seals and then saves inside one store
transaction knows no other task touched the same session in between.
"""

from __future__ import annotations

import contextlib

from obrolan.client.store import Store
from obrolan.crypto.device import DeviceIdentity
from obrolan.crypto.olm import OlmSession
from obrolan.errors import DecryptionError
from obrolan.protocol import content

__all__ = ["OlmSessions"]


class OlmSessions:
    """Finds, opens and saves the sessions of :class:`Store` for one device identity."""

    def __init__(self, store: Store, identity: DeviceIdentity, pickle_key: bytes) -> None:
        self._store = store
        self._identity = identity
        self._pickle_key = pickle_key

    def latest_with(self, curve25519: str) -> OlmSession | None:
        """The session to encrypt with for the device of ``curve25519`` (None: none yet)."""
        for _, pickle in self._store.sessions_for(curve25519)[:1]:
            return OlmSession.from_pickle(pickle, self._pickle_key)
        return None

    def has_any_with(self, curve25519: str) -> bool:
        """True when a session with the device of ``curve25519`` exists."""
        return bool(self._store.sessions_for(curve25519))

    def open(self, sealed: content.OlmCiphertext) -> tuple[OlmSession, bytes, bool]:
        """Decrypt ``sealed``: ``(session, plaintext, whether the session is new)``.

        A pre-key message is opened with the existing session it matches and never
        starts a second one from a replay (security.md, one-time key exhaustion).

        Raises:
            DecryptionError: no session decrypts it.
        """
        pre_key = sealed.message_type == content.OLM_PRE_KEY
        for _, pickle in self._store.sessions_for(sealed.sender_key):
            session = OlmSession.from_pickle(pickle, self._pickle_key)
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

    def save(self, curve25519: str, session: OlmSession, *, new_inbound: bool = False) -> None:
        """Keep ``session`` (and the account, whose one-time key a new inbound one used)."""
        self._store.save_session(curve25519, session.session_id, session.pickle(self._pickle_key))
        if new_inbound:
            self._store.set_meta("account", self._identity.pickle(self._pickle_key))
