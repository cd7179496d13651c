"""What the hostile-input tests share: a service that measures its own concurrency, a worker
bounded in time, and snapshots of a whole Redis keyspace to show that nothing else changed.

Each Redis test module runs its own redis-server (`RedisNode` from tests/brokers.py),
so that a snapshot of the keyspace is the test's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from micromessaging import AsyncClient, Worker


class Gauge:
    """The service under attack: `hold` runs are counted, to show full concurrency is back."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.ran: list[object] = []

    def add(self, a: float, b: float) -> float:
        return a + b

    def echo(self, value: object) -> object:
        return value

    def record(self, value: object) -> None:
        self.ran.append(value)

    async def hold(self, seconds: float) -> int:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.running -= 1
        return self.most


@contextlib.asynccontextmanager
async def serving(
    service: object, url: str, queue: str, **options: object
) -> AsyncIterator[Worker]:
    """`async with Worker(...)`, its start and stop bounded so that no test can hang."""
    worker = Worker(service, url, queue, **options)  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(worker.__aenter__(), 15)
    except BaseException:
        if worker._runner is not None:
            worker._runner.cancel()
        raise
    try:
        yield worker
    finally:
        await asyncio.wait_for(worker.__aexit__(None, None, None), worker.grace + 15)


async def assert_full_concurrency(client: AsyncClient, gauge: Gauge, concurrency: int) -> None:
    """`concurrency` slow calls all run at once: no slot was lost to what came before."""
    gauge.most = 0
    results = await asyncio.gather(*(client.hold(0.3) for _ in range(concurrency)))
    assert gauge.most == concurrency, (gauge.most, results)


async def eventually(predicate, timeout: float = 10.0) -> None:
    """Wait until `predicate()` (sync or async) is true, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


Snapshot = dict[bytes, tuple[bytes, bool, bytes]]


async def keyspace(redis_client: aioredis.Redis, *, skip: tuple[bytes, ...] = ()) -> Snapshot:
    """Every key: its type, whether it expires, and its value (DUMP), but those under `skip`."""
    found: Snapshot = {}
    async for key in redis_client.scan_iter(count=1000):
        if key.startswith(skip):
            continue
        kind = await redis_client.type(key)
        expires = await redis_client.pttl(key) >= 0
        found[key] = (kind, expires, await redis_client.dump(key) or b"")
    return found


def queue_prefixes(queue: str) -> tuple[bytes, ...]:
    """The keys a queue's own traffic writes: the queue, its dead letters, its mm: keys."""
    return (queue.encode(), f"mm:{queue}:".encode())
