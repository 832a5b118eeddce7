"""Server logging: to stderr and ``DATA/server.log``, with IP addresses blanked out.

The server's own code never logs addresses, and per-message lines are DEBUG only.
Libraries may still put a peer address into a message or a traceback (aiohttp
does in "Error handling request from ..."), so every line is scrubbed on its way
out as well.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from types import TracebackType

__all__ = ["RedactingFormatter", "configure_logging", "redact_addresses"]

_IPV4 = r"(?:\d{1,3}\.){3}\d{1,3}"
_ADDRESS = re.compile(
    rf"(?<![\w:.])(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}(?:{_IPV4}|[0-9A-Fa-f]{{1,4}})?(?![\w:])"  # IPv6
    rf"|(?<![\d.]){_IPV4}(?!\.?\d)"  # IPv4
)
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def redact_addresses(text: str) -> str:
    """Replace every IPv4 or IPv6 address in ``text`` with ``[address]``."""
    return _ADDRESS.sub("[address]", text)


_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class RedactingFormatter(logging.Formatter):
    """A formatter that blanks out IP addresses in messages, tracebacks and stacks."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = redact_addresses(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: _ExcInfo) -> str:
        return redact_addresses(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return redact_addresses(super().formatStack(stack_info))


def configure_logging(log_file: Path, level: str) -> None:
    """Send the process's log records to stderr and ``log_file`` at ``level`` and above."""
    formatter = RedactingFormatter(_FORMAT)
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stderr),
        logging.FileHandler(log_file, encoding="utf-8"),
    ]
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())
