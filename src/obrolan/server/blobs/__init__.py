"""Encrypted attachments on the server: the ``BlobStore`` ABC, its backends, its HTTP API.

Backends, one file each: :mod:`.filesystem`. :mod:`.http` serves ``/v1/blobs``.
"""

from obrolan.server.blobs.base import BlobStore, NewBlob, OpenBlob

__all__ = ["BlobStore", "NewBlob", "OpenBlob"]
