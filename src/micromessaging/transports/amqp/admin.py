"""What operations see of RabbitMQ, without the management plugin (`AdminTransport`).

- depth and consumers: a passive declaration of the queue; dead letters: of ``<queue>.dead``;
- live workers, and what they hold in flight: a stats request (`stats`) that each answers;
- the age of the oldest waiting request: not shown (None, with a note). Reading the head
  request means taking it and giving it back, and a request given back is flagged
  redelivered: our workers would count that as a delivery, and a few looks would make a
  healthy request a dead letter;
- dead letters are read with ``basic.get`` on a channel of their own and given back
  (``basic.nack`` with ``requeue``: they keep their order), so listing loses none; each has
  a stable id (its ``mm-dead-id`` header, else a digest of its body and headers). Replay
  publishes the request to its queue, confirmed, with the delivery count and the dead-letter
  headers removed, then acknowledges the dead letter; purge acknowledges (or purges) them;
- queues: those whose workers answer a stats request to every worker; a queue with no live
  worker of ours can't be listed without the management plugin (name it with ``--queue``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import aiormq
from aiormq import Channel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ..._exceptions import TransportError
from .._context import decode_sent
from .._shared import encode_deadline
from ..admin import AdminTransport, DeadLetter, QueueStatus, WorkerRecord
from .connection import CONNECT_TIMEOUT, Link, describe
from .presence import alive_queue
from .stats import EVERY_WORKER, STATS_EXCHANGE, STATS_WAIT
from .wire import (
    DEAD_AT,
    DEAD_ID,
    DEAD_REASON,
    DEAD_SUFFIX,
    DELIVERIES,
    DIRECT_REPLY_TO,
    QUORUM_DELIVERIES,
    SENT,
    deadline_of,
    expiration_for,
    parse_url,
    republishable,
)

OLDEST_WAIT_NOTE = (
    "oldest wait: not shown on RabbitMQ (reading the head request would count as a delivery)"
)
DEAD_HEADERS = frozenset({DEAD_REASON, DEAD_ID, DEAD_AT, DELIVERIES, QUORUM_DELIVERIES, "x-death"})
"""Headers a replayed request loses: it starts again as if just sent."""


class AmqpAdmin(AdminTransport):
    """Statuses, workers and dead letters of the queues of one RabbitMQ vhost."""

    def __init__(self, url: str) -> None:
        self.settings = parse_url(url)
        self._link: Link | None = None

    async def connect(self) -> None:
        if self._link is not None:
            return
        link = Link(self.settings, "micromessaging admin", on_open=_nothing, on_lost=_ignore)
        await link.start()
        self._link = link

    async def aclose(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.aclose()

    def _linked(self) -> Link:
        if self._link is None:
            raise TransportError("this AMQP admin is not connected")
        return self._link

    async def _channel(self) -> Channel:
        try:
            return await self._linked().bare_channel()
        except TransportError:
            raise
        except Exception as exc:
            raise TransportError(f"no channel to {self._linked().where}: {describe(exc)}") from exc

    # --- workers ---------------------------------------------------------------------------

    async def workers(self, queue: str | None, expected: int | None = None) -> list[WorkerRecord]:
        """The records of live workers of `queue` (None: of every queue), as they answer."""
        channel = await self._channel()
        records: list[WorkerRecord] = []
        enough = asyncio.Event()
        correlation_id = secrets.token_hex(8)

        async def answered(message: DeliveredMessage) -> None:
            if message.header.properties.correlation_id != correlation_id:
                return
            with contextlib.suppress(ValueError, TypeError):
                data = json.loads(message.body)
                if isinstance(data, dict):
                    records.append(WorkerRecord.from_json(data))
            if expected is not None and len(records) >= expected:
                enough.set()

        try:
            await channel.basic_consume(DIRECT_REPLY_TO, answered, no_ack=True)
            await channel.basic_publish(
                b"{}",
                exchange=STATS_EXCHANGE,
                routing_key=queue if queue is not None else EVERY_WORKER,
                properties=Basic.Properties(
                    reply_to=DIRECT_REPLY_TO, correlation_id=correlation_id
                ),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), STATS_WAIT)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return []  # no mm.stats exchange: no worker of ours ever ran here
        except aiormq.exceptions.AMQPError as exc:
            raise TransportError(f"stats request failed: {describe(exc)}") from exc
        finally:
            await _close(channel)
        wanted = [record for record in records if queue is None or record.queue == queue]
        return sorted(wanted, key=lambda record: record.id)

    async def queues(self) -> list[str]:
        return sorted({record.queue for record in await self.workers(None)})

    async def status(self, queue: str) -> QueueStatus:
        link = self._linked()
        state = await link.inspect_queue(queue)
        dead = await link.inspect_queue(queue + DEAD_SUFFIX)
        consumers = state[1] if state is not None else 0
        workers = await self.workers(queue, consumers) if consumers else []
        notes = [OLDEST_WAIT_NOTE]
        if state is None:
            notes.append(f"queue {queue!r} does not exist")
        if consumers > len(workers):
            notes.append(
                f"{consumers - len(workers)} of {consumers} consumers did not answer the stats "
                "request (foreign workers, such as the seed's, or busy ones)"
            )
        return QueueStatus(
            queue=queue,
            depth=state[0] if state is not None else 0,
            oldest_wait=None,
            in_flight=sum(record.in_flight for record in workers) if workers else 0,
            dead_letters=dead[0] if dead is not None else 0,
            workers=workers,
            notes=notes,
        )

    # --- dead letters ----------------------------------------------------------------------

    async def _take_dead(
        self, channel: Channel, queue: str, limit: int | None = None
    ) -> list[DeliveredMessage]:
        """Take dead letters unacknowledged (they stay in the queue, held by `channel`)."""
        taken: list[DeliveredMessage] = []
        while limit is None or len(taken) < limit:
            try:
                message = await channel.basic_get(
                    queue + DEAD_SUFFIX, no_ack=False, timeout=CONNECT_TIMEOUT
                )
            except aiormq.exceptions.ChannelNotFoundEntity:
                return []
            if not isinstance(message.delivery, Basic.GetOk):
                break
            taken.append(message)
        return taken

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        channel = await self._channel()
        try:
            return [_dead_letter(queue, m) for m in await self._take_dead(channel, queue, limit)]
        finally:
            await _close(channel)  # everything taken goes back, in its order

    async def replay(self, queue: str, ids: list[str] | None) -> list[DeadLetter]:
        link = self._linked()
        channel = await self._channel()
        replayed: list[DeadLetter] = []
        try:
            taken = await self._take_dead(channel, queue)
            chosen = [(m, _dead_letter(queue, m)) for m in taken]
            chosen = [(m, d) for m, d in chosen if ids is None or d.id in ids]
            if chosen:
                # The default exchange drops (and confirms) a message for a missing queue.
                await link.declare_queue(queue)
            for message, record in chosen:
                confirmation = await channel.basic_publish(
                    message.body,
                    routing_key=queue,
                    properties=_fresh(message.header.properties),
                    timeout=CONNECT_TIMEOUT,
                )
                if not isinstance(confirmation, Basic.Ack):
                    raise TransportError(f"the broker refused the replayed request {record.id}")
                await channel.basic_ack(_tag(message))
                replayed.append(record)
        except aiormq.exceptions.AMQPError as exc:
            raise TransportError(f"replay failed: {describe(exc)}") from exc
        finally:
            await _close(channel)
        return replayed

    async def purge(self, queue: str, ids: list[str] | None) -> int:
        channel = await self._channel()
        try:
            if ids is None:
                try:
                    ok = await channel.queue_purge(queue + DEAD_SUFFIX, timeout=CONNECT_TIMEOUT)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    return 0
                return ok.message_count or 0
            purged = 0
            for message in await self._take_dead(channel, queue):
                if _dead_letter(queue, message).id in ids:
                    await channel.basic_ack(_tag(message))
                    purged += 1
            return purged
        finally:
            await _close(channel)

    async def delete_queue(self, queue: str) -> None:
        channel = await self._channel()
        try:
            for name in (queue, queue + DEAD_SUFFIX, alive_queue(queue)):
                await channel.queue_delete(name, timeout=CONNECT_TIMEOUT)
        except aiormq.exceptions.AMQPError as exc:
            raise TransportError(f"cannot delete {queue!r}: {describe(exc)}") from exc
        finally:
            await _close(channel)


def _dead_letter(queue: str, message: DeliveredMessage) -> DeadLetter:
    properties = message.header.properties
    headers: dict[str, Any] = dict(properties.headers or {})
    given = headers.get(DEAD_ID)
    if isinstance(given, str) and given.isalnum() and len(given) <= 32:
        dead_id = given
    else:  # dead-lettered by an older worker: named by what it holds
        digest = hashlib.sha256(message.body)
        digest.update(repr(sorted((str(k), repr(v)) for k, v in headers.items())).encode())
        dead_id = digest.hexdigest()[:16]
    deliveries = headers.get(DELIVERIES)
    reason = str(headers.get(DEAD_REASON, ""))
    at = decode_sent(headers.get(DEAD_AT))
    death = _broker_death(headers)
    if death is not None and not reason:
        # Dead-lettered by the broker itself (a quorum queue's delivery limit): x-death says.
        reason = f"dead-lettered by the broker: {death.get('reason', 'unknown')}"
        # Its count is not kept (the dead-letter queue counts afresh): 0 says "unknown".
        when = death.get("time")
        if at is None and isinstance(when, datetime):
            at = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    extra: dict[str, Any] = {
        name: value
        for name, value in (
            ("reply_to", properties.reply_to),
            ("correlation_id", properties.correlation_id),
        )
        if value
    }
    deadline = deadline_of(headers)
    if deadline is not None:
        extra["deadline"] = deadline
    return DeadLetter(
        id=dead_id,
        queue=queue,
        reason=reason,
        deliveries=deliveries if type(deliveries) is int else 0,
        at=at if at is not None else 0.0,
        body=message.body,
        extra=extra,
    )


def _broker_death(headers: dict[str, Any]) -> dict[str, Any] | None:
    """The latest ``x-death`` entry the broker wrote on a message it dead-lettered."""
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return None


def _fresh(properties: Basic.Properties) -> Basic.Properties:
    """A dead letter's properties for its replay: no count, no dead-letter headers."""
    headers = {
        name: value
        for name, value in republishable(properties.headers or {}).items()
        if name not in DEAD_HEADERS
    }
    now = time.time()
    headers[SENT] = encode_deadline(now)
    deadline = deadline_of(headers)
    return Basic.Properties(
        content_type=properties.content_type,
        headers=headers,
        delivery_mode=properties.delivery_mode,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        expiration=expiration_for(deadline, now) if deadline is not None else None,
    )


def _tag(message: DeliveredMessage) -> int:
    frame = message.delivery
    assert isinstance(frame, Basic.GetOk)
    assert frame.delivery_tag is not None
    return frame.delivery_tag


async def _close(channel: Channel) -> None:
    if not channel.is_closed:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(channel.close(), 5)


async def _nothing(channel: Channel) -> None:
    """The admin consumes nothing on its main channel."""


def _ignore(exc: BaseException | None) -> None:
    """Nothing waits on the admin's main channel."""


def admin_transport(url: str) -> AmqpAdmin:
    """What operations see of the RabbitMQ broker `url` names."""
    return AmqpAdmin(url)
