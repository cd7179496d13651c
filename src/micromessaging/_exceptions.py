"""One exception tree for everything micromessaging raises.

    MicromessagingError
    ├── RemoteError          the service answered with a JSON-RPC error object
    ├── CallTimeout          no answer before the call's deadline (also a TimeoutError)
    ├── TransportError       the broker or peer could not be reached, or the link broke
    ├── ProtocolError        the peer sent something that is not valid JSON-RPC
    ├── EncodeError          params JSON can't carry (also a TypeError)
    └── ConfigurationError   a bad URL, option or missing extra (also a ValueError)

Broker and library errors are converted into these at the transport boundary
(``raise TransportError(...) from exc``), so callers never catch a redis or aio-pika class.
"""

from __future__ import annotations

from typing import Any


class MicromessagingError(Exception):
    """Root of every error micromessaging raises."""


class RemoteError(MicromessagingError):
    """A JSON-RPC error object: raised by clients, and raisable by service code.

    Service code raises ``RemoteError(code, message, data)`` to answer with its own error;
    a client raises it when the reply carries an error.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message, data)
        self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        text = f"{self.message} (code {self.code})"
        if self.data is not None:
            detail = self.data.get("message") if isinstance(self.data, dict) else self.data
            text = f"{text}: {detail}"
        return text

    def to_error_object(self) -> dict[str, Any]:
        """The JSON-RPC error object this exception stands for."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class CallTimeout(MicromessagingError, TimeoutError):
    """No reply arrived before the call's deadline."""


class TransportError(MicromessagingError):
    """The broker or the peer could not be reached, or the connection was lost."""


class ProtocolError(MicromessagingError):
    """The peer sent bytes that are not a valid JSON-RPC reply."""


class ConfigurationError(MicromessagingError, ValueError):
    """A broker URL, an option or an installed extra is wrong or missing."""


class EncodeError(MicromessagingError, TypeError):
    """A call's params hold something JSON can't carry (a set, NaN, nesting too deep...)."""
