"""docs/protocol.md documents exactly the wire types of obrolan.protocol.

The spec is parsed (headings, tables, code blocks), then compared with the
code: every frame, every field with its type and whether it is required,
every error code and whether it is fatal, every limit and its default, every
named type's pattern, and every JSON example (each one is a golden sample
from tests/data). Adding a frame, field, code or limit without documenting it
fails here.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import msgspec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from obrolan.client.enrolment import link_address
from obrolan.client.groups import invite_link
from obrolan.crypto.account import LinkCode, RecoveryCode, open_name
from obrolan.crypto.group_state import describe
from obrolan.crypto.safety import safety_number
from obrolan.crypto.sas import EMOJI, commitment_of
from obrolan.protocol import blobs, content, frames, groups, signing
from obrolan.protocol.codes import FATAL_CODES, ErrorCode
from obrolan.protocol.limits import PROTOCOL_VERSION, Limits

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "docs" / "protocol.md").read_text()
DATA = ROOT / "tests" / "data"

CLIENT_TAGS = {t.__struct_config__.tag for t in frames.ClientFrame.__args__}
SERVER_TAGS = {t.__struct_config__.tag for t in frames.ServerFrame.__args__}
RECORDS: list[type[msgspec.Struct]] = [
    frames.DeviceKeys,
    frames.OneTimeKey,
    frames.OutboundEnvelope,
    frames.Envelope,
    frames.ClaimedDevice,
    frames.ListedDevice,
    frames.DeviceList,
    frames.SignedDeviceList,
    frames.KeySuccession,
    frames.Recipient,
    frames.MultiEnvelope,
    content.OlmCiphertext,
    content.Plaintext,
    content.Text,
    content.Attachment,
    content.Reaction,
    content.Edit,
    content.Delete,
    content.Receipt,
    content.Typing,
    content.Timer,
    content.HistoryTransfer,
    content.ContactUpdate,
    content.VerifyStart,
    content.VerifyKey,
    content.VerifyMac,
    content.VerifyCancel,
    content.NewDeviceOffer,
    content.LinkSecrets,
    content.LinkedContact,
    groups.GroupUpdate,
    groups.GroupSettings,
    groups.SignedGroupUpdate,
    content.GroupState,
    content.GroupKey,
    groups.GroupMessage,
    groups.SignedGroupMessage,
    groups.GroupCiphertext,
    content.GroupJoinRequest,
    content.GroupSync,
    content.GroupReport,
    blobs.BlobRecipient,
    blobs.BlobCreated,
    blobs.HttpError,
]
NAMED_TYPES: dict[str, object] = {
    "Username": frames.Username,
    "DeviceId": frames.DeviceId,
    "EnvelopeId": frames.EnvelopeId,
    "MessageId": content.MessageId,
    "BlobId": content.BlobId,
    "Emoji": content.Emoji,
    "ReceiptStatus": content.ReceiptStatus,
    "TimerSeconds": content.TimerSeconds,
    "Content": content.Content,
    "KeyId": frames.KeyId,
    "PublicKey": frames.PublicKey,
    "Signature": frames.Signature,
    "RequestId": frames.RequestId,
    "LinkId": frames.LinkId,
    "Day": frames.Day,
    "Txn": content.Txn,
    "GroupId": groups.GroupId,
    "InviteId": groups.InviteId,
    "GroupAction": groups.GroupAction,
}
ACTIONS: list[type[msgspec.Struct]] = list(typing.get_args(groups.GroupAction))
"""The group actions (§23.6), each documented under a level-4 heading named by its ``op``."""
SCALARS = {int: "integer", str: "string", bytes: "bytes", bool: "boolean"}


# --- a small Markdown reader ------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One heading of the spec and the text up to the next heading."""

    level: int
    title: str
    body: str


def _sections(text: str) -> list[Section]:
    found: list[Section] = []
    level, title, fenced = 0, "", False
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"^(#{1,6}) (.*)$", line)
        if heading:
            found.append(Section(level, title, "\n".join(lines)))
            level, title, lines = len(heading[1]), _plain_title(heading[2]), []
        else:
            lines.append(line)
    found.append(Section(level, title, "\n".join(lines)))
    return found[1:]


