"""The bench command: calls per second and latency percentiles against a built-in service.

``micromessaging bench --broker URL --calls N --concurrency 1,16,64`` starts workers serving
`BenchService` (in-process for memory://, as separate processes otherwise, so that client
and worker don't share one core's worth of Python), then for each concurrency level keeps
that many calls in flight over one `AsyncClient` until N calls have been answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from ._client import AsyncClient
from ._exceptions import MicromessagingError
from ._types import JSON
from ._worker import Worker


class BenchService:
    """What the bench command calls: cheap methods, so the figures measure the plumbing."""

    async def add(self, a: float, b: float) -> float:
        """The sum of a and b."""
        return a + b

    async def echo(self, value: JSON) -> JSON:
        """The value, unchanged."""
        return value


@dataclass(frozen=True)
class LevelResult:
    """The figures for one concurrency level."""

    concurrency: int
    calls: int
    errors: int
    seconds: float
    calls_per_second: float
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain data, for --json."""
        return asdict(self)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The value below which `fraction` of the sorted values lie (nearest rank)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def measure(
    client: AsyncClient,
    calls: int,
    concurrency: int,
    payload: bytes = b"",
    on_call: Callable[[], None] | None = None,
) -> LevelResult:
    """Make `calls` calls with `concurrency` of them in flight at once."""
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
    await asyncio.gather(*(caller() for _ in range(min(concurrency, calls))))
    seconds = time.perf_counter() - started
    latencies.sort()
    return LevelResult(
        concurrency=concurrency,
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


@contextlib.asynccontextmanager
async def bench_workers(
    broker: str, queue: str, count: int, concurrency: int
) -> AsyncIterator[None]:
    """Serve `BenchService` on `queue` with `count` workers for the duration of the block."""
    if count <= 0:
        yield
        return
    if is_in_process(broker):
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(count):
                await stack.enter_async_context(
                    Worker(BenchService(), broker, queue, concurrency=concurrency)
                )
            yield
        return
    command = [
        sys.executable, "-m", "micromessaging", "worker", f"{__name__}:BenchService",
        "--broker", broker, "--queue", queue, "--concurrency", str(concurrency),
        "--log-level", "warning",
    ]  # fmt: skip
    processes = [await asyncio.create_subprocess_exec(*command) for _ in range(count)]
    try:
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def wait_until_served(client: AsyncClient, timeout: float = 30.0) -> None:
    """Return once a worker answers on the client's queue."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.call("add", 1, 1, timeout=1.0)
            return
        except MicromessagingError:
            if time.monotonic() > deadline:
                raise
