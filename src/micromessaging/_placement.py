"""Where a service's plain ``def`` methods run: a thread, or inline once shown to be fast.

Handing each call of a sync method to a thread pool and back costs two thread wake-ups,
which for a method like the seed's ``add`` is most of the call. So a sync method starts
in the pool, timed; once `TRIAL_CALLS` calls have each taken less than `INLINE_LIMIT`,
with none taking `DEMOTE_LIMIT` or more in between, later calls run inline on the event
loop. An inline call that takes longer than `DEMOTE_LIMIT` sends the method back to the
pool at once, so a method that blocks (sleeps, waits on I/O, computes for long) does not
hold the loop again; one that blocks from the start never leaves the pool, so other calls
and the heartbeats always run.

A busy machine also makes fast calls look slow now and then (the process is not scheduled
for a few milliseconds, or a pool thread waits for the GIL while 64 calls are in flight),
so one slow call is no verdict for good. In the pool, a call between the two limits
neither counts towards the trial nor spoils it; a slower one starts it again. A demoted
method may earn its way back, with a trial four times longer after each demotion; after
`MAX_DEMOTIONS` it stays in the pool for good, so a method that blocks now and then stalls
the loop at most that many times. `FORGIVE_CALLS` inline calls without a stall forgive one
demotion. `Worker(inline=False)` (``--no-inline``) runs every sync call in the pool.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

logger = logging.getLogger("micromessaging.worker")

PLAIN_RESULTS = frozenset({int, float, str, bool, type(None), list, dict, tuple})
"""Result types that are never awaitable: told by one set lookup, where `inspect.isawaitable`
asks the abstract base classes (measured: 60 ns against 320, more than ``add`` itself)."""


def awaitable(result: object) -> bool:
    """Whether a plain method's `result` must be awaited (it returned a coroutine, say)."""
    return type(result) not in PLAIN_RESULTS and inspect.isawaitable(result)


TRIAL_CALLS = 20
"""Fast calls a sync method makes in the pool (none slow in between) before it runs inline."""
INLINE_LIMIT = 0.001
"""Seconds each trial call must stay under for the method to run inline."""
DEMOTE_LIMIT = 0.01
"""Seconds an inline call may take before its method goes back to the pool."""
MAX_DEMOTIONS = 4
"""Demotions after which a method stays in the pool for good."""
FORGIVE_CALLS = 100_000
"""Inline calls without a stall after which one demotion is forgiven."""


class Placement:
    """Where one sync method runs, learned from how long its calls take."""

    __slots__ = ("demotions", "inline", "inline_calls", "name", "needed", "trials")

    def __init__(self, name: str, inline: bool) -> None:
        self.name = name
        self.trials = 0 if inline else -1  # fast calls in a row in the pool; -1: never inline
        self.needed = TRIAL_CALLS
        self.inline = False
        self.inline_calls = 0
        self.demotions = 0

    @property
    def demoted(self) -> bool:
        """Whether an inline call of this method has ever been too slow."""
        return self.demotions > 0

    def call_inline(
        self, func: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Any:
        """`func(*args, **kwargs)` on the event loop, timed (only while `inline`).

        Not a coroutine: the dispatcher calls it directly, which saves a coroutine per call.
        A result that is awaitable (a plain function returning a coroutine) is the caller's.
        """
        started = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            took = time.perf_counter() - started
            if took > DEMOTE_LIMIT:
                self._demote(took)
            else:
                self.inline_calls += 1
                if self.inline_calls >= FORGIVE_CALLS:
                    self._forgive()

    async def call(
        self, executor: Executor | None, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """`func(*args, **kwargs)`, inline or in `executor`, as this method has earned."""
        if self.inline:
            result = self.call_inline(func, args, kwargs)
            if awaitable(result):
                result = await result
            return result
        loop = asyncio.get_running_loop()
        timed = functools.partial(_timed, func, args, kwargs)
        result, seconds = await loop.run_in_executor(executor, timed)
        if self.trials >= 0 and not self.inline:
            self._judge(seconds)
        if awaitable(result):  # a plain function that returned a coroutine
            result = await result
        return result

    def _judge(self, seconds: float) -> None:
        if seconds >= DEMOTE_LIMIT:
            self.trials = 0  # the trial starts again: calls in a row must be fast
            return
        if seconds >= INLINE_LIMIT:
            return  # not fast, or a pool thread kept waiting for the GIL: no progress
        self.trials += 1
        if self.trials >= self.needed:
            self.inline = True
            self.inline_calls = 0
            logger.debug(
                "%s is fast (< %.1f ms a call): running it inline", self.name, 1e3 * INLINE_LIMIT
            )

    def _demote(self, seconds: float) -> None:
        self.inline = False
        self.demotions += 1
        if self.demotions >= MAX_DEMOTIONS:
            self.trials = -1
            after = "from now on"
        else:
            self.trials = 0
            self.needed = TRIAL_CALLS * 4**self.demotions
            after = f"until {self.needed} calls in a row are fast"
        logger.info(
            "%s took %.1f ms on the event loop: it runs in the thread pool %s",
            self.name,
            seconds * 1000,
            after,
        )

    def _forgive(self) -> None:
        self.inline_calls = 0
        if self.demotions:
            self.demotions -= 1
            self.needed = TRIAL_CALLS * 4**self.demotions


def _timed(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, float]:
    started = time.perf_counter()
    result = func(*args, **kwargs)
    return result, time.perf_counter() - started
