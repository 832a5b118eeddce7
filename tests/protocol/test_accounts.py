"""The account, linking, history and verification samples fit together and really open.

The samples of docs/protocol.md §17 to §22 tell one story: bob registers his
phone (list version 1), links his tablet (version 2, with the account secrets
sent to the tablet inside an Olm pre-key message), reclaims the account on a
desktop with his recovery code, and alice verifies bob with SAS. The keys are in
tests/data/vectors.json; the tests open every sealed thing with them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import vodozemac
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from obrolan.crypto.account import (
    AccountKey,
    LinkCode,
    open_device_list,
    open_name,
    open_successions,
)
from obrolan.crypto.sas import EMOJI, CommitmentMismatch, SasExchange
from obrolan.errors import SignatureError
from obrolan.protocol import content, frames

DATA = Path(__file__).resolve().parents[1] / "data"
VECTORS = json.loads((DATA / "vectors.json").read_text())
PICKLE_KEY = bytes.fromhex(VECTORS["pickle_key_hex"])


def raw(name: str) -> bytes:
    """The exact bytes of one golden sample."""
    return (DATA / f"{name}.json").read_bytes()


CLIENT_TAGS = {t.__struct_config__.tag for t in frames.ClientFrame.__args__}


def frame(name: str) -> Any:
    """A frame sample, decoded by the side that receives it."""
    data = raw(name)
    if json.loads(data)["type"] in CLIENT_TAGS:
        return frames.decode_client_frame(data)
    return frames.decode_server_frame(data)


def account(name: str) -> vodozemac.Account:
    """A sample device's Olm account."""
    return vodozemac.Account.from_pickle(VECTORS["accounts"][name], PICKLE_KEY)


def account_key(name: str) -> AccountKey:
    """A sample account key, from its seed."""
    return AccountKey(bytes.fromhex(VECTORS["account_seeds_hex"][name]))


def data_key(name: str) -> bytes:
    """A sample account's data key."""
    return bytes.fromhex(VECTORS["data_keys_hex"][name])


# --- device lists -------------------------------------------------------------------------------


def test_samples_carry_the_list_samples_bytes() -> None:
    """register and devices carry version 1; publish_devices, link secrets and devices_own v2."""
    first = frame("register").device_list
    second = frame("publish_devices").device_list
    assert first.device_list == raw("device_list")
    assert second.device_list == raw("device_list_linked")
    assert frame("devices").device_list == first
    assert frame("devices_own").device_list == second
    assert content.decode_link_secrets(raw("link_secrets")).device_list == second


def test_lists_verify_with_the_pinned_account_key() -> None:
    """Each list opens with its account's key and holds the devices the story says."""
    register, recover = frame("register"), frame("recover")
    bob, recovered = account_key("bob").public, account_key("bob_recovered").public
    first = open_device_list(register.device_list, "bob", bob)
    second = open_device_list(frame("publish_devices").device_list, "bob", bob)
    third = open_device_list(recover.device_list, "bob", recovered)
    offer = content.decode_link_offer(raw("new_device_offer"))
    assert (first.version, second.version, third.version) == (1, 2, 1)
    assert [d.keys for d in first.devices] == [register.device]
    assert [d.keys for d in second.devices] == [register.device, offer.device]
    assert second.devices[0] == first.devices[0]
    assert [d.keys for d in third.devices] == [recover.device]


def test_recovered_list_reads_as_a_changed_account_key() -> None:
    """Under bob's pinned (old) key the recovered account's list is refused: a changed key."""
    with pytest.raises(SignatureError):
        open_device_list(frame("recover").device_list, "bob", account_key("bob").public)


def test_recover_hands_the_account_to_the_recovered_list_key() -> None:
    """The recover frame's list names the new account key, not the old one."""
    listed = open_device_list(frame("recover").device_list, "bob", None)
    assert listed.account_key == account_key("bob_recovered").public
    assert listed.account_key != account_key("bob").public


def test_recovered_devices_prove_bobs_first_key_came_before() -> None:
    """§19.3: the succession's signatures are the register and recover samples' keys."""
    devices = frame("devices_recovered")
    assert isinstance(devices, frames.Devices)
    now = open_device_list(devices.device_list, "bob", None).account_key
    assert now == account_key("bob_recovered").public
    assert open_successions(devices.successions, "bob", now) == [account_key("bob").public]
    [record] = devices.successions
    assert record.recovery_key == frame("register").recovery_key
    assert record.recovery_signature == frame("recover").recovery_signature
    assert record.nonce == frame("challenge").nonce  # the recover sample's connection
    with pytest.raises(SignatureError):
        open_successions(devices.successions, "bob", account_key("bob").public)
    with pytest.raises(SignatureError):
        open_successions(devices.successions, "alice", now)


