"""The client's JetStream side: requests stored in their queues' streams, and taken back.

A request is published with JetStream's acknowledgement (the PubAck) addressed to the
client's inbox, ``<inbox>ack.<correlation id>``, and the call waits for its reply alone: its
timeout fires on time however slowly thousands of other PubAcks come. The PubAck says
where the request was stored (its sequence number) or why it was not (an error fails the
call at once; no stream at all, and the stream is set up again, once). A call that gives up
takes its request back out of the stream by that sequence number, so that no worker finds
it there later: requests abandoned by their callers don't pile up.

Calls made before a queue's stream is set up wait for one set-up together, and are then
published a batch per turn of the event loop, so that thousands of first calls don't hold
up the timeouts of others; deletions go out the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ..._exceptions import CallTimeout, TransportError
from .._shared import wait_shared
from ..base import TraceContext
from . import wire
from .compat import publish_checked
from .connection import NATS_ERRORS
from .streams import ensure_work_stream

PUBACK = "ack."
"""JetStream acknowledges storing a request to ``<inbox>ack.<correlation id>`` (correlation
ids begin with hex digits: never with this)."""
BATCH = 500
"""Requests published (or taken back) per turn of the event loop when thousands are due."""
PUBACK_GRACE = 30.0
"""Seconds after its call gave up that a request's PubAck is still awaited (to take it back)."""


@dataclass(slots=True)
class Call:
    """A request whose reply is awaited, as the client keeps it."""

    queue: str
    body: bytes
    deadline: float
    future: asyncio.Future[bytes]
    delivery_count: int = 1
    attempts: int = 0
    published: bool = False
    seq: int | None = None
    """JetStream: the request's sequence number in its stream, once its PubAck came."""
    trace: TraceContext | None = None
    sent: float = 0.0
    """When the call was first sent (a resent request keeps it: it waited all along)."""


