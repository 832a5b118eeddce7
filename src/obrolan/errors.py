"""Every exception obrolan raises on purpose.

::

    ObrolanError
     ├── ProtocolError
     │    ├── LocalProtocolError      we misused the protocol (a bug on our side)
     │    └── RemoteProtocolError     the peer sent something the spec forbids
     ├── RequestRefused               the server answered a request with an error frame
     ├── ServerUnreachable            no connection to the server could be made
     ├── DeviceRemoved                the account removed this device (close code 4001)
     ├── DeviceReplaced               another process connected as this device
     ├── InvalidMessage               a value breaks a limit (field, value, limit)
     ├── CryptoError
     │    ├── DecryptionError         a ciphertext could not be decrypted
     │    ├── SignatureError          a signature does not verify
     │    ├── IdentityChanged         a contact's identity key is not the pinned one
     │    ├── CommitmentMismatch      (crypto/sas.py) a SAS key broke its commitment
     │    └── UpdateRejected          (crypto/group_state.py) a group update that does not count
     ├── StorageError
     │    ├── WrongPassphrase         the profile's store did not open with this key
     │    └── ProfileError            no profile, or a profile that already exists
     ├── UnknownContact               a username the server does not know
     ├── InvalidState                (also AssertionError) an API used in the wrong state
     ├── ConfigError                  a setting is wrong; the message says how to fix it
     ├── GroupError                   (client/groups.py) a group action that cannot be done
     ├── HistoryTransferFailed        (client/history_transfer.py) nothing was imported
     └── VerificationFailed           (client/verification.py) nothing was marked verified

The last five live beside the rules they enforce, as their messages come from there.
Each class has a ``code``: the server sends exactly that code, the CLI turns
the message into one friendly line.
"""

from __future__ import annotations

from obrolan.protocol.codes import ErrorCode

__all__ = [
    "ConfigError",
    "CryptoError",
    "DecryptionError",
    "DeviceRemoved",
    "DeviceReplaced",
    "IdentityChanged",
    "InvalidMessage",
    "InvalidState",
    "LocalProtocolError",
    "ObrolanError",
    "ProfileError",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestRefused",
    "ServerUnreachable",
    "SignatureError",
    "StorageError",
    "UnknownContact",
    "UnusableKey",
    "WrongPassphrase",
]


class ObrolanError(Exception):
    """Root of every error obrolan raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL


class ProtocolError(ObrolanError):
    """Raised when a frame breaks the wire protocol."""

    code = ErrorCode.MALFORMED_FRAME

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class LocalProtocolError(ProtocolError):
    """Raised when this side tried to send something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """Raised when the peer sent something the protocol forbids.

    ``request_id`` is the ``id`` of the refused request when it could be read (the
    server's error frame carries it, spec §6), else None.
    """

    def __init__(
        self, message: str, code: ErrorCode | None = None, request_id: int | None = None
    ) -> None:
        super().__init__(message, code)
        self.request_id = request_id


class RequestRefused(ObrolanError):
    """Raised when the server refuses a request; ``code`` says why.

    The server raises it inside a handler to answer with an ``error`` frame;
    the client raises it when it receives one.
    """

    def __init__(
        self, code: ErrorCode, message: str = "", *, retry_after_ms: int | None = None
    ) -> None:
        super().__init__(message or code.value.replace("_", " "))
        self.code = code
        self.message = message or code.value.replace("_", " ")
        self.retry_after_ms = retry_after_ms
        """With ``rate_limited``: milliseconds to wait before trying again."""


class ServerUnreachable(ObrolanError):
    """Raised when no connection to the server could be made."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


class DeviceRemoved(ObrolanError):
    """Raised when the account removed this device from its list (close code 4001)."""

    def __init__(self) -> None:
        super().__init__(
            "this device was removed from its account by another of its devices; "
            "it receives nothing new (link it again with `obrolan link`)"
        )


class DeviceReplaced(ObrolanError):
    """Raised when the server closed the connection because this device connected again.

    Only one connection per device is served; the newer one wins (close code 4000).
    """

    def __init__(self) -> None:
        super().__init__(
            "this device is connected from another process (an `obrolan listen` elsewhere?); "
            "only one connection per device is served"
        )


class InvalidMessage(ObrolanError):
    """Raised when a value breaks a limit: ``body is 70000 bytes, limit is 65536``."""

    code = ErrorCode.TOO_MANY_ITEMS

    def __init__(self, field: str, value: int, limit: int, unit: str = "bytes") -> None:
        super().__init__(f"{field} is {value} {unit}, limit is {limit}")
        self.field = field
        self.value = value
        self.limit = limit


class CryptoError(ObrolanError):
    """Raised when a cryptographic operation fails."""


class DecryptionError(CryptoError):
    """Raised when a ciphertext cannot be decrypted (tampered, replayed, unknown session)."""


class SignatureError(CryptoError):
    """Raised when a signature does not verify."""

    code = ErrorCode.BAD_SIGNATURE


class UnusableKey(CryptoError):
    """Raised when a Curve25519 public key is all-zero or of low order: no session can use it."""

    code = ErrorCode.BAD_KEY


class IdentityChanged(CryptoError):
    """Raised when sending to a contact whose account key has changed and was not accepted."""

    def __init__(self, username: str) -> None:
        super().__init__(
            f"{username}'s account key changed and you have not accepted the new one: "
            f"nothing is encrypted to it. Check the safety number with {username} "
            f"(obrolan safety-number {username}), then run `obrolan trust {username}`"
        )
        self.username = username


class StorageError(ObrolanError):
    """Raised when the local store cannot be read or written."""


class WrongPassphrase(StorageError):
    """Raised when the profile's store does not open with the given passphrase."""

    def __init__(self) -> None:
        super().__init__("wrong passphrase: the profile's store did not open")


class ProfileError(StorageError):
    """Raised when a profile is missing, or exists where a new one would be made."""


class UnknownContact(ObrolanError):
    """Raised when a username is not known to the server."""

    code = ErrorCode.UNKNOWN_USER

    def __init__(self, username: str) -> None:
        super().__init__(f"unknown user: {username}")
        self.username = username


class InvalidState(ObrolanError, AssertionError):
    """Raised when an API is used in a state that does not allow it."""


class ConfigError(ObrolanError):
    """Raised when a setting is wrong; the message says how to fix it."""