@pytest.mark.parametrize(
    ("sample", "owner"),
    [("device_list", "bob"), ("device_list_linked", "bob")],
)
def test_sealed_names_open_with_the_data_key(sample: str, owner: str) -> None:
    """Each device name opens with the account's data key, and its nonce is the vector's."""
    listed = msgspec.json.decode(raw(sample), type=frames.DeviceList)
    for device in listed.devices:
        device_id = device.keys.device_id
        assert open_name(data_key(owner), "bob", device_id, device.name) == device_id
        assert device.name[:12].hex() == VECTORS["name_nonces_hex"][device_id]


def test_recovered_name_opens_only_with_the_new_data_key() -> None:
    """After recovery the names are sealed with a new data key; the old one reads "?"."""
    listed = open_device_list(frame("recover").device_list, "bob", None)
    (desktop,) = listed.devices
    assert open_name(data_key("bob_recovered"), "bob", "desktop", desktop.name) == "desktop"
    assert open_name(data_key("bob"), "bob", "desktop", desktop.name) == "?"


# --- linking ------------------------------------------------------------------------------------


def test_link_offer_is_the_waiting_devices_sealed_offer() -> None:
    """link_offer returns link_wait's bytes; the link code opens them into the offer sample."""
    wait, offer = frame("link_wait"), frame("link_offer")
    code = LinkCode.parse(VECTORS["link_code"])
    assert wait.link_id == offer.link_id == frame("link_fetch").link_id == code.link_id
    assert offer.offer == wait.offer
    assert wait.offer[:12].hex() == VECTORS["offer_nonce_hex"]
    assert code.open_offer(wait.offer) == content.decode_link_offer(raw("new_device_offer"))


def test_link_offer_holds_the_tablets_own_keys() -> None:
    """The offer's device and one-time key are the tablet account's."""
    offer = content.decode_link_offer(raw("new_device_offer"))
    tablet = account("tablet")
    assert offer.username == "bob"
    assert offer.device.ed25519 == tablet.ed25519_key.to_base64()
    assert offer.device.curve25519 == tablet.curve25519_key.to_base64()


def test_link_answer_decrypts_to_the_link_secrets() -> None:
    """The approver's answer is a pre-key message the tablet opens into the LinkSecrets sample."""
    approve, answer = frame("link_approve"), frame("link_answer")
    assert approve.answer == answer.answer
    assert approve.link_id == answer.link_id == frame("link_wait").link_id
    assert frame("link_approved").id == approve.id
    sealed = content.decode_olm_ciphertext(answer.answer)
    assert sealed.message_type == content.OLM_PRE_KEY
    assert sealed.sender_key == frame("register").device.curve25519
    message = vodozemac.AnyOlmMessage.from_parts(sealed.message_type, sealed.body).to_pre_key()
    assert message is not None
    sender = vodozemac.Curve25519PublicKey.from_base64(sealed.sender_key)
    _, plaintext = account("tablet").create_inbound_session(sender, message)
    assert plaintext == raw("link_secrets")


def test_link_secrets_make_the_tablet_a_device_of_the_account() -> None:
    """The account secret is the key that signed the list, which holds the offered device."""
    secrets = content.decode_link_secrets(raw("link_secrets"))
    offer = content.decode_link_offer(raw("new_device_offer"))
    key = AccountKey(secrets.account_secret)
    listed = open_device_list(secrets.device_list, secrets.username, key.public)
    approver = [d.keys for d in listed.devices if d.keys.device_id == secrets.approver_device]
    assert key.public == account_key("bob").public
    assert secrets.data_key == data_key("bob")
    assert offer.device in [d.keys for d in listed.devices]
    assert approver == [frame("register").device]
    assert frame("devices_published").version == listed.version


def test_link_secrets_hand_the_tablet_bobs_pin_of_alice() -> None:
    """The one contact is alice, with the account key that signs her group updates (§23)."""
    secrets = content.decode_link_secrets(raw("link_secrets"))
    assert secrets.contacts == [
        content.LinkedContact(
            username="alice",
            account_key=account_key("alice").public,
            verified=True,
            list_version=1,
            conversation="accepted",
            timer_seconds=None,
        )
    ]


# --- history, self-sync, sent -------------------------------------------------------------------


def test_history_sample_goes_from_one_own_device_to_another() -> None:
    """history goes from bob's phone to bob's tablet, uncounted, with a fresh 43-char passphrase."""
    plain = content.decode_plaintext(raw("plaintext_history"))
    body = plain.content
    assert isinstance(body, content.HistoryTransfer)
    assert (plain.sender, plain.recipient) == ("bob", "bob")
    assert (plain.sender_device, plain.recipient_device) == ("phone", "tablet")
    assert plain.counter is None and plain.sent_to is None
    assert len(body.archive_passphrase) == 43
    assert len(base64.urlsafe_b64decode(body.archive_passphrase + "=")) == 32
    assert len(body.archive.key) == len(body.archive.sha256) == 32


