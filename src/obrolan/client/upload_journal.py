"""Unfinished uploads, remembered so that an interrupted one resumes instead of restarting.

Sealing is deterministic for one key (:mod:`obrolan.client.attachment_sealing`), so
an upload resumes by sealing the file again under the same key and sending only the
bytes past the server's offset: the key and blob id wait here meanwhile, under a
fingerprint of the file and its recipients.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import msgspec

from obrolan.client.durable_files import write_atomically

__all__ = ["FileUploadJournal", "PendingUpload", "UploadJournal", "upload_fingerprint"]


class PendingUpload(msgspec.Struct, frozen=True):
    """What an interrupted upload needs to resume: its blob id and key."""

    blob_id: str
    key: bytes
    chunk_size: int


class UploadJournal(Protocol):
    """Where unfinished uploads wait, by a fingerprint of the file and its recipients.

    A record holds the attachment's key: keep it as safe as the file it encrypts.
    """

    def load(self, fingerprint: str) -> PendingUpload | None:
        """The unfinished upload of this fingerprint, if any."""

    def save(self, fingerprint: str, pending: PendingUpload) -> None:
        """Remember an upload durably before its first byte is sent."""

    def forget(self, fingerprint: str) -> None:
        """Drop a finished upload's record (a no-op if there is none)."""


class FileUploadJournal:
    """An :class:`UploadJournal` of small 0600 JSON files in one folder (``PROFILE/uploads``).

    A record lives only while its upload is unfinished. It holds the key of a file that
    lies unencrypted on the same disk, so it exposes nothing a reader of the disk could
    not read already.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, fingerprint: str) -> Path:
        return self.folder / f"{fingerprint}.json"

    def load(self, fingerprint: str) -> PendingUpload | None:
        try:
            return msgspec.json.decode(self._path(fingerprint).read_bytes(), type=PendingUpload)
        except FileNotFoundError:
            return None
        except msgspec.DecodeError:
            return None  # a damaged record: the upload starts afresh

    def save(self, fingerprint: str, pending: PendingUpload) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(self._path(fingerprint), msgspec.json.encode(pending))

    def forget(self, fingerprint: str) -> None:
        self._path(fingerprint).unlink(missing_ok=True)


def upload_fingerprint(
    path: Path, size: int, mtime_ns: int, recipients: list[tuple[str, str]]
) -> str:
    """Names one upload: the same file, unchanged, to the same devices."""
    parts = [str(path.resolve()), str(size), str(mtime_ns), *(f"{u}/{d}" for u, d in recipients)]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]
