"""Megolm group sessions (one sender ratchet, many readers), over vodozemac.

A sending device encrypts a group message once with its
:class:`OutboundGroupSession` and shares the session key with each member
device over Olm (``content.GroupKey``); each of them builds an
:class:`InboundGroupSession` from it. A key shared at message index *n*
decrypts messages *n* onwards, never earlier ones. Whoever leaves or is
removed keeps the old session but is never sent the next one: senders rotate
to a new session on every membership change, which is what locks them out.

Every :meth:`OutboundGroupSession.encrypt` advances the ratchet: persist the
new :meth:`~OutboundGroupSession.pickle` before the ciphertext leaves, or a
message index would be reused. :meth:`InboundGroupSession.decrypt` does not
refuse a replayed message (Megolm cannot tell): the client drops duplicate
message ids.
"""

from __future__ import annotations

import vodozemac

from obrolan.crypto import pickles
from obrolan.errors import CryptoError, DecryptionError

__all__ = ["InboundGroupSession", "OutboundGroupSession"]


class OutboundGroupSession:
    """This device's sending session for one group."""

    __slots__ = ("_session",)

    def __init__(self, session: vodozemac.GroupSession) -> None:
        """Wrap a vodozemac session (use :meth:`create` or :meth:`from_pickle`)."""
        self._session = session

    @classmethod
    def create(cls) -> OutboundGroupSession:
        """A fresh session at message index 0."""
        return cls(vodozemac.GroupSession())

    @classmethod
    def from_pickle(cls, pickle: str, key: bytes) -> OutboundGroupSession:
        """Restore a session saved with :meth:`pickle`.

        Raises:
            CryptoError: the pickle could not be decrypted (wrong key) or is damaged.
        """
        return cls(
            pickles.restore(vodozemac.GroupSession.from_pickle, pickle, key, "Megolm session")
        )

    def pickle(self, key: bytes) -> str:
        """The session encrypted with a 32-byte key, for the local store.

        Raises:
            CryptoError: ``key`` is not 32 bytes.
        """
        return pickles.save(self._session, key, "Megolm session")

    @property
    def session_id(self) -> str:
        """The session's public signing key: what ``GroupCiphertext.group_session`` names."""
        return self._session.session_id

    @property
    def session_key(self) -> str:
        """The key at the current message index, base64 (``GroupKey.session_key``)."""
        return self._session.session_key.to_base64()

    @property
    def message_index(self) -> int:
        """The index the next :meth:`encrypt` will use."""
        return self._session.message_index

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt and sign one message and advance the ratchet.

        Returns the Megolm message bytes (``GroupCiphertext.body``).
        """
        return self._session.encrypt(plaintext).to_bytes()


class InboundGroupSession:
    """Another device's (or this device's own) sending session, as a reader holds it."""

    __slots__ = ("_session",)

    def __init__(self, session: vodozemac.InboundGroupSession) -> None:
        """Wrap a vodozemac session (use :meth:`from_session_key` or :meth:`from_pickle`)."""
        self._session = session

    @classmethod
    def from_session_key(cls, session_key: str) -> InboundGroupSession:
        """A reader of the session whose key a ``GroupKey`` carried.

        Raises:
            CryptoError: ``session_key`` is not a valid Megolm session key.
        """
        try:
            return cls(vodozemac.InboundGroupSession(vodozemac.SessionKey(session_key)))
        except ValueError as exc:
            raise CryptoError(f"malformed Megolm session key: {exc}") from None

    @classmethod
    def from_pickle(cls, pickle: str, key: bytes) -> InboundGroupSession:
        """Restore a session saved with :meth:`pickle`.

        Raises:
            CryptoError: the pickle could not be decrypted (wrong key) or is damaged.
        """
        load = vodozemac.InboundGroupSession.from_pickle
        return cls(pickles.restore(load, pickle, key, "Megolm session"))

    def pickle(self, key: bytes) -> str:
        """The session encrypted with a 32-byte key, for the local store.

        Raises:
            CryptoError: ``key`` is not 32 bytes.
        """
        return pickles.save(self._session, key, "Megolm session")

    @property
    def session_id(self) -> str:
        """The same id as the sender's :attr:`OutboundGroupSession.session_id`."""
        return self._session.session_id

    @property
    def first_known_index(self) -> int:
        """The first message index this reader can decrypt."""
        return self._session.first_known_index

    def decrypt(self, body: bytes) -> tuple[bytes, int]:
        """Check and decrypt a Megolm message; returns ``(plaintext, message_index)``.

        Raises:
            DecryptionError: the bytes are not a Megolm message, the message is of
                another session, tampered with, or older than :attr:`first_known_index`.
        """
        try:
            message = vodozemac.MegolmMessage.from_bytes(body)
            decrypted = self._session.decrypt(message)
        except ValueError as exc:
            raise DecryptionError(f"Megolm message did not decrypt: {exc}") from None
        return decrypted.plaintext, decrypted.message_index
