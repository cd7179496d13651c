"""HTTP joins the fault suite where it applies: workers killed with -9 and stopped with
SIGTERM, and a request that kills its worker.

HTTP has no broker to restart or starve, and no queue to redeliver from: a call a killed
worker held fails fast with a TransportError (its caller may call again), and calls waiting
in a stopping worker's backlog are answered with an error, not left for another worker.
Two worker processes share the port (SO_REUSEPORT); the kernel spreads connections.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from micromessaging import AsyncClient, MicromessagingError, TransportError
from tests.brokers import free_port

from .service import WorkerProcess, executions, worker_processes
from .suite import FaultSuite, Outcome, back_at_full_concurrency, serving

pytestmark = pytest.mark.fault

NO_BROKER = "HTTP has no broker between caller and worker: nothing to restart or starve"


class TestHttpFaults(FaultSuite):
    redelivers = False

    @pytest.fixture
    def node(self) -> None:
        return None

    @pytest.fixture
    def url(self) -> str:
        return f"http://127.0.0.1:{free_port()}"

    async def test_broker_restart_under_load(self, *args: Any, **kwargs: Any) -> None:
        pytest.skip(NO_BROKER)

    async def test_broker_refusing_writes_for_a_moment(self, *args: Any, **kwargs: Any) -> None:
        pytest.skip(NO_BROKER)

    def check_killed_workers_calls(
        self,
        outcomes: list[Outcome],
        killed: float,
        log: Path,
        victim: WorkerProcess,
        survivor: WorkerProcess,
    ) -> None:
        """At most once: the calls sent to the victim (running, or waiting in its backlog)
        failed with a TransportError, at once; the survivor answered the others."""
        failed = [o for o in outcomes if o.failed]
        assert failed, "the victim held no call?"
        for outcome in failed:
            assert isinstance(outcome.value, TransportError), outcome.value
            assert outcome.started + outcome.took - killed < 3, "not told at once"
        assert any(pid == survivor.pid for pid, _ in executions(log))

    async def check_drained_rest(
        self,
        url: str,
        queue: str,
        folder: Path,
        client: AsyncClient,
        rest: dict[int, asyncio.Task[Outcome]],
    ) -> set[int]:
        """The calls waiting in the stopped worker's backlog got an error; none ran."""
        outcomes = await asyncio.wait_for(asyncio.gather(*rest.values()), 10)
        assert all(isinstance(o.value, MicromessagingError) for o in outcomes), outcomes
        with worker_processes(url, queue, folder, "--concurrency", str(self.concurrency)) as (
            other,
        ):
            await serving(other)
            await back_at_full_concurrency(client, self.concurrency)
        return set()

    async def test_poison_request_is_dead_lettered_and_answered(
        self, url: str, queue: str, tmp_path: Path
    ) -> None:
        # No redelivery, so no delivery limit: the caller is told at once, and the
        # supervisor replaces the worker process.
        options = ("--processes", "2", "--concurrency", str(self.concurrency))
        with worker_processes(url, queue, tmp_path, *options) as (supervisor,):
            await serving(supervisor, count=2)
            async with AsyncClient(url, queue, timeout=30) as client:
                with pytest.raises(TransportError):
                    await asyncio.wait_for(client.crash(), 5)
                await serving(supervisor, count=3)
                assert await client.add(2, 3) == 5
        assert [what for _, what in executions(tmp_path / "executions")] == ["crash"]
