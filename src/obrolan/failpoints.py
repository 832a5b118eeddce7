"""Named crash points for tests of crash safety.

A test starts a real obrolan process with ``OBROLAN_FAILPOINTS=name[,name…]``;
when the process reaches :func:`failpoint` with one of those names it dies at
once with SIGKILL, exactly like ``kill -9`` at that instant. Unset (always, in
normal use), a failpoint is one lookup in an empty set.
"""

from __future__ import annotations

import os
import signal

__all__ = ["failpoint"]

_ACTIVE = frozenset(filter(None, os.environ.get("OBROLAN_FAILPOINTS", "").split(",")))


def failpoint(name: str) -> None:
    """Die with SIGKILL here if the failpoint ``name`` is switched on."""
    if name in _ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)
