"""Several devices per account: linking, fan-out and self-sync, removal, recovery.

Real server processes on loopback, real profiles; devices are in-process clients
unless the test is about the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from obrolan.client import Client
from obrolan.client.enrolment import default_device_name
from obrolan.client.models import MessageState
from obrolan.crypto.account import AccountKey, LinkCode
from obrolan.errors import ConfigError, CryptoError, DeviceRemoved, RequestRefused
from obrolan.protocol.codes import ErrorCode
from tests.e2e.conftest import mailbox_rows


async def link(
    server,
    profiles: Callable[[str], Path],
    existing: Client,
    name: str,
    *,
    with_history: bool = False,
) -> Client:  # type: ignore[no-untyped-def]
    """A new device of ``existing``'s account, linked and approved in process."""
    codes: asyncio.Queue[LinkCode] = asyncio.Queue()
    linking = asyncio.create_task(
        Client.link(
            profiles(name), server.url, existing.username, None, codes.put_nowait, device_name=name
        )
    )
    code = await asyncio.wait_for(codes.get(), 15)
    await existing.approve(str(code), with_history=with_history)
    return await asyncio.wait_for(linking, 15)


def texts(client: Client, peer: str) -> list[tuple[str, str]]:
    return [(m.sender, m.text) for m in client.history(peer) if m.state is not MessageState.NOTICE]


async def test_messages_reach_every_device_of_both_people(server, profiles, pair) -> None:  # type: ignore[no-untyped-def]
    laptop, bob = pair
    phone = await link(server, profiles, laptop, "phone")
    phone.accept("bob")  # the laptop has not met bob yet: no contact of his to hand over
    try:
        assert {d.name for d in await laptop.devices()} == {"phone", default_device_name()}
        await bob.send("alice", "hello alice")
        await bob.flush(30)
        for device in (laptop, phone):
            received = await device.sync()
            assert [m.text for m in received] == ["hello alice"]
        await phone.send("bob", "hi from my phone")
        await phone.flush(30)
        assert [m.text for m in await bob.sync()] == ["hi from my phone"]
        await laptop.sync()
        await laptop.send("bob", "and from my laptop")
        await laptop.flush(30)
        await bob.sync()
        await phone.sync()
        expected = [
            ("bob", "hello alice"),
            ("alice", "hi from my phone"),
            ("alice", "and from my laptop"),
        ]
        assert texts(laptop, "bob") == expected
        assert texts(phone, "bob") == expected
        assert texts(bob, "alice") == expected
        own = [m for m in laptop.history("bob") if m.text == "hi from my phone"]
        assert own[0].outgoing and own[0].state is MessageState.SENT
    finally:
        await phone.close()


async def test_a_linked_device_starts_with_the_contacts_and_their_settings(
    server,
    profiles,
    pair,  # type: ignore[no-untyped-def]
) -> None:
    """Linked without history, the phone still knows whom alice talks to: bob's accepted
    conversation with its timer, carol's key (her unanswered request stays with its
    messages on the laptop), dave blocked; and it shows bob's next message at once
    instead of as a request."""
    laptop, bob = pair
    carol = await Client.register(profiles("carol"), server.url, "carol", None)
    dave = await Client.register(profiles("dave"), server.url, "dave", None)
    try:
        await bob.send("alice", "hi")
        await carol.send("alice", "may I write to you?")
        await dave.send("alice", "buy my stuff")
        for sender in (bob, carol, dave):
            await sender.flush(30)
        await laptop.sync()
        await laptop.set_timer("bob", 3600)
        laptop.block("dave")
        phone = await link(server, profiles, laptop, "phone")
    finally:
        await carol.close()
        await dave.close()
    try:
        pins = {c.username: c.identity_key for c in phone.contacts()}
        assert pins == {
            "bob": bob.account_key,
            "carol": carol.account_key,
            "dave": dave.account_key,
        }
        assert phone.timer("bob") == 3600
        assert phone.requests() == [] and phone.blocked() == ["dave"]
        await bob.sync()  # bob's next connection reads alice's list, with the phone
        await bob.send("alice", "seen on the phone?")
        await bob.flush(30)
        [received] = await phone.sync()
        assert received.text == "seen on the phone?" and phone.requests() == []
    finally:
        await phone.close()


