"""What the Redis hostile-input tests share: a redis-server of each module's own, and
snapshots of its whole keyspace, to show that nothing but the queue under attack changed.

Each Redis test module runs its own redis-server (the `server` fixture of conftest.py), so
that a snapshot of the keyspace is the test's alone. The service and checks every hostile
suite shares are in `common.py`.
"""

from __future__ import annotations

import redis.asyncio as aioredis

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
