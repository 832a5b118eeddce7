"""The group state machine: chains signed with real account keys, every rule and refusal."""

from __future__ import annotations

import dataclasses
import doctest
import re
from datetime import UTC, datetime

import msgspec
import pytest

import obrolan.crypto.group_state
from obrolan.crypto.account import AccountKey
from obrolan.crypto.group_state import (
    GroupView,
    Member,
    UpdateRejected,
    apply_update,
    can_post,
    describe,
    new_group,
    new_group_id,
    next_update,
    peek,
    sign_update,
    update_hash,
)
from obrolan.errors import CryptoError
from obrolan.protocol.groups import (
    Add,
    ApproveJoin,
    Create,
    DeleteMessage,
    Demote,
    EditInfo,
    GroupAction,
    GroupId,
    GroupSettings,
    GroupUpdate,
    Invite,
    Leave,
    Mute,
    Promote,
    RejectJoin,
    Remove,
    RevokeInvite,
    SetSettings,
    SignedGroupUpdate,
    Transfer,
)


def _ms(year: int, month: int, day: int, hour: int, minute: int) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


T0 = _ms(2026, 11, 29, 12, 0)
HOUR = 3600 * 1000
GROUP = new_group_id("alice", bytes(range(16)))
INVITE = "invite-0000000001"
MESSAGE = "message-000000001"
PEOPLE = ("alice", "bob", "carol", "dave", "mallory")


class Chain:
    """One device's view of a group, fed updates signed with real account keys."""

    def __init__(self) -> None:
        self.keys = {name: AccountKey.create() for name in PEOPLE}
        self.view: GroupView | None = None

    def key_of(self, username: str) -> str | None:
        key = self.keys.get(username)
        return key.public if key else None

    def create(self, owner: str, create: Create, at_ms: int = T0) -> GroupUpdate:
        signed = sign_update(self.keys[owner], new_group(GROUP, owner, create, at_ms))
        return self.apply(signed)

    def sign(
        self,
        actor: str,
        action: GroupAction,
        at_ms: int = T0,
        reason: str = "",
        signer: str | None = None,
    ) -> SignedGroupUpdate:
        assert self.view is not None
        update = next_update(self.view, actor, action, at_ms, reason)
        return sign_update(self.keys[signer or actor], update)

    def apply(self, signed: SignedGroupUpdate) -> GroupUpdate:
        self.view, update = apply_update(self.view, signed, self.key_of)
        return update

    def do(self, actor: str, action: GroupAction, at_ms: int = T0, reason: str = "") -> GroupUpdate:
        return self.apply(self.sign(actor, action, at_ms, reason))

    def refused(self, signed: SignedGroupUpdate, message: str) -> None:
        """The update is rejected with exactly ``message`` and the view stays as it was."""
        before = self.view
        with pytest.raises(UpdateRejected, match=f"^{re.escape(message)}$"):
            self.apply(signed)
        assert self.view is before

    def refuses(self, actor: str, action: GroupAction, message: str, at_ms: int = T0) -> None:
        self.refused(self.sign(actor, action, at_ms), message)

    @property
    def state(self) -> GroupView:
        assert self.view is not None
        return self.view


@pytest.fixture
def chain() -> Chain:
    """alice owns the group, bob is an admin, carol a member; dave and mallory are outside."""
    c = Chain()
    c.create("alice", Create(title="Team", members=["bob", "carol"]))
    c.do("alice", Promote(user="bob"))
    return c


def _roles(view: GroupView) -> dict[str, str]:
    return {name: member.role for name, member in view.members.items()}


# --- a whole chain -----------------------------------------------------------


