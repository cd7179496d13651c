"""Requests whose callers gave up leave Redis without piling up in front of live calls.

Every envelope carries its caller's deadline. Workers drop the expired ones in bulk from the
consume end of the queue as they take (the settle script), and clients do the same as they
push (at most once a second per queue, more often while there is more to drop), so a queue
without workers does not grow with abandoned calls and a new worker reaches a live call at
once. Against a redis-server of this module's own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
import redis.asyncio as aioredis

from micromessaging import AsyncClient, CallTimeout, Client, NoWorkers
from micromessaging.transports.redis import calls, scripts
from micromessaging.transports.redis import wire as wire

from ..brokers import REDIS, RedisNode
from ..conftest import need
from .helpers import Gauge, serving

ABANDONED = 20_000


@pytest.fixture(scope="module")
def server() -> Iterator[RedisNode]:
    need(REDIS)
    with RedisNode() as started:
        yield started


@pytest.fixture
async def redis(server: RedisNode) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url)
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


def abandoned(index: int, deadline_ms: int, **extra: object) -> bytes:
    header = {"mm": 1, "reply_to": "mm:reply:gone", "cid": f"c{index}", "deadline": deadline_ms}
    body = b'{"jsonrpc":"2.0","method":"record","params":["abandoned"],"id":%d}' % index
    return orjson.dumps({**header, **extra}) + b"\n" + body


async def push_abandoned(redis: aioredis.Redis, queue: str, count: int, **extra: object) -> None:
    past = int((time.time() - 60) * 1000)
    for start in range(0, count, 2000):
        items = [abandoned(i, past, **extra) for i in range(start, min(count, start + 2000))]
        await redis.lpush(queue, *items)


async def test_a_new_worker_reaches_a_live_call_behind_20000_abandoned_ones(
    server: RedisNode, redis: aioredis.Redis, queue: str
) -> None:
    # Pushed raw: our clients would have swept the abandoned ones as they pushed.
    await push_abandoned(redis, queue, ABANDONED)
    reply_to = f"mm:reply:{uuid.uuid4().hex}"
    header = {
        "mm": 1,
        "reply_to": reply_to,
        "cid": "live",
        "deadline": int(time.time() * 1e3) + 60_000,
    }
    await redis.lpush(
        queue,
        orjson.dumps(header) + b"\n" + b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}',
    )
    gauge = Gauge()
    async with serving(gauge, server.url, queue, concurrency=16) as worker:
        started = time.monotonic()
        got = await redis.blpop([reply_to], timeout=30)
        elapsed = time.monotonic() - started
    assert got is not None
    cid, body = wire.decode_reply(got[1])
    assert (cid, orjson.loads(body)["result"]) == ("live", 3)
    print(f"\nlive call answered {elapsed * 1000:.0f} ms after the worker started")
    assert elapsed < 0.5  # 0.8 s when the worker skipped them one by one
    assert gauge.ran == []  # none of the abandoned ones ran
    assert worker.stats.completed == 1
    assert worker.stats.expired < 1000  # dropped in bulk by Redis, not handed over to skip
    assert not await redis.exists(queue, "mm:reply:gone")


async def test_clients_drop_abandoned_requests_without_a_worker(
    server: RedisNode, redis: aioredis.Redis, queue: str
) -> None:
    await push_abandoned(redis, queue, 2 * calls.SWEEP_LIMIT + 100)
    live = abandoned(-1, int((time.time() + 600) * 1000))
    await redis.lpush(queue, live)  # a call still waited for, after them
    # No worker was ever seen: only with the no-worker rule off do the pushes go in.
    async with AsyncClient(server.url + "?worker_window=0", queue, timeout=30) as client:
        await client.notify("record", "the push that sweeps")
        # More than one sweep's worth: each push sweeps again while there is more.
        for _ in range(2):
            await client.notify("record", "and again")
    left = await redis.lrange(queue, 0, -1)
    assert left[-1] == live
    assert [wire.split_envelope(item)[1] for item in left[:-1]] == [
        *[_notification("and again")] * 2,
        _notification("the push that sweeps"),
    ]


def _notification(text: str) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": "record", "params": [text]})


async def test_the_blocking_client_drops_them_too(
    server: RedisNode, redis: aioredis.Redis, queue: str
) -> None:
    await push_abandoned(redis, queue, 300)

    def call() -> None:
        url = server.url + "?worker_window=0"  # no worker, and the call waits for one
        with Client(url, queue, timeout=0.2) as client, pytest.raises(CallTimeout):
            client.add(1, 2)  # no worker: it times out, but its push swept

    await asyncio.to_thread(call)
    [left] = await redis.lrange(queue, 0, -1)
    assert wire.split_envelope(left)[0]["deadline"] > time.time() * 1000 - 5000  # ours


async def test_only_envelopes_past_their_deadline_are_dropped(
    redis: aioredis.Redis, queue: str
) -> None:
    now = int(time.time() * 1000)
    keep = [
        b'{"jsonrpc":"2.0","method":"record","params":["seed form: no deadline"],"id":"s1"}',
        abandoned(1, now + 600_000),  # still waited for
        abandoned(2, now - 60_000, mm=2),  # a version we can't read: the worker decides
        abandoned(3, now - 60_000, n=0),  # a malformed count: dead-lettered by the worker
        orjson.dumps({"mm": 1, "deadline": "soon"}) + b"\n{}",  # a deadline that is no number
        orjson.dumps({"mm": 1}) + b"\n{}",  # no deadline at all
    ]
    sweep = redis.register_script(scripts.SWEEP)
    for item in keep:
        await redis.delete(queue)
        await redis.lpush(queue, item, abandoned(9, now - 60_000, n=2))  # an expired one after
        assert await sweep(keys=[queue], args=[now, 100]) == 0, item
        assert await redis.llen(queue) == 2
    await redis.delete(queue)
    await redis.lpush(queue, *(abandoned(i, now - 1000) for i in range(150)), keep[0])
    assert await sweep(keys=[queue], args=[now, 100]) == 100  # at most `limit` at once
    assert await sweep(keys=[queue], args=[now, 100]) == 50
    assert await redis.lrange(queue, 0, -1) == [keep[0]]
    assert calls.SWEEP_LIMIT >= 100


async def test_a_client_whose_acl_refuses_scripts_pushes_all_the_same() -> None:
    acl = ("--user", "pusher", "on", ">pw", "~*", "&*", "+@all", "-eval", "-evalsha")
    with RedisNode(*acl) as own:
        url = f"redis://pusher:pw@127.0.0.1:{own.port}/0"
        queue = f"q-{uuid.uuid4().hex[:12]}"
        async with AsyncClient(url + "?worker_window=0", queue, timeout=5) as client:
            await client.notify("record", "one")
            await client.notify("record", "two")
            sweeps = client._transport._sweeps  # type: ignore[union-attr]
            assert not sweeps.enabled  # refused once, not asked again
        admin = aioredis.Redis.from_url(f"redis://127.0.0.1:{own.port}/0")
        try:
            assert await admin.llen(queue) == 2
            await admin.delete(queue)
            # The no-worker rule without scripts: checked first (TIME, GET), then pushed.
            async with AsyncClient(url, queue, timeout=5) as client:
                with pytest.raises(NoWorkers):
                    await client.notify("record", "nobody")
                pushes = client._transport._pushes  # type: ignore[union-attr]
                assert not pushes.scripted
                gauge = Gauge()
                async with serving(gauge, f"redis://127.0.0.1:{own.port}/0", queue):
                    assert await client.add(1, 2) == 3
                    await asyncio.to_thread(_blocking_calls, url, queue)
                with pytest.raises(CallTimeout):  # seen alive a moment ago: it waits
                    await client.call("add", 2, 2, timeout=0.3)
        finally:
            await admin.aclose()


def _blocking_calls(url: str, queue: str) -> None:
    with Client(url, queue, timeout=5) as client:
        assert [client.add(i, 1) for i in range(3)] == [1, 2, 3]
