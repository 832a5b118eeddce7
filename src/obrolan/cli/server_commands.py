"""The server's verbs of the ``obrolan`` command: ``serve`` and ``admin``.

``cli/main.py`` calls :func:`add_parsers` on its sub-command parsers, then runs
``args.func(args)``, which returns the exit code and raises
:class:`~obrolan.errors.ObrolanError` for anything the user can fix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import platformdirs

from obrolan.cli.safe_text import json_text
from obrolan.protocol.limits import Limits
from obrolan.server.rate_limit import RateLimits

__all__ = ["add_parsers", "default_data_dir"]

_DEFAULTS = Limits()
_RATES = RateLimits()


def default_data_dir() -> Path:
    """Where the server keeps its data unless ``--data`` says otherwise."""
    return Path(platformdirs.user_data_dir("obrolan-server"))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be greater than 0")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be greater than 0")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"{value} is not a port number (0 to 65535; 0 picks a free one)"
        )
    return value


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` and ``admin`` (``disclose``, ``stats``), each with ``func`` set."""
    data_help = "the server's data directory (default: %(default)s)"

    serve = subparsers.add_parser(
        "serve",
        help="run the relay server",
        description="Run the relay server. It prints one line when it is ready and stops "
        "gracefully on SIGTERM or Ctrl-C.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument(
        "--port", type=_port, default=8787, help="port; 0 picks a free one (default: %(default)s)"
    )
    serve.add_argument(
        "--data", type=Path, default=default_data_dir(), metavar="DIR", help=data_help
    )
    serve.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="TLS certificate chain (serve https/wss)"
    )
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    serve.add_argument(
        "--max-envelope-bytes",
        type=_positive_int,
        default=_DEFAULTS.max_envelope_bytes,
        metavar="N",
        help="largest ciphertext of one envelope (default: %(default)s)",
    )
    serve.add_argument(
        "--envelope-ttl",
        type=_positive_int,
        default=_DEFAULTS.envelope_ttl_seconds,
        metavar="SECONDS",
        help="delete envelopes not acknowledged within this time (default: %(default)s, 30 days)",
    )
    serve.add_argument(
        "--max-queue",
        type=_positive_int,
        default=_DEFAULTS.max_queue_per_device,
        metavar="N",
        help="most envelopes waiting for one device (default: %(default)s)",
    )
    serve.add_argument(
        "--max-recipients",
        type=_positive_int,
        default=_DEFAULTS.max_recipients_per_envelope,
        metavar="N",
        help="most recipient devices of one group envelope (default: %(default)s)",
    )
    serve.add_argument(
        "--max-devices",
        type=_positive_int,
        default=_DEFAULTS.max_devices_per_account,
        metavar="N",
        help="most devices in one account (default: %(default)s)",
    )
    serve.add_argument(
        "--max-blob-bytes",
        type=_positive_int,
        default=100 * 1024 * 1024,
        metavar="N",
        help="largest encrypted attachment (default: %(default)s, 100 MiB)",
    )
    serve.add_argument(
        "--blob-quota",
        type=_positive_int,
        default=1024 * 1024 * 1024,
        metavar="BYTES",
        help="most bytes of attachments one account may have stored (default: %(default)s, 1 GiB)",
    )
    serve.add_argument(
        "--blob-ttl",
        type=_positive_int,
        default=30 * 24 * 3600,
        metavar="SECONDS",
        help="delete attachments not fetched within this time (default: %(default)s, 30 days)",
    )
    serve.add_argument(
        "--sweep-interval",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="how often expired envelopes and attachments are deleted (default: %(default)s)",
    )
    serve.add_argument(
        "--auth-timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="close connections that do not authenticate in time (default: %(default)s)",
    )
    serve.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="close connections whose first HTTP request (the WebSocket upgrade) is not "
        "complete in time (default: %(default)s)",
    )
    serve.add_argument(
        "--link-ttl",
        type=_positive_float,
        default=600.0,
        metavar="SECONDS",
        help="how long a new device's link code waits for approval (default: %(default)s)",
    )
    serve.add_argument(
        "--frame-rate",
        type=_positive_float,
        default=_RATES.frames_per_second,
        metavar="N",
        help="frames a second one connection may send; more get rate_limited "
        "(default: %(default)g)",
    )
    serve.add_argument(
        "--send-rate",
        type=_positive_float,
        default=_RATES.sends_per_second,
        metavar="N",
        help="envelopes a second one account may upload (default: %(default)g)",
    )
    serve.add_argument(
        "--claim-rate",
        type=_positive_float,
        default=_RATES.claims_per_second,
        metavar="N",
        help="one-time keys a second one account may claim (default: %(default)g)",
    )
    serve.add_argument(
        "--blob-upload-rate",
        type=_positive_float,
        default=_RATES.blob_bytes_per_second,
        metavar="BYTES",
        help="attachment bytes a second one account may upload (default: %(default)g, 16 MiB)",
    )
    serve.add_argument(
        "--rate-burst",
        type=_positive_float,
        default=_RATES.burst_seconds,
        metavar="SECONDS",
        help="how many seconds of each rate may be used at once (default: %(default)g)",
    )
    serve.add_argument(
        "--max-unauthenticated",
        type=_positive_int,
        default=_RATES.max_unauthenticated,
        metavar="N",
        help="most connections not yet authenticated at once; more are refused with HTTP 503 "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--new-database",
        action="store_true",
        help="start with a new, empty database although this data directory held one that "
        "is now missing or empty (every account and queued message is lost); never used "
        "over a damaged file",
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default: %(default)s; DEBUG adds per-message lines, never IP addresses)",
    )
    serve.set_defaults(func=_serve)

    admin = subparsers.add_parser(
        "admin",
        help="inspect what the server holds",
        description="Read the server's database (also while the server runs) and print JSON.",
    )
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    disclose = admin_commands.add_parser(
        "disclose",
        help="print everything held about one account",
        description="Print, as JSON, everything the server holds about an account. It never "
        "holds message content, delivered messages, contacts, groups or IP addresses.",
    )
    disclose.add_argument("username")
    disclose.add_argument(
        "--data", type=Path, default=default_data_dir(), metavar="DIR", help=data_help
    )
    disclose.set_defaults(func=_disclose)
    stats = admin_commands.add_parser("stats", help="print counts of what the server holds")
    stats.add_argument(
        "--data", type=Path, default=default_data_dir(), metavar="DIR", help=data_help
    )
    stats.set_defaults(func=_stats)


