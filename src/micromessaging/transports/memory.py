"""memory:// - an in-process broker, for tests, the demo and benchmarks.

``memory://`` is the default broker of the process, ``memory://name`` another one. Clients and
workers may run on different event loops and threads; the broker is guarded by one lock and
wakes a receiver on its own loop. It keeps the semantics of a real broker: each message goes
to one worker, messages a worker took and did not settle go back when it closes, and dead
letters are kept for inspection.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .._exceptions import TransportError
from ._shared import LedgerDelivery, ReplyRouter, WorkerTransportBase
from .base import ClientTransport, WorkerOptions


@dataclass(slots=True)
class Message:
    """A message as the memory broker holds it."""

    body: bytes
    reply_to: str | None = None
    correlation_id: str | None = None
    deadline: float | None = None
    delivery_count: int = 1


class _Consumer:
    """A worker attached to a queue: how many messages it holds, and how to hand it more."""

    def __init__(self, transport: MemoryWorkerTransport, limit: int) -> None:
        self.transport = transport
        self.limit = limit
        self.used = 0
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()

    def hand_over(self, message: Message) -> None:
        """Give the consumer a message it has a slot reserved for (called outside the lock)."""
        if threading.get_ident() == self.thread:
            self.transport.arrived(message)
        else:
            self.loop.call_soon_threadsafe(self.transport.arrived, message)


@dataclass
class MemoryBroker:
    """The queues, consumers, reply inboxes and dead letters of one in-process broker."""

    name: str
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _queues: dict[str, deque[Message]] = field(default_factory=dict)
    _consumers: dict[str, list[_Consumer]] = field(default_factory=dict)
    _inboxes: dict[str, Callable[[str | None, bytes], None]] = field(default_factory=dict)
    dead_letters: dict[str, list[tuple[Message, str]]] = field(default_factory=dict)

    def publish(self, queue: str, message: Message, *, front: bool = False) -> None:
        """Hand `message` to a consumer with a free slot, else enqueue it (at the front: next)."""
        with self._lock:
            consumer = self._free_consumer(queue)
            if consumer is None:
                messages = self._queues.setdefault(queue, deque())
                if front:
                    messages.appendleft(message)
                else:
                    messages.append(message)
                return
        consumer.hand_over(message)

    def _free_consumer(self, queue: str) -> _Consumer | None:
        consumers = self._consumers.get(queue)
        if consumers:
            for index, consumer in enumerate(consumers):
                if consumer.used < consumer.limit:
                    consumer.used += 1
                    # Round robin: the next message tries the others first.
                    consumers.append(consumers.pop(index))
                    return consumer
        return None

    def attach(self, queue: str, consumer: _Consumer) -> None:
        """Start handing `queue`'s messages to `consumer`, beginning with those waiting."""
        with self._lock:
            self._consumers.setdefault(queue, []).append(consumer)
        self.settled(queue, consumer, 0)

    def detach(self, queue: str, consumer: _Consumer) -> None:
        """Hand `consumer` nothing more."""
        with self._lock:
            consumers = self._consumers.get(queue, [])
            if consumer in consumers:
                consumers.remove(consumer)

    def settled(self, queue: str, consumer: _Consumer, count: int = 1) -> None:
        """`consumer` settled `count` messages: hand it waiting ones for the freed slots."""
        with self._lock:
            consumer.used -= count
            messages = self._queues.get(queue)
            taken = []
            attached = consumer in self._consumers.get(queue, ())
            while attached and messages and consumer.used < consumer.limit:
                consumer.used += 1
                taken.append(messages.popleft())
        for message in taken:
            consumer.hand_over(message)

    def depth(self, queue: str) -> int:
        """How many messages wait in `queue`."""
        with self._lock:
            return len(self._queues.get(queue, ()))

    def open_inbox(self, address: str, handler: Callable[[str | None, bytes], None]) -> None:
        """Route replies sent to `address` to `handler(correlation_id, body)`."""
        with self._lock:
            self._inboxes[address] = handler

    def close_inbox(self, address: str) -> None:
        """Drop replies sent to `address` from now on."""
        with self._lock:
            self._inboxes.pop(address, None)

    def reply(self, address: str, correlation_id: str | None, body: bytes) -> None:
        """Deliver a reply; it is dropped when its caller has gone."""
        handler = self._inboxes.get(address)
        if handler is not None:
            handler(correlation_id, body)

    def kill(self, queue: str, message: Message, reason: str) -> None:
        """Keep `message` among `queue`'s dead letters."""
        with self._lock:
            self.dead_letters.setdefault(queue, []).append((message, reason))