def test_group_chain_of_real_signed_updates_applies() -> None:
    """Create, promote, edit, settings, invite, join, mute, delete, transfer, leave: all apply."""
    c = Chain()
    genesis = new_group(GROUP, "alice", Create(title="Team", rules="be nice", members=["bob"]), T0)
    signed = sign_update(c.keys["alice"], genesis)
    assert c.apply(signed) == genesis
    view = c.state
    assert (view.group_id, view.title, view.rules, view.seq) == (GROUP, "Team", "be nice", 0)
    assert view.head == update_hash(signed)
    assert _roles(view) == {"alice": "owner", "bob": "member"}

    c.do("alice", Promote(user="bob"))
    c.do("bob", EditInfo(title="Team B", description="our team"))
    c.do("bob", SetSettings(settings=GroupSettings(who_can_post="admins", who_can_add="all")))
    c.do("bob", Invite(invite_id=INVITE, expires_at_ms=T0 + HOUR))
    c.do("bob", ApproveJoin(user="carol", invite_id=INVITE), at_ms=T0 + HOUR - 1)
    c.do("carol", Add(user="dave"))
    c.do("bob", Mute(user="dave", until_ms=T0 + 2 * HOUR))
    c.do("carol", DeleteMessage(sender="carol", message_id=MESSAGE))
    c.do("alice", Transfer(user="bob"))
    c.do("alice", Leave())

    view = c.state
    assert view.seq == 10
    assert (view.title, view.description, view.rules) == ("Team B", "our team", "be nice")
    assert view.settings == GroupSettings(who_can_post="admins", who_can_add="all")
    assert _roles(view) == {"bob": "owner", "carol": "member", "dave": "member"}
    assert view.members["dave"] == Member("dave", "member", T0 + 2 * HOUR)
    assert view.owner == "bob" and view.admins == ["bob"]
    assert view.invites == {INVITE: T0 + HOUR}
    assert view.deleted == {("carol", MESSAGE)}


def test_group_view_helpers_name_roles(chain: Chain) -> None:
    """role, is_admin, owner and admins (owner first) read the members."""
    chain.do("alice", Add(user="dave"))
    chain.do("alice", Promote(user="dave"))
    view = chain.state
    assert [view.role(n) for n in PEOPLE] == ["owner", "admin", "member", "admin", None]
    assert [view.is_admin(n) for n in PEOPLE] == [True, True, False, True, False]
    assert view.owner == "alice"
    assert view.admins == ["alice", "bob", "dave"]


def test_group_head_is_hash_of_last_update_and_next_update_follows_it(chain: Chain) -> None:
    """The view's head is SHA-256 of the applied bytes; next_update names it as prev."""
    signed = chain.sign("bob", Add(user="dave"))
    before = chain.state
    chain.apply(signed)
    assert chain.state.head == update_hash(signed)
    following = next_update(chain.state, "bob", Leave(), at_ms=T0)
    assert (following.seq, following.prev, following.group_id) == (
        before.seq + 2,
        chain.state.head,
        GROUP,
    )


def test_group_apply_never_changes_the_old_view(chain: Chain) -> None:
    """Every kind of update returns a new view; the old one reads the same after."""
    old = chain.state
    snapshot = dataclasses.replace(
        old, members=dict(old.members), invites=dict(old.invites), deleted=frozenset(old.deleted)
    )
    chain.do("bob", Add(user="dave"))
    chain.do("bob", Remove(user="carol"))
    chain.do("bob", Invite(invite_id=INVITE, expires_at_ms=T0 + HOUR))
    chain.do("bob", Mute(user="dave", until_ms=T0 + HOUR))
    chain.do("bob", DeleteMessage(sender="dave", message_id=MESSAGE))
    chain.do("bob", EditInfo(rules="no spam"))
    chain.do("alice", Transfer(user="bob"))
    assert chain.state is not old
    assert old == snapshot
    assert _roles(old) == {"alice": "owner", "bob": "admin", "carol": "member"}
    with pytest.raises(TypeError):
        old.members["mallory"] = Member("mallory", "owner")  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        old.seq = 99  # type: ignore[misc]


# --- the chain: order, signatures, forks -------------------------------------


def test_group_rejects_replayed_old_update(chain: Chain) -> None:
    """An update applied before (seq too low) is refused as a replay."""
    signed = chain.sign("bob", Add(user="dave"))
    chain.apply(signed)
    chain.do("bob", Remove(user="dave"))
    chain.refused(signed, "replayed or out of order: seq 2, expected 4")


def test_group_rejects_updates_in_swapped_order(chain: Chain) -> None:
    """The later of two updates arriving first (seq too high) is refused; in order both apply."""
    view = chain.state
    first = chain.sign("bob", Add(user="dave"))
    chain.apply(first)
    second = chain.sign("bob", Remove(user="dave"))
    chain.view = view
    chain.refused(second, "replayed or out of order: seq 3, expected 2")
    chain.apply(first)
    chain.apply(second)
    assert chain.state.seq == 3


