"""Signed device lists: register's first list, publishing newer ones, recovery, recovery keys.

The server checks every list (clients check again), and the devices it knows for an
account are exactly those of the last list it accepted.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from typing import TypeGuard

from msgspec.structs import replace

from obrolan.crypto.account import (
    RecoveryCode,
    device_entry,
    open_device_list,
    open_successions,
)
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import (
    ClaimedKeys,
    ClaimKeys,
    Devices,
    DevicesPublished,
    Error,
    GetDevices,
    KeysUploaded,
    PublishDevices,
    RecoverySet,
    Send,
    Sent,
    SignedDeviceList,
    UploadKeys,
    Welcome,
)
from tests.server.conftest import Connect, Online
from tests.server.exchange import send
from tests.support.raw_client import RawAccount, RawClient, RawDevice, listed, outbound
from tests.support.server import ServerProcess

POLICY_VIOLATION = 1008
DEVICE_REMOVED = (4001, "device removed")


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


async def devices_of(client: RawClient, request_id: int, username: str) -> Devices:
    reply = await client.request(GetDevices(id=request_id, username=username))
    assert isinstance(reply, Devices) and reply.id == request_id, reply
    return reply


def refused(reply: object, code: ErrorCode) -> TypeGuard[Error]:
    return isinstance(reply, Error) and reply.code is code


def one_time_keys_held(server: ServerProcess) -> dict[str, int]:
    """Unclaimed one-time keys per "user/device", read beside the running server."""
    with closing(sqlite3.connect(f"{server.database.as_uri()}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT d.username || '/' || d.device_id, COUNT(*)"
            " FROM one_time_keys k JOIN devices d ON d.id = k.device GROUP BY d.id"
        ).fetchall()
    return dict(rows)


async def fails_to_authenticate(server: ServerProcess, connect: Connect, device: RawDevice) -> None:
    """``device`` gets auth_failed and its connection is closed."""
    client = await connect(server.ws_url)
    reply = await client.request(device.authenticate_frame(client.challenge.nonce))
    assert refused(reply, ErrorCode.AUTH_FAILED), reply
    assert (await client.expect_close())[0] == POLICY_VIOLATION


async def test_server_refuses_a_first_list_that_is_not_exactly_the_registering_device(
    server: ServerProcess, connect: Connect
) -> None:
    """register with a forged, foreign, later or longer list gets bad_device_list; no account."""
    alice = RawDevice("alice")
    laptop = RawDevice("alice", "laptop", alice.account)
    account = alice.account
    lists: dict[str, SignedDeviceList] = {
        "forged signature": replace(
            account.signed_list([alice], version=1),
            signature=account.signed_list([laptop], version=1).signature,
        ),
        "other username": account.key.sign_device_list(
            "mallory", 1, [device_entry(alice.keys(), b"sealed name")]
        ),
        "version 2": account.signed_list([alice], version=2),
        "extra device": account.signed_list([alice, laptop], version=1),
        "other device": account.signed_list([laptop], version=1),
        "no device": account.signed_list([], version=1),
    }
    for case, device_list in lists.items():
        client = await connect(server.ws_url)
        frame = replace(alice.register_frame(client.challenge.nonce), device_list=device_list)
        reply = await client.request(frame)
        assert refused(reply, ErrorCode.BAD_DEVICE_LIST) and reply.id is None, (case, reply)

    client = await connect(server.ws_url)
    assert isinstance(await client.register(alice), Welcome)  # the username was never taken
    assert await client.until_drained() == []
    devices = await devices_of(client, 1, "alice")
    assert listed(devices.device_list, "alice") == [alice.keys()]
    assert open_device_list(devices.device_list, "alice", account.key.public).version == 1


async def test_server_accepts_a_newer_list_and_knows_its_new_device(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """A list signed by the account key with a higher version is stored as it was signed;
    its new device authenticates, uploads keys and can be claimed."""
    phone_client, phone = await online(server, "alice")
    bob_client, _ = await online(server, "bob")
    laptop = RawDevice("alice", "laptop", phone.account)
    frame = phone.account.publish_frame(1, [phone, laptop])
    assert await phone_client.request(frame) == DevicesPublished(id=1, version=2)

    devices = await devices_of(bob_client, 1, "alice")
    assert devices.device_list == frame.device_list
    assert devices.last_active == {}  # only for the account's own devices

    laptop_client = await connect(server.ws_url)
    welcome = await laptop_client.authenticate(laptop)
    assert (welcome.device_id, welcome.one_time_keys) == ("laptop", 0)
    assert await laptop_client.until_drained() == []
    uploaded = await laptop_client.request(UploadKeys(id=1, one_time_keys=laptop.one_time_keys(3)))
    assert uploaded == KeysUploaded(id=1, one_time_keys=3)
    claimed = await bob_client.request(ClaimKeys(id=2, username="alice"))
    assert isinstance(claimed, ClaimedKeys), claimed
    assert [d.device for d in claimed.devices] == [laptop.keys(), phone.keys()]  # by id
    own = await devices_of(laptop_client, 2, "alice")
    assert own.last_active == {"phone": today(), "laptop": today()}


async def test_server_refuses_lists_not_newer_or_not_signed_by_the_account_key(
    server: ServerProcess, online: Online
) -> None:
    """A forged signature, an old or equal version, another key, another account's list or
    an empty list get bad_device_list, and the stored list stays."""
    client, phone = await online(server, "alice")
    _, bob = await online(server, "bob")
    account = phone.account
    laptop = RawDevice("alice", "laptop", account)
    accepted = account.publish_frame(1, [phone, laptop])
    assert await client.request(accepted) == DevicesPublished(id=1, version=2)

    forged = account.publish_frame(2, [phone])
    forged = replace(
        forged,
        device_list=replace(forged.device_list, signature=accepted.device_list.signature),
    )
    tablet = RawDevice("alice", "tablet", account)
    attempts = {
        "forged signature": forged,
        "same version": account.publish_frame(3, [phone], version=2),
        "older version": account.publish_frame(4, [phone], version=1),
        "another account key": RawAccount("alice").publish_frame(5, [phone], version=9),
        "another account's list": bob.account.publish_frame(6, [bob]),
        "device not self-signed": PublishDevices(
            id=7,
            device_list=account.key.sign_device_list(
                "alice",
                account.version + 1,
                [device_entry(replace(tablet.keys(), curve25519=phone.keys().curve25519), b"")],
            ),
        ),
        "no device": account.publish_frame(8, []),
    }
    for case, frame in attempts.items():
        reply = await client.request(frame)
        assert refused(reply, ErrorCode.BAD_DEVICE_LIST) and reply.id == frame.id, (case, reply)

    devices = await devices_of(client, 9, "alice")
    assert devices.device_list == accepted.device_list


async def test_server_refuses_a_list_of_more_devices_than_its_limit(
    server_factory: Callable[..., ServerProcess], online: Online
) -> None:
    """With --max-devices 3 a list of three is stored and one of four gets too_many_items."""
    server = server_factory("--max-devices", "3")
    client, phone = await online(server, "alice")
    assert client.challenge.limits.max_devices_per_account == 3
    account = phone.account
    laptop, tablet, watch = (
        RawDevice("alice", name, account) for name in ("laptop", "tablet", "watch")
    )
    three = account.publish_frame(1, [phone, laptop, tablet])
    assert await client.request(three) == DevicesPublished(id=1, version=2)
    reply = await client.request(account.publish_frame(2, [phone, laptop, tablet, watch]))
    assert refused(reply, ErrorCode.TOO_MANY_ITEMS) and "at most 3 devices" in reply.message
    assert (await devices_of(client, 3, "alice")).device_list == three.device_list


async def test_server_removes_a_device_that_left_the_list(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """The removed device's connection closes with 4001, its queue and keys are deleted,
    it cannot authenticate again, and envelopes for it are skipped."""
    phone_client, phone = await online(server, "alice")
    bob_client, _ = await online(server, "bob")
    account = phone.account
    laptop = RawDevice("alice", "laptop", account)
    assert await phone_client.request(
        account.publish_frame(1, [phone, laptop])
    ) == DevicesPublished(id=1, version=2)
    laptop_client = await connect(server.ws_url)
    await laptop_client.authenticate(laptop)
    assert await laptop_client.until_drained() == []
    uploaded = await laptop_client.request(UploadKeys(id=1, one_time_keys=laptop.one_time_keys(4)))
    assert uploaded == KeysUploaded(id=1, one_time_keys=4)
    unread = [outbound(laptop, b"never acked"), outbound(laptop, b"never acked either")]
    await send(bob_client, 1, *unread)
    assert len(await laptop_client.deliveries(2)) == 2  # delivered, not acknowledged
    assert [row[0] for row in server.mailbox()] == ["alice/laptop"] * 2
    assert one_time_keys_held(server)["alice/laptop"] == 4

    reply = await phone_client.request(account.publish_frame(2, [phone]))
    assert reply == DevicesPublished(id=2, version=3)
    assert await laptop_client.expect_close() == DEVICE_REMOVED
    assert server.mailbox() == []
    assert "alice/laptop" not in one_time_keys_held(server)
    await fails_to_authenticate(server, connect, laptop)

    to_laptop, to_phone = outbound(laptop, b"too late"), outbound(phone, b"in time")
    reply = await bob_client.request(Send(id=2, envelopes=[to_laptop, to_phone]))
    assert reply == Sent(id=2, envelope_ids=[to_phone.envelope_id], skipped=[to_laptop.envelope_id])
    assert [row[:2] for row in server.mailbox()] == [("alice/phone", to_phone.envelope_id)]
    claimed = await bob_client.request(ClaimKeys(id=3, username="alice", device_ids=["laptop"]))
    assert refused(claimed, ErrorCode.UNKNOWN_DEVICE), claimed


async def test_server_lets_a_device_remove_itself(server: ServerProcess, online: Online) -> None:
    """A device publishing a list without itself gets the answer, then its connection closes."""
    phone_client, phone = await online(server, "alice")
    laptop = RawDevice("alice", "laptop", phone.account)
    await phone_client.request(phone.account.publish_frame(1, [phone, laptop]))
    reply = await phone_client.request(phone.account.publish_frame(2, [laptop]))
    assert reply == DevicesPublished(id=2, version=3)
    assert await phone_client.expect_close() == DEVICE_REMOVED


async def test_server_recovers_an_account_with_its_recovery_code(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """recover with the right code: new account key and list, the old devices are gone with
    their queues, the new device (even under an old device's id) starts empty."""
    old_client, old_phone = await online(server, "alice")
    old_account = old_phone.account
    old_laptop = RawDevice("alice", "laptop", old_account)
    published = await old_client.request(old_account.publish_frame(1, [old_phone, old_laptop]))
    assert published == DevicesPublished(id=1, version=2)
    bob_client, _ = await online(server, "bob")
    await send(bob_client, 1, outbound(old_phone, b"for the lost phone"))
    await send(bob_client, 2, outbound(old_laptop, b"for the lost laptop"))
    assert len(await old_client.deliveries(1)) == 1  # delivered, never acknowledged
    assert len(server.mailbox()) == 2

    new_phone = RawDevice("alice", "phone")  # a new account key, a new recovery code
    client = await connect(server.ws_url)
    welcome = await client.recover(new_phone, old_account.recovery)
    assert welcome == Welcome(version=1, username="alice", device_id="phone", one_time_keys=5)
    assert await old_client.expect_close() == DEVICE_REMOVED
    assert await client.until_drained() == []  # nothing queued for the old devices
    assert server.mailbox() == []

    devices = await devices_of(client, 1, "alice")
    opened = open_device_list(devices.device_list, "alice", None)
    assert (opened.account_key, opened.version) == (new_phone.account.key.public, 1)
    assert [d.keys for d in opened.devices] == [new_phone.keys()]
    assert devices.last_active == {"phone": today()}
    # the handover is kept as a proof: the old key is the new one's predecessor
    assert open_successions(devices.successions, "alice", opened.account_key) == [
        old_account.key.public
    ]
    assert (await devices_of(bob_client, 4, "alice")).successions == devices.successions
    await fails_to_authenticate(server, connect, old_phone)
    await fails_to_authenticate(server, connect, old_laptop)

    message = outbound(new_phone, b"hello again")
    await send(bob_client, 3, message)
    assert [e.envelope_id for e in await client.deliveries(1)] == [message.envelope_id]

    again = await connect(server.ws_url)  # the old code was replaced with the new one
    reply = await again.request(
        RawDevice("alice", "tablet").recover_frame(again.challenge.nonce, old_account.recovery)
    )
    assert refused(reply, ErrorCode.AUTH_FAILED), reply


async def test_server_refuses_a_recovery_key_its_account_key_did_not_sign(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """register and recover carry the account key's signature over the recovery key
    (what later proves a succession); a wrong one gets bad_signature and nothing is made."""
    device = RawDevice("alice", "phone")
    client = await connect(server.ws_url)
    frame = device.register_frame(client.challenge.nonce)
    forged = replace(
        frame,
        recovery_key_signature=RawAccount("alice").key.sign_recovery_key(
            "alice", frame.recovery_key
        ),
    )
    reply = await client.request(forged)
    assert refused(reply, ErrorCode.BAD_SIGNATURE), reply
    observer_client, _ = await online(server, "bob")
    lookup = await observer_client.request(GetDevices(id=1, username="alice"))
    assert refused(lookup, ErrorCode.UNKNOWN_USER), lookup


async def test_server_answers_a_wrong_recovery_code_like_an_unknown_user(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """recover with a wrong code or for nobody gets the same auth_failed; nothing changes."""
    alice_client, alice = await online(server, "alice")
    replies = []
    for device in (RawDevice("alice", "evil"), RawDevice("nobody", "evil")):
        client = await connect(server.ws_url)
        frame = device.recover_frame(client.challenge.nonce, RecoveryCode.create())
        replies.append(await client.request(frame))
        assert (await client.expect_close())[0] == POLICY_VIOLATION
    assert replies[0] == replies[1] and refused(replies[0], ErrorCode.AUTH_FAILED), replies

    devices = await devices_of(alice_client, 1, "alice")
    assert listed(devices.device_list, "alice") == [alice.keys()]
    client = await connect(server.ws_url)
    assert isinstance(await client.authenticate(alice), Welcome)
    assert await alice_client.expect_close() == (4000, "replaced by a newer connection")


async def test_server_replaces_the_recovery_key_only_when_the_account_key_signed_it(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """set_recovery signed by the account key replaces the code; another signature gets
    bad_signature and the code set before still works."""
    client, alice = await online(server, "alice")
    first_code = alice.account.recovery
    new_code = RecoveryCode.create()
    assert await client.request(alice.account.set_recovery_frame(1, new_code)) == RecoverySet(id=1)
    forged = RawAccount("alice").set_recovery_frame(2, RecoveryCode.create())
    assert refused(await client.request(forged), ErrorCode.BAD_SIGNATURE)
    other_code = RecoveryCode.create()
    stolen = replace(
        alice.account.set_recovery_frame(3, other_code), recovery_key=first_code.public_key
    )
    assert refused(await client.request(stolen), ErrorCode.BAD_SIGNATURE)

    old = await connect(server.ws_url)
    reply = await old.request(RawDevice("alice").recover_frame(old.challenge.nonce, first_code))
    assert refused(reply, ErrorCode.AUTH_FAILED), reply
    recovered = await connect(server.ws_url)
    assert isinstance(await recovered.recover(RawDevice("alice"), new_code), Welcome)
