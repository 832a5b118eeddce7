"""Encrypted attachments end to end: real clients, a real server, its files and database.

Alice's client seals and uploads a file for bob's device; bob's client downloads,
checks and decrypts it. Crashes are real (a failpoint SIGKILLs a worker process),
memory is the worker's own peak RSS.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path

import aiohttp
import msgspec
import pytest
from PIL import Image

from obrolan.client import Client
from obrolan.client.attachments import (
    THUMBNAIL_EDGE,
    THUMBNAIL_MAX_BYTES,
    BlobClient,
    FileUploadJournal,
    PendingUpload,
    Progress,
    blob_size,
    decrypt_attachment,
)
from obrolan.errors import DecryptionError, RequestRefused
from obrolan.protocol import blobs as wire
from obrolan.protocol import content
from obrolan.protocol.codes import ErrorCode
from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
WORKER_GUARD_SECONDS = 120
MIB = 1024 * 1024


@pytest.fixture
async def alice_bob(
    server: ServerProcess, profiles: Callable[[str], Path]
) -> AsyncIterator[tuple[Client, Client]]:
    """alice and bob registered on the server, offline (their profiles stay usable)."""
    alice = await Client.register(profiles("alice"), server.url, "alice", None)
    bob = await Client.register(profiles("bob"), server.url, "bob", None)
    try:
        yield alice, bob
    finally:
        await alice.close()
        await bob.close()


def blobs_of(client: Client) -> BlobClient:
    # Test-only: the device's signing function is not public API yet (Client.sign is proposed).
    return BlobClient(client.address, client.username, client.device_id, client.sign)


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as file:
        for start in range(0, size, MIB):
            file.write(os.urandom(min(MIB, size - start)))
    return path


def digest(path: Path) -> bytes:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").digest()


def held_blobs(server: ServerProcess) -> tuple[set[str], set[str]]:
    """(blob ids in DATA/blobs.db, files in DATA/blobs/), read from the data directory."""
    uri = f"{(server.data_dir / 'blobs.db').as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as db:
        rows = {row[0] for row in db.execute("SELECT blob_id FROM blobs")}
    return rows, set(os.listdir(server.data_dir / "blobs"))


async def send(
    alice: Client, bob: Client, path: Path, progress: Progress | None = None
) -> content.Attachment:
    async with blobs_of(alice) as blobs:
        journal = FileUploadJournal(alice.profile_dir / "uploads")
        return await blobs.upload_file(path, [(bob.username, bob.device_id)], journal, progress)


async def fetch(
    bob: Client, attachment: content.Attachment, progress: Progress | None = None
) -> Path:
    async with blobs_of(bob) as blobs:
        return await blobs.download(attachment, bob.profile_dir / "attachments", progress)


async def worker(*args: str, failpoints: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBROLAN_")}
    if failpoints:
        env["OBROLAN_FAILPOINTS"] = failpoints
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tests.support.attachment_worker", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_GUARD_SECONDS,
        check=False,
    )


async def held_offset(server: ServerProcess, client: Client, blob_id: str) -> int:
    """The uploader's `HEAD`: bytes of the blob the server holds (after any upload under way)."""
    path = wire.blob_path(blob_id)
    now = int(time.time())
    signed = wire.blob_request_bytes("HEAD", path, now, client.username, client.device_id)
    headers = {
        wire.HEADER_USER: client.username,
        wire.HEADER_DEVICE: client.device_id,
        wire.HEADER_TIME: str(now),
        wire.HEADER_SIGNATURE: client.sign(signed),
    }
    async with aiohttp.ClientSession() as http, http.head(server.url + path, headers=headers) as r:
        assert r.status == 200
        return int(r.headers[wire.HEADER_OFFSET])


