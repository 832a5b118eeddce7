"""Ids the client makes, and the username check it does before asking the server."""

from __future__ import annotations

import base64
import re
import secrets

from obrolan.errors import ConfigError

__all__ = ["check_username", "new_id"]

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{2,31}\Z")


def new_id() -> str:
    """A random 128-bit id, base64url without padding (envelope, message, group and blob ids).

    Never starts with '-': a command line would read ``--group -x3f…`` as two options.
    """
    while True:
        new = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        if not new.startswith("-"):
            return new


def check_username(username: str) -> str:
    """Return ``username`` if it is well formed, else raise ConfigError."""
    if not _USERNAME.match(username):
        raise ConfigError(
            f"invalid username {username!r}: use 3-32 lower-case letters, digits, '_', '.' "
            f"or '-', starting with a letter or digit"
        )
    return username
