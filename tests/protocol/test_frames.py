"""The frame codec against the golden samples in tests/data, and its errors.

Each sample file holds the exact bytes ``frames.encode`` produces (compact
JSON, no trailing newline): decoding it and encoding the result must give the
same bytes back. docs/protocol.md embeds the same files (see test_spec.py).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import msgspec
import pytest

from obrolan.errors import RemoteProtocolError
from obrolan.protocol import content, frames, groups
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.deliver_salvage import salvage_deliver
from obrolan.protocol.limits import SUPPORTED_VERSIONS, Limits

DATA = Path(__file__).resolve().parents[1] / "data"

CONTENT_SAMPLES: dict[str, type[msgspec.Struct]] = {
    "olm_ciphertext": content.OlmCiphertext,
    "olm_ciphertext_reply": content.OlmCiphertext,
    "plaintext": content.Plaintext,
    "plaintext_reply": content.Plaintext,
    "plaintext_sent_to": content.Plaintext,
    "plaintext_history": content.Plaintext,
    "plaintext_contact": content.Plaintext,
    "plaintext_verify_start": content.Plaintext,
    "plaintext_verify_key": content.Plaintext,
    "plaintext_verify_mac": content.Plaintext,
    "plaintext_verify_cancel": content.Plaintext,
    "new_device_offer": content.NewDeviceOffer,
    "link_secrets": content.LinkSecrets,
    "device_list": frames.DeviceList,
    "device_list_linked": frames.DeviceList,
    "group_update_create": groups.GroupUpdate,
    "group_update_add": groups.GroupUpdate,
    "group_update_mute": groups.GroupUpdate,
    "group_update_invite": groups.GroupUpdate,
    "group_message": groups.GroupMessage,
    "signed_group_message": groups.SignedGroupMessage,
    "group_ciphertext": groups.GroupCiphertext,
    "plaintext_group_state": content.Plaintext,
    "plaintext_group_key": content.Plaintext,
    "plaintext_group_join": content.Plaintext,
    "plaintext_group_report": content.Plaintext,
}
"""Samples of what travels inside ciphertext, sealed offers and signed lists, with their type."""
DECODERS = {
    content.OlmCiphertext: content.decode_olm_ciphertext,
    content.Plaintext: content.decode_plaintext,
    content.NewDeviceOffer: content.decode_link_offer,
    content.LinkSecrets: content.decode_link_secrets,
    frames.DeviceList: msgspec.json.Decoder(frames.DeviceList).decode,
    groups.GroupUpdate: groups.decode_group_update,
    groups.GroupMessage: groups.decode_group_message,
    groups.SignedGroupMessage: groups.decode_signed_group_message,
    groups.GroupCiphertext: groups.decode_group_ciphertext,
}
"""How a receiver decodes each of them."""
NOT_FRAMES = {*CONTENT_SAMPLES, "info", "vectors"}
"""The HTTP info answer and the crypto test vectors are not WebSocket frames."""
FRAME_SAMPLES = sorted(p.stem for p in DATA.glob("*.json") if p.stem not in NOT_FRAMES)
CLIENT_TAGS = {t.__struct_config__.tag for t in frames.ClientFrame.__args__}
SERVER_TAGS = {t.__struct_config__.tag for t in frames.ServerFrame.__args__}

KEY = "NW6NB1JxqgoeXv7uhr2zO3VOKJn8A0XvR0JWn3ILqPU"
SIG = "bBIqkAkeSdUwICPobRIh7cHyMhepCG0HdaivrQqERB0ho85lWKlP+OUWS9bRRsXtSL8quCkydOP95D9zA3FyAw"
EID = "5EomZR0NIGk3eDtIlVeCcQ"


def sample(name: str) -> bytes:
    """The exact bytes of one golden sample."""
    return (DATA / f"{name}.json").read_bytes()


def decode_any(data: bytes) -> frames.ClientFrame | frames.ServerFrame:
    """Decode a sample with the decoder of the side that receives it."""
    tag = json.loads(data)["type"]
    return (
        frames.decode_client_frame(data) if tag in CLIENT_TAGS else frames.decode_server_frame(data)
    )


def refusal(data: bytes | str, *, server: bool = False) -> RemoteProtocolError:
    """The error the codec raises for ``data``."""
    decode = frames.decode_server_frame if server else frames.decode_client_frame
    with pytest.raises(RemoteProtocolError) as caught:
        decode(data)
    return caught.value


def client_frame(**fields: object) -> bytes:
    """A client frame built from JSON values (for the error cases)."""
    return json.dumps(fields).encode()


# --- the golden samples ---------------------------------------------------------------------


def test_samples_exist_for_every_frame_type() -> None:
    """Every frame type has a golden sample named after its tag, and no sample is a stranger."""
    tags = set(frames.frame_types())
    assert tags <= set(FRAME_SAMPLES)
    assert {json.loads(sample(name))["type"] for name in FRAME_SAMPLES} == tags


@pytest.mark.parametrize("name", FRAME_SAMPLES)
def test_codec_decodes_frame_sample_and_reencodes_same_bytes(name: str) -> None:
    """A frame sample decodes to its tag's struct and encodes back to the identical bytes."""
    data = sample(name)
    frame = decode_any(data)
    assert type(frame) is frames.frame_types()[json.loads(data)["type"]]
    assert msgspec.to_builtins(frame) == json.loads(data)
    assert frames.encode(frame) == data


