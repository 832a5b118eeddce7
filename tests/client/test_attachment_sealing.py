"""The attachment blob (docs/protocol.md §16.11) made and opened from real files, no server."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from obrolan.client.attachment_sealing import (
    blob_digest,
    blob_size,
    decrypt_attachment,
    sealed_batches,
)
from obrolan.errors import ConfigError, DecryptionError
from obrolan.protocol.content import Attachment

KEY = bytes(range(32))
PLAIN = bytes(i % 251 for i in range(2500))


def _attachment(sha256: bytes, size: int = len(PLAIN), chunk_size: int = 1000) -> Attachment:
    return Attachment(
        blob_id="b1",
        key=KEY,
        sha256=sha256,
        size=size,
        chunk_size=chunk_size,
        name="notes.txt",
        mime="text/plain",
        thumbnail=None,
    )


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, Attachment]:
    source = tmp_path / "notes.txt"
    source.write_bytes(PLAIN)
    sealed = tmp_path / "blob"
    sealed.write_bytes(b"".join(sealed_batches(source, KEY, len(PLAIN), 1000)))
    return sealed, _attachment(hashlib.sha256(sealed.read_bytes()).digest())


def test_attachment_blob_is_the_one_of_before(blob: tuple[Path, Attachment]) -> None:
    """A fixed key and file seal into the blob the code before the chunked-AEAD module made."""
    sealed, attachment = blob
    assert sealed.stat().st_size == blob_size(len(PLAIN), 1000) == 2548
    assert attachment.sha256.hex() == (
        "a32cdeec050143f724d4ee61547ee4af7bec617b6e895d8ced2aaefde666bf8a"
    )
    assert blob_digest(sealed.with_name("notes.txt"), KEY, len(PLAIN), 1000) == attachment.sha256


def test_attachment_blob_opens_into_the_file(blob: tuple[Path, Attachment], tmp_path: Path) -> None:
    """The blob decrypts back to the file; an existing output is kept unless replacing is asked."""
    sealed, attachment = blob
    out = tmp_path / "out.txt"
    decrypt_attachment(sealed, attachment, out)
    assert out.read_bytes() == PLAIN
    with pytest.raises(ConfigError, match="already exists"):
        decrypt_attachment(sealed, attachment, out)
    decrypt_attachment(sealed, attachment, out, overwrite=True)
    assert out.read_bytes() == PLAIN


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: 1000 + 16] + bytes([b[1016] ^ 1]) + b[1017:],  # a flipped bit in chunk 1
        lambda b: b[1016:2032] + b[:1016] + b[2032:],  # two chunks swapped
        lambda b: b[:-1] + b"\x00",  # the final chunk's tag
    ],
)
def test_attachment_blob_altered_saves_nothing(
    blob: tuple[Path, Attachment], tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    """An altered blob of the right length fails verification, and no output appears."""
    sealed, attachment = blob
    sealed.write_bytes(damage(sealed.read_bytes()))
    out = tmp_path / "out.txt"
    with pytest.raises(DecryptionError, match="failed verification"):
        decrypt_attachment(sealed, attachment, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob", "notes.txt"]


def test_attachment_blob_cut_at_a_chunk_boundary_is_refused(
    blob: tuple[Path, Attachment], tmp_path: Path
) -> None:
    """A blob without its last chunk, passed off as a shorter file, fails: the flag is bound."""
    sealed, _ = blob
    sealed.write_bytes(sealed.read_bytes()[: 2 * 1016])
    shorter = _attachment(hashlib.sha256(sealed.read_bytes()).digest(), size=2000)
    with pytest.raises(DecryptionError, match="failed verification"):
        decrypt_attachment(sealed, shorter, tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


def test_attachment_blob_of_an_empty_file_is_one_empty_chunk(tmp_path: Path) -> None:
    """An empty file seals into one tag-only chunk, and opens into an empty file."""
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    sealed = b"".join(sealed_batches(empty, KEY, 0, 1000))
    assert sealed == bytes.fromhex("afd34775b7b1748a79b6e840df0438da")
    (tmp_path / "blob").write_bytes(sealed)
    attachment = _attachment(hashlib.sha256(sealed).digest(), size=0)
    decrypt_attachment(tmp_path / "blob", attachment, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b""


def test_attachment_sealing_notices_a_file_that_changed(tmp_path: Path) -> None:
    """A file that grew since its size was taken is refused rather than sealed short."""
    source = tmp_path / "notes.txt"
    source.write_bytes(PLAIN)
    with pytest.raises(ConfigError, match="changed while it was being sent"):
        b"".join(sealed_batches(source, KEY, len(PLAIN) - 1, 1000))
