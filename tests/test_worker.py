"""The worker: concurrency, deadlines, graceful stop and its grace period (over memory://)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections.abc import Callable

import pytest

from micromessaging import AsyncClient, CallTimeout, ConfigurationError, Worker
from micromessaging._placement import TRIAL_CALLS
from micromessaging._settings import mask_password
from micromessaging._worker import run_eagerly
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


@pytest.fixture
def alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory deliveries as a transport that reads them one by one would mark them: each
    its read's last (memory:// itself hands them over in the caller's task)."""
    monkeypatch.setattr(memory.MemoryDelivery, "arrived_alone", True)


async def test_a_lone_fast_call_is_answered_in_the_task_that_read_it(url: str, alone: None) -> None:
    async with Worker(Tasks(), url, "q") as worker, AsyncClient(url, "q") as client:
        calls = await until_inline(client)
        # memory:// hands a request over in the task that sends it: that task answers it.
        assert await client.which(0) == id(asyncio.current_task())
        assert worker.stats.completed == calls + 1
        assert worker.record().in_flight == 0


async def until_inline(client: AsyncClient) -> int:
    """Call `which` until it has shown itself fast and runs inline; the calls it took."""
    for calls in range(1, 10 * TRIAL_CALLS):
        if await client.which(0) != 0:
            return calls
    raise AssertionError("`which` never ran inline")


async def test_a_call_answered_in_the_reading_task_that_must_wait_goes_on_in_its_own(
    url: str, alone: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reply can't go out at once (a socket that is behind, a retry): the rest of the
    # settle runs in a task, and the call is answered all the same.
    gate = asyncio.Event()
    reading: list[asyncio.Task[object] | None] = []
    complete = memory.MemoryWorkerTransport._complete

    async def behind(self, delivery, reply):  # type: ignore[no-untyped-def]
        reading.append(asyncio.current_task())
        await gate.wait()
        reading.append(asyncio.current_task())
        await complete(self, delivery, reply)

    async with Worker(Tasks(), url, "q") as worker, AsyncClient(url, "q") as client:
        await until_inline(client)
        monkeypatch.setattr(memory.MemoryWorkerTransport, "_complete", behind)
        call = asyncio.create_task(client.which(0))
        await eventually(lambda: len(reading) == 1)
        assert reading[0] is call  # begun in the task that handed it over
        assert worker.record().in_flight == 1
        gate.set()
        assert await call == id(call)
        assert reading[1] not in (None, call)  # finished in a task of its own
        assert worker.record().in_flight == 0
        monkeypatch.setattr(memory.MemoryWorkerTransport, "_complete", complete)
        assert await client.which(0) == id(asyncio.current_task())  # and at once again


async def test_a_stop_while_a_call_answered_in_the_reading_task_waits_gives_it_back(
    url: str, alone: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[asyncio.Task[object] | None] = []

    async def stuck(self, delivery, reply):  # type: ignore[no-untyped-def]
        started.append(asyncio.current_task())
        await asyncio.Event().wait()

    async with AsyncClient(url, "q", timeout=10) as client:
        worker = Worker(Tasks(), url, "q", grace=0.2)
        running = asyncio.create_task(worker.run())
        await worker.started()
        await until_inline(client)
        with monkeypatch.context() as patched:
            patched.setattr(memory.MemoryWorkerTransport, "_complete", stuck)
            call = asyncio.create_task(client.which(0))
            await eventually(lambda: len(started) == 1)
            assert started[0] is call  # answered in the task that handed it over
            worker.stop()
            await asyncio.wait_for(running, 5)
        assert worker.record().in_flight == 0
        # Not settled: it went back, counted as delivered once more, and is answered anew.
        async with Worker(Tasks(), url, "q") as second:
            assert isinstance(await call, int)
            assert second.stats.completed == 1


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "never came true"
        await asyncio.sleep(0.005)


# --- run_eagerly: a coroutine run here up to its first wait, the rest in a task -----------

flag: contextvars.ContextVar[str] = contextvars.ContextVar("flag", default="unset")


async def test_a_coroutine_that_never_waits_runs_to_its_end_at_once() -> None:
    done: list[str] = []

    async def quick() -> None:
        flag.set("inside")
        done.append(flag.get())

    assert run_eagerly(quick()) is None
    assert done == ["inside"]
    assert flag.get() == "unset"  # it ran in a context of its own, as a task does


async def test_what_a_coroutine_awaits_reaches_it_in_the_task_that_runs_its_rest() -> None:
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    seen: list[object] = []

    async def waits() -> None:
        token = flag.set("inside")
        seen.append(await first)
        try:
            await second
        except KeyError as exc:
            seen.append(exc)
        await asyncio.sleep(0)  # a bare yield too
        flag.reset(token)  # the same context as where it was set
        seen.append(flag.get())

    rest = run_eagerly(waits())
    assert rest is not None and not rest.done()
    first.set_result(42)
    await asyncio.sleep(0)
    second.set_exception(KeyError("k"))
    await asyncio.wait_for(rest, 5)
    assert seen[0] == 42 and isinstance(seen[1], KeyError) and seen[2] == "unset"
    assert flag.get() == "unset"


@pytest.mark.parametrize("when", ["before its first step", "while it waits"])
@pytest.mark.parametrize("waits_on", ["future", "bare yield"])
async def test_cancelling_the_rest_cancels_the_coroutine_where_it_waits(
    waits_on: str, when: str
) -> None:
    future = asyncio.get_running_loop().create_future()
    outcome: list[str] = []

    async def waits() -> None:
        try:
            if waits_on == "future":
                await future
            else:
                await asyncio.sleep(0)
            outcome.append("resumed")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    rest = run_eagerly(waits())
    assert rest is not None
    if when == "while it waits":
        await asyncio.sleep(0)  # the task has taken over the wait
        assert not rest.done()
    rest.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rest
    assert outcome == ["cancelled"]
    assert future.cancelled() == (waits_on == "future")  # what it waited on, as a task does
