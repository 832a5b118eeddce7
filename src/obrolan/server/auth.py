"""Authentication of a device: sign a fresh, single-use nonce of this connection.

Nothing password-like is stored: a device proves it holds the Ed25519 key it
registered by signing :func:`~obrolan.protocol.signing.auth_bytes` of the nonce the
server sent in this connection's ``challenge``. The nonce is consumed by the first
attempt, so a captured ``authenticate`` frame is worthless on any other connection
and cannot be retried on this one.

``recover`` is proven the same way twice: the new device signs the nonce, and the
account's old recovery key signs the nonce with the new keys
(:func:`~obrolan.protocol.signing.recover_bytes`), so a captured ``recover`` frame is
worthless too.
"""

from __future__ import annotations

import secrets

from obrolan.crypto.signatures import verify
from obrolan.errors import RequestRefused, SignatureError
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.limits import SUPPORTED_VERSIONS
from obrolan.protocol.signing import auth_bytes, recover_bytes

__all__ = ["NONCE_BYTES", "ConnectionChallenge", "check_version"]

NONCE_BYTES = 32

# A valid Ed25519 public key whose private key nobody has. An unknown account or
# device is checked against it, so every failure costs the same work and reads the same.
_DECOY_KEY = "JpEx4/jny2VeB3UMiUYOpGN/V0RbFiXvTnle/2+WEP4"


def check_version(version: int) -> None:
    """Accept a protocol version this server speaks.

    Raises:
        RequestRefused: ``unsupported_version``.
    """
    if version not in SUPPORTED_VERSIONS:
        raise RequestRefused(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {version} is not supported; this server speaks {list(SUPPORTED_VERSIONS)}",
        )


class ConnectionChallenge:
    """The nonce of one connection, good for exactly one authentication attempt."""

    def __init__(self) -> None:
        self.nonce = secrets.token_bytes(NONCE_BYTES)
        self._used = False

    def verify(self, username: str, device_id: str, ed25519: str | None, signature: str) -> None:
        """Consume the nonce and check the device's signature over it.

        Args:
            ed25519: the device's registered key, or None if the account or the device
                does not exist (the answer is then the same as for a bad signature).

        Raises:
            RequestRefused: ``auth_failed`` for a bad signature, an unknown account or
                device, or a nonce already used; the message never says which.
        """
        used, self._used = self._used, True
        try:
            verify(ed25519 or _DECOY_KEY, auth_bytes(self.nonce, username, device_id), signature)
        except SignatureError:
            raise RequestRefused(ErrorCode.AUTH_FAILED, "authentication failed") from None
        if used or ed25519 is None:
            raise RequestRefused(ErrorCode.AUTH_FAILED, "authentication failed")

    def verify_recovery(
        self,
        username: str,
        account_key: str,
        new_recovery_key: str,
        recovery_key: str | None,
        signature: str,
    ) -> None:
        """Check the old recovery key's signature handing ``username`` to ``account_key``.

        Call after :meth:`verify` (which consumed the nonce for the same attempt).

        Args:
            recovery_key: the account's stored recovery key, or None if there is no such
                account or it has none (the answer is then the same as for a bad signature).

        Raises:
            RequestRefused: ``auth_failed``; the message never says which case.
        """
        signed = recover_bytes(self.nonce, username, account_key, new_recovery_key)
        try:
            verify(recovery_key or _DECOY_KEY, signed, signature)
        except SignatureError:
            raise RequestRefused(ErrorCode.AUTH_FAILED, "authentication failed") from None
        if recovery_key is None:
            raise RequestRefused(ErrorCode.AUTH_FAILED, "authentication failed")