async def test_what_the_user_decides_about_a_contact_reaches_their_other_devices(
    server,
    profiles,
    pair,  # type: ignore[no-untyped-def]
) -> None:
    """alice verifies bob and blocks carol on her laptop: her phone does the same; she
    unblocks carol on the phone: the laptop follows (spec §18.1)."""
    laptop, bob = pair
    carol = await Client.register(profiles("carol"), server.url, "carol", None)
    try:
        await bob.send("alice", "hi")
        await carol.send("alice", "hello?")
        for sender in (bob, carol):
            await sender.flush(30)
        await laptop.sync()
        phone = await link(server, profiles, laptop, "phone")
        try:
            assert laptop.mark_verified("bob", bob.account_key)
            laptop.block("carol")
            await laptop.flush(30)
            await phone.sync()
            [pinned] = [c for c in phone.contacts() if c.username == "bob"]
            assert pinned.verified and pinned.identity_key == bob.account_key
            assert phone.blocked() == ["carol"]
            assert f"you verified bob's account key on your device {laptop.device_id}" in [
                m.text for m in phone.history("bob")
            ]

            phone.block("carol", blocked=False)
            await phone.flush(30)
            await laptop.sync()
            assert laptop.blocked() == [] and laptop.requests() == ["carol"]
            await carol.send("alice", "still there?")
            await carol.flush(30)
            await laptop.sync()
            assert "still there?" in [m.text for m in laptop.history("carol")]
        finally:
            await phone.close()
    finally:
        await carol.close()


async def test_a_decision_made_offline_reaches_the_other_devices_with_the_next_connection(
    server,
    profiles,  # type: ignore[no-untyped-def]
) -> None:
    """`obrolan block` works offline: it opens no connection, and the update leaves with
    the next command that goes online."""
    laptop = await Client.register(profiles("alice"), server.url, "alice", None)
    bob = await Client.register(profiles("bob"), server.url, "bob", None)
    phone = await link(server, profiles, laptop, "phone")
    try:
        await bob.send("alice", "hi")
        await bob.flush(30)
        await laptop.sync()
        await laptop.close()
        async with Client.open(profiles("alice"), None, online=False) as offline:
            offline.block("bob")
            assert offline._runner is None  # nothing connected
        async with Client.open(profiles("alice"), None) as online:
            await online.flush(30)
        await phone.sync()
        assert phone.blocked() == ["bob"]
    finally:
        await phone.close()
        await bob.close()


async def test_contacts_beyond_the_answers_room_are_left_out_least_recent_first(
    server,
    profiles,
    pair,  # type: ignore[no-untyped-def]
) -> None:
    """3,000 contacts do not fit a link answer: the approval still goes through, within the
    server's limit, carrying the contacts alice talked to last and leaving out the rest."""
    laptop, bob = pair
    with laptop._store.transaction():
        for number in range(3000):
            laptop._store.pin_contact(f"user{number:04}", AccountKey.create().public, 1)
    await bob.send("alice", "most recent")
    await bob.flush(30)
    await laptop.sync()
    codes: asyncio.Queue[LinkCode] = asyncio.Queue()
    linking = asyncio.create_task(
        Client.link(
            profiles("phone"), server.url, "alice", None, codes.put_nowait, device_name="phone"
        )
    )
    approval = await laptop.approve(str(await asyncio.wait_for(codes.get(), 15)))
    phone = await asyncio.wait_for(linking, 15)
    try:
        assert approval.contacts_left_out > 0
        assert approval.contacts_shared + approval.contacts_left_out == 3001
        carried = {c.username for c in phone.contacts()}
        assert len(carried) == approval.contacts_shared and "bob" in carried
        assert "user0000" in carried and "user2999" not in carried  # then by name
    finally:
        await phone.close()


async def test_approving_past_the_servers_device_limit_is_refused_before_anything_changes(
    server_factory,
    profiles,  # type: ignore[no-untyped-def]
) -> None:
    """With --max-devices 2, alice's laptop links a phone, then refuses a tablet with a
    message that says what to do; her list still holds two devices."""
    server = server_factory("--max-devices", "2")
    laptop = await Client.register(profiles("alice"), server.url, "alice", None)
    try:
        phone = await link(server, profiles, laptop, "phone")
        await phone.close()
        codes: asyncio.Queue[LinkCode] = asyncio.Queue()
        waiting = asyncio.create_task(
            Client.link(
                profiles("tablet"),
                server.url,
                "alice",
                None,
                codes.put_nowait,
                device_name="tablet",
            )
        )
        code = await asyncio.wait_for(codes.get(), 15)
        with pytest.raises(ConfigError, match="has 2 devices, the most this server allows"):
            await laptop.approve(str(code))
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert {d.name for d in await laptop.devices()} == {default_device_name(), "phone"}
    finally:
        await laptop.close()


