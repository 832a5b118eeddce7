"""DeviceIdentity: keys, signatures, one-time keys and the sessions they start."""

from __future__ import annotations

import base64

import msgspec
import pytest

from obrolan.crypto import (
    DeviceIdentity,
    random_key,
    verify,
    verify_device_keys,
    verify_one_time_key,
)
from obrolan.errors import CryptoError, DecryptionError, InvalidMessage, SignatureError
from obrolan.protocol.content import OLM_NORMAL

from .conftest import Conversation


def test_device_keys_verify_for_their_account_only() -> None:
    """device_keys() verifies for its username and fails for another or a changed key."""
    device = DeviceIdentity.create()
    keys = device.device_keys("alice", "laptop")
    assert (keys.device_id, keys.ed25519, keys.curve25519) == (
        "laptop",
        device.ed25519,
        device.curve25519,
    )
    verify_device_keys("alice", keys)
    with pytest.raises(SignatureError):
        verify_device_keys("mallory", keys)
    other = DeviceIdentity.create()
    with pytest.raises(SignatureError):
        verify_device_keys("alice", msgspec.structs.replace(keys, curve25519=other.curve25519))


def test_device_sign_verifies_with_its_ed25519_key() -> None:
    """sign() makes an Ed25519 signature that verify() accepts for the same data only."""
    device = DeviceIdentity.create()
    signature = device.sign(b"data")
    verify(device.ed25519, b"data", signature)
    with pytest.raises(SignatureError):
        verify(device.ed25519, b"other data", signature)


def test_device_one_time_key_signatures_verify_and_modified_key_fails() -> None:
    """Each new one-time key is signed; swapping in another key breaks the signature."""
    device = DeviceIdentity.create()
    keys = device.new_one_time_keys(5)
    assert len(keys) == 5
    assert len({key.key_id for key in keys}) == 5
    assert len({key.key for key in keys}) == 5
    for key in keys:
        verify_one_time_key(device.ed25519, key)
    with pytest.raises(SignatureError):
        verify_one_time_key(device.ed25519, msgspec.structs.replace(keys[0], key=keys[1].key))
    with pytest.raises(SignatureError):
        verify_one_time_key(DeviceIdentity.create().ed25519, keys[0])


def test_device_new_one_time_keys_beyond_max_raises_invalid_message() -> None:
    """Asking for more than max_one_time_keys (or a negative count) is refused."""
    device = DeviceIdentity.create()
    limit = device.max_one_time_keys
    assert limit == 50
    with pytest.raises(InvalidMessage) as excinfo:
        device.new_one_time_keys(limit + 1)
    assert excinfo.value.limit == limit
    with pytest.raises(InvalidMessage):
        device.new_one_time_keys(-1)
    assert len(device.new_one_time_keys(limit)) == limit
    assert device.new_one_time_keys(0) == []


def test_device_keys_from_earlier_batches_still_start_sessions() -> None:
    """A key of the first batch works after many later batches were published."""
    bob, alice = DeviceIdentity.create(), DeviceIdentity.create()
    first_batch = bob.new_one_time_keys(bob.max_one_time_keys)
    for _ in range(10):
        bob.new_one_time_keys(bob.max_one_time_keys)
    session = alice.outbound_session(bob.curve25519, first_batch[0].key)
    message = session.encrypt(b"old key", sender_key=alice.curve25519)
    _, plaintext = bob.inbound_session(alice.curve25519, message)
    assert plaintext == b"old key"


def test_device_fallback_key_is_signed_and_starts_sessions_repeatedly() -> None:
    """The fallback key verifies and, unlike a one-time key, starts more than one session."""
    bob = DeviceIdentity.create()
    fallback = bob.new_fallback_key()
    verify_one_time_key(bob.ed25519, fallback)
    for sender in (DeviceIdentity.create(), DeviceIdentity.create()):
        session = sender.outbound_session(bob.curve25519, fallback.key)
        message = session.encrypt(b"via fallback", sender_key=sender.curve25519)
        _, plaintext = bob.inbound_session(sender.curve25519, message)
        assert plaintext == b"via fallback"