_brokers: dict[str, MemoryBroker] = {}
_brokers_lock = threading.Lock()


def broker(url: str = "memory://") -> MemoryBroker:
    """The process-wide broker a memory:// URL names."""
    parts = urlsplit(url)
    name = parts.netloc + parts.path
    with _brokers_lock:
        if name not in _brokers:
            _brokers[name] = MemoryBroker(name)
        return _brokers[name]


class MemoryDelivery(LedgerDelivery):
    """A message handed to a memory worker."""

    def __init__(self, transport: MemoryWorkerTransport, message: Message) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.message = message
        self.body = message.body
        self.deadline = message.deadline
        self.delivery_count = message.delivery_count

    @property
    def can_reply(self) -> bool:
        return self.message.reply_to is not None


class MemoryWorkerTransport(WorkerTransportBase[MemoryDelivery]):
    """Takes messages from one queue of an in-process broker."""

    limit_slots = False  # the broker hands a consumer no more than its limit

    def __init__(self, url: str, options: WorkerOptions) -> None:
        super().__init__(options)
        self.broker = broker(url)
        self._consumer: _Consumer | None = None

    async def _open(self) -> None:
        self._consumer = _Consumer(self, self.options.concurrency)
        self.broker.attach(self.queue, self._consumer)

    def arrived(self, message: Message) -> None:
        """A message for this worker (on its loop)."""
        if not self.receiving:
            self._returned(message)  # stopped meanwhile
            return
        self.hand_over(MemoryDelivery(self, message))

    def _returned(self, message: Message) -> None:
        self.broker.publish(self.queue, message, front=True)
        if self._consumer is not None:
            self.broker.settled(self.queue, self._consumer)

    async def _complete(self, delivery: MemoryDelivery, reply: bytes | None) -> None:
        message = delivery.message
        if reply is not None and message.reply_to is not None:
            self.broker.reply(message.reply_to, message.correlation_id, reply)

    async def _bury(self, delivery: MemoryDelivery, reason: str, reply: bytes | None) -> None:
        self.broker.kill(self.queue, delivery.message, reason)
        await self._complete(delivery, reply)

    def _slot_freed(self) -> None:
        if self._consumer is not None:
            self.broker.settled(self.queue, self._consumer)

    async def _stop_taking(self) -> None:
        if self._consumer is not None:
            self.broker.detach(self.queue, self._consumer)

    async def _give_back(self, deliveries: list[MemoryDelivery]) -> None:
        # Handed over and not settled counts as delivered: its worker may have run it.
        for delivery in deliveries:
            delivery.message.delivery_count += 1
            self.broker.publish(self.queue, delivery.message, front=True)

    async def _disconnect(self) -> None:
        self._consumer = None

    def describe(self) -> str:
        return "in-process broker"


class MemoryClientTransport(ClientTransport):
    """Sends to an in-process broker; replies come back through one inbox per client."""

    def __init__(self, url: str) -> None:
        self.broker = broker(url)
        self._router = ReplyRouter()
        self._address = f"inbox.{secrets.token_hex(8)}"
        self._open = False

    async def connect(self) -> None:
        self.broker.open_inbox(self._address, self._router.resolve)
        self._open = True

    async def request(self, queue: str, body: bytes, deadline: float) -> bytes:
        if not self._open:
            raise TransportError("memory client is closed")
        correlation_id, future = self._router.expect(deadline)
        try:
            self.broker.publish(queue, Message(body, self._address, correlation_id, deadline))
            return await future
        except BaseException:
            self._router.forget(correlation_id)
            raise

    async def send(self, queue: str, body: bytes, deadline: float | None) -> None:
        if not self._open:
            raise TransportError("memory client is closed")
        self.broker.publish(queue, Message(body, deadline=deadline))

    async def check(self) -> None:
        if not self._open:
            raise TransportError("memory client is closed")

    async def aclose(self) -> None:
        self._open = False
        self.broker.close_inbox(self._address)
        self._router.fail_all(TransportError("client closed"))


def client_transport(url: str) -> MemoryClientTransport:
    """A client of the in-process broker `url` names."""
    return MemoryClientTransport(url)


def worker_transport(url: str, options: WorkerOptions) -> MemoryWorkerTransport:
    """A worker of the in-process broker `url` names."""
    return MemoryWorkerTransport(url, options)