def _plain_title(title: str) -> str:
    """``### 7.1 DeviceKeys`` → ``DeviceKeys``; ``### `register` `` → ``register``."""
    return re.sub(r"^\d+(\.\d+)*\.? ", "", title).strip("`")


SECTIONS = _sections(SPEC)


def section(title: str, level: int | None = None) -> Section:
    """The one section with this title (without its number or backticks), at ``level`` if given."""
    (match,) = [s for s in SECTIONS if s.title == title and level in (None, s.level)]
    return match


def subsections(title: str) -> list[Section]:
    """The sections one level below ``title``, up to the next heading at its level."""
    parent = section(title)
    start = SECTIONS.index(parent) + 1
    children = []
    for child in SECTIONS[start:]:
        if child.level <= parent.level:
            break
        if child.level == parent.level + 1:
            children.append(child)
    return children


def table(body: str) -> list[list[str]]:
    """The rows (header excluded) of the first table in ``body``, cells stripped."""
    rows: list[list[str]] = []
    for line in body.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return [row for row in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in row)]


def json_blocks(body: str) -> list[str]:
    """The contents of the ```json code blocks in ``body``."""
    return re.findall(r"```json\n(.*?)\n```", body, re.DOTALL)


def code(cell: str) -> str:
    """A table cell without its backticks."""
    return cell.replace("`", "")


# --- what the code says -----------------------------------------------------------------------


def type_names(tp: object) -> set[str]:
    """Every spelling the spec may use for a field type (aliases can share one object)."""
    named = {name for name, alias in NAMED_TYPES.items() if alias == tp}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if named and origin is typing.Annotated and args[1].ge is not None:
        # A range may be spelled out even where a named type has the same one (``seq``).
        return named | {f"{n}, {args[1].ge} to {args[1].le}" for n in type_names(args[0])}
    if named:
        return named
    if tp in SCALARS:
        return {SCALARS[tp]}
    if origin is typing.Annotated:
        base, meta = args
        if meta.max_length is None and meta.min_length is not None:
            return {f"{n}, {meta.min_length} or more" for n in type_names(base)}
        if meta.max_length is None:
            return {f"{n}, {meta.ge} to {meta.le}" for n in type_names(base)}
        unit = "bytes" if base is bytes else "characters"
        if meta.min_length == meta.max_length:
            return {f"{n}, exactly {meta.max_length} {unit}" for n in type_names(base)}
        low = f"{meta.min_length} to" if meta.min_length else "at most"
        return {f"{n}, {low} {meta.max_length} {unit}" for n in type_names(base)}
    if origin is typing.Literal:
        quoted = [f'"{value}"' for value in args]
        return {", ".join(quoted[:-1]) + " or " + quoted[-1]}
    if origin is list:
        return {f"[{n}]" for n in type_names(args[0])}
    if origin is dict:
        return {f"{{{k}: {v}}}" for k in type_names(args[0]) for v in type_names(args[1])}
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return {f"{n} or null" for n in type_names(inner)}
    if isinstance(tp, type) and issubclass(tp, (msgspec.Struct, ErrorCode)):
        return {tp.__name__}
    raise AssertionError(f"no spec spelling for {tp!r}")


def expected_rows(struct: type[msgspec.Struct]) -> dict[str, tuple[set[str], object]]:
    """field name → (allowed type spellings, default or NODEFAULT), tag member first."""
    config = struct.__struct_config__
    rows: dict[str, tuple[set[str], object]] = {}
    if config.tag_field is not None:
        rows[config.tag_field] = ({f'"{config.tag}"'}, msgspec.NODEFAULT)
    hints = typing.get_type_hints(struct, include_extras=True)
    for field in msgspec.structs.fields(struct):
        factory = field.default_factory
        default = field.default if factory is msgspec.NODEFAULT else factory()
        rows[field.name] = (type_names(hints[field.name]), default)
    return rows


