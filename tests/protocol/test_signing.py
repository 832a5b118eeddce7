"""The exact bytes every signature covers, and the golden samples' real signatures.

The samples in tests/data were signed by real vodozemac accounts (device keys)
whose pickles are in tests/data/vectors.json, and by Ed25519 keys made from the
seeds there (account keys) or derived from the recovery codes there (recovery
keys). Ed25519 is deterministic, so signing the same bytes again must give the
very signature in the sample.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import vodozemac
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from obrolan.crypto.account import AccountKey, RecoveryCode
from obrolan.crypto.signatures import verify
from obrolan.errors import SignatureError
from obrolan.protocol.signing import (
    auth_bytes,
    device_keys_bytes,
    device_list_bytes,
    group_message_bytes,
    group_update_bytes,
    one_time_key_bytes,
    recover_bytes,
    recovery_key_bytes,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SPEC = ROOT / "docs" / "protocol.md"
VECTORS = json.loads((DATA / "vectors.json").read_text())


def raw(name: str) -> bytes:
    """The exact bytes of one golden sample."""
    return (DATA / f"{name}.json").read_bytes()


def sample(name: str) -> dict[str, Any]:
    """A golden sample as JSON values."""
    value: dict[str, Any] = json.loads((DATA / f"{name}.json").read_bytes())
    return value


def account(name: str) -> vodozemac.Account:
    """The vodozemac account that signed the samples for ``name``."""
    return vodozemac.Account.from_pickle(
        VECTORS["accounts"][name], bytes.fromhex(VECTORS["pickle_key_hex"])
    )


def seed_key(seed: bytes) -> Ed25519PrivateKey:
    """An account or recovery key from its 32-byte seed, as the spec makes it."""
    return Ed25519PrivateKey.from_private_bytes(seed)


def public(key: Ed25519PrivateKey) -> str:
    """The unpadded base64 public key."""
    return base64.b64encode(key.public_key().public_bytes_raw()).decode().rstrip("=")


def account_key(name: str) -> Ed25519PrivateKey:
    """An account key of the samples (alice, bob, bob_recovered)."""
    return seed_key(bytes.fromhex(VECTORS["account_seeds_hex"][name]))


def recovery_key(name: str) -> Ed25519PrivateKey:
    """The recovery key of a sample recovery code (``register``, ``recover``)."""
    code = RecoveryCode.parse(VECTORS["recovery_codes"][name])
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"", info=b"obrolan-recovery-v1")
    return seed_key(hkdf.derive(code.code.encode()))


NONCE = bytes(range(32))
"""The challenge sample's nonce."""


def device_signatures() -> list[tuple[str, str, bytes, str]]:
    """(sample, signer, signed bytes, signature) for every device signature in the samples."""
    register, auth, recover = sample("register"), sample("authenticate"), sample("recover")
    upload, claimed = sample("upload_keys"), sample("claimed_keys_fallback")
    offer = json.loads((DATA / "new_device_offer.json").read_bytes())
    items = [
        ("register", "bob", auth_bytes(NONCE, "bob", "phone"), register["signature"]),
        ("authenticate", "alice", auth_bytes(NONCE, "alice", auth["device_id"]), auth["signature"]),
        ("recover", "desktop", auth_bytes(NONCE, "bob", "desktop"), recover["signature"]),
    ]
    devices = [
        ("register", "bob", register["device"]),
        ("recover", "desktop", recover["device"]),
        ("new_device_offer", "tablet", offer["device"]),
    ]
    items += [
        (
            s,
            who,
            device_keys_bytes("bob", d["device_id"], d["ed25519"], d["curve25519"]),
            d["signature"],
        )
        for s, who, d in devices
    ]
    keys = [
        *(("register", "bob", k) for k in [*register["one_time_keys"], register["fallback_key"]]),
        *(("recover", "desktop", k) for k in [*recover["one_time_keys"], recover["fallback_key"]]),
        *(("upload_keys", "alice", k) for k in [*upload["one_time_keys"], upload["fallback_key"]]),
        ("claimed_keys", "bob", sample("claimed_keys")["devices"][0]["one_time_key"]),
        ("claimed_keys_fallback", "bob", claimed["devices"][0]["one_time_key"]),
        ("new_device_offer", "tablet", offer["one_time_key"]),
    ]
    items += [
        (s, who, one_time_key_bytes(k["key_id"], k["key"]), k["signature"]) for s, who, k in keys
    ]
    welcome, spam = sample("signed_group_message"), sample("plaintext_group_report")
    spam = spam["content"]["reported"]
    items += [
        (
            "signed_group_message",
            "alice",
            group_message_bytes(raw("group_message")),
            welcome["signature"],
        ),
        (
            "plaintext_group_report",
            "bob",
            group_message_bytes(base64.b64decode(spam["message"])),
            spam["signature"],
        ),
    ]
    return items