def _serve(args: argparse.Namespace) -> int:
    # Imported here so the client's commands do not load the server.
    from obrolan.server.app import run
    from obrolan.server.config import ServerConfig

    config = ServerConfig(
        data_dir=args.data,
        host=args.host,
        port=args.port,
        limits=Limits(
            max_envelope_bytes=args.max_envelope_bytes,
            envelope_ttl_seconds=args.envelope_ttl,
            max_queue_per_device=args.max_queue,
            max_recipients_per_envelope=args.max_recipients,
            max_devices_per_account=args.max_devices,
        ),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        sweep_interval=args.sweep_interval,
        auth_timeout=args.auth_timeout,
        request_timeout=args.request_timeout,
        link_ttl=args.link_ttl,
        log_level=args.log_level,
        max_blob_bytes=args.max_blob_bytes,
        blob_quota_bytes=args.blob_quota,
        blob_ttl_seconds=args.blob_ttl,
        rate_limits=RateLimits(
            frames_per_second=args.frame_rate,
            sends_per_second=args.send_rate,
            claims_per_second=args.claim_rate,
            blob_bytes_per_second=args.blob_upload_rate,
            burst_seconds=args.rate_burst,
            max_unauthenticated=args.max_unauthenticated,
        ),
        new_database=args.new_database,
    )
    run(config, on_ready=lambda url: print(f"obrolan server listening on {url}", flush=True))
    return 0


def _print_json(value: Any) -> int:
    # Device names in `admin disclose` are what users typed: DEL is escaped too.
    sys.stdout.write(json_text(value, indent=2, ensure_ascii=True))
    sys.stdout.write("\n")
    return 0


def _disclose(args: argparse.Namespace) -> int:
    from obrolan.server.admin import disclose

    return _print_json(disclose(args.data, args.username))


def _stats(args: argparse.Namespace) -> int:
    from obrolan.server.admin import stats

    return _print_json(stats(args.data))
