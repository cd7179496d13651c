"""What operations see and do, on every broker: queues, live workers, dead letters.

A transport module offers ``admin_transport(url)``, an `AdminTransport` that reads what the
broker knows of a queue (its depth, the age of its oldest request, its dead letters) and
what the workers publish about themselves (a `WorkerRecord` each), and that replays or
purges dead letters. ``micromessaging status``, ``micromessaging dead-letters``, the web
console and the bench command's clean-up all go through it; none needs a broker's
management plugin. docs/operations.md documents the JSON forms below, field by field.
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Self

from .._protocol import loads


@dataclass(slots=True)
class WorkerRecord:
    """What one live worker says of itself (Redis: its heartbeat; others: a stats reply)."""

    id: str
    queue: str
    host: str
    pid: int
    concurrency: int
    in_flight: int
    completed: int
    failed: int
    started: float
    """When the worker started, in seconds since the epoch."""
    last_seen: float
    """When this record was written, in seconds since the epoch."""
    transport: str = ""
    version: str = ""

    def to_json(self) -> dict[str, Any]:
        """The record as documented JSON."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerRecord:
        """A record read back from `to_json`'s form (unknown fields are ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(slots=True)
class QueueStatus:
    """One queue as the broker and its workers see it."""

    queue: str
    depth: int | None
    """Requests waiting to be taken; None when the broker can't tell (core NATS)."""
    oldest_wait: float | None
    """Seconds the oldest waiting request has waited; None when unknown or nothing waits."""
    in_flight: int | None
    """Requests taken by workers and not yet settled."""
    dead_letters: int | None
    workers: list[WorkerRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What this broker can't tell, in words (shown by `status`)."""

    def to_json(self) -> dict[str, Any]:
        """The status as documented JSON."""
        data = asdict(self)
        data["workers"] = [worker.to_json() for worker in self.workers]
        return data


@dataclass(slots=True)
class DeadLetter:
    """A request a worker gave up on: why, how often it was delivered, when, and the request."""

    id: str
    """Stable while the record exists: what ``--id`` names."""
    queue: str
    reason: str
    deliveries: int
    at: float
    """When it was dead-lettered, in seconds since the epoch."""
    body: bytes
    """The request as it arrived (JSON-RPC, bytes exactly as sent)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What else the broker kept (headers, the worker's id...)."""

    def request(self) -> Any:
        """The request decoded, or None when it is not JSON."""
        try:
            return loads(self.body)
        except ValueError:
            return None

    def to_json(self) -> dict[str, Any]:
        """The record as documented JSON (the body as text, or base64 when it isn't UTF-8)."""
        data: dict[str, Any] = {
            "id": self.id,
            "queue": self.queue,
            "reason": self.reason,
            "deliveries": self.deliveries,
            "at": self.at,
            "extra": self.extra,
        }
        try:
            data["body"] = self.body.decode()
        except UnicodeDecodeError:
            data["body_base64"] = base64.b64encode(self.body).decode()
        return data


class AdminTransport(ABC):
    """A broker seen by an operator: statuses, workers and dead letters of its queues."""

    @abstractmethod
    async def connect(self) -> None:
        """Open connections; `TransportError` when the broker can't be reached."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close what `connect` opened."""

    @abstractmethod
    async def queues(self) -> list[str]:
        """The queues this broker serves or holds requests for (sorted)."""

    @abstractmethod
    async def status(self, queue: str) -> QueueStatus:
        """`queue`'s depth, oldest wait, in flight, dead letters and live workers."""

    @abstractmethod
    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The oldest `limit` dead letters of `queue` (left in place)."""

    @abstractmethod
    async def replay(self, queue: str, ids: list[str] | None) -> list[DeadLetter]:
        """Put dead letters back on their queue with a fresh delivery count; the replayed.

        `ids` None: all of them. The caller learns nothing new (its deadline has passed,
        unless it still waits): the request simply runs again.
        """

    @abstractmethod
    async def purge(self, queue: str, ids: list[str] | None) -> int:
        """Delete dead letters (`ids` None: all); how many went."""

    @abstractmethod
    async def delete_queue(self, queue: str) -> None:
        """Remove everything the broker keeps for `queue` (requests, dead letters, state)."""

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
