"""``worker --processes N``: run N worker processes and keep them running, within reason.

A worker process that ran for a while and died is restarted at once. One that dies within
`RestartPolicy.fast` seconds of its start crashed "fast": it is restarted after a delay that
doubles each time, and after `RestartPolicy.limit` fast crashes in a row the supervisor stops
the others and gives up, saying why (a broker that stays down, a service that can't start),
rather than restarting forever. SIGTERM or SIGINT: each worker drains and the supervisor
exits 0; a second signal makes the workers abandon their calls (back to the queue) at once.

The workers run in their own process group, so that a Ctrl-C in the terminal reaches only
the supervisor, which passes on one SIGTERM: a worker's second signal means "abandon". So
that they don't outlive a supervisor killed outright, each is told its supervisor's pid
(`SUPERVISOR_VARIABLE`) and drains once its parent is another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .exits import EXIT_INTERRUPTED, EXIT_WORKERS_FAILED

METRICS_PORT_VARIABLE = "MICROMESSAGING_METRICS_PORT"
"""Where a child reads its --metrics-port: each child gets the next port."""

logger = logging.getLogger("micromessaging.supervisor")

SUPERVISOR_VARIABLE = "MICROMESSAGING_SUPERVISOR_PID"
"""Set for each worker process: the pid of the supervisor it belongs to."""

KILL_MARGIN = 5.0
"""Seconds past the workers' grace before the supervisor kills those still draining."""


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a worker process that died, and when to stop trying."""

    fast: float = 10.0
    """A process that dies within this many seconds of its start crashed fast."""
    limit: int = 5
    """Fast crashes in a row (of one process slot) after which the supervisor gives up."""
    first_delay: float = 0.5
    """Seconds before restarting after a first fast crash; doubled after each further one."""
    max_delay: float = 8.0

    def delay(self, fast_crashes: int) -> float | None:
        """Seconds to wait before a restart after `fast_crashes` in a row; None: give up."""
        if fast_crashes <= 0:
            return 0.0
        if fast_crashes >= self.limit:
            return None
        return min(self.max_delay, self.first_delay * (1 << (fast_crashes - 1)))


class Supervisor:
    """Runs `count` copies of `command` and restarts them by `policy`."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        count: int,
        *,
        grace: float,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.command = list(command)
        self.env = {**env, SUPERVISOR_VARIABLE: str(os.getpid())}
        self.count = count
        self.grace = grace
        self.policy = policy or RestartPolicy()
        self.failure: str | None = None
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._signals = 0

    async def run(self) -> int:
        """Supervise until a signal or until giving up; the exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        slots = [asyncio.create_task(self._keep_running(slot)) for slot in range(self.count)]
        try:
            await self._stopping.wait()
            self._send(signal.SIGTERM)
            _, stragglers = await asyncio.wait(slots, timeout=self.grace + KILL_MARGIN)
            if stragglers:
                logger.warning(
                    "%d worker processes still running %.0fs after SIGTERM; killing them",
                    len(stragglers),
                    self.grace + KILL_MARGIN,
                )
                self._send(signal.SIGKILL)
                await asyncio.wait(stragglers)
                return EXIT_WORKERS_FAILED
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            for task in slots:
                task.cancel()
        if self.failure is not None:
            return EXIT_WORKERS_FAILED
        return EXIT_INTERRUPTED if self._signals > 1 else 0

    def stop(self) -> None:
        """Stop the workers: the first call lets them drain, a second makes them abandon."""
        self._signals += 1
        if self._signals == 1:
            logger.info("stopping %d worker processes", len(self._live()))
            self._stopping.set()
        else:
            logger.warning("second signal: the workers abandon their calls (back to the queue)")
            self._send(signal.SIGTERM)

    def _environment(self, slot: int) -> dict[str, str]:
        """A child's environment: each serves its metrics on its own port (PORT + slot)."""
        port = self.env.get(METRICS_PORT_VARIABLE)
        if not port:
            return self.env
        return {**self.env, METRICS_PORT_VARIABLE: str(int(port) + slot)}

    def _live(self) -> list[asyncio.subprocess.Process]:
        return [child for child in self._children.values() if child.returncode is None]

    def _send(self, signum: int) -> None:
        for child in self._live():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    async def _keep_running(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        fast_crashes = 0
        while not self._stopping.is_set():
            started = loop.time()
            child = await asyncio.create_subprocess_exec(
                *self.command, env=self._environment(slot), process_group=0
            )
            self._children[slot] = child
            if self._stopping.is_set():  # the stop came while it was starting
                child.send_signal(signal.SIGTERM)
            code = await child.wait()
            if self._stopping.is_set():
                return
            ran = loop.time() - started
            fast_crashes = fast_crashes + 1 if ran < self.policy.fast else 0
            delay = self.policy.delay(fast_crashes)
            if delay is None:
                self._give_up(fast_crashes, code)
                return
            logger.warning(
                "worker process %d exited with code %s after %.1fs; restarting it%s",
                child.pid,
                code,
                ran,
                f" in {delay:g}s" if delay else "",
            )
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    def _give_up(self, crashes: int, code: int) -> None:
        if self.failure is None:
            self.failure = (
                f"giving up: worker processes exited {crashes} times in a row within "
                f"{self.policy.fast:g}s of starting (last exit code {code}); see their errors above"
            )
        self._stopping.set()
