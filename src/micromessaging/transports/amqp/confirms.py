"""Publisher confirms for requests, pipelined: no lock, no round trip waited for per message.

On ``?queue_type=quorum`` and ``?durable=true`` the client's channel is in confirm mode.
aiormq's ``basic_publish`` takes a lock and a future per message; ours writes pre-encoded
frames (`Link.write`), so the sequence numbers are counted here instead: the broker numbers
a channel's publishes 1, 2, 3... in the order they reach it, which is the order of our
writes. A ``basic.ack`` (possibly ``multiple``) settles those numbers; a ``basic.nack``
means the broker did not take the request (a quorum queue without a leader, a queue
overflowing with ``reject-publish``): its call fails at once with `TransportError` instead of
waiting for its timeout. A call never waits for its confirm before waiting for its reply;
a notification does (that is all it waits for).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pamqp.commands import Basic

from ..._exceptions import TransportError

Refused = Callable[[TransportError], None]


class PendingConfirms:
    """The unconfirmed publishes of one channel, by sequence number."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._last = 0
        self._pending: dict[int, tuple[asyncio.Future[None] | None, Refused | None]] = {}
        self.refused = 0
        """How many publishes the broker refused (basic.nack)."""

    def __len__(self) -> int:
        return len(self._pending)

    def published(
        self, *, future: asyncio.Future[None] | None = None, on_refused: Refused | None = None
    ) -> int:
        """One more publish was written on the channel: `future` is resolved by its ack (or
        failed), `on_refused` runs if it is nacked."""
        self._last += 1
        self._pending[self._last] = (future, on_refused)
        return self._last

    def confirmed(self, frame: Basic.Ack | Basic.Nack) -> None:
        """The broker confirmed (ack) or refused (nack) publishes up to a sequence number."""
        tag = frame.delivery_tag or 0
        if frame.multiple:
            settled = []
            for number in self._pending:
                if number > tag:
                    break  # insertion order is sequence order
                settled.append(number)
            entries = [self._pending.pop(number) for number in settled]
        else:
            entry = self._pending.pop(tag, None)
            entries = [entry] if entry is not None else []
        nacked = isinstance(frame, Basic.Nack)
        for future, on_refused in entries:
            if not nacked:
                if future is not None and not future.done():
                    future.set_result(None)
                continue
            self.refused += 1
            exc = TransportError(f"{self.where} refused the request (basic.nack)")
            if future is not None and not future.done():
                future.set_exception(exc)
            if on_refused is not None:
                on_refused(exc)

    def lost(self, exc: TransportError) -> None:
        """The channel closed: nothing unconfirmed will be confirmed."""
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if future is not None and not future.done():
                future.set_exception(exc)