async def test_client_sends_a_20_mib_file_that_arrives_identical_and_leaves_the_server(
    server: ServerProcess, alice_bob: tuple[Client, Client], tmp_path: Path
) -> None:
    """20 MiB go alice → bob byte for byte; once bob fetched it, the server holds nothing of it."""
    alice, bob = alice_bob
    original = random_file(tmp_path / "video.bin", 20 * MIB)
    sent: list[tuple[int, int]] = []
    attachment = await send(alice, bob, original, progress=lambda d, t: sent.append((d, t)))
    total = blob_size(20 * MIB, attachment.chunk_size)
    assert (attachment.size, attachment.name, attachment.thumbnail) == (20 * MIB, "video.bin", None)
    assert sent[0] == (0, total) and sent[-1] == (total, total)
    assert held_blobs(server) == ({attachment.blob_id}, {attachment.blob_id})
    on_server = (server.data_dir / "blobs" / attachment.blob_id).read_bytes()
    assert hashlib.sha256(on_server).digest() == attachment.sha256
    assert original.read_bytes()[: 64 * 1024] not in on_server  # only ciphertext is there

    # It travels inside an end-to-end message: the record survives its encoding.
    carried = content.decode_content(
        content.encode(
            content.Text(message_id="m" * 22, sent_at_ms=1, text="", attachment=attachment)
        )
    )
    assert isinstance(carried, content.Text) and carried.attachment == attachment
    stored = await fetch(bob, attachment)
    assert stored == bob.profile_dir / "attachments" / attachment.blob_id
    assert stored.read_bytes() == on_server  # kept encrypted at rest
    decrypt_attachment(stored, attachment, tmp_path / "received.bin")

    assert digest(tmp_path / "received.bin") == digest(original)
    assert held_blobs(server) == (set(), set())


async def test_client_memory_stays_flat_from_2_to_20_mib(
    alice_bob: tuple[Client, Client], tmp_path: Path
) -> None:
    """A worker's peak RSS for a 20 MiB round trip is within 8 MiB of its peak for 2 MiB."""
    alice, bob = alice_bob
    peaks = {}
    for size in (2 * MIB, 20 * MIB):
        original = random_file(tmp_path / f"{size}.bin", size)
        out = tmp_path / f"{size}.out"
        done = await worker(
            "round-trip", str(alice.profile_dir), str(bob.profile_dir), str(original), str(out)
        )
        assert done.returncode == 0, done.stderr
        assert digest(out) == digest(original)
        peaks[size] = json.loads(done.stdout)["max_rss_kib"] * 1024
    assert peaks[20 * MIB] - peaks[2 * MIB] < 8 * MIB, peaks


async def test_client_resumes_an_upload_killed_half_way(
    server: ServerProcess, alice_bob: tuple[Client, Client], tmp_path: Path
) -> None:
    """After a SIGKILL mid-upload, the next upload sends only what the server lacks."""
    alice, bob = alice_bob
    original = random_file(tmp_path / "big.bin", 6 * MIB)
    killed = await worker(
        "upload",
        str(alice.profile_dir),
        str(original),
        "bob",
        bob.device_id,
        str(tmp_path / "unused.json"),
        failpoints="attachments.after_batch",
    )
    assert killed.returncode == -9, killed.stderr
    (record,) = (alice.profile_dir / "uploads").glob("*.json")
    pending = msgspec.json.decode(record.read_bytes(), type=PendingUpload)
    assert record.stat().st_mode & 0o777 == 0o600
    total = blob_size(6 * MIB, pending.chunk_size)
    kept = await held_offset(server, alice, pending.blob_id)
    assert 0 < kept < total

    resumed: list[tuple[int, int]] = []
    attachment = await send(alice, bob, original, progress=lambda d, t: resumed.append((d, t)))
    assert attachment.blob_id == pending.blob_id and attachment.key == pending.key
    assert resumed[0] == (kept, total) and resumed[-1] == (total, total)
    assert all(done > kept for done, _ in resumed[1:])  # nothing before `kept` was sent again
    assert list((alice.profile_dir / "uploads").glob("*.json")) == []

    stored = await fetch(bob, attachment)
    decrypt_attachment(stored, attachment, tmp_path / "received.bin")
    assert digest(tmp_path / "received.bin") == digest(original)


async def test_client_resumes_a_download_killed_half_way(
    alice_bob: tuple[Client, Client], tmp_path: Path
) -> None:
    """After a SIGKILL mid-download, the next download asks only for the rest of the blob."""
    alice, bob = alice_bob
    original = random_file(tmp_path / "big.bin", 3 * MIB)
    attachment = await send(alice, bob, original)
    (tmp_path / "attachment.json").write_bytes(content.encode(attachment))
    killed = await worker(
        "download",
        str(bob.profile_dir),
        str(tmp_path / "attachment.json"),
        failpoints="attachments.after_piece",
    )
    assert killed.returncode == -9, killed.stderr
    partial = bob.profile_dir / "attachments" / f"{attachment.blob_id}.part"
    had = partial.stat().st_size
    total = blob_size(attachment.size, attachment.chunk_size)
    assert 0 < had < total

    received: list[tuple[int, int]] = []
    stored = await fetch(bob, attachment, progress=lambda d, t: received.append((d, t)))
    assert received[0] == (had, total) and received[1][0] > had and received[-1] == (total, total)
    assert not partial.exists()
    decrypt_attachment(stored, attachment, tmp_path / "received.bin")
    assert digest(tmp_path / "received.bin") == digest(original)


