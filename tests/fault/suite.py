"""The fault suite: the same faults, run against every broker.

A broker joins by subclassing `FaultSuite` in tests/fault/test_<broker>_faults.py, the way
tests/transports/contract.py is joined, and providing:

- the `node` fixture: a broker node of the test's own (tests/brokers.py), never a shared
  broker, since these tests kill, restart and starve it;
- the `url` fixture: the URL workers and clients use on that node (short heartbeats and
  ack waits, so that recovery takes a second or two, not the default 15 or 30);
- `stop_broker` / `start_broker`: take the broker down and bring it back on the same port;
- the `write_fault` fixture, parametrized with the names of the ways the broker can refuse
  writes for a moment, and `refusing(node, fault, queue)`, an async context manager that
  makes it refuse (or break what the worker writes to) while inside;
- `dead_letters(node, queue)`: the request bodies dead-lettered from the queue.

Workers are real processes (``python -m micromessaging worker``) serving
tests/fault/service.py's `FaultService`. Every scenario checks two things: every call got
exactly one answer, the right one, or a clear error (a `MicromessagingError`) before its
timeout, none hanging; and afterwards the worker is back at full concurrency by itself
(`back_at_full_concurrency`: as many calls as its concurrency, all running at once).
A transport that cannot show a fault overrides its test with a skip that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from micromessaging import AsyncClient, ErrorCode, MicromessagingError, RemoteError

from .service import WorkerProcess, executions, finished, worker_processes

SLACK = 2.0
"""How much later than its timeout a call may end (a loaded machine, a slow close)."""


async def eventually(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait until `predicate()` is true, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout:g} s")
        await asyncio.sleep(0.01)


async def serving(*workers: WorkerProcess, count: int | None = None, timeout: float = 30) -> None:
    """Wait until the worker processes have logged that they serve (`count` times in all)."""
    wanted = len(workers) if count is None else count

    def up() -> bool:
        for worker in workers:
            if worker.process.poll() is not None:
                raise AssertionError(f"a worker exited: {worker.log_text()}")
        return sum(worker.serving() for worker in workers) >= wanted

    await eventually(up, timeout, f"{wanted} worker processes serving")


@dataclass
class Outcome:
    """What one call gave: its result or exception, and how long it took."""

    started: float
    took: float
    value: object
    expected: object

    @property
    def failed(self) -> bool:
        return isinstance(self.value, BaseException)

    def problem(self, timeout: float) -> str | None:
        """Why this outcome breaks the rule (one right answer or a clear error, in time)."""
        if self.took > timeout + SLACK:
            return f"took {self.took:.1f} s against a timeout of {timeout:g} s"
        if self.failed:
            if isinstance(self.value, MicromessagingError):
                return None
            return f"failed with {self.value!r}, not a MicromessagingError"
        if self.value != self.expected:
            return f"answered {self.value!r} where {self.expected!r} was right"
        return None


async def outcome_of(call: Awaitable[Any], expected: object) -> Outcome:
    """Await `call`; its outcome, whatever it raised."""
    started = time.monotonic()
    try:
        value: object = await call
    except Exception as exc:
        value = exc
    return Outcome(started, time.monotonic() - started, value, expected)


def check(outcomes: list[Outcome], timeout: float) -> None:
    """Every call got one right answer or a clear error before its timeout."""
    problems = [p for o in outcomes if (p := o.problem(timeout)) is not None]
    assert not problems, f"{len(problems)} of {len(outcomes)} calls: {problems[:5]}"


class Load:
    """A steady load of calls on `lanes` lanes, each outcome kept: `async with Load(...)`."""

    def __init__(self, client: AsyncClient, timeout: float, lanes: int = 8, hold: float = 0.02):
        self.client, self.timeout, self.lanes, self.hold = client, timeout, lanes, hold
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Future[Any] | None = None

    async def _lane(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            # Each call takes a little while, so that the worker always holds some when a
            # fault strikes: that is when settling a request goes wrong.
            call = self.client.call("delayed_add", n, i, self.hold, timeout=self.timeout)
            outcome = await outcome_of(call, n + i)
            self.outcomes.append(outcome)
            if outcome.failed:
                await asyncio.sleep(0.05)  # a failing broker is not hammered

    def since(self, moment: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.started >= moment]

    def successes_since(self, moment: float) -> int:
        return sum(not o.failed for o in self.since(moment))

    def failures_since(self, moment: float) -> int:
        return sum(o.failed for o in self.since(moment))

    async def answered(self, count: int, since: float = 0.0, within: float = 20) -> None:
        """Wait until `count` calls started after `since` were answered."""
        await eventually(
            lambda: self.successes_since(since) >= count, within, f"{count} calls answered"
        )

    async def noticed(self, since: float, within: float) -> bool:
        """Wait (at most `within` s) until a call started after `since` has failed."""
        with contextlib.suppress(AssertionError):
            await eventually(lambda: self.failures_since(since) > 0, within)
            return True
        return False

    async def __aenter__(self) -> Load:
        self._task = asyncio.gather(*(self._lane(n) for n in range(self.lanes)))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, self.timeout + SLACK + 5)


async def back_at_full_concurrency(
    client: AsyncClient, concurrency: int, processes: int = 1, within: float = 5, rounds: int = 3
) -> None:
    """`concurrency` calls per worker process all run at once: no slot was lost.

    Tried `rounds` times: a request may reach a worker late (JetStream redelivers what went
    to a killed worker's pull after ack_wait), and land on a process that was full, while
    another waits for it with a slot free. A lost slot fails every round."""
    seen = []
    for _ in range(rounds):
        key = uuid.uuid4().hex
        calls = [
            client.call(
                "overlap",
                key,
                concurrency,
                within,
                concurrency * processes,
                timeout=2 * within + 10,
            )
            for _ in range(concurrency * processes)
        ]
        peaks = await asyncio.gather(*calls)
        if min(peaks) >= concurrency:
            return
        seen.append(min(peaks))
    raise AssertionError(
        f"the worker ran at most {max(seen)} calls at once, not its {concurrency} "
        f"({rounds} tries of {concurrency * processes} calls at once)"
    )


class FaultSuite:
    """Faults every broker must survive; subclasses provide the hooks above."""

    concurrency = 8
    redelivers = True
    """A killed worker's requests go to another worker (at least once): not so over HTTP."""

    @pytest.fixture
    def node(self) -> object:
        raise NotImplementedError

    @pytest.fixture
    def url(self, node: object) -> str:
        raise NotImplementedError

    @pytest.fixture
    def write_fault(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def queue(self) -> str:
        return f"mm-fault-{uuid.uuid4().hex[:12]}"

    async def stop_broker(self, node: Any) -> None:
        raise NotImplementedError

    async def start_broker(self, node: Any) -> None:
        raise NotImplementedError

    def refusing(self, node: Any, fault: str, queue: str) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def dead_letters(self, node: Any, queue: str) -> list[bytes]:
        raise NotImplementedError

    # --- workers killed, stopped, crashed ------------------------------------------------

    async def test_kill_9_with_calls_in_flight(self, url: str, queue: str, tmp_path: Path) -> None:
        c = self.concurrency
        timeout = 30.0
        options = ("--concurrency", str(c))
        with worker_processes(url, queue, tmp_path, *options, count=2) as (victim, survivor):
            await serving(victim, survivor)
            async with AsyncClient(url, queue, timeout=timeout) as client:
                calls = [
                    asyncio.create_task(outcome_of(client.slow_add(i, 1, 0.02), i + 1))
                    for i in range(1000)
                ]
                log = tmp_path / "executions"

                def victim_holding() -> bool:
                    # Stopped (SIGSTOP), the victim holds what its records say it started and
                    # did not finish: nothing of those was answered or acknowledged, and it
                    # dies holding them. (Judged while it ran, from the client's view or its
                    # records, a loaded machine sometimes let it finish every call it had
                    # started before the kill landed, and nothing was delivered again.)
                    if sum(c.done() for c in calls) < 200:
                        return False
                    victim.pause()
                    started = {i for pid, i in executions(log) if pid == victim.pid}
                    ended = {i for pid, i in finished(log) if pid == victim.pid}
                    if len(started - ended) >= 2:
                        return True
                    victim.resume()
                    return False

                await eventually(victim_holding, 30, "200 calls answered, the victim holding some")
                victim.kill()  # SIGKILL, while stopped: no goodbye, calls in its hands
                killed = time.monotonic()
                outcomes = await asyncio.gather(*calls)
                check(outcomes, timeout)
                self.check_killed_workers_calls(outcomes, killed, log, victim, survivor)
                assert survivor.process.poll() is None
                await back_at_full_concurrency(client, c)

    def check_killed_workers_calls(
        self,
        outcomes: list[Outcome],
        killed: float,
        log: Path,
        victim: WorkerProcess,
        survivor: WorkerProcess,
    ) -> None:
        """At least once: the calls the victim held were run again by the survivor."""
        assert [o.value for o in outcomes] == [o.expected for o in outcomes]  # none failed
        ran = executions(log)
        by_victim = {what for pid, what in ran if pid == victim.pid}
        by_survivor = {what for pid, what in ran if pid == survivor.pid}
        assert by_victim | by_survivor == set(range(len(outcomes)))
        assert by_victim & by_survivor, "nothing the victim held was delivered again"

    async def test_sigterm_drains_and_leaves_the_rest(
        self, url: str, queue: str, tmp_path: Path
    ) -> None:
        timeout = 30.0
        log = tmp_path / "executions"
        with worker_processes(url, queue, tmp_path, "--concurrency", "4") as (worker,):
            await serving(worker)
            async with AsyncClient(url, queue, timeout=timeout) as client:
                calls = [
                    asyncio.create_task(outcome_of(client.slow_add(i, 1, 1.0), i + 1))
                    for i in range(10)
                ]
                await eventually(lambda: len(executions(log)) == 4, 15, "4 calls running")
                worker.terminate()
                started = {what for _, what in executions(log)}
                assert await asyncio.to_thread(worker.process.wait, 20) == 0
                for i in started:  # in flight: finished and answered before the exit
                    assert calls[i].done() and calls[i].result().value == i + 1
                rest = {i: call for i, call in enumerate(calls) if i not in started}
                ran_later = await self.check_drained_rest(url, queue, tmp_path, client, rest)
                check([call.result() for call in calls], timeout)
        ran = sorted(what for _, what in executions(log))
        assert ran == sorted(started | ran_later)  # each once

    async def check_drained_rest(
        self,
        url: str,
        queue: str,
        folder: Path,
        client: AsyncClient,
        rest: dict[int, asyncio.Task[Outcome]],
    ) -> set[int]:
        """The calls not started wait for another worker, which answers them; which ran."""
        assert not any(call.done() for call in rest.values())
        with worker_processes(url, queue, folder, "--concurrency", str(self.concurrency)) as (
            other,
        ):
            outcomes = await asyncio.wait_for(asyncio.gather(*rest.values()), 30)
            assert not any(o.failed for o in outcomes)
            await back_at_full_concurrency(client, self.concurrency)
            assert other.process.poll() is None
        return set(rest)

    async def test_poison_request_is_dead_lettered_and_answered(
        self, node: Any, url: str, queue: str, tmp_path: Path
    ) -> None:
        c = self.concurrency
        options = ("--processes", "2", "--max-deliveries", "3", "--concurrency", str(c))
        with worker_processes(url, queue, tmp_path, *options) as (supervisor,):
            await serving(supervisor, count=2)
            async with AsyncClient(url, queue, timeout=60) as client:
                started = time.monotonic()
                with pytest.raises(RemoteError) as caught:
                    await client.crash()  # each delivery kills the worker that runs it
                assert caught.value.code == ErrorCode.DELIVERY_LIMIT  # an error, not a timeout
                assert time.monotonic() - started < 60
                await serving(supervisor, count=2 + 3)  # each dead one was replaced
                assert await client.add(2, 3) == 5
                await back_at_full_concurrency(client, c, processes=2)
        assert [what for _, what in executions(tmp_path / "executions")] == ["crash"] * 3
        dead = [orjson.loads(body) for body in await self.dead_letters(node, queue)]
        assert [request["method"] for request in dead] == ["crash"]

    # --- the broker restarted, or refusing writes ----------------------------------------

    async def test_broker_restart_under_load(
        self, node: Any, url: str, queue: str, tmp_path: Path
    ) -> None:
        timeout = 5.0
        options = ("--concurrency", str(self.concurrency))
        with worker_processes(url, queue, tmp_path, *options) as (worker,):
            await serving(worker)
            async with AsyncClient(url, queue, timeout=timeout) as client:
                async with Load(client, timeout, lanes=2 * self.concurrency) as load:
                    await load.answered(50)
                    stopped = time.monotonic()
                    await self.stop_broker(node)
                    assert await load.noticed(stopped, timeout + SLACK), "outage unnoticed"
                    await self.start_broker(node)
                    restarted = time.monotonic()
                    # Both ends reconnect by themselves and go on.
                    await load.answered(50, since=restarted, within=30)
                check(load.outcomes, timeout)
                await back_at_full_concurrency(client, self.concurrency)
            assert worker.process.poll() is None

    async def test_broker_refusing_writes_for_a_moment(
        self, node: Any, url: str, queue: str, write_fault: str, tmp_path: Path
    ) -> None:
        timeout = 5.0
        options = ("--concurrency", str(self.concurrency))
        with worker_processes(url, queue, tmp_path, *options) as (worker,):
            await serving(worker)
            async with AsyncClient(url, queue, timeout=timeout) as client:
                async with Load(client, timeout, lanes=2 * self.concurrency, hold=0.05) as load:
                    await load.answered(50)
                    async with self.refusing(node, write_fault, queue):
                        # A moment: long enough for the calls in the worker's hands to end
                        # and be settled (replied to, acknowledged) while writes fail, and
                        # until a caller noticed (at most 3 s: some faults only delay).
                        await asyncio.gather(
                            asyncio.sleep(20 * load.hold), load.noticed(time.monotonic(), 3.0)
                        )
                    lifted = time.monotonic()
                    await load.answered(50, since=lifted, within=30)
                check(load.outcomes, timeout)
                await back_at_full_concurrency(client, self.concurrency)
            assert worker.process.poll() is None


@contextlib.asynccontextmanager
async def doing(action: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """A fault that is one action on entering (the worker must mend what it broke)."""
    await action()
    yield
