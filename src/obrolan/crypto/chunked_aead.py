"""A stream sealed in chunks with AES-256-GCM, in an order that cannot be changed.

Chunk ``i`` (from 0) is sealed under one key with nonce ``i`` (12 bytes big-endian)
and associated data ``context || i (8 bytes big-endian) || final`` (one byte: 1 for
the last chunk, 0 for the others). A chunk that is altered, moved, dropped, taken
from another stream (another key or context), or a stream cut short at a chunk
boundary therefore fails to open. Attachments (docs/protocol.md §16.11, context
``obrolan-attachment-v1``) and archives (§21.2, context the SHA-256 of the file's
header) are both this construction; only their framing differs::

    >>> key = bytes(32)
    >>> sealer = ChunkSealer(key, b"example")
    >>> sealed = [sealer.seal(b"one", final=False), sealer.seal(b"two", final=True)]
    >>> [len(chunk) for chunk in sealed]                 # the plaintext plus a 16-byte tag
    [19, 19]
    >>> opener = ChunkOpener(key, b"example")
    >>> opener.open(sealed[0], final=False), opener.open(sealed[1], final=True)
    (b'one', b'two')
    >>> opener.finished
    True

Pure: no files, no clock. Sealing is deterministic for one key and context, which
is what lets an interrupted upload resume by sealing the file again.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from obrolan.errors import DecryptionError, InvalidState

__all__ = ["MAX_CHUNKS", "TAG_BYTES", "ChunkOpener", "ChunkSealer", "associated_data", "nonce"]

TAG_BYTES = 16
"""AES-GCM's tag: each sealed chunk is this much longer than its plaintext."""
MAX_CHUNKS = 1 << 64
"""The index travels as 8 bytes of associated data: no stream has more chunks."""


def nonce(index: int) -> bytes:
    """Chunk ``index``'s nonce: the index as 12 bytes big-endian (unique under one key)."""
    return index.to_bytes(12, "big")


def associated_data(context: bytes, index: int, final: bool) -> bytes:
    """What chunk ``index`` is bound to: the stream's context, its place, and whether it ends it."""
    return context + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


class ChunkSealer:
    """Seals a stream's chunks one after the other; the last one with ``final=True``.

    Args:
        key: 32 bytes, used for this one stream (nonces repeat across streams).
        context: names the stream, so that chunks of another one do not open here.
    """

    def __init__(self, key: bytes, context: bytes) -> None:
        self._aead = AESGCM(key)
        self._context = context
        self.index = 0
        """How many chunks have been sealed: the next chunk's index."""
        self.finished = False
        """True once the final chunk was sealed."""

    def seal(self, plaintext: bytes, *, final: bool) -> bytes:
        """The next chunk, sealed: ``plaintext`` and a 16-byte tag.

        Raises:
            InvalidState: the final chunk was sealed already.
        """
        if self.finished:
            raise InvalidState("this stream's final chunk is sealed: nothing may follow it")
        if self.index == MAX_CHUNKS:
            raise InvalidState("a chunked stream holds at most 2**64 chunks")
        sealed = self._aead.encrypt(
            nonce(self.index), plaintext, associated_data(self._context, self.index, final)
        )
        self.index += 1
        self.finished = final
        return sealed


class ChunkOpener:
    """Opens a stream's chunks in order, checking each one's place and finality.

    The caller says whether it takes a chunk to be the final one (from the stream's
    length, or its framing); a stream is whole only once :attr:`finished` is True.

    Args:
        key: the stream's key.
        context: the context it was sealed with.
    """

    def __init__(self, key: bytes, context: bytes) -> None:
        self._aead = AESGCM(key)
        self._context = context
        self.index = 0
        """How many chunks have been opened: the next chunk's index."""
        self.finished = False
        """True once the final chunk opened: the stream is whole."""

    def open(self, sealed: bytes, *, final: bool) -> bytes:
        """The plaintext of the next chunk.

        Raises:
            DecryptionError: the chunk does not authenticate as chunk :attr:`index` of
                this stream with this finality (altered, moved, dropped, cut, or from
                another stream), or it follows the final chunk.
        """
        if self.finished:
            raise DecryptionError("a chunk follows the stream's final chunk")
        try:
            plaintext = self._aead.decrypt(
                nonce(self.index), sealed, associated_data(self._context, self.index, final)
            )
        except InvalidTag:
            raise DecryptionError(f"chunk {self.index} does not authenticate") from None
        self.index += 1
        self.finished = final
        return plaintext
