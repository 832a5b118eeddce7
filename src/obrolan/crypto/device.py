"""A device's long-term identity: its Olm account (vodozemac ``Account``).

The account holds the device's Ed25519 signing key, its Curve25519 identity
key, and the private halves of its published one-time and fallback keys.
Anything that changes those private halves (new keys, an inbound session that
uses up a one-time key) must be followed by persisting :meth:`DeviceIdentity.pickle`
— before the new public keys are uploaded, and in the same transaction as the
inbound session — or a crash loses keys that peers will still use.
"""

from __future__ import annotations

import vodozemac

from obrolan.crypto import pickles
from obrolan.crypto.key_checks import check_curve25519
from obrolan.crypto.olm import OlmSession, _to_vodozemac
from obrolan.errors import CryptoError, DecryptionError, InvalidMessage
from obrolan.protocol.content import OLM_PRE_KEY, OlmCiphertext
from obrolan.protocol.frames import DeviceKeys, OneTimeKey
from obrolan.protocol.signing import device_keys_bytes, one_time_key_bytes

__all__ = ["DeviceIdentity"]


def _curve25519(key: str, what: str) -> vodozemac.Curve25519PublicKey:
    try:
        return vodozemac.Curve25519PublicKey.from_base64(key)
    except ValueError as exc:
        raise CryptoError(f"{what} is not a Curve25519 key: {exc}") from None


def _usable_curve25519(key: str, what: str) -> vodozemac.Curve25519PublicKey:
    """A peer's key, refused when its bytes cannot give a secret (crypto/key_checks.py).

    Raises:
        UnusableKey: all-zero or of low order, however well signed.
    """
    parsed = _curve25519(key, what)
    check_curve25519(key, f"the {what}")
    return parsed


class DeviceIdentity:
    """The Olm account of this device: its keys and the sessions they start."""

    __slots__ = ("_account",)

    def __init__(self, account: vodozemac.Account) -> None:
        """Wrap a vodozemac account (use :meth:`create` or :meth:`from_pickle`)."""
        self._account = account

    @classmethod
    def create(cls) -> DeviceIdentity:
        """A new device with fresh identity keys and no one-time keys yet."""
        return cls(vodozemac.Account())

    @classmethod
    def from_pickle(cls, pickle: str, key: bytes) -> DeviceIdentity:
        """Restore an identity saved with :meth:`pickle`.

        Raises:
            CryptoError: the pickle could not be decrypted (wrong key) or is damaged.
        """
        return cls(pickles.restore(vodozemac.Account.from_pickle, pickle, key, "device identity"))

    def pickle(self, key: bytes) -> str:
        """The account encrypted with a 32-byte key, for the local store.

        Raises:
            CryptoError: ``key`` is not 32 bytes.
        """
        return pickles.save(self._account, key, "device identity")

    @property
    def ed25519(self) -> str:
        """The Ed25519 signing key, unpadded base64."""
        return self._account.ed25519_key.to_base64()

    @property
    def curve25519(self) -> str:
        """The Curve25519 identity key, unpadded base64."""
        return self._account.curve25519_key.to_base64()

    @property
    def max_one_time_keys(self) -> int:
        """Most one-time keys to have published and unclaimed at any time.

        vodozemac keeps more private one-time keys than this (it drops the
        oldest only beyond 100 times this number), so staying at or under it
        guarantees every published key can still start a session.
        """
        return self._account.max_number_of_one_time_keys

    def sign(self, data: bytes) -> str:
        """An Ed25519 signature of ``data``, unpadded base64."""
        return self._account.sign(data).to_base64()

    def device_keys(self, username: str, device_id: str) -> DeviceKeys:
        """This device's public keys, self-signed for ``username``'s device ``device_id``."""
        ed25519, curve25519 = self.ed25519, self.curve25519
        signature = self.sign(device_keys_bytes(username, device_id, ed25519, curve25519))
        return DeviceKeys(
            device_id=device_id, ed25519=ed25519, curve25519=curve25519, signature=signature
        )

    def _signed(self, keys: dict[str, vodozemac.Curve25519PublicKey]) -> list[OneTimeKey]:
        signed = []
        for key_id in sorted(keys):
            key = keys[key_id].to_base64()
            signature = self.sign(one_time_key_bytes(key_id, key))
            signed.append(OneTimeKey(key_id=key_id, key=key, signature=signature))
        return signed

    def new_one_time_keys(self, count: int) -> list[OneTimeKey]:
        """Generate ``count`` one-time keys, sign them, and mark them published.

        Persist :meth:`pickle` before uploading them. Ask for no more than
        ``max_one_time_keys`` minus the number the server still holds unclaimed.

        Raises:
            InvalidMessage: ``count`` is negative or above :attr:`max_one_time_keys`.
        """
        limit = self.max_one_time_keys
        if not 0 <= count <= limit:
            raise InvalidMessage("one-time key count", count, limit, unit="keys")
        self._account.generate_one_time_keys(count)
        keys = self._signed(self._account.one_time_keys)
        self._account.mark_keys_as_published()
        return keys

    def new_fallback_key(self) -> OneTimeKey:
        """Generate a new fallback key, sign it, and mark it published.

        The account keeps the previous fallback key too, so a session a peer
        starts with it while the new one is being uploaded still works; the one
        before that is forgotten. Persist :meth:`pickle` before uploading.
        """
        # vodozemac 0.10's type stubs omit the fallback-key methods the module has.
        self._account.generate_fallback_key()  # type: ignore[attr-defined]
        (key,) = self._signed(self._account.fallback_key)  # type: ignore[attr-defined]
        self._account.mark_keys_as_published()
        return key

    def outbound_session(self, their_curve25519: str, their_one_time_key: str) -> OlmSession:
        """Start a session with another device from a key claimed from the server.

        Verify the claimed key's signature (``crypto.signatures.verify_one_time_key``)
        before calling this.

        Raises:
            CryptoError: a key is malformed or would give an insecure shared secret.
        """
        identity_key = _usable_curve25519(their_curve25519, "identity key")
        one_time_key = _usable_curve25519(their_one_time_key, "one-time key")
        try:
            return OlmSession(self._account.create_outbound_session(identity_key, one_time_key))
        except Exception as exc:  # noqa: BLE001 - whatever vodozemac raises: this key fails
            raise CryptoError(f"cannot start an Olm session: {exc}") from None

    def inbound_session(
        self, their_curve25519: str, message: OlmCiphertext
    ) -> tuple[OlmSession, bytes]:
        """Create the session a pre-key message starts and decrypt that message.

        This uses up the one-time key the sender claimed, inside this account:
        persist :meth:`pickle` and the new session's pickle in one transaction.
        Call it only when no existing session :meth:`~OlmSession.matches` the message.

        Raises:
            DecryptionError: not a pre-key message, an unknown or already used
                one-time key, a sender key that does not match, or a bad ciphertext.
        """
        if message.message_type != OLM_PRE_KEY:
            raise DecryptionError("not a pre-key message and no session matches it")
        pre_key = _to_vodozemac(message).to_pre_key()
        if pre_key is None:
            raise DecryptionError("not a pre-key message and no session matches it")
        try:
            identity_key = vodozemac.Curve25519PublicKey.from_base64(their_curve25519)
            session, plaintext = self._account.create_inbound_session(identity_key, pre_key)
        except ValueError as exc:
            raise DecryptionError(f"pre-key message did not start a session: {exc}") from None
        return OlmSession(session), plaintext
