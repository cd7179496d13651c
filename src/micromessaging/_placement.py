"""Where a service's plain ``def`` methods run: a thread, or inline once shown to be fast.

Handing each call of a sync method to a thread pool and back costs two thread wake-ups,
which for a method like the seed's ``add`` is most of the call. So a sync method starts
in the pool, timed; once its first `TRIAL_CALLS` calls have each taken less than
`INLINE_LIMIT`, later calls run inline on the event loop. An inline call that takes longer
than `DEMOTE_LIMIT` sends the method back to the pool for good: a method that blocks
(sleeps, waits on I/O, computes for long) never holds the loop again, and one that blocks
from the start never leaves the pool, so other calls and the heartbeats always run.

The one stall this leaves is the single inline call during which a fast method first
blocks; `Worker(inline=False)` (``--no-inline``) runs every sync call in the pool instead.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

logger = logging.getLogger("micromessaging.worker")

TRIAL_CALLS = 20
"""Calls a sync method makes in the pool before it may run inline."""
INLINE_LIMIT = 0.001
"""Seconds each trial call must stay under for the method to run inline."""
DEMOTE_LIMIT = 0.01
"""Seconds an inline call may take before its method goes back to the pool for good."""


class Placement:
    """Where one sync method runs, learned from how long its calls take."""

    __slots__ = ("demoted", "inline", "name", "trials")

    def __init__(self, name: str, inline: bool) -> None:
        self.name = name
        self.trials = 0 if inline else -1  # -1: never inline
        self.inline = False
        self.demoted = False

    async def call(
        self, executor: Executor | None, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """`func(*args, **kwargs)`, inline or in `executor`, as this method has earned."""
        if self.inline:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                took = time.perf_counter() - started
                if took > DEMOTE_LIMIT:
                    self._demote(took)
        loop = asyncio.get_running_loop()
        timed = functools.partial(_timed, func, args, kwargs)
        result, seconds = await loop.run_in_executor(executor, timed)
        if self.trials >= 0 and not self.demoted:
            self._judge(seconds)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            result = await result
        return result

    def _judge(self, seconds: float) -> None:
        if seconds >= INLINE_LIMIT:
            self.trials = -1  # slow once in the pool: it stays there
            return
        self.trials += 1
        if self.trials >= TRIAL_CALLS:
            self.inline = True
            logger.debug(
                "%s is fast (< %.1f ms a call): running it inline", self.name, 1e3 * INLINE_LIMIT
            )

    def _demote(self, seconds: float) -> None:
        self.inline = False
        self.demoted = True
        self.trials = -1
        logger.info(
            "%s took %.1f ms on the event loop: it runs in the thread pool from now on",
            self.name,
            seconds * 1000,
        )


def _timed(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, float]:
    started = time.perf_counter()
    result = func(*args, **kwargs)
    return result, time.perf_counter() - started
