"""The JetStream resources of one queue: its work-queue stream, dead letters and consumer.

Created on first use by whichever of a client or a worker comes first, with the same
configuration, and never changed afterwards: an operator may tune them with the `nats` CLI.
"""

from __future__ import annotations

import logging

import nats.js.errors
from nats.js import JetStreamContext, api

from . import wire

logger = logging.getLogger("micromessaging.transport.nats")

MAX_ACK_PENDING = 20_000
"""Unacknowledged messages the consumer allows across all its workers (each takes fewer)."""


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
        return
    except nats.js.errors.NotFoundError:
        pass
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.stream_info(config.name)  # created meanwhile by another process: fine


async def ensure_work_stream(
    js: JetStreamContext, queue: str, max_age: float | None = None, replicas: int = 1
) -> None:
    """The stream holding `queue`'s requests until a worker acknowledges them (or, with
    `max_age`, until they are that many seconds old: the server drops them then)."""
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=wire.stream_name(queue),
            subjects=[queue],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            max_age=max_age,
            num_replicas=replicas,
        ),
    )


async def ensure_dead_letter_stream(js: JetStreamContext, queue: str, replicas: int = 1) -> None:
    """The stream keeping `queue`'s dead letters (an operator reads and purges it)."""
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=wire.dead_letter_stream_name(queue),
            subjects=[wire.dead_letter_subject(queue)],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
        ),
    )


async def ensure_consumer(js: JetStreamContext, queue: str, ack_wait: float) -> None:
    """The durable pull consumer every worker of `queue` shares."""
    stream = wire.stream_name(queue)
    try:
        info = await js.consumer_info(stream, wire.CONSUMER_NAME)
    except nats.js.errors.NotFoundError:
        pass
    else:
        current = info.config.ack_wait
        if current is not None and abs(current - ack_wait) > 0.001:
            logger.warning(
                "consumer %s on %s keeps its ack_wait of %gs (this worker asked for %gs)",
                wire.CONSUMER_NAME,
                stream,
                current,
                ack_wait,
            )
        return
    config = api.ConsumerConfig(
        durable_name=wire.CONSUMER_NAME,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        # The worker counts deliveries and dead-letters past its own limit, answering the
        # caller; a server-side limit would leave the message stuck and the caller waiting.
        max_deliver=-1,
        max_ack_pending=MAX_ACK_PENDING,
        deliver_policy=api.DeliverPolicy.ALL,
    )
    try:
        await js.add_consumer(stream, config)
    except nats.js.errors.BadRequestError:
        await js.consumer_info(stream, wire.CONSUMER_NAME)  # created meanwhile: fine
