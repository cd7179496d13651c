"""The worker's end over JetStream: a shared durable pull consumer, acknowledged after replying.

Requests wait in the queue's work-queue stream until a worker acknowledges them. Each
worker pulls only as many as it has free slots, so the rest stay in the stream for the
others. A worker acknowledges a request after publishing its reply; while a call runs it
tells the server every third of ``ack_wait`` that it is still working, so only a worker
that died (or lost its connection) lets ``ack_wait`` pass, after which the server hands the
request to another worker with its delivery count raised. On close, requests handed over
and not settled, and those that arrived after `stop_receiving`, are negatively
acknowledged once our open pull requests have ended: redelivered at once, to another.

When the consumer goes away (an operator deleted it, or the stream was deleted and made
again), the server ends our open pulls with ``409 Consumer Deleted`` and answers later
pulls with nothing at all; either sign makes the worker create what is missing again, with
backoff, and pull on: it never goes silent.

nats-py's own ``fetch`` waits for a whole batch before returning any message, so this
module speaks the pull protocol itself: one pull request for the free slots, each message
handed over the moment it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

import nats.js.errors
import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from ..._exceptions import TransportError
from .._shared import Backoff
from ..base import WorkerOptions
from . import compat, wire
from .connection import NATS_ERRORS, where
from .streams import ensure_consumer, ensure_dead_letter_stream, ensure_work_stream
from .worker import DRAIN_TIMEOUT, NatsDelivery, NatsWorkerBase

logger = logging.getLogger("micromessaging.transport.nats")

PULL_EXPIRES = 2.0
"""How long one pull request waits at the server for messages; a new one follows at once."""
PULL_GRACE = 1.0
"""A pull whose end the server did not report is forgotten this long after it expired."""
SKIP_PULL = 512
"""How many more requests a pull asks for while the requests coming are expired ones."""
ACK = b"+ACK"
NAK = b"-NAK"
IN_PROGRESS = b"+WPI"
_ENDED = {"404", "408", "409"}  # status of a pull that ended (nothing left, expired, refused)
_CONSUMER_GONE = "consumer deleted"


class _Pull:
    """One pull request: when we stop expecting its messages, and how many are still due."""

    __slots__ = ("due", "no_wait", "until")

    def __init__(self, due: int, until: float, no_wait: bool = False) -> None:
        self.due = due
        self.until = until
        self.no_wait = no_wait
        """Asked only for what the stream holds now: it ends at once, messages or not."""


class NatsJetStreamWorkerTransport(NatsWorkerBase):
    """Takes requests from the queue's JetStream stream through a shared pull consumer."""

    def __init__(self, url: str, options: WorkerOptions) -> None:
        super().__init__(url, options)
        self._js: JetStreamContext | None = None
        self._inbox = ""
        self._sub: Subscription | None = None
        self._pulls: deque[_Pull] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._returned: list[NatsDelivery] = []
        self._batch = max(1, options.concurrency // 4)
        self._pull_subject = (
            f"$JS.API.CONSUMER.MSG.NEXT.{wire.stream_name(self.queue)}.{wire.CONSUMER_NAME}"
        )
        self._recovering: asyncio.Task[None] | None = None
        self._held: deque[NatsDelivery] = deque()
        """Requests that came beyond the free slots (with a pull made while skipping)."""
        self._skipping = False
        self.skipped = 0
        """Requests acknowledged unrun because their deadline had passed when they came."""
        self.recoveries = 0
        """How many times the consumer (or stream) was found gone and made again."""

    def _transient(self, exc: BaseException) -> bool:
        # An acknowledgement while reconnecting is sent once the connection is back.
        return isinstance(exc, TransportError) and self._nc is not None and not self._nc.is_closed

    async def _open(self) -> None:
        nc = await self._connect()
        js = self._js = nc.jetstream(timeout=self._settings.connect_timeout * 2)
        try:
            await self._set_up(js)
            self._inbox = nc.new_inbox()
            self._sub = await nc.subscribe(self._inbox, cb=self._arrived)
        except NATS_ERRORS as exc:
            await self._disconnect()
            raise TransportError(f"can't set up JetStream for {self.queue!r}: {exc!r}") from exc
        self._tasks = [
            asyncio.create_task(self._pull_loop()),
            asyncio.create_task(self._keep_alive()),
        ]

    async def _set_up(self, js: JetStreamContext) -> None:
        replicas = self._settings.replicas
        await ensure_work_stream(js, self.queue, self._settings.max_age, replicas)
        await ensure_dead_letter_stream(js, self.queue, replicas)
        await ensure_consumer(js, self.queue, self._settings.ack_wait)

    async def _reconnected(self) -> None:
        # Pull requests die with the connection: ask again.
        await super()._reconnected()
        self._pulls.clear()
        self._wake.set()

    # --- pulling -----------------------------------------------------------------------------

    async def _pull_loop(self) -> None:
        slots = self.ledger.slots
        assert slots is not None
        while self.receiving:
            self._wake.clear()  # before looking: a wake-up from here on is not missed
            now = time.monotonic()
            while self._pulls and self._pulls[0].until <= now:
                self._pulls.popleft()
                # The server ends every pull it knows of (408 when it expires): silence
                # means it has no consumer to pull from any more.
                self._consumer_may_be_gone("a pull request went unanswered")
            # While requests come expired (skipped, taking no slot), ask for many at once.
            extra = SKIP_PULL if self._skipping else 0
            wanted = slots.free + extra - len(self._held) - sum(pull.due for pull in self._pulls)
            nc = self._nc
            # Under load, ask in batches rather than one pull per freed slot: each pull
            # request costs the server as much as a message.
            enough = not self._pulls or wanted >= self._batch
            recovering = self._recovering is not None
            if wanted > 0 and enough and not recovering and nc is not None and nc.is_connected:
                request: dict[str, object] = {"batch": wanted, "expires": int(PULL_EXPIRES * 1e9)}
                if extra:
                    # Only what the stream holds now, so that no large pull lingers there
                    # to take live requests other workers could run.
                    request = {"batch": wanted, "no_wait": True}
                try:
                    await nc.publish(self._pull_subject, orjson.dumps(request), reply=self._inbox)
                    until = now + PULL_EXPIRES + PULL_GRACE
                    self._pulls.append(_Pull(wanted, until, no_wait=bool(extra)))
                except NATS_ERRORS as exc:
                    logger.debug("pull request failed: %r", exc)
            wait = self._pulls[0].until - now if self._pulls else 0.5
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))

    async def _arrived(self, msg: Msg) -> None:
        headers = msg.headers
        if not msg.reply or not msg.reply.startswith("$JS.ACK."):
            status = headers.get(wire.NATS_STATUS) if headers else None
            if status in _ENDED and self._pulls:
                self._pulls.popleft()
                self._wake.set()
            description = str(headers.get(wire.NATS_DESCRIPTION, "")) if headers else ""
            if status == "409" and description.lower() == _CONSUMER_GONE:
                self._consumer_may_be_gone("the server deleted our consumer")
            return
        if self._pulls:
            self._pulls[0].due -= 1
            if self._pulls[0].due <= 0:
                self._pulls.popleft()
                self._wake.set()
        deadline = wire.read_deadline(headers)
        if deadline is not None and deadline <= time.time():
            # Its caller has gone: acknowledged here (stopping or not), without a slot or a
            # task, so that a backlog of abandoned requests drains at the speed of the wire.
            self.skipped += 1
            self._skipping = True
            self._wake.set()
            with contextlib.suppress(*NATS_ERRORS):
                await self._connection().publish(msg.reply, ACK)
            return
        self._skipping = False
        reply_to = headers.get(wire.REPLY_TO) if headers else None
        delivery = NatsDelivery(self, msg, reply_to, msg.metadata.num_delivered)
        slots = self.ledger.slots
        assert slots is not None
        if not self.receiving:
            # Stopping: given back once our pulls have ended (see `_outlive_pulls`).
            self._returned.append(delivery)
        elif not self._held and slots.free > 0:
            self.hand_over(delivery)
        elif len(self._held) < SKIP_PULL:
            # Came with a large pull made while skipping (or late): runs when a slot frees.
            self._held.append(delivery)
            self._slot_freed()
        else:
            await self._signal(delivery, NAK)

    def _slot_freed(self) -> None:
        slots = self.ledger.slots
        assert slots is not None
        while self._held and self.receiving and slots.free > 0:
            self.hand_over(self._held.popleft())
        self._wake.set()

    # --- a consumer that went away -----------------------------------------------------------

    def _consumer_may_be_gone(self, why: str) -> None:
        if self._recovering is None and self.receiving and self._js is not None:
            self._recovering = asyncio.create_task(self._recover(why))

    async def _recover(self, why: str) -> None:
        """Make the stream and consumer again if they are gone, with backoff until done."""
        js = self._js
        assert js is not None
        backoff = Backoff()
        try:
            while self.receiving:
                try:
                    gone = await self._consumer_gone(js)
                    if gone:
                        await self._set_up(js)
                except NATS_ERRORS as exc:
                    delay = backoff.failed()
                    if backoff.failures == 1:
                        logger.warning(
                            "JetStream for %r unavailable (%r); retrying", self.queue, exc
                        )
                    await asyncio.sleep(delay)
                    continue
                if gone:
                    self.recoveries += 1
                    logger.warning(
                        "the JetStream consumer of %r was gone (%s); made it again", self.queue, why
                    )
                return
        finally:
            self._recovering = None
            self._pulls.clear()
            self._wake.set()

    async def _consumer_gone(self, js: JetStreamContext) -> bool:
        try:
            await js.consumer_info(wire.stream_name(self.queue), wire.CONSUMER_NAME)
        except nats.js.errors.NotFoundError:
            return True
        return False

    # --- settling ----------------------------------------------------------------------------

    async def _signal(self, delivery: NatsDelivery, signal: bytes) -> None:
        nc = self._connection()
        try:
            await nc.publish(delivery.msg.reply, signal)
        except NATS_ERRORS as exc:
            raise TransportError(f"can't acknowledge on NATS: {exc!r}") from exc

    async def _acknowledge(self, delivery: NatsDelivery) -> None:
        await self._signal(delivery, ACK)

    async def _keep_alive(self) -> None:
        """Tell the server, every third of ack_wait, which requests are still being worked on."""
        while True:
            await asyncio.sleep(self._settings.ack_wait / 3)
            for delivery in [*self.ledger.in_flight(), *self._held]:
                with contextlib.suppress(TransportError):
                    await self._signal(delivery, IN_PROGRESS)

    # --- stopping ----------------------------------------------------------------------------

    async def _stop_taking(self) -> None:
        # Messages of pulls still open at the server keep coming for up to PULL_EXPIRES:
        # `_arrived` keeps them, and `aclose` gives them back.
        self._wake.set()
        if self._tasks:
            self._tasks[0].cancel()
        if self._recovering is not None:
            self._recovering.cancel()

    async def _give_back(self, deliveries: list[NatsDelivery]) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        returned, self._returned = [*deliveries, *self._held, *self._returned], []
        self._held.clear()
        if self._nc is not None:
            # With requests to give back, every pull must end first (see `_outlive_pulls`);
            # else only the pulls that end at once, and bring what the stream holds now.
            await self._outlive_pulls(only_no_wait=not returned)
        sub, self._sub = self._sub, None
        if sub is not None and self._nc is not None:
            # Drained, not dropped: what our pulls brought and we have not read yet is
            # read now (expired requests acknowledged, live ones given back below).
            # Dropped, each would wait ack_wait at the server before anyone got it.
            with contextlib.suppress(*NATS_ERRORS):
                await asyncio.wait_for(compat.drain_subscription(self._nc, sub), DRAIN_TIMEOUT)
        returned.extend(self._returned)
        self._returned = []
        if self._nc is not None:
            for delivery in returned:
                with contextlib.suppress(TransportError):
                    await self._signal(delivery, NAK)

    async def _outlive_pulls(self, only_no_wait: bool = False) -> None:
        """Wait until the server has ended our pull requests (they expire within seconds).

        A request NAKed while one of our pulls is open would be delivered straight back to
        it, and a redelivery to a pull nobody listens to any more loses count of deliveries
        (nats-server 2.9): the next worker would see it as delivered once.
        """
        deadline = time.monotonic() + PULL_EXPIRES + PULL_GRACE
        while self._pulls and time.monotonic() < deadline:
            if only_no_wait and not any(pull.no_wait for pull in self._pulls):
                return
            self._wake.clear()
            if self._pulls[0].until <= time.monotonic():
                self._pulls.popleft()  # its end was never reported: expired by now
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), deadline - time.monotonic())

    async def _disconnect(self) -> None:
        if self.skipped:
            logger.info(
                "skipped %d requests to %r whose callers had gone", self.skipped, self.queue
            )
        await super()._disconnect()

    def describe(self) -> str:
        return (
            f"NATS JetStream stream {wire.stream_name(self.queue)} at {where(self._settings)}, "
            f"ack after reply, redelivery after {self._settings.ack_wait:g}s"
        )