@pytest.mark.parametrize("name", FRAME_SAMPLES)
def test_codec_refuses_frame_sample_from_wrong_side(name: str) -> None:
    """A server frame sent by a client (or the reverse) is an unknown frame type there."""
    data = sample(name)
    server_frame = json.loads(data)["type"] in SERVER_TAGS
    assert refusal(data, server=not server_frame).code is ErrorCode.UNKNOWN_FRAME_TYPE


@pytest.mark.parametrize("name", sorted(CONTENT_SAMPLES))
def test_content_decodes_sample_and_reencodes_same_bytes(name: str) -> None:
    """An end-to-end sample decodes to its struct and encodes back to the identical bytes."""
    data = sample(name)
    value = DECODERS[CONTENT_SAMPLES[name]](data)
    assert type(value) is CONTENT_SAMPLES[name]
    assert msgspec.to_builtins(value) == json.loads(data)
    assert content.encode(value) == data


def test_info_sample_carries_versions_and_default_limits() -> None:
    """The GET /v1/info sample names the server, its versions and the default limits."""
    info = json.loads(sample("info"))
    assert set(info) == {"server", "version", "versions", "limits"}
    assert info["server"] == "obrolan"
    assert info["versions"] == list(SUPPORTED_VERSIONS)
    assert msgspec.convert(info["limits"], Limits) == Limits()
    assert info["limits"] == json.loads(sample("challenge"))["limits"]


# --- defaults and forward compatibility ---------------------------------------------------------


def test_codec_fills_defaults_of_omitted_optional_fields() -> None:
    """Optional members may be omitted and then take their documented default."""
    upload = frames.decode_client_frame(client_frame(type="upload_keys", id=1, one_time_keys=[]))
    claim = frames.decode_client_frame(client_frame(type="claim_keys", id=2, username="bob"))
    claimed = frames.decode_server_frame(
        b'{"type":"claimed_keys","id":2,"username":"bob","devices":[{"device":'
        + json.dumps(
            {"device_id": "phone", "ed25519": KEY, "curve25519": KEY, "signature": SIG}
        ).encode()
        + b',"one_time_key":null}]}'
    )
    assert isinstance(upload, frames.UploadKeys) and upload.fallback_key is None
    assert isinstance(claim, frames.ClaimKeys) and claim.device_ids is None
    assert isinstance(claimed, frames.ClaimedKeys) and claimed.devices[0].fallback is False


