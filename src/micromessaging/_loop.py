"""Which event loop a worker process runs on: uvloop when it is installed, else asyncio's.

A worker's cost per call is mostly the event loop's: waking on a socket, reading, writing,
scheduling callbacks. asyncio does that work in Python; uvloop (libuv, compiled) does it in
C, and uvicorn already picks it when it is installed. Measured on the seed's Calculator over
Redis (benchmarks/redis_vs_seed.py), a worker on uvloop answers sequential calls about a
fifth sooner and spends less CPU per call at 64 in flight. ``--loop asyncio`` keeps the
standard loop (to rule the loop out when chasing a problem); ``--loop uvloop`` insists.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._exceptions import ConfigurationError

T = TypeVar("T")

LOOPS = ("auto", "asyncio", "uvloop")
"""What ``--loop`` accepts: the names uvicorn's ``--loop`` uses for the same choice."""


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop `name` means (None: asyncio's own)."""
    if name not in LOOPS:
        raise ConfigurationError(f"unknown event loop {name!r}: choose one of {', '.join(LOOPS)}")
    if name == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as exc:
        if name == "auto":
            return None
        raise ConfigurationError(
            "--loop uvloop needs uvloop: pip install 'micromessaging[uvloop]'"
        ) from exc
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """`asyncio.run(main)` on the event loop `loop` names."""
    factory = loop_factory(loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_name() -> str:
    """The name of the running loop's kind, for the start line: "uvloop" or "asyncio"."""
    module = type(asyncio.get_running_loop()).__module__
    return module.partition(".")[0]
