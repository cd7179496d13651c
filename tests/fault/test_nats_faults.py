"""NATS JetStream joins the fault suite; then what only NATS shows, core NATS's faults.

Every test runs a nats-server of its own (`nats_node`: a free port, JetStream storage in its
temp dir), never the shared one. JetStream runs with a 2 s ack wait (``ack_wait=2``), so that
a killed worker's requests are redelivered within seconds. Writes are "refused" the ways a
JetStream worker can lose what it works on: its consumer deleted, and its stream deleted and
created again (empty, without the consumer); the worker must notice and make them anew.
Core NATS is at most once: a killed core worker loses the call it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import nats
import nats.js.errors
import pytest

from micromessaging import AsyncClient, CallTimeout, MicromessagingError, TransportError, Worker
from micromessaging.transports.nats.wire import CONSUMER_NAME, dead_letter_stream_name, stream_name
from tests.brokers import NatsNode
from tests.transports.contract import eventually

from .service import executions, worker_processes
from .suite import FaultSuite, serving

pytestmark = pytest.mark.fault


@asynccontextmanager
async def jetstream(node: NatsNode) -> AsyncIterator[nats.js.JetStreamContext]:
    """A plain nats-py JetStream context on the node."""
    nc = await nats.connect(node.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


class TestNatsJetStreamFaults(FaultSuite):
    @pytest.fixture
    def node(self, nats_node: NatsNode) -> NatsNode:
        return nats_node

    @pytest.fixture
    def url(self, node: NatsNode) -> str:
        return f"{node.url}?jetstream=1&ack_wait=2&reconnect_wait=0.2"

    @pytest.fixture(params=["consumer-deleted", "stream-recreated"])
    def write_fault(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    async def stop_broker(self, node: NatsNode) -> None:
        await asyncio.to_thread(node.stop)

    async def start_broker(self, node: NatsNode) -> None:
        await asyncio.to_thread(node.start)

    def refusing(self, node: NatsNode, fault: str, queue: str) -> AbstractAsyncContextManager[None]:
        @asynccontextmanager
        async def refused() -> AsyncIterator[None]:
            async with jetstream(node) as js:
                if fault == "consumer-deleted":
                    await js.delete_consumer(stream_name(queue), CONSUMER_NAME)
                else:
                    info = await js.stream_info(stream_name(queue))
                    await js.delete_stream(stream_name(queue))
                    await js.add_stream(info.config)
            yield

        return refused()

    async def dead_letters(self, node: NatsNode, queue: str) -> list[bytes]:
        name = dead_letter_stream_name(queue)
        async with jetstream(node) as js:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                state = (await js.stream_info(name)).state
                return [
                    (await js.get_msg(name, seq)).data or b""
                    for seq in range(state.first_seq, state.last_seq + 1)
                ]
        return []


# --- core NATS: at most once -------------------------------------------------------------


class Holder:
    """Holds each call for a while, and counts them."""

    def __init__(self) -> None:
        self.calls = 0

    async def hold(self, seconds: float, tag: object = None) -> object:
        self.calls += 1
        await asyncio.sleep(seconds)
        return tag

    def add(self, a: float, b: float) -> float:
        return a + b


async def eventually_answers(client: AsyncClient, within: float) -> float:
    """Call until a call succeeds; how long it took."""
    started = time.monotonic()
    while True:
        try:
            assert await client.call("add", 1, 1, timeout=1) == 2
            return time.monotonic() - started
        except (TransportError, CallTimeout):
            if time.monotonic() - started > within:
                raise
            await asyncio.sleep(0.1)


async def test_core_server_restart_fails_calls_in_flight_at_once(nats_node: NatsNode) -> None:
    url = f"{nats_node.url}?reconnect_wait=0.2"
    queue = f"mm-fault-{uuid.uuid4().hex[:8]}"
    service = Holder()
    async with (
        Worker(service, url, queue, concurrency=8),
        AsyncClient(url, queue, timeout=5) as client,
    ):
        assert await client.add(1, 2) == 3
        in_flight = asyncio.create_task(client.hold(1, "lost"))
        await eventually(lambda: service.calls > 0)
        await asyncio.to_thread(nats_node.stop)
        started = time.monotonic()
        with pytest.raises(TransportError, match="lost"):
            await in_flight  # its reply can't come back: told now, not at its deadline
        assert time.monotonic() - started < 2
        started = time.monotonic()
        with pytest.raises((TransportError, CallTimeout)):
            await client.call("add", 1, 1, timeout=1)  # made during the outage
        assert time.monotonic() - started < 2.5
        await asyncio.to_thread(nats_node.start)
        await eventually_answers(client, within=15)
        results = await asyncio.gather(*(client.add(i, 1) for i in range(200)))
        assert results == [i + 1 for i in range(200)]


async def test_killed_core_worker_loses_its_call(nats_node: NatsNode, tmp_path: Path) -> None:
    # Core NATS is at most once: nobody holds the request the killed worker took.
    queue = f"mm-fault-{uuid.uuid4().hex[:8]}"
    with worker_processes(nats_node.url, queue, tmp_path) as (victim,):
        await serving(victim)
        async with AsyncClient(nats_node.url, queue, timeout=2) as client:
            call = asyncio.create_task(client.slow_add(1, 1, 30))
            await eventually(lambda: bool(executions(tmp_path / "executions")), 15)
            victim.kill()
            started = time.monotonic()
            with pytest.raises(MicromessagingError) as caught:
                await call
            assert isinstance(caught.value, CallTimeout | TransportError)
            assert time.monotonic() - started < 3