def test_codec_fills_defaults_of_new_optional_fields() -> None:
    """``sent.skipped(_recipients)``, ``devices.last_active``, ``Plaintext.sent_to`` may be omitted."""
    sent = frames.decode_server_frame(b'{"type":"sent","id":5,"envelope_ids":[]}')
    devices = json.loads(sample("devices"))
    del devices["last_active"]
    decoded = frames.decode_server_frame(json.dumps(devices))
    plain = content.decode_plaintext(sample("plaintext"))
    assert isinstance(sent, frames.Sent) and sent.skipped == [] and sent.skipped_recipients == []
    assert isinstance(decoded, frames.Devices) and decoded.last_active == {}
    assert plain.sent_to is None


def test_codec_ignores_unknown_members() -> None:
    """Members a receiver does not know are ignored, at every level."""
    frame = frames.decode_server_frame(b'{"type":"sent","id":5,"envelope_ids":[],"later":{"x":1}}')
    challenge = json.loads(sample("challenge"))
    challenge["limits"]["max_future_thing"] = 7
    decoded = frames.decode_server_frame(json.dumps(challenge))
    assert frame == frames.Sent(id=5, envelope_ids=[])
    assert isinstance(decoded, frames.Challenge) and decoded.limits == Limits()


def test_codec_accepts_any_member_order_and_whitespace() -> None:
    """Receivers accept valid JSON in any layout, not only the compact form."""
    data = b' {\n "envelope_ids" : [ "5EomZR0NIGk3eDtIlVeCcQ" ] ,\n "type" : "ack" } '
    assert frames.decode_client_frame(data) == frames.Ack(envelope_ids=[EID])


def test_codec_accepts_json_escapes_in_strings() -> None:
    """Escaped characters (``\\u0062``, ``\\/``) decode like the plain ones, base64 included."""
    data = (
        b'{"type":"send","id":1,"envelopes":[{"envelope_id":"5EomZR0NIGk3eDtIlVeCcQ",'
        b'"to_user":"\\u0062ob","to_device":"phone","ciphertext":"+\\/8="}]}'
    )
    frame = frames.decode_client_frame(data)
    assert isinstance(frame, frames.Send)
    assert frame.envelopes[0].to_user == "bob" and frame.envelopes[0].ciphertext == b"\xfb\xff"


def test_content_accepts_kind_after_other_members() -> None:
    """The ``kind`` tag of content may come anywhere in its object, as JSON allows."""
    plain = json.loads(sample("plaintext"))
    kind = plain["content"].pop("kind")
    plain["content"]["kind"] = kind
    reordered = json.dumps(plain).encode()
    assert content.decode_plaintext(reordered) == content.decode_plaintext(sample("plaintext"))


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"{not json", b"", b"\xff\xfe", b'{"type":"ack","envelope_ids":[]'],
    ids=["broken", "empty", "not-utf8", "truncated"],
)
def test_codec_reports_invalid_json_as_malformed_frame(data: bytes) -> None:
    """Bytes that are not JSON are a malformed frame."""
    assert refusal(data).code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize(
    "data",
    [b"[1, 2]", b'"ack"', b"{}", b'{"type": 5}', b'{"type": null, "id": 1}'],
    ids=["array", "string", "no-type", "number-type", "null-type"],
)
def test_codec_reports_frame_without_string_type_as_malformed(data: bytes) -> None:
    """A frame must be an object with a string ``type``."""
    assert refusal(data).code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("tag", ["hello", "welcome", "ACK", ""])
def test_codec_reports_unknown_type_as_unknown_frame_type(tag: str) -> None:
    """A ``type`` that is not a client frame of this version is an unknown frame type."""
    assert refusal(client_frame(type=tag, id=1)).code is ErrorCode.UNKNOWN_FRAME_TYPE


