"""What a file is: its media type and, for an image, a small JPEG preview for the message.

The only module of the client that imports Pillow: a command that sends no file
does not pay for it.
"""

from __future__ import annotations

import io
import mimetypes
from pathlib import Path

from PIL import Image

__all__ = ["THUMBNAIL_EDGE", "THUMBNAIL_MAX_BYTES", "describe_file"]

THUMBNAIL_EDGE = 128
"""An image's thumbnail fits in a square of this many pixels."""
THUMBNAIL_MAX_BYTES = 8 * 1024
"""Largest thumbnail (JPEG) carried in a message; a larger one is left out."""

_MAX_THUMBNAIL_SOURCE_PIXELS = 24_000_000
"""Largest image (after JPEG's reduced decoding) that gets a thumbnail: ~100 MB decoded."""
_NOT_AN_IMAGE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
"""What Pillow raises for a file it cannot read as an image (or one too large to decode)."""


def describe_file(path: Path) -> tuple[str, bytes | None]:
    """The file's media type, and for an image a JPEG thumbnail (None if it is not one).

    The thumbnail fits in :data:`THUMBNAIL_EDGE` pixels square and
    :data:`THUMBNAIL_MAX_BYTES`; an image whose thumbnail cannot be that small gets none.
    """
    guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        with Image.open(path) as image:
            mime = image.get_format_mimetype() or guessed
            image.draft("RGB", (THUMBNAIL_EDGE * 2, THUMBNAIL_EDGE * 2))  # JPEG: decode small
            if image.width * image.height > _MAX_THUMBNAIL_SOURCE_PIXELS:
                return mime, None  # decoding it would take hundreds of megabytes
            image.thumbnail((THUMBNAIL_EDGE, THUMBNAIL_EDGE))
            preview = image.convert("RGB")
    except _NOT_AN_IMAGE:
        return guessed, None
    for quality in (80, 65, 50, 35, 20):
        jpeg = io.BytesIO()
        preview.save(jpeg, "JPEG", quality=quality, optimize=True)
        if jpeg.tell() <= THUMBNAIL_MAX_BYTES:
            return mime, jpeg.getvalue()
    return mime, None
