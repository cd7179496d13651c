"""Client: the blocking twin of `AsyncClient`, for scripts and threaded programs.

    with Client("redis://localhost", queue="calc") as calc:
        calc.add(1, 5.1)                          # 6.1

It shares everything without I/O with `AsyncClient` (ids, encoding, batches, reading replies)
and does its I/O through a `SyncClientTransport`: on the calling thread where the transport
offers one, else on a private event loop that a lone caller runs on its own thread (and that
calls from other threads meanwhile are handed to). One `Client` serves any number of threads.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any, Self

from ._client import (
    DEFAULT_TIMEOUT,
    BatchBuilder,
    BatchCall,
    ClientBase,
    encoded,
    params_from,
    single_result,
)
from ._exceptions import CallTimeout, TransportError
from ._types import JSON, Params
from .transports import SyncClientTransport, sync_client_transport
from .transports.base import TraceContext


class Batch(BatchBuilder):
    """A batch sent with ``batch.send()`` or on leaving ``with``."""

    def __init__(self, client: Client, timeout: float | None) -> None:
        super().__init__(client._ids)
        self._client = client
        self._timeout = timeout

    def send(self) -> list[BatchCall]:
        """Send the batch and wait for every call's response."""
        body = self.encode()
        if not self.calls:
            self._client._send(body)
            return []
        return self.settle(self._client._exchange(body, "batch", self._timeout))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and len(self):
            self.send()


class Client(ClientBase):
    """Calls the methods of the service behind one queue; blocking, and safe across threads."""

    def __init__(
        self,
        broker: str | None = None,
        queue: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(broker, queue, timeout=timeout)
        self._transport: SyncClientTransport | None = None
        self._connecting = threading.Lock()

    def call(self, method: str, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> JSON:
        """Call `method` with positional or named params and return its result."""
        id_ = next(self._ids)
        body = encoded(method, params_from(args, kwargs), id_)
        with self._observed(method, id_) as trace:
            return single_result(self._exchange(body, method, timeout, trace), id_)

    def request(self, method: str, params: Params = None, *, timeout: float | None = None) -> JSON:
        """Call `method` with explicit params (a list, a dict or None) and return its result."""
        id_ = next(self._ids)
        body = encoded(method, params, id_)
        with self._observed(method, id_) as trace:
            return single_result(self._exchange(body, method, timeout, trace), id_)

    def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a notification: the service runs it, nobody waits for a reply."""
        self._send(encoded(method, params_from(args, kwargs), None, True))

    def batch(self, *, timeout: float | None = None) -> Batch:
        """Collect calls to send as one batch: ``with client.batch() as b: ...``."""
        return Batch(self, timeout)

    def describe(self) -> JSON:
        """The service's OpenRPC document (``rpc.discover``)."""
        return self.request("rpc.discover")

    def _exchange(
        self, body: bytes, what: str, timeout: float | None, trace: TraceContext | None = None
    ) -> bytes:
        transport = self._transport or self._connect()
        deadline = time.time() + (self.timeout if timeout is None else timeout)
        try:
            if not trace:  # the common case: no trace context to carry
                return transport.request(self.queue, body, deadline)
            return transport.request(self.queue, body, deadline, trace)
        except CallTimeout:
            raise self._timed_out(what, timeout) from None

    def _send(self, body: bytes) -> None:
        transport = self._transport or self._connect()
        transport.send(self.queue, body, None)

    def _connect(self) -> SyncClientTransport:
        with self._connecting:
            if self._closed:
                raise TransportError("this client is closed")
            if self._transport is None:
                transport = sync_client_transport(self.broker)
                transport.connect()
                self._transport = transport
            return self._transport

    def connect(self) -> None:
        """Connect now rather than on the first call."""
        self._connect()

    def close(self) -> None:
        """Close the connection; calls still waiting fail with `TransportError`."""
        with self._connecting:
            self._closed = True
            transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