def test_device_one_time_key_starts_only_one_session() -> None:
    """A second pre-key message using an already used one-time key raises DecryptionError."""
    bob = DeviceIdentity.create()
    [one_time_key] = bob.new_one_time_keys(1)
    first, second = DeviceIdentity.create(), DeviceIdentity.create()
    message = first.outbound_session(bob.curve25519, one_time_key.key).encrypt(
        b"first", sender_key=first.curve25519
    )
    bob.inbound_session(first.curve25519, message)
    message = second.outbound_session(bob.curve25519, one_time_key.key).encrypt(
        b"second", sender_key=second.curve25519
    )
    with pytest.raises(DecryptionError):
        bob.inbound_session(second.curve25519, message)


def test_device_inbound_session_rejects_normal_message(conversation: Conversation) -> None:
    """Only a pre-key message can start a session."""
    c = conversation
    reply = c.bob_session.encrypt(b"normal", sender_key=c.bob.curve25519)
    assert reply.message_type == OLM_NORMAL
    with pytest.raises(DecryptionError, match="not a pre-key message"):
        c.alice.inbound_session(c.bob.curve25519, reply)


def test_device_inbound_session_rejects_mismatched_sender_key() -> None:
    """A pre-key message claimed to come from another identity key is refused."""
    bob, alice = DeviceIdentity.create(), DeviceIdentity.create()
    [one_time_key] = bob.new_one_time_keys(1)
    message = alice.outbound_session(bob.curve25519, one_time_key.key).encrypt(
        b"hi", sender_key=alice.curve25519
    )
    with pytest.raises(DecryptionError):
        bob.inbound_session(DeviceIdentity.create().curve25519, message)
    with pytest.raises(DecryptionError):
        bob.inbound_session("not a key", message)
    _, plaintext = bob.inbound_session(alice.curve25519, message)
    assert plaintext == b"hi"


def test_device_outbound_session_rejects_bad_keys() -> None:
    """Malformed or all-zero keys raise CryptoError instead of a vodozemac exception."""
    alice, bob = DeviceIdentity.create(), DeviceIdentity.create()
    [one_time_key] = bob.new_one_time_keys(1)
    with pytest.raises(CryptoError, match="identity key"):
        alice.outbound_session("AAAA", one_time_key.key)
    with pytest.raises(CryptoError, match="one-time key"):
        alice.outbound_session(bob.curve25519, "!!")
    zero = base64.b64encode(bytes(32)).decode().rstrip("=")
    with pytest.raises(CryptoError):
        alice.outbound_session(zero, zero)


def test_device_pickle_round_trips_and_wrong_key_raises_crypto_error() -> None:
    """A pickle restores the same keys; a wrong key or damaged pickle raises CryptoError."""
    device = DeviceIdentity.create()
    key = random_key()
    pickle = device.pickle(key)
    restored = DeviceIdentity.from_pickle(pickle, key)
    assert (restored.ed25519, restored.curve25519) == (device.ed25519, device.curve25519)
    with pytest.raises(CryptoError, match="could not be decrypted"):
        DeviceIdentity.from_pickle(pickle, random_key())
    with pytest.raises(CryptoError, match="could not be decrypted"):
        DeviceIdentity.from_pickle("not a pickle", key)
    with pytest.raises(CryptoError):
        device.pickle(b"short")


def test_device_unpickled_account_keeps_unused_one_time_keys() -> None:
    """Keys published before pickling still start sessions with the restored account."""
    bob, alice = DeviceIdentity.create(), DeviceIdentity.create()
    [one_time_key] = bob.new_one_time_keys(1)
    key = random_key()
    bob = DeviceIdentity.from_pickle(bob.pickle(key), key)
    message = alice.outbound_session(bob.curve25519, one_time_key.key).encrypt(
        b"after restore", sender_key=alice.curve25519
    )
    _, plaintext = bob.inbound_session(alice.curve25519, message)
    assert plaintext == b"after restore"
