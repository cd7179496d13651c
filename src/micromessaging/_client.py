"""AsyncClient: call a service's methods as if they were local coroutines.

    async with AsyncClient("redis://localhost", queue="calc") as calc:
        await calc.add(1, 5.1)                    # 6.1
        await calc.call("add", a=1, b=5.1, timeout=2)

One client carries any number of concurrent calls over one transport. The pieces without
I/O (ids, encoding, batches, reading replies) are shared with the sync `Client`.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self

from ._exceptions import (
    CallTimeout,
    ConfigurationError,
    EncodeError,
    ProtocolError,
    TransportError,
)
from ._protocol import (
    DecodeError,
    decode_reply,
    dumps,
    encode_request,
    loads,
    outcome,
    request_object,
)
from ._settings import resolve_broker
from ._types import JSON, Id, Params
from .observability.client import Observed, client_tracing
from .observability.stats import ClientStats
from .transports import ClientTransport, client_transport
from .transports.base import TraceContext

DEFAULT_TIMEOUT = 30.0


def params_from(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Params:
    """JSON-RPC params from Python arguments: positional or named, never both."""
    if args and kwargs:
        raise EncodeError("JSON-RPC params are either positional or named, not both")
    if kwargs:
        return kwargs
    return list(args) if args else None


class MethodProxy:
    """A remote method as an attribute: ``client.add(1, 2)``, ``client.math.add(1, 2)``."""

    __slots__ = ("_call", "_name")

    def __init__(self, call: Callable[..., Any], name: str) -> None:
        self._call = call
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self._name, *args, **kwargs)

    def __getattr__(self, name: str) -> MethodProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return MethodProxy(self._call, f"{self._name}.{name}")

    def __repr__(self) -> str:
        return f"<remote method {self._name}>"


def encoded(method: str, params: Params, id_: Id, notification: bool = False) -> bytes:
    """The request's bytes; `EncodeError` when its params are something JSON can't carry."""
    if params is not None and not isinstance(params, list | tuple | dict):
        raise EncodeError(f"params must be a list, a dict or None, not {type(params).__name__}")
    try:
        return encode_request(method, params, id_, notification)
    except TypeError as exc:
        raise EncodeError(f"the params of {method} can't be sent as JSON: {exc}") from None


def request_ids() -> Iterator[str]:
    """Unique request ids: a random prefix per client, then a counter."""
    return map((secrets.token_hex(8) + "{}").format, itertools.count(1))


def single_result(reply: bytes, id_: Id) -> JSON:
    """The result in the reply to one request; raises the `RemoteError` it carries."""
    try:
        response = loads(reply)  # exact for integers of any size, as every reply is read
    except DecodeError:
        response = None
    if (
        type(response) is dict
        and "result" in response
        and response.get("id") == id_
        and response.get("jsonrpc") == "2.0"
        and "error" not in response
    ):
        return response["result"]  # the usual success, checked without the detour
    response = decode_reply(reply)
    if isinstance(response, list):
        raise ProtocolError("expected one response, got a batch")
    if response["id"] != id_ and response["id"] is not None:
        raise ProtocolError(f"reply for id {response['id']!r} to request {id_!r}")
    return outcome(response)


class BatchCall:
    """One call of a batch; its result is there once the batch has been sent."""

    __slots__ = ("_response", "id", "method")

    def __init__(self, method: str, id_: Id) -> None:
        self.method = method
        self.id = id_
        self._response: dict[str, JSON] | None = None

    @property
    def done(self) -> bool:
        """Whether the reply to this call has arrived."""
        return self._response is not None

    def result(self) -> JSON:
        """The call's result; raises its `RemoteError`, or `RuntimeError` before it is sent."""
        if self._response is None:
            raise RuntimeError(f"the batch holding {self.method} has not been sent")
        return outcome(self._response)

    def __repr__(self) -> str:
        return f"<BatchCall {self.method} id={self.id!r} done={self.done}>"


class BatchBuilder:
    """Calls and notifications collected to go out as one JSON-RPC batch."""

    def __init__(self, ids: Iterator[str]) -> None:
        self._ids = ids
        self._objects: list[JSON] = []
        self.calls: list[BatchCall] = []

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> BatchCall:
        """Add a call; its result is read from the returned `BatchCall` after sending."""
        id_ = next(self._ids)
        self._objects.append(request_object(method, params_from(args, kwargs), id_))
        call = BatchCall(method, id_)
        self.calls.append(call)
        return call

    def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Add a notification: no result, no reply."""
        self._objects.append(request_object(method, params_from(args, kwargs), None, True))

    def __getattr__(self, name: str) -> MethodProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return MethodProxy(self.call, name)

    def __len__(self) -> int:
        return len(self._objects)

    def encode(self) -> bytes:
        """The batch as bytes."""
        if not self._objects:
            raise ValueError("an empty batch can't be sent")
        try:
            return dumps(self._objects)
        except TypeError as exc:
            raise EncodeError(f"the batch can't be sent as JSON: {exc}") from None

    def settle(self, reply: bytes | None) -> list[BatchCall]:
        """Hand each call its response from the batch reply."""
        if not self.calls:
            return []
        if reply is None:
            raise ProtocolError("no reply to a batch holding calls")
        responses = decode_reply(reply)
        if not isinstance(responses, list):
            # A whole-batch failure (too large, unparsable) answers with one error object.
            outcome(responses)
            raise ProtocolError("expected a batch reply, got one response")
        by_id = {response["id"]: response for response in responses}
        for call in self.calls:
            if call.id not in by_id:
                raise ProtocolError(f"the batch reply has no response for {call.method}")
            call._response = by_id[call.id]
        return self.calls


class AsyncBatch(BatchBuilder):
    """A batch sent with ``await batch.send()`` or on leaving ``async with``."""

    def __init__(self, client: AsyncClient, timeout: float | None) -> None:
        super().__init__(client._ids)
        self._client = client
        self._timeout = timeout

    async def send(self) -> list[BatchCall]:
        """Send the batch and wait for every call's response."""
        body = self.encode()
        if not self.calls:
            await self._client._send(body)
            return []
        return self.settle(await self._client._exchange(body, "batch", self._timeout))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and len(self):
            await self.send()