async def test_client_rejects_a_blob_tampered_with_on_the_server(
    server: ServerProcess, alice_bob: tuple[Client, Client], tmp_path: Path
) -> None:
    """One flipped byte in the server's file: a typed error, and nothing kept on bob's device."""
    alice, bob = alice_bob
    original = random_file(tmp_path / "report.pdf", 300_000)
    attachment = await send(alice, bob, original)
    on_disk = server.data_dir / "blobs" / attachment.blob_id
    data = bytearray(on_disk.read_bytes())
    data[123_456] ^= 0x01
    on_disk.write_bytes(bytes(data))

    with pytest.raises(DecryptionError, match="failed verification"):
        await fetch(bob, attachment)
    attachments = bob.profile_dir / "attachments"
    assert list(attachments.iterdir()) == []
    assert held_blobs(server)[0] == {attachment.blob_id}  # not marked fetched


async def test_client_refuses_to_decrypt_an_altered_or_cut_ciphertext(
    alice_bob: tuple[Client, Client], tmp_path: Path
) -> None:
    """A stored blob altered or cut short after download decrypts to no output file at all."""
    alice, bob = alice_bob
    original = random_file(tmp_path / "photo.raw", 200_000)
    attachment = await send(alice, bob, original)
    stored = await fetch(bob, attachment)
    good = stored.read_bytes()
    out = tmp_path / "out" / "photo.raw"
    out.parent.mkdir()

    altered = bytearray(good)
    altered[-5] ^= 0x80  # inside the final chunk
    for damaged in (bytes(altered), good[: -(attachment.size % attachment.chunk_size + 16)]):
        stored.write_bytes(damaged)
        with pytest.raises(DecryptionError, match="failed verification"):
            decrypt_attachment(stored, attachment, out)
        assert list(out.parent.iterdir()) == []
    stored.write_bytes(good)
    decrypt_attachment(stored, attachment, out)
    assert out.read_bytes() == original.read_bytes()


async def test_client_makes_a_small_thumbnail_for_an_image_only(
    alice_bob: tuple[Client, Client], tmp_path: Path
) -> None:
    """A PNG gets its media type and a JPEG preview within 128 px and 8 KiB; text gets neither."""
    alice, bob = alice_bob
    picture = Image.radial_gradient("L").resize((1200, 800)).convert("RGB")
    picture.save(tmp_path / "holiday.png")
    (tmp_path / "notes.txt").write_text("remember the milk\n")

    image = await send(alice, bob, tmp_path / "holiday.png")
    assert image.mime == "image/png" and image.thumbnail is not None
    assert len(image.thumbnail) <= THUMBNAIL_MAX_BYTES
    with Image.open(io.BytesIO(image.thumbnail)) as preview:
        assert preview.format == "JPEG" and max(preview.size) == THUMBNAIL_EDGE
    text = await send(alice, bob, tmp_path / "notes.txt")
    assert (text.mime, text.thumbnail) == ("text/plain", None)


async def test_client_gets_a_typed_refusal_for_a_file_over_the_server_limit(
    server_factory: Callable[..., ServerProcess], profiles: Callable[[str], Path], tmp_path: Path
) -> None:
    """A file whose blob would pass --max-blob-bytes is refused with blob_too_large."""
    server = server_factory("--max-blob-bytes", "100000", name="small")
    alice = await Client.register(profiles("alice"), server.url, "alice", None)
    bob = await Client.register(profiles("bob"), server.url, "bob", None)
    try:
        with pytest.raises(RequestRefused) as refused:
            await send(alice, bob, random_file(tmp_path / "big.bin", 200_000))
        assert refused.value.code is ErrorCode.BLOB_TOO_LARGE
        assert "100000" in str(refused.value)
    finally:
        await alice.close()
        await bob.close()
