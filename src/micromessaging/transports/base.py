"""The transport interfaces (what every transport shares is in `_shared`).

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

import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Self

from .._protocol import DEFAULT_MAX_MESSAGE_SIZE

if TYPE_CHECKING:
    from .admin import WorkerRecord


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What a worker asks of its transport."""

    queue: str
    concurrency: int = 16
    max_deliveries: int = 3
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    worker_id: str = field(default_factory=lambda: f"worker-{secrets.token_hex(4)}")
    """The worker's id, as its records and the broker's bookkeeping name it."""


TraceContext = Mapping[str, str]
"""W3C trace context (``traceparent``, ``tracestate``) travelling with a request."""


class Delivery(ABC):
    """One message handed to a worker, to be settled exactly once."""

    body: bytes
    deadline: float | None = None
    """When the caller stops waiting, in seconds since the epoch; None when it never does."""
    delivery_count: int = 1
    """How many times the message has been handed to a worker, this time included."""
    sent: float | None = None
    """When the client sent it, in seconds since the epoch; None when the wire has no time."""
    trace: TraceContext | None = None
    """The caller's trace context, when the wire carried one."""
    arrived_alone: bool = False
    """Whether the transport took it by itself (the last message of its read, a blocking
    take of one): then a worker with nothing else in flight may answer it in the task that
    took it, where a task of its own would cost a turn of the event loop (one call after
    another)."""

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
    async def request(
        self, queue: str, body: bytes, deadline: float, trace: TraceContext | None = None
    ) -> bytes:
        """Send `body` to `queue` and return the reply's bytes.

        `deadline` is in seconds since the epoch: it travels with the message, so that
        workers can skip a request nobody awaits, and the wait ends there with `CallTimeout`.
        `trace` (W3C trace context) travels with it too; the transport also stamps the
        time it sent the message, so that workers can tell queue wait from execution.
        """

    @abstractmethod
    async def send(
        self, queue: str, body: bytes, deadline: float | None, trace: TraceContext | None = None
    ) -> None:
        """Send `body` to `queue` without waiting for any reply."""

    @abstractmethod
    async def check(self) -> None:
        """Raise `TransportError` unless the broker answers a round trip now (health checks)."""

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
    def request(
        self, queue: str, body: bytes, deadline: float, trace: TraceContext | None = None
    ) -> bytes:
        """Send `body` to `queue` and return the reply's bytes; `CallTimeout` at `deadline`."""

    @abstractmethod
    def send(
        self, queue: str, body: bytes, deadline: float | None, trace: TraceContext | None = None
    ) -> None:
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

    reporter: Callable[[], WorkerRecord] | None = None
    """What the worker says of itself; the transport publishes it where `status` reads it."""

    settles_at_once = False
    """True when settling a delivery normally waits for nothing (the reply and the ack are
    only buffered for the socket): the worker may then run calls that need no waiting one
    after another in one task, instead of one task each."""

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
