"""A contact's changed account key holds every message to them until the user accepts it.

Before the fix, a contact who was not verified got the very next message encrypted
to the devices of the new key (only a notice said it changed): a server that swapped
the key read it. Now messages to any contact whose key changed are held in the
outbox, not encrypted, until `obrolan trust` (or ``Client.trust``); first contact
and a new device under the same account key are unchanged.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from obrolan.client import Client
from obrolan.client.models import MessageState
from obrolan.crypto.account import LinkCode
from tests.e2e.conftest import Cli
from tests.e2e.test_devices_cli import register
from tests.e2e.test_malicious_server import EVIL, envelopes_to, replace_account_key
from tests.support.shim import MaliciousServer


def claims_for(shim: MaliciousServer, device_id: str) -> int:
    return sum(
        device_id in f["device_ids"] for f in shim.sent_by_clients if f["type"] == "claim_keys"
    )


def notices(client: Client, peer: str) -> list[str]:
    return [m.text for m in client.history(peer) if m.state is MessageState.NOTICE]


@pytest.fixture
async def behind_shim(server, profiles) -> AsyncIterator[tuple[MaliciousServer, Client, Client]]:  # type: ignore[no-untyped-def]
    """alice behind the shim, bob on the real server, after one honest exchange."""
    async with MaliciousServer(server.ws_url) as shim:
        alice = await Client.register(profiles("alice"), shim.url, "alice", None)
        bob = await Client.register(profiles("bob"), server.url, "bob", None)
        alice.accept("bob")
        bob.accept("alice")
        try:
            await alice.send("bob", "honest hello")
            await alice.flush(30)
            assert [m.text for m in await bob.sync()] == ["honest hello"]
            yield shim, alice, bob
        finally:
            await alice.close()
            await bob.close()


async def test_a_swapped_key_of_an_unverified_contact_holds_messages_until_trust(
    behind_shim, server, profiles
) -> None:  # type: ignore[no-untyped-def]
    shim, alice, _ = behind_shim
    carol = await Client.register(profiles("carol"), server.url, "carol", None)
    carol.accept("alice")
    alice.accept("carol")
    try:
        shim.rewrite = replace_account_key("bob")
        await alice.sync()  # a new connection: alice looks at bob's list again
        held = await alice.send("bob", "not for the server's key")
        await alice.flush(20)  # returns: what is held does not keep the outbox busy
        state = alice.message(held.message_id, "alice")
        assert state is not None and state.state is MessageState.HELD
        assert envelopes_to(shim, EVIL) == []  # nothing encrypted to the new key
        [notice] = [n for n in notices(alice, "bob") if "account key has changed" in n]
        assert "held" in notice and "obrolan trust bob" in notice
        # Others are not held behind it.
        await alice.send("carol", "carol is not held")
        await alice.flush(20)
        assert [m.text for m in await carol.sync()] == ["carol is not held"]
        again = await alice.send("bob", "still held")
        await alice.flush(20)
        assert alice.message(again.message_id, "alice").state is MessageState.HELD  # type: ignore[union-attr]
        assert envelopes_to(shim, EVIL) == [] and claims_for(shim, EVIL) == 0

        assert alice.trust("bob")  # the user accepts the new key
        await alice.flush(20)
        # Now they go to the accepted key's devices: the server's fake device has no
        # one-time key to claim, so here they fail for that reason (a real new device of
        # bob's gets them: test_cli_send_to_a_contact_whose_key_changed_is_held_and_exits_4).
        assert claims_for(shim, EVIL) >= 1
        for queued in (held, again):
            tried = alice.message(queued.message_id, "alice")
            assert tried is not None and tried.state is MessageState.FAILED
            assert "no device that can receive" in (tried.error or "")
    finally:
        await carol.close()


async def test_a_verified_contacts_swapped_key_holds_too(behind_shim) -> None:  # type: ignore[no-untyped-def]
    shim, alice, bob = behind_shim
    assert alice.mark_verified("bob", bob.account_key)
    shim.rewrite = replace_account_key("bob")
    await alice.sync()
    held = await alice.send("bob", "held as well")
    await alice.flush(20)
    assert alice.message(held.message_id, "alice").state is MessageState.HELD  # type: ignore[union-attr]
    assert envelopes_to(shim, EVIL) == []
    shim.rewrite = lambda frame: frame  # the server shows bob's real key again
    await alice.sync()
    await alice.flush(20)
    assert alice.message(held.message_id, "alice").state is MessageState.SENT  # type: ignore[union-attr]
    assert [m.text for m in await bob.sync()] == ["held as well"]
    assert envelopes_to(shim, EVIL) == []


async def test_first_contact_and_a_new_device_under_the_same_key_are_not_held(
    server,
    profiles: Callable[[str], Path],  # type: ignore[no-untyped-def]
) -> None:
    alice = await Client.register(profiles("alice"), server.url, "alice", None)
    bob = await Client.register(profiles("bob"), server.url, "bob", None)
    alice.accept("bob")
    bob.accept("alice")
    try:
        first = await alice.send("bob", "first contact")
        await alice.flush(20)
        assert alice.message(first.message_id, "alice").state is MessageState.SENT  # type: ignore[union-attr]
        assert [m.text for m in await bob.sync()] == ["first contact"]
        codes: asyncio.Queue[LinkCode] = asyncio.Queue()
        linking = asyncio.create_task(
            Client.link(profiles("bob-phone"), server.url, "bob", None, codes.put_nowait)
        )
        await bob.approve(str(await asyncio.wait_for(codes.get(), 15)))
        phone = await asyncio.wait_for(linking, 15)
        phone.accept("alice")
        try:
            await alice.sync()  # a new connection: bob's list, version 2, is looked at again
            later = await alice.send("bob", "to both of bob's devices")
            await alice.flush(20)
            assert alice.message(later.message_id, "alice").state is MessageState.SENT  # type: ignore[union-attr]
            assert [m.text for m in await phone.sync()] == ["to both of bob's devices"]
            assert [m.text for m in await bob.sync()] == ["to both of bob's devices"]
            assert not any("account key" in n for n in notices(alice, "bob"))
        finally:
            await phone.close()
    finally:
        await alice.close()
        await bob.close()


def test_cli_send_to_a_contact_whose_key_changed_is_held_and_exits_4(
    cli: Cli, profiles: Callable[[str], Path]
) -> None:
    alice, bob = profiles("alice"), profiles("bob")
    register(cli, "alice", alice)
    code = register(cli, "bob", bob)
    for me, them in ((alice, "bob"), (bob, "alice")):
        assert cli("requests", "accept", them, "--profile", str(me)).returncode == 0
    assert cli("send", "bob", "before", "--profile", str(alice)).returncode == 0
    shutil.rmtree(bob)  # bob lost every device and recovers: a new account key
    recovered = cli(
        "recover",
        "bob",
        "--server",
        cli.server_url,
        "--profile",
        str(bob),
        "--no-passphrase",
        env_extra={"OBROLAN_RECOVERY_CODE": code},
    )
    assert recovered.returncode == 0, recovered.stderr
    assert cli("requests", "accept", "alice", "--profile", str(bob)).returncode == 0

    held = cli("send", "bob", "held for the new key", "--profile", str(alice))
    assert held.returncode == 4, (held.stdout, held.stderr)
    assert "bob's account key changed" in held.stderr
    assert "obrolan trust bob" in held.stderr and "safety number" in held.stderr
    nothing = cli("sync", "--json", "--profile", str(bob)).json()
    assert [m["text"] for m in nothing if m["state"] != "notice"] == []  # type: ignore[union-attr]
    history = cli("history", "bob", "--json", "--profile", str(alice)).json()
    assert [m["state"] for m in history if m["text"] == "held for the new key"] == ["held"]  # type: ignore[union-attr]

    trusted = cli("trust", "bob", "--profile", str(alice))
    assert trusted.returncode == 0, trusted.stderr
    assert cli("sync", "--profile", str(alice)).returncode == 0  # sends what was held
    arrived = cli("sync", "--json", "--profile", str(bob)).json()
    assert [m["text"] for m in arrived if m["state"] != "notice"] == ["held for the new key"]  # type: ignore[union-attr]