def test_group_rejects_forged_signature(chain: Chain) -> None:
    """An update naming alice but signed by mallory's key is refused."""
    forged = chain.sign("alice", Promote(user="mallory"), signer="mallory")
    chain.refused(forged, "the update is not signed by alice's account key")
    tampered = chain.sign("bob", Add(user="dave"))
    altered = tampered.update.replace(b'"dave"', b'"mallory"')
    chain.refused(
        SignedGroupUpdate(update=altered, signature=tampered.signature),
        "the update is not signed by bob's account key",
    )


def test_group_rejects_actor_without_known_account_key(chain: Chain) -> None:
    """No key known for the actor: refused before anything else about them is trusted."""
    chain.keys["erin"] = AccountKey.create()
    signed = chain.sign("erin", Add(user="dave"))
    del chain.keys["erin"]
    chain.refused(signed, "no account key known for erin")


def test_group_rejects_fork_whose_prev_is_not_the_head(chain: Chain) -> None:
    """Two updates on the same head: after one applies, the other does not follow it."""
    ours = chain.sign("bob", Add(user="dave"))
    theirs = chain.sign("alice", Remove(user="carol"))
    chain.apply(ours)
    wrong_prev = next_update(chain.state, "alice", Remove(user="carol"), T0)
    wrong_prev = msgspec.structs.replace(wrong_prev, prev=bytes(32))
    chain.refused(
        sign_update(chain.keys["alice"], wrong_prev),
        "does not follow this device's state of the group",
    )
    chain.refused(theirs, "replayed or out of order: seq 2, expected 3")


def test_group_rejects_create_after_genesis(chain: Chain) -> None:
    """A create in the middle of the chain (even with the right seq and prev) is refused."""
    chain.refuses(
        "alice", Create(title="Again"), "the group exists already: a create only starts a group"
    )


def test_group_id_names_its_creator_so_nobody_else_can_start_it() -> None:
    """A create whose actor is not the one the id was made for is refused (no squatting)."""
    squatter = Chain()
    with pytest.raises(UpdateRejected, match="the group id was not made by mallory"):
        squatter.create("mallory", Create(title="Team", members=["bob"]))
    random_id = msgspec.structs.replace(
        new_group(GROUP, "alice", Create(title="T"), T0), group_id="P3fXXjmF7szIwqGEmHDSqQ"
    )
    with pytest.raises(UpdateRejected, match="the group id was not made by alice"):
        squatter.apply(sign_update(squatter.keys["alice"], random_id))
    assert squatter.view is None
    squatter.create("alice", Create(title="Team", members=["bob"]))
    assert squatter.state.owner == "alice"


def test_group_ids_are_fresh_and_fit_the_wire_type() -> None:
    ids = {new_group_id("alice") for _ in range(2000)}
    assert len(ids) == 2000 and {len(i) for i in ids} == {43}
    assert not any(i.startswith("-") for i in ids)
    assert all(msgspec.convert(i, GroupId) == i for i in ids)
    assert new_group_id("alice", bytes(16)) != new_group_id("bob", bytes(16))
    with pytest.raises(ValueError):
        new_group_id("alice", b"short")


def test_group_rejects_first_update_that_is_not_create_or_not_seq_0() -> None:
    """With no state, only a create at seq 0 with no prev starts the group."""
    c = Chain()
    add = GroupUpdate(group_id=GROUP, seq=0, prev=None, actor="alice", at_ms=T0, action=Leave())
    with pytest.raises(UpdateRejected, match="it has none"):
        c.apply(sign_update(c.keys["alice"], add))
    late = msgspec.structs.replace(new_group(GROUP, "alice", Create(title="T"), T0), seq=4)
    with pytest.raises(UpdateRejected, match="seq 0, no prev"):
        c.apply(sign_update(c.keys["alice"], late))
    assert c.view is None


def test_group_rejects_update_of_another_group(chain: Chain) -> None:
    """An update for another group id never applies to this one."""
    update = next_update(chain.state, "bob", Add(user="dave"), T0)
    other = msgspec.structs.replace(update, group_id="other-group-000001")
    chain.refused(
        sign_update(chain.keys["bob"], other),
        f"the update is for group other-group-000001, not {GROUP}",
    )


