"""Client: the blocking face of `AsyncClient`, for scripts and threaded programs.

    with Client("redis://localhost", queue="calc") as calc:
        calc.add(1, 5.1)                          # 6.1

Every call runs on the `AsyncClient` of a private event loop in a background thread, so one
`Client` serves any number of threads at once and shares one connection between them, and
the logic exists once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from ._client import DEFAULT_TIMEOUT, AsyncClient, BatchBuilder, BatchCall, MethodProxy
from ._types import JSON, Params

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread, started on first use."""

    def __init__(self, name: str = "micromessaging-client") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the loop and wait for its outcome."""
        loop = self._loop or self._start()
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt in the caller: don't leave the call running
            raise

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name=self._name, daemon=True
                )
                self._thread.start()
                self._loop = loop
            return self._loop

    def stop(self) -> None:
        """Stop the loop and wait for its thread."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


class Batch(BatchBuilder):
    """A batch sent with ``batch.send()`` or on leaving ``with``."""

    def __init__(self, client: Client, timeout: float | None) -> None:
        super().__init__(client._async._ids)
        self._client = client
        self._timeout = timeout

    def send(self) -> list[BatchCall]:
        """Send the batch and wait for every call's response."""
        body = self.encode()
        client = self._client._async
        if not self.calls:
            self._client._loop.run(client._send(body))
            return []
        return self.settle(self._client._loop.run(client._exchange(body, "batch", self._timeout)))

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


class Client:
    """Calls the methods of the service behind one queue; blocking, and safe across threads."""

    def __init__(
        self,
        broker: str | None = None,
        queue: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._async = AsyncClient(broker, queue, timeout=timeout)
        self._loop = LoopThread()

    @property
    def broker(self) -> str:
        """The broker URL."""
        return self._async.broker

    @property
    def queue(self) -> str:
        """The queue the service listens on."""
        return self._async.queue

    @property
    def timeout(self) -> float:
        """The default per-call timeout, in seconds."""
        return self._async.timeout

    def call(self, method: str, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> JSON:
        """Call `method` with positional or named params and return its result."""
        return self._loop.run(self._async.call(method, *args, timeout=timeout, **kwargs))

    def request(self, method: str, params: Params = None, *, timeout: float | None = None) -> JSON:
        """Call `method` with explicit params (a list, a dict or None) and return its result."""
        return self._loop.run(self._async.request(method, params, timeout=timeout))

    def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a notification: the service runs it, nobody waits for a reply."""
        self._loop.run(self._async.notify(method, *args, **kwargs))

    def batch(self, *, timeout: float | None = None) -> Batch:
        """Collect calls to send as one batch: ``with client.batch() as b: ...``."""
        return Batch(self, timeout)

    def describe(self) -> JSON:
        """The service's OpenRPC document (``rpc.discover``)."""
        return self._loop.run(self._async.describe())

    def __getattr__(self, name: str) -> MethodProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        proxy = self.__dict__[name] = MethodProxy(self.call, name)  # found directly next time
        return proxy

    def connect(self) -> None:
        """Connect now rather than on the first call."""
        self._loop.run(self._async._connect())

    def close(self) -> None:
        """Fail the calls in flight, close the connection and stop the background loop."""
        try:
            self._loop.run(self._async.aclose())
        finally:
            self._loop.stop()

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
