"""Encrypted history archives: real SQLCipher profiles, real files, real Argon2id and AES-GCM."""

from __future__ import annotations

import itertools
import json
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from obrolan.client import archive_import
from obrolan.client.archive import (
    MAGIC,
    NOT_SENT_BEFORE_EXPORT,
    export_history,
    import_history,
)
from obrolan.client.ids import new_id
from obrolan.client.models import MessageState
from obrolan.client.search import search
from obrolan.client.store import Store, now_ms
from obrolan.client.vault import Vault, create_vault
from obrolan.errors import ConfigError, DecryptionError, StorageError

PASSPHRASE = "archive passphrase 42"
_clock = itertools.count(1_700_000_000_000, 60_000)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Vault]:
    with create_vault(tmp_path / "source", None) as vault:
        _fill(vault)
        yield vault


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Vault]:
    with create_vault(tmp_path / "target", None) as vault:
        store = Store(vault)
        with store.transaction():
            store.set_meta("username", "alice")
            store.set_meta("account", "target-device-secret")
        yield vault


def _message(
    store: Store, peer: str, text: str, *, outgoing: bool, state: MessageState | None = None
) -> int:
    rowid = store.add_message(
        message_id=new_id(),
        peer=peer,
        sender="alice" if outgoing else peer,
        sender_device="dev-a" if outgoing else "dev-p",
        outgoing=outgoing,
        text=text,
        sent_at_ms=next(_clock),
        state=state or (MessageState.SENT if outgoing else MessageState.RECEIVED),
    )
    assert rowid is not None
    return rowid


def _attach(vault: Vault, rowid: int, content: bytes) -> str:
    blob_id = new_id()
    folder = vault.path / "attachments"
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / blob_id).write_bytes(content)
    meta = {
        "blob_id": blob_id,
        "name": "photo.jpg",
        "mime": "image/jpeg",
        "size": len(content),
        "key": "a2V5",
    }
    vault.connection.execute(
        "UPDATE messages SET attachment = ? WHERE id = ?", (json.dumps(meta), rowid)
    )
    return blob_id


def _fill(vault: Vault) -> None:
    """alice's history with bob and carol: every kind of row an archive carries."""
    store = Store(vault)
    db = vault.connection
    with store.transaction():
        store.set_meta("username", "alice")
        store.set_meta("device_id", "source-device")
        store.set_meta("account", "source-device-secret-pickle")
        db.execute(
            "INSERT INTO contacts (username, identity_key, first_seen_ms, changed_key) "
            "VALUES ('bob', 'bob-key', 1, NULL), ('carol', 'carol-key', 2, 'carol-new')"
        )
        db.execute(
            "INSERT INTO conversations (peer, accepted, blocked, timer_seconds, "
            "next_counter) VALUES ('bob', 1, 0, NULL, 40), ('carol', 0, 1, 3600, 7)"
        )
        db.execute(
            "INSERT INTO counters (peer, sender, device, highest_seen) "
            "VALUES ('bob', 'bob', 'bob-phone', 41), ('carol', 'carol', 'c1', 9)"
        )
        db.execute(
            "INSERT INTO sessions (curve25519, session_id, pickle, last_used_ms) "
            "VALUES ('bob-curve', 's1', 'olm-session-secret', 1)"
        )
        db.execute("INSERT INTO processed (envelope_id, at_ms) VALUES ('env-1', 1)")
        hello = _message(store, "bob", "hello bob, lunch tomorrow?", outgoing=True)
        reply = _message(store, "bob", "yes! the usual place 🍜", outgoing=False)
        db.execute(
            "INSERT INTO edits (message_rowid, text, edited_at_ms) VALUES "
            "(?, 'yes', 10), (?, 'yes!', 11)",
            (reply, reply),
        )
        db.execute(
            "UPDATE messages SET text = 'yes! the usual place 🍜', edited_at_ms = 11, "
            "receipt = 'read', counter = 3, reply_to = ? WHERE id = ?",
            (store.message(hello).message_id, reply),
        )
        db.execute(
            "INSERT INTO reactions (message_rowid, reactor, emoji) VALUES "
            "(?, 'bob', '👍'), (?, 'alice', '❤️')",
            (hello, reply),
        )
        _message(store, "bob", "", outgoing=False, state=MessageState.FAILED)
        gone = _message(store, "carol", "this was deleted for everyone", outgoing=False)
        db.execute("UPDATE messages SET text = '', deleted = 1 WHERE id = ?", (gone,))
        _message(
            store, "carol", "not sent: carol blocked", outgoing=True, state=MessageState.FAILED
        )
        photo = _message(store, "carol", "the photo", outgoing=False)
        _attach(vault, photo, b"\x00encrypted-at-rest\xff" * 100)
        later = _message(store, "carol", "disappears in an hour", outgoing=False)
        db.execute(
            "UPDATE messages SET expires_at_ms = ? WHERE id = ?", (now_ms() + 3_600_000, later)
        )
        expired = _message(store, "carol", "expired but not yet swept", outgoing=False)
        db.execute("UPDATE messages SET expires_at_ms = ? WHERE id = ?", (now_ms() - 1, expired))
        _message(store, "bob", "queued, never sent", outgoing=True, state=MessageState.QUEUED)


