"""The blob store over HTTP: signed requests, limits, resumable uploads, ranges, deletion, sweep.

Every request is made by hand with aiohttp and signed with a real device key, against a
real server process; the database and files are read from the data directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import dataclass

import aiohttp
import pytest

from obrolan.protocol import blobs as wire
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import DevicesPublished
from tests.server.conftest import Online
from tests.server.exchange import wait_until
from tests.support.raw_client import RawDevice
from tests.support.server import ServerProcess

ADMIN_GUARD_SECONDS = 60


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> wire.HttpError:
        return wire.decode_http_error(self.body)

    @property
    def offset(self) -> int:
        return int(self.headers[wire.HEADER_OFFSET])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    device: RawDevice,
    method: str,
    path: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    signed_at: int | None = None,
    signer: RawDevice | None = None,
) -> Answer:
    """One request to the blob store, signed by ``signer`` (default: ``device``) as ``device``."""
    now = int(time.time()) if signed_at is None else signed_at
    signature = (signer or device).sign(
        wire.blob_request_bytes(method, path, now, device.username, device.device_id)
    )
    signed = {
        wire.HEADER_USER: device.username,
        wire.HEADER_DEVICE: device.device_id,
        wire.HEADER_TIME: str(now),
        wire.HEADER_SIGNATURE: signature,
    }
    async with http.request(
        method, server.url + path, data=data, headers={**signed, **(headers or {})}
    ) as response:
        return Answer(response.status, dict(response.headers), await response.read())


def announce(size: int, *recipients: RawDevice, blob_id: str | None = None) -> bytes:
    return wire.encode(
        wire.CreateBlob(
            blob_id=blob_id or secrets.token_urlsafe(16),
            size=size,
            recipients=[
                wire.BlobRecipient(user=r.username, device=r.device_id) for r in recipients
            ],
        )
    )


async def create(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    owner: RawDevice,
    size: int,
    *recipients: RawDevice,
) -> str:
    """Announce a blob and return its id (asserting 201)."""
    blob_id = secrets.token_urlsafe(16)
    answer = await call(
        http,
        server,
        owner,
        "POST",
        wire.BLOBS_PATH,
        data=announce(size, *recipients, blob_id=blob_id),
    )
    assert answer.status == 201, answer
    return blob_id


async def upload(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    owner: RawDevice,
    data: bytes,
    *recipients: RawDevice,
) -> str:
    """Announce and upload a whole blob; returns its id."""
    blob_id = await create(http, server, owner, len(data), *recipients)
    put = await call(http, server, owner, "PUT", wire.blob_path(blob_id, offset=0), data=data)
    assert (put.status, put.offset) == (204, len(data)), put
    return blob_id


def held_blob_ids(server: ServerProcess) -> set[str]:
    """The blob ids in DATA/blobs.db, read beside the running server."""
    uri = f"{(server.data_dir / 'blobs.db').as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as db:
        return {row[0] for row in db.execute("SELECT blob_id FROM blobs")}


def blob_files(server: ServerProcess) -> set[str]:
    return set(os.listdir(server.data_dir / "blobs"))


async def test_server_stores_blob_and_serves_it_to_its_recipient(
    server: ServerProcess, online: Online, http: aiohttp.ClientSession
) -> None:
    """A blob announced, uploaded in two parts and completed is what its recipient downloads."""
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")
    data = secrets.token_bytes(300_000)
    blob_id = secrets.token_urlsafe(16)
    body = announce(len(data), bob, blob_id=blob_id)

    created = await call(http, server, alice, "POST", wire.BLOBS_PATH, data=body)
    assert created.status == 201
    answer = wire.decode_blob_created(created.body)
    expiry = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 30 * 24 * 3600))
    assert (answer.blob_id, answer.expires_at_day) == (blob_id, expiry)
    again = await call(http, server, alice, "POST", wire.BLOBS_PATH, data=body)
    assert (again.status, again.body) == (200, created.body)

    assert (await call(http, server, alice, "HEAD", wire.blob_path(blob_id))).offset == 0
    first = await call(
        http, server, alice, "PUT", wire.blob_path(blob_id, offset=0), data=data[:100_000]
    )
    assert (first.status, first.offset) == (204, 100_000)
    early = await call(http, server, bob, "GET", wire.blob_path(blob_id))
    assert (early.status, early.error().code) == (404, ErrorCode.UNKNOWN_BLOB)
    rest = await call(
        http, server, alice, "PUT", wire.blob_path(blob_id, offset=100_000), data=data[100_000:]
    )
    assert (rest.status, rest.offset) == (204, len(data))

    got = await call(http, server, bob, "GET", wire.blob_path(blob_id))
    assert (got.status, got.body) == (200, data)
    assert (server.data_dir / "blobs" / blob_id).read_bytes() == data


async def test_server_refuses_blob_over_its_size_limit(
    server_factory: Callable[..., ServerProcess], online: Online, http: aiohttp.ClientSession
) -> None:
    """--max-blob-bytes caps a blob's announced size, and an upload cannot go past a blob's size."""
    server = server_factory("--max-blob-bytes", "1000")
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")

    refused = await call(http, server, alice, "POST", wire.BLOBS_PATH, data=announce(1001, bob))
    assert (refused.status, refused.error().code) == (413, ErrorCode.BLOB_TOO_LARGE)
    assert "1001" in refused.error().message and "1000" in refused.error().message

    blob_id = await create(http, server, alice, 1000, bob)
    over = await call(
        http, server, alice, "PUT", wire.blob_path(blob_id, offset=0), data=b"x" * 1200
    )
    assert (over.status, over.error().code) == (413, ErrorCode.BLOB_TOO_LARGE)
    assert (await call(http, server, alice, "HEAD", wire.blob_path(blob_id))).offset == 1000


async def test_server_refuses_blob_past_the_account_quota_until_blobs_are_deleted(
    server_factory: Callable[..., ServerProcess], online: Online, http: aiohttp.ClientSession
) -> None:
    """--blob-quota bounds an account's blobs at their announced sizes; a fetched blob frees it."""
    server = server_factory("--blob-quota", "1000")
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")
    first = await upload(http, server, alice, b"a" * 600, bob)

    refused = await call(http, server, alice, "POST", wire.BLOBS_PATH, data=announce(500, bob))
    assert (refused.status, refused.error().code) == (403, ErrorCode.QUOTA_EXCEEDED)
    assert await create(http, server, bob, 1000, alice)  # another account has its own quota

    fetched = await call(http, server, bob, "POST", wire.blob_path(first, fetched=True))
    assert fetched.status == 204
    assert await create(http, server, alice, 1000, bob)


