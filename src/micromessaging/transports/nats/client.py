"""The caller's end over NATS: one wildcard reply subscription, many calls in flight.

Each request's reply subject is ``<inbox prefix>.<client id>.<correlation id>``, all caught
by one subscription to ``<inbox prefix>.<client id>.>``; pending calls wait in a
`ReplyRouter`. In core mode the client also keeps each call's body until it is answered,
so a request nobody took (no responders) or a worker handed back (`Bounce`) is sent again:
core NATS stores nothing, the caller is the only place a request can be kept.

In JetStream mode a request is published with JetStream's acknowledgement (the PubAck)
addressed to ``<inbox>ack.<correlation id>``, caught by the same subscription: a call
waits for its reply alone, so its timeout fires on time however slowly thousands of other
PubAcks come, and a call that gives up takes its request back out of the stream (deleted
by the sequence number its PubAck gave), so that no worker finds it there later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ..._exceptions import NoWorkers, TransportError
from .._shared import ReplyRouter, connection_lost
from ..base import ClientTransport, TraceContext
from . import wire
from .compat import flush_in_order, publish_checked, subscribe_direct
from .connection import NATS_ERRORS, close_connection, open_connection, where
from .presence import Presence
from .stored import PUBACK, Call, StoredRequests, gave_up

logger = logging.getLogger("micromessaging.transport.nats")

RETRY_FIRST = 0.005
RETRY_MAX = 0.2
"""Resending a bounced request backs off from 5 ms to 200 ms (jittered) until its deadline."""
RECORDS_TIMEOUT = 0.5
"""Seconds a look at the worker records may take before the call goes ahead regardless."""


class NatsClientTransport(ClientTransport):
    """Sends requests to NATS subjects; replies come back through one wildcard inbox."""

    def __init__(self, url: str) -> None:
        self._settings = wire.parse_url(url)
        self._router = ReplyRouter()
        self._nc: NATS | None = None
        self._stored: StoredRequests | None = None
        """JetStream mode: where requests go."""
        self._inbox = ""
        self._calls: dict[str, Call] = {}
        self._resends: set[asyncio.Task[None]] = set()
        self._queues: set[str] = set()
        self._presence: Presence | None = None
        """The no-worker rule (None with ``worker_window=0``)."""

    async def connect(self) -> None:
        nc = await open_connection(
            self._settings, "micromessaging-client", on_disconnect=self._disconnected
        )
        self._inbox = f"{self._settings.inbox_prefix}.{secrets.token_hex(11)}."
        try:
            await subscribe_direct(nc, self._inbox + ">", self._arrived)
            await flush_in_order(nc, timeout=math.ceil(self._settings.connect_timeout))
        except NATS_ERRORS as exc:
            await close_connection(nc)
            raise TransportError(f"can't subscribe to replies on NATS: {exc!r}") from exc
        self._nc = nc
        window = self._settings.worker_window
        self._presence = (
            Presence(nc.jetstream(timeout=self._settings.connect_timeout), window, RECORDS_TIMEOUT)
            if window
            else None
        )
        if self._settings.jetstream:
            self._stored = StoredRequests(
                nc.jetstream(),
                self._settings,
                self._inbox,
                self._calls,
                lambda: self._live(""),
                self._fail,
                self._check_size,
            )

    def _live(self, queue: str) -> NATS:
        if self._nc is None or self._nc.is_closed:
            raise TransportError("the NATS client is closed")
        if queue and queue not in self._queues:
            self._queues.add(wire.check_queue(queue))
        return self._nc

    async def request(
        self, queue: str, body: bytes, deadline: float, trace: TraceContext | None = None
    ) -> bytes:
        self._live(queue)
        if self._stored is not None:
            # Before its stream is made: a queue nobody serves is left with nothing.
            await self._check_served(queue, deadline)
        correlation_id, future = self._router.expect(deadline)
        call = Call(queue, body, deadline, future, trace=trace, sent=time.time())
        self._calls[correlation_id] = call
        try:
            if self._stored is not None:
                await self._stored.store(correlation_id, call)
            else:
                await self._publish(correlation_id, call)
            return await future
        finally:
            self._router.forget(correlation_id)
            self._calls.pop(correlation_id, None)
            if self._stored is not None and gave_up(future):
                self._stored.take_back(correlation_id, call)

    async def send(
        self, queue: str, body: bytes, deadline: float | None, trace: TraceContext | None = None
    ) -> None:
        nc = self._live(queue)
        await self._check_served(queue, deadline)
        headers = wire.request_headers(deadline, trace)
        self._check_size(nc, wire.encoded_size(body, headers))
        if self._stored is not None:
            await self._stored.notify(queue, body, headers, deadline)
            return
        try:
            await nc.publish(queue, body, headers=headers)
        except NATS_ERRORS as exc:
            raise TransportError(f"can't publish to NATS subject {queue!r}: {exc!r}") from exc

    async def _check_served(self, queue: str, deadline: float | None) -> None:
        """`NoWorkers` unless a worker of `queue` was seen within the window (or none can
        tell: a server without JetStream keeps no worker records)."""
        presence = self._presence
        if presence is not None and await presence.served(queue, deadline) is False:
            raise self._no_workers(queue)

    def _no_workers(self, queue: str) -> NoWorkers:
        window = self._settings.worker_window
        return NoWorkers(queue, f"none seen in the last {window:g} s (?worker_window=)")

    def _no_responders(self, correlation_id: str) -> None:
        """Core: no worker is subscribed now. Sent again while one was seen within the window
        (a restart), else the call fails with `NoWorkers`."""
        call = self._calls.get(correlation_id)
        if call is None or call.future.done():
            return
        if self._presence is None:
            self._resend_later(correlation_id, 0)
            return
        task = asyncio.create_task(self._resend_if_served(correlation_id, call))
        self._resends.add(task)
        task.add_done_callback(self._resends.discard)

    async def _resend_if_served(self, correlation_id: str, call: Call) -> None:
        assert self._presence is not None
        served = await self._presence.served(call.queue, call.deadline)
        if served:
            self._resend_later(correlation_id, 0)
        elif served is None:
            self._fail(
                correlation_id,
                NoWorkers(
                    call.queue,
                    "none subscribed, and none answered this client in the last "
                    f"{self._settings.worker_window:g} s (the server keeps no worker records "
                    "without JetStream)",
                ),
            )
        else:
            self._fail(correlation_id, self._no_workers(call.queue))

    async def _publish(self, correlation_id: str, call: Call) -> None:
        nc = self._live(call.queue)
        block = wire.request_block(call.deadline, call.trace, call.sent, call.delivery_count)
        self._check_size(nc, len(block) + len(call.body))
        try:
            # The queue was checked by `_live`, the reply subject is our inbox's; a lone
            # call's request goes out at once (on uvloop too): nothing would join it.
            await publish_checked(
                nc, call.queue, call.body, self._inbox + correlation_id, block,
                alone=len(self._calls) == 1,
            )  # fmt: skip
        except NATS_ERRORS as exc:
            raise TransportError(f"can't publish to NATS subject {call.queue!r}: {exc!r}") from exc

    def _check_size(self, nc: NATS, size: int) -> None:
        """`size` (headers and body) is within the server's max_payload, else `TransportError`."""
        if size > nc.max_payload:
            # Sent anyway, the server would close the connection (and fail every other call).
            raise TransportError(
                f"a message of {size} bytes exceeds the NATS server's max_payload of "
                f"{nc.max_payload} bytes"
            )

    def _arrived(self, msg: Msg) -> None:
        # Called by the task reading the connection (`subscribe_direct`): nothing here waits.
        correlation_id = msg.subject[len(self._inbox) :]
        if correlation_id.startswith(PUBACK) and self._stored is not None:
            self._stored.confirmed(correlation_id[len(PUBACK) :], msg)
            return
        headers = msg.headers
        if headers and not msg.data:
            if headers.get(wire.NATS_STATUS) == wire.NO_RESPONDERS:
                self._no_responders(correlation_id)
                return
            status = headers.get(wire.STATUS)
            if status == wire.Bounce.BUSY:
                self._resend_later(correlation_id, 0)
                return
            if status == wire.Bounce.REQUEUE:
                self._resend_later(correlation_id, 1)
                return
            if status == wire.Bounce.TOO_LARGE:
                self._fail(
                    correlation_id,
                    TransportError("the reply exceeded the NATS server's max_payload"),
                )
                return
        if self._presence is not None:
            call = self._calls.get(correlation_id)
            if call is not None:
                self._presence.answer_from(call.queue)
        self._router.resolve(correlation_id, msg.data)

    def _fail(self, correlation_id: str, exc: Exception) -> None:
        call = self._calls.get(correlation_id)
        if call is not None and not call.future.done():
            call.future.set_exception(exc)

    def _resend_later(self, correlation_id: str, extra_deliveries: int) -> None:
        call = self._calls.get(correlation_id)
        if call is None or call.future.done() or self._stored is not None:
            return
        call.delivery_count += extra_deliveries
        call.attempts += 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** min(call.attempts, 10))
        delay *= random.uniform(0.5, 1.5)
        if time.time() + delay >= call.deadline:
            return  # the router fails it with CallTimeout at its deadline
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self._resend, correlation_id)

    def _resend(self, correlation_id: str) -> None:
        call = self._calls.get(correlation_id)
        if call is None or call.future.done():
            return
        task = asyncio.create_task(self._publish_again(correlation_id, call))
        self._resends.add(task)
        task.add_done_callback(self._resends.discard)

    async def _publish_again(self, correlation_id: str, call: Call) -> None:
        try:
            await self._publish(correlation_id, call)
        except TransportError as exc:
            self._fail(correlation_id, exc)

    async def _disconnected(self) -> None:
        # Replies published while we are away are lost (nobody holds our subscription):
        # fail the calls in flight now rather than let each wait for its deadline.
        if self._router:
            logger.warning("NATS connection lost; failing %d calls in flight", len(self._router))
        self._router.fail_all(connection_lost(f"NATS at {where(self._settings)}"))

    async def check(self) -> None:
        nc = self._nc
        if nc is None or nc.is_closed:
            raise TransportError("the NATS client is closed")
        try:
            await nc.flush(timeout=math.ceil(self._settings.connect_timeout))
        except NATS_ERRORS as exc:
            raise TransportError(
                f"NATS at {where(self._settings)} does not answer: {exc!r}"
            ) from exc

    async def aclose(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and self._stored is not None:
            await self._stored.aclose(nc)
        self._router.fail_all(TransportError("client closed"))
        for task in list(self._resends):
            task.cancel()
        if nc is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await nc.flush(timeout=1)
            await close_connection(nc)
