"""The group samples fit together, really verify and really decrypt (docs/protocol.md §23).

The samples tell one story: alice creates the group "Arisan RT 05" with bob,
adds carol, shares her laptop's Megolm session and posts a welcome to every
member device with one ``send_multi``; carol reports a message of bob, alice
mutes bob and makes an invite link, and dave asks to join with it. The keys
are in tests/data/vectors.json; the tests open and check everything with
them, and replay the chain through the reference state machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import vodozemac

from obrolan.crypto.account import AccountKey
from obrolan.crypto.group_state import (
    GroupView,
    UpdateRejected,
    apply_update,
    can_post,
    next_update,
    sign_update,
)
from obrolan.crypto.signatures import verify
from obrolan.protocol import content, frames, groups
from obrolan.protocol.signing import group_message_bytes, group_update_bytes

DATA = Path(__file__).resolve().parents[1] / "data"
VECTORS = json.loads((DATA / "vectors.json").read_text())
PICKLE_KEY = bytes.fromhex(VECTORS["pickle_key_hex"])
CHAIN = ["group_update_create", "group_update_add", "group_update_mute", "group_update_invite"]


def raw(name: str) -> bytes:
    """The exact bytes of one golden sample."""
    return (DATA / f"{name}.json").read_bytes()


def frame(name: str) -> Any:
    """A frame sample, decoded by the side that receives it."""
    data = raw(name)
    if json.loads(data)["type"] in ("send_multi",):
        return frames.decode_client_frame(data)
    return frames.decode_server_frame(data)


def plaintext(name: str) -> content.Plaintext:
    """A Plaintext sample."""
    return content.decode_plaintext(raw(name))


def device_key(name: str) -> str:
    """The Ed25519 key of a sample device (its vodozemac account)."""
    account = vodozemac.Account.from_pickle(VECTORS["accounts"][name], PICKLE_KEY)
    return account.ed25519_key.to_base64()


ALICE = AccountKey(bytes.fromhex(VECTORS["account_seeds_hex"]["alice"]))


def group_state() -> content.GroupState:
    """The whole chain, as alice's laptop sent it to her phone."""
    body = plaintext("plaintext_group_state").content
    assert isinstance(body, content.GroupState)
    return body


def replay(keys: dict[str, str] | None = None) -> GroupView:
    """The sample chain applied by the reference state machine."""
    known = {"alice": ALICE.public, **(keys or {})}
    view = None
    for signed in group_state().updates:
        view, _ = apply_update(view, signed, known.get)
    assert view is not None
    return view


# --- the chain ----------------------------------------------------------------------------------


def test_group_state_carries_the_update_samples_in_order() -> None:
    """The group_state sample holds the four update samples' exact bytes, for alice's phone."""
    plain, state = plaintext("plaintext_group_state"), group_state()
    assert [s.update for s in state.updates] == [raw(name) for name in CHAIN]
    assert (plain.sender, plain.sender_device) == ("alice", "laptop")
    assert (plain.recipient, plain.recipient_device) == ("alice", "phone")
    assert plain.counter is None and plain.sent_to is None
    assert {groups.decode_group_update(raw(name)).group_id for name in CHAIN} == {state.group_id}


def test_chain_links_each_update_to_the_hash_of_the_one_before() -> None:
    """seq counts from 0; prev is null for the create, then SHA-256 of the previous bytes."""
    previous = None
    for seq, name in enumerate(CHAIN):
        update = groups.decode_group_update(raw(name))
        assert update.seq == seq
        assert update.prev == (None if previous is None else hashlib.sha256(previous).digest())
        assert update.actor == "alice"
        previous = raw(name)


def test_chain_signatures_are_alices_account_key_over_the_labelled_bytes() -> None:
    """Each signature verifies with alice's account key over group_update_bytes(update)."""
    for signed in group_state().updates:
        verify(ALICE.public, group_update_bytes(signed.update), signed.signature)