def test_contact_update_goes_from_one_own_device_to_another() -> None:
    """bob's phone tells his tablet it verified alice: own account, no counter, alice's key."""
    plain = content.decode_plaintext(raw("plaintext_contact"))
    body = plain.content
    assert isinstance(body, content.ContactUpdate)
    assert (plain.sender, plain.recipient) == ("bob", "bob")
    assert (plain.sender_device, plain.recipient_device) == ("phone", "tablet")
    assert plain.counter is None and plain.sent_to is None
    assert body.contact.account_key == account_key("alice").public and body.contact.verified


def test_sent_to_copy_is_addressed_to_the_senders_own_device() -> None:
    """A sent transcript names the sender's own account as recipient and the peer in sent_to."""
    plain = content.decode_plaintext(raw("plaintext_sent_to"))
    assert plain.recipient == plain.sender == "bob"
    assert plain.recipient_device != plain.sender_device
    assert plain.sent_to == "alice" and plain.counter is not None


def test_skipped_envelopes_are_not_among_the_stored() -> None:
    """A skipped envelope is not listed as stored."""
    sent = frame("sent_skipped")
    assert sent.skipped and not set(sent.skipped) & set(sent.envelope_ids)


# --- SAS ----------------------------------------------------------------------------------------


TXN = "n0T75yZtdeoEfXsA4QBJmA"


def spec_sas_key() -> tuple[X25519PrivateKey, str]:
    """The spec side's SAS key (bob's phone in §22.3's vector), and its public key."""
    key = X25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["sas_private_keys_hex"]["bob"]))
    return key, base64.b64encode(key.public_key().public_bytes_raw()).decode().rstrip("=")


def hkdf(secret: bytes, info: str, length: int) -> bytes:
    """§22.2: HKDF-SHA256 with an empty salt."""
    kdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=b"", info=info.encode())
    return kdf.derive(secret)


def spec_mac(shared: bytes, text: str, info: str) -> str:
    """§22.3: HMAC-SHA256 keyed by HKDF of the shared secret, unpadded base64."""
    tag = hmac.new(hkdf(shared, info, 32), text.encode(), hashlib.sha256).digest()
    return base64.b64encode(tag).decode().rstrip("=")


def commitment(public_key: str) -> bytes:
    """§22.2: the commitment to an initiator's SAS key."""
    return hashlib.sha256(f"obrolan-sas-commit-v1\0{TXN}\0{public_key}".encode()).digest()


@pytest.mark.parametrize("initiator", [True, False], ids=["code-initiates", "code-responds"])
def test_sas_exchange_agrees_with_the_spec_reading(initiator: bool) -> None:
    """crypto/sas.py (vodozemac) and §22 read literally (X25519, HKDF, HMAC) give equal values."""
    spec_key, spec_public = spec_sas_key()
    ours = SasExchange(TXN, "alice", "laptop", initiator=initiator)
    if initiator:
        assert ours.commitment == commitment(ours.public_key)
        ours.accept_peer("bob", "phone", spec_public)
        sides = ["alice", "laptop", ours.public_key, "bob", "phone", spec_public]
    else:
        ours.accept_peer("bob", "phone", spec_public, commitment(spec_public))
        sides = ["bob", "phone", spec_public, "alice", "laptop", ours.public_key]
    peer = X25519PublicKey.from_public_bytes(base64.b64decode(ours.public_key + "="))
    shared = spec_key.exchange(peer)
    bits = int.from_bytes(hkdf(shared, "\0".join(["obrolan-sas-v1", TXN, *sides]), 6), "big")
    assert ours.emoji() == [EMOJI[(bits >> (42 - 6 * i)) & 63] for i in range(7)]
    assert ours.decimals() == tuple(((bits >> (35 - 13 * i)) & 0x1FFF) + 1000 for i in range(3))
    keys = (account_key("alice").public, account("alice").ed25519_key.to_base64())
    info = f"obrolan-sas-mac-v1\0{TXN}\0alice\0laptop\0"
    assert ours.macs(*keys) == (
        spec_mac(shared, keys[0], info + "account"),
        spec_mac(shared, keys[1], info + "device"),
    )
    bob_keys = (account_key("bob").public, frame("register").device.ed25519)
    bob_info = f"obrolan-sas-mac-v1\0{TXN}\0bob\0phone\0"
    ours.verify_macs(
        *bob_keys,
        spec_mac(shared, bob_keys[0], bob_info + "account"),
        spec_mac(shared, bob_keys[1], bob_info + "device"),
    )


def test_sas_exchange_refuses_a_key_that_breaks_the_commitment() -> None:
    """The responder refuses an initiator's key that is not the committed one (bad_commitment)."""
    _, spec_public = spec_sas_key()
    ours = SasExchange(TXN, "bob", "phone", initiator=False)
    with pytest.raises(CommitmentMismatch):
        ours.accept_peer("alice", "laptop", spec_public, commitment(ours.public_key))