def test_group_rejects_malformed_update_bytes(chain: Chain) -> None:
    """Bytes that are not a GroupUpdate, or break its limits, are refused by peek and apply."""
    good = chain.sign("bob", Add(user="dave"))
    for body in (
        b"",
        b"not json",
        b'{"group_id": "short"}',
        good.update.replace(b'"dave"', b'"Not A Username!"'),
        good.update.replace(b'"op":"add"', b'"op":"explode"'),
    ):
        signed = SignedGroupUpdate(update=body, signature=good.signature)
        with pytest.raises(UpdateRejected, match=r"^the group update is malformed"):
            peek(signed)
        before = chain.view
        with pytest.raises(UpdateRejected, match=r"^the group update is malformed"):
            chain.apply(signed)
        assert chain.view is before


def test_group_peek_reads_the_actor_before_verifying(chain: Chain) -> None:
    """peek decodes even a forged update: the caller learns whose key to fetch."""
    forged = chain.sign("alice", Promote(user="mallory"), signer="mallory")
    update = peek(forged)
    assert (update.actor, update.action, update.seq) == ("alice", Promote(user="mallory"), 2)


def test_group_update_rejected_is_a_crypto_error() -> None:
    """Callers that handle CryptoError handle a refused update too."""
    assert issubclass(UpdateRejected, CryptoError)


# --- who may do what ---------------------------------------------------------


def test_group_create_makes_actor_owner_and_listed_people_members() -> None:
    """The creator owns the group; everyone listed joins as a plain member."""
    c = Chain()
    c.create("alice", Create(title="T", members=["carol", "bob"]))
    assert list(c.state.members.values()) == [
        Member("alice", "owner"),
        Member("carol", "member"),
        Member("bob", "member"),
    ]


@pytest.mark.parametrize(
    ("members", "twice"), [(["bob", "alice"], "alice"), (["bob", "bob"], "bob")]
)
def test_group_create_refuses_someone_listed_twice(members: list[str], twice: str) -> None:
    """The owner among the members, or a member listed twice, is refused."""
    c = Chain()
    with pytest.raises(UpdateRejected, match=f"^{twice} is listed twice in the new group$"):
        c.create("alice", Create(title="T", members=members))
    assert c.view is None


def test_group_member_cannot_add_when_only_admins_add(chain: Chain) -> None:
    """who_can_add=admins: carol cannot add; with who_can_add=all she can."""
    chain.refuses("carol", Add(user="dave"), "carol is not an admin of this group")
    chain.do("bob", SetSettings(settings=GroupSettings(who_can_add="all")))
    chain.do("carol", Add(user="dave"))
    assert chain.state.role("dave") == "member"


def test_group_refuses_adding_a_member_twice(chain: Chain) -> None:
    """Adding someone who is already in the group is refused."""
    chain.refuses("bob", Add(user="carol"), "carol is already a member")


def test_group_outsider_can_do_nothing(chain: Chain) -> None:
    """mallory, known but not a member, cannot act even on herself."""
    chain.refuses("mallory", Add(user="mallory"), "mallory is not a member")
    chain.refuses("mallory", Leave(), "mallory is not a member")
    chain.refuses(
        "mallory", DeleteMessage(sender="mallory", message_id=MESSAGE), "mallory is not a member"
    )


def test_group_demoted_admin_can_no_longer_remove(chain: Chain) -> None:
    """bob could remove while admin; demoted, he cannot."""
    chain.do("alice", Demote(user="bob"))
    chain.refuses("bob", Remove(user="carol"), "bob is not an admin of this group")


def test_group_remove_rules(chain: Chain) -> None:
    """Admins remove members; only the owner removes admins; nobody removes the owner."""
    chain.refuses(
        "carol",
        Remove(user="bob"),
        "only the owner can remove an admin, and carol is not the owner",
    )
    chain.refuses("bob", Remove(user="alice"), "nobody can remove the owner")
    chain.refuses("alice", Remove(user="alice"), "nobody can remove the owner")
    chain.refuses("bob", Remove(user="dave"), "dave is not a member")
    chain.do("alice", Add(user="dave"))
    chain.do("alice", Promote(user="dave"))
    chain.refuses(
        "bob", Remove(user="dave"), "only the owner can remove an admin, and bob is not the owner"
    )
    chain.do("alice", Remove(user="dave"))
    chain.do("bob", Remove(user="carol"))
    assert _roles(chain.state) == {"alice": "owner", "bob": "admin"}


