"""What operations see of an HTTP worker: its own record, read from ``GET <prefix>/_mm/status``.

HTTP has no broker, so there is no queue to measure and no dead-letter store: depth, oldest
wait and dead letters are unknown (None), replay and purge find nothing. What there is, the
worker says of itself. Several worker processes may share one port (``SO_REUSEPORT``) and
the kernel picks one per connection, so the status is asked on several fresh connections
at once and the distinct records kept: a worker may be missed, rarely, never counted twice.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import orjson

from ..admin import AdminTransport, DeadLetter, QueueStatus, WorkerRecord
from .pool import ConnectionPool
from .wire import ClientSettings
from .worker import STATUS_PATH

PROBES = 8
"""Fresh connections each status opens: with two processes on the port, both answer but once
in 128 statuses."""
PROBE_TIMEOUT = 3.0
"""Seconds a worker has to answer its status."""
MAX_STATUS_BYTES = 64 * 1024

NO_QUEUE = "HTTP has no queue: requests wait in the worker itself, for a free slot"
NO_DEAD_LETTERS = "HTTP keeps no dead letters: they are logged by the worker and answered"


class _Answer:
    """What one probe learnt: the queue served and the worker's record, or why not."""

    def __init__(
        self, queue: str | None = None, record: WorkerRecord | None = None, problem: str = ""
    ):
        self.queue = queue
        self.record = record
        self.problem = problem


class HttpAdmin(AdminTransport):
    """The status an HTTP worker gives of itself; no queue, no dead letters."""

    def __init__(self, url: str) -> None:
        self.settings = settings = ClientSettings.from_url(url)
        parts = urlsplit(settings.base_url)
        self._https, self._host, self._port, _ = settings.endpoint
        self._request = (
            f"GET {parts.path}{STATUS_PATH} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
            "accept: application/json\r\nconnection: close\r\n\r\n"
        ).encode()
        self._ssl: ssl.SSLContext | None = None

    async def connect(self) -> None:
        """Nothing to open: each status asks on fresh connections."""
        if self._https:
            self._ssl = self.settings.ssl_context()

    async def aclose(self) -> None:
        """Nothing stays open."""

    async def _probe(self) -> _Answer:
        pool = ConnectionPool(
            self._host,
            self._port,
            size=1,
            ssl_context=self._ssl,
            keep_alive=0.0,
            max_body=MAX_STATUS_BYTES,
        )
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                status, _, body = await pool.request(self._request)
        except ConnectionRefusedError:
            return _Answer(problem=f"nothing listens at {self.settings.base_url}: no worker")
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            return _Answer(problem=f"{self.settings.base_url} does not answer: {exc!r}")
        finally:
            pool.close()
        if status != 200:
            where = f"{self.settings.base_url}{STATUS_PATH}"
            return _Answer(problem=f"{where} answered HTTP {status}: not a micromessaging worker")
        try:
            data = orjson.loads(body)
            queue = data["queue"]
            worker = data["worker"]
            record = WorkerRecord.from_json(worker) if worker is not None else None
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return _Answer(problem=f"an unreadable status from {self.settings.base_url}: {exc}")
        return _Answer(str(queue), record)

    async def _ask(self) -> list[_Answer]:
        return list(await asyncio.gather(*(self._probe() for _ in range(PROBES))))

    async def queues(self) -> list[str]:
        """The queue the worker at the URL serves (none when nothing listens)."""
        return sorted({answer.queue for answer in await self._ask() if answer.queue is not None})

    async def status(self, queue: str) -> QueueStatus:
        """The records of the workers answering at the URL for `queue`."""
        answers = await self._ask()
        records: dict[str, WorkerRecord] = {}
        notes: list[str] = []
        for answer in answers:
            if answer.queue is not None and answer.queue != queue:
                note = f"{self.settings.base_url} serves queue {answer.queue!r}, not {queue!r}"
            elif answer.record is not None:
                records[answer.record.id] = answer.record
                continue
            else:
                note = answer.problem
            if note and note not in notes:
                notes.append(note)
        workers = sorted(records.values(), key=lambda record: record.id)
        return QueueStatus(
            queue=queue,
            depth=None,
            oldest_wait=None,
            in_flight=sum(record.in_flight for record in workers) if workers else None,
            dead_letters=None,
            workers=workers,
            notes=[NO_QUEUE, NO_DEAD_LETTERS, *notes],
        )

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """None are kept over HTTP."""
        return []

    async def replay(self, queue: str, ids: list[str] | None) -> list[DeadLetter]:
        """Nothing to replay: HTTP keeps no dead letters."""
        return []

    async def purge(self, queue: str, ids: list[str] | None) -> int:
        """Nothing to purge: HTTP keeps no dead letters."""
        return 0

    async def delete_queue(self, queue: str) -> None:
        """Nothing to delete: there is no queue."""


def admin_transport(url: str) -> HttpAdmin:
    """What operations see of the HTTP worker at `url`."""
    return HttpAdmin(url)


__all__ = ["HttpAdmin", "admin_transport"]
