"""SAS verification: matching codes for honest peers, different codes and failing MACs otherwise."""

from __future__ import annotations

import doctest
import hashlib
from dataclasses import dataclass

import pytest

import obrolan.crypto.sas
from obrolan.crypto import DeviceIdentity
from obrolan.crypto.account import AccountKey
from obrolan.crypto.sas import EMOJI, CommitmentMismatch, SasExchange, commitment_of
from obrolan.errors import CryptoError, InvalidState, SignatureError

TXN = "txn-0123456789abcdef"


@dataclass
class Person:
    """One side of a verification: who it is, its long-term keys and its SAS exchange."""

    user: str
    device: str
    account_key: str
    device_key: str
    sas: SasExchange


def _person(user: str, device: str, *, initiator: bool, txn: str = TXN) -> Person:
    return Person(
        user,
        device,
        AccountKey.create().public,
        DeviceIdentity.create().ed25519,
        SasExchange(txn, user, device, initiator=initiator),
    )


def _connect(initiator: Person, responder: Person) -> None:
    """The honest message order: commitment, responder's key, initiator's key."""
    commitment = initiator.sas.commitment
    initiator.sas.accept_peer(responder.user, responder.device, responder.sas.public_key)
    responder.sas.accept_peer(
        initiator.user, initiator.device, initiator.sas.public_key, commitment
    )


@pytest.fixture
def pair() -> tuple[Person, Person]:
    alice = _person("alice", "PHONE", initiator=True)
    bob = _person("bob", "LAPTOP", initiator=False)
    _connect(alice, bob)
    return alice, bob


def test_sas_initiator_and_responder_show_the_same_codes(pair: tuple[Person, Person]) -> None:
    """Both sides compute the same 7 emoji and 3 numbers in the documented ranges."""
    alice, bob = pair
    emoji = alice.sas.emoji()
    assert emoji == bob.sas.emoji()
    assert len(emoji) == 7
    assert all(entry in EMOJI for entry in emoji)
    decimals = alice.sas.decimals()
    assert decimals == bob.sas.decimals()
    assert len(decimals) == 3
    assert all(1000 <= number <= 9191 for number in decimals)


def test_sas_man_in_the_middle_gets_different_codes() -> None:
    """Mallory relaying with her own keys on both legs cannot make the codes match."""
    alice = _person("alice", "PHONE", initiator=True)
    bob = _person("bob", "LAPTOP", initiator=False)
    # Mallory answers alice as "bob" and starts her own exchange with bob as "alice".
    mallory_to_alice = SasExchange(TXN, "bob", "LAPTOP", initiator=False)
    mallory_to_bob = SasExchange(TXN, "alice", "PHONE", initiator=True)

    alice_commitment = alice.sas.commitment
    alice.sas.accept_peer("bob", "LAPTOP", mallory_to_alice.public_key)
    mallory_to_alice.accept_peer("alice", "PHONE", alice.sas.public_key, alice_commitment)
    mallory_commitment = mallory_to_bob.commitment
    mallory_to_bob.accept_peer("bob", "LAPTOP", bob.sas.public_key)
    bob.sas.accept_peer("alice", "PHONE", mallory_to_bob.public_key, mallory_commitment)

    assert alice.sas.emoji() == mallory_to_alice.emoji()
    assert bob.sas.emoji() == mallory_to_bob.emoji()
    assert alice.sas.emoji() != bob.sas.emoji()
    assert alice.sas.decimals() != bob.sas.decimals()


def test_sas_responder_rejects_a_key_other_than_the_committed_one() -> None:
    """An initiator that reveals another key than it committed to is caught."""
    alice = _person("alice", "PHONE", initiator=True)
    other = SasExchange(TXN, "alice", "PHONE", initiator=True)
    bob = _person("bob", "LAPTOP", initiator=False)
    with pytest.raises(CommitmentMismatch, match="commitment"):
        bob.sas.accept_peer("alice", "PHONE", other.public_key, alice.sas.commitment)
    carol = _person("carol", "TABLET", initiator=False)
    with pytest.raises(CommitmentMismatch):
        carol.sas.accept_peer("alice", "PHONE", alice.sas.public_key, bytes(32))
    assert issubclass(CommitmentMismatch, CryptoError)


