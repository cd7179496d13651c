"""Redis under faults: workers killed with -9 or stopped with SIGTERM, Redis restarted.

Workers are real processes (``python -m micromessaging worker``) serving `FaultService`
below, with a 1 s heartbeat (``?heartbeat=1``) so that a killed worker's requests are
recovered within 1.5 s instead of the default 15 s. Tests that restart Redis, or count every
key it holds, run a redis-server of their own (`RedisServer`: own port, own temp dir);
the others use the shared Redis with a unique queue name and delete their keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from micromessaging import AsyncClient, CallTimeout, Client, ErrorCode, RemoteError, TransportError
from micromessaging.transports.redis import RedisSettings
from micromessaging.transports.redis import wire as wire
from tests.brokers import RedisNode
from tests.transports.contract import eventually
from tests.transports.test_redis import dead_records, delete_queue, queue_keys

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT = 1.0
RECOVERY_BOUND = 1.5 * HEARTBEAT
"""How long after a worker's death its requests are back in the queue, at most."""

pytestmark = [
    pytest.mark.fault,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is missing"),
]


class FaultService:
    """Served by worker subprocesses; records each execution in $MM_FAULT_LOG."""

    def _record(self, what: object) -> None:
        with open(os.environ["MM_FAULT_LOG"], "a") as log:
            log.write(f"{os.getpid()} {orjson.dumps(what).decode()}\n")

    async def slow_add(self, a: int, b: int, seconds: float) -> int:
        self._record(a)
        await asyncio.sleep(seconds)
        return a + b

    def crash(self) -> None:
        self._record("crash")
        os.kill(os.getpid(), signal.SIGKILL)

    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, value: object) -> object:
        return value


def executions(log: Path) -> list[tuple[int, object]]:
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    return [(int(pid), orjson.loads(what)) for pid, what in (line.split(" ", 1) for line in lines)]