async def test_server_refuses_blob_for_unknown_recipient(
    server: ServerProcess, online: Online, http: aiohttp.ClientSession
) -> None:
    """A recipient account or device that does not exist is refused, and nothing is stored."""
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")

    for recipient, code in (
        (RawDevice("nobody"), ErrorCode.UNKNOWN_USER),
        (RawDevice("bob", "tablet"), ErrorCode.UNKNOWN_DEVICE),
    ):
        blob_id = secrets.token_urlsafe(16)
        body = announce(10, bob, recipient, blob_id=blob_id)
        refused = await call(http, server, alice, "POST", wire.BLOBS_PATH, data=body)
        assert (refused.status, refused.error().code) == (404, code)
        missing = await call(http, server, alice, "HEAD", wire.blob_path(blob_id))
        assert missing.status == 404
    assert held_blob_ids(server) == set() and blob_files(server) == set()


async def test_server_refuses_malformed_blob_announcements(
    server: ServerProcess, online: Online, http: aiohttp.ClientSession
) -> None:
    """Bad JSON, a zero size, no recipients or too many get typed refusals."""
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")
    many = [wire.BlobRecipient(user="bob", device="phone")] * (wire.MAX_RECIPIENTS + 1)
    cases = [
        (b"{not json", 400, ErrorCode.MALFORMED_FRAME),
        (announce(0, bob), 400, ErrorCode.MALFORMED_FRAME),
        (announce(10), 400, ErrorCode.MALFORMED_FRAME),
        (
            wire.encode(wire.CreateBlob(blob_id="short", size=10, recipients=many[:1])),
            400,
            ErrorCode.MALFORMED_FRAME,
        ),
        (
            wire.encode(
                wire.CreateBlob(blob_id=secrets.token_urlsafe(16), size=10, recipients=many)
            ),
            400,
            ErrorCode.TOO_MANY_ITEMS,
        ),
    ]
    for body, status, code in cases:
        answer = await call(http, server, alice, "POST", wire.BLOBS_PATH, data=body)
        assert (answer.status, answer.error().code) == (status, code), body
    blob_id = await create(http, server, alice, 10, bob)
    bad_offset = await call(
        http, server, alice, "PUT", f"{wire.blob_path(blob_id)}?offset=x", data=b"0123456789"
    )
    assert (bad_offset.status, bad_offset.error().code) == (400, ErrorCode.MALFORMED_FRAME)


