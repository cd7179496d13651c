"""One status snapshot at a time, shared by every open page: what keeps the console light.

Pages poll ``GET api/status`` as often as they like; each gets the latest snapshot, encoded
once. A background task takes a new one every `interval` seconds (the queue list, then
each queue's status: 1 + queues admin queries), but only while some page asked within
`idle_after` seconds: no page open, no query. A page coming back after that waits for a
fresh snapshot rather than seeing an old one. So the broker sees the same queries for one
page as for a hundred.

Calls/s come from the workers' `completed` counters: each worker's count and the time its
record was written are kept between snapshots, and the rate is the difference of counts
over the difference of times (Redis rewrites a record with each heartbeat, not at every
snapshot: a record not rewritten since keeps the rate it had).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .._exceptions import ConfigurationError, MicromessagingError
from .._settings import mask_password
from ..transports.admin import AdminTransport, QueueStatus, WorkerRecord

logger = logging.getLogger("micromessaging.console")

MIN_WINDOW = 0.5
"""Seconds of a worker's counter needed for a rate: shorter windows say more of noise."""
REFRESH_TIMEOUT = 10.0
"""Seconds a snapshot may take before the broker is reported as not answering."""


@dataclass(frozen=True, slots=True)
class Sample:
    """A worker's completed count at the time its record was written, and its rate then."""

    completed: int
    last_seen: float
    rate: float | None


def sample(previous: Sample | None, record: WorkerRecord) -> Sample:
    """The worker's new sample, given the one the previous snapshot kept (None: first seen)."""
    if previous is None or record.completed < previous.completed:
        return Sample(record.completed, record.last_seen, None)
    elapsed = record.last_seen - previous.last_seen
    if elapsed < MIN_WINDOW:
        return previous  # not rewritten since (or barely): the rate stands
    rate = (record.completed - previous.completed) / elapsed
    return Sample(record.completed, record.last_seen, rate)


class StatusFeed:
    """The latest snapshot of every queue and its workers, refreshed while pages watch."""

    def __init__(
        self,
        open_admin: Callable[[], AdminTransport],
        broker: str,
        *,
        interval: float = 1.0,
        idle_after: float | None = None,
    ) -> None:
        self._open_admin = open_admin
        self.broker = mask_password(broker)
        self.interval = interval
        self.idle_after = max(5.0, 3 * interval) if idle_after is None else idle_after
        self.generation = 0
        """How many snapshots were taken: what tests and pages tell them apart by."""
        self._admin: AdminTransport | None = None
        self._connecting: asyncio.Lock | None = None
        self._samples: dict[tuple[str, str], Sample] = {}
        self._body: bytes | None = None
        self._shown: list[dict[str, Any]] = []
        self._asked = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._refreshed: asyncio.Event | None = None

    @property
    def watched(self) -> bool:
        """Whether snapshots are being taken (some page asked lately)."""
        return self._task is not None and not self._task.done()

    async def latest(self) -> bytes:
        """The latest snapshot as JSON; a fresh one when nobody watched until now."""
        self._asked = time.monotonic()
        refreshed = self._refreshed = self._refreshed or asyncio.Event()
        if not self.watched:
            # Nobody watched lately: what is kept is old, so this page waits for a new one.
            self._task = asyncio.create_task(self._run(), name="console status feed")
            await refreshed.wait()
        elif self._body is None:
            await refreshed.wait()
        assert self._body is not None
        return self._body

    def refresh_soon(self) -> None:
        """Take the next snapshot now (after a replay or a purge), not at the next tick."""
        if self._wake is not None:
            self._wake.set()

    async def aclose(self) -> None:
        """Stop taking snapshots and close the admin connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.aclose()

    async def _run(self) -> None:
        wake = self._wake = asyncio.Event()
        while time.monotonic() - self._asked < self.idle_after:
            wake.clear()
            await self._refresh()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await wake.wait()

    async def _refresh(self) -> None:
        error: str | None = None
        statuses: list[QueueStatus] = []
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT):
                admin = await self.admin()
                names = await admin.queues()
                statuses = list(await asyncio.gather(*(admin.status(name) for name in names)))
        except TimeoutError:
            error = f"the broker did not answer within {REFRESH_TIMEOUT:g}s"
        except MicromessagingError as exc:
            error = str(exc)
            if not isinstance(exc, ConfigurationError):
                await self._disconnect()  # the next snapshot connects afresh
        except Exception as exc:  # a bug in an admin side must not leave pages waiting
            logger.exception("console status: the admin side failed")
            error = f"{type(exc).__name__}: {exc}"
            await self._disconnect()
        if error is not None:
            logger.warning("console status: %s", error)
        self.generation += 1
        self._body = orjson.dumps(self._document(statuses, error))
        refreshed, self._refreshed = self._refreshed, asyncio.Event()
        if refreshed is not None:
            refreshed.set()

    async def admin(self) -> AdminTransport:
        """The connected admin side the snapshots use (the console's dead letters share it)."""
        if self._admin is not None:
            return self._admin
        self._connecting = self._connecting or asyncio.Lock()
        async with self._connecting:
            if self._admin is None:
                admin = self._open_admin()
                try:
                    await admin.connect()
                except BaseException:
                    await admin.aclose()
                    raise
                self._admin = admin
        return self._admin

    async def _disconnect(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(MicromessagingError):
                await admin.aclose()

    def _document(self, statuses: list[QueueStatus], error: str | None) -> dict[str, Any]:
        samples: dict[tuple[str, str], Sample] = {}
        queues = []
        for status in statuses:
            shown = status.to_json()
            rates = []
            for record, worker in zip(status.workers, shown["workers"], strict=True):
                key = (status.queue, record.id)
                samples[key] = sample(self._samples.get(key), record)
                worker["calls_per_second"] = samples[key].rate
                if samples[key].rate is not None:
                    rates.append(samples[key].rate)
            shown["calls_per_second"] = sum(rates) if rates else None
            queues.append(shown)
        if error is None:
            self._samples, self._shown = samples, queues
        else:
            queues = self._shown  # the last good figures, under the error
        return {
            "broker": self.broker,
            "at": time.time(),
            "generation": self.generation,
            "interval": self.interval,
            "error": error,
            "queues": queues,
        }
