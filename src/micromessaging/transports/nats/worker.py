"""The worker's end over core NATS: a queue-group subscription, bounded by the concurrency.

Core NATS pushes every message of a queue group to one member chosen by the server, whether
or not that member is busy, and keeps nothing. So the transport holds at most
``concurrency`` unsettled deliveries plus a backlog (1024 unless the URL's ``backlog``
says otherwise), and bounces anything beyond (an empty reply with ``Mm-Status: busy``): the
caller sends it again, and the server may pick a worker with room. On stop the backlog is
bounced the same way, so a draining worker hands its waiting requests to the others; on
close, requests handed over and never settled are bounced with ``requeue`` (sent again with
the delivery count raised).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque

import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from ..._exceptions import TransportError
from .._context import TRACEPARENT, decode_sent, read_trace
from .._shared import LedgerDelivery, WorkerTransportBase, decode_deadline
from ..base import WorkerOptions
from . import presence, wire
from .compat import Client, flush_in_order, publish_checked, subscribe_direct
from .connection import NATS_ERRORS, close_connection, open_connection, where
from .streams import ensure_dead_letter_stream

logger = logging.getLogger("micromessaging.transport.nats")

DRAIN_TIMEOUT = 2.0
DEFAULT_BACKLOG = 1024
"""Requests a core worker holds beyond its concurrency before bouncing more (URL: backlog)."""


class NatsDelivery(LedgerDelivery):
    """A request handed to a NATS worker."""

    def __init__(
        self,
        transport: NatsWorkerBase,
        msg: Msg,
        reply_to: str | None,
        delivery_count: int,
    ) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.msg = msg
        self.refusal: str | None = None
        """Why the reply subject the message names must not be used, when it must not."""
        if reply_to and not (
            len(reply_to) <= wire.REPLY_SUBJECT_LIMIT and transport.inboxes.fullmatch(reply_to)
        ):  # the common case in one match, else the reason
            self.refusal = wire.reply_subject_refusal(reply_to, transport.inbox_prefix)
        self.reply_to = None if self.refusal else reply_to
        self.body = msg.data
        headers = msg.headers
        if headers:
            self.deadline = decode_deadline(headers.get(wire.DEADLINE))
            self.sent = decode_sent(headers.get(wire.SENT))
            self.trace = read_trace(headers) if TRACEPARENT in headers else None
        self.delivery_count = delivery_count

    @property
    def can_reply(self) -> bool:
        return bool(self.reply_to)

    async def dead_letter(self, reason: str, reply: bytes | None) -> None:
        if self.refusal is not None:
            reason = f"{reason} ({self.refusal})"
        await super().dead_letter(reason, reply)


class NatsWorkerBase(WorkerTransportBase[NatsDelivery]):
    """What the core and JetStream workers share: connection, replies, dead letters."""

    settles_at_once = True  # a reply, and JetStream's ack, are publishes: buffered, not awaited

    def __init__(self, url: str, options: WorkerOptions) -> None:
        super().__init__(options)
        self._settings = wire.parse_url(url)
        self.inbox_prefix = self._settings.inbox_prefix
        self.inboxes = wire.inbox_pattern(self.inbox_prefix)
        """The reply subjects a worker may publish to (`wire.reply_subject_refusal`)."""
        wire.check_queue(options.queue)
        self._nc: NATS | None = None
        self._records_js: JetStreamContext | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._dead_letter_stream = False
        """Whether this worker has seen its queue's dead-letter stream (or made it)."""

    def _connection(self) -> NATS:
        if self._nc is None:
            raise TransportError("the NATS worker is not connected")
        return self._nc

    async def _connect(self) -> NATS:
        nc = self._nc = await open_connection(
            self._settings,
            f"micromessaging-worker {self.queue}",
            on_reconnect=self._reconnected,
        )
        try:
            # Answers `status` (every mode), then says it is alive where clients look.
            for subject in (presence.status_subject(self.queue), presence.ALL_STATUS):
                await nc.subscribe(subject, cb=self._asked_status)
        except NATS_ERRORS as exc:
            await self._disconnect()
            raise TransportError(f"can't subscribe on NATS: {exc!r}") from exc
        self._records_js = nc.jetstream(timeout=self._settings.connect_timeout)
        await self._announce()
        self._heartbeat = asyncio.create_task(self._keep_announcing())
        return nc

    async def _announce(self) -> None:
        reporter = self.reporter
        if reporter is None or self._records_js is None:
            return
        try:
            kept = await presence.announce(self._records_js, reporter(), self._settings.replicas)
        except (*NATS_ERRORS, nats.js.errors.Error) as exc:
            logger.debug("worker record of %r not stored: %r", self.queue, exc)
            kept = True  # JetStream is there (it answered): try again next time
        if not kept:
            self._records_js = None

    async def _keep_announcing(self) -> None:
        while True:
            await asyncio.sleep(presence.HEARTBEAT)
            await self._announce()

    async def _asked_status(self, msg: Msg) -> None:
        reporter = self.reporter
        if reporter is None or wire.reply_subject_refusal(msg.reply, self.inbox_prefix):
            return
        with contextlib.suppress(*NATS_ERRORS):
            await self._connection().publish(msg.reply, orjson.dumps(reporter().to_json()))

    async def _reconnected(self) -> None:
        logger.info("worker of %r reconnected to NATS", self.queue)

    async def publish_reply(self, delivery: NatsDelivery, reply: bytes | None) -> None:
        """Send `reply` to the delivery's reply subject (when it has one)."""
        if reply is None or not delivery.reply_to:
            return
        nc = self._connection()
        block = None
        if len(reply) > nc.max_payload:
            logger.warning(
                "a reply of %d bytes exceeds the server's max_payload (%d): caller told",
                len(reply),
                nc.max_payload,
            )
            reply, block = b"", wire.header_block({wire.STATUS: wire.Bounce.TOO_LARGE})
        try:
            # `reply_to` passed `wire.reply_subject_refusal` when the request came.
            # A lone call's reply goes out at once (on uvloop too): nothing would join it.
            alone = len(self.ledger) == 1
            await publish_checked(nc, delivery.reply_to, reply, header_block=block, alone=alone)
        except NATS_ERRORS as exc:
            raise TransportError(f"can't publish a reply on NATS: {exc!r}") from exc

    async def _complete(self, delivery: NatsDelivery, reply: bytes | None) -> None:
        await self.publish_reply(delivery, reply)
        await self._acknowledge(delivery)

    async def _acknowledge(self, delivery: NatsDelivery) -> None:
        """Core NATS has nothing to acknowledge."""

    async def _bury(self, delivery: NatsDelivery, reason: str, reply: bytes | None) -> None:
        await self.keep_dead_letter(delivery, reason)
        await self._complete(delivery, reply)

    async def keep_dead_letter(self, delivery: NatsDelivery, reason: str) -> None:
        """Store the request in the queue's dead-letter stream, with the reason (core NATS
        without JetStream: publish it on the dead-letter subject, for whoever listens)."""
        nc = self._connection()
        headers = {
            wire.REASON: reason,
            wire.DELIVERY_COUNT: str(delivery.delivery_count),
            **wire.deadline_header(delivery.deadline),
        }
        if delivery.reply_to:
            headers[wire.REPLY_TO] = delivery.reply_to  # for a replay
        subject = wire.dead_letter_subject(self.queue)
        js = self._records_js
        if js is not None:
            try:
                if not self._dead_letter_stream:
                    # Made by the first dead letter (a publish before would reach
                    # subscribers of the subject twice).
                    await ensure_dead_letter_stream(js, self.queue, self._settings.replicas)
                    self._dead_letter_stream = True
                try:
                    await js.publish(subject, delivery.body, headers=headers)
                except nats.js.errors.NoStreamResponseError:
                    # Not made yet (only a dead letter makes it), or deleted by an operator:
                    # made again, or every dead letter would be retried for ever.
                    await ensure_dead_letter_stream(js, self.queue, self._settings.replicas)
                    await js.publish(subject, delivery.body, headers=headers)
                return
            except NATS_ERRORS as exc:
                if self._settings.jetstream:
                    raise TransportError(
                        f"can't store a dead letter in JetStream: {exc!r}"
                    ) from exc
                self._records_js = None  # core NATS without JetStream after all
        try:
            await nc.publish(subject, delivery.body, headers=headers)
        except NATS_ERRORS as exc:
            raise TransportError(f"can't publish a dead letter on NATS: {exc!r}") from exc

    async def _disconnect(self) -> None:
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._announce(), 2)  # seen until now: a restart waits
        self._records_js = None
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await nc.flush(timeout=1)
            await close_connection(nc)


