"""`obrolan admin disclose` and `stats`: everything held about an account, never ciphertext."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from obrolan.crypto.account import open_successions
from obrolan.protocol.frames import Ack, Devices, DevicesPublished, GetDevices
from tests.server.conftest import Connect, Online
from tests.server.exchange import offline, send, wait_until
from tests.support.raw_client import RawDevice, outbound
from tests.support.server import ServerProcess

ADMIN_GUARD_SECONDS = 60


async def admin(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m obrolan.server admin ARGS`` as the operator would."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "obrolan.server", "admin", *args],
        capture_output=True,
        text=True,
        timeout=ADMIN_GUARD_SECONDS,
        check=False,
    )


async def admin_json(*args: str) -> Any:
    result = await admin(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_admin_discloses_an_account_without_any_ciphertext(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """While the server runs, disclose lists keys, days and queued envelope metadata, never content."""
    alice_client, _ = await online(server, "alice")
    bob = await offline(server, online, "bob")
    secrets_sent = [b"SECRET-CIPHERTEXT-ONE", b"SECRET-CIPHERTEXT-TWO"]
    envelopes = [outbound(bob, data) for data in secrets_sent]
    await send(alice_client, 1, *envelopes)
    data = str(server.data_dir)

    result = await admin("disclose", "bob", "--data", data)
    assert result.returncode == 0, result.stderr
    for secret in secrets_sent:
        assert secret.decode() not in result.stdout
        assert base64.b64encode(secret).decode()[:16] not in result.stdout
    disclosed = json.loads(result.stdout)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    expiry = re.compile(r"\d{4}-\d\d-\d\d")
    assert set(disclosed) == {
        "username",
        "created_day",
        "account_key",
        "list_version",
        "recovery_key_held",
        "earlier_account_keys",
        "devices",
        "queued_for_account",
        "queued_from_account",
        "not_held",
        "blobs_from_account",
        "blobs_for_account",
    }
    assert disclosed["username"] == "bob" and disclosed["created_day"] == today
    assert disclosed["account_key"] == bob.account.key.public
    assert (disclosed["list_version"], disclosed["recovery_key_held"]) == (1, True)
    assert disclosed["earlier_account_keys"] == []  # bob never recovered
    (device,) = disclosed["devices"]
    assert device == {
        "device_id": "phone",
        "ed25519": bob.keys().ed25519,
        "curve25519": bob.keys().curve25519,
        "signature": device["signature"],
        "created_day": today,
        "last_active_day": today,
        "unclaimed_one_time_keys": 5,
        "fallback_key_held": True,
        "expired_unread": 0,
    }
    assert [
        (q["envelope_id"], q["to_device"], q["from_user"], q["from_device"], q["size"])
        for q in disclosed["queued_for_account"]
    ] == [(e.envelope_id, "phone", "alice", "phone", len(e.ciphertext)) for e in envelopes]
    assert all(expiry.fullmatch(q["expires_day"]) for q in disclosed["queued_for_account"])
    assert disclosed["queued_from_account"] == []
    assert "IP addresses" in disclosed["not_held"]

    sender_side = await admin_json("disclose", "alice", "--data", data)
    assert [
        (q["envelope_id"], q["to_user"], q["to_device"]) for q in sender_side["queued_from_account"]
    ] == [(e.envelope_id, "bob", "phone") for e in envelopes]
    stats = await admin_json("stats", "--data", data)
    assert stats == {
        "accounts": 2,
        "devices": 2,
        "one_time_keys": 10,
        "queued_envelopes": 2,
        "queued_bytes": sum(len(s) for s in secrets_sent),
        "blobs": 0,
        "blob_bytes": 0,
    }

    bob_client = await connect(server.ws_url)
    await bob_client.authenticate(bob)
    await bob_client.send(
        Ack(envelope_ids=[e.envelope_id for e in await bob_client.until_drained()])
    )
    await wait_until(lambda: server.mailbox() == [])
    assert (await admin_json("disclose", "bob", "--data", data))["queued_for_account"] == []
    assert (await admin_json("disclose", "alice", "--data", data))["queued_from_account"] == []
    assert (await admin_json("stats", "--data", data))["queued_envelopes"] == 0


async def test_admin_discloses_the_devices_of_the_published_list(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """After a list adds a device and a newer one removes the first, disclose shows the
    version and exactly the listed devices, never the sealed device names."""
    alice_client, alice = await online(server, "alice")
    laptop = RawDevice("alice", "laptop", alice.account)
    added = alice.account.publish_frame(1, [alice, laptop])
    assert await alice_client.request(added) == DevicesPublished(id=1, version=2)
    laptop_client = await connect(server.ws_url)
    await laptop_client.authenticate(laptop)
    assert await laptop_client.until_drained() == []
    removed = alice.account.publish_frame(2, [laptop])
    assert await laptop_client.request(removed) == DevicesPublished(id=2, version=3)

    result = await admin("disclose", "alice", "--data", str(server.data_dir))
    assert result.returncode == 0, result.stderr
    assert base64.b64encode(removed.device_list.device_list).decode()[:40] not in result.stdout
    disclosed = json.loads(result.stdout)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert (disclosed["account_key"], disclosed["list_version"]) == (alice.account.key.public, 3)
    assert [
        (d["device_id"], d["ed25519"], d["created_day"], d["last_active_day"])
        for d in disclosed["devices"]
    ] == [("laptop", laptop.ed25519, today, today)]


async def test_admin_discloses_the_account_keys_a_recovery_replaced(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """The server keeps each recovery's proof (for group chains signed before it);
    disclose shows the earlier account keys it holds, oldest first."""
    _, lost = await online(server, "alice")
    first = RawDevice("alice", "phone")  # a new account key and code
    client = await connect(server.ws_url)
    await client.recover(first, lost.account.recovery)
    second = RawDevice("alice", "tablet")
    again = await connect(server.ws_url)
    await again.recover(second, first.account.recovery)
    disclosed = await admin_json("disclose", "alice", "--data", str(server.data_dir))
    assert disclosed["earlier_account_keys"] == [lost.account.key.public, first.account.key.public]
    assert disclosed["account_key"] == second.account.key.public
    await again.until_drained()
    devices = await again.request(GetDevices(id=1, username="alice"))
    assert isinstance(devices, Devices)
    assert (
        open_successions(devices.successions, "alice", second.account.key.public)
        == (disclosed["earlier_account_keys"])
    )  # two recoveries, a chain clients can check


async def test_admin_answers_unknown_accounts_and_missing_data_in_one_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    """An unknown username or a directory without a server database is one line on stderr, exit 1."""
    unknown = await admin("disclose", "nobody", "--data", str(server.data_dir))
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr.strip() == "obrolan: unknown user: nobody"

    missing = await admin("stats", "--data", str(tmp_path / "nothing-here"))
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "no obrolan server database" in missing.stderr
    assert not (tmp_path / "nothing-here").exists()  # reading never creates a database