def test_sas_exchange_is_spent_after_a_refused_key() -> None:
    """After a commitment mismatch the exchange takes no key, not even the right one."""
    alice = _person("alice", "PHONE", initiator=True)
    bob = _person("bob", "LAPTOP", initiator=False)
    with pytest.raises(CommitmentMismatch):
        bob.sas.accept_peer("alice", "PHONE", alice.sas.public_key, bytes(32))
    with pytest.raises(InvalidState, match="start a new one"):
        bob.sas.accept_peer("alice", "PHONE", alice.sas.public_key, alice.sas.commitment)
    with pytest.raises(InvalidState, match="first"):
        bob.sas.emoji()


def test_sas_commitment_is_bound_to_the_txn() -> None:
    """A commitment made for another txn does not match, and it is the documented hash."""
    alice = _person("alice", "PHONE", initiator=True)
    bob = _person("bob", "LAPTOP", initiator=False)
    key = alice.sas.public_key
    assert (
        alice.sas.commitment
        == hashlib.sha256(f"obrolan-sas-commit-v1\0{TXN}\0{key}".encode()).digest()
    )
    with pytest.raises(CommitmentMismatch):
        bob.sas.accept_peer("alice", "PHONE", key, commitment_of("txn-another-exchange", key))


def test_sas_responder_requires_a_commitment_and_initiator_takes_none() -> None:
    """Skipping the commitment, or giving one to the initiator, is a misuse."""
    alice = _person("alice", "PHONE", initiator=True)
    bob = _person("bob", "LAPTOP", initiator=False)
    with pytest.raises(InvalidState, match="commitment"):
        bob.sas.accept_peer("alice", "PHONE", alice.sas.public_key)
    with pytest.raises(InvalidState, match="commitment"):
        alice.sas.accept_peer("bob", "LAPTOP", bob.sas.public_key, b"\0" * 32)
    with pytest.raises(InvalidState, match="initiator"):
        _ = bob.sas.commitment


@pytest.mark.parametrize(
    "bad_key",
    ["not a key!", "AAAA", "A" * 43],
    ids=["not-base64", "short", "low-order-point"],
)
def test_sas_rejects_malformed_and_low_order_keys(bad_key: str) -> None:
    """A key that is not base64 of 32 bytes, or the all-zero point, raises CryptoError."""
    alice = _person("alice", "PHONE", initiator=True)
    with pytest.raises(CryptoError, match="unusable SAS public key"):
        alice.sas.accept_peer("bob", "LAPTOP", bad_key)


def test_sas_codes_and_macs_need_the_peer_key_first_and_only_once(
    pair: tuple[Person, Person],
) -> None:
    """Codes before accept_peer, or a second accept_peer, raise InvalidState."""
    alice, bob = pair
    fresh = SasExchange(TXN, "carol", "TABLET", initiator=True)
    with pytest.raises(InvalidState, match="first"):
        fresh.emoji()
    with pytest.raises(InvalidState, match="first"):
        fresh.macs(alice.account_key, alice.device_key)
    with pytest.raises(InvalidState, match="already took a peer key"):
        alice.sas.accept_peer(bob.user, bob.device, bob.sas.public_key)


def test_sas_macs_verify_both_ways(pair: tuple[Person, Person]) -> None:
    """Each side's MACs over its own keys verify on the other side."""
    alice, bob = pair
    bob.sas.verify_macs(
        alice.account_key, alice.device_key, *alice.sas.macs(alice.account_key, alice.device_key)
    )
    alice.sas.verify_macs(
        bob.account_key, bob.device_key, *bob.sas.macs(bob.account_key, bob.device_key)
    )