def test_codec_reports_unknown_server_type_as_unknown_frame_type() -> None:
    """The client's decoder answers an unknown server frame type the same way."""
    error = refusal(b'{"type":"typing","id":null}', server=True)
    assert error.code is ErrorCode.UNKNOWN_FRAME_TYPE


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "get_devices", "id": "1", "username": "bob"},
        {"type": "get_devices", "id": 1.0, "username": "bob"},
        {"type": "get_devices", "id": True, "username": "bob"},
        {"type": "get_devices", "id": -1, "username": "bob"},
        {"type": "get_devices", "id": 2**53, "username": "bob"},
        {"type": "get_devices", "username": "bob"},
        {"type": "ack", "envelope_ids": EID},
        {"type": "ack", "envelope_ids": [7]},
        {"type": "send", "id": 1, "envelopes": [{"envelope_id": EID, "to_user": "bob"}]},
        {
            "type": "authenticate",
            "version": "1",
            "username": "bob",
            "device_id": "p",
            "signature": SIG,
        },
    ],
    ids=[
        "id-string",
        "id-float",
        "id-bool",
        "id-negative",
        "id-too-big",
        "id-missing",
        "list-not-array",
        "list-item-type",
        "record-missing-fields",
        "version-string",
    ],
)
def test_codec_reports_wrong_field_type_as_malformed_frame(fields: dict[str, object]) -> None:
    """A field of the wrong JSON type, out of range or missing makes the frame malformed."""
    assert refusal(client_frame(**fields)).code is ErrorCode.MALFORMED_FRAME


def test_codec_requires_nullable_register_fallback_key_to_be_present() -> None:
    """``register.fallback_key`` may be null but must be present."""
    register = json.loads(sample("register"))
    del register["fallback_key"]
    assert refusal(json.dumps(register)).code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize(
    "username", ["Bob", "ab", "a" * 33, "_bob", ".bob", "bob smith", "bób", "bob\x00"]
)
def test_codec_reports_bad_username_as_malformed_frame(username: str) -> None:
    """A bad username in a lookup makes the frame malformed (invalid_username is register's)."""
    error = refusal(client_frame(type="get_devices", id=1, username=username))
    assert error.code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("username", ["Bob", "ab", "bob\n"])
def test_codec_reports_bad_username_in_register_as_invalid_username(username: str) -> None:
    """``register`` with a username breaking the pattern is refused with invalid_username."""
    sample = json.loads((DATA / "register.json").read_text())
    error = refusal(json.dumps(sample | {"username": username}).encode())
    assert error.code is ErrorCode.INVALID_USERNAME


def test_codec_reports_invalid_utf8_inside_a_string_as_malformed_frame() -> None:
    """A JSON string holding bytes that are not UTF-8 is a malformed frame, not a crash."""
    error = refusal(b'{"type":"ack","envelope_ids":["\xff\xfe"]}')
    assert error.code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("username", ["bob", "a" * 32, "0day", "b.o_b-1"])
def test_codec_accepts_usernames_matching_pattern(username: str) -> None:
    """Usernames of 3 to 32 allowed characters, starting with a letter or digit, pass."""
    frame = frames.decode_client_frame(client_frame(type="get_devices", id=1, username=username))
    assert frame == frames.GetDevices(id=1, username=username)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_id", "ph.one"),
        ("device_id", "x" * 33),
        ("ed25519", KEY + "="),
        ("ed25519", KEY[:-1]),
        ("curve25519", KEY.replace("N", "-")),
        ("signature", SIG[:-2]),
        ("signature", SIG + "=="),
    ],
)
def test_codec_reports_pattern_violation_in_record_as_malformed(field: str, value: str) -> None:
    """Device ids, keys and signatures must match their patterns exactly (keys unpadded)."""
    register = json.loads(sample("register"))
    register["device"][field] = value
    assert refusal(json.dumps(register)).code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize(
    "ciphertext",
    ["AAE", "-_8=", "AA E=", "AAE=\n"],
    ids=["unpadded", "urlsafe", "space", "newline"],
)
def test_codec_reports_non_standard_base64_bytes_as_malformed(ciphertext: str) -> None:
    """``bytes`` fields are standard base64 with padding; other forms are malformed."""
    envelope = {
        "envelope_id": EID,
        "to_user": "bob",
        "to_device": "phone",
        "ciphertext": ciphertext,
    }
    error = refusal(client_frame(type="send", id=1, envelopes=[envelope]))
    assert error.code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize(
    "envelope_id", ["short", "x" * 65, "5EomZR0NIGk3eDtIlVeCcQ=", "5EomZR0NIG+3eDtIlVeCcQ"]
)
def test_codec_reports_bad_envelope_id_as_malformed(envelope_id: str) -> None:
    """Envelope ids are 16 to 64 URL-safe base64 characters without padding."""
    assert (
        refusal(client_frame(type="ack", envelope_ids=[envelope_id])).code
        is ErrorCode.MALFORMED_FRAME
    )


