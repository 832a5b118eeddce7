"""Where the server keeps accounts, keys and queued envelopes: the ``Storage`` ABC.

Backends, one file each (only that file imports its driver): :mod:`.sqlite`.
"""

from obrolan.server.storage.base import NOT_HELD, PendingEnvelope, Storage, StoredEnvelopes

__all__ = ["NOT_HELD", "PendingEnvelope", "Storage", "StoredEnvelopes"]
