"""Who is alive on a queue: a worker's registration and heartbeat, and recovery of the dead.

Each worker registers its id in ``mm:<queue>:workers`` and keeps ``mm:<queue>:heartbeat:<id>``
alive with a TTL (refreshed three times per TTL); the heartbeat holds the worker's record
(`admin.WorkerRecord` as JSON), which ``status`` reads, and each beat moves the queue's
last-seen time (``mm:<queue>:seen``, the no-worker rule of clients) forward. Every live
worker looks, at start and twice per TTL, for registered workers whose heartbeat has
expired and moves their processing lists back to the consume end of the queue, counting a
delivery (one Lua script each, so two live workers can't both do it). A killed worker's
messages are therefore back in the queue at most 1.5 x TTL after its death. (On a Redis
Cluster the keys are ``mm:{<queue>}:...``, ``mm:queues`` aside.)
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster

from . import scripts, wire
from .connection import CONNECTION_ERRORS

logger = logging.getLogger("micromessaging.transport.redis")

RECORD_INTERVAL = 0.5
"""Seconds between two writes of a worker's record prompted by its calls (beats aside)."""


class Liveness:
    """One worker's registration, heartbeat, recovery duty and final give-back."""

    def __init__(
        self,
        redis_client: aioredis.Redis | aiocluster.RedisCluster,
        queue: str,
        worker_id: str,
        heartbeat: float,
        record: Callable[[], bytes],
        cluster: bool = False,
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.heartbeat = heartbeat
        self._record = record
        self._redis = redis_client
        self._cluster = cluster
        self._workers = wire.workers_key(queue, cluster=cluster)
        self._seen = wire.seen_key(queue, cluster=cluster)
        self._beat_script = redis_client.register_script(scripts.BEAT)
        self._give_back_script = redis_client.register_script(
            scripts.with_header_limit(scripts.GIVE_BACK, wire.HEADER_LIMIT)
        )
        self._recover_script = redis_client.register_script(
            scripts.with_header_limit(scripts.RECOVER, wire.HEADER_LIMIT)
        )
        self._chores: list[asyncio.Task[None]] = []
        self._started = False
        self._refresh: asyncio.Task[None] | None = None
        self._written = 0.0

    def _heartbeat(self, worker_id: str) -> str:
        return wire.heartbeat_key(self.queue, worker_id, cluster=self._cluster)

    def _processing(self, worker_id: str) -> str:
        return wire.processing_key(self.queue, worker_id, cluster=self._cluster)

    async def start(self) -> None:
        """Register, recover what dead workers left, then keep both up in the background."""
        await self.beat()
        await self._redis.sadd(wire.QUEUES_KEY, self.queue)
        await self.recover_orphans()
        self._started = True
        self._chores = [
            asyncio.create_task(self._every(self.heartbeat / 3, self.beat)),
            asyncio.create_task(self._every(self.heartbeat / 2, self.recover_dead)),
        ]

    async def stop(self) -> None:
        """Stop the heartbeat and recovery chores (the registration stays until give-back)."""
        self._started = False
        chores = [*self._chores, *([self._refresh] if self._refresh else [])]
        for task in chores:
            task.cancel()
        await asyncio.gather(*chores, return_exceptions=True)
        self._chores = []
        self._refresh = None

    def touch(self) -> None:
        """The worker's record changed (a call settled): write it soon, at most every
        `RECORD_INTERVAL`, so that ``status`` shows counts a moment old, not a beat old."""
        if self._started and self._refresh is None:
            self._refresh = asyncio.create_task(self._write_record())

    async def _write_record(self) -> None:
        try:
            # A task: it runs once the settle that touched it has been counted.
            wait = self._written + RECORD_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._written = time.monotonic()
            await self.beat()
        except CONNECTION_ERRORS as exc:
            logger.debug("writing the record of worker %s failed: %s", self.worker_id, exc)
        finally:
            self._refresh = None

    async def _every(self, period: float, chore: Callable[[], Awaitable[None]]) -> None:
        failing = False
        task = asyncio.current_task()
        while True:
            await asyncio.sleep(period)
            try:
                await chore()
            except CONNECTION_ERRORS as exc:
                if not failing:
                    logger.warning("%r: Redis unreachable: %s", self.queue, exc)
                failing = True
            else:
                failing = False
            if task is not None and task.cancelling():
                # Stopped mid-command, but redis-py's own timeout fired too (the loop was
                # held up): it raised or swallowed our cancellation. Stop all the same.
                raise asyncio.CancelledError

    async def beat(self) -> None:
        """Refresh the heartbeat (our record), registration and the queue's last-seen time;
        warn when we had been taken for dead."""
        dropped = await self._beat_script(
            keys=[self._heartbeat(self.worker_id), self._workers, self._seen],
            args=[int(self.heartbeat * 1000), self.worker_id, self._record()],
        )
        if dropped and self._started:
            logger.warning(
                "worker %s registered again: Redis lost its registration, or it missed its "
                "heartbeats and its messages went to other workers (they may run twice)",
                self.worker_id,
            )

    async def recover_dead(self) -> None:
        """Give back the messages of registered workers whose heartbeat has expired."""
        if self._started:
            await self._redis.sadd(wire.QUEUES_KEY, self.queue)  # made again if deleted
        members = await self._redis.smembers(self._workers)
        ids = [m.decode() if isinstance(m, bytes) else m for m in members]
        others = [worker_id for worker_id in ids if worker_id != self.worker_id]
        if not others:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker_id in others:
                pipe.exists(self._heartbeat(worker_id))
            alive = await pipe.execute()
        for worker_id, exists in zip(others, alive, strict=True):
            if not exists:
                await self.recover(worker_id)

    async def recover_orphans(self) -> None:
        """Also recover processing lists whose worker is no longer registered (at start)."""
        await self.recover_dead()
        prefix = self._processing("")
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        async for key in self._redis.scan_iter(match=pattern, count=500):
            name = key.decode() if isinstance(key, bytes) else key
            worker_id = name[len(prefix) :]
            if worker_id != self.worker_id:
                await self.recover(worker_id)

    async def recover(self, worker_id: str) -> None:
        """Move a worker's messages back to the queue, unless its heartbeat is alive."""
        moved = await self._recover_script(
            keys=[
                self._processing(worker_id),
                self.queue,
                self._heartbeat(worker_id),
                self._workers,
            ],
            args=[worker_id],
        )
        if moved and moved > 0:
            logger.warning(
                "worker %s on %r stopped its heartbeat; gave its %d messages to live workers",
                worker_id,
                self.queue,
                moved,
            )

    async def give_back(self, handed: list[bytes]) -> bool:
        """Return our processing list to the queue and deregister; False when Redis is gone.

        `handed` are the messages the worker was given and did not settle: they may have
        run, so they count a delivery; the others were never started and don't.
        """
        try:
            count = await self._give_back_script(
                keys=[
                    self._processing(self.worker_id),
                    self.queue,
                    self._heartbeat(self.worker_id),
                    self._workers,
                    self._seen,
                ],
                args=[self.worker_id, *handed],
            )
        except CONNECTION_ERRORS as exc:
            logger.warning(
                "could not give back the messages of worker %s (%s); live workers will "
                "recover them once its heartbeat expires",
                self.worker_id,
                exc,
            )
            return False
        if count:
            logger.info("gave back %d unsettled messages to %r", count, self.queue)
        return True