class NatsWorkerTransport(NatsWorkerBase):
    """Takes requests from a core NATS queue group named after the queue."""

    def __init__(self, url: str, options: WorkerOptions) -> None:
        super().__init__(url, options)
        self._backlog: deque[NatsDelivery] = deque()
        backlog = self._settings.backlog
        self._backlog_limit = DEFAULT_BACKLOG if backlog is None else backlog
        self._sub: Subscription | None = None
        self._bouncing: set[asyncio.Task[None]] = set()
        self.dropped = 0

    async def _open(self) -> None:
        nc = await self._connect()
        try:
            self._sub = await subscribe_direct(nc, self.queue, self._arrived, queue=self.queue)
            # Serving once the server has the subscription, not merely the PING after it.
            await flush_in_order(nc, timeout=math.ceil(self._settings.connect_timeout))
        except NATS_ERRORS as exc:
            await self._disconnect()
            raise TransportError(f"can't subscribe to {self.queue!r} on NATS: {exc!r}") from exc

    def _arrived(self, msg: Msg) -> None:
        # Called by the task reading the connection (`subscribe_direct`): nothing here waits.
        delivery = NatsDelivery(self, msg, msg.reply or None, wire.read_count(msg.headers))
        slots = self.ledger.slots
        assert slots is not None
        if not self.receiving:
            self._bounce_soon(delivery, wire.Bounce.BUSY)
        elif slots.free > 0:
            connection = msg._client
            delivery.arrived_alone = isinstance(connection, Client) and connection.last_of_read
            self.hand_over(delivery)
        elif len(self._backlog) < self._backlog_limit:
            self._backlog.append(delivery)
        else:
            self._bounce_soon(delivery, wire.Bounce.BUSY)

    def _bounce_soon(self, delivery: NatsDelivery, status: str) -> None:
        task = asyncio.create_task(self._bounce(delivery, status))
        self._bouncing.add(task)
        task.add_done_callback(self._bouncing.discard)

    def _slot_freed(self) -> None:
        slots = self.ledger.slots
        assert slots is not None
        while self._backlog and self.receiving and slots.free > 0:
            self.hand_over(self._backlog.popleft())

    async def _bounce(self, delivery: NatsDelivery, status: str) -> None:
        if delivery.refusal is not None:
            # Nowhere it may go back to: kept as a dead letter instead, never redelivered.
            with contextlib.suppress(TransportError):
                await self.keep_dead_letter(delivery, f"no reply address ({delivery.refusal})")
            return
        if not delivery.reply_to:
            # A notification has nowhere to go back to: core NATS is at most once.
            self.dropped += 1
            logger.warning("dropped a notification on %r: worker full or stopping", self.queue)
            return
        with contextlib.suppress(*NATS_ERRORS, TransportError):
            await self._connection().publish(delivery.reply_to, b"", headers={wire.STATUS: status})

    async def _stop_taking(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            # Drain: the server stops sending, and what it already sent comes through
            # `_arrived`, which now bounces it back to its caller.
            with contextlib.suppress(*NATS_ERRORS):
                await asyncio.wait_for(sub.drain(), DRAIN_TIMEOUT)  # type: ignore[no-untyped-call]
        if self._bouncing:
            await asyncio.wait(list(self._bouncing))
        while self._backlog:
            await self._bounce(self._backlog.popleft(), wire.Bounce.BUSY)

    async def _give_back(self, deliveries: list[NatsDelivery]) -> None:
        if self._nc is not None:
            for delivery in deliveries:
                await self._bounce(delivery, wire.Bounce.REQUEUE)

    def describe(self) -> str:
        return f"NATS queue group {self.queue!r} at {where(self._settings)}, at most once"