def signed_list(name: str, *path: str) -> dict[str, str]:
    """The SignedDeviceList at ``path`` inside a sample."""
    value: Any = sample(name)
    for part in path:
        value = value[part]
    return dict(value)


def account_signatures() -> list[tuple[str, Ed25519PrivateKey, bytes, str]]:
    """(sample, key, signed bytes, signature) for every account and recovery key signature."""
    lists = [
        ("register", "bob", signed_list("register", "device_list")),
        ("devices", "bob", signed_list("devices", "device_list")),
        ("publish_devices", "bob", signed_list("publish_devices", "device_list")),
        ("recover", "bob_recovered", signed_list("recover", "device_list")),
    ]
    items = [
        (s, account_key(who), device_list_bytes(base64.b64decode(d["device_list"])), d["signature"])
        for s, who, d in lists
    ]
    new_account_key = public(account_key("bob_recovered"))
    recover, set_recovery = sample("recover"), sample("set_recovery")
    chain = sample("plaintext_group_state")["content"]["updates"]
    items += [
        (
            f"plaintext_group_state[{seq}]",
            account_key("alice"),
            group_update_bytes(base64.b64decode(signed["update"])),
            signed["signature"],
        )
        for seq, signed in enumerate(chain)
    ]
    items += [
        (
            "set_recovery",
            account_key("bob"),
            recovery_key_bytes("bob", set_recovery["recovery_key"]),
            set_recovery["signature"],
        ),
        (
            "recover",
            recovery_key("register"),
            recover_bytes(NONCE, "bob", new_account_key, recover["recovery_key"]),
            recover["recovery_signature"],
        ),
    ]
    return items


def test_signing_builds_exact_auth_bytes() -> None:
    """auth_bytes is the label, the raw nonce, username and device id joined by NUL."""
    assert auth_bytes(b"\x00\xff" * 16, "bob", "phone") == (
        b"obrolan-auth-v1\x00" + b"\x00\xff" * 16 + b"\x00bob\x00phone"
    )


def test_signing_builds_exact_device_keys_bytes() -> None:
    """device_keys_bytes joins the label, username, device id and both base64 keys by NUL."""
    ed, cu = "E" * 43, "C" * 43
    assert device_keys_bytes("bob", "phone", ed, cu) == (
        b"obrolan-device-v1\x00bob\x00phone\x00" + b"E" * 43 + b"\x00" + b"C" * 43
    )


def test_signing_builds_exact_one_time_key_bytes() -> None:
    """one_time_key_bytes joins the label, key id and base64 key by NUL."""
    assert (
        one_time_key_bytes("AAAAAAAAAAE", "K" * 43)
        == b"obrolan-otk-v1\x00AAAAAAAAAAE\x00" + b"K" * 43
    )


def test_signing_builds_exact_device_list_bytes() -> None:
    """device_list_bytes is the label, NUL, and the list's exact bytes (never re-encoded)."""
    body = b'{"username": "bob" ,"version":1}'
    assert device_list_bytes(body) == b"obrolan-device-list-v1\x00" + body


def test_signing_builds_exact_recovery_key_bytes() -> None:
    """recovery_key_bytes joins the label, username and base64 recovery key by NUL."""
    assert recovery_key_bytes("bob", "R" * 43) == b"obrolan-recovery-key-v1\x00bob\x00" + b"R" * 43


def test_signing_builds_exact_recover_bytes() -> None:
    """recover_bytes joins the label, raw nonce, username, new account key and new recovery key."""
    assert recover_bytes(b"\x00\xff" * 16, "bob", "A" * 43, "R" * 43) == (
        b"obrolan-recover-v1\x00"
        + b"\x00\xff" * 16
        + b"\x00bob\x00"
        + b"A" * 43
        + b"\x00"
        + b"R" * 43
    )


def test_signing_builds_exact_group_update_bytes() -> None:
    """group_update_bytes is the label, NUL, and the update's exact bytes (never re-encoded)."""
    body = b'{"seq": 1 ,"group_id":"x"}'
    assert group_update_bytes(body) == b"obrolan-group-update-v1\x00" + body


def test_signing_builds_exact_group_message_bytes() -> None:
    """group_message_bytes is the label, NUL, and the message's exact bytes."""
    body = b'{"text":"halo"}'
    assert group_message_bytes(body) == b"obrolan-group-message-v1\x00" + body