def check_field_table(struct: type[msgspec.Struct], body: str) -> None:
    """The section's table lists exactly the struct's fields, with type and requiredness."""
    rows = table(body)
    expected = expected_rows(struct)
    documented = [code(row[0]) for row in rows]
    assert sorted(documented) == sorted(expected), f"{struct.__name__}: fields differ"
    for field, spelled, required, *_ in rows:
        names, default = expected[code(field)]
        assert code(spelled) in names, f"{struct.__name__}.{code(field)}: type {spelled}"
        if default is msgspec.NODEFAULT:
            assert required == "yes", f"{struct.__name__}.{code(field)} is required"
        else:
            default_json = msgspec.json.encode(default).decode()
            assert required.startswith("no") and f"`{default_json}`" in required, (
                f"{struct.__name__}.{code(field)} defaults to {default_json}"
            )


# --- tests -----------------------------------------------------------------------------------


def test_spec_opens_with_version_line_and_logs_it_in_changelog() -> None:
    """The spec starts with "Version N, YYYY-MM-DD" for this code's version, and the changelog has it."""
    first = next(line for line in SPEC.splitlines()[1:] if line.strip())
    match = re.fullmatch(r"Version (\d+), (\d{4}-\d{2}-\d{2})", first)
    assert match is not None and int(match[1]) == PROTOCOL_VERSION
    assert f"**Version {match[1]}, {match[2]}**" in section("Changelog").body


def test_spec_has_required_sections() -> None:
    """Overview, state diagram, error table, limits, storage, logging and changelog are there."""
    titles = {s.title for s in SECTIONS}
    assert {
        "Overview",
        "Connection states",
        "Error codes",
        "Limits",
        "What the server stores",
        "What the server logs",
        "Changelog",
    } <= titles
    assert "stateDiagram-v2" in section("Connection states").body


def test_spec_documents_exactly_the_client_frames() -> None:
    """Section 9 has one heading per client frame type, and no other."""
    assert {s.title for s in subsections("Client frames")} == CLIENT_TAGS


def test_spec_documents_exactly_the_server_frames() -> None:
    """Section 10 has one heading per server frame type, and no other."""
    assert {s.title for s in subsections("Server frames")} == SERVER_TAGS


@pytest.mark.parametrize("tag", sorted(frames.frame_types()))
def test_spec_frame_table_lists_every_field(tag: str) -> None:
    """A frame's table lists every field with its type and whether it is required."""
    check_field_table(frames.frame_types()[tag], section(tag).body)


@pytest.mark.parametrize("struct", RECORDS, ids=lambda s: s.__name__)
def test_spec_record_table_lists_every_field(struct: type[msgspec.Struct]) -> None:
    """Each record and end-to-end struct has a section whose table lists every field."""
    check_field_table(struct, section(struct.__name__, level=3).body)


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: a.__struct_config__.tag)
def test_spec_action_table_lists_every_field(action: type[msgspec.Struct]) -> None:
    """Each group action has a level-4 section named by its ``op``, listing every field."""
    check_field_table(action, section(str(action.__struct_config__.tag), level=4).body)


def test_spec_documents_exactly_the_group_actions() -> None:
    """§23.6 has one heading per action of groups.GroupAction, and no other."""
    tags = {a.__struct_config__.tag for a in ACTIONS}
    assert {s.title for s in subsections("Actions")} == tags


def test_spec_info_table_lists_every_field() -> None:
    """The `GET /v1/info` section's table lists every field of frames.Info."""
    check_field_table(frames.Info, section("HTTP: `GET /v1/info").body)


def test_spec_blob_announcement_table_lists_every_field() -> None:
    """The `POST /v1/blobs` section's table lists every field of blobs.CreateBlob."""
    check_field_table(blobs.CreateBlob, section("POST /v1/blobs").body)


def test_spec_blob_statuses_are_the_servers() -> None:
    """The blob store's refusals section gives each code the status blobs.STATUS sends."""
    text = " ".join(section("HttpError").body.split())
    for code, status in blobs.STATUS.items():
        assert re.search(rf"`{code.value}`[^0-9]*? {status}\b", text), code


