"""Calls per second and latency percentiles against a service served for the occasion.

`run_bench` starts workers serving one of `SERVICES` on a fresh queue (in-process for
memory://, as separate processes otherwise, so that client and workers don't share one
core's worth of Python; an http:// worker listens on the URL's port), then for each level
keeps that many calls in flight over one `AsyncClient` until the calls of the level have
been answered. The ``bench`` command prints, writes and plots what it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ._client import AsyncClient
from ._exceptions import MicromessagingError, TransportError
from ._types import JSON
from ._worker import Worker


class BenchService:
    """The async bench service: cheap methods, so the figures measure the plumbing."""

    async def add(self, a: float, b: float) -> float:
        """The sum of a and b."""
        return a + b

    async def echo(self, value: JSON) -> JSON:
        """The value, unchanged."""
        return value


SERVICES = {
    "calculator": "micromessaging.examples.calculator:Calculator",
    "async": f"{__name__}:BenchService",
}
"""What ``--service`` picks: the seed's plain Calculator (sync methods, run in the worker's
thread pool), or `BenchService` (async methods, awaited on the worker's loop)."""


@dataclass(frozen=True)
class LevelResult:
    """The figures for one level of calls in flight."""

    in_flight: int
    calls: int
    errors: int
    seconds: float
    calls_per_second: float
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain data."""
        return asdict(self)


@dataclass(frozen=True)
class BrokerRun:
    """What one broker measured, level by level."""

    broker: str
    queue: str
    workers: int
    concurrency: int
    results: list[LevelResult] = field(default_factory=list)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The value below which `fraction` of the sorted values lie (nearest rank)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def measure(
    client: AsyncClient,
    calls: int,
    in_flight: int,
    payload: bytes = b"",
    on_call: Callable[[], None] | None = None,
) -> LevelResult:
    """Make `calls` calls with `in_flight` of them under way at once.

    Without `payload`: ``add(1, 5.1)``; with one: ``echo(payload)``.
    """
    latencies: list[float] = []
    errors = 0
    remaining = calls
    value = payload.decode() if payload else None

    async def caller() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                if value is None:
                    await client.add(1, 5.1)
                else:
                    await client.echo(value)
            except MicromessagingError:
                errors += 1
            latencies.append(time.perf_counter() - started)
            if on_call is not None:
                on_call()

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(min(in_flight, calls))))
    seconds = time.perf_counter() - started
    latencies.sort()
    return LevelResult(
        in_flight=in_flight,
        calls=calls,
        errors=errors,
        seconds=seconds,
        calls_per_second=calls / seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
    )


def is_in_process(broker: str) -> bool:
    """Whether workers for `broker` must live in this process (memory://)."""
    return urlsplit(broker).scheme == "memory"


def _service_object(target: str) -> object:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)()


class BenchWorkers:
    """Workers serving a bench service on one queue, for the duration of an ``async with``."""

    def __init__(self, broker: str, queue: str, count: int, concurrency: int, target: str):
        self.broker = broker
        self.queue = queue
        self.count = count
        self.concurrency = concurrency
        self.target = target
        self.processes: list[asyncio.subprocess.Process] = []
        self._stack = contextlib.AsyncExitStack()

    def exited(self) -> list[int]:
        """The exit codes of worker processes that have already ended."""
        return [p.returncode for p in self.processes if p.returncode is not None]

    async def __aenter__(self) -> BenchWorkers:
        if self.count <= 0:
            return self
        if is_in_process(self.broker):
            for _ in range(self.count):
                worker = Worker(
                    _service_object(self.target),
                    self.broker,
                    self.queue,
                    concurrency=self.concurrency,
                )
                await self._stack.enter_async_context(worker)
            return self
        command = [
            sys.executable, "-m", "micromessaging", "worker", self.target,
            "--queue", self.queue, "--concurrency", str(self.concurrency),
            "--processes", "1", "--log-level", "warning",
        ]  # fmt: skip
        # The URL goes in the environment, where `ps` doesn't show its password. Their own
        # process group: a Ctrl-C reaches only this process, which stops them itself.
        env = {**os.environ, "MICROMESSAGING_BROKER": self.broker}
        for _ in range(self.count):
            self.processes.append(
                await asyncio.create_subprocess_exec(*command, env=env, process_group=0)
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()
        for process in self.processes:
            if process.returncode is None:
                process.terminate()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def wait_until_served(
    client: AsyncClient, workers: BenchWorkers, timeout: float = 30.0
) -> None:
    """Return once a worker answers on the client's queue."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.call("add", 1, 1, timeout=1.0)
            return
        except MicromessagingError:
            if workers.exited():
                raise TransportError(
                    f"the bench's worker process exited with code {workers.exited()[0]} "
                    "before serving (its error is above)"
                ) from None
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)  # an unreachable broker fails at once: don't spin


async def run_bench(
    broker: str,
    queue: str,
    *,
    calls: int,
    levels: Sequence[int],
    workers: int,
    concurrency: int,
    target: str,
    payload: bytes = b"",
    on_level: Callable[[LevelResult], None] | None = None,
) -> BrokerRun:
    """Serve `target` with `workers` workers on `queue`, then measure each level."""
    run = BrokerRun(broker, queue, workers, concurrency)
    async with (
        BenchWorkers(broker, queue, workers, concurrency, target) as started,
        AsyncClient(broker, queue) as client,
    ):
        await wait_until_served(client, started)
        for level in levels:
            result = await measure(client, calls, level, payload)
            run.results.append(result)
            if on_level is not None:
                on_level(result)
    return run