def test_chain_replays_into_the_state_the_story_tells() -> None:
    """The reference state machine accepts the chain: alice owns, carol joined, bob is muted."""
    view = replay()
    mute = groups.decode_group_update(raw("group_update_mute")).action
    invite = groups.decode_group_update(raw("group_update_invite")).action
    assert isinstance(mute, groups.Mute) and isinstance(invite, groups.Invite)
    assert (view.seq, view.head) == (3, hashlib.sha256(raw(CHAIN[-1])).digest())
    assert [(m.username, m.role) for m in view.members.values()] == [
        ("alice", "owner"),
        ("bob", "member"),
        ("carol", "member"),
    ]
    assert view.members["bob"].muted_until_ms == mute.until_ms
    assert dict(view.invites) == {invite.invite_id: invite.expires_at_ms}
    assert can_post(view, "bob", mute.until_ms - 1) is not None
    assert can_post(view, "bob", mute.until_ms) is None


def test_chain_rejects_the_samples_out_of_order() -> None:
    """A replayed or skipped update does not follow the state (§23.7 step 2)."""
    updates = group_state().updates
    keys = {"alice": ALICE.public}.get
    view, _ = apply_update(None, updates[0], keys)
    with pytest.raises(UpdateRejected):
        apply_update(view, updates[2], keys)  # a gap
    view, _ = apply_update(view, updates[1], keys)
    with pytest.raises(UpdateRejected):
        apply_update(view, updates[1], keys)  # a replay


BOB, CAROL, DAVE = (AccountKey(bytes([n]) * 32) for n in (1, 2, 3))
SIGNERS = {"alice": ALICE, "bob": BOB, "carol": CAROL, "dave": DAVE}


LATER = groups.decode_group_update(raw(CHAIN[-1])).at_ms + 60_000
"""A time after the sample chain's last update."""


@pytest.mark.parametrize(
    ("actor", "action", "accepted"),
    [
        ("bob", groups.Add(user="dave"), False),  # who_can_add is admins
        ("alice", groups.Add(user="dave"), True),
        ("alice", groups.Add(user="carol"), False),  # a member already
        ("carol", groups.Remove(user="bob"), False),  # not an admin
        ("alice", groups.Remove(user="alice"), False),  # nobody removes the owner
        ("alice", groups.Leave(), False),  # the owner hands over first
        ("carol", groups.Leave(), True),
        ("dave", groups.Leave(), False),  # not a member
        ("alice", groups.Promote(user="carol"), True),
        ("carol", groups.Promote(user="carol"), False),  # owner only
        ("alice", groups.Demote(user="carol"), False),  # not an admin
        ("alice", groups.Transfer(user="carol"), True),
        ("alice", groups.Transfer(user="alice"), False),
        ("alice", groups.EditInfo(), False),  # changes nothing
        ("alice", groups.EditInfo(rules="Iuran Rp50.000"), True),
        ("bob", groups.SetSettings(settings=groups.GroupSettings(approval=False)), False),
        ("alice", groups.Mute(user="alice", until_ms=0), False),  # admins cannot be muted
        ("alice", groups.Mute(user="carol", until_ms=-1), False),
        ("alice", groups.Mute(user="bob", until_ms=0), True),  # lifts the mute
        ("alice", groups.Invite(invite_id="01-hGjIOfO9PAof_r8-koQ", expires_at_ms=2**40), False),
        ("alice", groups.RevokeInvite(invite_id="01-hGjIOfO9PAof_r8-koQ"), True),
        ("alice", groups.RevokeInvite(invite_id="unknown-invite-0000"), False),
        ("alice", groups.ApproveJoin(user="dave", invite_id="01-hGjIOfO9PAof_r8-koQ"), True),
        ("alice", groups.ApproveJoin(user="bob", invite_id="01-hGjIOfO9PAof_r8-koQ"), False),
        ("alice", groups.RejectJoin(user="dave", invite_id="never-made-invite-00"), True),
        ("bob", groups.DeleteMessage(sender="bob", message_id="a" * 22), True),
        ("bob", groups.DeleteMessage(sender="carol", message_id="a" * 22), False),
        ("alice", groups.DeleteMessage(sender="carol", message_id="a" * 22), True),
    ],
)
def test_spec_permission_rules_hold_for_the_reference_state_machine(
    actor: str, action: groups.GroupAction, accepted: bool
) -> None:
    """§23.6's rule for each action, tried on the sample group's state (after the invite)."""
    keys = {name: key.public for name, key in SIGNERS.items()}
    view = replay(keys)
    signed = sign_update(SIGNERS[actor], next_update(view, actor, action, LATER))
    if accepted:
        apply_update(view, signed, keys.get)
    else:
        with pytest.raises(UpdateRejected):
            apply_update(view, signed, keys.get)


