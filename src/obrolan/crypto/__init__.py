"""obrolan's cryptography: the only package that imports vodozemac or a KDF.

- :class:`DeviceIdentity` — a device's Olm account: Ed25519 signing key,
  Curve25519 identity key, signed one-time and fallback keys.
- :class:`OlmSession` — one double-ratchet session with another device.
- :mod:`~obrolan.crypto.signatures` — checks of the protocol's signed values.
- :mod:`~obrolan.crypto.keys` — Argon2id from a passphrase, random keys, HKDF sub-keys.
- :func:`safety_number` — the 60 digits two people compare out of band.
- :mod:`~obrolan.crypto.sas` — SAS verification: 7 emoji two devices compare, then MACs.
- :mod:`~obrolan.crypto.megolm` — Megolm group sessions: encrypt once, every member reads.
- :mod:`~obrolan.crypto.group_state` — a group's state from its chain of signed updates.
- :mod:`~obrolan.crypto.chunked_aead` — a stream sealed in AES-256-GCM chunks that cannot be
  reordered, dropped or cut (attachments and archives).

Failures surface as :class:`~obrolan.errors.CryptoError` and its subclasses
(:class:`~obrolan.errors.DecryptionError`, :class:`~obrolan.errors.SignatureError`);
vodozemac's own exceptions never leave this package.

A round trip between two devices (what the client does over the server)::

    >>> from obrolan.crypto import DeviceIdentity, OlmSession, random_key, verify_one_time_key
    >>> alice, bob = DeviceIdentity.create(), DeviceIdentity.create()
    >>> [one_time_key] = bob.new_one_time_keys(1)   # bob publishes it, alice claims it
    >>> verify_one_time_key(bob.ed25519, one_time_key)
    >>> outbound = alice.outbound_session(bob.curve25519, one_time_key.key)
    >>> first = outbound.encrypt(b"hi bob", sender_key=alice.curve25519)
    >>> first.message_type                           # a pre-key message starts the session
    0
    >>> inbound, plaintext = bob.inbound_session(first.sender_key, first)
    >>> plaintext
    b'hi bob'
    >>> key = random_key()                           # the store's pickle key
    >>> bob = DeviceIdentity.from_pickle(bob.pickle(key), key)
    >>> inbound = OlmSession.from_pickle(inbound.pickle(key), key)
    >>> reply = inbound.encrypt(b"hi alice", sender_key=bob.curve25519)
    >>> outbound.decrypt(reply)
    b'hi alice'
    >>> inbound.session_id == outbound.session_id
    True
"""

from obrolan.crypto.device import DeviceIdentity
from obrolan.crypto.keys import KEY_BYTES, Argon2Params, derive_key, random_key, subkey
from obrolan.crypto.olm import OlmSession
from obrolan.crypto.safety import safety_number
from obrolan.crypto.signatures import verify, verify_device_keys, verify_one_time_key

__all__ = [
    "KEY_BYTES",
    "Argon2Params",
    "DeviceIdentity",
    "OlmSession",
    "derive_key",
    "random_key",
    "safety_number",
    "subkey",
    "verify",
    "verify_device_keys",
    "verify_one_time_key",
]
