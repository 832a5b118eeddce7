"""Key derivation: Argon2id from passphrases, random keys, HKDF sub-keys."""

from __future__ import annotations

import msgspec
import pytest

from obrolan.crypto import KEY_BYTES, Argon2Params, derive_key, random_key, subkey
from obrolan.errors import CryptoError

# Small parameters keep these tests quick; the defaults are checked separately.
_SALT = bytes(range(16))
_FAST = Argon2Params(salt=_SALT, iterations=1, lanes=1, memory_cost_kib=64)


def test_derive_key_is_deterministic_for_same_params() -> None:
    """The same passphrase and parameters give the same 32-byte key."""
    key = derive_key("correct horse", _FAST)
    assert len(key) == KEY_BYTES
    assert derive_key("correct horse", _FAST) == key


def test_derive_key_differs_for_salt_passphrase_and_cost() -> None:
    """Changing the salt, the passphrase or a cost parameter changes the key."""
    key = derive_key("correct horse", _FAST)
    other_salt = msgspec.structs.replace(_FAST, salt=bytes(16))
    more_iterations = msgspec.structs.replace(_FAST, iterations=2)
    assert derive_key("correct horse", other_salt) != key
    assert derive_key("correct horsf", _FAST) != key
    assert derive_key("correct horse", more_iterations) != key


def test_derive_key_normalizes_unicode_passphrases() -> None:
    """Composed and decomposed forms of the same letters give the same key."""
    assert derive_key("caf\u00e9", _FAST) == derive_key("cafe\u0301", _FAST)


def test_derive_key_rejects_impossible_params_with_crypto_error() -> None:
    """Memory below Argon2's minimum of 8 KiB per lane raises CryptoError."""
    too_little_memory = Argon2Params(salt=_SALT, iterations=1, lanes=4, memory_cost_kib=16)
    with pytest.raises(CryptoError, match="Argon2id"):
        derive_key("pw", too_little_memory)


def test_argon2_params_new_uses_fresh_salt_and_interactive_defaults() -> None:
    """new() picks a fresh 16-byte salt each time and RFC 9106's t=3, p=4, 64 MiB."""
    first, second = Argon2Params.new(), Argon2Params.new()
    assert len(first.salt) == 16
    assert first.salt != second.salt
    assert (first.iterations, first.lanes, first.memory_cost_kib) == (3, 4, 64 * 1024)
    assert len(derive_key("pw", first)) == KEY_BYTES


def test_argon2_params_round_trip_json_and_reject_out_of_bounds() -> None:
    """Params survive JSON (salt as base64); absurd values are refused on decode."""
    params = Argon2Params.new()
    data = msgspec.json.encode(params)
    assert msgspec.json.decode(data, type=Argon2Params) == params
    huge = msgspec.json.encode(msgspec.structs.replace(params, memory_cost_kib=2**40))
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(huge, type=Argon2Params)


def test_random_key_gives_distinct_32_byte_keys() -> None:
    """random_key() returns 32 fresh bytes each call."""
    first, second = random_key(), random_key()
    assert len(first) == len(second) == KEY_BYTES
    assert first != second


def test_subkey_labels_give_different_keys() -> None:
    """Different labels or masters give different sub-keys; the same pair is stable."""
    master = random_key()
    pickle_key = subkey(master, "pickle")
    assert len(pickle_key) == KEY_BYTES
    assert subkey(master, "pickle") == pickle_key
    assert subkey(master, "attachments") != pickle_key
    assert subkey(random_key(), "pickle") != pickle_key
    assert pickle_key != master


def test_subkey_rejects_master_of_wrong_length() -> None:
    """A master key that is not 32 bytes raises CryptoError."""
    with pytest.raises(CryptoError, match="master key is 16 bytes"):
        subkey(bytes(16), "pickle")
