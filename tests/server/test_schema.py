"""The server's database schema: a database written by an older version is migrated in place."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import Envelope, Error, GetDevices
from obrolan.server.storage.sqlite import SCHEMA_VERSION
from tests.server.conftest import Connect, Online
from tests.server.exchange import delivered, send
from tests.support.raw_client import RawDevice, envelope_id, outbound
from tests.support.server import ServerProcess

# The schema exactly as version 1 of the server created it.
SCHEMA_V1 = """
CREATE TABLE accounts (username TEXT PRIMARY KEY, created_day TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE devices (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    ed25519 TEXT NOT NULL,
    curve25519 TEXT NOT NULL,
    signature TEXT NOT NULL,
    created_day TEXT NOT NULL,
    last_active_day TEXT NOT NULL,
    queued INTEGER NOT NULL DEFAULT 0,
    UNIQUE (username, device_id)
);
CREATE TABLE one_time_keys (
    id INTEGER PRIMARY KEY,
    device INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    key_id TEXT NOT NULL,
    key TEXT NOT NULL,
    signature TEXT NOT NULL,
    UNIQUE (device, key_id)
);
CREATE TABLE fallback_keys (
    device INTEGER PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    key_id TEXT NOT NULL,
    key TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE mailbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    envelope_id TEXT NOT NULL,
    from_user TEXT NOT NULL,
    from_device TEXT NOT NULL,
    ciphertext BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    UNIQUE (device, envelope_id)
);
CREATE INDEX mailbox_by_device ON mailbox (device, seq);
CREATE INDEX mailbox_by_expiry ON mailbox (expires_at);
PRAGMA user_version = 1;
"""


def write_version_1_database(path: Path, bob: RawDevice, queued: Envelope) -> None:
    """A version 1 database holding bob's account and one envelope queued for him."""
    keys = bob.keys()
    with closing(sqlite3.connect(path)) as db:
        db.executescript(SCHEMA_V1)
        db.execute("INSERT INTO accounts VALUES ('bob', '2026-01-01')")
        db.execute(
            "INSERT INTO devices (id, username, device_id, ed25519, curve25519, signature,"
            " created_day, last_active_day, queued) VALUES (7, 'bob', ?, ?, ?, ?,"
            " '2026-01-01', '2026-01-01', 1)",
            (keys.device_id, keys.ed25519, keys.curve25519, keys.signature),
        )
        # A higher seq than any row holds, as AUTOINCREMENT leaves it after deletes.
        db.execute(
            "INSERT INTO mailbox (seq, device, envelope_id, from_user, from_device, ciphertext,"
            " expires_at) VALUES (40, 7, ?, ?, ?, ?, 4102444800)",
            (queued.envelope_id, queued.from_user, queued.from_device, queued.ciphertext),
        )
        db.execute("UPDATE sqlite_sequence SET seq = 90 WHERE name = 'mailbox'")
        db.commit()


async def test_server_migrates_a_version_1_database_keeping_its_queue(
    tmp_path: Path, connect: Connect, online: Online
) -> None:
    """A version 1 database opens as version 4: the queued envelope comes first, then new
    ones; the old account, which has no account key, still authenticates but cannot
    publish a device list and has none to give."""
    data = tmp_path / "data"
    data.mkdir()
    bob = RawDevice("bob")
    old = Envelope(envelope_id(), "carol", "laptop", b"stored by version 1")
    write_version_1_database(data / "obrolan.db", bob, old)

    with ServerProcess(data) as server:
        alice_client, alice = await online(server, "alice")
        new = outbound(bob, b"stored by version 2")
        await send(alice_client, 1, new)
        bob_client = await connect(server.ws_url)
        await bob_client.authenticate(bob)
        assert await bob_client.until_drained() == [old, *delivered(alice, new)]
        refused = await bob_client.request(bob.account.publish_frame(1, [bob]))
        assert isinstance(refused, Error) and refused.code is ErrorCode.BAD_DEVICE_LIST
        lookup = await alice_client.request(GetDevices(id=2, username="bob"))
        assert isinstance(lookup, Error) and lookup.code is ErrorCode.UNKNOWN_USER

    with closing(sqlite3.connect(data / "obrolan.db")) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        columns = [row[1] for row in db.execute("PRAGMA table_info(devices)")]
        assert "queued" not in columns
        assert db.execute(
            "SELECT account_key, device_list, list_version, recovery_key FROM accounts"
            " WHERE username = 'bob'"
        ).fetchone() == (None, None, 0, None)
        (alice_version,) = db.execute(
            "SELECT list_version FROM accounts WHERE username = 'alice'"
        ).fetchone()
        assert alice_version == 1
        (newest,) = db.execute("SELECT MAX(seq) FROM mailbox").fetchone()
        assert newest > 90  # numbered after every seq version 1 had given
