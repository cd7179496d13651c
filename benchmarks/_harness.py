"""What the benchmarks share: worker processes, load loops, and same-run ratios.

Every benchmark measures what users run: the seed's plain `Calculator` (ordinary ``def``
methods) served by ``micromessaging worker`` with every reliability feature on, against a
baseline run in the same rounds, interleaved, so that both see the same noisy machine.
Figures are medians; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CALCULATOR = "micromessaging.examples.calculator:Calculator"
ASYNC_SERVICE = "micromessaging.bench:BenchService"
HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def worker(
    broker: str,
    queue: str,
    *,
    target: str = CALCULATOR,
    concurrency: int = 64,
    processes: int = 1,
    extra: tuple[str, ...] = (),
) -> Iterator[subprocess.Popen[str]]:
    """``micromessaging worker`` serving `target` on `queue`, stopped (SIGTERM) at the end.

    Returns once every worker process has logged that it serves: a call made before would
    find no worker seen alive, and fail at once with NoWorkers. Later log lines at warning
    and above are passed on to this process's stderr.
    """
    command = [
        sys.executable, "-m", "micromessaging", "worker", target, "--broker", broker,
        "--queue", queue, "--concurrency", str(concurrency), "--processes", str(processes),
        "--log-level", "info", *extra,
    ]  # fmt: skip
    # The worker runs in benchmarks/: a relative PYTHONPATH (PYTHONPATH=src) must name the same
    # tree for it as for this process, or it serves whichever micromessaging is installed.
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in paths if p)}
    process = subprocess.Popen(
        command, cwd=HERE, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    try:
        _until_serving(process, processes)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _until_serving(process: subprocess.Popen[str], count: int, timeout: float = 60) -> None:
    assert process.stderr is not None
    stream = process.stderr
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    serving = 0
    while serving < count:
        line = stream.readline()
        if not line or time.monotonic() > deadline:
            raise RuntimeError("the worker did not start:\n" + "".join(seen[-20:]))
        seen.append(line)
        serving += "serving queue" in line

    def drain() -> None:
        for line in stream:
            if " INFO " not in line and " DEBUG " not in line:
                sys.stderr.write(line)

    threading.Thread(target=drain, daemon=True).start()


async def in_flight(call: Callable[[int], Awaitable[object]], calls: int, lanes: int) -> float:
    """Calls per second with `lanes` calls outstanding at all times."""
    numbers = iter(range(calls))

    async def lane() -> None:
        for i in numbers:
            assert await call(i) == i + 1

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(lanes)))
    return calls / (time.perf_counter() - started)


async def sequential(call: Callable[[int], Awaitable[object]], calls: int) -> float:
    """Seconds per call, one after another."""
    started = time.perf_counter()
    for i in range(calls):
        assert await call(i) == i + 1
    return (time.perf_counter() - started) / calls


def run_like_our_worker(main: Coroutine[Any, Any, T]) -> T:
    """Run a baseline's server on the event loop ``micromessaging worker`` picks (uvloop
    when it is installed, else asyncio's): the loop is not what a comparison measures."""
    from micromessaging._loop import run

    return run(main)


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat, Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def family_pids(root: int) -> list[int]:
    """`root` and every process descended from it (a supervisor and its worker processes)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    family = [root]
    for pid in family:  # grows as it goes: children, then theirs
        family += [child for child, parent in parents.items() if parent == pid]
    return family


def median_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median of the per-round ratios ours/theirs."""
    return statistics.median(o / t for o, t in zip(ours, theirs, strict=True))


def table(title: str, rows: list[tuple[str, str, str, float, str, bool | None]]) -> None:
    """The figures as a table: what, ours, the baseline's, the ratio, the target, PASS/MISS."""
    print(f"\n== {title}")
    print(f"{'':34}{'ours':>11}{'baseline':>11}{'ratio':>8}  target")
    for name, ours, theirs, ratio, target, ok in rows:
        verdict = "" if ok is None else pass_miss(ok)  # None: a figure without a target
        print(f"{name:34}{ours:>11}{theirs:>11}{ratio:7.2f}x  {target:7} {verdict}".rstrip())


def pass_miss(ok: bool) -> str:
    """PASS when a figure meets its target, MISS when it does not."""
    return "PASS" if ok else "MISS"


def us(seconds: float) -> str:
    """Seconds per call, in microseconds."""
    return f"{seconds * 1e6:,.0f} us"


def rate(calls_per_second: float) -> str:
    """Calls per second, rounded."""
    return f"{calls_per_second:,.0f}/s"


async def until_served(call: Callable[[], Awaitable[object]], timeout: float = 60) -> None:
    """Wait until `call` succeeds: the worker process is up and serving."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await call()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