def test_spec_approve_join_needs_an_invite_in_force_by_the_updates_clock() -> None:
    """approve_join is rejected once the update's at_ms reaches the invite's expiry."""
    keys = {"alice": ALICE.public}
    view = replay()
    (expires,) = view.invites.values()
    action = groups.ApproveJoin(user="dave", invite_id=next(iter(view.invites)))
    late = sign_update(ALICE, next_update(view, "alice", action, expires))
    with pytest.raises(UpdateRejected):
        apply_update(view, late, keys.get)
    apply_update(
        view, sign_update(ALICE, next_update(view, "alice", action, expires - 1)), keys.get
    )


# --- Megolm -------------------------------------------------------------------------------------


def group_key() -> content.GroupKey:
    """The session alice's laptop shared with bob's phone."""
    body = plaintext("plaintext_group_key").content
    assert isinstance(body, content.GroupKey)
    return body


def test_group_key_decrypts_the_group_ciphertext_into_the_signed_message() -> None:
    """An inbound session from the key reads the body at index 0: the signed message sample."""
    key, sealed = group_key(), groups.decode_group_ciphertext(raw("group_ciphertext"))
    session = vodozemac.InboundGroupSession(vodozemac.SessionKey(key.session_key))
    assert session.session_id == key.session_id == sealed.group_session
    decrypted = session.decrypt(vodozemac.MegolmMessage.from_bytes(sealed.body))
    assert decrypted.message_index == 0
    assert decrypted.plaintext == raw("signed_group_message")


def test_group_session_reproduces_the_key_and_the_message() -> None:
    """Megolm is deterministic: the pickled outbound session gives the same key and body."""
    session = vodozemac.GroupSession.from_pickle(VECTORS["alice_group_session"], PICKLE_KEY)
    assert session.session_key.to_base64() == group_key().session_key
    body = session.encrypt(raw("signed_group_message")).to_bytes()
    assert body == groups.decode_group_ciphertext(raw("group_ciphertext")).body


def unpadded_b64decode(text: str) -> bytes:
    """Keys and signatures are unpadded base64 (§2.2)."""
    return base64.b64decode(text + "=" * (-len(text) % 4))


def test_spec_session_key_layout() -> None:
    """§23.9: version 2, index, ratchet, the session's key (its id), and that key's signature."""
    key = group_key()
    data = unpadded_b64decode(key.session_key)
    assert len(data) == 229 and len(key.session_key) == 306
    assert data[0] == 0x02 and int.from_bytes(data[1:5], "big") == 0
    assert data[133:165] == unpadded_b64decode(key.session_id)
    verify(key.session_id, data[:165], base64.b64encode(data[165:]).decode().rstrip("="))


def test_spec_megolm_message_is_version_3_and_signed_by_the_session() -> None:
    """§23.13: the body starts with 0x03 and ends with the session key's Ed25519 signature."""
    sealed = groups.decode_group_ciphertext(raw("group_ciphertext"))
    body = sealed.body
    assert body[0] == 0x03
    verify(sealed.group_session, body[:-64], base64.b64encode(body[-64:]).decode().rstrip("="))


def test_signed_group_message_is_alices_laptops() -> None:
    """The welcome is signed by alice's laptop device key, and names the group and its sender."""
    signed = msgspec.json.decode(raw("signed_group_message"), type=groups.SignedGroupMessage)
    assert signed.message == raw("group_message")
    verify(device_key("alice"), group_message_bytes(signed.message), signed.signature)
    message = groups.decode_group_message(signed.message)
    assert message.group_id == group_state().group_id == group_key().group_id
    assert (message.sender, message.sender_device) == ("alice", "laptop")


# --- send_multi, sent, deliver --------------------------------------------------------------------