def test_group_member_cannot_remove_a_member(chain: Chain) -> None:
    """A plain member removing another member is refused."""
    chain.do("bob", Add(user="dave"))
    chain.refuses("carol", Remove(user="dave"), "carol is not an admin of this group")


def test_group_leave_rules(chain: Chain) -> None:
    """Members and admins leave; the owner must hand the group over first."""
    chain.refuses("alice", Leave(), "alice owns the group: hand it over before leaving")
    chain.do("carol", Leave())
    chain.do("bob", Leave())
    assert _roles(chain.state) == {"alice": "owner"}


def test_group_only_owner_promotes_and_demotes(chain: Chain) -> None:
    """bob (admin) can neither promote nor demote; alice can, once per change."""
    chain.refuses(
        "bob", Promote(user="carol"), "only the owner can make admins, and bob is not the owner"
    )
    chain.refuses(
        "carol", Promote(user="carol"), "only the owner can make admins, and carol is not the owner"
    )
    chain.refuses(
        "bob", Demote(user="bob"), "only the owner can demote admins, and bob is not the owner"
    )
    chain.refuses("alice", Promote(user="bob"), "bob is already an admin")
    chain.refuses("alice", Promote(user="dave"), "dave is not a member")
    chain.refuses("alice", Demote(user="carol"), "carol is not an admin")
    chain.refuses("alice", Demote(user="alice"), "alice is not an admin")
    chain.do("alice", Promote(user="carol"))
    chain.do("alice", Demote(user="bob"))
    assert _roles(chain.state) == {"alice": "owner", "bob": "member", "carol": "admin"}


def test_group_transfer_rules(chain: Chain) -> None:
    """Only the owner hands over, to another member; the old owner stays as an admin."""
    chain.refuses(
        "bob",
        Transfer(user="bob"),
        "only the owner can hand over the group, and bob is not the owner",
    )
    chain.refuses("alice", Transfer(user="alice"), "alice owns the group already")
    chain.refuses("alice", Transfer(user="dave"), "dave is not a member")
    chain.do("alice", Transfer(user="carol"))
    assert _roles(chain.state) == {"alice": "admin", "bob": "admin", "carol": "owner"}
    assert chain.state.owner == "carol"
    chain.refuses(
        "alice",
        Remove(user="bob"),
        "only the owner can remove an admin, and alice is not the owner",
    )
    chain.do("carol", Remove(user="alice"))


def test_group_admin_only_actions_refused_to_members(chain: Chain) -> None:
    """Edit, settings, invites, join decisions and mutes need an admin."""
    chain.do("bob", Invite(invite_id=INVITE, expires_at_ms=T0 + HOUR))
    for action in (
        EditInfo(title="Mine"),
        SetSettings(settings=GroupSettings(who_can_post="admins")),
        Invite(invite_id="invite-0000000002", expires_at_ms=T0 + HOUR),
        RevokeInvite(invite_id=INVITE),
        ApproveJoin(user="dave", invite_id=INVITE),
        RejectJoin(user="dave", invite_id=INVITE),
        Mute(user="carol", until_ms=T0 + HOUR),
        DeleteMessage(sender="bob", message_id=MESSAGE),
    ):
        chain.refuses("carol", action, "carol is not an admin of this group")


def test_group_edit_changes_only_given_fields_and_not_nothing(chain: Chain) -> None:
    """Null fields stay; an edit with no field at all is refused."""
    chain.do("bob", EditInfo(description="about"))
    chain.do("alice", EditInfo(rules="rule 1"))
    view = chain.state
    assert (view.title, view.description, view.rules) == ("Team", "about", "rule 1")
    chain.refuses("bob", EditInfo(), "the edit changes nothing")


def test_group_invite_rules(chain: Chain) -> None:
    """Invite ids are unique, must expire after they are made; revoking needs a known id."""
    chain.refuses(
        "bob",
        Invite(invite_id=INVITE, expires_at_ms=T0),
        "the invite would expire before it was made",
    )
    chain.do("bob", Invite(invite_id=INVITE, expires_at_ms=T0 + HOUR))
    chain.refuses(
        "alice",
        Invite(invite_id=INVITE, expires_at_ms=T0 + 2 * HOUR),
        "an invite with this id exists already",
    )
    chain.refuses(
        "bob",
        RevokeInvite(invite_id="invite-0000000002"),
        "unknown invite (never made, or revoked)",
    )
    chain.do("alice", RevokeInvite(invite_id=INVITE))
    assert chain.state.invites == {}


