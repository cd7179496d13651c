"""memory:// joins the transport contract."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from micromessaging import AsyncClient
from micromessaging.transports import memory

from .admin_contract import AdminContract
from .contract import TransportContract, eventually


class TestMemoryContract(TransportContract):
    @pytest.fixture
    def broker_url(self) -> str:
        return f"memory://test-{uuid.uuid4().hex[:8]}"

    async def inject(
        self, broker_url: str, queue: str, body: bytes, delivery_count: int = 1, wait: float = 5
    ) -> bytes | None:
        broker = memory.broker(broker_url)
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bytes] = loop.create_future()
        address = f"inject-{uuid.uuid4().hex}"
        broker.open_inbox(
            address,
            lambda _cid, data: loop.call_soon_threadsafe(
                lambda: reply.done() or reply.set_result(data)
            ),
        )
        try:
            broker.publish(queue, memory.Message(body, address, "c1", None, delivery_count))
            return await asyncio.wait_for(reply, wait)
        except TimeoutError:
            return None
        finally:
            broker.close_inbox(address)

    async def dead_letters(self, broker_url: str, queue: str) -> list[bytes]:
        return [
            buried.message.body for buried in memory.broker(broker_url).dead_letters.get(queue, [])
        ]

    async def wait_queued(
        self, broker_url: str, queue: str, client: AsyncClient, count: int
    ) -> None:
        await eventually(lambda: memory.broker(broker_url).depth(queue) >= count)

    async def test_unreachable_broker_is_a_transport_error_quickly(self) -> None:
        pytest.skip("memory:// is in this process: it is never unreachable")

    async def test_a_client_on_asyncios_loop_reads_at_most_read_size_at_once(self) -> None:
        pytest.skip("memory:// is in this process: it reads no socket")

    async def leftovers(self, broker_url: str, queue: str) -> list[str]:
        broker = memory.broker(broker_url)
        left = []
        if broker.depth(queue):
            left.append(f"{broker.depth(queue)} messages in {queue}")
        left += [f"inbox {name}" for name in broker._inboxes]
        left += [f"consumer on {name}" for name, found in broker._consumers.items() if found]
        return left


class TestMemoryAdmin(AdminContract):
    @pytest.fixture
    def broker_url(self) -> str:
        return f"memory://admin-{uuid.uuid4().hex[:8]}"

    async def poison(self, broker_url: str, queue: str, body: bytes) -> None:
        memory.broker(broker_url).publish(queue, memory.Message(body, delivery_count=5))
