"""The worker's end over RabbitMQ: consume one queue with prefetch = concurrency; reply,
then acknowledge.

The reply and the ack leave in the same write on the same channel, reply first: RabbitMQ
handles a channel's frames in order, so a request is never acknowledged before its reply
is in the broker, and a worker killed before that leaves the request unacknowledged, to be
delivered to another worker. Replies are not confirmed: they go to a reply address that
lives no longer than its caller's connection, so a confirm would not make them any safer.

Delivery counting (classic queues only flag a redelivery): a redelivered message is
republished with our ``mm-deliveries`` header raised by one, confirmed, and the original
acknowledged, before any worker runs it again. Quorum queues count for us
(``x-delivery-count``). Dead letters go to ``<queue>.dead``, confirmed, before the ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import secrets
import socket
import time
from typing import cast

from aiormq import Channel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ..._exceptions import TransportError
from .._shared import LedgerDelivery, WorkerTransportBase, encode_deadline
from ..base import WorkerOptions
from . import compat
from .connection import Link, describe, is_transient
from .frames import encode_ack, encode_nack, encode_publish
from .presence import ALIVE_ARGUMENTS, HEARTBEAT, alive_queue
from .replies import ReplyAddresses
from .stats import StatsResponder
from .wire import (
    COUNT_LIMIT,
    DEAD_AT,
    DEAD_ID,
    DEAD_REASON,
    DELIVERIES,
    JSON_CONTENT_TYPE,
    SENT,
    deadline_of,
    delivery_count_of,
    expiration_for,
    parse_url,
    republishable,
    sent_of,
    trace_of,
)

logger = logging.getLogger("micromessaging.transport.amqp")

MAX_PREFETCH = 65535  # basic.qos takes a short
CONFIRM_TIMEOUT = 10.0


class AmqpDelivery(LedgerDelivery):
    """A request taken from a RabbitMQ queue, acknowledged once settled."""

    def __init__(
        self,
        transport: AmqpWorkerTransport,
        channel: Channel,
        tag: int,
        message: DeliveredMessage,
        delivery_count: int,
        deadline: float | None,
    ) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.channel = channel
        self.tag = tag
        self.properties: Basic.Properties = message.header.properties
        self.body = message.body
        self.deadline = deadline
        self.delivery_count = delivery_count
        headers = self.properties.headers
        self.sent = sent_of(headers, self.properties.timestamp)
        self.trace = trace_of(headers)
        self.reply_to: str | None = None
        """Where the reply goes: the request's reply_to once judged usable (`replies`)."""
        self.refusal: str | None = None
        """Why the request's reply_to must not be used, when it must not."""

    @property
    def can_reply(self) -> bool:
        return self.reply_to is not None

    async def dead_letter(self, reason: str, reply: bytes | None) -> None:
        if self.refusal is not None:
            reason = f"{reason} ({self.refusal})"
        await super().dead_letter(reason, reply)


