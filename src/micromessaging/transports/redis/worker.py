"""The worker's end of the Redis transport: take, hand over, settle, give back.

A worker moves each message it takes from the queue into its own processing list (BLMOVE,
or a script taking a batch when there is a backlog), so nothing it holds is lost if it dies
(see `liveness`). A seed-form message, whose reply goes to the list its id names, costs one
round trip more before it runs: that list must be free to write (`scripts.CHECK_REPLY_LIST`),
and the settle script checks again where it pushes. Settling is one atomic step for every
message finished since the last one went out: push each reply, set its list's expiry, remove
the message from the processing list, and take as many new messages as the freed slots
allow; a MULTI/EXEC of plain commands when every reply goes to a client's reply list, the
script (`scripts.SETTLE`) when a seed-form reply list must be checked, on a Redis Cluster,
and once a second (or after an expired request) to sweep the queue. The bookkeeping (slots,
settle once, retries while Redis refuses for the moment, give-back) is the shared `Ledger`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from redis.commands.core import AsyncScript

from ..._exceptions import ConfigurationError, TransportError
from ..._json import dumps
from .._shared import LedgerDelivery, WorkerTransportBase
from ..admin import WorkerRecord
from ..base import WorkerOptions
from . import calls, scripts, wire
from .connection import (
    BLOCK_SECONDS,
    CONNECTION_ERRORS,
    Batcher,
    RedisSettings,
    close_client,
    is_transient,
)
from .link import ClusterLink, Link, Script, pack
from .liveness import Liveness

logger = logging.getLogger("micromessaging.transport.redis")

SETTLE = Script(scripts.SETTLE)
MULTI = b"*1\r\n$5\r\nMULTI\r\n"
EXEC = b"*1\r\n$4\r\nEXEC\r\n"
TAKE_LIMIT = 64
"""The most messages one plain settle asks for (`_settle_plainly`)."""


class RedisDelivery(LedgerDelivery):
    """One message taken from a Redis queue into this worker's processing list."""

    def __init__(
        self, transport: RedisWorkerTransport, item: bytes, header: dict[str, object] | None
    ) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.item = item
        """The message exactly as it sits in the processing list (to remove it by value)."""
        self.header = header
        self.reply_list: str | None = None
        self.cid: object = None
        self.envelope_reply = False
        self.refusal: str | None = None

    @property
    def can_reply(self) -> bool:
        return self.reply_list is not None

    def wire_reply(self, reply: bytes | None) -> bytes | None:
        """The bytes to push onto the reply list, or None when no reply goes out."""
        if reply is None or self.reply_list is None:
            return None
        return wire.encode_reply(self.cid, reply) if self.envelope_reply else reply

    async def dead_letter(self, reason: str, reply: bytes | None) -> None:
        if self.refusal is not None:
            reason = f"{reason} ({self.refusal})"
        await super().dead_letter(reason, reply)


@dataclass(slots=True)
class TakeStats:
    """How well taking and settling batch, for the log line at close."""

    takes: int = 0
    taken: int = 0
    settles: int = 0
    settled: int = 0
    swept: int = 0
    """Requests past their deadline dropped from the queue unrun by the settle script."""