async def test_a_removed_device_gets_nothing_new(server, profiles, pair) -> None:  # type: ignore[no-untyped-def]
    laptop, bob = pair
    phone = await link(server, profiles, laptop, "phone")
    phone.accept("bob")
    phone_id = phone.device_id
    try:
        await bob.send("alice", "before removal")
        await bob.flush(30)
        assert [m.text for m in await phone.sync()] == ["before removal"]
        await laptop.remove_device(phone_id)
        assert phone_id not in {d.device_id for d in await laptop.devices()}
        phone_key = phone.whoami().curve25519
        assert bob._store.sessions_for(phone_key) != []
        await bob.sync()  # a new connection: bob looks at alice's list again
        await bob.send("alice", "after removal")
        await bob.flush(30)
        assert [m.text for m in await laptop.sync()] == ["before removal", "after removal"]
        assert mailbox_rows(server.data_dir, to="alice") == 0
        assert bob._store.sessions_for(phone_key) == []  # bob dropped its session with it
        with pytest.raises(DeviceRemoved):
            await phone.sync(timeout=10)
        assert "after removal" not in [m.text for m in phone.history("bob")]
    finally:
        await phone.close()


async def test_link_codes_that_are_wrong_reused_or_for_another_account(
    server, profiles, pair
) -> None:  # type: ignore[no-untyped-def]
    laptop, bob = pair
    codes: asyncio.Queue[LinkCode] = asyncio.Queue()
    linking = asyncio.create_task(
        Client.link(profiles("tablet"), server.url, "alice", None, codes.put_nowait)
    )
    code = await asyncio.wait_for(codes.get(), 15)
    with pytest.raises(RequestRefused) as unknown:
        await laptop.approve(str(LinkCode.create()))
    assert unknown.value.code == ErrorCode.UNKNOWN_LINK
    wrong_secret = LinkCode(code.link_id, LinkCode.create().secret)
    with pytest.raises(CryptoError, match="link code is wrong"):
        await laptop.approve(str(wrong_secret))
    with pytest.raises(CryptoError):
        await laptop.approve("not a code")
    with pytest.raises(ConfigError, match="alice's account"):
        await bob.approve(str(code))
    assert len(await laptop.devices()) == 1
    await laptop.approve(str(code))
    tablet = await asyncio.wait_for(linking, 15)
    try:
        with pytest.raises(RequestRefused) as reused:
            await laptop.approve(str(code))
        assert reused.value.code == ErrorCode.LINK_USED
        assert len(await laptop.devices()) == 2
    finally:
        await tablet.close()


async def test_history_moves_to_a_new_device(server, profiles, pair) -> None:  # type: ignore[no-untyped-def]
    laptop, bob = pair
    for n in range(20):
        await bob.send("alice", f"from bob {n}")
        await laptop.send("bob", f"from alice {n}")
    await bob.flush(20)
    await laptop.flush(20)
    await laptop.sync()
    tablet = await link(server, profiles, laptop, "tablet", with_history=True)
    try:
        assert tablet.history_follows
        sent = await laptop.send_history(tablet.device_id)
        assert sent == len(laptop.history("bob"))
        summary = await tablet.receive_history(timeout=30)
        assert summary.messages == sent
        assert texts(tablet, "bob") == texts(laptop, "bob")
        assert tablet.history_offer() is None
        assert blob_rows(server.data_dir) == 0
    finally:
        await tablet.close()


def blob_rows(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "blobs.db") as db:
        (count,) = db.execute("SELECT COUNT(*) FROM blobs").fetchone()
    return int(count)


async def test_a_contacts_new_device_is_encrypted_to_once_the_list_is_looked_at_again(
    server,
    profiles,
    pair,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    """alice stays connected while bob adds a phone; her next look at bob's list finds it."""
    alice, bob = pair
    await alice.send("bob", "before the phone")
    await alice.flush(30)
    monkeypatch.setattr("obrolan.client.client.VIEW_TTL", 0.0)  # look again at every send
    phone = await link(server, profiles, bob, "bob-phone")
    phone.accept("alice")
    try:
        await alice.send("bob", "after the phone")
        await alice.flush(30)
        assert [m.text for m in await phone.sync()] == ["after the phone"]
    finally:
        await phone.close()
