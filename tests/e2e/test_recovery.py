"""Losing every device: the recovery code reclaims the username with a new account key."""

from __future__ import annotations

import shutil

import pytest

from obrolan.client import Client
from obrolan.client.models import MessageState
from obrolan.client.store import now_ms
from obrolan.crypto.account import RecoveryCode
from obrolan.crypto.group_state import next_update, sign_update
from obrolan.errors import RequestRefused
from obrolan.protocol import groups
from obrolan.protocol.codes import ErrorCode
from tests.e2e.conftest import assert_sending_held
from tests.e2e.test_groups_malicious import send_state


async def test_recovery_code_reclaims_the_username(server, profiles) -> None:  # type: ignore[no-untyped-def]
    alice = await Client.register(profiles("alice"), server.url, "alice", None)
    bob = await Client.register(profiles("bob"), server.url, "bob", None)
    code = alice.recovery_code
    assert code is not None
    old_key = alice.account_key
    alice.accept("bob")
    bob.accept("alice")
    await bob.send("alice", "before the loss")
    await bob.flush(30)
    await alice.sync()
    assert bob.mark_verified("alice", old_key)
    await alice.close()
    shutil.rmtree(profiles("alice"))  # every device of alice is gone

    with pytest.raises(RequestRefused) as wrong:
        await Client.recover(
            profiles("alice"), server.url, "alice", str(RecoveryCode.create()), None
        )
    assert wrong.value.code == ErrorCode.AUTH_FAILED
    assert not profiles("alice").exists()
    await bob.sync()
    await bob.send("alice", "a wrong code changed nothing")  # still the old account key
    await bob.flush(30)

    alice = await Client.recover(profiles("alice"), server.url, "alice", str(code).lower(), None)
    alice.accept("bob")  # before anything arrives: bob's messages are not requests
    try:
        assert alice.account_key != old_key
        assert alice.recovery_code is not None and alice.recovery_code != code
        assert alice.history("bob") == []  # history was on the lost device only
        assert await alice.sync() == []  # nothing queued for the old device reaches the new one

        await bob.sync()
        await assert_sending_held(bob, "alice")
        assert bob.trust("alice")
        await bob.send("alice", "welcome back")
        await bob.flush(30)
        arrived = await alice.sync()
        assert [m.text for m in arrived if m.state is not MessageState.NOTICE] == [
            "should not leave",  # held until bob accepted alice's new key, then sent to it
            "still held",
            "welcome back",
        ]
        # bob's earlier messages went to the lost device; the new device starts counting
        # bob's messages where it joined, so it raises no false "missing" alarm
        assert not any("may be missing" in m.text for m in arrived)

        with pytest.raises(RequestRefused):  # the first code was used up
            await Client.recover(profiles("alice2"), server.url, "alice", str(code), None)
        rotated = await alice.rotate_recovery_code()
        assert rotated != alice.recovery_code
    finally:
        await alice.close()
        await bob.close()


async def test_a_group_made_before_its_owner_recovered_can_still_be_joined(
    server, profiles
) -> None:  # type: ignore[no-untyped-def]
    """alice made a group and made bob an admin, then lost every device and recovered. When
    bob adds carol, carol's device checks alice's updates with the key alice had then,
    proven to come before her new one (spec §19.3, §23.7 step 4). An update signed with
    the old key now, by whoever holds the lost device's key, counts nowhere. alice's new
    device asks for the chain when bob's key reaches it, and is in the group again."""
    clients = {
        name: await Client.register(profiles(name), server.url, name, None)
        for name in ("alice", "bob", "carol")
    }
    alice, bob, carol = clients["alice"], clients["bob"], clients["carol"]
    try:
        view = await alice.groups.create("Club", ["bob"])
        await alice.groups.act(view.group_id, groups.Promote(user="bob"))
        await alice.flush(30)
        await bob.sync()
        assert bob.groups.view(view.group_id).role("bob") == "admin"
        code, lost_key = alice.recovery_code, alice._account
        assert code is not None
        await alice.close()
        shutil.rmtree(profiles("alice"))
        alice = clients["alice"] = await Client.recover(
            profiles("alice"), server.url, "alice", str(code), None
        )

        await alice.send("bob", "I lost my phone: this is my new key")
        await alice.flush(30)
        await bob.sync()  # a message from a device of a new key: bob looks at alice's list
        assert bob.trust("alice")  # the recovered key, as bob checked with alice
        await bob.groups.act(view.group_id, groups.Add(user="carol"))
        await bob.flush(30)
        await carol.sync()
        joined = carol.groups.view(view.group_id)
        assert joined.owner == "alice" and joined.role("bob") == "admin"
        assert joined.head == bob.groups.view(view.group_id).head

        # whoever holds alice's lost key signs a removal of bob: nobody applies it
        stolen = sign_update(
            lost_key, next_update(joined, "alice", groups.Remove(user="bob"), now_ms())
        )
        await send_state(carol, ["bob"], view.group_id, [stolen])
        await bob.sync()
        assert "bob" in bob.groups.view(view.group_id).members
        assert any(
            "not signed by alice's account key" in m.text for m in bob.groups.history(view.group_id)
        )

        # alice's new device gets the group back: the first key of it that arrives makes
        # the device ask for the chain, which holds her own updates under her old key
        await bob.groups.send(view.group_id, "welcome back, alice")
        await bob.flush(30)
        await alice.sync()  # bob's key arrives, alice's device asks him for the chain
        await alice.flush(30)
        await bob.sync()  # bob's device answers with it
        await bob.flush(30)
        await alice.sync()
        regained = alice.groups.view(view.group_id)
        assert regained.owner == "alice" and regained.head == bob.groups.view(view.group_id).head
        await bob.groups.send(view.group_id, "can you read this?")
        await bob.flush(30)
        await alice.sync()
        assert "can you read this?" in [m.text for m in alice.groups.history(view.group_id)]
    finally:
        for client in clients.values():
            await client.close()