@pytest.mark.parametrize(
    "data",
    [
        client_frame(type="get_devices", id=1, username="bob\n"),
        client_frame(type="ack", envelope_ids=[EID + "\n"]),
    ],
    ids=["username", "envelope-id"],
)
def test_codec_rejects_trailing_newline_in_patterned_string(data: bytes) -> None:
    """A pattern must match the whole string: a trailing newline is not allowed (§2.3)."""
    assert refusal(data).code is ErrorCode.MALFORMED_FRAME


def test_codec_reports_unknown_error_code_from_server_as_malformed() -> None:
    """An ``error`` frame must carry one of the documented codes."""
    data = b'{"type":"error","id":null,"code":"teapot","message":""}'
    assert refusal(data, server=True).code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("message_type", [-1, 2, "0"])
def test_content_rejects_unknown_olm_message_type(message_type: object) -> None:
    """``OlmCiphertext.message_type`` is 0 (pre-key) or 1 (normal)."""
    olm = json.loads(sample("olm_ciphertext"))
    olm["message_type"] = message_type
    with pytest.raises(RemoteProtocolError):
        content.decode_olm_ciphertext(json.dumps(olm).encode())


def test_content_rejects_unknown_content_kind() -> None:
    """A Plaintext whose content kind is not defined does not decode (the receiver drops it)."""
    plain = json.loads(sample("plaintext"))
    plain["content"]["kind"] = "sticker"
    with pytest.raises(RemoteProtocolError):
        content.decode_plaintext(json.dumps(plain).encode())


# --- limits ----------------------------------------------------------------------------------


def test_limits_raise_frame_size_to_fit_one_maximal_envelope() -> None:
    """max_frame_bytes is at least max_envelope_bytes * 4 // 3
    + max_recipients_per_envelope * 96 + 65536 (§13)."""
    limits = Limits(max_envelope_bytes=1024 * 1024, max_frame_bytes=1000)
    assert limits.max_frame_bytes == 1024 * 1024 * 4 // 3 + 2000 * 96 + 65536
    assert Limits().max_frame_bytes == 1024 * 1024  # the defaults fit as they are
    many = Limits(max_recipients_per_envelope=20_000)
    assert many.max_frame_bytes == 256 * 1024 * 4 // 3 + 20_000 * 96 + 65536


def test_a_send_multi_to_the_most_recipients_with_the_largest_names_fits_a_frame() -> None:
    """The room kept per recipient is enough for two 32-character names."""
    limits = Limits(max_recipients_per_envelope=10_000)
    longest = "u" * 32
    frame = frames.SendMulti(
        id=2**53 - 1,
        envelope=frames.MultiEnvelope(
            envelope_id="e" * 64,
            recipients=[
                frames.Recipient(to_user=longest, to_device=f"{n:032}") for n in range(10_000)
            ],
            ciphertext=bytes(limits.max_envelope_bytes),
        ),
    )
    assert len(frames.encode(frame)) <= limits.max_frame_bytes


# --- issue 3: accounts, lists, links, verification -------------------------------------------


