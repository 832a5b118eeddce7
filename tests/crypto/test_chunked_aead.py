"""The chunked AEAD of attachments and archives: known answers, and every misuse of a stream.

The known answers were computed by the two copies of the construction that this
module replaced (client/attachments.py and client/archive.py before the change):
they fail if the nonce, the associated data or the final flag ever change.
"""

from __future__ import annotations

import doctest
import hashlib

import pytest

from obrolan.crypto import chunked_aead
from obrolan.crypto.chunked_aead import TAG_BYTES, ChunkOpener, ChunkSealer
from obrolan.errors import DecryptionError, InvalidState

KEY = bytes(range(32))
CONTEXT = b"test-stream"
ATTACHMENT_CONTEXT = b"obrolan-attachment-v1"


def _sealed(chunks: list[bytes], key: bytes = KEY, context: bytes = CONTEXT) -> list[bytes]:
    sealer = ChunkSealer(key, context)
    return [sealer.seal(c, final=i == len(chunks) - 1) for i, c in enumerate(chunks)]


def _open_all(sealed: list[bytes], key: bytes = KEY, context: bytes = CONTEXT) -> list[bytes]:
    opener = ChunkOpener(key, context)
    plain = [opener.open(c, final=i == len(sealed) - 1) for i, c in enumerate(sealed)]
    assert opener.finished
    return plain


def test_chunked_aead_matches_the_attachment_blob_of_before() -> None:
    """A 2,500-byte file in 1,000-byte chunks, and an empty file, seal as they always did."""
    plain = bytes(i % 251 for i in range(2500))
    blob = b"".join(
        _sealed([plain[:1000], plain[1000:2000], plain[2000:]], context=ATTACHMENT_CONTEXT)
    )
    assert len(blob) == 2500 + 3 * TAG_BYTES
    assert hashlib.sha256(blob).hexdigest() == (
        "a32cdeec050143f724d4ee61547ee4af7bec617b6e895d8ced2aaefde666bf8a"
    )
    assert _sealed([b""], context=ATTACHMENT_CONTEXT) == [
        bytes.fromhex("afd34775b7b1748a79b6e840df0438da")
    ]


def test_chunked_aead_matches_the_archive_chunks_of_before() -> None:
    """Two chunks under an archive's key and header digest, the second final, as before."""
    key = bytes(range(32, 64))
    context = hashlib.sha256(b"header").digest()
    assert _sealed([b"first", b"second"], key, context) == [
        bytes.fromhex("8547932ae06aa972713cf8f894d3a65574c7974b87"),
        bytes.fromhex("788e0bd017bebdd7bbd78afae93ca596f09c7a1e23bf"),
    ]


def test_chunked_aead_round_trips_and_counts_chunks() -> None:
    """What is sealed opens in order; both sides count the chunks and see the end."""
    chunks = [b"one", b"", b"three" * 1000]
    sealer = ChunkSealer(KEY, CONTEXT)
    sealed = [sealer.seal(c, final=i == 2) for i, c in enumerate(chunks)]
    assert (sealer.index, sealer.finished) == (3, True)
    assert [len(s) for s in sealed] == [len(c) + TAG_BYTES for c in chunks]
    assert _open_all(sealed) == chunks


def test_chunked_aead_sealing_is_deterministic_for_one_key() -> None:
    """The same key, context and chunks seal to the same bytes (an upload resumes so)."""
    assert _sealed([b"a", b"b"]) == _sealed([b"a", b"b"])


@pytest.mark.parametrize("position", [0, 5, -1])
def test_chunked_aead_detects_a_flipped_bit(position: int) -> None:
    """A bit flipped anywhere in a chunk (ciphertext or tag) makes it fail."""
    sealed = _sealed([b"hello", b"world"])
    damaged = bytearray(sealed[0])
    damaged[position] ^= 0x01
    with pytest.raises(DecryptionError, match="chunk 0 does not authenticate"):
        ChunkOpener(KEY, CONTEXT).open(bytes(damaged), final=False)


def test_chunked_aead_detects_reordered_and_dropped_chunks() -> None:
    """Chunks swapped, or one dropped from the middle, fail at the first wrong place."""
    first, second, third = _sealed([b"1", b"2", b"3"])
    opener = ChunkOpener(KEY, CONTEXT)
    with pytest.raises(DecryptionError, match="chunk 0"):
        opener.open(second, final=False)
    opener = ChunkOpener(KEY, CONTEXT)
    opener.open(first, final=False)
    with pytest.raises(DecryptionError, match="chunk 1"):
        opener.open(third, final=True)


def test_chunked_aead_binds_the_final_flag() -> None:
    """A stream cut after a whole chunk cannot pass that chunk off as its end, nor the reverse."""
    first, last = _sealed([b"1", b"2"])
    opener = ChunkOpener(KEY, CONTEXT)
    with pytest.raises(DecryptionError):
        opener.open(first, final=True)  # truncation: the non-final chunk claimed as the last
    opener = ChunkOpener(KEY, CONTEXT)
    opener.open(first, final=False)
    assert not opener.finished  # what a reader sees when the stream ends here
    with pytest.raises(DecryptionError):
        opener.open(last, final=False)  # the final chunk taken for a middle one


def test_chunked_aead_detects_a_cut_chunk() -> None:
    """A chunk missing its last byte, or shorter than a tag, does not open."""
    (only,) = _sealed([b"hello"])
    for cut in (only[:-1], only[:3], b""):
        with pytest.raises(DecryptionError):
            ChunkOpener(KEY, CONTEXT).open(cut, final=True)


def test_chunked_aead_refuses_another_stream_or_key() -> None:
    """Chunks of another context (another archive) or another key do not open."""
    sealed = _sealed([b"hello"], context=b"other-stream")
    with pytest.raises(DecryptionError):
        _open_all(sealed)
    with pytest.raises(DecryptionError):
        _open_all(_sealed([b"hello"]), key=bytes(32))


def test_chunked_aead_has_nothing_after_the_final_chunk() -> None:
    """Sealing past the end is a bug (InvalidState); data past the end is damage."""
    sealer = ChunkSealer(KEY, CONTEXT)
    last = sealer.seal(b"end", final=True)
    with pytest.raises(InvalidState):
        sealer.seal(b"more", final=True)
    opener = ChunkOpener(KEY, CONTEXT)
    opener.open(last, final=True)
    with pytest.raises(DecryptionError, match="follows the stream's final chunk"):
        opener.open(last, final=True)


def test_chunked_aead_docstring_example_runs() -> None:
    """The module docstring's round trip passes as a doctest."""
    result = doctest.testmod(chunked_aead, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