def test_spec_blob_request_vector_is_the_signed_bytes() -> None:
    """The hex vector of the blob store's signed requests is what blob_request_bytes makes."""
    (block,) = re.findall(r"```text\n(.*?)\n```", section("Signed requests").body, re.DOTALL)
    path = "/v1/blobs/q0PKJ3vQ2Jc1ZyWm3P0sXg?offset=65552"
    expected = blobs.blob_request_bytes("PUT", path, 1795944600, "alice", "laptop")
    assert bytes.fromhex(block) == expected
    assert block.count(" 00 ") == 5  # one hex group per field


@pytest.mark.parametrize("tag", sorted(frames.frame_types()))
def test_spec_frame_section_names_sender_and_state(tag: str) -> None:
    """Each frame says who sends it and in which connection state."""
    body = section(tag).body
    assert "**Sender:**" in body
    assert "**Allowed in:**" in body or "**Sent in:**" in body


@pytest.mark.parametrize("tag", sorted(CLIENT_TAGS))
def test_spec_client_frame_names_reply_and_known_errors(tag: str) -> None:
    """Each client frame states its reply and lists only error codes that exist."""
    body = section(tag).body
    assert "**Reply:**" in body
    errors = re.search(r"\*\*Errors:\*\*(.*?)(?:\n\n|\n- \*\*)", body, re.DOTALL)
    assert errors is not None
    # The list of codes ends at the first sentence end; parentheses explain a code.
    listed = re.split(r"\.(?:\s|$)", re.sub(r"\([^()]*\)", "", errors[1]))[0]
    named = set(re.findall(r"`([a-z_]+)`", listed))
    assert named and named <= {c.value for c in ErrorCode}
    assert "malformed_frame" in named


def test_spec_error_table_lists_exactly_the_codes() -> None:
    """The error table has every ErrorCode, no other, each marked fatal exactly when it is."""
    rows = table(section("Error codes").body)
    documented = {code(row[0]): row[1] for row in rows}
    assert len(documented) == len(rows), "a code is listed twice"
    assert set(documented) == {c.value for c in ErrorCode}
    for name, fatal in documented.items():
        assert fatal == ("yes" if ErrorCode(name) in FATAL_CODES else "no"), name


def test_spec_names_only_existing_codes_anywhere() -> None:
    """Every backticked snake_case word the spec calls a code is one."""
    mentioned = set(re.findall(r"`error` `([a-z_]+)`", SPEC))
    assert mentioned <= {c.value for c in ErrorCode}


def test_spec_limits_table_lists_every_limit_with_its_default() -> None:
    """The limits table has every Limits field, no other, with the code's default."""
    rows = table(section("Limits", level=2).body)
    defaults = msgspec.structs.asdict(Limits())
    documented = {code(row[0]): int(row[1].split()[0]) for row in rows}
    assert documented == defaults


def test_spec_named_types_carry_the_code_patterns() -> None:
    """The named-types table gives each alias's exact pattern or range."""
    rows = {code(row[0]): row[2] for row in table(section("Named types").body)}
    assert set(NAMED_TYPES) | {"ErrorCode"} == set(rows)
    for name, alias in NAMED_TYPES.items():
        if typing.get_origin(alias) is typing.Literal:
            assert all(f"`{value}`" in rows[name] for value in typing.get_args(alias)), name
            continue
        if typing.get_origin(alias) is not typing.Annotated:
            # A union of content kinds or actions: each has its own documented table.
            assert set(typing.get_args(alias)) <= {*RECORDS, *ACTIONS}, name
            continue
        (meta,) = typing.get_args(alias)[1:]
        if meta.pattern is not None:
            pattern = re.sub(r"^\^|(\$|\\Z)$", "", meta.pattern)
            assert rows[name].startswith(f"`{pattern}`"), name
        elif meta.max_length is not None:
            assert f"at most {meta.max_length}" in rows[name], name
        else:
            assert f"{meta.ge} to {meta.le}" in rows[name], name


def sample_texts() -> dict[str, str]:
    """Every golden sample that should appear in the spec, by file stem."""
    return {p.stem: p.read_text() for p in sorted(DATA.glob("*.json")) if p.stem != "vectors"}