def test_send_multi_goes_out_once_and_arrives_as_an_ordinary_envelope() -> None:
    """send_multi, sent and deliver carry one envelope id and the group ciphertext's bytes."""
    send, sent, deliver = frame("send_multi"), frame("sent_multi"), frame("deliver_group")
    assert isinstance(send, frames.SendMulti) and isinstance(sent, frames.Sent)
    assert isinstance(deliver, frames.Deliver)
    envelope = send.envelope
    assert envelope.ciphertext == raw("group_ciphertext")
    assert sent.id == send.id and sent.envelope_ids == [envelope.envelope_id]
    assert sent.skipped == [] and set(sent.skipped_recipients) < set(envelope.recipients)
    assert deliver.envelopes == [
        frames.Envelope(envelope.envelope_id, "alice", "laptop", envelope.ciphertext)
    ]
    assert len(set(envelope.recipients)) == len(envelope.recipients)


def test_group_key_went_to_a_recipient_before_the_message() -> None:
    """bob's phone, which the key was sent to, is a recipient; the key left before the message."""
    plain = plaintext("plaintext_group_key")
    send = frame("send_multi")
    message = groups.decode_group_message(raw("group_message"))
    target = frames.Recipient(plain.recipient, plain.recipient_device)
    assert target in send.envelope.recipients
    assert (plain.sender, plain.sender_device) == (message.sender, message.sender_device)
    assert plain.content.sent_at_ms < message.sent_at_ms


# --- reports and joining --------------------------------------------------------------------------


def test_report_carries_bobs_device_signature_and_leads_to_the_mute() -> None:
    """carol's report verifies with bob's phone key (the register sample's); alice then mutes bob."""
    plain = plaintext("plaintext_group_report")
    report = plain.content
    assert isinstance(report, content.GroupReport)
    register = frames.decode_client_frame(raw("register"))
    assert isinstance(register, frames.Register)
    reported = groups.decode_group_message(report.reported.message)
    assert (reported.sender, reported.sender_device) == ("bob", register.device.device_id)
    verify(
        register.device.ed25519,
        group_message_bytes(report.reported.message),
        report.reported.signature,
    )
    assert reported.group_id == report.group_id == group_state().group_id
    assert (plain.sender, plain.recipient) == ("carol", "alice")  # alice is the only admin
    mute = groups.decode_group_update(raw("group_update_mute"))
    assert isinstance(mute.action, groups.Mute) and mute.action.user == reported.sender
    assert report.sent_at_ms < mute.at_ms


def test_join_request_names_the_invite_in_force() -> None:
    """dave's request names the invite alice made, before it expires, and goes to alice."""
    plain = plaintext("plaintext_group_join")
    request = plain.content
    assert isinstance(request, content.GroupJoinRequest)
    invite = groups.decode_group_update(raw("group_update_invite"))
    assert isinstance(invite.action, groups.Invite)
    assert (request.group_id, request.invite_id) == (invite.group_id, invite.action.invite_id)
    assert invite.at_ms < request.sent_at_ms < invite.action.expires_at_ms
    assert (plain.recipient, invite.actor) == ("alice", "alice")
    assert "dave" not in replay().members


def test_spec_group_id_names_alice_as_its_creator() -> None:
    """§23.2, computed from the spec's words: n from the sample seed, then t over label, alice, n."""
    group_id = group_state().group_id
    nonce = hashlib.sha256(b"obrolan sample group Arisan RT 05").digest()[:16]
    tag = hashlib.sha256(b"obrolan-group-id-v1\x00alice\x00" + nonce).digest()[:16]
    assert group_id == base64.urlsafe_b64encode(nonce + tag).rstrip(b"=").decode()
    assert len(group_id) == 43 and not group_id.startswith("-")


def test_chain_under_another_creator_is_refused() -> None:
    """The same create signed by bob (a squatter who learnt the id) does not start the group."""
    bob = AccountKey(bytes.fromhex(VECTORS["account_seeds_hex"]["bob"]))
    create = groups.decode_group_update(raw("group_update_create"))
    squatted = msgspec.structs.replace(
        create, actor="bob", action=msgspec.structs.replace(create.action, members=["alice"])
    )
    with pytest.raises(UpdateRejected, match="the group id was not made by bob"):
        apply_update(None, sign_update(bob, squatted), {"bob": bob.public}.get)