class ClientBase:
    """What `AsyncClient` and `Client` share: settings, ids and the method proxy."""

    def __init__(
        self,
        broker: str | None = None,
        queue: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not queue:
            name = type(self).__name__
            raise ConfigurationError(f"a queue is required: {name}(broker, queue='calc')")
        if timeout <= 0:
            raise ConfigurationError("timeout must be positive")
        self.broker = resolve_broker(broker)
        self.queue = queue
        self.timeout = timeout
        self.stats = ClientStats()
        """What this client's calls did: by method and outcome, in flight, their time."""
        self._tracing = client_tracing(queue, self.broker)
        self._ids = request_ids()
        self._closed = False

    def call(self, method: str, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call `method` with positional or named params."""
        raise NotImplementedError

    def __getattr__(self, name: str) -> MethodProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        proxy = self.__dict__[name] = MethodProxy(self.call, name)  # found directly next time
        return proxy

    def _observed(self, method: str, id_: Id) -> Observed:
        """Counts (and, with OpenTelemetry, traces) one call; its ``with`` gives the trace."""
        return Observed(self.stats, self._tracing, method, id_)

    def _timed_out(self, what: str, timeout: float | None) -> CallTimeout:
        timeout = self.timeout if timeout is None else timeout
        return CallTimeout(f"no reply to {what} from queue {self.queue!r} within {timeout:g}s")


class AsyncClient(ClientBase):
    """Calls the methods of the service behind one queue; safe for many concurrent calls."""

    def __init__(
        self,
        broker: str | None = None,
        queue: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(broker, queue, timeout=timeout)
        self._transport: ClientTransport | None = None
        self._connecting = asyncio.Lock()

    async def call(
        self, method: str, /, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> JSON:
        """Call `method` with positional or named params and return its result."""
        id_ = next(self._ids)
        body = encoded(method, params_from(args, kwargs), id_)
        with self._observed(method, id_) as trace:
            return single_result(await self._exchange(body, method, timeout, trace), id_)

    async def request(
        self, method: str, params: Params = None, *, timeout: float | None = None
    ) -> JSON:
        """Call `method` with explicit params (a list, a dict or None) and return its result."""
        id_ = next(self._ids)
        body = encoded(method, params, id_)
        with self._observed(method, id_) as trace:
            return single_result(await self._exchange(body, method, timeout, trace), id_)

    async def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a notification: the service runs it, nobody waits for a reply."""
        await self._send(encoded(method, params_from(args, kwargs), None, True))

    def batch(self, *, timeout: float | None = None) -> AsyncBatch:
        """Collect calls to send as one batch: ``async with client.batch() as b: ...``."""
        return AsyncBatch(self, timeout)

    async def describe(self) -> JSON:
        """The service's OpenRPC document (``rpc.discover``)."""
        return await self.request("rpc.discover")

    async def _exchange(
        self, body: bytes, what: str, timeout: float | None, trace: TraceContext | None = None
    ) -> bytes:
        transport = self._transport or await self._connect()
        deadline = time.time() + (self.timeout if timeout is None else timeout)
        try:
            if not trace:  # the common case: no trace context to carry
                reply = await transport.request(self.queue, body, deadline)
            else:
                reply = await transport.request(self.queue, body, deadline, trace)
        except CallTimeout:
            raise self._timed_out(what, timeout) from None
        if self._closed:  # closed while this call waited: it fails, whatever came back
            raise TransportError("this client is closed")
        return reply

    async def _send(self, body: bytes) -> None:
        transport = self._transport or await self._connect()
        await transport.send(self.queue, body, None)

    async def _connect(self) -> ClientTransport:
        async with self._connecting:
            if self._closed:
                raise TransportError("this client is closed")
            if self._transport is None:
                transport = client_transport(self.broker)
                await transport.connect()
                if self._closed:  # `aclose` came while connecting: it found nothing to close
                    await transport.aclose()
                    raise TransportError("this client is closed")
                self._transport = transport
            return self._transport

    async def aclose(self) -> None:
        """Fail the calls in flight and close the connection."""
        self._closed = True
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()

    async def __aenter__(self) -> Self:
        await self._connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
