"""Every decoder of bytes from outside raises only ObrolanError, whatever the bytes.

The golden samples of tests/data are mutated (bytes flipped, cut short, bytes that are
not UTF-8 put inside JSON strings, values nested far deeper than msgspec's parser
follows, random bytes inserted) and fed to every wire and content decoder. A bounded,
seeded set of cases: the same cases on every run, so a failure can be replayed.
Anything but an ObrolanError coming out (UnicodeDecodeError, RecursionError, ...)
would stop a device's inbox or the relay's reader for good.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from obrolan.errors import ObrolanError
from obrolan.protocol import blobs, content, frames, groups
from obrolan.protocol.decoding import decode_json
from obrolan.protocol.deliver_salvage import salvage_deliver

DATA = Path(__file__).resolve().parents[1] / "data"
SEED = 20261203
CASES_PER_SAMPLE = 48
"""Mutations of each sample; every decoder sees each of them."""

DECODERS: dict[str, Callable[[bytes], object]] = {
    "client_frame": frames.decode_client_frame,
    "server_frame": frames.decode_server_frame,
    "salvage_deliver": salvage_deliver,
    "olm_ciphertext": content.decode_olm_ciphertext,
    "plaintext": content.decode_plaintext,
    "content": content.decode_content,
    "link_offer": content.decode_link_offer,
    "link_secrets": content.decode_link_secrets,
    "group_update": groups.decode_group_update,
    "group_message": groups.decode_group_message,
    "signed_group_message": groups.decode_signed_group_message,
    "group_ciphertext": groups.decode_group_ciphertext,
    "create_blob": blobs.decode_create_blob,
    "blob_created": blobs.decode_blob_created,
    "http_error": blobs.decode_http_error,
    "device_list": lambda data: decode_json(data, frames.DeviceList, "device list"),
}
"""Each decoder a receiver runs on bytes it did not make (protocol/*.decode_*)."""

INVALID_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80\x80", b"\xc0\xaf"]


def _samples() -> Iterator[tuple[str, bytes]]:
    """Every golden sample, and the JSON hidden inside them (base64 fields, content)."""
    for path in sorted(DATA.glob("*.json")):
        if path.stem == "vectors":
            continue
        data = path.read_bytes()
        yield path.stem, data
        for key, inner in _inner(json.loads(data)):
            yield f"{path.stem}.{key}", inner


def _inner(value: Any, key: str = "") -> Iterator[tuple[str, bytes]]:
    # Bytes fields whose base64 holds JSON (a ciphertext, a signed update) and the
    # content of a plaintext are decoded by receivers too.
    if isinstance(value, dict):
        if key == "content":
            yield key, json.dumps(value).encode()
        for k, v in value.items():
            yield from _inner(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _inner(v, key)
    elif isinstance(value, str) and len(value) > 8:
        try:
            decoded = base64.b64decode(value, validate=True)
            json.loads(decoded)
        except ValueError:
            return
        yield key, decoded


def _string_positions(data: bytes) -> list[int]:
    """Offsets just inside a JSON string (after an opening quote)."""
    return [i + 1 for i, b in enumerate(data) if b == ord('"')]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    kind = rng.randrange(7)
    if kind == 0:  # flip some bytes
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == 1:  # cut short
        return data[: rng.randrange(len(data))]
    if kind == 2:  # bytes that are not UTF-8 inside a JSON string
        at = rng.choice(_string_positions(data) or [0])
        return data[:at] + rng.choice(INVALID_UTF8) + data[at:]
    if kind == 3:  # a value nested far too deep, in place of a value or a string
        depth = rng.choice([1_000, 100_000])
        opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        at = rng.choice(_string_positions(data) or [1]) - 1
        return data[:at] + opener * depth + b"1" + closer * depth + data[at:]
    if kind == 4:  # random bytes inserted
        at = rng.randrange(len(data) + 1)
        return data[:at] + rng.randbytes(rng.randint(1, 8)) + data[at:]
    if kind == 5:  # a number too large for any field
        at = rng.choice(_string_positions(data) or [1]) - 1
        return (
            data[:at]
            + rng.choice([b"1" * 400, b"1e400", b"-0", b"18446744073709551616"])
            + data[at:]
        )
    # a whole sample nested inside itself, deep
    return b'{"type":"deliver","envelopes":[' * 200 + data + b"]}" * 200


def _cases() -> list[tuple[str, bytes]]:
    rng = random.Random(SEED)
    cases = []
    for name, data in _samples():
        for number in range(CASES_PER_SAMPLE):
            cases.append((f"{name}#{number}", _mutate(rng, data)))
    return cases


CASES = _cases()


def test_fuzz_covers_every_sample_with_bounded_cases() -> None:
    """The cases are many enough to mean something, and few enough to stay quick."""
    assert 2_000 < len(CASES) < 20_000
    assert len({name.split("#")[0].split(".")[0] for name, _ in CASES}) >= 60


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_decoder_raises_only_obrolan_errors_on_mutated_samples(decoder: str) -> None:
    """Whatever msgspec says about the bytes, the decoder says it as an ObrolanError."""
    decode = DECODERS[decoder]
    escaped = []
    for name, data in CASES:
        try:
            decode(data)
        except ObrolanError:
            pass
        except BaseException as exc:  # noqa: BLE001 - what the test looks for
            escaped.append(f"{name}: {type(exc).__name__}: {str(exc)[:80]}")
    assert not escaped, f"{len(escaped)} cases escaped, first: {escaped[:5]}"


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"type":"ack","envelope_ids":["\xff"]}', id="invalid-utf8"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-array"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="deep-object"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\xff\xfe", id="binary"),
    ],
)
def test_decoder_raises_only_obrolan_errors_on_hostile_bytes(decoder: str, data: bytes) -> None:
    """The named attacks, on every decoder."""
    with pytest.raises(ObrolanError):
        DECODERS[decoder](data) if decoder != "salvage_deliver" else _salvaged(data)


def _salvaged(data: bytes) -> None:
    # salvage_deliver answers None for what is not a deliver frame: that is its refusal.
    if salvage_deliver(data) is None:
        raise ObrolanError("not a deliver frame")
