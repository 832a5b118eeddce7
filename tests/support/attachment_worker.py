"""A separate process that sends or fetches one attachment, for crash and memory tests.

Run from the repository root as ``python -m tests.support.attachment_worker VERB …``;
the profiles were registered with no passphrase. Verbs:

* ``upload PROFILE FILE USER DEVICE OUT`` — upload FILE for USER/DEVICE (resuming an
  unfinished upload from ``PROFILE/uploads``), write the Attachment's JSON to OUT.
* ``download PROFILE ATTACHMENT`` — fetch the attachment (JSON file) into
  ``PROFILE/attachments``.
* ``round-trip SENDER RECEIVER FILE OUT`` — upload from SENDER, download and decrypt
  on RECEIVER into OUT, then print ``{"max_rss_kib": N}``: this process's peak memory.

Failpoints (``OBROLAN_FAILPOINTS``) kill the process mid-transfer.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from pathlib import Path

import msgspec

from obrolan.client import Client
from obrolan.client.attachments import BlobClient, FileUploadJournal, decrypt_attachment
from obrolan.protocol.content import Attachment, encode


def blob_client(client: Client) -> BlobClient:
    # Test-only: the device's signing function is not public API yet.
    return BlobClient(client.address, client.username, client.device_id, client.sign)


async def upload(profile: Path, file: Path, user: str, device: str) -> Attachment:
    client = await Client.load(profile, None)
    try:
        async with blob_client(client) as blobs:
            journal = FileUploadJournal(profile / "uploads")
            return await blobs.upload_file(file, [(user, device)], journal)
    finally:
        await client.close()


async def download(profile: Path, attachment: Attachment) -> Path:
    client = await Client.load(profile, None)
    try:
        async with blob_client(client) as blobs:
            return await blobs.download(attachment, profile / "attachments")
    finally:
        await client.close()


async def main(verb: str, args: list[str]) -> None:
    if verb == "upload":
        profile, file, user, device, out = args
        attachment = await upload(Path(profile), Path(file), user, device)
        Path(out).write_bytes(encode(attachment))
    elif verb == "download":
        profile, attachment_file = args
        attachment = msgspec.json.decode(Path(attachment_file).read_bytes(), type=Attachment)
        await download(Path(profile), attachment)
    elif verb == "round-trip":
        sender, receiver, original, copy = map(Path, args)
        receiver_client = await Client.load(receiver, None)
        username, device_id = receiver_client.username, receiver_client.device_id
        await receiver_client.close()
        attachment = await upload(sender, original, username, device_id)
        stored = await download(receiver, attachment)
        decrypt_attachment(stored, attachment, copy)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"max_rss_kib": peak}))
    else:
        raise SystemExit(f"unknown verb {verb!r}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
