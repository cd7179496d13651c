"""The caller's end over RabbitMQ: requests out through the default exchange, replies back
through direct reply-to, all on one channel of one connection.

Every call of a client shares one consumer of ``amq.rabbitmq.reply-to`` (no queue to
declare or delete: the broker routes replies to the channel), and its reply is matched by
``correlation_id`` in a `ReplyRouter`. Requests to queues that keep them (``durable=true``,
``queue_type=quorum``) are published with confirms, pipelined (`confirms`): a refusal fails
the call at once, and a call never waits for its confirm. Other requests are not confirmed: a
confirm costs a frame each way, and a request lost in a broker crash ends the same way as
one whose reply was (the reply path dies with the connection): the caller gets
`TransportError` at once, or `CallTimeout` at its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

from aiormq import Channel
from aiormq.abc import DeliveredMessage

from ..._exceptions import CallTimeout, ConfigurationError, NoWorkers, TransportError
from ..._settings import mask_password
from .._context import trace_headers
from .._shared import ReplyRouter, connection_lost, encode_deadline, wait_shared
from ..base import ClientTransport, TraceContext
from . import compat
from .confirms import PendingConfirms
from .connection import CONNECT_TIMEOUT, Link, describe
from .frames import HeaderValue, encode_publish
from .presence import ALIVE_TTL_MS, RECHECK, served
from .wire import (
    DEADLINE,
    DIRECT_REPLY_TO,
    JSON_CONTENT_TYPE,
    SENT,
    deadline_header,
    expiration_for,
    parse_url,
)


class AmqpClientTransport(ClientTransport):
    """Sends requests to RabbitMQ queues and takes every reply through one consumer."""

    def __init__(self, url: str) -> None:
        self.settings = parse_url(url)
        self.router = ReplyRouter()
        self._link: Link | None = None
        self.worker_window = min(self.settings.worker_window, ALIVE_TTL_MS / 1000)
        self.confirms = self.settings.durable
        """Requests are published with confirms when the queue keeps them (`confirms`)."""
        self._pending_confirms: tuple[Channel, PendingConfirms] | None = None
        self._queues: dict[str, asyncio.Future[None]] = {}
        """Per queue: checked as served, and declared (done), or being so."""
        self._checked: dict[str, float] = {}
        self._rechecking: set[str] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._closed = False

    async def connect(self) -> None:
        if self._closed:
            raise TransportError("this AMQP client is closed")
        if self._link is not None:
            return
        name = f"micromessaging client {socket.gethostname()} pid {os.getpid()}"
        link = Link(
            self.settings, name, on_open=self._opened, on_lost=self._lost, confirms=self.confirms
        )
        await link.start()
        self._link = link

    async def _opened(self, channel: Channel) -> None:
        # A new connection may be to a restarted broker that lost non-durable queues.
        self._queues.clear()
        if self.confirms:
            pending = PendingConfirms(mask_password(self.settings.connect_url.split("?")[0]))
            compat.on_confirms(channel, pending.confirmed)
            self._pending_confirms = (channel, pending)
        ok = await channel.basic_consume(DIRECT_REPLY_TO, self._replied, no_ack=True)
        assert ok.consumer_tag is not None
        compat.deliver_directly(channel, ok.consumer_tag, self._reply)

    async def _replied(self, message: DeliveredMessage) -> None:
        self._reply(message)  # a reply that came before `deliver_directly`

    def _reply(self, message: DeliveredMessage) -> None:
        self.router.resolve(message.header.properties.correlation_id, message.body)

    def _lost(self, exc: BaseException | None) -> None:
        # Direct reply-to is bound to the channel: replies to calls in flight can't arrive.
        where = self._link.where if self._link is not None else "RabbitMQ"
        self.router.fail_all(connection_lost(where, exc))
        if self._pending_confirms is not None:
            self._pending_confirms[1].lost(connection_lost(where, exc))
            self._pending_confirms = None

    async def _ready(self, queue: str, deadline: float) -> Channel:
        """The open channel, once `queue` is known to exist (declared like the seed does)."""
        link = self._link
        if link is None:
            state = "closed" if self._closed else "not connected"
            raise TransportError(f"this AMQP client is {state}")
        if link.channel is None:
            await link.wait_open(deadline)
        declared = self._queues.get(queue)
        if declared is None or (declared.done() and declared.exception() is not None):
            declared = self._check(link, queue)
        elif (
            self.worker_window
            and declared.done()
            and time.monotonic() - self._checked.get(queue, 0.0) > RECHECK
        ):
            self._recheck(link, queue)  # calls go on with the last verdict meanwhile
        try:
            await wait_shared(declared, max(deadline - time.time(), 0))
        except TimeoutError:
            raise CallTimeout(f"queue {queue!r} was not declared before the deadline") from None
        channel = link.channel or await link.wait_open(deadline)
        if self._link is not link:  # closed while this call waited: it must not be sent
            raise TransportError("this AMQP client is closed")
        return channel

    def _check(self, link: Link, queue: str) -> asyncio.Future[None]:
        """Check that `queue` is served and declare it; the calls to it wait for this."""
        self._checked[queue] = time.monotonic()
        declared = self._queues[queue] = asyncio.ensure_future(self._declare(link, queue))
        declared.add_done_callback(_retrieve)  # waiters may all have given up
        return declared

    def _recheck(self, link: Link, queue: str) -> None:
        """Check `queue` again in the background; only a "no workers" verdict replaces the
        last one (a broker error leaves it, and the next call tries again)."""
        self._checked[queue] = time.monotonic()
        if queue in self._rechecking:
            return

        async def recheck() -> None:
            try:
                verdict = await served(link, queue, self.worker_window)
            except Exception:
                self._checked.pop(queue, None)
                return
            finally:
                self._rechecking.discard(queue)
            if not verdict.served and self._link is link:
                failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                failed.set_exception(NoWorkers(queue, verdict.detail))
                self._queues[queue] = failed

        self._rechecking.add(queue)
        task = asyncio.ensure_future(recheck())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stale(self, queue: str) -> None:
        """A call to `queue` failed: check that it is served before the next one."""
        if self.worker_window and queue in self._queues and self._queues[queue].done():
            del self._queues[queue]

    async def _declare(self, link: Link, queue: str) -> None:
        # Requests sent before any worker has declared the queue wait in it, like the seed's
        # client, rather than being dropped by the default exchange; unless nobody serves
        # it (the no-worker rule: presence), when nothing is declared and the call fails.
        if self.worker_window:
            try:
                verdict = await served(link, queue, self.worker_window)
            except Exception as exc:
                raise TransportError(f"cannot look at queue {queue!r}: {describe(exc)}") from exc
            if not verdict.served:
                raise NoWorkers(queue, verdict.detail)
        try:
            await link.declare_queue(queue)
        except ValueError as exc:
            raise ConfigurationError(f"bad queue name {queue!r}: {exc}") from exc
        except Exception as exc:
            raise TransportError(f"cannot declare queue {queue!r}: {describe(exc)}") from exc

    async def request(
        self, queue: str, body: bytes, deadline: float, trace: TraceContext | None = None
    ) -> bytes:
        channel = await self._ready(queue, deadline)
        correlation_id, future = self.router.expect(deadline)
        try:
            pending = self._publish(channel, queue, body, deadline, correlation_id, trace)
            if pending is not None:
                # Not waited for: a refusal fails the call, the reply ends it.
                pending.published(on_refused=lambda exc: self.router.fail(correlation_id, exc))
            return await future
        except BaseException as exc:
            self.router.forget(correlation_id)
            if isinstance(exc, CallTimeout):
                self.stale(queue)
            raise

    async def send(
        self, queue: str, body: bytes, deadline: float | None, trace: TraceContext | None = None
    ) -> None:
        until = deadline or time.time() + CONNECT_TIMEOUT
        channel = await self._ready(queue, until)
        pending = self._publish(channel, queue, body, deadline, None, trace)
        if pending is not None:
            # A notification has no reply: the broker's confirm is all it waits for.
            confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            pending.published(future=confirmed)
            try:
                await asyncio.wait_for(confirmed, max(until - time.time(), 0.001))
            except TimeoutError:
                raise CallTimeout(f"the notification to {queue!r} was not confirmed") from None

    def _publish(
        self,
        channel: Channel,
        queue: str,
        body: bytes,
        deadline: float | None,
        correlation_id: str | None,
        trace: TraceContext | None,
    ) -> PendingConfirms | None:
        """Write the request; the channel's unconfirmed publishes when it confirms them."""
        now = time.time()
        headers: dict[str, HeaderValue] = {SENT: encode_deadline(now)}
        expiration = None
        if deadline is not None:
            # The header is for the worker (skip what nobody awaits); the expiration is for
            # the broker (drop it from the queue), and needs no agreement between clocks.
            headers[DEADLINE] = deadline_header(deadline)
            expiration = expiration_for(deadline, now)
        if trace:
            headers.update(trace_headers(trace))
        try:
            data = encode_publish(
                channel.number,
                queue,
                body,
                body_frame_size=channel.max_content_size,
                content_type=JSON_CONTENT_TYPE,
                headers=headers,
                delivery_mode=self.settings.delivery_mode,
                correlation_id=correlation_id,
                reply_to=DIRECT_REPLY_TO if correlation_id is not None else None,
                expiration=expiration,
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad queue name {queue!r}: {exc}") from exc
        assert self._link is not None
        if not self._link.write(channel, data):
            raise connection_lost(self._link.where, self._link.last_error)
        confirming = self._pending_confirms
        if confirming is not None and confirming[0] is channel:
            return confirming[1]
        return None

    async def check(self) -> None:
        link = self._link
        if link is None:
            raise TransportError(
                "this AMQP client is " + ("closed" if self._closed else "not connected")
            )
        await link.ping()

    async def aclose(self) -> None:
        self._closed = True
        link, self._link = self._link, None
        self.router.fail_all(TransportError("client closed"))
        for declared in self._queues.values():
            declared.cancel()
        self._queues.clear()
        for task in list(self._tasks):
            task.cancel()
        if link is not None:
            with contextlib.suppress(Exception):
                await link.aclose()


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
