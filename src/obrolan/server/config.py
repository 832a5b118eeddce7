"""Everything ``obrolan serve`` can be told, checked once at start-up."""

from __future__ import annotations

import dataclasses
import logging
import ssl
from pathlib import Path

from obrolan.errors import ConfigError
from obrolan.protocol.limits import Limits
from obrolan.server.rate_limit import RateLimits

__all__ = ["DATABASE_NAME", "LOG_NAME", "ServerConfig"]

DATABASE_NAME = "obrolan.db"
"""The server's SQLite file inside its data directory."""
LOG_NAME = "server.log"
"""The server's log file inside its data directory."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Settings of one relay server process.

    Raises:
        ConfigError: from the constructor, when a setting cannot work (the message says
            which option to change).
    """

    data_dir: Path
    """Holds ``obrolan.db`` (accounts, keys, mailbox) and ``server.log``."""
    host: str = "127.0.0.1"
    port: int = 8787
    """0 picks a free port; the ready line on stdout names the real one."""
    limits: Limits = dataclasses.field(default_factory=Limits)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    sweep_interval: float = 60.0
    """Seconds between two sweeps for envelopes whose TTL ran out."""
    auth_timeout: float = 10.0
    """Seconds a connection may stay open without authenticating."""
    request_timeout: float = 10.0
    """Seconds a new connection may take to send its first complete HTTP request head (the
    WebSocket upgrade, or a blob request); a TLS handshake has as long again."""
    link_ttl: float = 600.0
    """Seconds a new device's link offer waits (in memory) for an existing device's approval."""
    log_level: str = "INFO"
    max_blob_bytes: int = 100 * 1024 * 1024
    """Largest encrypted attachment (blob) the server accepts, in bytes."""
    blob_quota_bytes: int = 1024 * 1024 * 1024
    """Most bytes of blobs one account may have on the server at once."""
    blob_ttl_seconds: int = 30 * 24 * 3600
    """A blob not fetched by every addressed device by then is deleted."""
    rate_limits: RateLimits = dataclasses.field(default_factory=RateLimits)
    """How fast one connection or account may go, and how many may be unauthenticated."""
    new_database: bool = False
    """Start with a new, empty database even where the data directory held one (its
    ``obrolan.db.created`` marker) that is now missing or empty; never over a damaged one."""

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key (or neither)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range; use --port 0..65535")
        if min(self.sweep_interval, self.auth_timeout, self.request_timeout, self.link_ttl) <= 0:
            raise ConfigError(
                "--sweep-interval, --auth-timeout, --request-timeout and --link-ttl must be "
                "positive seconds"
            )
        if min(self.max_blob_bytes, self.blob_quota_bytes, self.blob_ttl_seconds) <= 0:
            raise ConfigError("--max-blob-bytes, --blob-quota and --blob-ttl must be positive")
        rates = self.rate_limits
        if (
            min(
                rates.frames_per_second,
                rates.sends_per_second,
                rates.claims_per_second,
                rates.blob_bytes_per_second,
                rates.burst_seconds,
                rates.max_unauthenticated,
            )
            <= 0
        ):
            raise ConfigError(
                "--frame-rate, --send-rate, --claim-rate, --blob-upload-rate, --rate-burst "
                "and --max-unauthenticated must be positive"
            )
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise ConfigError(
                f"unknown log level {self.log_level!r}; use DEBUG, INFO, WARNING or ERROR"
            )

    @property
    def scheme(self) -> str:
        """``https`` when TLS is configured, else ``http``."""
        return "https" if self.tls_cert else "http"

    @property
    def database(self) -> Path:
        """The SQLite file of this server."""
        return self.data_dir / DATABASE_NAME

    @property
    def log_file(self) -> Path:
        """Where the server writes its log (no IP addresses, no per-message lines at INFO)."""
        return self.data_dir / LOG_NAME

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server-side TLS context, or None without TLS.

        Raises:
            ConfigError: the certificate or key cannot be loaded.
        """
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load TLS certificate {self.tls_cert} with key {self.tls_key}: {exc}; "
                f"pass a PEM certificate chain and its unencrypted PEM private key"
            ) from None
        return context
