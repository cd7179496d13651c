"""Where a RabbitMQ worker may send a reply: direct reply-to, or a caller's own reply queue.

A request's ``reply_to`` is whatever its publisher wrote, and a reply published to it lands
in any queue it names: another service's work queue (a planted request), a dead-letter
queue (a fake dead letter), the worker's own queue. So a worker replies only to

- direct reply-to (``amq.rabbitmq.reply-to.<...>``, routed by the broker to the channel
  of the caller that published the request), or
- a queue exclusive to another connection: a caller's reply queue, as the seed's client
  declares it (``ch.queue('', exclusive: true)``, named ``amq.gen-<...>`` by the broker).

The broker tells the second kind apart: a passive declaration of a queue exclusive to
another connection is refused (RESOURCE_LOCKED), one of a shared queue succeeds. The
verdict on each name is kept for `VERDICT_TTL` seconds, so a caller's many requests cost
one look. A reply queue that no longer exists means its caller has gone (it lived no longer
than its caller's connection): the request is not run, like one whose deadline has passed.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .connection import Link, QueueKind
from .wire import is_direct_reply_to, reply_to_refusal

T = TypeVar("T")

VERDICT_TTL = 10.0
"""Seconds a verdict on a queue name is kept (a client-named queue may change hands)."""
VERDICTS_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a reply may go to an address; why not, when it may not."""

    usable: bool
    refusal: str | None = None
    """Why not (the request is dead-lettered); None when not usable: the caller has gone."""


USABLE = Verdict(True)
GONE = Verdict(False)


class ReplyAddresses:
    """Judges the ``reply_to`` of requests to one queue, asking the broker when the name
    alone can't tell."""

    def __init__(
        self,
        link: Link,
        queue: str,
        retrying: Callable[[str, Callable[[], Awaitable[QueueKind]]], Awaitable[QueueKind]],
    ) -> None:
        self._link = link
        self._queue = queue
        self._retrying = retrying
        self._verdicts: OrderedDict[str, tuple[Verdict, float]] = OrderedDict()
        self._asking: dict[str, asyncio.Future[Verdict]] = {}
        self.probes = 0
        """How many times the broker was asked about a name."""

    async def judge(self, reply_to: str) -> Verdict:
        """Whether a reply may go to `reply_to`; broker errors are retried while transient."""
        if is_direct_reply_to(reply_to):
            return USABLE
        refusal = reply_to_refusal(reply_to, self._queue)
        if refusal is not None:
            return Verdict(False, refusal)
        kept = self._verdicts.get(reply_to)
        if kept is not None and kept[1] > time.monotonic():
            self._verdicts.move_to_end(reply_to)
            return kept[0]
        asking = self._asking.get(reply_to)
        if asking is None:
            asking = self._asking[reply_to] = asyncio.ensure_future(self._ask(reply_to))
            asking.add_done_callback(lambda done: self._asked(reply_to, done))
        return await asyncio.shield(asking)

    def _asked(self, reply_to: str, done: asyncio.Future[Verdict]) -> None:
        self._asking.pop(reply_to, None)
        if not done.cancelled():
            done.exception()  # retrieved: its waiters may all have gone

    async def _ask(self, reply_to: str) -> Verdict:
        self.probes += 1
        kind = await self._retrying(
            "checking a reply address", lambda: self._link.probe_queue(reply_to)
        )
        shown = ascii(reply_to[:80])
        if kind is QueueKind.EXCLUSIVE:
            verdict = USABLE
        elif kind is QueueKind.MISSING:
            verdict = GONE
        elif kind is QueueKind.SHARED:
            verdict = Verdict(False, f"reply_to {shown} is a shared queue, not a reply queue")
        else:
            verdict = Verdict(False, f"reply_to {shown} can't be checked (access refused)")
        self._verdicts[reply_to] = (verdict, time.monotonic() + VERDICT_TTL)
        while len(self._verdicts) > VERDICTS_KEPT:
            self._verdicts.popitem(last=False)
        return verdict
