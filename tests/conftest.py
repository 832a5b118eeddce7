"""Fixtures shared by every test suite.

``server`` is a real ``obrolan serve`` process on 127.0.0.1 (port 0) with a fresh
data directory; ``server_factory`` starts more, with extra options. Both are
stopped (SIGTERM) after the test. The helpers themselves are in ``tests/support/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``start(*serve_options, env=None, name="server")`` → a started :class:`ServerProcess`."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, name: str = "server") -> ServerProcess:
        server = ServerProcess(tmp_path / name, *args, env=env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A running server with default settings on a fresh data directory."""
    return server_factory()
