"""The exact bytes every signature covers, and the golden samples' real signatures.

The samples in tests/data were signed by two real vodozemac accounts whose
pickles are in tests/data/vectors.json; Ed25519 is deterministic, so signing
the same bytes again must give the very signature in the sample.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import vodozemac

from obrolan.crypto.signatures import verify
from obrolan.errors import SignatureError
from obrolan.protocol.signing import auth_bytes, device_keys_bytes, one_time_key_bytes

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SPEC = ROOT / "docs" / "protocol.md"


def sample(name: str) -> dict[str, Any]:
    """A golden sample as JSON values."""
    value: dict[str, Any] = json.loads((DATA / f"{name}.json").read_bytes())
    return value


def account(name: str) -> vodozemac.Account:
    """The vodozemac account that signed the samples for ``name``."""
    vectors = json.loads((DATA / "vectors.json").read_text())
    return vodozemac.Account.from_pickle(
        vectors["accounts"][name], bytes.fromhex(vectors["pickle_key_hex"])
    )


NONCE = bytes(range(32))
"""The challenge sample's nonce."""


def signed_items() -> list[tuple[str, str, bytes, str]]:
    """(sample, signer, signed bytes, signature) for every signature in the samples."""
    register, auth = sample("register"), sample("authenticate")
    upload, claimed = sample("upload_keys"), sample("claimed_keys_fallback")
    device = register["device"]
    items = [
        ("register", "bob", auth_bytes(NONCE, "bob", device["device_id"]), register["signature"]),
        (
            "register",
            "bob",
            device_keys_bytes("bob", device["device_id"], device["ed25519"], device["curve25519"]),
            device["signature"],
        ),
        ("authenticate", "alice", auth_bytes(NONCE, "alice", auth["device_id"]), auth["signature"]),
    ]
    keys = [
        *(("register", "bob", k) for k in [*register["one_time_keys"], register["fallback_key"]]),
        *(("upload_keys", "alice", k) for k in [*upload["one_time_keys"], upload["fallback_key"]]),
        ("claimed_keys", "bob", sample("claimed_keys")["devices"][0]["one_time_key"]),
        ("claimed_keys_fallback", "bob", claimed["devices"][0]["one_time_key"]),
    ]
    items += [
        (s, who, one_time_key_bytes(k["key_id"], k["key"]), k["signature"]) for s, who, k in keys
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


def test_signing_encodes_strings_as_utf8() -> None:
    """Text fields are signed as their UTF-8 bytes."""
    assert auth_bytes(b"n", "bób", "d") == "obrolan-auth-v1\x00n\x00bób\x00d".encode()


@pytest.mark.parametrize(("name", "signer", "data", "signature"), signed_items())
def test_sample_signature_verifies_with_signer_key(
    name: str, signer: str, data: bytes, signature: str
) -> None:
    """Every signature in the samples verifies over the documented bytes."""
    verify(account(signer).ed25519_key.to_base64(), data, signature)


@pytest.mark.parametrize(("name", "signer", "data", "signature"), signed_items())
def test_sample_signature_is_reproducible(
    name: str, signer: str, data: bytes, signature: str
) -> None:
    """Signing the documented bytes again gives exactly the sample's signature."""
    assert account(signer).sign(data).to_base64() == signature


def test_signature_for_one_purpose_fails_for_another() -> None:
    """Domain labels keep a device self-signature from passing as an authentication."""
    device = sample("register")["device"]
    with pytest.raises(SignatureError):
        verify(device["ed25519"], auth_bytes(NONCE, "bob", "phone"), device["signature"])


def test_spec_hex_vectors_are_the_signed_bytes() -> None:
    """The hex test vectors in docs/protocol.md §11 are exactly what signing.py produces."""
    text = SPEC.read_text()
    section = text[text.index("### Test vectors") : text.index("## 12.")]
    blocks = re.findall(r"```text\n(.*?)\n```", section, re.DOTALL)
    device = sample("register")["device"]
    first_key = sample("register")["one_time_keys"][0]
    expected = [
        auth_bytes(NONCE, "bob", "phone"),
        device_keys_bytes("bob", "phone", device["ed25519"], device["curve25519"]),
        one_time_key_bytes(first_key["key_id"], first_key["key"]),
    ]
    assert [bytes.fromhex(block) for block in blocks] == expected
    assert all(" 00 " in block for block in blocks)  # one hex group per field
