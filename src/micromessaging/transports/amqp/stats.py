"""Workers say what they are doing when asked: the stats exchange ``mm.stats``.

Without the management plugin, RabbitMQ tells a client how many consumers a queue has, not
who they are. So each worker binds a queue of its own (server-named, exclusive,
auto-deleted: it goes with the worker's connection) to the direct exchange `STATS_EXCHANGE`
twice: with its work queue's name as the binding key, and with `EVERY_WORKER` (``""``, no
work queue's name). An operator's ``micromessaging status`` publishes one request there,
routing key = a queue (its workers answer) or ``""`` (every worker of the broker answers),
``reply_to`` = direct reply-to, and gathers the replies for a moment: one `WorkerRecord` as
JSON from each live worker. A worker answers only requests whose ``reply_to`` is direct
reply-to (nothing can be planted in a queue by asking for stats).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from aiormq import Channel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ..admin import WorkerRecord
from .wire import JSON_CONTENT_TYPE, is_direct_reply_to

logger = logging.getLogger("micromessaging.transport.amqp")

STATS_EXCHANGE = "mm.stats"
EVERY_WORKER = ""
"""The routing key that reaches every worker of the broker (no queue is named "")."""
STATS_WAIT = 1.0
"""Seconds an operator waits for answers (less when every consumer has answered)."""


class StatsResponder:
    """One worker's answers to stats requests, on a channel of their own (a refusal to
    declare the exchange closes that channel, not the one requests come on)."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.channel: Channel | None = None
        self.answered = 0
        self._reporter: Callable[[], WorkerRecord] | None = None

    async def start(self, channel: Channel, reporter: Callable[[], WorkerRecord] | None) -> None:
        """Declare, bind and consume on `channel`; `reporter()` makes each answer."""
        self._reporter = reporter
        await channel.exchange_declare(STATS_EXCHANGE, exchange_type="direct", durable=True)
        ok = await channel.queue_declare("", exclusive=True, auto_delete=True)
        assert ok.queue is not None
        for key in (self.queue, EVERY_WORKER):
            await channel.queue_bind(ok.queue, STATS_EXCHANGE, routing_key=key)
        await channel.basic_consume(ok.queue, self._asked, no_ack=True)
        self.channel = channel

    async def _asked(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        reply_to = properties.reply_to or ""
        reporter = self._reporter
        if not is_direct_reply_to(reply_to) or reporter is None:
            return
        try:
            record = reporter()
            body = json.dumps(record.to_json()).encode()
            await message.channel.basic_publish(
                body,
                routing_key=reply_to,
                properties=Basic.Properties(
                    content_type=JSON_CONTENT_TYPE, correlation_id=properties.correlation_id
                ),
            )
            self.answered += 1
        except Exception as exc:  # a stats request must never disturb the worker
            logger.debug("stats request of %r not answered: %s", self.queue, exc)

    async def close(self) -> None:
        """Close the channel (the broker deletes its queue)."""
        channel, self.channel = self.channel, None
        if channel is not None and not channel.is_closed:
            try:
                await channel.close()
            except Exception as exc:
                logger.debug("closing the stats channel: %s", exc)