class AmqpWorkerTransport(WorkerTransportBase[AmqpDelivery]):
    """Takes requests from one RabbitMQ queue, at most `concurrency` unacknowledged."""

    limit_slots = False  # the broker's prefetch count bounds what it hands over

    def __init__(self, url: str, options: WorkerOptions) -> None:
        super().__init__(options)
        self.settings = parse_url(url)
        self.dead_queue = f"{options.queue}.dead"
        self.alive_queue = alive_queue(options.queue)
        self._heartbeats: asyncio.Task[None] | None = None
        self._stats = StatsResponder(options.queue)
        self.prefetch = min(options.concurrency, MAX_PREFETCH)
        self._link: Link | None = None
        self._consumer: tuple[Channel, str] | None = None
        self._resuming: asyncio.Task[None] | None = None
        self._replies: ReplyAddresses | None = None
        self._counts_itself = False
        self.recounted = 0
        self._recounting: set[asyncio.Future[bool]] = set()

    def _transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def _open(self) -> None:
        name = f"micromessaging worker {self.queue} {socket.gethostname()} pid {os.getpid()}"
        self._link = Link(self.settings, name, on_open=self._opened, on_lost=self._lost)
        self._replies = ReplyAddresses(self._link, self.queue, self.ledger.retrying)
        await self._link.start()
        self._heartbeats = asyncio.create_task(self._beat())

    async def _opened(self, channel: Channel) -> None:
        assert self._link is not None
        await self._declare()
        await channel.basic_qos(prefetch_count=self.prefetch)
        channel.on_consumer_cancel_callbacks.add(self._cancelled_by_broker)
        await self._answer_stats()  # before consuming: the first request may be a long one
        if self.receiving:
            await self._consume(channel)

    async def _answer_stats(self) -> None:
        """Answer stats requests (`stats`) on a new channel; a worker that can't still works."""
        assert self._link is not None
        await self._stats.close()
        try:
            await self._stats.start(await self._link.bare_channel(), self.reporter)
        except Exception as exc:
            logger.warning("%r will not answer stats requests: %s", self.queue, describe(exc))

    async def _beat(self) -> None:
        """Say every `HEARTBEAT` seconds that this worker is alive (`presence`)."""
        while True:
            try:
                await self._heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("heartbeat of %r not published: %s", self.queue, exc)
            await asyncio.sleep(HEARTBEAT)

    async def _heartbeat(self) -> None:
        """Publish the time now to ``<queue>.alive``, declared first (it may have expired)."""
        link = self._link
        if link is None:
            return
        await link.declare_queue(self.alive_queue, durable=True, arguments=ALIVE_ARGUMENTS)
        channel = link.channel
        if channel is None:
            return
        data = encode_publish(
            channel.number,
            self.alive_queue,
            b"{}",
            body_frame_size=channel.max_content_size,
            content_type=JSON_CONTENT_TYPE,
            headers={SENT: encode_deadline(time.time())},
            delivery_mode=2,  # a broker restart keeps it: calls wait for workers coming back
        )
        link.write(channel, data)

    async def _consume(self, channel: Channel) -> None:
        ok = await channel.basic_consume(self.queue, self._arrived)
        assert ok.consumer_tag is not None
        self._consumer = (channel, ok.consumer_tag)

    def _cancelled_by_broker(self, frame: Basic.Cancel) -> None:
        consumer = self._consumer
        if consumer is None or frame.consumer_tag != consumer[1]:
            return
        self._consumer = None
        if self.receiving:
            # The queue was deleted (or lost with a cluster node): declare it and go on.
            logger.warning("the broker cancelled the consumer of %r; consuming again", self.queue)
            self._resuming = asyncio.create_task(self._consume_again(consumer[0]))

    async def _declare(self) -> None:
        assert self._link is not None
        as_asked = await self._link.declare_queue(self.queue)
        if self.settings.queue_type == "quorum":
            # Where the broker dead-letters what passes its own delivery limit: it must exist.
            await self._link.declare_queue(self.dead_queue)
        # x-delivery-count counts deliveries only on a queue known to be a quorum queue: on
        # any other it is a header its publisher wrote, and would let a caller lower a count.
        self._counts_itself = as_asked and self.settings.queue_type == "quorum"

    async def _consume_again(self, channel: Channel) -> None:
        assert self._link is not None
        try:
            await self._declare()
            if self.receiving and not channel.is_closed:
                await self._consume(channel)
        except Exception as exc:
            logger.warning("consuming %r again failed (%s); reopening the channel", self.queue, exc)
            with contextlib.suppress(Exception):
                await channel.close()  # the link opens a new one, which consumes

    def _lost(self, exc: BaseException | None) -> None:
        # The broker puts the lost channel's unacknowledged messages back in the queue; the
        # calls running them finish, and their replies still go out on the next channel.
        self._consumer = None

    async def _arrived(self, message: DeliveredMessage) -> None:
        channel = cast(Channel, message.channel)
        frame = message.delivery
        assert isinstance(frame, Basic.Deliver)
        assert frame.delivery_tag is not None
        assert self._link is not None
        if not self.receiving:  # stopped while this one was on its way
            self._link.write(channel, encode_nack(channel.number, frame.delivery_tag))
            return
        headers = message.header.properties.headers
        deadline = deadline_of(headers)
        count, recount = delivery_count_of(headers, frame.redelivered, quorum=self._counts_itself)
        if recount and (deadline is None or deadline > time.time()):
            recounting = asyncio.ensure_future(
                self._recount(channel, frame.delivery_tag, message, count)
            )
            self._recounting.add(recounting)
            try:
                if await recounting:
                    return
            finally:
                self._recounting.discard(recounting)
        if self._recounting:
            # The broker may hand us a recounted copy before it confirms the copy: don't run
            # it until the original is acknowledged, or a crash could leave both to run again.
            await asyncio.wait(set(self._recounting))
        delivery = AmqpDelivery(self, channel, frame.delivery_tag, message, count, deadline)
        try:
            await self._address(delivery)
        except Exception as exc:
            if self.receiving:
                logger.warning("could not check a reply address (%s); it goes back", exc)
            self._nack(delivery)
            return
        if not self.receiving:
            self._nack(delivery)
            return
        self.hand_over(delivery)

    async def _address(self, delivery: AmqpDelivery) -> None:
        """Judge where the delivery's reply may go (`replies`)."""
        assert self._replies is not None
        properties = delivery.properties
        if isinstance(properties, compat.UnreadableProperties):
            delivery.refusal = f"unreadable message properties: {properties.problem}"
            return
        reply_to = properties.reply_to
        if not reply_to:
            return
        verdict = await self._replies.judge(reply_to)
        if verdict.usable:
            delivery.reply_to = reply_to
        elif verdict.refusal is not None:
            delivery.refusal = verdict.refusal
        else:
            # Its reply queue is gone, and with it the caller: as if its deadline had passed.
            delivery.deadline = time.time()

    async def _recount(
        self, channel: Channel, tag: int, message: DeliveredMessage, count: int
    ) -> bool:
        """Put a redelivered message back with its count raised; False if that failed."""
        assert self._link is not None
        properties = copy.copy(message.header.properties)
        properties.headers = {**republishable(properties.headers or {}), DELIVERIES: count}
        deadline = deadline_of(properties.headers)
        if deadline is not None:
            properties.expiration = expiration_for(deadline, time.time())
        try:
            side = await self._link.side_channel()
            confirmation = await side.basic_publish(
                message.body, routing_key=self.queue, properties=properties, timeout=CONFIRM_TIMEOUT
            )
            if not isinstance(confirmation, Basic.Ack):
                raise TransportError(f"the broker refused the copy: {confirmation!r}")
        except Exception as exc:
            logger.warning("could not recount a redelivered message; running it: %s", exc)
            return False
        self.recounted += 1
        self._link.write(channel, encode_ack(channel.number, tag))
        return True

    async def _complete(self, delivery: AmqpDelivery, reply: bytes | None) -> None:
        """Publish the reply, then acknowledge the request, in one write."""
        assert self._link is not None
        channel = self._link.channel
        if channel is None:
            raise TransportError("no channel to reply on; the broker will deliver it again")
        data = b""
        if reply is not None and delivery.reply_to is not None:
            data = encode_publish(
                channel.number,
                delivery.reply_to,
                reply,
                body_frame_size=channel.max_content_size,
                content_type=JSON_CONTENT_TYPE,
                correlation_id=delivery.properties.correlation_id,
            )
        if delivery.channel is channel:
            data += encode_ack(channel.number, delivery.tag)
        written = bool(data) and self._link.write(channel, data)
        if delivery.channel is not channel or not written:
            raise TransportError(
                "the channel this request came on was lost; the broker will deliver it again"
            )

    async def _bury(self, delivery: AmqpDelivery, reason: str, reply: bytes | None) -> None:
        """Copy a delivery into the dead-letter queue, confirmed; then reply and acknowledge."""
        assert self._link is not None
        # Declared every time: the default exchange drops (and confirms) a message to a queue
        # that was deleted meanwhile, and dead letters are rare.
        await self._link.declare_queue(self.dead_queue)
        properties = copy.copy(delivery.properties)
        properties.headers = {
            **republishable(properties.headers or {}),
            DEAD_REASON: reason,
            DELIVERIES: min(delivery.delivery_count, COUNT_LIMIT),
            DEAD_ID: secrets.token_hex(8),
            DEAD_AT: encode_deadline(time.time()),
        }
        properties.expiration = None  # a dead letter is kept until someone looks at it
        side = await self._link.side_channel()
        confirmation = await side.basic_publish(
            delivery.body,
            routing_key=self.dead_queue,
            properties=properties,
            timeout=CONFIRM_TIMEOUT,
        )
        if not isinstance(confirmation, Basic.Ack):
            raise TransportError(f"the broker refused the dead letter: {confirmation!r}")
        await self._complete(delivery, reply)

    def _strand(self, delivery: AmqpDelivery) -> bool:
        # Unacknowledged, it would hold a prefetch slot until the channel closes: give it back.
        self._nack(delivery)
        return True

    def _nack(self, delivery: AmqpDelivery) -> None:
        if self._link is not None:
            self._link.write(delivery.channel, encode_nack(delivery.channel.number, delivery.tag))

    async def _stop_taking(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None and not consumer[0].is_closed:
            with contextlib.suppress(Exception):
                await consumer[0].basic_cancel(consumer[1], timeout=5)
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            self._heartbeats = None
            # The last time this worker was seen alive: calls wait for the next one.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._heartbeat(), 5)

    async def _give_back(self, deliveries: list[AmqpDelivery]) -> None:
        for delivery in deliveries:
            self._nack(delivery)

    async def _disconnect(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            self._heartbeats = None
        await self._stats.close()
        link, self._link = self._link, None
        if link is not None:
            await link.aclose()

    def describe(self) -> str:
        kind = self.settings.queue_type + (" durable" if self.settings.durable else "")
        return f"{kind} queue {self.queue!r}, prefetch {self.prefetch}"