@pytest.mark.parametrize("link_id", ["k4tq7bxm", "K4TQ7BX", "K4TQ7BXMX", "K4TQ7BX1", "K4TQ7BX0"])
def test_codec_reports_bad_link_id_as_malformed(link_id: str) -> None:
    """A link id is exactly 8 characters of upper-case RFC 4648 base32 (no 0, 1, 8, 9)."""
    error = refusal(client_frame(type="link_fetch", id=1, link_id=link_id))
    assert error.code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize(
    ("tag", "field", "limit"), [("link_wait", "offer", 4096), ("link_approve", "answer", 262144)]
)
def test_codec_bounds_link_payloads(tag: str, field: str, limit: int) -> None:
    """A sealed offer holds at most 4096 bytes and an answer at most 262144 (decoded)."""
    frame = json.loads(sample(tag))
    frame[field] = base64.b64encode(b"x" * limit).decode()
    assert frames.decode_client_frame(json.dumps(frame)) is not None
    frame[field] = base64.b64encode(b"x" * (limit + 1)).decode()
    assert refusal(json.dumps(frame)).code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("username", ["Bob", "ab"])
def test_codec_reports_bad_username_in_recover_as_invalid_username(username: str) -> None:
    """``recover`` with a username breaking the pattern is refused like ``register``."""
    recover = json.loads(sample("recover"))
    error = refusal(json.dumps(recover | {"username": username}))
    assert error.code is ErrorCode.INVALID_USERNAME


def test_codec_refuses_bad_day_in_last_active() -> None:
    """``last_active`` maps device ids to ``YYYY-MM-DD`` days only."""
    devices = json.loads(sample("devices"))
    devices["last_active"] = {"phone": "2026-11-29T09:30"}
    assert refusal(json.dumps(devices), server=True).code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize(
    ("change", "value"),
    [("version", 0), ("version", 2**53), ("added", "29-11-2026"), ("name", "x" * 684)],
    ids=["version-zero", "version-too-big", "day-form", "name-over-512-bytes"],
)
def test_device_list_refuses_out_of_range_values(change: str, value: object) -> None:
    """A list's version is 1 to 2^53-1, a day is YYYY-MM-DD, a sealed name is <= 256 bytes."""
    listed = json.loads(sample("device_list"))
    if change == "version":
        listed["version"] = value
    else:
        listed["devices"][0][change] = value
    with pytest.raises(msgspec.ValidationError):
        DECODERS[frames.DeviceList](json.dumps(listed).encode())


def test_content_refuses_unknown_verification_cancel_reason() -> None:
    """``verify_cancel.reason`` is one of the documented reasons."""
    plain = json.loads(sample("plaintext_verify_cancel"))
    plain["content"]["reason"] = "bored"
    with pytest.raises(RemoteProtocolError):
        content.decode_plaintext(json.dumps(plain).encode())


@pytest.mark.parametrize(
    ("field", "value"), [("archive_passphrase", "x" * 31), ("archive_passphrase", "x" * 129)]
)
def test_content_bounds_history_passphrase(field: str, value: str) -> None:
    """A history archive's passphrase is 32 to 128 characters."""
    plain = json.loads(sample("plaintext_history"))
    plain["content"][field] = value
    with pytest.raises(RemoteProtocolError):
        content.decode_plaintext(json.dumps(plain).encode())


@pytest.mark.parametrize("txn", ["short", "x" * 65, "n0T75yZtdeoEfXsA4QBJm+"])
def test_content_refuses_bad_txn(txn: str) -> None:
    """A verification's txn is 16 to 64 URL-safe base64 characters."""
    plain = json.loads(sample("plaintext_verify_start"))
    plain["content"]["txn"] = txn
    with pytest.raises(RemoteProtocolError):
        content.decode_plaintext(json.dumps(plain).encode())


# --- issue 4: multi-recipient envelopes and groups ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("envelope", "envelope_id"), "short"),
        (("envelope", "recipients", 0, "to_user"), "Alice"),
        (("envelope", "recipients", 0, "to_device"), "ph.one"),
        (("envelope", "recipients", 0), {"to_user": "alice"}),
        (("envelope", "recipients"), {"to_user": "alice", "to_device": "phone"}),
        (("envelope", "ciphertext"), "eyJ"),
        (("envelope",), None),
    ],
    ids=[
        "envelope-id",
        "username",
        "device-id",
        "recipient-fields",
        "not-a-list",
        "base64",
        "null",
    ],
)
def test_codec_reports_malformed_send_multi(path: tuple[str | int, ...], value: object) -> None:
    """A send_multi whose envelope, recipients or ciphertext break their types is malformed."""
    frame = json.loads(sample("send_multi"))
    target = frame
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert refusal(json.dumps(frame)).code is ErrorCode.MALFORMED_FRAME


