"""History that moves from one device of an account to another, never in the clear.

The sending device exports its history as an archive (``client.archive``: its
own format, sealed with a fresh random passphrase), uploads that file as an
attachment blob addressed to the receiving device only (chunked AES-256-GCM
with a fresh key, resumable), and sends the blob's key, digest and the
archive's passphrase inside an Olm message to that device (``history``).
The receiving device downloads (resumable), checks the digest, opens the
archive and imports it all or nothing; then the server deletes the blob.

Both halves survive an interruption: the exported archive and its passphrase
stay in the sender's profile until the ``history`` message is queued (so a
retry resumes the same upload), and the receiver keeps the ``history``
message until the import committed (so a retry resumes the same download).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from obrolan.client.archive import ImportSummary, export_history, import_history
from obrolan.client.attachments import (
    BlobClient,
    FileUploadJournal,
    Progress,
    decrypt_attachment,
)
from obrolan.client.ids import new_id
from obrolan.client.store import Store, now_ms
from obrolan.client.vault import Vault
from obrolan.errors import DecryptionError, ObrolanError, StorageError
from obrolan.failpoints import failpoint
from obrolan.protocol import content

__all__ = ["HistoryTransferFailed", "HistoryTransfers"]

INCOMING = "incoming_history"
"""Meta key: the ``history`` message received and not yet imported."""
_OUTGOING = "outgoing_history:"
"""Meta key prefix, per receiving device: the exported archive not yet announced."""


class HistoryTransferFailed(ObrolanError):
    """The history that arrived did not authenticate: nothing of it was imported."""


class HistoryTransfers:
    """Sends and receives this profile's history (the client owns one)."""

    def __init__(
        self,
        vault: Vault,
        store: Store,
        folder: Path,
        blobs: Callable[[], BlobClient],
        announce: Callable[[str, content.HistoryTransfer], Coroutine[Any, Any, None]],
    ) -> None:
        self._vault = vault
        self._store = store
        self._folder = folder
        self._blobs = blobs
        self._announce = announce
        """Queues the ``history`` message for one of our devices."""

    async def send(self, username: str, device_id: str, progress: Progress | None) -> int:
        """Export, upload and announce our history to our device ``device_id``.

        Returns the number of messages sent. Run it again after an interruption: the
        same archive's upload resumes.
        """
        self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        archive, passphrase, messages = await self._exported(device_id)
        async with self._blobs() as blobs:
            attachment = await blobs.upload_file(
                archive,
                [(username, device_id)],
                FileUploadJournal(self._folder / "uploads"),
                progress,
            )
        failpoint("history.after_upload")
        await self._announce(
            device_id,
            content.HistoryTransfer(
                message_id=new_id(),
                sent_at_ms=now_ms(),
                archive=attachment,
                archive_passphrase=passphrase,
                messages=messages,
            ),
        )
        with self._store.transaction():
            self._store.delete_meta(_OUTGOING + device_id)
        archive.unlink(missing_ok=True)
        return messages

    async def _exported(self, device_id: str) -> tuple[Path, str, int]:
        """The archive for ``device_id``: the one exported before, or a new one."""
        saved = self._store.get_meta(_OUTGOING + device_id)
        if saved is not None:
            record = json.loads(saved)
            path = self._folder / record["file"]
            if path.exists():
                return path, record["passphrase"], record["messages"]
        passphrase = secrets.token_urlsafe(32)
        path = self._folder / f"history-{device_id}-{new_id()[:8]}.obrolan"
        summary = await asyncio.to_thread(export_history, self._vault, path, passphrase, None)
        with self._store.transaction():
            self._store.set_meta(
                _OUTGOING + device_id,
                json.dumps(
                    {"file": path.name, "passphrase": passphrase, "messages": summary.messages}
                ),
            )
        return path, passphrase, summary.messages

    def pending(self) -> content.HistoryTransfer | None:
        """The history message that arrived and is not imported yet."""
        saved = self._store.get_meta(INCOMING)
        if saved is None:
            return None
        return msgspec.json.decode(saved, type=content.HistoryTransfer)

    async def receive(self, progress: Progress | None) -> ImportSummary | None:
        """Download, check and import the pending history (None if nothing is pending).

        Raises:
            HistoryTransferFailed: the blob or the archive did not authenticate; nothing
                was imported, and the transfer is dropped (send it again).
            ServerUnreachable: the download can resume with another call.
        """
        transfer = self.pending()
        if transfer is None:
            return None
        incoming = self._folder / "incoming"
        try:
            async with self._blobs() as blobs:
                stored = await blobs.download(transfer.archive, incoming, progress)
            archive = incoming / f"{transfer.archive.blob_id}.obrolan"
            await asyncio.to_thread(decrypt_attachment, stored, transfer.archive, archive)
            summary = import_history(self._vault, archive, transfer.archive_passphrase)
        except (DecryptionError, StorageError) as exc:
            self._forget(transfer)
            with contextlib.suppress(ObrolanError):  # the server may drop the bad blob now
                async with self._blobs() as blobs:
                    await blobs.mark_fetched(transfer.archive.blob_id)
            raise HistoryTransferFailed(
                f"the history from your other device did not authenticate ({exc}); nothing "
                f"was imported: send it again with `obrolan devices send-history`"
            ) from None
        self._forget(transfer)
        return summary

    def _forget(self, transfer: content.HistoryTransfer) -> None:
        with self._store.transaction():
            self._store.delete_meta(INCOMING)
        incoming = self._folder / "incoming"
        blob_id = transfer.archive.blob_id
        for leftover in (blob_id, f"{blob_id}.part", f"{blob_id}.obrolan"):
            with contextlib.suppress(FileNotFoundError):
                (incoming / leftover).unlink()
