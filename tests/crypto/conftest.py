"""Shared fixtures: two real vodozemac devices and a session between them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from obrolan.crypto import DeviceIdentity, OlmSession
from obrolan.protocol.content import OlmCiphertext


@dataclass
class Conversation:
    """Alice started a session with Bob's one-time key; Bob has not answered yet."""

    alice: DeviceIdentity
    bob: DeviceIdentity
    alice_session: OlmSession
    bob_session: OlmSession
    first_message: OlmCiphertext


@pytest.fixture
def conversation() -> Conversation:
    alice, bob = DeviceIdentity.create(), DeviceIdentity.create()
    [one_time_key] = bob.new_one_time_keys(1)
    alice_session = alice.outbound_session(bob.curve25519, one_time_key.key)
    first = alice_session.encrypt(b"hello bob", sender_key=alice.curve25519)
    bob_session, plaintext = bob.inbound_session(first.sender_key, first)
    assert plaintext == b"hello bob"
    return Conversation(alice, bob, alice_session, bob_session, first)
