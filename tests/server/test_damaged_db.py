"""A damaged database is noticed: at start (refused with a plain message that says what to
do) and at delivery (one bad stored row is skipped, the rest of the queue delivered).

Real server processes on real SQLite files; the damage is done to the file, or with
direct SQL, while the server is stopped.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from obrolan.protocol.frames import KeysUploaded, SendMulti, Sent, UploadKeys
from tests.server.conftest import Connect, Online
from tests.server.exchange import delivered, send
from tests.support.raw_client import RawDevice, multi, outbound
from tests.support.server import ServerProcess

_REFUSAL_GUARD_SECONDS = 30.0


def refused_start(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` on ``data_dir``, which must exit by itself (refusing to start)."""
    command = [sys.executable, "-m", "obrolan.server", "serve", "--host", "127.0.0.1"]
    return subprocess.run(
        [*command, "--port", "0", "--data", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=_REFUSAL_GUARD_SECONDS,
        check=False,
    )


def assert_plain_refusal(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0, result
    assert "listening" not in result.stdout, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


async def used_server(server: ServerProcess, online: Online, connect: Connect) -> RawDevice:
    """Accounts and queued envelopes in the database, then the server stopped."""
    _, alice = await online(server, "alice")
    bob_client, bob = await online(server, "bob")
    await bob_client.close()
    alice_client = await connect(server.ws_url)
    await alice_client.authenticate(alice)
    assert await alice_client.until_drained() == []
    for request_id in range(1, 21):  # enough pages that damage in the middle hits data
        await send(alice_client, request_id, outbound(bob, os.urandom(3000)))
    await alice_client.close()
    assert server.stop() == 0
    return bob


async def test_zero_length_database_in_a_used_folder_is_refused(
    server: ServerProcess, online: Online, connect: Connect
) -> None:
    """An emptied obrolan.db (and a missing one) is not taken for a new server: the start
    is refused, saying what is wrong and what to do; --new-database starts afresh."""
    await used_server(server, online, connect)
    server.database.write_bytes(b"")
    result = refused_start(server.data_dir)
    assert_plain_refusal(result, "obrolan.db", "empty", "backup", "--new-database")
    assert server.database.stat().st_size == 0  # nothing was made in its place
    server.database.unlink()
    result = refused_start(server.data_dir)
    assert_plain_refusal(result, "obrolan.db", "missing", "backup", "--new-database")
    assert not server.database.exists()
    fresh = ServerProcess(server.data_dir, "--new-database").start()
    try:
        client = await connect(fresh.ws_url)
        await client.register(RawDevice("bob"))  # an empty server: the name is free again
    finally:
        fresh.stop()


async def test_database_with_damaged_bytes_is_refused(
    server: ServerProcess, online: Online, connect: Connect
) -> None:
    """Garbage over pages in the middle of the file, or over its header: refused with a
    plain message, and the file is left as it was."""
    await used_server(server, online, connect)
    healthy = server.database.read_bytes()
    page = 4096
    assert len(healthy) > 8 * page
    middle = len(healthy) // page // 2 * page
    damaged = healthy[:middle] + os.urandom(3 * page) + healthy[middle + 3 * page :]
    server.database.write_bytes(damaged)
    result = refused_start(server.data_dir)
    assert_plain_refusal(result, "obrolan.db", "damaged", "backup")
    assert server.database.read_bytes() == damaged
    server.database.write_bytes(b"\xff" * 100 + healthy[100:])
    result = refused_start(server.data_dir)
    assert_plain_refusal(result, "obrolan.db", "not a database", "backup")
    result = refused_start(server.data_dir, "--new-database")  # never over a damaged file
    assert_plain_refusal(result, "obrolan.db", "not a database")
    server.database.write_bytes(healthy)
    server.start()  # the same file, undamaged, serves again


async def test_one_bad_stored_row_does_not_stop_delivery(
    server: ServerProcess, online: Online, connect: Connect
) -> None:
    """Rows damaged in place (an envelope id that is not text, a body that is text, a
    shared ciphertext gone) are skipped and deleted; the device gets every other envelope
    and keeps its connection."""
    alice_client, alice = await online(server, "alice")
    bob_client, bob = await online(server, "bob")
    await bob_client.close()
    envelopes = [outbound(bob, f"message {i}".encode()) for i in range(6)]
    for request_id, envelope in enumerate(envelopes, start=1):
        await send(alice_client, request_id, envelope)
    group = multi([bob], b"group message")
    await alice_client.send(SendMulti(id=99, envelope=group))
    assert isinstance(await alice_client.recv(), Sent)
    await alice_client.close()
    assert server.stop() == 0
    bad = {envelopes[1].envelope_id, envelopes[3].envelope_id, group.envelope_id}
    with closing(sqlite3.connect(server.database)) as db:
        db.execute(
            "UPDATE mailbox SET envelope_id = X'00' WHERE envelope_id = ?",
            (envelopes[1].envelope_id,),
        )
        db.execute(
            "UPDATE mailbox SET ciphertext = 'not bytes' WHERE envelope_id = ?",
            (envelopes[3].envelope_id,),
        )
        db.execute("DELETE FROM ciphertexts")
        db.commit()
    server.start()
    client = await connect(server.ws_url)
    await client.authenticate(bob)
    got = await client.until_drained()
    good = [e for e in envelopes if e.envelope_id not in bad]
    assert got == delivered(alice, *good)
    # Still connected, and still served.
    assert await client.request(UploadKeys(id=1, one_time_keys=[])) == KeysUploaded(
        id=1, one_time_keys=5
    )
    assert "unreadable" in server.log_text
    for envelope in good:
        assert envelope.envelope_id not in server.log_text  # never a row's content
    assert len(server.mailbox()) == len(good)  # the bad rows are gone, the good still queued


async def test_fresh_folder_still_starts(server: ServerProcess, online: Online) -> None:
    """A new, empty data folder makes a new database and serves, as before; and starts
    again on it."""
    await online(server, "alice")
    assert server.stop() == 0
    server.start()
    await online(server, "bob")


async def test_emptied_attachment_database_is_refused(
    server: ServerProcess, online: Online
) -> None:
    """blobs.db emptied: refused too, since new metadata would delete every waiting
    attachment's file as unknown."""
    await online(server, "alice")
    assert server.stop() == 0
    blobs = server.data_dir / "blobs.db"
    blobs.write_bytes(b"")
    (server.data_dir / "blobs" / "a-waiting-blob").write_bytes(b"ciphertext")
    result = refused_start(server.data_dir)
    assert_plain_refusal(result, "blobs.db", "empty", "attachment", "--new-database")
    assert (server.data_dir / "blobs" / "a-waiting-blob").exists()


async def test_row_damaged_in_the_file_while_serving_does_not_stop_delivery(
    server: ServerProcess, online: Online, connect: Connect
) -> None:
    """A page of one envelope's ciphertext is overwritten while the server runs (after its
    start-up check): reading that row fails, the row is skipped, the others delivered."""
    alice_client, alice = await online(server, "alice")
    bob_client, bob = await online(server, "bob")
    await bob_client.close()
    envelopes = [outbound(bob, os.urandom(10_000)) for _ in range(4)]
    for request_id, envelope in enumerate(envelopes, start=1):
        await send(alice_client, request_id, envelope)
    await alice_client.close()
    assert server.stop() == 0
    server.start()  # checked and healthy; the server has not read the mailbox yet
    damaged = envelopes[2].ciphertext
    with server.database.open("r+b") as file:
        content = file.read()
        offset = content.find(damaged[2500:2564])
        assert offset > 0
        file.seek(offset // 4096 * 4096)
        file.write(b"\xff\xff\xff\xff")  # the first overflow page's next-page number
    client = await connect(server.ws_url)
    await client.authenticate(bob)
    got = await client.until_drained()
    assert got == delivered(alice, *envelopes[:2], envelopes[3])
    assert await client.request(UploadKeys(id=1, one_time_keys=[])) == KeysUploaded(
        id=1, one_time_keys=5
    )
    assert "unreadable" in server.log_text
