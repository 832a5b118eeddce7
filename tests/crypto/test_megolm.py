"""Megolm group sessions: real vodozemac sessions through obrolan's wrappers."""

from __future__ import annotations

import pytest

from obrolan.crypto.keys import random_key
from obrolan.crypto.megolm import InboundGroupSession, OutboundGroupSession
from obrolan.errors import CryptoError, DecryptionError


def test_megolm_round_trips_many_messages_to_several_readers() -> None:
    """Every reader of the shared key decrypts every message, with its index."""
    sender = OutboundGroupSession.create()
    assert sender.message_index == 0
    readers = [InboundGroupSession.from_session_key(sender.session_key) for _ in range(3)]
    assert all(r.session_id == sender.session_id for r in readers)
    bodies = [sender.encrypt(f"message {i}".encode()) for i in range(4)]
    assert sender.message_index == 4
    for reader in readers:
        for index, body in enumerate(bodies):
            assert reader.decrypt(body) == (f"message {index}".encode(), index)


def test_megolm_rotated_session_locks_out_a_removed_member() -> None:
    """Bob, removed, keeps the old session only: nothing of the new one decrypts for him."""
    old = OutboundGroupSession.create()
    bob = InboundGroupSession.from_session_key(old.session_key)
    assert bob.decrypt(old.encrypt(b"before removal")) == (b"before removal", 0)

    rotated = OutboundGroupSession.create()
    carol = InboundGroupSession.from_session_key(rotated.session_key)
    body = rotated.encrypt(b"after removal")
    assert rotated.session_id != old.session_id
    assert carol.decrypt(body) == (b"after removal", 0)
    with pytest.raises(DecryptionError):
        bob.decrypt(body)


def test_megolm_key_shared_later_decrypts_from_its_index_on() -> None:
    """A key taken at index 2 reads messages 2 and 3, never 0 or 1."""
    sender = OutboundGroupSession.create()
    early = [sender.encrypt(b"zero"), sender.encrypt(b"one")]
    late_reader = InboundGroupSession.from_session_key(sender.session_key)
    assert late_reader.first_known_index == 2
    assert late_reader.decrypt(sender.encrypt(b"two")) == (b"two", 2)
    assert late_reader.decrypt(sender.encrypt(b"three")) == (b"three", 3)
    for body in early:
        with pytest.raises(DecryptionError):
            late_reader.decrypt(body)


def test_megolm_rejects_tampered_body_and_stays_usable() -> None:
    """A flipped bit fails the signature; the genuine message still decrypts after."""
    sender = OutboundGroupSession.create()
    reader = InboundGroupSession.from_session_key(sender.session_key)
    body = sender.encrypt(b"genuine")
    for position in (5, len(body) // 2, len(body) - 1):
        tampered = bytearray(body)
        tampered[position] ^= 0x01
        with pytest.raises(DecryptionError):
            reader.decrypt(bytes(tampered))
    assert reader.decrypt(body) == (b"genuine", 0)


def test_megolm_rejects_malformed_message() -> None:
    """Bytes that are not a Megolm message raise DecryptionError, not a vodozemac error."""
    reader = InboundGroupSession.from_session_key(OutboundGroupSession.create().session_key)
    for garbage in (b"", b"junk", b"\x03" + bytes(100)):
        with pytest.raises(DecryptionError):
            reader.decrypt(garbage)


def test_megolm_rejects_malformed_session_key() -> None:
    """A session key that is not base64 or not a Megolm key raises CryptoError."""
    valid = OutboundGroupSession.create().session_key
    for bad in ("", "not base64!", "AAAA", valid[:40]):
        with pytest.raises(CryptoError):
            InboundGroupSession.from_session_key(bad)


def test_megolm_sessions_survive_pickling_both_sides() -> None:
    """Sender and reader restore from pickles and carry on where they were."""
    key = random_key()
    sender = OutboundGroupSession.create()
    reader = InboundGroupSession.from_session_key(sender.session_key)
    assert reader.decrypt(sender.encrypt(b"before")) == (b"before", 0)

    sender = OutboundGroupSession.from_pickle(sender.pickle(key), key)
    reader = InboundGroupSession.from_pickle(reader.pickle(key), key)
    assert sender.message_index == 1
    assert reader.session_id == sender.session_id
    assert reader.decrypt(sender.encrypt(b"after")) == (b"after", 1)


def test_megolm_pickle_with_wrong_or_short_key_raises_crypto_error() -> None:
    """A wrong pickle key, a damaged pickle or a key of the wrong size is a CryptoError."""
    key = random_key()
    sender = OutboundGroupSession.create()
    reader = InboundGroupSession.from_session_key(sender.session_key)
    outbound_pickle, inbound_pickle = sender.pickle(key), reader.pickle(key)
    other = random_key()
    with pytest.raises(CryptoError):
        OutboundGroupSession.from_pickle(outbound_pickle, other)
    with pytest.raises(CryptoError):
        InboundGroupSession.from_pickle(inbound_pickle, other)
    with pytest.raises(CryptoError):
        InboundGroupSession.from_pickle(outbound_pickle, key)
    with pytest.raises(CryptoError):
        OutboundGroupSession.from_pickle("damaged", key)
    with pytest.raises(CryptoError):
        sender.pickle(b"short")
    with pytest.raises(CryptoError):
        reader.pickle(b"short")
