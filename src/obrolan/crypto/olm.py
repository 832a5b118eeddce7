"""One Olm session (double ratchet) between two devices, over vodozemac.

A session is created by :meth:`obrolan.crypto.device.DeviceIdentity.outbound_session`
or :meth:`~obrolan.crypto.device.DeviceIdentity.inbound_session`. Every
:meth:`OlmSession.encrypt` and every successful :meth:`OlmSession.decrypt`
advances the ratchet: persist :meth:`OlmSession.pickle` in the same
transaction as whatever the message changed, or the next message will not
decrypt.
"""

from __future__ import annotations

import vodozemac

from obrolan.crypto import pickles
from obrolan.errors import DecryptionError
from obrolan.protocol.content import OLM_PRE_KEY, OlmCiphertext

__all__ = ["OlmSession"]


def _to_vodozemac(message: OlmCiphertext) -> vodozemac.AnyOlmMessage:
    """The vodozemac form of a wire Olm message.

    Raises:
        DecryptionError: the type or body is not a valid Olm message.
    """
    try:
        return vodozemac.AnyOlmMessage.from_parts(message.message_type, message.body)
    except ValueError as exc:
        raise DecryptionError(f"malformed Olm message: {exc}") from None


class OlmSession:
    """An Olm session with one other device."""

    __slots__ = ("_session",)

    def __init__(self, session: vodozemac.Session) -> None:
        """Wrap a vodozemac session (use the ``DeviceIdentity`` methods to make one)."""
        self._session = session

    @classmethod
    def from_pickle(cls, pickle: str, key: bytes) -> OlmSession:
        """Restore a session saved with :meth:`pickle`.

        Raises:
            CryptoError: the pickle could not be decrypted (wrong key) or is damaged.
        """
        return cls(pickles.restore(vodozemac.Session.from_pickle, pickle, key, "Olm session"))

    def pickle(self, key: bytes) -> str:
        """The session encrypted with a 32-byte key, for the local store.

        Raises:
            CryptoError: ``key`` is not 32 bytes.
        """
        return pickles.save(self._session, key, "Olm session")

    @property
    def session_id(self) -> str:
        """An id both ends compute the same way (stable over the session's life)."""
        return self._session.session_id

    def encrypt(self, plaintext: bytes, sender_key: str) -> OlmCiphertext:
        """Encrypt for the other device and advance the ratchet.

        Args:
            plaintext: the bytes to encrypt (the JSON of a ``Plaintext``).
            sender_key: this device's Curve25519 identity key, carried in the clear so
                the recipient can find the session (or make one from a pre-key message).
        """
        message_type, body = self._session.encrypt(plaintext).to_parts()
        return OlmCiphertext(sender_key=sender_key, message_type=message_type, body=body)

    def decrypt(self, message: OlmCiphertext) -> bytes:
        """Decrypt a message of this session and advance the ratchet.

        A failed decryption leaves the session unchanged.

        Raises:
            DecryptionError: the message is malformed, tampered with, replayed, or of
                another session.
        """
        olm_message = _to_vodozemac(message)
        try:
            return self._session.decrypt(olm_message)
        except ValueError as exc:
            raise DecryptionError(f"Olm message did not decrypt: {exc}") from None

    def matches(self, message: OlmCiphertext) -> bool:
        """True if ``message`` is a pre-key message that belongs to this session.

        The recipient of a pre-key message asks every session with the sender
        first: only when none matches does it create a new inbound session.
        """
        if message.message_type != OLM_PRE_KEY:
            return False
        try:
            pre_key = _to_vodozemac(message).to_pre_key()
        except DecryptionError:
            return False
        return pre_key is not None and self._session.session_matches(pre_key)