def test_group_approve_join_rules(chain: Chain) -> None:
    """Approval needs a known, unrevoked, unexpired invite and someone not yet a member."""
    second = "invite-0000000002"
    chain.refuses(
        "bob", ApproveJoin(user="dave", invite_id=INVITE), "unknown invite (never made, or revoked)"
    )
    chain.do("bob", Invite(invite_id=INVITE, expires_at_ms=T0 + HOUR))
    chain.do("bob", Invite(invite_id=second, expires_at_ms=T0 + HOUR))
    chain.do("bob", RevokeInvite(invite_id=second))
    chain.refuses(
        "bob", ApproveJoin(user="dave", invite_id=second), "unknown invite (never made, or revoked)"
    )
    chain.refuses(
        "bob", ApproveJoin(user="dave", invite_id=INVITE), "the invite expired", at_ms=T0 + HOUR
    )
    chain.refuses("bob", ApproveJoin(user="carol", invite_id=INVITE), "carol is already a member")
    chain.do("bob", ApproveJoin(user="dave", invite_id=INVITE), at_ms=T0 + HOUR - 1)
    assert chain.state.role("dave") == "member"
    assert chain.state.invites == {INVITE: T0 + HOUR}


def test_group_reject_join_changes_no_one(chain: Chain) -> None:
    """A turned-down request only advances the chain; a member cannot be turned down."""
    before = chain.state
    chain.do("bob", RejectJoin(user="dave", invite_id=INVITE))
    assert chain.state.members == before.members and chain.state.seq == before.seq + 1
    chain.refuses("bob", RejectJoin(user="carol", invite_id=INVITE), "carol is already a member")


def test_group_mute_rules_and_can_post(chain: Chain) -> None:
    """Only plain members are muted; a mute blocks posting until it ends or is lifted."""
    chain.refuses(
        "alice", Mute(user="bob", until_ms=T0 + HOUR), "bob is an admin: admins cannot be muted"
    )
    chain.refuses(
        "bob", Mute(user="alice", until_ms=T0 + HOUR), "alice is an admin: admins cannot be muted"
    )
    chain.refuses("bob", Mute(user="dave", until_ms=T0 + HOUR), "dave is not a member")
    chain.refuses("bob", Mute(user="carol", until_ms=-1), "a mute ends at a time ≥ 0 (0 lifts it)")
    until = _ms(2026, 11, 29, 14, 5)
    chain.do("bob", Mute(user="carol", until_ms=until))
    view = chain.state
    assert can_post(view, "carol", T0) == "carol is muted until 14:05 UTC"
    assert can_post(view, "carol", _ms(2026, 11, 28, 9, 0)) == (
        "carol is muted until 2026-11-29 14:05 UTC"
    )
    assert can_post(view, "carol", until) is None
    assert can_post(view, "bob", T0) is None
    chain.do("bob", Mute(user="carol", until_ms=0))
    assert can_post(chain.state, "carol", T0) is None


def test_group_promote_lifts_a_mute(chain: Chain) -> None:
    """A muted member made admin can post (admins cannot be muted, nor unmuted)."""
    chain.do("bob", Mute(user="carol", until_ms=T0 + HOUR))
    chain.do("alice", Promote(user="carol"))
    assert can_post(chain.state, "carol", T0) is None


def test_group_can_post_refuses_outsiders_and_non_admins_when_admins_only(chain: Chain) -> None:
    """who_can_post=admins leaves members silent; outsiders never post."""
    assert can_post(chain.state, "dave", T0) == "dave is not a member"
    chain.do("bob", SetSettings(settings=GroupSettings(who_can_post="admins")))
    assert can_post(chain.state, "carol", T0) == "only admins may post"
    assert can_post(chain.state, "bob", T0) is None
    assert can_post(chain.state, "alice", T0) is None


def test_group_delete_message_rules(chain: Chain) -> None:
    """A member deletes only their own messages; admins delete anyone's."""
    chain.refuses(
        "carol",
        DeleteMessage(sender="bob", message_id=MESSAGE),
        "carol is not an admin of this group",
    )
    chain.do("carol", DeleteMessage(sender="carol", message_id=MESSAGE))
    chain.do("bob", DeleteMessage(sender="alice", message_id=MESSAGE))
    chain.do("bob", DeleteMessage(sender="mallory", message_id=MESSAGE))
    assert chain.state.deleted == {
        ("carol", MESSAGE),
        ("alice", MESSAGE),
        ("mallory", MESSAGE),
    }


