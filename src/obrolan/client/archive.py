"""Encrypted archives of a profile's history: export to one file, import into a profile.

An archive holds history only (contacts with their pinned identity keys,
conversation settings, messages, edits, reactions and the attachment files of
the archived messages), never the device's identity, sessions or outbox:
importing an archive can never clone a device. Neither export nor import talks
to the server::

    summary = export_history(vault, Path("history.obrolan"), "long passphrase", None)
    imported = import_history(other_vault, Path("history.obrolan"), "long passphrase")

This module is the public face of three small ones:

- :mod:`~obrolan.client.archive_format` — the file (docs/protocol.md §21.2): its
  header, its chunks (one :mod:`~obrolan.crypto.chunked_aead` stream) and records;
- :mod:`~obrolan.client.archive_export` — which rows and files go in, from one
  read snapshot;
- :mod:`~obrolan.client.archive_import` — how they come back, all or nothing.
"""

from __future__ import annotations

from obrolan.client.archive_export import ExportSummary, export_history
from obrolan.client.archive_format import FORMAT_VERSION, MAGIC, Progress
from obrolan.client.archive_import import NOT_SENT_BEFORE_EXPORT, ImportSummary, import_history

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "NOT_SENT_BEFORE_EXPORT",
    "ExportSummary",
    "ImportSummary",
    "Progress",
    "export_history",
    "import_history",
]
