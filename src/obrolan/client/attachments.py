"""Encrypted attachments: seal a file for the server's blob store, upload it, fetch and open it.

The server only ever holds ciphertext; the key and the digest travel inside the
end-to-end encrypted message, as a :class:`~obrolan.protocol.content.Attachment`
(docs/protocol.md, "Blob store" and §15.7)::

    journal = FileUploadJournal(profile / "uploads")
    async with BlobClient(address, "alice", "laptop", sign) as blobs:
        attachment = await blobs.upload_file(Path("photo.jpg"), [("bob", "phone")], journal)
    # ... alice sends `attachment` inside a text message; bob's device then runs:
    async with BlobClient(address, "bob", "phone", sign) as blobs:
        stored = await blobs.download(attachment, profile / "attachments")
    decrypt_attachment(stored, attachment, Path("photo.jpg"))

This module is the public face of four small ones, each one concept:

- :mod:`~obrolan.client.attachment_sealing` — the blob format (§16.11): a file
  sealed in chunks of one :mod:`~obrolan.crypto.chunked_aead` stream, and opened;
- :mod:`~obrolan.client.blob_client` — the signed HTTP requests that move blobs,
  resuming interrupted uploads and downloads;
- :mod:`~obrolan.client.upload_journal` — where an unfinished upload's key waits;
- :mod:`~obrolan.client.thumbnails` — a file's media type and an image's preview.
"""

from __future__ import annotations

from obrolan.client.attachment_sealing import (
    CHUNK_BYTES,
    MAX_CHUNK_BYTES,
    TAG_BYTES,
    blob_size,
    decrypt_attachment,
)
from obrolan.client.blob_client import BlobClient, Progress, Signer
from obrolan.client.thumbnails import THUMBNAIL_EDGE, THUMBNAIL_MAX_BYTES, describe_file
from obrolan.client.upload_journal import FileUploadJournal, PendingUpload, UploadJournal

__all__ = [
    "CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "TAG_BYTES",
    "THUMBNAIL_EDGE",
    "THUMBNAIL_MAX_BYTES",
    "BlobClient",
    "FileUploadJournal",
    "PendingUpload",
    "Progress",
    "Signer",
    "UploadJournal",
    "blob_size",
    "decrypt_attachment",
    "describe_file",
]
