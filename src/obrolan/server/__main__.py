"""``python -m obrolan.server serve|admin``: the server's commands without the client's."""

from __future__ import annotations

import argparse
import sys

from obrolan.cli.server_commands import add_parsers
from obrolan.errors import ObrolanError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; an :class:`ObrolanError` becomes one line on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m obrolan.server", description="The obrolan relay server."
    )
    add_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ObrolanError as exc:
        print(f"obrolan: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