def _history(vault: Vault) -> dict[str, list[tuple[object, ...]]]:
    """Every archived row, without row ids (nor positions, which are row ids), comparable."""
    db = vault.connection
    columns = ", ".join(
        row[1] for row in db.execute("PRAGMA table_info(messages)") if row[1] != "position"
    )
    return {
        "contacts": db.execute("SELECT * FROM contacts ORDER BY username").fetchall(),
        "conversations": db.execute(
            "SELECT peer, accepted, blocked, timer_seconds FROM conversations ORDER BY peer"
        ).fetchall(),
        "messages": [
            row[1:]
            for row in db.execute(
                f"SELECT {columns} FROM messages WHERE expires_at_ms IS NULL "
                "OR expires_at_ms > ? ORDER BY id",
                (now_ms(),),
            )
        ],
        "edits": db.execute(
            "SELECT m.sender, m.message_id, e.text, e.edited_at_ms FROM edits e "
            "JOIN messages m ON m.id = e.message_rowid ORDER BY e.rowid"
        ).fetchall(),
        "reactions": db.execute(
            "SELECT m.sender, m.message_id, r.reactor, r.emoji FROM reactions r "
            "JOIN messages m ON m.id = r.message_rowid ORDER BY m.sender, m.message_id, r.reactor"
        ).fetchall(),
    }


def _files(vault: Vault) -> dict[str, bytes]:
    folder = vault.path / "attachments"
    if not folder.exists():
        return {}
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _device_state(vault: Vault) -> dict[str, list[tuple[object, ...]]]:
    db = vault.connection
    return {
        table: db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        for table in ("meta", "sessions", "processed", "outbox", "devices")
    }


def _chunk_offsets(data: bytes) -> list[int]:
    """Where each chunk's frame starts, read as docs of the format describe it."""
    offset = len(MAGIC) + 3 + int.from_bytes(data[len(MAGIC) + 1 : len(MAGIC) + 3], "big")
    offsets = []
    while offset < len(data):
        offsets.append(offset)
        offset += 5 + int.from_bytes(data[offset + 1 : offset + 5], "big")
    assert offset == len(data)
    return offsets


def test_archive_round_trip_gives_identical_history(
    source: Vault, target: Vault, tmp_path: Path
) -> None:
    """Export, then import into a fresh profile: the same rows (row ids aside) and files."""
    out = tmp_path / "alice.obrolan"
    exported = export_history(source, out, PASSPHRASE, None)
    assert (exported.messages, exported.edits, exported.reactions) == (8, 2, 2)
    assert (exported.contacts, exported.conversations, exported.files) == (2, 2, 1)
    assert exported.size == out.stat().st_size
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    imported = import_history(target, out, PASSPHRASE, None)
    assert imported.owner == "alice"
    assert (imported.messages, imported.messages_present, imported.messages_expired) == (8, 0, 0)
    assert (imported.edits, imported.reactions, imported.files) == (2, 2, 1)
    # Identical, except that a message still queued at export arrives as not sent.
    (queued,) = source.connection.execute(
        "SELECT COUNT(*) FROM messages WHERE state = 'queued'"
    ).fetchone()
    assert queued == 1
    source.connection.execute(
        "UPDATE messages SET state = 'failed', error = ? WHERE state = 'queued'",
        (NOT_SENT_BEFORE_EXPORT,),
    )
    assert _history(target) == _history(source)
    assert _files(target) == _files(source) != {}
    assert [h.text for h in search(target.connection, "usual place")] == ["yes! the usual place 🍜"]


