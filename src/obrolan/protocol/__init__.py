"""obrolan's wire protocol: frames, error codes, limits and signed bytes. No I/O."""

from obrolan.protocol.codes import FATAL_CODES, ErrorCode
from obrolan.protocol.limits import PROTOCOL_VERSION, SUPPORTED_VERSIONS, Limits

__all__ = ["FATAL_CODES", "PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "ErrorCode", "Limits"]
