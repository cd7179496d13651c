"""Fixtures of the Redis hostile-input modules: a redis-server of each module's own.

Module-scoped, so that a snapshot of the keyspace (helpers.py) sees only what the module's
tests did; a test's client empties the database when the test ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from tests.brokers import REDIS, RedisNode
from tests.conftest import need


@pytest.fixture(scope="module")
def server() -> Iterator[RedisNode]:
    """A redis-server of the test module's own, stopped when the module is done."""
    need(REDIS)
    with RedisNode() as started:
        yield started


@pytest.fixture
async def redis(server: RedisNode) -> AsyncIterator[aioredis.Redis]:
    """A client of `server`; the database is emptied after the test."""
    client = aioredis.Redis.from_url(server.url)
    yield client
    await client.flushdb()
    await client.aclose()
