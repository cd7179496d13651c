"""NATS under faults: a server restarted under workers and clients, workers killed with -9.

Each test runs its own nats-server (on a free port, JetStream storage in a temp dir) and
stops it, so the shared server is never disturbed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from micromessaging import AsyncClient, CallTimeout, TransportError, Worker
from tests.brokers import NatsNode
from tests.transports.contract import eventually

pytestmark = pytest.mark.fault


@pytest.fixture(params=["core", "jetstream"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def url_for(server: NatsNode, mode: str, **options: object) -> str:
    query = {"reconnect_wait": 0.2, **options}
    if mode == "jetstream":
        query["jetstream"] = 1
    return server.url + "?" + "&".join(f"{key}={value}" for key, value in query.items())


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


class Quick:
    """Answers at once."""

    def __init__(self) -> None:
        self.calls = 0

    def hold(self, seconds: float, tag: object = None) -> object:
        self.calls += 1
        return tag


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


async def test_server_restart_under_workers_and_clients(nats_node: NatsNode, mode: str) -> None:
    url = url_for(nats_node, mode, ack_wait=2)
    queue = f"mm-fault-{uuid.uuid4().hex[:8]}"
    service = Holder()
    async with (
        Worker(service, url, queue, concurrency=8),
        AsyncClient(url, queue, timeout=5) as client,
    ):
        assert await client.add(1, 2) == 3
        in_flight = asyncio.create_task(client.hold(1, "lost"))
        await eventually(lambda: service.calls > 0)
        nats_node.stop()
        started = time.monotonic()
        with pytest.raises(TransportError, match="lost"):
            await in_flight  # its reply can't come back: told now, not at its deadline
        assert time.monotonic() - started < 2
        started = time.monotonic()
        with pytest.raises((TransportError, CallTimeout)):
            await client.call("add", 1, 1, timeout=1)  # made during the outage
        assert time.monotonic() - started < 2.5
        nats_node.start()
        await eventually_answers(client, within=15)
        results = await asyncio.gather(*(client.add(i, 1) for i in range(200)))
        assert results == [i + 1 for i in range(200)]


WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from micromessaging import Worker

    url, queue, marker = sys.argv[1:4]

    class Service:
        async def hold(self, seconds, tag=None):
            with open(marker, "a") as f:
                f.write(f"{tag}\\n")
            await asyncio.sleep(seconds)
            return tag

        async def add(self, a, b):
            await asyncio.sleep(0.005)
            return a + b

    asyncio.run(Worker(Service(), url, queue, concurrency=16).run())
    """
)


def spawn_worker(url: str, queue: str, marker: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, url, queue, str(marker)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def written(path: Path) -> bool:
    return path.exists() and bool(path.read_text())


async def test_killed_workers_request_is_answered_by_another(
    nats_node: NatsNode, tmp_path: Path
) -> None:
    url = url_for(nats_node, "jetstream", ack_wait=1)
    queue = f"mm-fault-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "started"
    victim = spawn_worker(url, queue, marker)
    try:
        async with AsyncClient(url, queue, timeout=20) as client:
            call = asyncio.create_task(client.hold(30, "survivor"))
            await eventually(lambda: written(marker), 15)
            kill(victim)
            killed_at = time.monotonic()
            other = Quick()
            async with Worker(other, url, queue):
                other_started = time.monotonic()
                assert await asyncio.wait_for(call, 45) == "survivor"
            # Redelivered once ack_wait (1 s) had passed since the victim's last sign of life.
            assert other.calls == 1
            assert other_started - killed_at < 5
    finally:
        kill(victim)


async def test_killed_core_worker_loses_the_request(nats_node: NatsNode, tmp_path: Path) -> None:
    # Core NATS is at most once: nobody holds the request the killed worker took.
    url = url_for(nats_node, "core")
    queue = f"mm-fault-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "started"
    victim = spawn_worker(url, queue, marker)
    try:
        async with AsyncClient(url, queue, timeout=2) as client:
            call = asyncio.create_task(client.hold(30, "lost"))
            await eventually(lambda: written(marker), 15)
            kill(victim)
            started = time.monotonic()
            with pytest.raises(CallTimeout):
                await call
            assert time.monotonic() - started < 3
    finally:
        kill(victim)


async def test_kill_one_of_two_workers_under_1000_calls(
    nats_node: NatsNode, tmp_path: Path
) -> None:
    url = url_for(nats_node, "jetstream", ack_wait=1)
    queue = f"mm-fault-{uuid.uuid4().hex[:8]}"
    workers = [spawn_worker(url, queue, tmp_path / f"w{n}") for n in range(2)]
    try:
        async with AsyncClient(url, queue, timeout=60) as client:
            await eventually_answers(client, within=20)
            calls = [asyncio.create_task(client.add(i, 1)) for i in range(1000)]
            await eventually(lambda: sum(call.done() for call in calls) >= 150, 30)
            kill(workers[0])
            results = await asyncio.gather(*calls)
        assert results == [i + 1 for i in range(1000)]
    finally:
        for process in workers:
            kill(process)