class StoredRequests:
    """Stores a client's requests in JetStream, and takes back those their callers gave up on."""

    def __init__(
        self,
        js: JetStreamContext,
        settings: wire.NatsSettings,
        inbox: str,
        calls: dict[str, Call],
        connection: Callable[[], NATS],
        fail: Callable[[str, Exception], None],
        check_size: Callable[[NATS, int], None],
    ) -> None:
        self.js = js
        self._settings = settings
        self._inbox = inbox
        self._calls = calls
        self._connection = connection
        self._fail = fail
        self._check_size = check_size
        self._streams: dict[str, asyncio.Future[None]] = {}
        self._waiting: dict[str, list[tuple[str, Call]]] = {}
        """Calls waiting for their queue's stream to be set up, by queue."""
        self._unconfirmed: OrderedDict[str, tuple[Call, float]] = OrderedDict()
        """Calls that gave up before their PubAck came, until it does."""
        self._deletes: list[tuple[str, int]] = []
        self._tasks: set[asyncio.Future[None]] = set()

    # --- streams -----------------------------------------------------------------------------

    def set_up(self, queue: str) -> asyncio.Future[None]:
        """`queue`'s stream, set up once per client however many calls wait for it."""
        ready = self._streams.get(queue)
        if ready is None or (ready.done() and ready.exception() is not None):
            ready = self._streams[queue] = asyncio.ensure_future(
                ensure_work_stream(self.js, queue, self._settings.max_age, self._settings.replicas)
            )
            ready.add_done_callback(_retrieve)
        return ready

    async def notify(
        self, queue: str, body: bytes, headers: dict[str, str], deadline: float | None
    ) -> None:
        """Store a notification, confirmed: nobody waits for a reply, so the PubAck is it."""
        timeout = wire.remaining(deadline) if deadline else self._settings.connect_timeout
        try:
            for attempt in (1, 2):
                await wait_shared(self.set_up(queue), timeout)
                try:
                    await self.js.publish(queue, body, timeout=timeout, headers=headers)
                    return
                except nats.js.errors.NoStreamResponseError:
                    # The stream was deleted since we set it up: set it up again, once.
                    self._streams.pop(queue, None)
                    if attempt == 2:
                        raise
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise CallTimeout("JetStream did not store the request before the deadline") from exc
        except NATS_ERRORS as exc:
            self._streams.pop(queue, None)  # perhaps deleted: check again next time
            raise TransportError(f"JetStream refused a message for {queue!r}: {exc!r}") from exc

    # --- requests ----------------------------------------------------------------------------

    async def store(self, correlation_id: str, call: Call) -> None:
        """Publish a request to its stream; its PubAck comes to `confirmed`, not awaited here."""
        ready = self.set_up(call.queue)
        if ready.done():
            await self._put(correlation_id, call)
            return
        waiting = self._waiting.get(call.queue)
        if waiting is None:
            waiting = self._waiting[call.queue] = []
            ready.add_done_callback(functools.partial(self._stream_came, call.queue))
        waiting.append((correlation_id, call))

    def _stream_came(self, queue: str, ready: asyncio.Future[None]) -> None:
        waiting = self._waiting.pop(queue, [])
        exc = None if ready.cancelled() else ready.exception()
        if exc is None:
            self._in_background(self._put_waiting(waiting))
            return
        failure = TransportError(f"can't set up JetStream for {queue!r}: {exc!r}")
        for correlation_id, _ in waiting:
            self._fail(correlation_id, failure)

    async def _put_waiting(self, waiting: list[tuple[str, Call]]) -> None:
        for start in range(0, len(waiting), BATCH):
            for correlation_id, call in waiting[start : start + BATCH]:
                if not call.future.done():  # else it gave up before anything was published
                    await self._put_or_fail(correlation_id, call)
            await asyncio.sleep(0)

    async def _put(self, correlation_id: str, call: Call) -> None:
        nc = self._connection()
        headers = wire.request_headers(call.deadline, call.trace, call.sent or None)
        headers[wire.REPLY_TO] = self._inbox + correlation_id
        block = wire.header_block(headers)
        self._check_size(nc, len(block) + len(call.body))
        try:
            # The queue was checked when the call began, the reply subject is our inbox's.
            reply = self._inbox + PUBACK + correlation_id
            alone = len(self._calls) == 1  # nothing would join it: written at once
            await publish_checked(nc, call.queue, call.body, reply, block, alone=alone)
        except NATS_ERRORS as exc:
            raise TransportError(f"can't publish to NATS subject {call.queue!r}: {exc!r}") from exc
        call.published = True

    async def _put_or_fail(self, correlation_id: str, call: Call) -> None:
        try:
            await self.store(correlation_id, call)
        except TransportError as exc:
            self._fail(correlation_id, exc)

    def confirmed(self, correlation_id: str, msg: Msg) -> None:
        """A PubAck: where the request was stored, or why it was not."""
        call = self._calls.get(correlation_id)
        gave_up = call is None
        if call is None:
            call = self._unconfirmed.pop(correlation_id, (None, 0.0))[0]
            if call is None:
                return
        headers = msg.headers
        if headers and headers.get(wire.NATS_STATUS) == wire.NO_RESPONDERS:
            # No stream took it: deleted since we set it up. Set it up again, once.
            self._streams.pop(call.queue, None)
            if not gave_up and call.attempts == 0:
                call.attempts += 1
                self._in_background(self._put_or_fail(correlation_id, call))
            else:
                self._fail(correlation_id, TransportError(f"no stream takes {call.queue!r}"))
            return
        try:
            ack = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(ack, dict):
            return
        error = ack.get("error")
        if error is not None:
            what = error.get("description") if isinstance(error, dict) else error
            self._fail(correlation_id, TransportError(f"JetStream refused the request: {what}"))
            return
        seq = ack.get("seq")
        # Only a sequence number in the queue's own stream: a forged PubAck can't make us
        # delete anything elsewhere.
        if type(seq) is int and ack.get("stream") == wire.stream_name(call.queue):
            call.seq = seq
            if gave_up:
                self.take_back(correlation_id, call)

    def take_back(self, correlation_id: str, call: Call) -> None:
        """Delete the request of a call that gave up from its stream: nobody awaits it."""
        if call.seq is None:
            if call.published:  # its PubAck is still to come: taken back then
                now = time.monotonic()
                self._unconfirmed[correlation_id] = (call, now + PUBACK_GRACE)
                while self._unconfirmed and next(iter(self._unconfirmed.values()))[1] < now:
                    self._unconfirmed.popitem(last=False)
            return
        # Deleted by a task of its own, after the callers that gave up at the same moment
        # have all been told: thousands of them time out in one sweep.
        self._deletes.append((wire.stream_name(call.queue), call.seq))
        if len(self._deletes) == 1:
            self._in_background(self._delete_taken_back())

    async def _delete_taken_back(self) -> None:
        while self._deletes:
            batch, self._deletes = self._deletes[:BATCH], self._deletes[BATCH:]
            try:
                await _delete(self._connection(), batch)
            except TransportError:
                return  # closed
            await asyncio.sleep(0)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self, nc: NATS) -> None:
        """Stop; requests still to be taken back are, on `nc`, before it closes."""
        for task in list(self._tasks):
            task.cancel()
        deletes, self._deletes = self._deletes, []
        await _delete(nc, deletes)


async def _delete(nc: NATS, requests: list[tuple[str, int]]) -> None:
    """Delete requests (stream, sequence number) from their streams; no answer awaited."""
    with contextlib.suppress(*NATS_ERRORS):
        for stream, seq in requests:
            request = orjson.dumps({"seq": seq, "no_erase": True})
            await nc.publish(f"$JS.API.STREAM.MSG.DELETE.{stream}", request)


def gave_up(future: asyncio.Future[bytes]) -> bool:
    """Whether a call ended without its reply because its caller stopped waiting."""
    if not future.done() or future.cancelled():
        return True
    return isinstance(future.exception(), CallTimeout)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so that an error nobody awaits is not logged
