"""Redis joins the fault suite; then the faults only Redis shows.

The suite's scenarios run on a redis-server of the test's own (`redis_node`), with a 1 s
heartbeat (``?heartbeat=1``) so that a killed worker's requests are recovered within 1.5 s
instead of the default 15 s. Writes are refused two ways: the node demoted to a replica of
a master nobody runs (READONLY; blocked pops are woken with an error), and a 1-byte
maxmemory with noeviction (OOM).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from micromessaging import AsyncClient, Client, ErrorCode, RemoteError
from micromessaging.transports.redis import RedisSettings, scripts
from micromessaging.transports.redis import wire as wire
from tests.brokers import RedisNode
from tests.transports.test_redis import dead_records

from .service import worker_processes
from .suite import SLACK, FaultSuite, Outcome, check, eventually, outcome_of, serving

pytestmark = pytest.mark.fault

HEARTBEAT = 1.0


class TestRedisFaults(FaultSuite):
    @pytest.fixture
    def node(self, redis_node: RedisNode) -> RedisNode:
        return redis_node

    @pytest.fixture
    def url(self, node: RedisNode) -> str:
        return f"{node.url}?heartbeat={HEARTBEAT:g}"

    @pytest.fixture(params=["readonly", "oom"])
    def write_fault(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    async def stop_broker(self, node: RedisNode) -> None:
        node.kill()  # everything gone: connections, queue, registrations

    async def start_broker(self, node: RedisNode) -> None:
        await asyncio.to_thread(node.start)

    def refusing(
        self, node: RedisNode, fault: str, queue: str
    ) -> AbstractAsyncContextManager[None]:
        @asynccontextmanager
        async def refused() -> AsyncIterator[None]:
            with node.refuse_writes(fault):
                yield

        return refused()

    async def dead_letters(self, node: RedisNode, queue: str) -> list[bytes]:
        records = await dead_records(node.url, queue)
        return [wire.dead_letter_body(orjson.dumps(record)) for record in records]


# --- Redis's own --------------------------------------------------------------------------


def test_default_recovery_bound_is_at_most_30_seconds() -> None:
    assert 1.5 * RedisSettings.from_url("redis://h").heartbeat <= 30
    assert RedisSettings.from_url("redis://h?heartbeat=1").heartbeat == 1


async def test_a_10_mb_message_is_refused_and_the_worker_goes_on(
    redis_node: RedisNode, tmp_path: Path
) -> None:
    url, queue = redis_node.url, "calc"
    with worker_processes(url, queue, tmp_path) as (worker,):
        await serving(worker)
        async with AsyncClient(url, queue, timeout=20) as client:
            with pytest.raises(RemoteError) as caught:
                await client.echo("x" * (10 * 1024 * 1024))
            assert caught.value.code == ErrorCode.MESSAGE_TOO_LARGE
            seed_big = orjson.dumps(
                {"jsonrpc": "2.0", "method": "echo", "params": ["x" * 10_000_000], "id": 1}
            )
            redis_node.call("LPUSH", queue, seed_big)  # seed form: no readable address
            records: list[dict] = []

            async def dead_lettered() -> bool:
                records[:] = await dead_records(url, queue)
                return bool(records)

            await eventually_async(dead_lettered, 10)
            assert "exceeds the limit" in records[0]["reason"]
            assert await client.add(1, 2) == 3
            assert worker.process.poll() is None


async def eventually_async(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """Wait until the coroutine `predicate()` returns true."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def sync_load(client: Client, outcomes: list[Outcome], stop: threading.Event) -> None:
    """The blocking client's own lane: it does its I/O on this thread, not on a loop."""
    i = 0
    while not stop.is_set():
        i += 1
        outcome = asyncio.run(outcome_of(asyncio.to_thread(client.add, 1000, i), 1000 + i))
        outcomes.append(outcome)
        if outcome.failed:
            time.sleep(0.05)


async def test_sync_client_survives_a_restart(redis_node: RedisNode, tmp_path: Path) -> None:
    timeout, queue = 5.0, "calc"
    url = f"{redis_node.url}?heartbeat={HEARTBEAT:g}"
    outcomes: list[Outcome] = []
    stop = threading.Event()
    with worker_processes(url, queue, tmp_path) as (worker,):
        await serving(worker)
        with Client(redis_node.url, queue, timeout=timeout) as client:
            thread = threading.Thread(target=sync_load, args=(client, outcomes, stop))
            thread.start()
            try:
                await eventually(lambda: len(outcomes) > 10, 10)
                redis_node.kill()
                killed = time.monotonic()
                await eventually(lambda: any(o.failed for o in outcomes if o.started > killed))
                await asyncio.to_thread(redis_node.start)
                restarted = time.monotonic()
                await eventually(
                    lambda: sum(not o.failed for o in outcomes if o.started > restarted) > 10, 20
                )
            finally:
                stop.set()
                await asyncio.to_thread(thread.join, timeout + SLACK)
            assert not thread.is_alive()
            assert await asyncio.to_thread(client.add, 20, 23) == 43
    check(outcomes, timeout)


async def test_10000_calls_then_a_clean_stop_leave_only_the_dead_letters(
    redis_node: RedisNode, tmp_path: Path
) -> None:
    queue = "calc"  # our own Redis: every key in it is this test's
    url = f"{redis_node.url}?heartbeat={HEARTBEAT:g}"
    options = ("--concurrency", "32")
    with worker_processes(url, queue, tmp_path, *options, count=2) as procs:
        await serving(*procs)
        async with AsyncClient(redis_node.url, queue, timeout=30) as client:
            for start in range(0, 9000, 1000):
                chunk = range(start, start + 1000)
                assert await asyncio.gather(*(client.add(i, 1) for i in chunk)) == [
                    i + 1 for i in chunk
                ]
            await client.notify("add", 1, 2)

        def sync_calls() -> None:
            with Client(redis_node.url, queue, timeout=30) as sync_client:
                for i in range(9000, 9500):
                    assert sync_client.add(i, 1) == i + 1

        await asyncio.to_thread(sync_calls)
        async with AsyncClient(f"{redis_node.url}?wire=seed", queue, timeout=30) as seed:
            assert await asyncio.gather(*(seed.add(i, 1) for i in range(9500, 10000))) == [
                i + 1 for i in range(9500, 10000)
            ]
        async with aioredis.Redis.from_url(redis_node.url) as redis_client:
            await redis_client.lpush(queue, b"not JSON")  # dead-lettered: no address

            async def dead_lettered() -> bool:
                return bool(await redis_client.exists(wire.dead_letter_key(queue)))

            await eventually_async(dead_lettered, 10)
            for process in procs:
                process.process.send_signal(signal.SIGTERM)
            for process in procs:
                assert await asyncio.to_thread(process.process.wait, 20) == 0
            keys = sorted([k.decode() async for k in redis_client.scan_iter(count=1000)])
            seen_for = await redis_client.pttl(wire.seen_key(queue))
    # No reply, processing or heartbeat keys: the dead letters, the registry of served
    # queues, and the queue's last-seen time, which expires by itself.
    assert keys == sorted([wire.dead_letter_key(queue), wire.QUEUES_KEY, wire.seen_key(queue)])
    assert 0 < seen_for <= scripts.SEEN_KEEP_MS