def test_archive_never_carries_the_device(source: Vault, target: Vault, tmp_path: Path) -> None:
    """Identity, sessions, processed ids, outbox, meta and conversation counters stay home."""
    out = tmp_path / "alice.obrolan"
    export_history(source, out, PASSPHRASE, None)
    before = _device_state(target)
    import_history(target, out, PASSPHRASE, None)
    assert _device_state(target) == before
    counters = target.connection.execute(
        "SELECT peer, next_counter FROM conversations ORDER BY peer"
    ).fetchall()
    assert counters == [("bob", 1), ("carol", 1)]
    assert target.connection.execute("SELECT COUNT(*) FROM counters").fetchone() == (0,)
    data = out.read_bytes()
    for secret in (b"source-device-secret-pickle", b"olm-session-secret", b"hello bob"):
        assert secret not in data


def test_archive_import_twice_changes_nothing(source: Vault, target: Vault, tmp_path: Path) -> None:
    """A second import of the same archive adds no row and no file."""
    out = tmp_path / "alice.obrolan"
    export_history(source, out, PASSPHRASE, None)
    import_history(target, out, PASSPHRASE, None)
    history, files = _history(target), _files(target)
    again = import_history(target, out, PASSPHRASE, None)
    assert (again.messages, again.messages_present, again.edits, again.reactions) == (0, 8, 0, 0)
    assert (again.contacts, again.conversations, again.files, again.files_present) == (0, 0, 0, 1)
    assert _history(target) == history
    assert _files(target) == files


def test_archive_import_keeps_what_the_profile_already_has(
    source: Vault, target: Vault, tmp_path: Path
) -> None:
    """A message, contact or setting the profile holds already is left as it is."""
    out = tmp_path / "alice.obrolan"
    export_history(source, out, PASSPHRASE, None)
    (sender, message_id) = source.connection.execute(
        "SELECT sender, message_id FROM messages WHERE text LIKE 'yes!%'"
    ).fetchone()
    store = Store(target)
    with store.transaction():
        store.add_message(
            message_id=message_id,
            peer="bob",
            sender=sender,
            sender_device="d",
            outgoing=False,
            text="",
            sent_at_ms=1,
            state=MessageState.RECEIVED,
        )
        target.connection.execute("UPDATE messages SET deleted = 1")
        target.connection.execute(
            "INSERT INTO contacts VALUES ('bob', 'pinned-here', 5, NULL, 0, 0)"
        )
        target.connection.execute("INSERT INTO conversations (peer, blocked) VALUES ('bob', 1)")
    imported = import_history(target, out, PASSPHRASE, None)
    assert (imported.messages, imported.messages_present, imported.edits) == (7, 1, 0)
    db = target.connection
    assert db.execute(
        "SELECT text, deleted FROM messages WHERE message_id = ?", (message_id,)
    ).fetchone() == ("", 1)
    assert db.execute("SELECT identity_key FROM contacts WHERE username = 'bob'").fetchone() == (
        "pinned-here",
    )
    assert db.execute("SELECT blocked FROM conversations WHERE peer = 'bob'").fetchone() == (1,)


