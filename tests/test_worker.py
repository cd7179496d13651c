"""The worker: concurrency, deadlines, graceful stop and its grace period (over memory://)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from micromessaging import AsyncClient, CallTimeout, ConfigurationError, Worker
from micromessaging._placement import TRIAL_CALLS
from micromessaging._settings import mask_password
from micromessaging.transports import memory


class Gauge:
    """Tracks how many calls run at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.finished: list[object] = []
        self.cancelled: list[object] = []

    async def hold(self, seconds: float, tag: object = None) -> object:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled.append(tag)
            raise
        finally:
            self.running -= 1
        self.finished.append(tag)
        return tag


@pytest.fixture
def url() -> str:
    return f"memory://worker-{uuid.uuid4().hex[:8]}"


async def test_concurrency_is_a_ceiling(url: str) -> None:
    gauge = Gauge()
    async with Worker(gauge, url, "q", concurrency=3), AsyncClient(url, "q") as client:
        await asyncio.gather(*(client.hold(0.05, i) for i in range(12)))
    assert gauge.most == 3


async def test_deadline_cancels_calls_nobody_awaits(url: str) -> None:
    gauge = Gauge()
    async with Worker(gauge, url, "q") as worker, AsyncClient(url, "q") as client:
        with pytest.raises(CallTimeout):
            await client.call("hold", 10, "abandoned", timeout=0.2)
        await asyncio.sleep(0.3)
        assert gauge.cancelled == ["abandoned"]
        assert worker.stats.expired == 1
        assert memory.broker(url).depth("q") == 0  # acknowledged, not requeued
        assert await client.hold(0, "next") == "next"


async def test_grace_period_ends_the_stop_and_requeues(url: str) -> None:
    gauge = Gauge()
    async with AsyncClient(url, "q", timeout=10) as client:
        worker = Worker(gauge, url, "q", grace=0.2)
        running = asyncio.create_task(worker.run())
        await worker.started()
        call = asyncio.create_task(client.hold(3, "long"))
        await asyncio.sleep(0.1)
        worker.stop()
        await asyncio.wait_for(running, 2)
        assert gauge.cancelled == ["long"]
        # The unfinished request went back, counted as delivered once more.
        async with Worker(gauge, url, "q"):
            assert await call == "long"
        assert gauge.finished == ["long"]


async def test_start_line_names_queue_broker_and_methods(url: str, caplog) -> None:
    caplog.set_level(logging.INFO, logger="micromessaging")
    async with Worker(Gauge(), url, "gauges", concurrency=4):
        pass
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving queue")]
    assert "'gauges'" in line and url in line and "hold" in line and "concurrency 4" in line


def test_passwords_are_masked() -> None:
    assert mask_password("redis://:hunter2@host:6379/0") == "redis://:****@host:6379/0"
    assert mask_password("amqp://user:hunter2@host/vhost") == "amqp://user:****@host/vhost"
    assert mask_password("redis://host:6379") == "redis://host:6379"


def test_options_are_checked(url: str) -> None:
    with pytest.raises(ConfigurationError):
        Worker(Gauge(), url, "q", concurrency=0)
    assert Worker(Gauge(), url).queue == "Gauge"


async def test_stop_before_anything_arrives_returns_promptly(url: str) -> None:
    worker = Worker(Gauge(), url, "q")
    running = asyncio.create_task(worker.run())
    await worker.started()
    worker.stop()
    await asyncio.wait_for(running, 1)


class Tasks:
    """A plain method that tells which task ran it."""

    def which(self, n: int) -> int:
        try:
            return id(asyncio.current_task())
        except RuntimeError:  # in the thread pool, where it starts
            return 0


async def test_fast_plain_calls_that_arrive_together_share_a_task(url: str) -> None:
    # A transport whose settle only buffers a write (memory://, NATS, HTTP) lets the worker
    # answer fast plain calls one after another in one task, rather than a task for each.
    async with Worker(Tasks(), url, "q", concurrency=16) as worker, AsyncClient(url, "q") as client:
        for n in range(TRIAL_CALLS + 1):  # until `which` has shown itself fast: inline
            await client.which(n)
        tasks = await asyncio.gather(*(client.which(n) for n in range(10)))
        # The first, taken alone, has a task of its own; those taken while it was in hand
        # share one.
        assert len(set(tasks)) <= 2
        assert worker.stats.completed == TRIAL_CALLS + 11
        assert worker.record().in_flight == 0
        # (Calls to an async method still run side by side: test_concurrency_is_a_ceiling.)