async def test_server_refuses_requests_not_signed_by_the_named_device(
    server: ServerProcess, online: Online, http: aiohttp.ClientSession
) -> None:
    """A bad signature, another device's signature, an unknown device or a stale time get 401."""
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")
    blob_id = await upload(http, server, alice, b"ciphertext", bob)
    path = wire.blob_path(blob_id)
    now = int(time.time())

    attempts = {
        "another device's key": await call(http, server, bob, "GET", path, signer=alice),
        "unknown account": await call(http, server, RawDevice("mallory"), "GET", path),
        "unknown device": await call(http, server, RawDevice("bob", "tablet"), "GET", path),
        "signed for another path": await call(
            http,
            server,
            bob,
            "GET",
            path,
            headers={
                wire.HEADER_SIGNATURE: bob.sign(
                    wire.blob_request_bytes("GET", wire.BLOBS_PATH, now, "bob", "phone")
                )
            },
            signed_at=now,
        ),
    }
    for what, answer in attempts.items():
        assert answer.status == 401, what
        assert answer.error() == wire.HttpError(ErrorCode.AUTH_FAILED, "authentication failed")

    for skew in (-wire.CLOCK_SKEW_SECONDS - 60, wire.CLOCK_SKEW_SECONDS + 60):
        stale = await call(http, server, bob, "GET", path, signed_at=now + skew)
        assert (stale.status, stale.error().code) == (401, ErrorCode.AUTH_FAILED)
        assert "clock" in stale.error().message
    async with http.get(server.url + path) as unsigned:
        assert unsigned.status == 401
    ok = await call(http, server, bob, "GET", path, signed_at=now - 60)
    assert (ok.status, ok.body) == (200, b"ciphertext")


async def test_server_answers_wrong_upload_offset_with_the_current_one(
    server: ServerProcess, online: Online, http: aiohttp.ClientSession
) -> None:
    """A PUT whose offset is not the bytes held gets 409 and the offset to resume from."""
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")
    blob_id = await create(http, server, alice, 300, bob)
    await call(http, server, alice, "PUT", wire.blob_path(blob_id, offset=0), data=b"a" * 100)

    for offset in (0, 50, 200):
        wrong = await call(
            http, server, alice, "PUT", wire.blob_path(blob_id, offset=offset), data=b"b" * 100
        )
        assert (wrong.status, wrong.error().code, wrong.offset) == (
            409,
            ErrorCode.OFFSET_MISMATCH,
            100,
        )
    right = await call(
        http, server, alice, "PUT", wire.blob_path(blob_id, offset=100), data=b"c" * 200
    )
    assert right.offset == 300
    got = await call(http, server, bob, "GET", wire.blob_path(blob_id))
    assert got.body == b"a" * 100 + b"c" * 200


async def test_server_keeps_the_bytes_of_an_upload_that_broke_off(
    server: ServerProcess, online: Online, http: aiohttp.ClientSession
) -> None:
    """An upload whose connection drops mid-body keeps what arrived; the resume appends the rest."""
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")
    data = secrets.token_bytes(200_000)
    blob_id = await create(http, server, alice, len(data), bob)
    path = wire.blob_path(blob_id, offset=0)
    now = int(time.time())
    signature = alice.sign(wire.blob_request_bytes("PUT", path, now, "alice", "phone"))
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n"
        f"{wire.HEADER_USER}: alice\r\n{wire.HEADER_DEVICE}: phone\r\n"
        f"{wire.HEADER_TIME}: {now}\r\n{wire.HEADER_SIGNATURE}: {signature}\r\n\r\n"
    ).encode()

    raw = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", server.port))
    try:
        await asyncio.to_thread(raw.sendall, head + data[:70_000])
        # The server has taken the part in once the blob's file holds it.
        blob_file = server.data_dir / "blobs" / blob_id
        await wait_until(lambda: blob_file.stat().st_size == 70_000)
    finally:
        raw.close()

    # HEAD waits for the broken upload to finish, so it sees what was kept.
    kept = await call(http, server, alice, "HEAD", wire.blob_path(blob_id))
    assert kept.offset == 70_000
    rest = await call(
        http, server, alice, "PUT", wire.blob_path(blob_id, offset=70_000), data=data[70_000:]
    )
    assert rest.offset == len(data)
    assert (await call(http, server, bob, "GET", wire.blob_path(blob_id))).body == data


