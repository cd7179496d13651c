"""RabbitMQ joins the fault suite; then the faults only RabbitMQ shows.

Everything runs on the session's RabbitMQ node of our own (`rabbit_node`: its own node name,
ports, data and log directories, no plugins; it also listens for amqps:// with a self-signed
certificate), never on a shared broker: a test that breaks it mends it. Writes are refused
two ways: every channel closed by the broker (its channel processes ended), and a memory
alarm, which blocks every publishing connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import quote

import pytest

from micromessaging import AsyncClient, Client, ConfigurationError, TransportError, Worker
from tests.brokers import RabbitNode
from tests.transports.contract import Probe
from tests.transports.test_amqp import delete_queues, drain_queue

from .suite import FaultSuite, Outcome, check, outcome_of
from .suite import eventually as suite_eventually

pytestmark = pytest.mark.fault


class TestAmqpFaults(FaultSuite):
    @pytest.fixture
    def node(self, rabbit_node: RabbitNode) -> RabbitNode:
        return rabbit_node

    @pytest.fixture
    def url(self, node: RabbitNode) -> str:
        return node.url

    @pytest.fixture
    async def queue(self, node: RabbitNode) -> AsyncIterator[str]:
        name = f"mm-fault-{uuid.uuid4().hex[:12]}"
        yield name
        with contextlib.suppress(Exception):  # a test that failed may have left it down
            await asyncio.wait_for(delete_queues(node.url, name), 15)

    @pytest.fixture(params=["channels-closed", "memory-alarm"])
    def write_fault(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    async def stop_broker(self, node: RabbitNode) -> None:
        await asyncio.to_thread(node.stop_app)  # every connection closed, the queue dropped

    async def start_broker(self, node: RabbitNode) -> None:
        await asyncio.to_thread(node.start_app)

    def refusing(
        self, node: RabbitNode, fault: str, queue: str
    ) -> AbstractAsyncContextManager[None]:
        @asynccontextmanager
        async def refused() -> AsyncIterator[None]:
            if fault == "channels-closed":
                await asyncio.to_thread(node.close_channels)
                yield
            else:
                with node.memory_alarm():
                    yield

        return refused()

    async def dead_letters(self, node: RabbitNode, queue: str) -> list[bytes]:
        return [message.body for message in await drain_queue(node.url, f"{queue}.dead")]


# --- RabbitMQ's own -------------------------------------------------------------------------


@pytest.fixture
def queue() -> str:
    return f"mm-fault-{uuid.uuid4().hex[:12]}"


async def test_vhost_user_and_password_from_the_url(rabbit_node: RabbitNode, queue: str) -> None:
    vhost, user, password = "mm-vhost", "mm-user", "p@ss/w:rd"
    rabbit_node.ctl("add_vhost", vhost)
    rabbit_node.ctl("add_user", user, password)
    rabbit_node.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    url = f"amqp://{user}:p%40ss%2Fw%3Ard@127.0.0.1:{rabbit_node.port}/{vhost}"
    async with Worker(Probe(), url, queue), AsyncClient(url, queue) as client:
        assert await client.add(1, 5.1) == 6.1
    assert f"{queue}\t0" in rabbit_node.ctl("list_queues", "-p", vhost, "name", "messages")
    with pytest.raises(TransportError):
        async with AsyncClient(
            f"amqp://{user}:wrong@127.0.0.1:{rabbit_node.port}/{vhost}", queue
        ) as c:
            await c.add(1, 2)
    # A caller allowed to publish and read but not to declare (configure) still gets answers.
    rabbit_node.ctl("add_user", "mm-caller", "secret")
    rabbit_node.ctl("set_permissions", "-p", vhost, "mm-caller", "^$", ".*", ".*")
    caller = f"amqp://mm-caller:secret@127.0.0.1:{rabbit_node.port}/{vhost}"
    async with Worker(Probe(), url, queue), AsyncClient(caller, queue) as client:
        assert await client.add(2, 3) == 5


# --- amqps:// ----------------------------------------------------------------------------------


def sync_add(url: str, queue: str) -> object:
    with Client(url, queue, timeout=5) as client:
        return client.add(1, 5.1)


async def round_trips(rabbit_node: RabbitNode, url: str, queue: str) -> None:
    async with Worker(Probe(), url, queue), AsyncClient(url, queue, timeout=5) as client:
        assert await client.add(1, 5.1) == 6.1
        assert await asyncio.to_thread(sync_add, url, queue) == 6.1
        # Both ends really are on TLS connections (a closing one of an earlier test may not be).
        lines = (await asyncio.to_thread(rabbit_node.ctl, "list_connections", "ssl")).split()
        assert lines.count("true") >= 2


async def serve(url: str, queue: str) -> None:
    async with Worker(Probe(), url, queue):
        pass


async def test_amqps_with_a_self_signed_certificate(rabbit_node: RabbitNode, queue: str) -> None:
    tls = f"amqps://guest:guest@127.0.0.1:{rabbit_node.tls_port}/"
    cafile = quote(str(rabbit_node.cafile), safe="")
    await asyncio.wait_for(round_trips(rabbit_node, f"{tls}?cafile={cafile}", queue), 30)
    await asyncio.wait_for(round_trips(rabbit_node, f"{tls}?no_verify_ssl=true", queue), 30)
    # Without the CA file (or with no_verify_ssl=false) the certificate is refused, at once.
    started = time.monotonic()
    for url in (tls, f"{tls}?no_verify_ssl=false"):
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            await asyncio.wait_for(round_trips(rabbit_node, url, queue), 15)
    with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.wait_for(serve(tls, queue), 15)
    assert time.monotonic() - started < 5
    with pytest.raises(ConfigurationError, match="no_verify_ssl='' is not a yes or no"):
        await asyncio.wait_for(serve(f"{tls}?no_verify_ssl=", queue), 15)


# --- quorum queues: the node restarted mid-run ------------------------------------------------


async def test_quorum_queue_through_a_node_restart(rabbit_node: RabbitNode, queue: str) -> None:
    """2,000 calls across 2 workers on a quorum queue while the node restarts: each ends in
    its right answer or a clear error before its timeout; then calls succeed again, with
    nothing restarted by hand. The workers' heartbeat (durable) keeps the queue served while
    they reconnect: no call is told NoWorkers."""
    from micromessaging import NoWorkers

    url = rabbit_node.url.rstrip("/") + "/?queue_type=quorum"
    timeout, total, lanes = 10.0, 2000, 32
    outcomes: list[Outcome] = []
    counter = iter(range(total))
    try:
        async with (
            Worker(Probe(), url, queue, concurrency=16),
            Worker(Probe(), url, queue, concurrency=16),
            AsyncClient(url, queue, timeout=timeout) as client,
        ):

            async def lane() -> None:
                for i in counter:
                    outcome = await outcome_of(client.call("slow", 0.1, i), i)
                    outcomes.append(outcome)
                    if outcome.failed:
                        await asyncio.sleep(0.05)

            running = asyncio.gather(*(lane() for _ in range(lanes)))
            await suite_eventually(lambda: len(outcomes) >= 300, 30, "300 calls answered")
            await asyncio.to_thread(rabbit_node.stop_app)
            await asyncio.to_thread(rabbit_node.start_app)
            await asyncio.wait_for(running, 120)
            assert len(outcomes) == total
            check(outcomes, timeout)
            assert not [o for o in outcomes if isinstance(o.value, NoWorkers)]
            failed = sum(o.failed for o in outcomes)
            assert failed < total - 300, "nothing was answered after the restart"
            # Afterwards: both ends reconnected by themselves.
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert await client.call("slow", 0, "probe", timeout=2) == "probe"
                    break
                except TransportError:
                    assert time.monotonic() < deadline, "never answered again"
                    await asyncio.sleep(0.2)
            answers = await asyncio.gather(*(client.add(i, 1) for i in range(200)))
            assert answers == [i + 1 for i in range(200)]
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(delete_queues(rabbit_node.url, queue), 15)
