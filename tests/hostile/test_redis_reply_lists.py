"""Seed form: the request id names the reply list, so it must not let a caller write (and
expire) a list that is not a reply list: another queue, a dead-letter list, someone's data.

A seed-form reply goes only to a list that does not exist yet, or to a list that expires (a
reply list already answered); never to a list without a TTL, a key of another type or a
registered queue. The worker checks before running the request and again, atomically, where
it pushes the reply. A refused request is dead-lettered and nothing else changes. Against a
redis-server of this module's own, so that the whole keyspace can be compared.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
import redis.asyncio as aioredis

from micromessaging import AsyncClient
from micromessaging.transports.redis import scripts
from micromessaging.transports.redis import wire as wire

from ..brokers import REDIS, RedisNode
from ..conftest import need
from .helpers import Gauge, eventually, keyspace, queue_prefixes, serving


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


def seed(method: str, params: list[object], id_: object) -> bytes:
    request = {"jsonrpc": "2.0", "method": method, "params": params, "id": id_}
    return json.dumps(request).encode()  # integers of any size, exactly


async def dead_records(redis: aioredis.Redis, queue: str, count: int) -> list[dict]:
    await eventually(lambda: _has(redis, wire.dead_letter_key(queue), count))
    return [orjson.loads(r) for r in await redis.lrange(wire.dead_letter_key(queue), 0, -1)]


async def _has(redis: aioredis.Redis, key: str, count: int) -> bool:
    return await redis.llen(key) >= count


async def protected_keys(redis: aioredis.Redis, tag: str) -> dict[str, str]:
    """Keys a seed-form reply must not touch, by name: each kind the rule names."""
    names = {
        "queue": f"{tag}-other-queue",  # a queue with requests waiting (a list, no TTL)
        "registered": f"{tag}-registered",  # an empty queue with a worker registered
        "hash": f"{tag}-hash",
        "string": f"{tag}-string",
        "expiring string": f"{tag}-expiring-string",
        "set": f"{tag}-set",
        "zset": f"{tag}-zset",
        "stream": f"{tag}-stream",
        "dead letters": f"{tag}-queue:dead",
        "ours": f"mm:{tag}:processing:w1",
    }
    await redis.lpush(names["queue"], b"a request someone is waiting for")
    await redis.sadd(wire.workers_key(names["registered"]), "a-worker")
    await redis.hset(names["hash"], "field", "value")
    await redis.set(names["string"], "value")
    await redis.set(names["expiring string"], "value", ex=600)
    await redis.sadd(names["set"], "member")
    await redis.zadd(names["zset"], {"member": 1})
    await redis.xadd(names["stream"], {"field": "value"})
    await redis.lpush(names["dead letters"], b"a record")
    await redis.lpush(names["ours"], b"an item")
    return names


async def test_a_reply_never_lands_on_a_key_that_is_not_a_reply_list(
    server: RedisNode, redis: aioredis.Redis, queue: str
) -> None:
    targets = await protected_keys(redis, uuid.uuid4().hex[:8])
    short = ["0", "7", "abc", "1234567"]  # not a unique name: `0` would be a top-level key
    registry = (wire.QUEUES_KEY.encode(),)  # the queues workers serve: this one joins it
    before = await keyspace(redis, skip=registry)
    gauge = Gauge()
    async with serving(gauge, server.url, queue):
        for name in [*targets.values(), *short]:
            await redis.lpush(queue, seed("record", [name], name))
        await redis.lpush(queue, seed("record", ["int"], 7))  # an integer id: list "7"
        records = await dead_records(redis, queue, len(targets) + len(short) + 1)
    assert gauge.ran == []  # refused before running, every one of them
    assert await keyspace(redis, skip=(*queue_prefixes(queue), *registry)) == before
    reasons = {orjson.loads(r["body"])["id"]: r["reason"] for r in records}
    assert "list without a TTL" in reasons[targets["queue"]]
    assert "registered queue" in reasons[targets["registered"]]
    for kind in ("hash", "string", "set", "zset", "stream"):
        assert f"holds a {kind}" in reasons[targets[kind]], reasons[targets[kind]]
    assert "holds a string" in reasons[targets["expiring string"]]
    assert "dead-letter list" in reasons[targets["dead letters"]]
    assert "mm: key space" in reasons[targets["ours"]]
    for name in [*short, 7]:
        assert "shorter than 8 characters" in reasons[name]


async def test_replies_go_to_new_lists_and_to_answered_ones(
    server: RedisNode, redis: aioredis.Redis, queue: str
) -> None:
    fresh, answered = f"reply-{uuid.uuid4().hex}", f"reply-{uuid.uuid4().hex}"
    await redis.rpush(answered, b"an earlier reply")
    await redis.expire(answered, 30)
    number = 10**15 + 12345  # integer ids name the list in decimal
    huge = 2**64 + 1  # exactly, though orjson would read a float
    async with serving(Gauge(), server.url, queue):
        for id_ in (fresh, answered, number, huge):
            await redis.lpush(queue, seed("add", [1, 2], id_))
        for name in (fresh, str(number), str(huge)):
            await eventually(lambda name=name: redis.exists(name))
            assert 0 < await redis.ttl(name) <= wire.REPLY_TTL
            got = await redis.brpop([name], timeout=10)
            assert got is not None, name
            assert orjson.loads(got[1])["result"] == 3
        await eventually(lambda: _has(redis, answered, 2))
        assert 0 < await redis.ttl(answered) <= wire.REPLY_TTL
    assert not await redis.exists(wire.dead_letter_key(queue))


async def test_a_batch_is_refused_when_its_first_id_names_a_protected_list(
    server: RedisNode, redis: aioredis.Redis, queue: str
) -> None:
    other = f"other-{uuid.uuid4().hex[:8]}"
    await redis.lpush(other, b"precious")
    batch = orjson.dumps(
        [
            {"jsonrpc": "2.0", "method": "record", "params": ["note"]},
            {"jsonrpc": "2.0", "method": "record", "params": ["one"], "id": other},
            {"jsonrpc": "2.0", "method": "record", "params": ["two"], "id": f"{other}-two"},
        ]
    )
    gauge = Gauge()
    async with serving(gauge, server.url, queue):
        await redis.lpush(queue, batch)
        [record] = await dead_records(redis, queue, 1)
    assert "list without a TTL" in record["reason"]
    assert gauge.ran == []
    assert await redis.lrange(other, 0, -1) == [b"precious"]
    assert await redis.ttl(other) == -1


async def test_a_list_that_becomes_unsafe_while_the_request_runs_gets_no_reply(
    server: RedisNode, redis: aioredis.Redis, queue: str
) -> None:
    name = f"becomes-a-queue-{uuid.uuid4().hex[:8]}"
    gauge = Gauge()
    async with serving(gauge, server.url, queue) as worker:
        await redis.lpush(queue, seed("hold", [0.5], name))
        await eventually(lambda: gauge.running == 1)  # checked and running: now it changes
        await redis.lpush(name, b"the first request of a new queue")
        await eventually(lambda: worker.stats.completed == 1)
        await eventually(lambda: _processing_empty(redis, queue))
    assert await redis.lrange(name, 0, -1) == [b"the first request of a new queue"]
    assert await redis.ttl(name) == -1


async def _processing_empty(redis: aioredis.Redis, queue: str) -> bool:
    return not [key async for key in redis.scan_iter(match=f"mm:{queue}:processing:*")]


async def test_the_settle_and_bury_scripts_refuse_unsafe_lists_atomically(
    redis: aioredis.Redis, queue: str
) -> None:
    # The scripts' own guard, run directly: each unsafe kind, then a safe one. SETTLE's
    # arguments: reply TTL, how many to take, the time and the sweep limit, then the items.
    targets = await protected_keys(redis, uuid.uuid4().hex[:8])
    unsafe = [targets[k] for k in ("queue", "registered", "hash", "expiring string", "stream")]
    safe = f"safe-{uuid.uuid4().hex}"
    processing, dead = wire.processing_key(queue, "w"), wire.dead_letter_key(queue)
    settle = redis.register_script(scripts.SETTLE)
    bury = redis.register_script(scripts.BURY)
    before = await keyspace(redis)
    for name in unsafe:
        await redis.lpush(processing, b"item")
        errors, _, _ = await settle(
            keys=[processing, queue, name], args=[30, 0, 0, 0, b"item", b"r"]
        )
        assert b"refused" in errors[0], (name, errors)
        await redis.lpush(processing, b"item")
        refusal = await bury(keys=[dead, processing, name], args=[b"rec", b"item", b"r", 30])
        assert refusal, name
    await redis.delete(dead)
    assert await keyspace(redis) == before
    await redis.lpush(processing, b"item")
    errors, _, _ = await settle(
        keys=[processing, queue, safe], args=[30, 0, 0, 0, b"item", b"reply"]
    )
    assert errors == [0]
    assert await redis.lrange(safe, 0, -1) == [b"reply"]
    assert not await redis.exists(processing)


async def test_our_seed_wire_client_still_gets_its_replies(server: RedisNode, queue: str) -> None:
    async with (
        serving(Gauge(), server.url, queue),
        AsyncClient(server.url + "?wire=seed", queue, timeout=10) as client,
    ):
        assert await asyncio.gather(*(client.add(i, 1) for i in range(20))) == [
            i + 1 for i in range(20)
        ]