def test_signing_encodes_strings_as_utf8() -> None:
    """Text fields are signed as their UTF-8 bytes."""
    assert auth_bytes(b"n", "bób", "d") == "obrolan-auth-v1\x00n\x00bób\x00d".encode()


@pytest.mark.parametrize(("name", "signer", "data", "signature"), device_signatures())
def test_sample_signature_verifies_with_signer_key(
    name: str, signer: str, data: bytes, signature: str
) -> None:
    """Every device signature in the samples verifies over the documented bytes."""
    verify(account(signer).ed25519_key.to_base64(), data, signature)


@pytest.mark.parametrize(("name", "signer", "data", "signature"), device_signatures())
def test_sample_signature_is_reproducible(
    name: str, signer: str, data: bytes, signature: str
) -> None:
    """Signing the documented bytes again gives exactly the sample's signature."""
    assert account(signer).sign(data).to_base64() == signature


@pytest.mark.parametrize(("name", "key", "data", "signature"), account_signatures())
def test_sample_account_signature_verifies_and_is_reproducible(
    name: str, key: Ed25519PrivateKey, data: bytes, signature: str
) -> None:
    """Account and recovery key signatures verify over the documented bytes, and re-sign equal."""
    verify(public(key), data, signature)
    assert base64.b64encode(key.sign(data)).decode().rstrip("=") == signature


def test_sample_account_keys_are_account_keys_from_the_seeds() -> None:
    """The lists name the account key made from the vector seed (as AccountKey makes it)."""
    for name, who in (("register", "bob"), ("recover", "bob_recovered")):
        listed = json.loads(base64.b64decode(sample(name)["device_list"]["device_list"]))
        seed = bytes.fromhex(VECTORS["account_seeds_hex"][who])
        assert listed["account_key"] == public(seed_key(seed)) == AccountKey(seed).public


def test_signature_for_one_purpose_fails_for_another() -> None:
    """Domain labels keep a device self-signature from passing as an authentication."""
    device = sample("register")["device"]
    with pytest.raises(SignatureError):
        verify(device["ed25519"], auth_bytes(NONCE, "bob", "phone"), device["signature"])


def test_account_signature_over_a_list_fails_for_a_recovery_key() -> None:
    """A list signature cannot pass as a set_recovery signature, nor for another list."""
    signed = sample("register")["device_list"]
    key = public(account_key("bob"))
    recovery = recovery_key_bytes("bob", sample("register")["recovery_key"])
    with pytest.raises(SignatureError):
        verify(key, recovery, signed["signature"])
    other = base64.b64decode(sample("publish_devices")["device_list"]["device_list"])
    with pytest.raises(SignatureError):
        verify(key, device_list_bytes(other), signed["signature"])


def test_spec_hex_vectors_are_the_signed_bytes() -> None:
    """The hex test vectors in docs/protocol.md §11 are exactly what signing.py produces."""
    text = SPEC.read_text()
    section = text[text.index("### Test vectors") : text.index("## 12.")]
    blocks = re.findall(r"```text\n(.*?)\n```", section, re.DOTALL)
    register, recover = sample("register"), sample("recover")
    device = register["device"]
    first_key = register["one_time_keys"][0]
    expected = [
        auth_bytes(NONCE, "bob", "phone"),
        device_keys_bytes("bob", "phone", device["ed25519"], device["curve25519"]),
        one_time_key_bytes(first_key["key_id"], first_key["key"]),
        device_list_bytes(base64.b64decode(register["device_list"]["device_list"])),
        recovery_key_bytes("bob", sample("set_recovery")["recovery_key"]),
        recover_bytes(NONCE, "bob", public(account_key("bob_recovered")), recover["recovery_key"]),
        group_update_bytes(raw("group_update_create")),
        group_message_bytes(raw("group_message")),
    ]
    assert [bytes.fromhex(block) for block in blocks] == expected
    assert all(" 00 " in block for block in blocks)  # one hex group per field


def test_group_signatures_do_not_pass_for_each_other() -> None:
    """An account key's group update signature is no list signature; a device's group message
    signature is no self-signature: the labels keep each signature to its purpose."""
    update = raw("group_update_create")
    signed = sample("plaintext_group_state")["content"]["updates"][0]
    assert base64.b64decode(signed["update"]) == update
    with pytest.raises(SignatureError):
        verify(public(account_key("alice")), device_list_bytes(update), signed["signature"])
    message = sample("signed_group_message")
    alice = account("alice").ed25519_key.to_base64()
    verify(alice, group_message_bytes(raw("group_message")), message["signature"])
    with pytest.raises(SignatureError):
        verify(alice, group_update_bytes(raw("group_message")), message["signature"])