def test_codec_accepts_send_multi_without_recipients() -> None:
    """An empty recipient list decodes: the server answers it with the envelope skipped (§8)."""
    frame = json.loads(sample("send_multi"))
    frame["envelope"]["recipients"] = []
    decoded = frames.decode_client_frame(json.dumps(frame))
    assert isinstance(decoded, frames.SendMulti) and decoded.envelope.recipients == []


@pytest.mark.parametrize(
    ("sample_name", "change"),
    [
        ("group_update_add", {"prev": base64.b64encode(b"x" * 31).decode()}),
        ("group_update_add", {"seq": -1}),
        ("group_update_add", {"action": {"op": "banish", "user": "carol"}}),
        ("group_update_add", {"action": {"user": "carol"}}),
        ("group_update_mute", {"reason": "x" * 501}),
        ("group_update_create", {"group_id": "too-short"}),
    ],
    ids=["prev-31-bytes", "negative-seq", "unknown-op", "no-op", "long-reason", "bad-group-id"],
)
def test_group_update_refuses_malformed_values(sample_name: str, change: dict[str, object]) -> None:
    """prev is 32 bytes or null, seq 0 or more, an action names a known op, a reason <= 500."""
    update = json.loads(sample(sample_name)) | change
    with pytest.raises(RemoteProtocolError):
        groups.decode_group_update(json.dumps(update).encode())


def test_group_update_decodes_defaults_of_omitted_members() -> None:
    """An update without reason, and a create without description, rules, settings or members."""
    update = json.loads(sample("group_update_create"))
    del update["reason"]
    update["action"] = {"op": "create", "title": "Arisan"}
    decoded = groups.decode_group_update(json.dumps(update).encode())
    assert decoded.reason == ""
    assert decoded.action == groups.Create(title="Arisan")
    assert decoded.action.settings == groups.GroupSettings(
        who_can_post="all", who_can_add="admins", approval=True
    )


def test_group_ciphertext_is_not_an_olm_ciphertext_and_back() -> None:
    """Receivers tell the two envelope contents apart by their members (§15.4 step 2)."""
    with pytest.raises(RemoteProtocolError):
        content.decode_olm_ciphertext(sample("group_ciphertext"))
    with pytest.raises(RemoteProtocolError):
        groups.decode_group_ciphertext(sample("olm_ciphertext"))


def test_content_refuses_group_state_without_updates() -> None:
    """A group_state carries at least one update."""
    plain = json.loads(sample("plaintext_group_state"))
    plain["content"]["updates"] = []
    with pytest.raises(RemoteProtocolError):
        content.decode_plaintext(json.dumps(plain).encode())


def test_salvage_deliver_keeps_the_good_envelopes_of_a_frame_with_a_bad_one() -> None:
    """One envelope that does not decode costs only itself; its id is kept to ack it."""
    good = json.loads(sample("deliver"))["envelopes"][0]
    bad_ciphertext = good | {"envelope_id": "B" * 22, "ciphertext": "not base64!"}
    no_id = {"from_user": "mallory", "ciphertext": 5}
    frame = {"type": "deliver", "envelopes": [good, bad_ciphertext, no_id, good]}
    data = json.dumps(frame).encode()
    with pytest.raises(RemoteProtocolError):
        frames.decode_server_frame(data)
    salvaged = salvage_deliver(data)
    assert salvaged is not None
    deliver, unreadable = salvaged
    assert [e.envelope_id for e in deliver.envelopes] == [good["envelope_id"]] * 2
    assert [(u.envelope_id, u.from_user) for u in unreadable] == [
        ("B" * 22, good["from_user"]),
        (None, "mallory"),
    ]
    assert salvage_deliver(b'{"type":"drained"}') is None
    assert salvage_deliver(b'{"type":"deliver","envelopes":3}') is None