class RedisWorkerTransport(WorkerTransportBase[RedisDelivery]):
    """Takes messages from one Redis list, reliably, for one worker process."""

    def __init__(self, settings: RedisSettings, options: WorkerOptions) -> None:
        super().__init__(options)
        self._settings = settings
        self.worker_id = options.worker_id
        self._started = time.time()
        self._cluster = settings.cluster
        if self._cluster and (refusal := wire.cluster_refusal(self.queue)) is not None:
            raise ConfigurationError(f"the queue {refusal}: name it without braces")
        self._processing = wire.processing_key(self.queue, self.worker_id, cluster=self._cluster)
        self._dead = wire.dead_letter_key(self.queue, cluster=self._cluster)
        self._settler: Batcher[tuple[RedisDelivery, bytes | None]] = Batcher(self._send_settles)
        self.stats = TakeStats()
        self._redis: aioredis.Redis | aiocluster.RedisCluster | None = None
        self._take_link: Link | None = None
        self._settle_link: Link | None = None
        self._liveness: Liveness | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._rejects: set[asyncio.Task[None]] = set()
        self._checks: set[asyncio.Task[None]] = set()
        # The commands of a plain settle that are the same every time, packed once.
        # "LREM <processing> -1" without its item: the item's length and bytes follow.
        self._remove = b"*4\r\n" + b"".join(pack(("LREM", self._processing, -1))[1:])
        self._take_one = b"".join(pack(("LMOVE", self.queue, self._processing, "RIGHT", "LEFT")))
        self._take_hint = 1
        """How many messages a plain settle asks for: twice what the last settle got."""
        self._sweep_due = 0.0
        """When (monotonic) a settle runs the script next, to sweep the queue."""
        self._check_script: AsyncScript | None = None
        self._bury_script: AsyncScript | None = None

    def _transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    # --- start and stop ----------------------------------------------------------------------

    async def _open(self) -> None:
        name = f"mm:worker:{self.queue}:{self.worker_id}"
        if self._cluster:
            self._redis = cluster = self._settings.cluster_client(name, block=BLOCK_SECONDS)
            pool_for = partial(self._settings.node_pool, name=name)
            self._take_link = ClusterLink(cluster, pool_for, block=BLOCK_SECONDS)
            self._settle_link = ClusterLink(cluster, pool_for)
        else:
            pool = self._settings.pool(name)
            self._redis = self._settings.client(pool)
            self._take_link = Link(pool, block=BLOCK_SECONDS)
            self._settle_link = Link(pool)
        self._check_script = self._redis.register_script(scripts.CHECK_REPLY_LIST)
        self._bury_script = self._redis.register_script(scripts.BURY)
        self._liveness = Liveness(
            self._redis,
            self.queue,
            self.worker_id,
            self._settings.heartbeat,
            self._record,
            self._cluster,
        )
        try:
            if isinstance(self._redis, aiocluster.RedisCluster):
                await self._redis.initialize()  # learns which node holds which slots
            await self._liveness.start()
        except CONNECTION_ERRORS as exc:
            await self._disconnect()
            raise calls.unreachable(f"Redis at {self._settings.display}", exc) from exc
        self._consumer = asyncio.create_task(self._consume())

    async def _stop_taking(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            # Safe at any point: a message the cancelled BLMOVE may have moved is in our
            # processing list, and `aclose` gives it back.
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        checks = list(self._checks)
        for task in checks:
            task.cancel()  # their messages go back unstarted, uncounted
        await asyncio.gather(*checks, return_exceptions=True)

    async def _give_back(self, deliveries: list[RedisDelivery]) -> None:
        liveness, self._liveness = self._liveness, None
        if liveness is None:
            return
        await liveness.stop()
        # Handed over and unsettled, they may have run: they count a delivery. What sits in
        # the processing list besides (taken as we stopped) goes back uncounted.
        await liveness.give_back([delivery.item for delivery in deliveries])

    async def _disconnect(self) -> None:
        if self._liveness is not None:
            await self._liveness.stop()
            self._liveness = None
        await self._settler.aclose()
        links, redis_client = (self._take_link, self._settle_link), self._redis
        self._take_link = self._settle_link = self._redis = None
        for link in links:
            if link is not None:
                await link.aclose()
        await close_client(redis_client)
        stats = self.stats
        logger.debug(
            "worker %s took %d messages in %d takes, settled %d in %d runs, dropped %d expired",
            self.worker_id, stats.taken, stats.takes, stats.settled, stats.settles, stats.swept,
        )  # fmt: skip

    def _record(self) -> bytes:
        """What the heartbeat holds: the worker's record (docs/wire-redis.md, *Heartbeat*)."""
        reporter = self.reporter
        if reporter is not None:
            record = reporter()
        else:  # a transport driven without a `Worker`: what the transport itself knows
            record = WorkerRecord(
                id=self.worker_id,
                queue=self.queue,
                host=socket.gethostname(),
                pid=os.getpid(),
                concurrency=self.options.concurrency,
                in_flight=len(self.ledger),
                completed=0,
                failed=0,
                started=self._started,
                last_seen=time.time(),
                transport="redis",
            )
        data = record.to_json()
        data["heartbeat"] = self._settings.heartbeat
        return dumps(data)

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
        slots = self.ledger.slots
        assert link is not None
        assert slots is not None
        while self.receiving:
            await slots.wait()
            slots.take()  # reserved before asking, so a settle run can't take it too
            try:
                item = await self.ledger.retrying(
                    "taking messages",
                    lambda: link.command(
                        "BLMOVE", self.queue, self._processing, "RIGHT", "LEFT", BLOCK_SECONDS
                    ),
                )
            except BaseException:
                slots.release()
                raise
            if item is None:
                slots.release()
                continue
            self.stats.takes += 1
            self.stats.taken += 1
            self._hand_over(item, alone=True)
            await asyncio.sleep(0)  # let the delivery start before the next round trip

    def _hand_over(self, item: bytes, *, alone: bool = False) -> None:
        """Give the worker a message it has a slot reserved for; `alone`: taken by itself."""
        header, body = wire.split_envelope(item)
        delivery = RedisDelivery(self, item, header)
        delivery.body = body
        delivery.arrived_alone = alone
        problem = self._address(delivery)
        if not self.receiving:
            self.ledger.slots.release()  # type: ignore[union-attr]  # given back, unstarted
        elif problem is not None:
            # Refused before any worker sees it: dead-lettered here, its slot freed after.
            self.ledger.admit(delivery, reserved=True)
            self._spawn(self._rejects, self._reject(delivery, problem))
        elif delivery.reply_list is not None and not delivery.envelope_reply:
            self.ledger.admit(delivery, reserved=True)
            self._spawn(self._checks, self._check_then_deliver(delivery, delivery.reply_list))
        else:
            self.hand_over(delivery, reserved=True)

    @staticmethod
    def _spawn(tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _check_then_deliver(self, delivery: RedisDelivery, name: str) -> None:
        """Hand over a seed-form message once its reply list is known to be free to write.

        The id of a seed-form request names its reply list, and a caller may name any key:
        another queue (which the reply and its EXPIRE would destroy), someone's data. Such
        a message is handed over without an address, so the worker dead-letters it unrun.
        """
        script = self._check_script
        assert script is not None
        keys = [name, wire.workers_key(name, cluster=self._cluster)]
        try:
            refusal = await self.ledger.retrying("checking a reply list", lambda: script(keys=keys))
        except asyncio.CancelledError:
            self._forget(delivery)  # stopping: it goes back to the queue unstarted
            raise
        except Exception as exc:
            logger.error("checking the reply list %r failed: %s", name[:80], exc)
            if delivery in self.ledger and self.ledger.claim(delivery):
                self.ledger.strand(delivery)  # given back when the worker closes
            return
        if refusal:
            delivery.refusal = wire.seed_reply_unsafe(name, refusal)
            delivery.reply_list = None
        deliver = self._deliver
        if deliver is None:
            self._forget(delivery)
            return
        deliver(delivery)

    def _forget(self, delivery: RedisDelivery) -> None:
        """Drop an unstarted delivery from the books; it stays in the processing list, to be
        given back uncounted."""
        if delivery in self.ledger and self.ledger.claim(delivery):
            self.ledger.release(delivery)

    def _address(self, delivery: RedisDelivery) -> str | None:
        """Fill in where the reply goes; the reason to dead-letter the message now, if any."""
        if delivery.header is not None:
            try:
                envelope = wire.read_header(delivery.header, self.queue)
            except ValueError as exc:
                return f"malformed envelope header: {exc}"
            delivery.deadline = envelope.deadline
            delivery.delivery_count = envelope.count
            delivery.sent = envelope.sent
            delivery.trace = envelope.trace
            if envelope.has_reply_to:
                delivery.reply_list = envelope.reply_to
                delivery.cid = envelope.cid
                delivery.envelope_reply = True
                delivery.refusal = envelope.refusal
                return None
        # The seed way: the reply goes to the list the request's id names.
        size, limit = len(delivery.body), self.options.max_message_size
        if size > limit:
            # Without parsing the body, which is too large to parse, there is no address.
            return f"seed-form message of {size} bytes exceeds the limit of {limit} bytes"
        name = wire.seed_reply_list(delivery.body)
        if name is not None:
            delivery.refusal = wire.seed_reply_refusal(name, self.queue)
            if self._cluster and delivery.refusal is None:
                delivery.refusal = wire.cluster_refusal(name)
            delivery.reply_list = None if delivery.refusal else name  # checked in Redis next
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
        slot frees when that run is done (`_send_settles`), and `aclose` waits for it.
        """
        try:
            wired = delivery.wire_reply(reply)
        except TypeError as exc:  # a cid that can't be written back: `read_header` refuses them
            logger.warning("a reply to %r can't be written: %s", delivery.reply_list, exc)
            wired = None
        if self.ledger.claim(delivery):
            await self._settler.send((delivery, wired))

    async def _send_settles(self, batch: list[tuple[RedisDelivery, bytes | None]]) -> None:
        """Settle a batch, and take as many new messages as will fit, in one round trip.

        Every delivery of the batch is released (its slot freed) however the run ends: a
        refusal for the moment (READONLY, OOM, LOADING, a lost link) is retried until Redis
        is back; any other failure strands the batch, given back when the worker closes.
        """
        ledger, slots = self.ledger, self.ledger.slots
        assert slots is not None
        room = slots.free + len(batch) if self.receiving else 0
        plain = self._plain_settle(batch)
        # Under load (the last run took messages) this run reserves every free slot, and the
        # new messages come in its batches; otherwise only the one it asks for, so that the
        # blocking take waits in Redis for the next message while this run is out, rather
        # than being sent once it is back: a round trip less on a lone caller's path.
        asked = room if not plain or self._take_hint > 1 else min(room, 1)
        slots.take(asked)
        link = self._settle_link
        taken: list[bytes] = []
        try:
            if link is None:
                raise TransportError("the worker is closed")
            if plain:
                settle = partial(self._settle_plainly, link, batch, min(room, self._take_hint))
                errors, taken, swept = await ledger.retrying("settling messages", settle)
            else:
                errors, taken, swept = await self._settle_by_script(link, batch, room)
        except BaseException as exc:
            slots.release(asked)
            for delivery, _ in batch:
                ledger.strand(delivery)
            if not isinstance(exc, Exception):
                raise
            # The messages stay in the processing list, given back when this worker closes.
            logger.error("settling %d messages from %r failed: %s", len(batch), self.queue, exc)
            return
        self.stats.settles += 1
        self.stats.settled += len(batch)
        if self._liveness is not None:
            self._liveness.touch()
        self.stats.swept += swept
        for (delivery, _), error in zip(batch, errors, strict=True):
            if error != 0:
                text = error.decode(errors="replace") if isinstance(error, bytes) else error
                logger.warning("a reply to %r was not pushed: %s", delivery.reply_list, text)
            ledger.release(delivery)
        if not self.receiving:
            taken = []  # stopping: they stay in the processing list, given back unstarted
        slots.release(asked - len(taken))
        self._take_hint = min(max(1, 2 * len(taken)), TAKE_LIMIT)
        if taken:
            self.stats.takes += 1
            self.stats.taken += len(taken)
            for item in taken:
                self._hand_over(item)
            if len(taken) > 1:
                # After the tasks just made: their settles then go out together, where the
                # first would go alone and the rest after it.
                self._settler.hold_for_this_round()

    def _plain_settle(self, batch: list[tuple[RedisDelivery, bytes | None]]) -> bool:
        """Whether `batch` can settle without the script: on one Redis, with every reply
        going to a client's reply list (which needs no check), and no sweep due: once a
        second, and at once when the batch holds a request past its deadline (there may be
        many more behind it, which the script drops in bulk)."""
        if self._cluster:
            return False
        expired, wall = False, time.time()
        for delivery, reply in batch:
            if reply is not None and delivery.reply_list and not delivery.envelope_reply:
                return False
            expired = expired or (delivery.deadline is not None and delivery.deadline <= wall)
        now = time.monotonic()
        if now < self._sweep_due and not expired:
            return True
        self._sweep_due = now + calls.SWEEP_INTERVAL
        return False

    async def _settle_plainly(
        self, link: Link, batch: list[tuple[RedisDelivery, bytes | None]], take: int
    ) -> tuple[list[object], list[bytes], int]:
        """SETTLE's work as plain commands in one MULTI/EXEC, atomic all the same: push the
        replies (one RPUSH and one EXPIRE per reply list), remove each message from the
        processing list, and move up to `take` new messages into it. The script costs Redis
        three times as much; it runs when a reply list must be checked, or, once a second,
        to sweep the queue. Returns what SETTLE returns."""
        lists: dict[str, list[bytes]] = {}
        for delivery, reply in batch:
            if reply is not None and delivery.reply_list:
                lists.setdefault(delivery.reply_list, []).append(reply)
        parts = [MULTI]
        for name, pushes in lists.items():
            parts += pack(("RPUSH", name, *pushes))
            parts += pack(("EXPIRE", name, wire.REPLY_TTL))
        remove = self._remove
        for delivery, _ in batch:
            item = delivery.item
            parts += (remove, b"$%d\r\n" % len(item), item, b"\r\n")
        parts += (self._take_one * take, EXEC)
        replies = await link.pipeline_packed(
            b"".join(parts), 2 + 2 * len(lists) + len(batch) + take
        )
        results = replies[-1]
        if not isinstance(results, list):  # refused as a whole (OOM, READONLY): nothing ran
            refusals = [r for r in replies if isinstance(r, Exception)]
            raise refusals[0] if refusals else TransportError(f"EXEC answered {results!r}")
        pushed = {name: results[2 * i] for i, name in enumerate(lists)}
        errors: list[object] = []
        for delivery, reply in batch:
            to = delivery.reply_list
            outcome = pushed.get(to) if reply is not None and to else None
            errors.append(str(outcome) if isinstance(outcome, Exception) else 0)
        taken = [item for item in results[2 * len(lists) + len(batch) :] if type(item) is bytes]
        return errors, taken, 0

    async def _settle_by_script(
        self, link: Link, batch: list[tuple[RedisDelivery, bytes | None]], room: int
    ) -> tuple[list[object], list[bytes], int]:
        """Settle `batch` and take up to `room` new messages with `scripts.SETTLE`."""
        keys: list[str] = [self._processing, self.queue]
        now = int(time.time() * 1000)
        args: list[bytes | int] = [wire.REPLY_TTL, room, now, calls.SWEEP_LIMIT]
        apart = self._cluster  # reply lists in other slots: their replies are pushed first
        for delivery, reply in batch:
            keys.append(self._processing if apart else delivery.reply_list or self._processing)
            args += (delivery.item, b"" if reply is None or apart else reply)
        ledger = self.ledger
        if apart:
            replies = [(d.reply_list, r) for d, r in batch if d.reply_list and r is not None]
            await ledger.retrying("pushing replies", lambda: self._push_apart(link, replies))
        result: tuple[list[object], list[bytes], int] = await ledger.retrying(
            "settling messages", lambda: link.run(SETTLE, keys, args)
        )
        return result

    async def _push_apart(self, link: Link, replies: list[tuple[str, bytes]]) -> None:
        """On a Redis Cluster: push replies to their lists (in their clients' slots), one
        script per list, in one pipeline; a transient failure raises, to push them all again
        (a caller drops a second copy of a reply as unknown)."""
        by_list: dict[str, list[bytes]] = {}
        for reply_list, reply in replies:
            by_list.setdefault(reply_list, []).append(reply)
        commands = [
            ("EVAL", scripts.REPLY, 1, name, wire.workers_key(name, cluster=True),
             wire.REPLY_TTL, *items)
            for name, items in by_list.items()
        ]  # fmt: skip
        if not commands:
            return
        results = await link.pipeline(*commands)
        for name, result in zip(by_list, results, strict=True):
            if isinstance(result, Exception) and is_transient(result):
                raise result
            if result:
                text = result.decode(errors="replace") if isinstance(result, bytes) else result
                logger.warning("a reply to %r was not pushed: %s", name[:80], text)

    async def _complete(self, delivery: RedisDelivery, reply: bytes | None) -> None:
        raise NotImplementedError("unused: `settle` sends each settle in a batch run")

    async def _bury(self, delivery: RedisDelivery, reason: str, reply: bytes | None) -> None:
        """Record the dead letter, send its reply when it has an address, remove it: at once."""
        record = wire.dead_letter_record(
            self.queue, self.worker_id, reason, delivery.header, delivery.body
        )
        try:
            wired = delivery.wire_reply(reply)
        except TypeError:  # a cid that can't be written back: the record is what counts
            wired = None
        script = self._bury_script
        if script is None or self._redis is None:
            raise TransportError("the worker is closed")
        reply_list = delivery.reply_list
        apart: list[tuple[str, bytes]] = []
        if self._cluster and reply_list is not None and wired is not None:
            apart, reply_list = [(reply_list, wired)], None  # in another slot: pushed after
        if reply_list is None or wired is None:
            reply_list, wired = self._dead, b""  # no reply: the key is only a placeholder
        refused = await script(
            keys=[self._dead, self._processing, reply_list],
            args=[record, delivery.item, wired, wire.REPLY_TTL],
        )
        if self._liveness is not None:
            self._liveness.touch()
        if refused:
            logger.warning("the reply to %r was not pushed: the list %s", reply_list, refused)
        logger.warning("dead-lettered a message from %r: %s", self.queue, reason)
        if apart and self._settle_link is not None:
            try:
                await self._push_apart(self._settle_link, apart)
            except CONNECTION_ERRORS as exc:  # recorded all the same; the caller times out
                logger.warning("the error reply to %r was not pushed: %s", apart[0][0], exc)