def test_archive_leaves_out_messages_whose_timer_ran_out(
    source: Vault, target: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expired messages are not exported, and expire on import if their time passed meanwhile."""
    out = tmp_path / "alice.obrolan"
    assert export_history(source, out, PASSPHRASE, None).messages == 8  # 9 in the store
    monkeypatch.setattr(archive_import, "now_ms", lambda: now_ms() + 2 * 3_600_000)
    imported = import_history(target, out, PASSPHRASE, None)
    assert (imported.messages, imported.messages_expired) == (7, 1)
    texts = [r[0] for r in target.connection.execute("SELECT text FROM messages")]
    assert "expired but not yet swept" not in texts
    assert "disappears in an hour" not in texts


def test_archive_reports_progress_up_to_the_total(
    source: Vault, target: Vault, tmp_path: Path
) -> None:
    """Both directions report (done, total) steadily up to (total, total)."""
    out = tmp_path / "alice.obrolan"
    for run in (
        lambda report: export_history(source, out, PASSPHRASE, report),
        lambda report: import_history(target, out, PASSPHRASE, report),
    ):
        calls: list[tuple[int, int]] = []
        run(lambda done, total, calls=calls: calls.append((done, total)))
        assert calls[0] == (0, 9) and calls[-1] == (9, 9)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_archive_export_refuses_to_overwrite(source: Vault, tmp_path: Path) -> None:
    """An existing file is kept unless overwrite is asked for; an empty passphrase is refused."""
    out = tmp_path / "taken.obrolan"
    out.write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="already exists"):
        export_history(source, out, PASSPHRASE, None)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(ConfigError, match="empty"):
        export_history(source, tmp_path / "new.obrolan", "", None)
    export_history(source, out, PASSPHRASE, None, overwrite=True)
    assert out.read_bytes().startswith(MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["taken.obrolan"]


def _assert_untouched(target: Vault, before: dict[str, list[tuple[object, ...]]]) -> None:
    assert _history(target) == before
    assert _files(target) == {}  # no attachment and no staging folder left behind


def test_archive_wrong_passphrase_imports_nothing(
    source: Vault, target: Vault, tmp_path: Path
) -> None:
    """A wrong passphrase is a DecryptionError saying so, and nothing is imported."""
    out = tmp_path / "alice.obrolan"
    export_history(source, out, PASSPHRASE, None)
    before = _history(target)
    with pytest.raises(DecryptionError, match="wrong passphrase"):
        import_history(target, out, "not the passphrase", None)
    _assert_untouched(target, before)


@pytest.fixture
def big_archive(source: Vault, tmp_path: Path) -> bytes:
    """An archive of several chunks: rows first, then a 2.5 MB attachment."""
    store = Store(source)
    with store.transaction():
        rowid = _message(store, "bob", "a big file", outgoing=False)
        _attach(source, rowid, secrets.token_bytes(2_500_000))
    out = tmp_path / "big.obrolan"
    export_history(source, out, PASSPHRASE, None)
    data = out.read_bytes()
    assert len(_chunk_offsets(data)) >= 3
    return data


def _import_bytes(target: Vault, tmp_path: Path, data: bytes) -> None:
    damaged = tmp_path / "damaged.obrolan"
    damaged.write_bytes(data)
    import_history(target, damaged, PASSPHRASE, None)


def test_archive_truncated_imports_nothing(
    big_archive: bytes, target: Vault, tmp_path: Path
) -> None:
    """Cut anywhere (even exactly between chunks) the archive is refused, nothing imported."""
    before = _history(target)
    offsets = _chunk_offsets(big_archive)
    for length in (offsets[-1], offsets[1], len(big_archive) - 1, offsets[-1] + 3):
        with pytest.raises(DecryptionError, match="truncated"):
            _import_bytes(target, tmp_path, big_archive[:length])
        _assert_untouched(target, before)


def test_archive_altered_byte_imports_nothing(
    big_archive: bytes, target: Vault, tmp_path: Path
) -> None:
    """A flipped byte anywhere (magic, header, frame, ciphertext, tag) is a typed error."""
    before = _history(target)
    offsets = _chunk_offsets(big_archive)
    header_end = offsets[0]
    positions = {
        "magic": 3,
        "header": header_end - 20,
        "first chunk flags": offsets[0],
        "first chunk length": offsets[0] + 4,
        "first chunk": offsets[0] + 100,
        "middle chunk": offsets[1] + 5000,
        "last tag byte": len(big_archive) - 1,
    }
    for position in positions.values():
        altered = bytearray(big_archive)
        altered[position] ^= 0x01
        with pytest.raises((DecryptionError, StorageError)):
            _import_bytes(target, tmp_path, bytes(altered))
        _assert_untouched(target, before)


def test_archive_reordered_spliced_or_extended_imports_nothing(
    big_archive: bytes, source: Vault, target: Vault, tmp_path: Path
) -> None:
    """Swapped chunks, a chunk from another archive, or bytes after the end: refused."""
    before = _history(target)
    offsets = [*_chunk_offsets(big_archive), len(big_archive)]
    chunks = [big_archive[a:b] for a, b in itertools.pairwise(offsets)]
    head = big_archive[: offsets[0]]
    swapped = head + chunks[1] + chunks[0] + b"".join(chunks[2:])
    other_path = tmp_path / "other.obrolan"
    export_history(source, other_path, PASSPHRASE, None)
    other = other_path.read_bytes()
    spliced = head + chunks[0] + other[_chunk_offsets(other)[1] :]
    for altered in (swapped, spliced, big_archive + b"\x00", big_archive + big_archive[-50:]):
        with pytest.raises(DecryptionError):
            _import_bytes(target, tmp_path, altered)
        _assert_untouched(target, before)


def test_archive_rejects_a_file_that_is_not_an_archive(target: Vault, tmp_path: Path) -> None:
    """An empty file, another file, a newer format version, or no file: clear typed errors."""
    for data, message in (
        (b"", "not an obrolan archive"),
        (b"SQLite format 3\x00" + bytes(100), "not an obrolan archive"),
        (MAGIC + b"\x09\x00\x02{}", "format 9"),
        (MAGIC + b"\x01\x00\x05{nope", "damaged"),
    ):
        with pytest.raises(StorageError, match=message):
            _import_bytes(target, tmp_path, data)
    with pytest.raises(StorageError, match="cannot read"):
        import_history(target, tmp_path / "missing.obrolan", PASSPHRASE, None)


def test_archive_import_marks_a_message_still_queued_at_export_not_sent(
    target: Vault, tmp_path: Path
) -> None:
    """The outbox is not archived, so a queued message arrives as "not sent", never stuck."""
    with create_vault(tmp_path / "queued", None) as vault:
        store = Store(vault)
        with store.transaction():
            _message(store, "bob", "written offline", outgoing=True, state=MessageState.QUEUED)
        out = tmp_path / "queued.obrolan"
        export_history(vault, out, PASSPHRASE, None)
    import_history(target, out, PASSPHRASE, None)
    (message,) = Store(target).history("bob")
    assert (message.text, message.state, message.error) == (
        "written offline",
        MessageState.FAILED,
        NOT_SENT_BEFORE_EXPORT,
    )


def test_archive_import_keeps_the_conversation_order_of_late_arrivals(
    target: Vault, tmp_path: Path
) -> None:
    """bob's phone's 3, 1, 2 were shown 1, 2, 3 on the exporting device; imported after what
    the profile already has from bob's tablet, they show 1, 2, 3 after it, late ones marked."""
    with create_vault(tmp_path / "reordered", None) as vault:
        store = Store(vault)
        with store.transaction():
            store.set_meta("username", "alice")
            for counter in (3, 1, 2):
                store.add_message(
                    message_id=new_id(),
                    peer="bob",
                    sender="bob",
                    sender_device="phone",
                    outgoing=False,
                    text=f"phone {counter}",
                    sent_at_ms=next(_clock),
                    state=MessageState.RECEIVED,
                    counter=counter,
                )
        out = tmp_path / "reordered.obrolan"
        export_history(vault, out, PASSPHRASE, None)
    store = Store(target)
    with store.transaction():
        for counter in (1, 2, 3):
            store.add_message(
                message_id=new_id(),
                peer="bob",
                sender="bob",
                sender_device="tablet",
                outgoing=False,
                text=f"tablet {counter}",
                sent_at_ms=next(_clock),
                state=MessageState.RECEIVED,
                counter=counter,
            )
    import_history(target, out, PASSPHRASE, None)
    assert [(m.text, m.arrived_late) for m in store.history("bob")] == [
        ("tablet 1", False),
        ("tablet 2", False),
        ("tablet 3", False),
        ("phone 1", True),
        ("phone 2", True),
        ("phone 3", False),
    ]


def test_archive_written_before_the_chunked_aead_module_still_imports(target: Vault) -> None:
    """tests/data/archive_v1.obrolan, written by the code that sealed archives itself (a cheap
    Argon2id, a fixed salt), imports whole: the file format did not move by a byte."""
    golden = Path(__file__).parents[1] / "data" / "archive_v1.obrolan"
    imported = import_history(target, golden, "golden passphrase", None)
    assert imported.as_json() == {
        "owner": "alice",
        "messages": 2,
        "messages_present": 0,
        "messages_expired": 0,
        "edits": 1,
        "reactions": 1,
        "contacts": 1,
        "conversations": 1,
        "files": 1,
        "files_present": 0,
    }
    db = target.connection
    assert db.execute(
        "SELECT message_id, sender, text FROM messages ORDER BY sent_at_ms"
    ).fetchall() == [
        ("m-hello", "alice", "hello bob"),
        ("m-reply", "bob", "hi alice 🍜"),
    ]
    assert db.execute("SELECT text FROM edits").fetchall() == [("hi",)]
    assert db.execute("SELECT reactor, emoji FROM reactions").fetchall() == [("bob", "👍")]
    blob = target.path / "attachments" / "blob-1"
    assert blob.read_bytes() == b"\x00ciphertext at rest\xff" * 20
    with pytest.raises(DecryptionError, match="wrong passphrase"):
        import_history(target, golden, "not the passphrase", None)
