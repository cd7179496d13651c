"""A blocking client transport made from an async one, run on an event loop thread.

The fallback for transports without a native `SyncClientTransport`: every call is handed to a
private event loop in a daemon thread, so one connection serves every thread of the program.
It costs two thread wake-ups per call, which a native sync transport avoids.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .base import ClientTransport, SyncClientTransport, TraceContext

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


class ThreadedClientTransport(SyncClientTransport):
    """Runs an async `ClientTransport` on its own event loop thread."""

    def __init__(self, transport: ClientTransport) -> None:
        self._transport = transport
        self._loop = LoopThread()

    def connect(self) -> None:
        self._loop.run(self._transport.connect())

    def request(
        self, queue: str, body: bytes, deadline: float, trace: TraceContext | None = None
    ) -> bytes:
        return self._loop.run(self._transport.request(queue, body, deadline, trace))

    def send(
        self, queue: str, body: bytes, deadline: float | None, trace: TraceContext | None = None
    ) -> None:
        self._loop.run(self._transport.send(queue, body, deadline, trace))

    def close(self) -> None:
        try:
            self._loop.run(self._transport.aclose())
        finally:
            self._loop.stop()
