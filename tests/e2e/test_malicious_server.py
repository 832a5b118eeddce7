"""A hostile server cannot add a device to an account or swap its account key unnoticed.

A shim in front of the real server rewrites the device lists it returns; the
client under attack talks only to the shim. What it then sends is read from the
frames the shim recorded.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from obrolan.client import Client
from obrolan.client.ids import new_id
from obrolan.client.models import MessageState
from obrolan.client.store import now_ms
from obrolan.crypto.account import AccountKey, LinkCode, device_entry
from obrolan.crypto.device import DeviceIdentity
from obrolan.protocol import content
from obrolan.protocol.frames import DeviceList
from tests.e2e.conftest import assert_sending_held
from tests.support.shim import MaliciousServer

EVIL = "evil0device"


def _list_of(frame: dict[str, Any]) -> DeviceList:
    raw = base64.b64decode(frame["device_list"]["device_list"])
    return msgspec.json.decode(raw, type=DeviceList)


def inject_device(username: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Add a self-signed device of the server's to ``username``'s list, keeping the signature."""
    fake = DeviceIdentity.create().device_keys(username, EVIL)

    def rewrite(frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("type") == "devices" and frame.get("username") == username:
            listed = _list_of(frame)
            forged = msgspec.structs.replace(
                listed, devices=[*listed.devices, device_entry(fake, b"")]
            )
            frame["device_list"]["device_list"] = base64.b64encode(
                msgspec.json.encode(forged)
            ).decode()
        return frame

    return rewrite


def replace_account_key(username: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Hand out a list for ``username`` signed by an account key the server made."""
    account = AccountKey.create()
    fake = DeviceIdentity.create().device_keys(username, EVIL)
    signed = account.sign_device_list(username, 1, [device_entry(fake, b"")])
    replacement = json.loads(msgspec.json.encode(signed))

    def rewrite(frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("type") == "devices" and frame.get("username") == username:
            frame["device_list"] = replacement
        return frame

    return rewrite


def envelopes_to(shim: MaliciousServer, device_id: str) -> list[dict[str, Any]]:
    return [
        e
        for f in shim.sent_by_clients
        if f.get("type") == "send"
        for e in f["envelopes"]
        if e["to_device"] == device_id
    ]


@pytest.fixture
async def attacked(server, profiles) -> AsyncIterator[tuple[MaliciousServer, Client, Client]]:  # type: ignore[no-untyped-def]
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


def notices(client: Client, peer: str) -> list[str]:
    return [m.text for m in client.history(peer) if m.state is MessageState.NOTICE]


async def test_an_injected_device_is_never_encrypted_to(attacked) -> None:  # type: ignore[no-untyped-def]
    shim, alice, bob = attacked
    shim.rewrite = inject_device("bob")
    await alice.sync()  # a new connection: alice looks at bob's list again
    await alice.send("bob", "for bob only")
    await alice.flush(30)
    assert [m.text for m in await bob.sync()] == ["for bob only"]
    assert envelopes_to(shim, EVIL) == []
    assert any("refused" in n and "signature does not verify" in n for n in notices(alice, "bob"))


async def test_a_replaced_account_key_of_a_verified_contact_holds_sending(attacked) -> None:  # type: ignore[no-untyped-def]
    shim, alice, bob = attacked
    assert alice.mark_verified("bob", bob.account_key)
    shim.rewrite = replace_account_key("bob")
    await alice.sync()
    await assert_sending_held(alice, "bob")
    assert envelopes_to(shim, EVIL) == []
    assert any(
        "account key has changed" in n and "obrolan trust bob" in n for n in notices(alice, "bob")
    )
    [contact] = [c for c in alice.contacts() if c.username == "bob"]
    assert contact.key_changed and contact.identity_key == bob.account_key


async def test_a_changed_key_of_an_unverified_contact_holds_sending(attacked) -> None:  # type: ignore[no-untyped-def]
    shim, alice, _ = attacked
    before = await alice.safety_number("bob")
    shim.rewrite = replace_account_key("bob")
    await alice.sync()
    await assert_sending_held(alice, "bob")
    assert envelopes_to(shim, EVIL) == []
    [contact] = [c for c in alice.contacts() if c.username == "bob"]
    assert contact.key_changed and not contact.verified
    assert await alice.safety_number("bob") != before
    assert any("account key has changed" in n for n in notices(alice, "bob"))


async def test_a_newly_linked_device_keeps_the_pin_and_verification(attacked, profiles) -> None:  # type: ignore[no-untyped-def]
    """alice verified bob on her laptop, then links a tablet without history. The server
    shows the tablet another key for bob: it was handed alice's pin, so it refuses to send
    instead of trusting the server's key on first contact."""
    shim, alice, bob = attacked
    assert alice.mark_verified("bob", bob.account_key)
    codes: asyncio.Queue[LinkCode] = asyncio.Queue()
    linking = asyncio.create_task(
        Client.link(
            profiles("alice-tablet"),
            shim.url,
            "alice",
            None,
            codes.put_nowait,
            device_name="tablet",
        )
    )
    approval = await alice.approve(str(await asyncio.wait_for(codes.get(), 15)))
    assert (approval.contacts_shared, approval.contacts_left_out) == (1, 0)
    tablet = await asyncio.wait_for(linking, 15)
    try:
        [contact] = tablet.contacts()
        assert (contact.username, contact.identity_key, contact.verified) == (
            "bob",
            bob.account_key,
            True,
        )
        shim.rewrite = replace_account_key("bob")
        await assert_sending_held(tablet, "bob")
        assert envelopes_to(shim, EVIL) == []
        assert any("account key has changed" in n for n in notices(tablet, "bob"))
    finally:
        await tablet.close()


async def test_a_key_another_own_device_was_shown_is_a_warning_not_a_pin(
    attacked, server, profiles
) -> None:  # type: ignore[no-untyped-def]
    """alice's tablet talks to the real server; her laptop is shown another key for bob,
    and she accepts it there. The tablet does not take that key on the laptop's word: it
    was shown bob's real key, so it warns that her devices disagree (spec §18.1 case 4)."""
    shim, alice, bob = attacked
    codes: asyncio.Queue[LinkCode] = asyncio.Queue()
    linking = asyncio.create_task(
        Client.link(
            profiles("alice-tablet"),
            server.url,
            "alice",
            None,
            codes.put_nowait,
            device_name="tablet",
        )
    )
    await alice.approve(str(await asyncio.wait_for(codes.get(), 15)))
    tablet = await asyncio.wait_for(linking, 15)
    try:
        shim.rewrite = replace_account_key("bob")
        alice._views.clear()  # as when the cached list expires (after 5 minutes)
        await alice.send("bob", "the laptop looks at bob's list again")
        await alice.flush(30)
        assert alice.trust("bob")  # the user accepts the key the laptop was shown
        await alice.flush(30)
        await tablet.sync()
        [contact] = [c for c in tablet.contacts() if c.username == "bob"]
        assert contact.identity_key == bob.account_key and contact.key_changed
        assert any("was shown another account key for bob" in n for n in notices(tablet, "bob"))
    finally:
        await tablet.close()


async def test_a_contact_update_from_another_account_changes_nothing(
    attacked, server, profiles
) -> None:  # type: ignore[no-untyped-def]
    """mallory sends alice a `contact` update saying bob's key is one of hers, verified:
    only alice's own devices may say such things, so alice's pin of bob stays."""
    _, alice, bob = attacked
    mallory = await Client.register(profiles("mallory"), server.url, "mallory", None)
    try:
        fake = AccountKey.create().public
        with mallory._store.transaction():
            mallory.queue_olm(
                "alice",
                content.ContactUpdate(
                    message_id=new_id(),
                    sent_at_ms=now_ms(),
                    contact=content.LinkedContact(
                        username="bob",
                        account_key=fake,
                        verified=True,
                        list_version=9,
                        conversation="blocked",
                        timer_seconds=None,
                    ),
                ),
                None,
            )
        await mallory.flush(30)
        await alice.sync()
        [contact] = [c for c in alice.contacts() if c.username == "bob"]
        assert (contact.identity_key, contact.key_changed, contact.verified) == (
            bob.account_key,
            False,
            False,
        )
        assert alice.blocked() == []
    finally:
        await mallory.close()
