"""One robust AMQP connection, and a channel on it that is reopened whenever it closes.

aio-pika's `connect_robust` reconnects the connection (backoff: the URL's
``reconnect_interval``). The channels are ours: a channel dies with its connection and also
alone (a broker-side channel error), and what must happen on a new channel differs between
client and worker, so the owner passes `on_open` (consume, declare) and `on_lost` (fail or
forget what the dead channel carried), and the link runs them each time.

The hot path writes pre-encoded frames (`frames`) with `Link.write`: everything written
during one turn of the event loop leaves in a single socket write, which matters more than
anything else here (a send is the most expensive step of a message).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection
from aiormq import Channel
from pamqp.commands import Basic

from ..._exceptions import TransportError
from ..._settings import mask_password
from .._shared import Backoff, Refused, looks_refused
from . import compat
from .wire import AmqpSettings

logger = logging.getLogger("micromessaging.transport.amqp")

# A message whose properties can't be decoded must reach the worker, not close the connection.
compat.read_leniently()

CONNECT_TIMEOUT = 10.0
PROBES = 8
"""Passive declarations (`Link.probe_queue`) under way at once."""
_REFUSALS = (
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.ConnectionNotAllowed,  # a vhost the user may not use
)


class QueueKind(enum.Enum):
    """What a passive declaration tells of a queue (`Link.probe_queue`)."""

    SHARED = "shared"
    EXCLUSIVE = "exclusive to another connection"
    MISSING = "missing"
    UNKNOWN = "not ours to look at"


class Link:
    """A connection plus one main channel, kept open; frames written to it are batched."""

    def __init__(
        self,
        settings: AmqpSettings,
        name: str,
        *,
        on_open: Callable[[Channel], Awaitable[None]],
        on_lost: Callable[[BaseException | None], None],
        confirms: bool = False,
    ) -> None:
        self.settings = settings
        self.confirms = confirms
        """Whether the main channel is in confirm mode (its owner handles the confirms)."""
        self.name = name
        self.where = mask_password(settings.connect_url.split("?", 1)[0])
        self._on_open = on_open
        self._on_lost = on_lost
        self.connection: AbstractRobustConnection | None = None
        self.channel: Channel | None = None
        """The open main channel; None while it is being reopened."""
        self._wrappers: dict[Channel, aio_pika.Channel] = {}
        self._side: Channel | None = None
        self._side_lock = asyncio.Lock()
        self._probes: list[Channel] = []
        """Open probe channels, free for the next probe."""
        self._probe_slots = asyncio.Semaphore(PROBES)
        self._opened = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._closing = False
        self.last_error: BaseException | None = None
        # Write batching: frames for `_batch_channel`, sent at the end of this loop turn.
        self._batch: list[bytes] = []
        self._batch_channel: Channel | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._blocked: deque[tuple[Channel, compat.Frames]] = deque()
        self._unblocker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and open the main channel; `TransportError` when the broker can't be had."""
        try:
            self.connection = await aio_pika.connect_robust(
                self.settings.connect_url,
                timeout=CONNECT_TIMEOUT,
                client_properties={"connection_name": self.name},
            )
            await self._open()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        except Exception as exc:
            await self.aclose()
            refused = isinstance(exc, _REFUSALS) or looks_refused(exc)
            kind = Refused if refused else TransportError
            raise kind(f"cannot connect to {self.where}: {describe(exc)}") from exc
        self._keeper = asyncio.create_task(self._keep())

    async def _open(self) -> None:
        assert self.connection is not None
        wrapper = aio_pika.Channel(self.connection, publisher_confirms=self.confirms)
        await wrapper.initialize(timeout=CONNECT_TIMEOUT)
        channel = cast(Channel, await wrapper.get_underlay_channel())
        self._wrappers[channel] = wrapper
        self.channel = channel  # before on_open: deliveries may arrive while it runs
        try:
            await self._on_open(channel)
        except BaseException:
            self.channel = None
            await self._close_channel(channel)
            raise
        channel.closing.add_done_callback(lambda closing: self._lost(channel, closing))
        self._opened.set()

    def _lost(self, channel: Channel, closing: asyncio.Future[object]) -> None:
        self._wrappers.pop(channel, None)
        if self.channel is not channel:
            return
        self.channel = None
        self._opened.clear()
        if self._closing:
            return
        exc = None if closing.cancelled() else closing.exception()
        self.last_error = exc
        logger.warning("%s: channel to %s lost: %s", self.name, self.where, describe(exc))
        self._on_lost(exc)

    async def _keep(self) -> None:
        """Reopen the main channel each time it closes, for as long as the link lives."""
        backoff = Backoff()
        while not self._closing:
            if self.channel is not None:
                await asyncio.wait([self.channel.closing])
                backoff.succeeded()
                continue
            await asyncio.sleep(backoff.failed())
            try:
                assert self.connection is not None
                await self.connection.ready()
                await self._open()
                logger.info("%s: channel to %s reopened", self.name, self.where)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = exc
                logger.debug("%s: reopening the channel failed: %s", self.name, describe(exc))

    async def wait_open(self, deadline: float) -> Channel:
        """The main channel, waiting for it to reopen until `deadline` at most."""
        while self.channel is None:
            if self._closing:
                raise TransportError("the AMQP connection is closed")
            remaining = deadline - time.time()
            if remaining <= 0:
                raise TransportError(
                    f"no connection to {self.where} before the deadline: "
                    f"{describe(self.last_error)}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._opened.wait(), remaining)
        return self.channel

    async def side_channel(self) -> Channel:
        """A channel with publisher confirms, for the rare writes that must be confirmed."""
        async with self._side_lock:
            if self._side is None or self._side.is_closed:
                if self.connection is None or self._closing:
                    raise TransportError("the AMQP connection is closed")
                if self._side is not None:
                    self._wrappers.pop(self._side, None)
                wrapper = aio_pika.Channel(self.connection, publisher_confirms=True)
                await wrapper.initialize(timeout=CONNECT_TIMEOUT)
                self._side = cast(Channel, await wrapper.get_underlay_channel())
                self._wrappers[self._side] = wrapper
            return self._side

    async def ping(self) -> None:
        """A round trip to the broker (basic.qos on the side channel); `TransportError` if none."""
        try:
            side = await self.side_channel()
            await side.basic_qos(prefetch_count=0, timeout=CONNECT_TIMEOUT)
        except TransportError:
            raise
        except Exception as exc:
            raise TransportError(f"{self.where} does not answer: {describe(exc)}") from exc

    async def declare_queue(
        self, name: str, *, durable: bool | None = None, arguments: dict[str, Any] | None = None
    ) -> bool:
        """Declare queue `name` as the settings say (or `durable` and `arguments`, given); one
        that exists with other arguments is used as it is (RabbitMQ refuses to redeclare it:
        PRECONDITION_FAILED), and so is one the user may not declare (ACCESS_REFUSED). True
        when the queue is as asked."""
        side = await self.side_channel()
        try:
            await side.queue_declare(
                name,
                durable=self.settings.durable if durable is None else durable,
                arguments=(self.settings.arguments_for(name) if arguments is None else arguments)
                or None,
                timeout=CONNECT_TIMEOUT,
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            logger.warning("queue %r exists with other arguments; using it as it is: %s", name, exc)
            side = await self.side_channel()  # the refusal closed the channel
            await side.queue_declare(name, passive=True, timeout=CONNECT_TIMEOUT)
            return False
        except aiormq.exceptions.ChannelAccessRefused as exc:
            # A user without "configure" permission may still publish to (or read) a queue
            # that operations declared: go on without declaring.
            logger.warning("not allowed to declare queue %r; using it undeclared: %s", name, exc)
            return False
        return True

    async def probe_queue(self, name: str) -> QueueKind:
        """What queue `name` is, as a passive declaration from this connection finds it.

        A queue exclusive to another connection (a caller's reply queue) is locked to us
        (RESOURCE_LOCKED); a shared one declares fine. Each refusal closes its channel, so
        probes have bare aiormq channels of their own, at most `PROBES` at once, each opened
        again as needed.
        """
        async with self._probe_slots:
            channel = self._probes.pop() if self._probes else await self.bare_channel()
            try:
                await channel.queue_declare(name, passive=True, timeout=CONNECT_TIMEOUT)
            except aiormq.exceptions.ChannelLockedResource:
                return QueueKind.EXCLUSIVE
            except aiormq.exceptions.ChannelNotFoundEntity:
                return QueueKind.MISSING
            except aiormq.exceptions.ChannelAccessRefused:
                return QueueKind.UNKNOWN
            finally:
                if not channel.is_closed and not self._closing:
                    self._probes.append(channel)
            return QueueKind.SHARED

    async def inspect_queue(self, name: str) -> tuple[int, int] | None:
        """(messages ready, consumers) of queue `name`, or None when it does not exist (a
        passive declaration on a probe channel: nothing is created)."""
        async with self._probe_slots:
            channel = self._probes.pop() if self._probes else await self.bare_channel()
            try:
                ok = await channel.queue_declare(name, passive=True, timeout=CONNECT_TIMEOUT)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return None
            finally:
                if not channel.is_closed and not self._closing:
                    self._probes.append(channel)
            return ok.message_count or 0, ok.consumer_count or 0

    async def peek_header(self, name: str, header: str) -> tuple[bool, object]:
        """Header `header` of the message at the head of queue `name`, left in the queue
        (taken with acknowledgements, then rejected back); (False, None) when the queue does
        not exist, (True, None) when it is empty."""
        async with self._probe_slots:
            channel = self._probes.pop() if self._probes else await self.bare_channel()
            try:
                message = await channel.basic_get(name, no_ack=False, timeout=CONNECT_TIMEOUT)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return False, None
            finally:
                if not channel.is_closed and not self._closing:
                    self._probes.append(channel)
            if not isinstance(message.delivery, Basic.GetOk):
                return True, None
            assert message.delivery.delivery_tag is not None
            await channel.basic_reject(message.delivery.delivery_tag, requeue=True)
            headers = message.header.properties.headers or {}
            return True, headers.get(header)

    async def bare_channel(self) -> Channel:
        """A new aiormq channel (publisher confirms on), not kept by the link: its owner closes
        it; `ConnectionError` while there is no connection."""
        transport = self.connection.transport if self.connection is not None else None
        if transport is None or self._closing:
            raise ConnectionError(f"no connection to {self.where} at the moment")
        channel = await transport.connection.channel(timeout=CONNECT_TIMEOUT)
        return cast(Channel, channel)

    def write(self, channel: Channel, data: bytes) -> bool:
        """Send encoded frames on `channel` at the end of this loop turn; False if it is gone."""
        if channel is not self.channel or channel.is_closed:
            return False
        if channel is not self._batch_channel:
            self.flush()
            self._batch_channel = channel
        self._batch.append(data)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)
        return True

    def flush(self) -> None:
        """Hand the frames written so far to the connection's writer, in one piece."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._batch = self._batch, []
        channel = self._batch_channel
        if not batch or channel is None or channel.is_closed:
            return
        item = compat.frames(b"".join(batch))
        if not self._blocked and compat.write_now(channel, item):
            return
        # The writer is behind (a slow socket): keep the order, and wait for room.
        self._blocked.append((channel, item))
        if self._unblocker is None or self._unblocker.done():
            self._unblocker = asyncio.create_task(self._unblock())

    async def _unblock(self) -> None:
        while self._blocked:
            channel, item = self._blocked[0]
            if not channel.is_closed:
                # A dead connection's writer never makes room: give up with its channel.
                await compat.write_when_room(channel, item)
            self._blocked.popleft()

    async def _close_channel(self, channel: Channel) -> None:
        wrapper = self._wrappers.pop(channel, None)
        with contextlib.suppress(Exception):
            if wrapper is not None:
                await asyncio.wait_for(wrapper.close(), 2)
            elif not channel.is_closed:
                await asyncio.wait_for(channel.close(), 2)

    async def aclose(self) -> None:
        """Send what is batched, close the channels and the connection."""
        if self._closing:
            return
        self.flush()
        self._closing = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._unblocker is not None and not self._unblocker.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._unblocker, 2)
        channels = [c for c in (self.channel, self._side, *self._probes) if c is not None]
        for channel in channels:
            await self._close_channel(channel)
        self.channel = self._side = None
        self._probes.clear()
        self._opened.clear()
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.connection.close(), 5)


def describe(exc: BaseException | None) -> str:
    """A short, readable account of an aio-pika / aiormq error."""
    if exc is None:
        return "closed"
    return str(exc) or type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    """Whether an AMQP error means "try again": a channel or connection closed, a timeout.

    The link reopens channels and the connection by itself, so the same step on a new
    channel may succeed. A refusal that would repeat (access refused, no such queue, a
    precondition) is not transient, and neither is a wrong password.
    """
    if isinstance(exc, aiormq.exceptions.AuthenticationError | TransportError):
        return False
    if isinstance(exc, aiormq.exceptions.ChannelClosed):
        return type(exc) is aiormq.exceptions.ChannelClosed
    return isinstance(
        exc,
        aiormq.exceptions.ChannelInvalidStateError | ConnectionError | TimeoutError,
    )
