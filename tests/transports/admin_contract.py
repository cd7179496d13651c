"""What operations see, the same on every broker: status, worker records, dead letters.

A broker joins by subclassing `AdminContract` next to its `TransportContract` with the
same `broker_url` and `queue` fixtures, plus `poison(broker_url, queue, body)`: put a
request on the queue that a worker will dead-letter at once (delivered past the limit).
A broker that keeps no dead letters (HTTP) sets `keeps_dead_letters = False`: its status
then counts them as unknown (None).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest

from micromessaging import AsyncClient, Worker
from micromessaging.transports import admin_transport
from micromessaging.transports.admin import AdminTransport

from .contract import Probe, eventually


async def wait_until(check, timeout: float = 10.0, every: float = 0.05):
    """Await `check()` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(every)


class AdminContract:
    """Status and dead letters, as every broker must show them."""

    keeps_dead_letters = True

    @pytest.fixture
    def broker_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def queue(self) -> str:
        return f"mm-admin-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    async def admin(self, broker_url: str, queue: str) -> AsyncIterator[AdminTransport]:
        async with admin_transport(broker_url) as admin:
            yield admin
            await admin.delete_queue(queue)

    async def poison(self, broker_url: str, queue: str, body: bytes) -> None:
        raise NotImplementedError

    async def test_status_shows_live_workers_and_waiting_requests(
        self, broker_url: str, queue: str, admin: AdminTransport
    ) -> None:
        probe = Probe()
        async with (
            Worker(probe, broker_url, queue, concurrency=3) as worker,
            AsyncClient(broker_url, queue, timeout=10) as client,
        ):
            assert await client.add(1, 2) == 3
            slow = [asyncio.create_task(client.slow(1.0, i)) for i in range(2)]
            await eventually(lambda: len(probe.ran) == 2)
            status = await wait_until(lambda: self._with_workers(admin, queue, 1), timeout=10)
            [record] = status.workers
            assert record.id == worker.id
            assert record.queue == queue
            assert record.concurrency == 3
            assert record.completed >= 1
            assert time.time() - record.last_seen < 30
            assert status.dead_letters == (0 if self.keeps_dead_letters else None)
            assert queue in await admin.queues()
            await asyncio.gather(*slow)

    async def _with_workers(self, admin: AdminTransport, queue: str, count: int):
        status = await admin.status(queue)
        return status if len(status.workers) >= count else None

    async def test_dead_letters_list_replay_and_purge(
        self, broker_url: str, queue: str, admin: AdminTransport
    ) -> None:
        # Notifications: a replayed one runs without owing a reply to a caller long gone.
        bodies = [
            orjson.dumps({"jsonrpc": "2.0", "method": "record", "params": [f"dead-{i}"]})
            for i in range(3)
        ]
        probe = Probe()
        async with Worker(probe, broker_url, queue, max_deliveries=2):
            for body in bodies:
                await self.poison(broker_url, queue, body)
            records = await wait_until(lambda: self._dead(admin, queue, 3))
            assert sorted(record.body for record in records) == sorted(bodies)
            assert all(record.deliveries > 2 for record in records)
            assert all("delivered" in record.reason for record in records)
            assert all(abs(time.time() - record.at) < 60 for record in records)
            assert probe.ran == []
            assert (await admin.status(queue)).dead_letters == 3

            # Replayed with a fresh count, the request runs this time.
            first = records[0]
            [replayed] = await admin.replay(queue, [first.id])
            assert replayed.id == first.id
            wanted = orjson.loads(first.body)["params"][0]
            await eventually(lambda: wanted in probe.ran)
            left = await admin.dead_letters(queue)
            assert sorted(r.id for r in left) == sorted(r.id for r in records[1:])

            assert await admin.purge(queue, [left[0].id]) == 1
            assert [r.id for r in await admin.dead_letters(queue)] == [left[1].id]
            assert await admin.purge(queue, None) == 1
            assert await admin.dead_letters(queue) == []

    async def _dead(self, admin: AdminTransport, queue: str, count: int):
        records = await admin.dead_letters(queue)
        return records if len(records) >= count else None
