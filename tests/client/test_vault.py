"""The profile vault: real SQLCipher files in a temporary directory."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from obrolan.client.vault import Vault, create_vault, open_vault, profile_exists
from obrolan.errors import ConfigError, InvalidState, ProfileError, StorageError, WrongPassphrase

_MARKER = "obrolan-vault-test-marker-7f3a9c"


def _write_marker(vault: Vault) -> None:
    with vault.transaction() as db:
        db.execute("CREATE TABLE notes (body TEXT NOT NULL)")
        db.execute("INSERT INTO notes (body) VALUES (?)", (_MARKER,))


def _read_notes(vault: Vault) -> list[str]:
    return [row[0] for row in vault.connection.execute("SELECT body FROM notes")]


def _raw_bytes(profile_dir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(profile_dir.iterdir()))


def test_vault_encrypts_rows_at_rest_and_reopens_with_passphrase(tmp_path: Path) -> None:
    """A committed row is absent from the raw files and readable after reopening."""
    profile = tmp_path / "profile"
    with create_vault(profile, "correct horse") as vault:
        _write_marker(vault)
    raw_store = (profile / "store.db").read_bytes()
    assert len(raw_store) > 0
    assert _MARKER.encode() not in raw_store
    assert _MARKER.encode() not in _raw_bytes(profile)
    with open_vault(profile, "correct horse") as vault:
        assert _read_notes(vault) == [_MARKER]


def test_vault_wrong_passphrase_raises_and_leaves_store_intact(tmp_path: Path) -> None:
    """A wrong passphrase raises WrongPassphrase; the right one still opens the data."""
    profile = tmp_path / "profile"
    with create_vault(profile, "correct horse") as vault:
        _write_marker(vault)
    with pytest.raises(WrongPassphrase):
        open_vault(profile, "wrong horse")
    with open_vault(profile, "correct horse") as vault:
        assert _read_notes(vault) == [_MARKER]


def test_vault_passphrase_profile_without_passphrase_raises_config_error(tmp_path: Path) -> None:
    """Opening a passphrase profile with None tells how to provide the passphrase."""
    profile = tmp_path / "profile"
    create_vault(profile, "secret").close()
    with pytest.raises(ConfigError, match="OBROLAN_PASSPHRASE"):
        open_vault(profile, None)


def test_vault_keyfile_mode_has_private_permissions(tmp_path: Path) -> None:
    """--no-passphrase writes a 32-byte 0600 key in a 0700 directory and reopens with it."""
    profile = tmp_path / "nested" / "profile"
    with create_vault(profile, None) as vault:
        _write_marker(vault)
    key_file = profile / "key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(profile.stat().st_mode) == 0o700
    assert stat.S_IMODE((profile / "store.db").stat().st_mode) == 0o600
    assert len(key_file.read_bytes()) == 32
    assert json.loads((profile / "profile.json").read_text()) == {"key": "keyfile", "format": 1}
    assert _MARKER.encode() not in _raw_bytes(profile)
    with open_vault(profile, "ignored in keyfile mode") as vault:
        assert _read_notes(vault) == [_MARKER]
    with open_vault(profile, None) as vault:
        assert _read_notes(vault) == [_MARKER]


def test_vault_existing_directory_is_tightened_to_0700(tmp_path: Path) -> None:
    """A pre-existing empty directory becomes 0700 when the profile is created in it."""
    profile = tmp_path / "profile"
    profile.mkdir(mode=0o755)
    os.chmod(profile, 0o755)
    create_vault(profile, None).close()
    assert stat.S_IMODE(profile.stat().st_mode) == 0o700


def test_vault_keyfile_readable_by_others_raises_config_error(tmp_path: Path) -> None:
    """A key file that others can read is refused with the chmod that fixes it."""
    profile = tmp_path / "profile"
    create_vault(profile, None).close()
    os.chmod(profile / "key", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        open_vault(profile, None)


def test_vault_keyfile_with_other_key_raises_storage_error(tmp_path: Path) -> None:
    """A replaced key file does not open the store and is not blamed on a passphrase."""
    profile = tmp_path / "profile"
    create_vault(profile, None).close()
    (profile / "key").write_bytes(os.urandom(32))
    with pytest.raises(StorageError, match="does not open with the key") as excinfo:
        open_vault(profile, None)
    assert not isinstance(excinfo.value, WrongPassphrase)


def test_vault_missing_or_damaged_key_file_raises_profile_error(tmp_path: Path) -> None:
    """A truncated or deleted key file raises ProfileError naming the file."""
    profile = tmp_path / "profile"
    create_vault(profile, None).close()
    (profile / "key").write_bytes(b"short")
    with pytest.raises(ProfileError, match="5 bytes, expected 32"):
        open_vault(profile, None)
    (profile / "key").unlink()
    with pytest.raises(ProfileError, match="missing"):
        open_vault(profile, None)


def test_vault_create_twice_raises_profile_error(tmp_path: Path) -> None:
    """Creating a profile where one exists is refused in both key modes."""
    profile = tmp_path / "profile"
    assert not profile_exists(profile)
    create_vault(profile, None).close()
    assert profile_exists(profile)
    with pytest.raises(ProfileError, match="already exists"):
        create_vault(profile, None)
    with pytest.raises(ProfileError, match="already exists"):
        create_vault(profile, "passphrase")


def test_vault_create_over_interrupted_profile_raises_profile_error(tmp_path: Path) -> None:
    """Store files without profile.json are never overwritten."""
    profile = tmp_path / "profile"
    create_vault(profile, None).close()
    (profile / "profile.json").unlink()
    before = (profile / "store.db").read_bytes()
    with pytest.raises(ProfileError, match=r"no profile\.json"):
        create_vault(profile, None)
    assert (profile / "store.db").read_bytes() == before


def test_vault_create_with_empty_passphrase_raises_config_error(tmp_path: Path) -> None:
    """An empty passphrase is refused and leaves no profile behind."""
    profile = tmp_path / "profile"
    with pytest.raises(ConfigError, match="empty"):
        create_vault(profile, "")
    assert not profile_exists(profile)


def test_vault_open_missing_profile_raises_profile_error(tmp_path: Path) -> None:
    """Opening where no profile exists points at `obrolan register`."""
    with pytest.raises(ProfileError, match="obrolan register"):
        open_vault(tmp_path / "nowhere", "passphrase")


def test_vault_open_damaged_or_future_profile_raises_profile_error(tmp_path: Path) -> None:
    """Unreadable, unknown-format or store-less profiles raise ProfileError."""
    profile = tmp_path / "profile"
    create_vault(profile, None).close()
    profile_json = profile / "profile.json"
    profile_json.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        open_vault(profile, None)
    profile_json.write_text('{"format": 2, "key": "keyfile"}')
    with pytest.raises(ProfileError, match="format 2"):
        open_vault(profile, None)
    profile_json.write_text('{"format": 1, "key": "passphrase", "kdf": {"salt": 5}}')
    with pytest.raises(ProfileError, match="damaged"):
        open_vault(profile, "x")
    profile_json.write_text('{"format": 1, "key": "keyfile"}')
    (profile / "store.db").unlink()
    with pytest.raises(ProfileError, match=r"no store\.db"):
        open_vault(profile, None)


def test_vault_connection_has_durable_private_pragmas(tmp_path: Path) -> None:
    """WAL, synchronous=FULL, foreign keys and secure delete are on after opening."""
    profile = tmp_path / "profile"
    create_vault(profile, None).close()
    with open_vault(profile, None) as vault:
        db = vault.connection
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA synchronous").fetchone() == (2,)
        assert db.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert db.execute("PRAGMA secure_delete").fetchone() == (1,)
        assert db.execute("PRAGMA cipher_version").fetchone()[0].startswith("4.")
        assert vault.path == profile
        assert vault.database_path == profile / "store.db"


def test_vault_pickle_key_is_stable_per_profile(tmp_path: Path) -> None:
    """The pickle key is 32 bytes, the same on every opening, and differs between profiles."""
    first, second = tmp_path / "first", tmp_path / "second"
    with create_vault(first, "same passphrase") as vault:
        created_key = vault.pickle_key
    with open_vault(first, "same passphrase") as vault:
        assert vault.pickle_key == created_key
    with create_vault(second, "same passphrase") as vault:
        assert vault.pickle_key != created_key
    assert len(created_key) == 32


def test_vault_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    """An exception inside transaction() undoes its writes and propagates unchanged."""
    profile = tmp_path / "profile"
    with create_vault(profile, None) as vault:
        _write_marker(vault)
        with pytest.raises(KeyError), vault.transaction() as db:
            db.execute("INSERT INTO notes (body) VALUES ('lost')")
            raise KeyError("boom")
        assert not vault.connection.in_transaction
    with open_vault(profile, None) as vault:
        assert _read_notes(vault) == [_MARKER]


def test_vault_nested_transaction_raises_invalid_state(tmp_path: Path) -> None:
    """Opening a transaction inside another is a misuse, reported as InvalidState."""
    with create_vault(tmp_path / "profile", None) as vault:
        with vault.transaction(), pytest.raises(InvalidState), vault.transaction():
            pass
        assert not vault.connection.in_transaction


def test_vault_opened_in_one_thread_is_usable_in_another(tmp_path: Path) -> None:
    """The async client opens the vault in a worker thread and uses it on the loop's thread."""
    profile = tmp_path / "profile"
    create_vault(profile, None).close()
    opened: list[Vault] = []
    worker = threading.Thread(target=lambda: opened.append(open_vault(profile, None)))
    worker.start()
    worker.join()
    with opened[0] as vault:
        _write_marker(vault)
        assert _read_notes(vault) == [_MARKER]
