"""OlmSession: real vodozemac sessions between two devices, through obrolan's wrappers."""

from __future__ import annotations

import msgspec
import pytest

from obrolan.crypto import DeviceIdentity, OlmSession, random_key
from obrolan.errors import CryptoError, DecryptionError
from obrolan.protocol.content import OLM_NORMAL, OLM_PRE_KEY, OlmCiphertext

from .conftest import Conversation


def test_olm_session_round_trips_both_ways(conversation: Conversation) -> None:
    """Messages flow both ways; pre-key messages stop once the peer has answered."""
    c = conversation
    assert c.first_message.message_type == OLM_PRE_KEY
    assert c.first_message.sender_key == c.alice.curve25519
    assert c.alice_session.session_id == c.bob_session.session_id
    for round_number in range(3):
        reply = c.bob_session.encrypt(f"bob {round_number}".encode(), sender_key=c.bob.curve25519)
        assert reply.message_type == OLM_NORMAL
        assert c.alice_session.decrypt(reply) == f"bob {round_number}".encode()
        message = c.alice_session.encrypt(
            f"alice {round_number}".encode(), sender_key=c.alice.curve25519
        )
        assert message.message_type == OLM_NORMAL
        assert c.bob_session.decrypt(message) == f"alice {round_number}".encode()


def test_olm_session_survives_pickling_mid_conversation(conversation: Conversation) -> None:
    """Both ends pickle and restore their accounts and sessions between messages."""
    c = conversation
    key = random_key()
    reply = c.bob_session.encrypt(b"before", sender_key=c.bob.curve25519)
    alice = DeviceIdentity.from_pickle(c.alice.pickle(key), key)
    bob = DeviceIdentity.from_pickle(c.bob.pickle(key), key)
    alice_session = OlmSession.from_pickle(c.alice_session.pickle(key), key)
    bob_session = OlmSession.from_pickle(c.bob_session.pickle(key), key)
    assert (alice.ed25519, alice.curve25519) == (c.alice.ed25519, c.alice.curve25519)
    assert alice_session.session_id == c.alice_session.session_id
    assert alice_session.decrypt(reply) == b"before"
    message = alice_session.encrypt(b"after", sender_key=alice.curve25519)
    assert bob_session.decrypt(message) == b"after"
    answer = bob_session.encrypt(b"again", sender_key=bob.curve25519)
    assert alice_session.decrypt(answer) == b"again"


def test_olm_session_rejects_replayed_message(conversation: Conversation) -> None:
    """A message decrypts once; the same ciphertext again raises DecryptionError."""
    c = conversation
    reply = c.bob_session.encrypt(b"once", sender_key=c.bob.curve25519)
    assert c.alice_session.decrypt(reply) == b"once"
    with pytest.raises(DecryptionError):
        c.alice_session.decrypt(reply)
    with pytest.raises(DecryptionError):
        c.bob_session.decrypt(c.first_message)


def test_olm_session_rejects_tampered_body_and_stays_usable(conversation: Conversation) -> None:
    """A flipped bit fails the MAC; the session still decrypts the genuine message after."""
    c = conversation
    reply = c.bob_session.encrypt(b"genuine", sender_key=c.bob.curve25519)
    body = bytearray(reply.body)
    body[len(body) // 2] ^= 0x01
    tampered = msgspec.structs.replace(reply, body=bytes(body))
    with pytest.raises(DecryptionError):
        c.alice_session.decrypt(tampered)
    assert c.alice_session.decrypt(reply) == b"genuine"


def test_olm_session_rejects_malformed_message(conversation: Conversation) -> None:
    """Bytes that are not an Olm message raise DecryptionError, not a vodozemac error."""
    garbage = OlmCiphertext(sender_key=conversation.bob.curve25519, message_type=1, body=b"junk")
    with pytest.raises(DecryptionError):
        conversation.alice_session.decrypt(garbage)


def test_olm_session_rejects_message_of_another_session(conversation: Conversation) -> None:
    """A message of one session does not decrypt in another session with the same peer."""
    c = conversation
    [one_time_key] = c.bob.new_one_time_keys(1)
    other = c.alice.outbound_session(c.bob.curve25519, one_time_key.key)
    message = other.encrypt(b"elsewhere", sender_key=c.alice.curve25519)
    with pytest.raises(DecryptionError):
        c.bob_session.decrypt(message)


def test_olm_session_matches_only_its_own_pre_key_message(conversation: Conversation) -> None:
    """matches() is true for this session's pre-key message only."""
    c = conversation
    assert c.bob_session.matches(c.first_message)
    [one_time_key] = c.bob.new_one_time_keys(1)
    other = c.alice.outbound_session(c.bob.curve25519, one_time_key.key)
    other_first = other.encrypt(b"other", sender_key=c.alice.curve25519)
    assert not c.bob_session.matches(other_first)
    reply = c.bob_session.encrypt(b"normal", sender_key=c.bob.curve25519)
    assert not c.alice_session.matches(reply)
    garbage = OlmCiphertext(sender_key=c.alice.curve25519, message_type=0, body=b"junk")
    assert not c.bob_session.matches(garbage)


def test_olm_session_pickle_with_wrong_key_raises_crypto_error(
    conversation: Conversation,
) -> None:
    """A session pickle does not open with another key, nor with a short one."""
    pickle = conversation.alice_session.pickle(random_key())
    with pytest.raises(CryptoError, match="could not be decrypted"):
        OlmSession.from_pickle(pickle, random_key())
    with pytest.raises(CryptoError):
        conversation.alice_session.pickle(b"too short")
