"""Wake-ups between connections (and, later, nodes): the ``Router`` ABC.

Backends, one file each: :mod:`.memory` (one process).
"""

from obrolan.server.routing.base import Router, WakeUp

__all__ = ["Router", "WakeUp"]