def test_sas_mac_over_another_key_fails(pair: tuple[Person, Person]) -> None:
    """A MAC over another account key or device key than expected raises SignatureError."""
    alice, bob = pair
    account_mac, device_mac = alice.sas.macs(alice.account_key, alice.device_key)
    other_account, other_device = AccountKey.create().public, DeviceIdentity.create().ed25519
    with pytest.raises(SignatureError, match="account key"):
        bob.sas.verify_macs(other_account, alice.device_key, account_mac, device_mac)
    with pytest.raises(SignatureError, match="device key"):
        bob.sas.verify_macs(alice.account_key, other_device, account_mac, device_mac)
    with pytest.raises(SignatureError, match="account key"):
        bob.sas.verify_macs(alice.account_key, alice.device_key, device_mac, account_mac)
    with pytest.raises(SignatureError):
        bob.sas.verify_macs(alice.account_key, alice.device_key, "not base64!", device_mac)


def test_sas_mac_is_bound_to_the_sender(pair: tuple[Person, Person]) -> None:
    """Bob's MACs cannot be reflected back as alice's, even over alice's keys."""
    alice, bob = pair
    reflected = bob.sas.macs(alice.account_key, alice.device_key)
    with pytest.raises(SignatureError):
        bob.sas.verify_macs(alice.account_key, alice.device_key, *reflected)


def test_sas_mac_from_another_exchange_fails(pair: tuple[Person, Person]) -> None:
    """MACs made under another shared secret do not verify."""
    alice, bob = pair
    carol = _person("alice", "PHONE", initiator=True)
    dave = _person("bob", "LAPTOP", initiator=False)
    _connect(carol, dave)
    macs = carol.sas.macs(alice.account_key, alice.device_key)
    with pytest.raises(SignatureError):
        bob.sas.verify_macs(alice.account_key, alice.device_key, *macs)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("txn", "txn-fedcba9876543210"),
        ("initiator_user", "alicia"),
        ("initiator_device", "TABLET"),
        ("responder_user", "bobby"),
        ("responder_device", "DESKTOP"),
    ],
)
def test_sas_info_binds_txn_and_both_identities(field: str, value: str) -> None:
    """With the same SAS keys, one side seeing another txn or identity shows other codes."""
    names = {
        "txn": TXN,
        "initiator_user": "alice",
        "initiator_device": "PHONE",
        "responder_user": "bob",
        "responder_device": "LAPTOP",
    }
    honest = SasExchange(TXN, "bob", "LAPTOP", initiator=False)
    names[field] = value
    initiator = SasExchange(
        names["txn"], names["initiator_user"], names["initiator_device"], initiator=True
    )
    initiator.accept_peer(names["responder_user"], names["responder_device"], honest.public_key)
    honest.accept_peer(
        "alice",
        "PHONE",
        initiator.public_key,
        commitment_of(TXN, initiator.public_key),
    )
    assert initiator.emoji() != honest.emoji()
    assert initiator.decimals() != honest.decimals()


def test_sas_rejects_identifiers_with_nul() -> None:
    """A NUL inside a part would let two different infos collide, so it is refused."""
    with pytest.raises(CryptoError, match="NUL"):
        SasExchange(TXN, "alice\0PHONE", "X", initiator=True)
    alice = _person("alice", "PHONE", initiator=True)
    bob = _person("bob", "LAPTOP", initiator=False)
    with pytest.raises(CryptoError, match="NUL"):
        alice.sas.accept_peer("bob\0LAPTOP", "", bob.sas.public_key)


def test_sas_emoji_table_has_64_distinct_entries() -> None:
    """The table is the Matrix one: 64 distinct emoji and names, Dog first and Pin last."""
    assert len(EMOJI) == 64
    assert len({emoji for emoji, _ in EMOJI}) == 64
    assert len({name for _, name in EMOJI}) == 64
    assert EMOJI[0] == ("🐶", "Dog")
    assert EMOJI[1] == ("🐱", "Cat")
    assert EMOJI[63] == ("📌", "Pin")


def test_sas_docstring_example_runs() -> None:
    """The whole-exchange example in the module docstring passes as a doctest."""
    result = doctest.testmod(obrolan.crypto.sas, raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0
