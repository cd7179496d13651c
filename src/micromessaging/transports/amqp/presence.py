"""Whether anyone serves a queue: the no-worker rule over RabbitMQ (``?worker_window=``).

A queue is served when the broker counts a consumer on it (a passive declaration's
``consumer_count``: any consumer, so the seed's Ruby worker counts), or when one of our
workers was seen alive within the client's window: every worker keeps the time it was last
alive in ``<queue>.alive``, a small durable queue holding one message (``x-max-length`` 1,
the oldest dropped) that it publishes every `HEARTBEAT` seconds and once more when it stops.
A worker that restarts, or whose connection is being re-established, has left a recent
heartbeat there, so calls wait for it; a queue nobody served for longer than the window
fails at once, and the client declares nothing for it.

The client reads a heartbeat without taking it: ``basic.get`` with acknowledgements, then
``basic.reject`` back into the queue. Another client looking at that same instant holds it
for one round trip; an empty answer is therefore asked again `EMPTY_RETRIES` times before it
counts. A client asks once per queue, then again every `RECHECK` seconds (in the background:
calls go on meanwhile) and after a call times out, never on every call.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .._context import decode_sent
from .connection import Link
from .wire import ALIVE_SUFFIX, SENT

HEARTBEAT = 5.0
"""Seconds between a worker's heartbeats: a crashed worker was alive at most this long
before its last one."""
ALIVE_TTL_MS = 3_600_000
"""A heartbeat lives an hour (``x-message-ttl``), and so does an unused ``<queue>.alive``
(``x-expires``): windows longer than an hour count as an hour."""
ALIVE_ARGUMENTS = {
    "x-max-length": 1,
    "x-overflow": "drop-head",
    "x-message-ttl": ALIVE_TTL_MS,
    "x-expires": ALIVE_TTL_MS,
}
RECHECK = 2.0
"""Seconds a "served" verdict is used before it is checked again (in the background)."""
EMPTY_RETRIES = 3
EMPTY_PAUSE = 0.02


def alive_queue(queue: str) -> str:
    """The name of `queue`'s heartbeat queue."""
    return queue + ALIVE_SUFFIX


@dataclass(frozen=True, slots=True)
class Served:
    """Whether a queue is served, and why not when it is not."""

    served: bool
    detail: str = ""


async def served(link: Link, queue: str, window: float) -> Served:
    """Whether `queue` has a consumer, or a heartbeat younger than `window` seconds."""
    state = await link.inspect_queue(queue)
    if state is not None and state[1] > 0:
        return Served(True)
    last = await last_heartbeat(link, queue)
    if last is not None and time.time() - last <= window:
        return Served(True)
    what = "no consumer" if state is not None else "the queue does not exist"
    if last is None:
        return Served(False, f"{what}, and no worker was ever seen alive (?worker_window=)")
    ago = time.time() - last
    return Served(False, f"{what}; the last worker was seen {ago:.0f} s ago (?worker_window=)")


async def last_heartbeat(link: Link, queue: str) -> float | None:
    """When a worker of `queue` was last seen alive (seconds since the epoch), or None."""
    for attempt in range(EMPTY_RETRIES):
        found, sent = await link.peek_header(alive_queue(queue), SENT)
        if not found:
            return None  # no heartbeat queue: no worker of ours ever served it
        if sent is not None:
            return decode_sent(sent)
        if attempt + 1 < EMPTY_RETRIES:
            await asyncio.sleep(EMPTY_PAUSE)  # another client may hold it for a moment
    return None