async def test_server_serves_a_range_from_an_offset(
    server: ServerProcess, online: Online, http: aiohttp.ClientSession
) -> None:
    """`Range: bytes=N-` gets 206 with the tail; a start at the end gets 416."""
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")
    data = secrets.token_bytes(600_000)
    blob_id = await upload(http, server, alice, data, bob)
    path = wire.blob_path(blob_id)

    tail = await call(http, server, bob, "GET", path, headers={"Range": "bytes=250000-"})
    assert tail.status == 206 and tail.body == data[250_000:]
    assert tail.headers["Content-Range"] == f"bytes 250000-{len(data) - 1}/{len(data)}"
    past = await call(http, server, bob, "GET", path, headers={"Range": f"bytes={len(data)}-"})
    assert past.status == 416 and past.headers["Content-Range"] == f"bytes */{len(data)}"
    whole = await call(http, server, bob, "GET", path, headers={"Range": "bytes=0-99"})
    assert (whole.status, whole.body) == (200, data)  # other range forms are ignored


async def test_server_hides_a_blob_from_devices_it_is_not_addressed_to(
    server: ServerProcess, online: Online, http: aiohttp.ClientSession
) -> None:
    """Others, the uploader included, get the same 404 as for a blob that does not exist."""
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")
    _, carol = await online(server, "carol")
    blob_id = await upload(http, server, alice, b"for bob only", bob)
    missing = await call(http, server, carol, "GET", wire.blob_path(secrets.token_urlsafe(16)))
    assert (missing.status, missing.error().code) == (404, ErrorCode.UNKNOWN_BLOB)

    for device, method, path in (
        (carol, "GET", wire.blob_path(blob_id)),
        (alice, "GET", wire.blob_path(blob_id)),
        (carol, "PUT", wire.blob_path(blob_id, offset=12)),
        (bob, "PUT", wire.blob_path(blob_id, offset=12)),
    ):
        answer = await call(http, server, device, method, path, data=b"")
        assert (answer.status, answer.body) == (404, missing.body), (device.username, method)
    assert (await call(http, server, carol, "HEAD", wire.blob_path(blob_id))).status == 404
    ignored = await call(http, server, carol, "POST", wire.blob_path(blob_id, fetched=True))
    assert ignored.status == 204
    assert (await call(http, server, bob, "GET", wire.blob_path(blob_id))).body == b"for bob only"


async def test_server_deletes_a_blob_once_every_recipient_fetched_it(
    server: ServerProcess, online: Online, http: aiohttp.ClientSession
) -> None:
    """The file and its rows go when the last addressed device says it fetched the blob."""
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")
    _, carol = await online(server, "carol")
    blob_id = await upload(http, server, alice, b"group photo", bob, carol)

    assert (
        await call(http, server, bob, "POST", wire.blob_path(blob_id, fetched=True))
    ).status == 204
    assert blob_id in held_blob_ids(server) and blob_id in blob_files(server)
    again = await call(http, server, bob, "GET", wire.blob_path(blob_id))
    assert again.status == 404  # bob has it already
    assert (await call(http, server, carol, "GET", wire.blob_path(blob_id))).body == b"group photo"

    assert (
        await call(http, server, carol, "POST", wire.blob_path(blob_id, fetched=True))
    ).status == 204
    assert held_blob_ids(server) == set() and blob_files(server) == set()
    repeated = await call(http, server, carol, "POST", wire.blob_path(blob_id, fetched=True))
    assert repeated.status == 204