def test_group_removed_member_rejoins_fresh(chain: Chain) -> None:
    """Removal forgets the role and the mute; being added again starts as a plain member."""
    chain.do("bob", Mute(user="carol", until_ms=T0 + HOUR))
    chain.do("bob", Remove(user="carol"))
    assert chain.state.role("carol") is None
    chain.do("bob", Add(user="carol"))
    assert chain.state.members["carol"] == Member("carol", "member")


# --- the moderation log ------------------------------------------------------


def _update(actor: str, action: GroupAction, reason: str = "") -> GroupUpdate:
    return GroupUpdate(
        group_id=GROUP, seq=1, prev=bytes(32), actor=actor, at_ms=T0, action=action, reason=reason
    )


@pytest.mark.parametrize(
    ("actor", "action", "reason", "line"),
    [
        ("alice", Create(title="Team"), "", "alice created the group “Team”"),
        (
            "alice",
            Create(title="Team", members=["bob", "carol", "dave"]),
            "",
            "alice created the group “Team” with bob, carol and dave",
        ),
        ("alice", Add(user="bob"), "", "alice added bob"),
        ("alice", Remove(user="bob"), "spam", "alice removed bob — spam"),
        ("bob", Leave(), "", "bob left"),
        ("alice", Promote(user="bob"), "", "alice made bob an admin"),
        ("alice", Demote(user="bob"), "", "alice made bob a member again (no longer admin)"),
        ("alice", Transfer(user="bob"), "", "alice handed the group over to bob (now its owner)"),
        ("alice", EditInfo(rules="x"), "", "alice changed the rules"),
        ("alice", EditInfo(title="New"), "", "alice changed the title to “New”"),
        (
            "alice",
            EditInfo(title="New", description="d", rules="r"),
            "",
            "alice changed the title to “New”, the description and the rules",
        ),
        (
            "alice",
            SetSettings(settings=GroupSettings(who_can_post="admins", approval=False)),
            "",
            "alice set who can post: admins, who can add: admins, join approval: off",
        ),
        (
            "alice",
            Invite(invite_id=INVITE, expires_at_ms=_ms(2026, 12, 6, 12, 0)),
            "",
            "alice created an invite link (expires 2026-12-06 12:00 UTC)",
        ),
        (
            "alice",
            RevokeInvite(invite_id=INVITE),
            "leaked",
            "alice revoked an invite link — leaked",
        ),
        (
            "alice",
            ApproveJoin(user="bob", invite_id=INVITE),
            "",
            "alice approved bob's join request",
        ),
        (
            "alice",
            RejectJoin(user="bob", invite_id=INVITE),
            "",
            "alice turned down bob's join request",
        ),
        (
            "alice",
            Mute(user="carol", until_ms=_ms(2026, 11, 29, 14, 5)),
            "flooding",
            "alice muted carol until 2026-11-29 14:05 UTC — flooding",
        ),
        ("alice", Mute(user="carol", until_ms=0), "", "alice unmuted carol"),
        (
            "alice",
            DeleteMessage(sender="bob", message_id=MESSAGE),
            "off topic",
            "alice deleted a message of bob — off topic",
        ),
        (
            "bob",
            DeleteMessage(sender="bob", message_id=MESSAGE),
            "",
            "bob deleted one of their own messages",
        ),
    ],
)
def test_group_describe_writes_moderation_log_lines(
    actor: str, action: GroupAction, reason: str, line: str
) -> None:
    """Each action reads as one line; a reason follows an em dash."""
    assert describe(_update(actor, action, reason)) == line


def test_group_describe_matches_what_apply_returns(chain: Chain) -> None:
    """apply_update hands back the decoded update, ready for describe."""
    update = chain.do("bob", Remove(user="carol"), reason="spam")
    assert describe(update) == "bob removed carol — spam"


def test_group_state_docstring_example_runs() -> None:
    """The create → add example in the module docstring passes as a doctest."""
    result = doctest.testmod(obrolan.crypto.group_state, raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0
