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
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .._exceptions import NoWorkers, TransportError
from ._shared import LedgerDelivery, ReplyRouter, UrlOptions, WorkerTransportBase, worker_window
from .admin import AdminTransport, DeadLetter, QueueStatus
from .base import ClientTransport, TraceContext, WorkerOptions


@dataclass(slots=True)
class Message:
    """A message as the memory broker holds it."""

    body: bytes
    reply_to: str | None = None
    correlation_id: str | None = None
    deadline: float | None = None
    delivery_count: int = 1
    sent: float | None = None
    trace: TraceContext | None = None


@dataclass(slots=True)
class Buried:
    """A dead letter as the memory broker keeps it."""

    id: str
    message: Message
    reason: str
    at: float


class _Consumer:
    """A worker attached to a queue: how many messages it holds, and how to hand it more."""

    def __init__(self, transport: MemoryWorkerTransport, limit: int) -> None:
        self.transport = transport
        self.limit = limit
        self.used = 0
        self.reporter = transport.reporter
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
    dead_letters: dict[str, list[Buried]] = field(default_factory=dict)
    _last_seen: dict[str, float] = field(default_factory=dict)
    """When each queue last had a worker attached (monotonic seconds)."""

    def served_within(self, queue: str, window: float) -> bool:
        """Whether a worker serves `queue`, or served it in the last `window` seconds."""
        with self._lock:
            if self._consumers.get(queue):
                return True
            seen = self._last_seen.get(queue)
        return seen is not None and time.monotonic() - seen <= window

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
                self._last_seen[queue] = time.monotonic()

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
        buried = Buried(secrets.token_hex(6), message, reason, time.time())
        with self._lock:
            self.dead_letters.setdefault(queue, []).append(buried)

    def snapshot(self, queue: str) -> tuple[list[Message], list[_Consumer], list[Buried]]:
        """What `queue` holds now: waiting messages, consumers, dead letters (copies)."""
        with self._lock:
            return (
                list(self._queues.get(queue, ())),
                list(self._consumers.get(queue, ())),
                list(self.dead_letters.get(queue, ())),
            )

    def queue_names(self) -> list[str]:
        """Every queue that holds messages, consumers or dead letters."""
        with self._lock:
            names = {name for name, messages in self._queues.items() if messages}
            names |= {name for name, consumers in self._consumers.items() if consumers}
            names |= {name for name, buried in self.dead_letters.items() if buried}
        return sorted(names)

    def unbury(self, queue: str, ids: list[str] | None) -> list[Buried]:
        """Take dead letters out (`ids` None: all of them); those taken."""
        with self._lock:
            kept: list[Buried] = []
            taken: list[Buried] = []
            for buried in self.dead_letters.get(queue, []):
                (taken if ids is None or buried.id in ids else kept).append(buried)
            self.dead_letters[queue] = kept
        return taken

    def forget(self, queue: str) -> None:
        """Remove `queue`'s messages and dead letters."""
        with self._lock:
            self._queues.pop(queue, None)
            self.dead_letters.pop(queue, None)


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
        self.sent = message.sent
        self.trace = message.trace

    @property
    def can_reply(self) -> bool:
        return self.message.reply_to is not None


class MemoryWorkerTransport(WorkerTransportBase[MemoryDelivery]):
    """Takes messages from one queue of an in-process broker."""

    limit_slots = False  # the broker hands a consumer no more than its limit
    settles_at_once = True

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
        options, _ = UrlOptions.split(url, {"worker_window"}, what="memory", strict=True)
        self.worker_window = worker_window(options)
        self._router = ReplyRouter()
        self._address = f"inbox.{secrets.token_hex(8)}"
        self._open = False

    async def connect(self) -> None:
        self.broker.open_inbox(self._address, self._router.resolve)
        self._open = True

    async def request(
        self, queue: str, body: bytes, deadline: float, trace: TraceContext | None = None
    ) -> bytes:
        if not self._open:
            raise TransportError("memory client is closed")
        self._check_served(queue)
        correlation_id, future = self._router.expect(deadline)
        message = Message(body, self._address, correlation_id, deadline, 1, time.time(), trace)
        try:
            self.broker.publish(queue, message)
            return await future
        except BaseException:
            self._router.forget(correlation_id)
            raise

    async def send(
        self, queue: str, body: bytes, deadline: float | None, trace: TraceContext | None = None
    ) -> None:
        if not self._open:
            raise TransportError("memory client is closed")
        self._check_served(queue)
        self.broker.publish(queue, Message(body, deadline=deadline, sent=time.time(), trace=trace))

    def _check_served(self, queue: str) -> None:
        window = self.worker_window
        if window and not self.broker.served_within(queue, window):
            raise NoWorkers(queue, f"none attached in the last {window:g} s (?worker_window=)")

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


class MemoryAdmin(AdminTransport):
    """What operations see of an in-process broker."""

    def __init__(self, url: str) -> None:
        self.broker = broker(url)

    async def connect(self) -> None:
        """Nothing to connect: the broker is in this process."""

    async def aclose(self) -> None:
        """Nothing to close."""

    async def queues(self) -> list[str]:
        return self.broker.queue_names()

    async def status(self, queue: str) -> QueueStatus:
        waiting, consumers, buried = self.broker.snapshot(queue)
        sent = [message.sent for message in waiting if message.sent is not None]
        workers = [c.reporter() for c in consumers if c.reporter is not None]
        return QueueStatus(
            queue=queue,
            depth=len(waiting),
            oldest_wait=time.time() - min(sent) if sent else None,
            in_flight=sum(consumer.used for consumer in consumers),
            dead_letters=len(buried),
            workers=workers,
        )

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        return [_dead_letter(queue, buried) for buried in self.broker.snapshot(queue)[2][:limit]]

    async def replay(self, queue: str, ids: list[str] | None) -> list[DeadLetter]:
        taken = self.broker.unbury(queue, ids)
        for buried in taken:
            message = buried.message
            self.broker.publish(
                queue,
                Message(
                    message.body, message.reply_to, message.correlation_id, message.deadline,
                    1, time.time(), message.trace,
                ),
            )  # fmt: skip
        return [_dead_letter(queue, buried) for buried in taken]

    async def purge(self, queue: str, ids: list[str] | None) -> int:
        return len(self.broker.unbury(queue, ids))

    async def delete_queue(self, queue: str) -> None:
        self.broker.forget(queue)


def _dead_letter(queue: str, buried: Buried) -> DeadLetter:
    message = buried.message
    extra = {"reply_to": message.reply_to} if message.reply_to else {}
    return DeadLetter(
        buried.id, queue, buried.reason, message.delivery_count, buried.at, message.body, extra
    )


def admin_transport(url: str) -> MemoryAdmin:
    """What operations see of the in-process broker `url` names."""
    return MemoryAdmin(url)