def test_spec_examples_are_exactly_the_golden_samples() -> None:
    """Every JSON example in the spec is a sample file, and every sample file is in the spec."""
    blocks = json_blocks(SPEC)
    samples = sample_texts()
    assert set(blocks) <= set(samples.values()), "a JSON example is not a tests/data sample"
    assert set(samples.values()) <= set(blocks), "a tests/data sample is missing from the spec"


@pytest.mark.parametrize("tag", sorted(frames.frame_types()))
def test_spec_frame_section_shows_its_own_sample(tag: str) -> None:
    """A frame's section shows its sample, and only examples of that frame type."""
    blocks = json_blocks(section(tag).body)
    assert sample_texts()[tag] in blocks
    assert {json.loads(block)["type"] for block in blocks} == {tag}


def reference_half(username: str, key: str) -> str:
    """One party's 30 digits, written from the spec's steps (§15.7), not from safety.py."""
    key_bytes = base64.b64decode(key + "=")
    h = b"\x00\x00" + key_bytes + username.encode("utf-8")
    for _ in range(5200):
        h = hashlib.sha512(h + key_bytes).digest()
    return "".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_vectors() -> list[list[str]]:
    """The spec's safety-number test vectors: party A, key A, party B, key B, number."""
    return [[code(cell) for cell in row] for row in table(section("Safety numbers").body)]


@pytest.mark.parametrize("row", safety_vectors(), ids=lambda row: row[1][:8])
def test_spec_safety_number_vectors_match_code_and_algorithm(row: list[str]) -> None:
    """safety.py and a literal reading of the spec's steps both give the documented number."""
    user_a, key_a, user_b, key_b, number = row
    assert safety_number(user_a, key_a, user_b, key_b) == number
    assert safety_number(user_b, key_b, user_a, key_a) == number
    digits = "".join(sorted([reference_half(user_a, key_a), reference_half(user_b, key_b)]))
    assert " ".join(digits[i : i + 5] for i in range(0, 60, 5)) == number


# --- the account, recovery, link and SAS vectors (§17 to §22) --------------------------------


