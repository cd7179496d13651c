"""The transport interfaces, and the pieces every transport shares.

A transport moves bytes plus a little metadata (reply address, correlation id, deadline,
delivery count) between clients and workers. It knows nothing of JSON-RPC: the client and
worker layers above it encode and decode, and nothing above this package imports a broker
library.

Client side: `ClientTransport.request` sends one message and waits for the reply to it;
`ClientTransport.send` sends one that wants no reply (`SyncClientTransport` is the same for
blocking callers). Worker side: `WorkerTransport.start`
pushes each `Delivery` to the worker as it arrives, never more unsettled ones than the
worker's concurrency, and the worker settles each exactly once with `Delivery.complete`
(reply, then acknowledge) or `Delivery.dead_letter`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from .._exceptions import CallTimeout, TransportError
from .._protocol import DEFAULT_MAX_MESSAGE_SIZE

logger = logging.getLogger("micromessaging.transport")


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What a worker asks of its transport."""

    queue: str
    concurrency: int = 16
    max_deliveries: int = 3
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE


class Delivery(ABC):
    """One message handed to a worker, to be settled exactly once."""

    body: bytes
    deadline: float | None = None
    """When the caller stops waiting, in seconds since the epoch; None when it never does."""
    delivery_count: int = 1
    """How many times the message has been handed to a worker, this time included."""

    @property
    @abstractmethod
    def can_reply(self) -> bool:
        """Whether the message says where its reply goes."""

    @abstractmethod
    async def complete(self, reply: bytes | None) -> None:
        """Publish the reply (when there is one), then acknowledge the message."""

    @abstractmethod
    async def dead_letter(self, reason: str, reply: bytes | None) -> None:
        """Move the message to the dead-letter queue, and publish `reply` when possible."""


class ClientTransport(ABC):
    """The caller's end: send a message to a queue and wait for its reply."""

    @abstractmethod
    async def connect(self) -> None:
        """Open connections and start listening for replies; `TransportError` on failure."""

    @abstractmethod
    async def request(self, queue: str, body: bytes, deadline: float) -> bytes:
        """Send `body` to `queue` and return the reply's bytes.

        `deadline` is in seconds since the epoch: it travels with the message, so that
        workers can skip a request nobody awaits, and the wait ends there with `CallTimeout`.
        """

    @abstractmethod
    async def send(self, queue: str, body: bytes, deadline: float | None) -> None:
        """Send `body` to `queue` without waiting for any reply."""

    @abstractmethod
    async def aclose(self) -> None:
        """Fail the calls still waiting, and close what `connect` opened."""

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class SyncClientTransport(ABC):
    """The caller's end for blocking code: the same contract as `ClientTransport`.

    Must be safe to use from several threads at once. A transport module offers one with
    ``sync_client_transport(url)`` when doing the I/O on the calling thread saves the cost of
    handing each call to an event loop thread; otherwise the registry wraps its async client.
    """

    @abstractmethod
    def connect(self) -> None:
        """Open connections; `TransportError` on failure."""

    @abstractmethod
    def request(self, queue: str, body: bytes, deadline: float) -> bytes:
        """Send `body` to `queue` and return the reply's bytes; `CallTimeout` at `deadline`."""

    @abstractmethod
    def send(self, queue: str, body: bytes, deadline: float | None) -> None:
        """Send `body` to `queue` without waiting for any reply."""

    @abstractmethod
    def close(self) -> None:
        """Close what `connect` opened; calls still waiting fail with `TransportError`."""


class WorkerTransport(ABC):
    """The worker's end: hand over messages from one queue; replies and acks go by `Delivery`.

    The transport pushes each message to the worker's `deliver` callback as it arrives,
    and holds back once `WorkerOptions.concurrency` messages are unsettled (a prefetch
    limit), so that what this worker can't start yet stays in the broker for other workers.
    It reconnects by itself when the broker goes away.
    """

    @abstractmethod
    async def start(self, deliver: Callable[[Delivery], None]) -> None:
        """Connect, then call `deliver` (on this loop) with each message taken from the queue.

        Raises `TransportError` when the broker can't be reached at start.
        """

    @abstractmethod
    async def stop_receiving(self) -> None:
        """Hand over no more messages; those not handed over stay in the queue."""

    @abstractmethod
    async def aclose(self) -> None:
        """Give back every message handed over but not settled, then disconnect."""

    def describe(self) -> str:
        """A few words on how this transport takes messages, for the worker's start line."""
        return type(self).__name__


class Slots:
    """Counts unsettled deliveries against a limit, for transports that fetch in a loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    @property
    def free(self) -> int:
        """How many more deliveries may be handed over now."""
        return self.limit - self.used

    def take(self, count: int = 1) -> None:
        """Count `count` deliveries as handed over."""
        self.used += count

    def release(self) -> None:
        """Count one delivery as settled."""
        self.used -= 1
        self._freed.set()

    async def wait(self) -> int:
        """Wait until at least one slot is free; how many are."""
        while self.used >= self.limit:
            self._freed.clear()
            await self._freed.wait()
        return self.limit - self.used


class ReplyRouter:
    """Pending calls by correlation id: one future each, resolved by the reply listener.

    Replies with an unknown id (late, duplicated or someone else's) are counted and dropped,
    never handed to another caller. A call's future fails with `CallTimeout` once its
    deadline has passed: one sweep every `SWEEP_INTERVAL` seconds while calls are pending
    costs less than a timer per call. Thread-safe: `resolve` may be called from any thread.
    """

    SWEEP_INTERVAL = 0.05

    def __init__(self) -> None:
        self._pending: dict[str, tuple[asyncio.Future[bytes], float]] = {}
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.unknown_replies = 0

    def __len__(self) -> int:
        return len(self._pending)

    def expect(self, deadline: float) -> tuple[str, asyncio.Future[bytes]]:
        """A new correlation id and the future its reply will resolve by `deadline`."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            self._thread = threading.get_ident()
        correlation_id = f"{self._prefix}.{next(self._counter)}"
        future = loop.create_future()
        self._pending[correlation_id] = (future, deadline)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.SWEEP_INTERVAL, self._sweep)
        return correlation_id, future

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.time()
        expired = [cid for cid, (_, deadline) in self._pending.items() if deadline <= now]
        for correlation_id in expired:
            future = self._pending.pop(correlation_id)[0]
            if not future.done():
                future.set_exception(CallTimeout("no reply before the deadline"))
        if self._pending and self._loop is not None:
            self._sweeper = self._loop.call_later(self.SWEEP_INTERVAL, self._sweep)

    def forget(self, correlation_id: str) -> None:
        """Stop waiting for `correlation_id` (the call failed or was cancelled)."""
        self._pending.pop(correlation_id, None)

    def resolve(self, correlation_id: str | None, body: bytes) -> None:
        """Hand a reply to its caller, from the router's loop or from any other thread."""
        if self._loop is not None and threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.resolve, correlation_id, body)
            return
        entry = self._pending.pop(correlation_id, None) if correlation_id else None
        if entry is None or entry[0].done():
            self.unknown_replies += 1
            logger.debug("dropped a reply for unknown correlation id %r", correlation_id)
            return
        entry[0].set_result(body)

    def fail_all(self, exc: BaseException) -> None:
        """Fail every pending call at once (the connection carrying replies was lost)."""
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(exc)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


def connection_lost(what: str, exc: BaseException | None = None) -> TransportError:
    """The error pending calls fail with when the link carrying their replies breaks."""
    detail = f": {exc}" if exc else ""
    return TransportError(f"connection to {what} lost{detail}")
