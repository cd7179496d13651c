"""The service fault tests serve from worker subprocesses, and how they start and watch them.

`FaultService` records each execution in the file $MM_FAULT_LOG names (one line: pid, then
what ran), so that a test can tell which process ran what, and how often, after the fact.
`overlap` shows a worker's concurrency from the outside: each call waits until `n` calls run
at once in its process, so `n` concurrent calls all return `n` only when the worker took all
of them at once. With several worker processes, a call also waits until all the calls of its
key have started, in whichever process (counted in a file beside the log): else the process
that filled up first would finish its calls and take one meant for another, which could then
never show that it runs `n` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]
FINISHED = ".finished"
"""The suffix of the log beside $MM_FAULT_LOG where `slow_add` records that its wait is over."""


class FaultService:
    """Served by worker subprocesses; records each execution in $MM_FAULT_LOG."""

    def __init__(self) -> None:
        self._running: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()
        self._full: dict[str, asyncio.Event] = {}

    def _record(self, what: object, log_name: str = "") -> None:
        with open(os.environ["MM_FAULT_LOG"] + log_name, "a") as log:
            log.write(f"{os.getpid()} {orjson.dumps(what).decode()}\n")

    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, value: object) -> object:
        return value

    async def delayed_add(self, a: int, b: int, seconds: float) -> int:
        """`add`, taking `seconds` (unrecorded: for steady loads)."""
        await asyncio.sleep(seconds)
        return a + b

    async def slow_add(self, a: int, b: int, seconds: float) -> int:
        self._record(a)
        await asyncio.sleep(seconds)
        self._record(a, FINISHED)  # before its reply and acknowledgement: see `finished`
        return a + b

    def crash(self) -> None:
        self._record("crash")
        os.kill(os.getpid(), signal.SIGKILL)

    async def overlap(self, key: str, n: int, within: float, everywhere: int = 0) -> int:
        """Wait until `n` calls with this `key` run at once here, and `everywhere` calls with
        it have started in all processes together (at most `within` seconds); the most that
        ran at once here."""
        full = self._full.setdefault(key, asyncio.Event())
        started = _mark_started(key) if everywhere else None
        self._running[key] += 1
        self._peak[key] = max(self._peak[key], self._running[key])
        if self._peak[key] >= n:
            full.set()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await full.wait()
                    # Counted by other processes too: no event to wait on.
                    while started is not None and started.stat().st_size < everywhere:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
            return self._peak[key]
        finally:
            self._running[key] -= 1


def _mark_started(key: str) -> Path:
    """Count a call of `key` as started, in a file every worker process writes to."""
    started = Path(os.environ["MM_FAULT_LOG"]).with_name(f"overlap-{key}")
    with open(started, "ab") as marks:
        marks.write(b".")  # one byte per call, appended: the file's size counts them
    return started


def executions(log: Path) -> list[tuple[int, object]]:
    """(pid, what) for each execution recorded in `log`, in order."""
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    return [(int(pid), orjson.loads(what)) for pid, what in (line.split(" ", 1) for line in lines)]


def finished(log: Path) -> list[tuple[int, object]]:
    """(pid, a) for each `slow_add` whose wait is over (its process then replies and
    acknowledges): a call started and not in here is still in its worker's hands."""
    return executions(log.with_name(log.name + FINISHED))


class WorkerProcess:
    """One `micromessaging worker` command serving `FaultService`; its stderr goes to a file,
    where its start line ("serving queue ...") tells when it serves."""

    def __init__(self, url: str, queue: str, log: Path, output: Path, *options: str) -> None:
        command = [
            sys.executable, "-m", "micromessaging", "worker",
            "tests.fault.service:FaultService",
            "--broker", url, "--queue", queue, "--log-level", "info", *options,
        ]  # fmt: skip
        self.output = output
        with open(output, "ab") as err:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env={**os.environ, "MM_FAULT_LOG": str(log)},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # its own group: --processes children die with it
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def serving(self) -> int:
        """How many times a process of this command logged that it serves."""
        with contextlib.suppress(OSError):
            return self.output.read_text(errors="replace").count("serving queue")
        return 0

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.output.read_text(errors="replace")[-3000:]
        return ""

    def kill(self) -> None:
        """SIGKILL, no goodbye (its --processes children too)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> None:
        """SIGTERM: drain and exit."""
        self.process.send_signal(signal.SIGTERM)

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP, returning once every thread of it has stopped: from then on what it has
        recorded stays as it is, until `resume` (or `kill`)."""
        os.killpg(self.process.pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while not _stopped(self.process.pid):
            assert time.monotonic() < deadline, "the worker did not stop"
            time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT: carry on after `pause`."""
        os.killpg(self.process.pid, signal.SIGCONT)


def _stopped(pid: int) -> bool:
    """Whether every thread of process `pid` is stopped by a signal (/proc, Linux)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                return False
    return True


@contextlib.contextmanager
def worker_processes(
    url: str, queue: str, folder: Path, *options: str, count: int = 1
) -> Iterator[list[WorkerProcess]]:
    """`count` worker processes on `queue`, always killed (with their children) at the end."""
    processes: list[WorkerProcess] = []
    try:
        for _ in range(count):
            n = len(list(folder.glob("worker-*.err")))
            log, output = folder / "executions", folder / f"worker-{n}.err"
            processes.append(WorkerProcess(url, queue, log, output, *options))
        yield processes
    finally:
        for process in processes:
            process.kill()
