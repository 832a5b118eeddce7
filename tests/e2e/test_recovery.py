"""Losing every device: the recovery code reclaims the username with a new account key."""

from __future__ import annotations

import shutil

import pytest

from obrolan.client import Client
from obrolan.client.models import MessageState
from obrolan.crypto.account import RecoveryCode
from obrolan.errors import RequestRefused
from obrolan.protocol.codes import ErrorCode
from tests.e2e.conftest import assert_sending_refused


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
        await Client.recover(profiles("alice"), server.url, "alice", str(RecoveryCode.create()), None)
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
        await assert_sending_refused(bob, "alice")
        assert bob.trust("alice")
        await bob.send("alice", "welcome back")
        await bob.flush(30)
        arrived = await alice.sync()
        assert [m.text for m in arrived if m.state is not MessageState.NOTICE] == ["welcome back"]
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
