"""The profile's encrypted store: finding its key and opening its SQLCipher database.

A profile directory (mode 0700) holds::

    profile.json   unencrypted; only what is needed to open the store:
                   {"format": 1, "key": "passphrase", "kdf": {Argon2id parameters}}
                   or {"format": 1, "key": "keyfile"}
    key            keyfile profiles only: 32 random bytes, mode 0600
    store.db       SQLCipher 4 database (with -wal/-shm beside it while open)

The store key is Argon2id(passphrase) or the key file's bytes. SQLCipher gets
it as a raw key, so it spends no time on its own key derivation; the Olm
pickles inside are encrypted again under :attr:`Vault.pickle_key`, an HKDF
sub-key of the store key.

Opening is blocking (Argon2id takes a fraction of a second by design): an
async caller runs :func:`open_vault` in a thread. The connection may then be
used from another thread, but from one thread at a time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import msgspec
from sqlcipher3 import dbapi2

from obrolan.client.durable_files import create_private, flush_to_disk, write_atomically
from obrolan.crypto.keys import KEY_BYTES, Argon2Params, derive_key, random_key, subkey
from obrolan.errors import (
    ConfigError,
    CryptoError,
    InvalidState,
    ProfileError,
    StorageError,
    WrongPassphrase,
)

__all__ = [
    "PROFILE_FORMAT",
    "Vault",
    "create_vault",
    "needs_passphrase",
    "open_vault",
    "profile_exists",
]

PROFILE_FORMAT = 1
"""Version of the profile directory layout written by this code."""

_PROFILE_FILE = "profile.json"
_KEY_FILE = "key"
_STORE_FILE = "store.db"
_STORE_FILES = (_STORE_FILE, _STORE_FILE + "-wal", _STORE_FILE + "-shm")
_APPLICATION_ID = int.from_bytes(b"obrl", "big")
"""Written into the store's header: marks it as obrolan's and makes page 1 exist
from the start, so that an empty file can never be "opened" with any key."""


class _PassphraseProfile(msgspec.Struct, frozen=True, tag_field="key", tag="passphrase"):
    format: int
    kdf: Argon2Params


class _KeyfileProfile(msgspec.Struct, frozen=True, tag_field="key", tag="keyfile"):
    format: int


_Profile = _PassphraseProfile | _KeyfileProfile


class Vault:
    """An open profile store: the SQLCipher connection and the key for pickles."""

    __slots__ = ("connection", "path", "pickle_key")

    connection: dbapi2.Connection
    """Autocommit (``isolation_level=None``): group writes with :meth:`transaction`."""
    path: Path
    """The profile directory."""
    pickle_key: bytes
    """32 bytes to encrypt Olm pickles with (``subkey(store_key, "pickle")``)."""

    def __init__(self, path: Path, connection: dbapi2.Connection, pickle_key: bytes) -> None:
        """Wrap an open store (use :func:`create_vault` or :func:`open_vault`)."""
        self.path = path
        self.connection = connection
        self.pickle_key = pickle_key

    @property
    def database_path(self) -> Path:
        """The SQLCipher database file."""
        return self.path / _STORE_FILE

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dbapi2.Connection]:
        """One atomic, durable unit of work: BEGIN IMMEDIATE, then COMMIT or ROLLBACK.

        The body's exception rolls everything back and propagates unchanged.

        Raises:
            InvalidState: a transaction is already open on this connection.
            StorageError: the store is locked by another process, or the commit failed.
        """
        if self.connection.in_transaction:
            raise InvalidState("a transaction is already open on this vault")
        try:
            self.connection.execute("BEGIN IMMEDIATE")
        except dbapi2.Error as exc:
            raise StorageError(f"cannot start a transaction on the store: {exc}") from None
        try:
            yield self.connection
        except BaseException:
            # SQLite rolls some failures (e.g. a full disk) back by itself.
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")
            raise
        try:
            self.connection.execute("COMMIT")
        except dbapi2.Error as exc:
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")
            raise StorageError(f"cannot commit to the store: {exc}") from None

    def close(self) -> None:
        """Close the database (safe to call twice)."""
        self.connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def profile_exists(profile_dir: Path) -> bool:
    """True if ``profile_dir`` holds a complete profile."""
    return (profile_dir / _PROFILE_FILE).is_file()


def needs_passphrase(profile_dir: Path) -> bool:
    """True if the profile's store key comes from a passphrase (not a key file).

    Raises:
        ProfileError: no profile there, or a damaged one.
    """
    return isinstance(_read_profile(profile_dir), _PassphraseProfile)


def create_vault(profile_dir: Path, passphrase: str | None) -> Vault:
    """Create a profile with an empty store and open it.

    Args:
        profile_dir: the directory to create with mode 0700; an existing one (without
            profile files) is set to 0700.
        passphrase: protects the store via Argon2id; ``None`` keeps a random key in
            ``profile_dir/key`` (mode 0600) instead.

    Raises:
        ProfileError: a profile, or files of an interrupted creation, already exist there.
        ConfigError: the passphrase is empty.
        StorageError: the files cannot be written.
    """
    if profile_exists(profile_dir):
        raise ProfileError(f"a profile already exists at {profile_dir}")
    leftovers = [n for n in (_KEY_FILE, *_STORE_FILES) if (profile_dir / n).exists()]
    if leftovers:
        raise ProfileError(
            f"{profile_dir} holds {', '.join(leftovers)} but no {_PROFILE_FILE} "
            f"(an interrupted registration?); remove them or choose another profile directory"
        )
    if passphrase == "":
        raise ConfigError("the passphrase is empty; choose one, or create the profile without one")
    created: list[Path] = []
    connection: dbapi2.Connection | None = None
    try:
        profile_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        profile_dir.chmod(0o700)
        profile: _Profile
        if passphrase is None:
            store_key = random_key()
            _write_new_file(profile_dir / _KEY_FILE, store_key, created)
            profile = _KeyfileProfile(format=PROFILE_FORMAT)
        else:
            kdf = Argon2Params.new()
            store_key = derive_key(passphrase, kdf)
            profile = _PassphraseProfile(format=PROFILE_FORMAT, kdf=kdf)
        # Create the file ourselves so it is 0600 from the first byte (WAL files copy it).
        _write_new_file(profile_dir / _STORE_FILE, b"", created)
        created.extend(profile_dir / name for name in _STORE_FILES[1:])
        connection = _connect(profile_dir / _STORE_FILE, store_key, WrongPassphrase())
        connection.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
        # profile.json last and atomically: its presence means the profile is complete.
        _write_profile(profile_dir, profile)
    except BaseException as exc:
        if connection is not None:
            connection.close()
        for path in created:
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot create a profile at {profile_dir}: {exc}") from None
        raise
    return Vault(profile_dir, connection, subkey(store_key, "pickle"))


def open_vault(profile_dir: Path, passphrase: str | None) -> Vault:
    """Open an existing profile's store.

    Args:
        profile_dir: the profile directory.
        passphrase: the store's passphrase; ignored for a keyfile profile.

    Raises:
        ProfileError: no profile there, or one with missing or damaged files.
        ConfigError: the profile needs a passphrase and none was given, or the key
            file is readable by other users.
        WrongPassphrase: the passphrase does not open the store.
        StorageError: the store cannot be read.
    """
    profile = _read_profile(profile_dir)
    store_path = profile_dir / _STORE_FILE
    if not store_path.is_file():
        raise ProfileError(f"the profile at {profile_dir} has no {_STORE_FILE}")
    wrong_key: StorageError
    if isinstance(profile, _PassphraseProfile):
        if passphrase is None:
            raise ConfigError(
                f"the profile at {profile_dir} is protected by a passphrase: "
                f"set OBROLAN_PASSPHRASE or run interactively to be asked for it"
            )
        try:
            store_key = derive_key(passphrase, profile.kdf)
        except CryptoError as exc:
            raise ProfileError(f"{profile_dir / _PROFILE_FILE} is damaged: {exc}") from None
        wrong_key = WrongPassphrase()
    else:
        key_path = profile_dir / _KEY_FILE
        store_key = _read_key_file(key_path)
        wrong_key = StorageError(
            f"{store_path} does not open with the key in {key_path}: one of them is damaged"
        )
    connection = _connect(store_path, store_key, wrong_key)
    (application_id,) = connection.execute("PRAGMA application_id").fetchone()
    if application_id != _APPLICATION_ID:
        connection.close()
        raise ProfileError(f"{store_path} is not an obrolan store")
    return Vault(profile_dir, connection, subkey(store_key, "pickle"))


def _connect(path: Path, key: bytes, wrong_key: StorageError) -> dbapi2.Connection:
    """Open and key the database, check the key, and set the connection's pragmas.

    Raises:
        StorageError: ``wrong_key`` if SQLCipher cannot decrypt page 1, or another
            StorageError if the file cannot be read.
    """
    try:
        connection = dbapi2.connect(str(path), isolation_level=None, check_same_thread=False)
    except dbapi2.Error as exc:
        raise StorageError(f"cannot open {path}: {exc}") from None
    try:
        # A wrong key is reported by the exception below; SQLCipher's own stderr log
        # of the failed HMAC check would only alarm the user.
        connection.execute("PRAGMA cipher_log_level = NONE")
        connection.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        connection.execute("PRAGMA cipher_compatibility = 4")
        # The key is only checked when the first page is read.
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        connection.execute("PRAGMA journal_mode = WAL").fetchone()
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA secure_delete = ON")
    except dbapi2.Error as exc:
        connection.close()
        if getattr(exc, "sqlite_errorname", None) == "SQLITE_NOTADB":
            raise wrong_key from None
        raise StorageError(f"cannot open {path}: {exc}") from None
    return connection


def _write_new_file(path: Path, data: bytes, created: list[Path]) -> None:
    """Create ``path`` with mode 0600 (failing if it exists), write ``data``, fsync."""
    with create_private(path) as file:
        created.append(path)
        file.write(data)
        flush_to_disk(file)


def _write_profile(profile_dir: Path, profile: _Profile) -> None:
    """Write profile.json atomically and durably (temporary file, fsync, rename)."""
    write_atomically(profile_dir / _PROFILE_FILE, msgspec.json.format(msgspec.json.encode(profile)))


def _read_profile(profile_dir: Path) -> _Profile:
    """Parse profile.json.

    Raises:
        ProfileError: it is missing, damaged, or of a format this code does not know.
    """
    path = profile_dir / _PROFILE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ProfileError(f"no profile at {profile_dir}; run `obrolan register` first") from None
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc}") from None
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise ProfileError(f"{path} is damaged: not valid JSON") from None
    version = raw.get("format") if isinstance(raw, dict) else None
    if version != PROFILE_FORMAT:
        raise ProfileError(
            f"{path} has format {version!r}; this obrolan reads format {PROFILE_FORMAT} "
            f"(a newer obrolan may have written it)"
        )
    try:
        profile: _Profile = msgspec.json.decode(data, type=_Profile)
    except msgspec.ValidationError as exc:
        raise ProfileError(f"{path} is damaged: {exc}") from None
    return profile


def _read_key_file(path: Path) -> bytes:
    """Read a keyfile profile's store key.

    Raises:
        ProfileError: the file is missing or not 32 bytes.
        ConfigError: other users may read it.
    """
    try:
        mode = path.stat().st_mode
        key = path.read_bytes()
    except FileNotFoundError:
        raise ProfileError(f"the profile's key file {path} is missing") from None
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc}") from None
    if os.name == "posix" and mode & 0o077:
        raise ConfigError(
            f"{path} can be read by other users (mode {mode & 0o777:o}); run `chmod 600 {path}`"
        )
    if len(key) != KEY_BYTES:
        raise ProfileError(f"{path} is damaged: {len(key)} bytes, expected {KEY_BYTES}")
    return key