@contextlib.contextmanager
def workers(
    url: str, queue: str, log: Path, *options: str, count: int = 1
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes on `queue`, always killed (with their children) at the end."""
    command = [
        sys.executable, "-m", "micromessaging", "worker",
        "tests.fault.test_redis_faults:FaultService",
        "--broker", url, "--queue", queue, "--log-level", "error", *options,
    ]  # fmt: skip
    env = {**os.environ, "MM_FAULT_LOG": str(log)}
    processes = []
    try:
        for _ in range(count):
            processes.append(subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True))
        yield processes
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def registered(url: str, queue: str, count: int, timeout: float = 30) -> set[str]:
    """Wait until `count` workers are registered on `queue`; their ids."""
    client = aioredis.Redis.from_url(url, socket_timeout=5)
    try:
        deadline = time.monotonic() + timeout
        while True:
            ids = {m.decode() for m in await client.smembers(wire.workers_key(queue))}
            if len(ids) >= count:
                return ids
            assert time.monotonic() < deadline, f"{count} workers never registered"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[str]:
    name = f"mm-fault-{uuid.uuid4().hex[:12]}"
    yield name
    await asyncio.wait_for(delete_queue(redis_url, name), 10)


def test_default_recovery_bound_is_at_most_30_seconds() -> None:
    assert 1.5 * RedisSettings.from_url("redis://h").heartbeat <= 30
    assert RedisSettings.from_url("redis://h?heartbeat=1").heartbeat == 1


# --- workers killed, stopped, crashed -----------------------------------------------------------


async def test_kill_9_with_1000_calls_in_flight_across_two_workers(
    queue: str, tmp_path: Path, redis_url: str
) -> None:
    log = tmp_path / "executions"
    url = f"{redis_url}?heartbeat={HEARTBEAT:g}"
    with workers(url, queue, log, "--concurrency", "32", count=2) as (victim, survivor):
        ids = await registered(redis_url, queue, 2)
        [victim_id] = [i for i in ids if f".{victim.pid}." in i]
        processing = wire.processing_key(queue, victim_id)
        async with (
            AsyncClient(redis_url, queue, timeout=60) as client,
            aioredis.Redis.from_url(redis_url, socket_timeout=5) as redis_client,
        ):
            calls = [asyncio.create_task(client.slow_add(i, 1, 0.02)) for i in range(1000)]
            await eventually(lambda: sum(call.done() for call in calls) >= 200, 30)
            held = await redis_client.llen(processing)
            victim.kill()  # SIGKILL: no goodbye, its processing list stays behind
            killed = time.monotonic()
            while await redis_client.exists(processing):
                assert time.monotonic() - killed < RECOVERY_BOUND + 1.5, "not recovered"
                await asyncio.sleep(0.02)
            recovered = time.monotonic() - killed
            results = await asyncio.wait_for(asyncio.gather(*calls), 60)
            assert survivor.poll() is None
            duplicates = client._transport._router.unknown_replies  # type: ignore[union-attr]
            assert not await redis_client.sismember(wire.workers_key(queue), victim_id)
        assert results == [i + 1 for i in range(1000)]  # each call: one correct answer
        assert duplicates == 0  # and no call was answered twice
    assert held > 0
    assert recovered < RECOVERY_BOUND + 1.5
    ran = executions(log)
    by_victim = {what for pid, what in ran if pid == victim.pid}
    by_survivor = {what for pid, what in ran if pid == survivor.pid}
    assert by_victim and by_victim | by_survivor == set(range(1000))
    # What the victim held when it died was delivered again, and answered by the survivor.
    assert by_victim & by_survivor


async def test_sigterm_finishes_calls_in_flight_and_gives_back_the_rest(
    queue: str, tmp_path: Path, redis_url: str
) -> None:
    log = tmp_path / "executions"
    url = f"{redis_url}?heartbeat={HEARTBEAT:g}"
    with workers(url, queue, log, "--concurrency", "4") as (worker,):
        await registered(redis_url, queue, 1)
        async with AsyncClient(redis_url, queue, timeout=30) as client:
            calls = [asyncio.create_task(client.slow_add(i, 1, 1.0)) for i in range(10)]
            await eventually(lambda: len(executions(log)) == 4, 10)
            worker.send_signal(signal.SIGTERM)
            started = [what for _, what in executions(log)]
            assert await asyncio.to_thread(worker.wait, 20) == 0
            for i in started:  # in flight: finished and answered before the exit
                assert calls[i].done() and calls[i].result() == i + 1
            assert await queue_keys(redis_url, queue) == [queue]  # nothing but the queue
            async with aioredis.Redis.from_url(redis_url) as redis_client:
                assert await redis_client.llen(queue) == 6  # the rest went back, or stayed
            with workers(url, queue, log) as _:  # another worker answers them later
                results = await asyncio.wait_for(asyncio.gather(*calls), 20)
            assert results == [i + 1 for i in range(10)]
    assert sorted(what for _, what in executions(log)) == list(range(10))  # each ran once


async def test_a_request_that_kills_its_workers_is_dead_lettered_and_answered(
    queue: str, tmp_path: Path, redis_url: str
) -> None:
    log = tmp_path / "executions"
    url = f"{redis_url}?heartbeat={HEARTBEAT:g}"
    options = ("--processes", "2", "--max-deliveries", "3")
    with workers(url, queue, log, *options):
        await registered(redis_url, queue, 2)
        async with AsyncClient(redis_url, queue, timeout=60) as client:
            started = time.monotonic()
            with pytest.raises(RemoteError) as caught:
                await client.crash()
            assert caught.value.code == ErrorCode.DELIVERY_LIMIT  # an error, not a timeout
            assert time.monotonic() - started < 3 * (RECOVERY_BOUND + 2)
            assert await client.add(2, 3) == 5
    assert [what for _, what in executions(log)] == ["crash"] * 3
    (record,) = await dead_records(redis_url, queue)
    assert orjson.loads(record["body"])["method"] == "crash"
    assert record["header"]["n"] == 4


async def test_a_10_mb_message_is_refused_and_the_worker_goes_on(
    queue: str, tmp_path: Path, redis_url: str
) -> None:
    log = tmp_path / "executions"
    with workers(redis_url, queue, log) as (worker,):
        await registered(redis_url, queue, 1)
        async with AsyncClient(redis_url, queue, timeout=20) as client:
            with pytest.raises(RemoteError) as caught:
                await client.echo("x" * (10 * 1024 * 1024))
            assert caught.value.code == ErrorCode.MESSAGE_TOO_LARGE
            async with aioredis.Redis.from_url(redis_url) as redis_client:
                seed_big = orjson.dumps(
                    {"jsonrpc": "2.0", "method": "echo", "params": ["x" * 10_000_000], "id": 1}
                )
                await redis_client.lpush(queue, seed_big)  # seed form: no readable address
            records = []
            for _ in range(200):
                records = await dead_records(redis_url, queue)
                if records:
                    break
                await asyncio.sleep(0.05)
            assert "exceeds the limit" in records[0]["reason"]
            assert await client.add(1, 2) == 3
            assert worker.poll() is None


# --- Redis restarted; nothing left behind ----------------------------------------------------


class Outcomes:
    """What happened to each call of a steady load: when it started, how long, the outcome."""

    def __init__(self) -> None:
        self.results: list[tuple[float, float, object]] = []
        self.lock = threading.Lock()

    def add(self, started: float, outcome: object) -> None:
        with self.lock:
            self.results.append((started, time.monotonic() - started, outcome))

    def since(self, moment: float) -> list[object]:
        with self.lock:
            return [outcome for started, _, outcome in self.results if started >= moment]

    def successes_since(self, moment: float) -> int:
        return sum(not isinstance(o, Exception) for o in self.since(moment))


async def async_load(client: AsyncClient, outcomes: Outcomes, stop: asyncio.Event) -> None:
    async def lane(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            started = time.monotonic()
            try:
                outcome: object = await client.add(n, i)
                assert outcome == n + i
            except (TransportError, CallTimeout) as exc:
                outcome = exc
                await asyncio.sleep(0.05)
            outcomes.add(started, outcome)

    await asyncio.gather(*(lane(n) for n in range(8)))


def sync_load(client: Client, outcomes: Outcomes, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        started = time.monotonic()
        try:
            outcome: object = client.add(1000, i)
            assert outcome == 1000 + i
        except (TransportError, CallTimeout) as exc:
            outcome = exc
            time.sleep(0.05)
        outcomes.add(started, outcome)


async def test_redis_restart_under_load(queue: str, tmp_path: Path) -> None:
    timeout = 5.0
    server = RedisNode(base=tmp_path)
    outcomes, sync_outcomes = Outcomes(), Outcomes()
    stop, sync_stop = asyncio.Event(), threading.Event()
    try:
        server.start()
        url = f"{server.url}?heartbeat={HEARTBEAT:g}"
        with workers(url, queue, tmp_path / "log", "--concurrency", "8") as (worker,):
            await registered(server.url, queue, 1)
            async with AsyncClient(server.url, queue, timeout=timeout) as client:
                with Client(server.url, queue, timeout=timeout) as sync_client:
                    load = asyncio.create_task(async_load(client, outcomes, stop))
                    sync_thread = threading.Thread(
                        target=sync_load, args=(sync_client, sync_outcomes, sync_stop)
                    )
                    sync_thread.start()
                    try:
                        await eventually(lambda: len(outcomes.results) > 50, 10)
                        await eventually(lambda: len(sync_outcomes.results) > 10, 10)
                        server.kill()  # everything gone: connections, queue, registrations
                        await asyncio.sleep(1.0)
                        await asyncio.to_thread(server.start)
                        restarted = time.monotonic()
                        # Both ends reconnect by themselves and go on.
                        await eventually(lambda: outcomes.successes_since(restarted) > 50, 20)
                        await eventually(lambda: sync_outcomes.successes_since(restarted) > 10, 20)
                    finally:
                        stop.set()
                        sync_stop.set()
                        await asyncio.wait_for(load, timeout + 5)
                        await asyncio.to_thread(sync_thread.join, timeout + 5)
                    assert not sync_thread.is_alive()
                    assert await client.add(20, 22) == 42
                    assert await asyncio.to_thread(sync_client.add, 20, 23) == 43
            assert worker.poll() is None
    finally:
        server.close()
    for results in (outcomes.results, sync_outcomes.results):
        took = [took for _, took, _ in results]
        errors = [o for _, _, o in results if isinstance(o, Exception)]
        assert max(took) < timeout + 1  # nothing hung past its timeout
        assert errors, "the outage went unnoticed?"
        assert all(isinstance(e, TransportError | CallTimeout) for e in errors)


async def test_10000_calls_then_a_clean_stop_leave_only_the_queues(tmp_path: Path) -> None:
    queue = "calc"  # our own Redis: every key in it is this test's
    with RedisNode(base=tmp_path) as server:
        url = f"{server.url}?heartbeat={HEARTBEAT:g}"
        with workers(url, queue, tmp_path / "log", "--concurrency", "32", count=2) as procs:
            await registered(server.url, queue, 2)
            async with AsyncClient(server.url, queue, timeout=30) as client:
                for start in range(0, 9000, 1000):
                    chunk = range(start, start + 1000)
                    assert await asyncio.gather(*(client.add(i, 1) for i in chunk)) == [
                        i + 1 for i in chunk
                    ]
                await client.notify("add", 1, 2)

            def sync_calls() -> None:
                with Client(server.url, queue, timeout=30) as sync_client:
                    for i in range(9000, 9500):
                        assert sync_client.add(i, 1) == i + 1

            await asyncio.to_thread(sync_calls)
            async with AsyncClient(f"{server.url}?wire=seed", queue, timeout=30) as seed:
                assert await asyncio.gather(*(seed.add(i, 1) for i in range(9500, 10000))) == [
                    i + 1 for i in range(9500, 10000)
                ]
            async with aioredis.Redis.from_url(server.url) as redis_client:
                await redis_client.lpush(queue, b"not JSON")  # dead-lettered: no address
                for _ in range(100):
                    if await redis_client.exists(wire.dead_letter_key(queue)):
                        break
                    await asyncio.sleep(0.05)
                for process in procs:
                    process.send_signal(signal.SIGTERM)
                for process in procs:
                    assert await asyncio.to_thread(process.wait, 20) == 0
                keys = sorted([k.decode() async for k in redis_client.scan_iter(count=1000)])
        assert keys == [wire.dead_letter_key(queue)]  # no reply, processing or heartbeat keys
