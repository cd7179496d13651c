"""The worker's end of the Redis transport: take, hand over, settle, give back.

A worker moves each message it takes from the queue into its own processing list (BLMOVE,
or a script taking a batch when there is a backlog), so nothing it holds is lost if it dies
(see `liveness`). Settling is one script run for every message finished since the
last one went out: push each reply, set its list's expiry, remove the message from the
processing list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import redis.asyncio as aioredis

from ..base import Delivery, Slots, WorkerOptions, WorkerTransport
from . import scripts, wire
from .connection import (
    BLOCK_SECONDS,
    CONNECTION_ERRORS,
    LINK_ERRORS,
    Backoff,
    Batcher,
    RedisSettings,
    close_client,
    transport_error,
)
from .link import Link, Script
from .liveness import Liveness

logger = logging.getLogger("micromessaging.transport.redis")

T = TypeVar("T")

SETTLE = Script(scripts.SETTLE)
CLOSE_WAIT = 5.0
"""Seconds `aclose` waits for settles still being sent before giving back what is left."""


class RedisDelivery(Delivery):
    """One message taken from a Redis queue into this worker's processing list."""

    def __init__(
        self, transport: RedisWorkerTransport, item: bytes, header: dict[str, object] | None
    ) -> None:
        self._transport = transport
        self.item = item
        """The message exactly as it sits in the processing list (to remove it by value)."""
        self.header = header
        self.reply_list: str | None = None
        self.cid: object = None
        self.envelope_reply = False
        self.refusal: str | None = None
        self.settled = False

    @property
    def can_reply(self) -> bool:
        return self.reply_list is not None

    def wire_reply(self, reply: bytes | None) -> bytes | None:
        """The bytes to push onto the reply list, or None when no reply goes out."""
        if reply is None or self.reply_list is None:
            return None
        return wire.encode_reply(self.cid, reply) if self.envelope_reply else reply

    async def complete(self, reply: bytes | None) -> None:
        await self._transport.settle(self, reply)

    async def dead_letter(self, reason: str, reply: bytes | None) -> None:
        if self.refusal is not None:
            reason = f"{reason} ({self.refusal})"
        await self._transport.bury(self, reason, reply)


@dataclass(slots=True)
class TakeStats:
    """How well taking and settling batch, for the log line at close."""

    takes: int = 0
    taken: int = 0
    settles: int = 0
    settled: int = 0


