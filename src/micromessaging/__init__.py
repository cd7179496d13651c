"""micromessaging: JSON-RPC 2.0 between services over Redis, RabbitMQ, HTTP or in-process.

Serve plain domain code with a `Worker` (or ``micromessaging worker module:Class``) and call
it from anywhere with `Client` or `AsyncClient`: ``calc.add(1, 5.1) == 6.1``.
"""

import logging as _logging

from ._client import AsyncBatch, AsyncClient, BatchCall
from ._exceptions import (
    CallTimeout,
    ConfigurationError,
    EncodeError,
    MicromessagingError,
    NoWorkers,
    ProtocolError,
    RemoteError,
    TransportError,
)
from ._protocol import ErrorCode
from ._service import Service, method
from ._sync_client import Batch, Client
from ._version import __version__
from ._worker import Worker

__all__ = [
    "AsyncBatch",
    "AsyncClient",
    "Batch",
    "BatchCall",
    "CallTimeout",
    "Client",
    "ConfigurationError",
    "EncodeError",
    "ErrorCode",
    "MicromessagingError",
    "NoWorkers",
    "ProtocolError",
    "RemoteError",
    "Service",
    "TransportError",
    "Worker",
    "__version__",
    "method",
]

# A library logs, and lets the application decide where lines go (`observability.logs`).
_logging.getLogger("micromessaging").addHandler(_logging.NullHandler())
