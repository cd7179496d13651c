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
import io
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest

from micromessaging import AsyncClient, CallTimeout, MicromessagingError, TransportError, Worker
from micromessaging.transports.nats.wire import CONSUMER_NAME, dead_letter_stream_name, stream_name
from tests.brokers import NatsClusterNode, NatsNode
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


# --- a JetStream cluster ------------------------------------------------------------------


@contextlib.contextmanager
def cluster(base: Path) -> Iterator[list[NatsClusterNode]]:
    """Three servers routed to each other, started together, stopped by pid."""
    nodes = [NatsClusterNode(f"mm-n{i}", base) for i in range(3)]
    for node in nodes:
        node.routes = [f"nats://127.0.0.1:{o.cluster_port}" for o in nodes if o is not node]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.close()


async def until_jetstream_ready(url: str, timeout: float = 30) -> None:
    """Until the cluster has a meta leader: a replicated stream can be made (and is removed)."""
    deadline = time.monotonic() + timeout
    nc = await nats.connect(url.split("?")[0].split(","))
    try:
        js = nc.jetstream(timeout=2)
        while True:
            try:
                await js.add_stream(name="MM_READY", subjects=["mm.ready"], num_replicas=3)
                await js.delete_stream("MM_READY")
                return
            except (TimeoutError, nats.errors.Error):
                assert time.monotonic() < deadline, "the cluster never got JetStream ready"
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


class Adder:
    def add(self, a: int, b: int) -> int:
        return a + b


async def test_calls_go_on_when_the_stream_leader_of_a_cluster_is_killed(tmp_path: Path) -> None:
    # 2,000 calls, 64 at a time, across 2 workers of an R3 work-queue stream; the server
    # holding the stream's leader is killed (-9) a quarter of the way. Every call ends before
    # its timeout with its one correct answer or a clear error; then calls succeed again
    # with nothing restarted.
    with cluster(tmp_path) as nodes:
        servers = ",".join(f"127.0.0.1:{node.port}" for node in nodes)
        url = f"nats://{servers}?jetstream=1&replicas=3&ack_wait=2&reconnect_wait=0.2"
        await until_jetstream_ready(f"nats://{servers}")
        queue = f"mm-cluster-{uuid.uuid4().hex[:8]}"
        timeout = 5.0
        async with (
            Worker(Adder(), url, queue, concurrency=32),
            Worker(Adder(), url, queue, concurrency=32),
            AsyncClient(url, queue, timeout=timeout) as client,
        ):
            assert await client.add(1, 1) == 2
            nc = await nats.connect([f"nats://127.0.0.1:{node.port}" for node in nodes])
            try:
                info = await nc.jetstream().stream_info(stream_name(queue))
            finally:
                await nc.close()
            assert info.config.num_replicas == 3 and info.cluster is not None
            [leader] = [node for node in nodes if node.name == info.cluster.leader]

            gate = asyncio.Semaphore(64)
            answers: dict[int, object] = {}
            hung: list[str] = []
            done = 0

            async def one(i: int) -> None:
                nonlocal done
                async with gate:
                    task = asyncio.ensure_future(client.add(i, 1000))
                    await asyncio.wait({task}, timeout=timeout + 2)
                    if not task.done():
                        if not hung:  # where it waits, for the failure's message
                            stack = io.StringIO()
                            task.print_stack(file=stack)
                            hung.append(stack.getvalue())
                        task.cancel()
                        answers[i] = "hung"
                    elif isinstance(task.exception(), MicromessagingError):
                        answers[i] = task.exception()
                    else:
                        answers[i] = task.result()
                    done += 1

            started = time.monotonic()
            calls = asyncio.gather(*(one(i) for i in range(2000)))
            await eventually(lambda: done >= 500, 30)
            await asyncio.to_thread(leader.kill)
            await calls
            took = time.monotonic() - started

            assert not hung, f"{list(answers.values()).count('hung')} calls hung: {hung[0]}"
            wrong = {i: a for i, a in answers.items() if isinstance(a, int) and a != i + 1000}
            assert not wrong
            failed = [a for a in answers.values() if isinstance(a, Exception)]
            assert all(isinstance(a, CallTimeout | TransportError) for a in failed)
            assert len(failed) < 2000 - 500
            print(f"\n2000 calls in {took:.1f}s, {len(failed)} failed with a clear error")

            await eventually_answers(client, within=20)
            results = await asyncio.gather(*(client.add(i, 1) for i in range(200)))
            assert results == [i + 1 for i in range(200)]