class RedisWorkerTransport(WorkerTransport):
    """Takes messages from one Redis list, reliably, for one worker process."""

    def __init__(self, settings: RedisSettings, options: WorkerOptions) -> None:
        self._settings = settings
        self._options = options
        self.queue = queue = options.queue
        self.worker_id = f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
        self._processing = wire.processing_key(queue, self.worker_id)
        self._dead = wire.dead_letter_key(queue)
        self._slots = Slots(options.concurrency)
        self._unsettled: set[RedisDelivery] = set()
        self._settler: Batcher[tuple[RedisDelivery, bytes | None]] = Batcher(self._send_settles)
        self.stats = TakeStats()
        self._redis: aioredis.Redis | None = None
        self._take_link: Link | None = None
        self._settle_link: Link | None = None
        self._liveness: Liveness | None = None
        self._deliver: Callable[[Delivery], None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._rejects: set[asyncio.Task[None]] = set()
        self._receiving = False

    # --- start and stop ----------------------------------------------------------------------

    async def start(self, deliver: Callable[[Delivery], None]) -> None:
        self._deliver = deliver
        pool = self._settings.pool(f"mm:worker:{self.queue}:{self.worker_id}")
        self._redis = self._settings.client(pool)
        self._take_link = Link(pool, block=BLOCK_SECONDS)
        self._settle_link = Link(pool)
        self._liveness = Liveness(self._redis, self.queue, self.worker_id, self._settings.heartbeat)
        try:
            await self._liveness.start()
        except CONNECTION_ERRORS as exc:
            await self._close_connections()
            raise transport_error(f"cannot reach Redis at {self._settings.display}", exc) from exc
        self._receiving = True
        self._consumer = asyncio.create_task(self._consume())

    async def stop_receiving(self) -> None:
        self._receiving = False
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            # Safe at any point: a message the cancelled BLMOVE may have moved is in our
            # processing list, and `aclose` gives it back.
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)

    async def aclose(self) -> None:
        await self.stop_receiving()
        liveness, self._liveness = self._liveness, None
        if liveness is not None:
            await liveness.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT):
                await self._settler.flush()
                if self._rejects:
                    await asyncio.gather(*self._rejects, return_exceptions=True)
        await self._settler.aclose()
        if liveness is not None and await liveness.give_back([d.item for d in self._unsettled]):
            self._unsettled.clear()
        await self._close_connections()
        stats = self.stats
        logger.debug(
            "worker %s took %d messages in %d takes, settled %d in %d runs",
            self.worker_id, stats.taken, stats.takes, stats.settled, stats.settles,
        )  # fmt: skip

    async def _close_connections(self) -> None:
        links, redis_client = (self._take_link, self._settle_link), self._redis
        self._take_link = self._settle_link = self._redis = None
        for link in links:
            if link is not None:
                await link.aclose()
        await close_client(redis_client)

    def describe(self) -> str:
        return (
            f"{self._settings.display} queue {self.queue!r}, worker {self.worker_id}, "
            f"heartbeat {self._settings.heartbeat:g}s"
        )

    # --- taking ------------------------------------------------------------------------------

    async def _consume(self) -> None:
        """Take one message at a time with a blocking pop: the idle path.

        Under load the settle runs take the new messages (`_send_settles`), so this loop
        mostly waits for a free slot.
        """
        link = self._take_link
        assert link is not None
        backoff = Backoff()
        while self._receiving:
            await self._slots.wait()
            self._slots.take()  # reserved before asking, so a settle run can't take it too
            try:
                item = await link.command(
                    "BLMOVE", self.queue, self._processing, "RIGHT", "LEFT", BLOCK_SECONDS
                )
            except CONNECTION_ERRORS as exc:
                self._slots.release()
                await self._pause("taking messages", exc, backoff)
                continue
            except BaseException:
                self._slots.release()
                raise
            if backoff.succeeded():
                logger.info("taking messages from %r again", self.queue)
            if item is None:
                self._slots.release()
                continue
            self.stats.takes += 1
            self.stats.taken += 1
            self._hand_over(item)
            await asyncio.sleep(0)  # let the delivery start before the next round trip

    def _hand_over(self, item: bytes) -> None:
        """Give the worker a message it has a slot reserved for."""
        header, body = wire.split_envelope(item)
        delivery = RedisDelivery(self, item, header)
        delivery.body = body
        problem = self._address(delivery)
        if problem is not None:
            task = asyncio.create_task(self._reject(delivery, problem))
            self._rejects.add(task)
            task.add_done_callback(self._rejects.discard)
            return
        self._unsettled.add(delivery)
        self._deliver(delivery)  # type: ignore[misc]

    def _address(self, delivery: RedisDelivery) -> str | None:
        """Fill in where the reply goes; the reason to dead-letter the message now, if any."""
        if delivery.header is not None:
            try:
                envelope = wire.read_header(delivery.header, self.queue)
            except ValueError as exc:
                return f"malformed envelope header: {exc}"
            delivery.deadline = envelope.deadline
            delivery.delivery_count = envelope.count
            if envelope.has_reply_to:
                delivery.reply_list = envelope.reply_to
                delivery.cid = envelope.cid
                delivery.envelope_reply = True
                delivery.refusal = envelope.refusal
                return None
        # The seed way: the reply goes to the list the request's id names.
        size, limit = len(delivery.body), self._options.max_message_size
        if size > limit:
            # Without parsing the body, which is too large to parse, there is no address.
            return f"seed-form message of {size} bytes exceeds the limit of {limit} bytes"
        name = wire.seed_reply_list(delivery.body)
        if name is not None:
            delivery.refusal = wire.seed_reply_refusal(name, self.queue)
            delivery.reply_list = None if delivery.refusal else name
        return None

    async def _reject(self, delivery: RedisDelivery, reason: str) -> None:
        try:
            await self.bury(delivery, reason, None)
        except Exception as exc:
            logger.warning("could not dead-letter a message from %r: %s", self.queue, exc)

    # --- settling ----------------------------------------------------------------------------

    async def settle(self, delivery: RedisDelivery, reply: bytes | None) -> None:
        """Push the reply and remove the message from the processing list, in one step.

        When a settle run is already out, this one joins the next and returns at once: the
        slot frees when it has gone out, and `aclose` waits for it.
        """
        if delivery.settled:
            logger.error("a message from %r was settled twice", self.queue)
            return
        delivery.settled = True
        await self._settler.send((delivery, delivery.wire_reply(reply)))

    def _release(self, delivery: RedisDelivery) -> None:
        self._unsettled.discard(delivery)
        self._slots.release()

    async def _send_settles(self, batch: list[tuple[RedisDelivery, bytes | None]]) -> None:
        """Settle a batch, and take as many new messages as will fit, in one round trip."""
        room = self._slots.free + len(batch) if self._receiving else 0
        self._slots.take(room)
        keys: list[str] = [self._processing, self.queue]
        args: list[bytes | int] = [wire.REPLY_TTL, room]
        for delivery, reply in batch:
            keys.append(delivery.reply_list or self._processing)
            args += (delivery.item, b"" if reply is None else reply)
        link = self._settle_link
        assert link is not None
        try:
            errors, taken = await self._retrying(
                "settling messages", lambda: link.run(SETTLE, keys, args)
            )
        except BaseException as exc:
            for _ in range(room):
                self._slots.release()
            if not isinstance(exc, CONNECTION_ERRORS):
                raise
            # Not the link: Redis refused (out of memory...). The messages stay in the
            # processing list, and go back to the queue when this worker closes.
            logger.error("settling %d messages from %r failed: %s", len(batch), self.queue, exc)
            return
        self.stats.settles += 1
        self.stats.settled += len(batch)
        for (delivery, _), error in zip(batch, errors, strict=True):
            if error != 0:
                logger.warning("a reply to %r was not pushed: %s", delivery.reply_list, error)
            self._release(delivery)
        if not self._receiving:
            taken = []  # stopping: they stay in the processing list, given back unstarted
        for _ in range(room - len(taken)):
            self._slots.release()
        if taken:
            self.stats.takes += 1
            self.stats.taken += len(taken)
            if len(taken) > 1:
                self._settler.hold_for_this_round()
            for item in taken:
                self._hand_over(item)

    async def bury(self, delivery: RedisDelivery, reason: str, reply: bytes | None) -> None:
        """Dead-letter a message: record it, send its reply when it has an address, remove it."""
        if delivery.settled:
            return
        delivery.settled = True
        record = wire.dead_letter_record(
            self.queue, self.worker_id, reason, delivery.header, delivery.body
        )
        wired = delivery.wire_reply(reply)
        redis_client = self._redis
        assert redis_client is not None

        async def run() -> list[object]:
            async with redis_client.pipeline(transaction=True) as pipe:
                pipe.rpush(self._dead, record)
                if wired is not None and delivery.reply_list is not None:
                    pipe.rpush(delivery.reply_list, wired)
                    pipe.expire(delivery.reply_list, wire.REPLY_TTL)
                pipe.lrem(self._processing, -1, delivery.item)  # type: ignore[arg-type]
                return await pipe.execute(raise_on_error=False)

        try:
            results = await self._retrying("dead-lettering a message", run)
        except CONNECTION_ERRORS as exc:
            raise transport_error("dead-lettering a message failed", exc) from exc
        self._release(delivery)
        logger.warning("dead-lettered a message from %r: %s", self.queue, reason)
        for result in results:
            if isinstance(result, Exception):
                logger.warning("dead-lettering a message from %r: %s", self.queue, result)

    async def _retrying(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """Run `step` until the link lets it through (or the worker is cancelled)."""
        backoff = Backoff()
        while True:
            try:
                result = await step()
            except LINK_ERRORS as exc:
                await self._pause(what, exc, backoff)
                continue
            if backoff.succeeded():
                logger.info("%s succeeded after reconnecting", what)
            return result

    async def _pause(self, what: str, exc: BaseException, backoff: Backoff) -> None:
        delay = backoff.failed()
        if backoff.failures == 1:
            logger.warning("%s from %r: Redis unreachable (%s); retrying", what, self.queue, exc)
        await asyncio.sleep(delay)
