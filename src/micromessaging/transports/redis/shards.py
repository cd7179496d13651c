"""One queue spread over several lists (``?shards=N``): a worker that takes from all of them.

On a Redis Cluster a queue lives on the master of its slot; a hot queue spread over N lists
(`wire.shard_queue`: the queue itself, then ``<queue>:shard:1`` ...) lives in N slots, so on
up to N masters. Clients push to the shards in turn (`calls.Spreader`). A worker serves them
all: one `RedisWorkerTransport` per shard, each an ordinary worker of its list (its own
processing list, heartbeat and recovery, in that shard's slot), sharing the worker's
concurrency between them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable

from ..admin import WorkerRecord
from ..base import Delivery, WorkerOptions, WorkerTransport
from . import wire
from .connection import RedisSettings
from .worker import RedisWorkerTransport


class ShardedWorkerTransport(WorkerTransport):
    """Takes from every shard of one queue; each message settles through its own shard."""

    def __init__(self, settings: RedisSettings, options: WorkerOptions) -> None:
        count = settings.shards
        share = max(1, math.ceil(options.concurrency / count))
        self.shards = [
            RedisWorkerTransport(
                settings,
                dataclasses.replace(
                    options, queue=wire.shard_queue(options.queue, shard), concurrency=share
                ),
            )
            for shard in range(count)
        ]
        self._reporter: Callable[[], WorkerRecord] | None = None

    @property
    def reporter(self) -> Callable[[], WorkerRecord] | None:
        """What the worker says of itself, published by every shard."""
        return self._reporter

    @reporter.setter
    def reporter(self, reporter: Callable[[], WorkerRecord] | None) -> None:
        self._reporter = reporter
        for shard in self.shards:
            shard.reporter = reporter

    async def start(self, deliver: Callable[[Delivery], None]) -> None:
        started: list[RedisWorkerTransport] = []
        try:
            for shard in self.shards:
                await shard.start(deliver)
                started.append(shard)
        except BaseException:
            await asyncio.gather(*(shard.aclose() for shard in started), return_exceptions=True)
            raise

    async def stop_receiving(self) -> None:
        await asyncio.gather(*(shard.stop_receiving() for shard in self.shards))

    async def aclose(self) -> None:
        results = await asyncio.gather(
            *(shard.aclose() for shard in self.shards), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def describe(self) -> str:
        first = self.shards[0].describe()
        return f"{first}, and {len(self.shards) - 1} more shards of the queue"
