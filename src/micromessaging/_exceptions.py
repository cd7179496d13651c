"""One exception tree for everything micromessaging raises.

    MicromessagingError
    ├── RemoteError          the service answered with a JSON-RPC error object
    ├── CallTimeout          no answer before the call's deadline (also a TimeoutError)
    ├── TransportError       the broker or peer could not be reached, or the link broke
    │   └── NoWorkers        the broker is up, but no worker serves the queue
    ├── ProtocolError        the peer sent something that is not valid JSON-RPC
    ├── EncodeError          params JSON can't carry (also a TypeError)
    └── ConfigurationError   a bad URL, option or missing extra (also a ValueError)

Broker and library errors are converted into these at the transport boundary
(``raise TransportError(...) from exc``), so callers never catch a redis or aio-pika class.
"""

from __future__ import annotations

from typing import Any

_SERVER_ERROR = -32000  # ErrorCode.SERVER_ERROR; _protocol imports this module, not the reverse


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
        if self.data is None:
            return text
        if not isinstance(self.data, dict):
            return f"{text}: {self.data}"
        detail = self.data.get("message")
        kind = self.data.get("type")
        # A server error's data names the exception the method raised: the first thing to know.
        if self.code == _SERVER_ERROR and isinstance(kind, str):
            detail = kind if detail is None else f"{kind}: {detail}"
        return f"{text}: {detail}"

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


class NoWorkers(TransportError):
    """The broker answered, but no worker serves the queue the call was sent to."""

    def __init__(self, queue: str, detail: str | None = None) -> None:
        text = f"no worker serves queue {queue!r}"
        super().__init__(f"{text}: {detail}" if detail else text)
        self.queue = queue


class ProtocolError(MicromessagingError):
    """The peer sent bytes that are not a valid JSON-RPC reply."""


class ConfigurationError(MicromessagingError, ValueError):
    """A broker URL, an option or an installed extra is wrong or missing."""


class EncodeError(MicromessagingError, TypeError):
    """A call's params hold something JSON can't carry (a set, NaN, nesting too deep...)."""