async def test_server_takes_blobs_away_from_a_device_removed_from_its_account(
    server: ServerProcess, online: Online, http: aiohttp.ClientSession
) -> None:
    """When bob's list drops his laptop, a blob only for the laptop is deleted, one also for
    his phone stays for the phone, and the laptop's signed requests fail."""
    _, alice = await online(server, "alice")
    bob_client, bob = await online(server, "bob")
    laptop = RawDevice("bob", "laptop", bob.account)
    assert await bob_client.request(bob.account.publish_frame(1, [bob, laptop])) == (
        DevicesPublished(id=1, version=2)
    )
    only_laptop = await upload(http, server, alice, b"for the laptop", laptop)
    both = await upload(http, server, alice, b"for both", bob, laptop)
    assert held_blob_ids(server) == {only_laptop, both}

    assert await bob_client.request(bob.account.publish_frame(2, [bob])) == (
        DevicesPublished(id=2, version=3)
    )
    await wait_until(lambda: held_blob_ids(server) == {both} and blob_files(server) == {both})
    denied = await call(http, server, laptop, "GET", wire.blob_path(both))
    assert (denied.status, denied.error().code) == (401, ErrorCode.AUTH_FAILED)
    assert (await call(http, server, bob, "GET", wire.blob_path(both))).body == b"for both"


async def test_server_sweeps_blobs_past_their_ttl(
    server_factory: Callable[..., ServerProcess], online: Online, http: aiohttp.ClientSession
) -> None:
    """With --blob-ttl 1, complete and incomplete blobs are deleted unfetched by the sweeper."""
    server = server_factory("--blob-ttl", "1", "--sweep-interval", "0.2")
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")
    complete = await upload(http, server, alice, b"never fetched", bob)
    incomplete = await create(http, server, alice, 100, bob)
    assert held_blob_ids(server) == {complete, incomplete}

    await wait_until(lambda: held_blob_ids(server) == set() and blob_files(server) == set())
    gone = await call(http, server, bob, "GET", wire.blob_path(complete))
    assert (gone.status, gone.error().code) == (404, ErrorCode.UNKNOWN_BLOB)
    assert "expired blobs" in server.log_text


async def test_server_keeps_blobs_across_a_restart_and_drops_stray_files(
    server: ServerProcess, online: Online, http: aiohttp.ClientSession
) -> None:
    """A completed blob survives a restart; a file with no row (a crash's leftover) is removed."""
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")
    blob_id = await upload(http, server, alice, b"kept", bob)
    server.stop()
    (server.data_dir / "blobs" / "stray-file-from-a-crash").write_bytes(b"junk")
    server.start()

    assert blob_files(server) == {blob_id}
    assert (await call(http, server, bob, "GET", wire.blob_path(blob_id))).body == b"kept"


async def admin_json(*args: str) -> object:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "obrolan.server", "admin", *args],
        capture_output=True,
        text=True,
        timeout=ADMIN_GUARD_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "SECRET" not in result.stdout
    return json.loads(result.stdout)


async def test_admin_discloses_blobs_and_counts_them_without_content(
    server: ServerProcess, online: Online, http: aiohttp.ClientSession
) -> None:
    """disclose lists each account's blobs (id, size, expiry day, who waits); stats counts bytes."""
    _, alice = await online(server, "alice")
    _, bob = await online(server, "bob")
    complete = await upload(http, server, alice, b"SECRET-BLOB-CONTENT", bob)
    partial = await create(http, server, alice, 50, bob)
    await call(http, server, alice, "PUT", wire.blob_path(partial, offset=0), data=b"SECRET" * 2)
    data = str(server.data_dir)
    expiry = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 30 * 24 * 3600))

    disclosed = await admin_json("disclose", "alice", "--data", data)
    assert isinstance(disclosed, dict)
    assert sorted(disclosed["blobs_from_account"], key=lambda b: b["size"]) == [
        {
            "blob_id": complete,
            "from_device": "phone",
            "size": 19,
            "received": 19,
            "expires_day": expiry,
            "waiting_for": ["bob/phone"],
        },
        {
            "blob_id": partial,
            "from_device": "phone",
            "size": 50,
            "received": 12,
            "expires_day": expiry,
            "waiting_for": ["bob/phone"],
        },
    ]
    assert disclosed["blobs_for_account"] == []
    for_bob = await admin_json("disclose", "bob", "--data", data)
    assert isinstance(for_bob, dict)
    assert {b["blob_id"] for b in for_bob["blobs_for_account"]} == {complete, partial}
    assert all(
        (b["to_device"], b["from_user"], b["from_device"]) == ("phone", "alice", "phone")
        for b in for_bob["blobs_for_account"]
    )
    counts = await admin_json("stats", "--data", data)
    assert isinstance(counts, dict)
    assert (counts["blobs"], counts["blob_bytes"]) == (2, 19 + 12)