def hkdf(secret: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 as the spec names it (RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def ed25519_public(seed: bytes) -> str:
    """The unpadded base64 public key of an Ed25519 seed (RFC 8032)."""
    raw = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return base64.b64encode(raw).decode().rstrip("=")


def pairs(title: str) -> dict[str, str]:
    """A two-column vector table (item, value), cells without backticks."""
    return {code(row[0]): code(row[1]) for row in table(section(title).body)}


def sample_json(name: str) -> typing.Any:
    """A golden sample's JSON values."""
    return json.loads((DATA / f"{name}.json").read_bytes())


def test_spec_device_name_vector_seals_and_opens() -> None:
    """§17.3: nonce ‖ AES-256-GCM with the documented associated data gives the sample's name."""
    vector = pairs("The data key and device names")
    key, nonce = bytes.fromhex(vector["data key"]), bytes.fromhex(vector["nonce"])
    aad = b"\x00".join([b"obrolan-device-name-v1", b"bob", b"phone"])
    sealed = nonce + AESGCM(key).encrypt(nonce, vector["name"].encode(), aad)
    assert vector["associated data"] == aad.hex()
    assert vector["sealed name"] == sealed.hex()
    assert open_name(key, vector["username"], vector["device id"], sealed) == vector["name"]
    (listed,) = json.loads((DATA / "device_list.json").read_bytes())["devices"]
    assert base64.b64decode(listed["name"]) == sealed


@pytest.mark.parametrize("row", table(section("The recovery code").body), ids=lambda r: r[1][1:9])
def test_spec_recovery_vector_derives_the_key(row: list[str]) -> None:
    """§19.1: normalizing, HKDF and Ed25519 give the documented seed and key, as account.py does."""
    shown, normalized, seed, public = (code(cell) for cell in row)
    assert shown.replace("-", "") == normalized
    assert hkdf(normalized.encode(), b"", b"obrolan-recovery-v1").hex() == seed
    assert ed25519_public(bytes.fromhex(seed)) == public
    assert RecoveryCode.parse(shown).public_key == public
    assert RecoveryCode.parse(" ".join(shown.lower().split("-"))).code == normalized


def test_spec_recovery_vectors_are_the_samples_keys() -> None:
    """The first code is register's recovery key; the second is set by set_recovery and recover."""
    first, second = (code(row[3]) for row in table(section("The recovery code").body))
    assert sample_json("register")["recovery_key"] == first
    assert sample_json("set_recovery")["recovery_key"] == second
    assert sample_json("recover")["recovery_key"] == second


def test_spec_link_vector_derives_the_offer_key_that_opens_the_sample() -> None:
    """§20.1/§20.2: the offer key opens link_wait's offer into the new_device_offer sample."""
    (row,) = table(section("The link code").body)
    shown, link_id, secret, key = (code(cell) for cell in row)
    parsed = LinkCode.parse(shown)
    assert (parsed.link_id, parsed.secret) == (link_id, secret)
    assert hkdf(secret.encode(), link_id.encode(), b"obrolan-link-offer-v1").hex() == key
    wait = sample_json("link_wait")
    sealed = base64.b64decode(wait["offer"])
    plain = AESGCM(bytes.fromhex(key)).decrypt(sealed[:12], sealed[12:], link_id.encode())
    assert wait["link_id"] == link_id
    assert plain == (DATA / "new_device_offer.json").read_bytes()
    assert parsed.open_offer(sealed) == content.decode_link_offer(plain)


def test_spec_link_qr_content_is_the_clients() -> None:
    """§20.1: the QR address percent-encodes the server URL and carries the bare code."""
    body = section("The link code").body
    (address,) = re.findall(r"`(obrolan://link\?[^`]*)`", body)
    server = "https://chat.example.org:8443"
    code_text = code(table(body)[0][0]).replace("-", "")
    assert address == f"obrolan://link?server={quote(server, safe='')}&code={code_text}"
    assert link_address(server, LinkCode.parse(code_text)) == address


def x25519_public(key: str) -> X25519PublicKey:
    """A SAS public key from its unpadded base64."""
    return X25519PublicKey.from_public_bytes(base64.b64decode(key + "="))


def x25519(private_hex: str) -> tuple[X25519PrivateKey, str]:
    """A SAS key pair from the vector's private key, and its unpadded base64 public key."""
    key = X25519PrivateKey.from_private_bytes(bytes.fromhex(private_hex))
    return key, base64.b64encode(key.public_key().public_bytes_raw()).decode().rstrip("=")


def mac(shared: bytes, text: str, info: str) -> str:
    """§22.3's MAC, from its definition."""
    tag = hmac.new(hkdf(shared, b"", info.encode()), text.encode(), hashlib.sha256).digest()
    return base64.b64encode(tag).decode().rstrip("=")


def test_spec_sas_vector_follows_from_the_private_keys() -> None:
    """§22.2/§22.3: commitment, shared secret, SAS bytes, emoji, numbers and MACs recompute."""
    vector = pairs("MACs")
    txn = vector["txn"]
    i_key, i_public = x25519(vector["I's SAS private key"])
    r_key, r_public = x25519(vector["R's SAS private key"])
    assert (i_public, r_public) == (vector["I's SAS public key"], vector["R's SAS public key"])
    commitment = hashlib.sha256(f"obrolan-sas-commit-v1\0{txn}\0{i_public}".encode()).digest()
    assert vector["commitment"] == commitment.hex() == commitment_of(txn, i_public).hex()
    shared = i_key.exchange(x25519_public(r_public))
    assert r_key.exchange(x25519_public(i_public)) == shared
    assert vector["shared secret"] == shared.hex()
    info = f"obrolan-sas-v1\0{txn}\0alice\0laptop\0{i_public}\0bob\0phone\0{r_public}"
    sas = hkdf(shared, b"", info.encode(), 6)
    assert vector["SAS bytes"] == sas.hex()
    bits = int.from_bytes(sas, "big")
    indices = [(bits >> (42 - 6 * i)) & 63 for i in range(7)]
    numbers = [((bits >> (35 - 13 * i)) & 0x1FFF) + 1000 for i in range(3)]
    shown, names = vector["emoji"].split(": ")
    assert [int(n) for n in shown.split()] == indices
    assert names.split(", ") == [EMOJI[i][1] for i in indices]
    assert [int(n) for n in vector["numbers"].split()] == numbers
    info = f"obrolan-sas-mac-v1\0{txn}\0alice\0laptop\0"
    account_mac = mac(shared, vector["I's account key"], info + "account")
    device_mac = mac(shared, vector["I's device Ed25519 key"], info + "device")
    assert vector["I's account_key_mac"] == account_mac
    assert vector["I's device_key_mac"] == device_mac


def test_spec_sas_vector_is_the_samples() -> None:
    """The verify_* samples carry the vector's txn, commitment, R's key and I's MACs."""
    vector = pairs("MACs")
    start = sample_json("plaintext_verify_start")["content"]
    key = sample_json("plaintext_verify_key")["content"]
    macs = sample_json("plaintext_verify_mac")["content"]
    assert start["txn"] == key["txn"] == macs["txn"] == vector["txn"]
    assert base64.b64decode(start["commitment"]).hex() == vector["commitment"]
    assert key["public_key"] == vector["R's SAS public key"]
    assert macs["account_key_mac"] == vector["I's account_key_mac"]
    assert macs["device_key_mac"] == vector["I's device_key_mac"]


def test_spec_emoji_table_is_the_clients() -> None:
    """§22.4 lists the 64 emoji and names of crypto/sas.py, in index order."""
    rows = table(section("SAS emoji").body)
    assert [(int(i), emoji, name) for i, emoji, name in rows] == [
        (i, emoji, name) for i, (emoji, name) in enumerate(EMOJI)
    ]
    assert len(rows) == 64


# --- groups (§23) -------------------------------------------------------------------------------

GROUP_CHAIN = [
    "group_update_create",
    "group_update_add",
    "group_update_mute",
    "group_update_invite",
]


def test_spec_chain_hash_table_is_the_sha256_of_each_update() -> None:
    """§23.5's table: each sample update's seq, op and SHA-256, which the next update's prev is."""
    rows = [[code(cell) for cell in row] for row in table(section("The chain").body)]
    expected = []
    for name in GROUP_CHAIN:
        data = (DATA / f"{name}.json").read_bytes()
        update = groups.decode_group_update(data)
        expected.append(
            [str(update.seq), update.action.__struct_config__.tag, hashlib.sha256(data).hexdigest()]
        )
    assert rows == expected


def test_spec_chain_shows_the_update_samples_in_order() -> None:
    """§23.5 shows the four updates' exact bytes, in chain order."""
    blocks = json_blocks(section("The chain").body)
    assert blocks == [(DATA / f"{name}.json").read_text() for name in GROUP_CHAIN]


def test_spec_moderation_log_is_what_the_reference_client_prints() -> None:
    """§23.20's log lines are `obrolan group log` for the sample chain (describe, UTC times)."""
    (block,) = re.findall(r"```text\n(.*?)\n```", section("The moderation log").body, re.DOTALL)
    lines = []
    for name in GROUP_CHAIN:
        update = groups.decode_group_update((DATA / f"{name}.json").read_bytes())
        when = datetime.datetime.fromtimestamp(update.at_ms / 1000, datetime.UTC)
        lines.append(f"#{update.seq:<4} {when:%Y-%m-%d %H:%M} UTC  {describe(update)}")
    assert block.splitlines() == lines


def test_spec_invite_link_is_the_clients() -> None:
    """§23.16's link template and sample link are what client/groups.py makes for the samples."""
    body = section("Invite links and joining").body
    (template,) = re.findall(r"```text\n(.*?)\n```", body, re.DOTALL)
    (sample_link,) = re.findall(r"`(obrolan://join\?[^`]*)`", body)
    join = sample_json("plaintext_group_join")
    link = invite_link(join["content"]["group_id"], join["content"]["invite_id"], join["recipient"])
    assert sample_link == link
    assert template == invite_link("GROUP_ID", "INVITE_ID", "USERNAME")


def test_spec_signing_table_names_every_signing_function() -> None:
    """§11's table has a row for each function of protocol/signing.py (and the blob store's)."""
    rows = {code(row[0]).split("(")[0] for row in table(section("Signatures").body)}
    assert rows == {*signing.__all__, blobs.blob_request_bytes.__name__}
