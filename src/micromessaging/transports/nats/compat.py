"""The one place that touches nats-py beyond its documented API; checked against 2.16.

A connection must fail fast while first connecting (a wrong URL is reported in seconds) and
then reconnect forever; nats-py takes one reconnect limit for both, read from its options
dict on every attempt, which `reconnect_forever` changes once connected.

nats-py decodes what a publisher wrote as if it were well formed: a reply subject that is
not UTF-8 (the server passes any bytes on) or a header block whose status line is not
raises inside its reading loop, which then stops for good while the connection looks open.
One such message would leave a worker deaf until its pings time out, minutes later. So our
connections are a `Client` that reads those bytes leniently, and a message nats-py can't
make sense of reaches us with what could be read (its reply subject then fails our checks).

Speed, on the paths every call takes: a header block in the plain form every NATS client
writes (``NATS/1.0``, then ``Name: value`` lines) is read by `wire.read_plain_headers`
without nats-py's general parser (anything else still goes through it, with the same
result); and a subscription made with `subscribe_direct` has its messages handed to a plain
function from the reading task itself, where nats-py would queue each one for a second task
to pick up on a later turn of the event loop. And what a publish leaves to nats-py's flushing
task, one turn later, is written at once when nothing else is ready to run in this turn (so
nothing else could join it), the socket has taken everything written before, and nats-py's
flusher has nothing queued: a lone call's request, or a worker's only reply, goes out in
the turn it was made. uvloop (a worker's default loop) keeps its ready queue out of sight:
there the caller's word that nothing of its own would join the write (`alone`: its only
call in flight) stands in for it. Under load nothing changes (all goes through the flusher).
And `publish_checked` writes the publish command of a request or a reply itself, from a
header block we wrote, rather than through nats-py's general header encoder and its subject
checks (ours were made when the queue and reply subjects were first seen).
And the messages at the front of what is read are cut out of it by `_Parser` (one match of
the control line, the payload sliced from the bytes read), where nats-py's parser tries
each kind of line in turn and copies every message out of a buffer it shortens each time
(1.9 us a message against 1.1, a fifth of what our worker spends on a call with 64 in
flight). Anything else it leaves to nats-py's parser, from the first line that is not a
whole message on: pings, errors, server info, and a message the read cut.
These fast paths (`_process_msg`, `_flush_pending`, `_send_command`, the parser's state and
buffer, the pending buffer and its limits, the flusher's queue and task, the TCP
transport's writer) were read against nats-py 2.16, the oldest release pyproject.toml
allows.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

from nats import errors
from nats.aio.client import Client as _Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

from .._shared import keep_reads_small
from .wire import read_plain_headers

logger = logging.getLogger("micromessaging.transport.nats")

Handler = Callable[[Msg], None]
DIRECT_BATCH = 200
"""Messages handed to direct handlers before the reading task lets the event loop run the
rest: with thousands read at once, the timeouts and the callers they wake run meanwhile."""


# The control lines of the two message kinds, as nats-py's own expressions take them.
_MSG = re.compile(rb"MSG\s+([^\s]+)\s+([^\s]+)\s+(?:([^\s]+)[^\S\r\n]+)?(\d+)\r\n")
_HMSG = re.compile(rb"HMSG\s+([^\s]+)\s+([^\s]+)\s+(?:([^\s]+)[^\S\r\n]+)?(\d+)\s+(\d+)\r\n")
_M, _H = ord("M"), ord("H")


class _Parser(Parser):
    """nats-py's parser, with the whole messages at the front of each read taken out at once."""

    async def parse(self, data: bytes = b"") -> None:
        nc = self.nc
        nc.last_of_read = False
        if self.state != AWAITING_CONTROL_LINE:
            await super().parse(data)  # in the middle of a message nats-py's parser began
            return
        buffer = self.buf
        if buffer:  # a control line the last read cut (nats-py keeps it)
            buffer.extend(data)
            data = bytes(buffer)
            buffer.clear()
        position, end = 0, len(data)
        while position < end:
            first = data[position]
            if first == _H:
                line = _HMSG.match(data, position)
                if line is None:
                    break
                subject, sid, reply, header_size, size = line.groups()
                head = int(header_size)
            elif first == _M:
                line = _MSG.match(data, position)
                if line is None:
                    break
                subject, sid, reply, size = line.groups()
                head = 0
            else:
                break
            start = line.end()
            stop = start + int(size)
            if stop + 2 > end:
                break  # the payload is still on its way: nats-py's parser gathers it
            position = stop + 2
            headers = data[start : start + head] if head else None
            payload = data[start + head : stop]
            nc.last_of_read = position == end
            await nc._process_msg(int(sid), subject, reply or b"", payload, headers)
        nc.last_of_read = False
        if position < end:
            # Another kind of line, a line not all here yet, or a payload still on its way
            # (gathered in nats-py's buffer, where reading it again each time from here would
            # copy a large one over and over): nats-py's parser's turn.
            buffer.extend(data[position:])
            await super().parse()


class Client(_Client):
    """nats-py's client, reading subjects and header blocks that are not UTF-8 leniently."""

    def __init__(self) -> None:
        super().__init__()
        self._ps = _Parser(self)
        self._direct: dict[int, Handler] = {}
        """Subscription ids whose messages go straight to a function (`subscribe_direct`)."""
        self._handed_directly = 0
        self.last_of_read = False
        """Whether the message being handed over is a read's last: nothing came after it."""

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        # `headers` is None (despite nats-py's annotation) when the message has none.
        handler = self._direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self._handed_directly += 1
        if self._handed_directly % DIRECT_BATCH == 0:
            await asyncio.sleep(0)
        sub = self._subs.get(sid)
        if sub is None:
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        sub._received += 1
        hdr = None
        if headers:
            hdr = read_plain_headers(headers)
            if hdr is None:
                hdr = await self._process_headers(headers)
        msg = self._build_message(sid, subject, reply, data, hdr)
        try:
            handler(msg)
        except Exception:
            # The reading task must go on, whatever one message did to its handler.
            logger.exception("NATS: handling a message on %r failed", msg.subject)

    async def _connect_to_server(self, s: Any) -> None:
        await super()._connect_to_server(s)
        writer = getattr(self._transport, "_io_writer", None)  # TcpTransport's
        if writer is not None:
            keep_reads_small(writer.transport)

    async def _flush_pending(self, force_flush: bool = False, alone: bool = False) -> Any:
        transport = None if force_flush or not self._pending_data_size else self._writable(alone)
        if transport is not None:
            transport.writelines(self._pending)  # type: ignore[no-untyped-call]
            self._pending = []
            self._pending_data_size = 0
            return None  # nats-py's callers ignore the future it returns
        return await super()._flush_pending(force_flush)

    def _writable(self, alone: bool) -> TcpTransport | None:
        """The transport, when pending data may go to it now rather than through the flusher.

        `alone`: the caller knows that nothing else of its own would join this write (a
        worker's only call in flight). Otherwise the event loop must have nothing else ready
        in this turn, which only asyncio's loop tells (uvloop keeps its queue in C).
        """
        if not alone and getattr(asyncio.get_running_loop(), "_ready", True):
            return None  # others may join (first: the cheapest check, and under load the one)
        flusher, queue, transport = self._flusher_task, self._flush_queue, self._transport
        if not self.is_connected or flusher is None or flusher.done() or queue is None:
            return None
        if not queue.empty() or not isinstance(transport, TcpTransport):
            return None
        writer = transport._io_writer
        if writer is None or writer.transport.get_write_buffer_size():
            return None  # the socket is behind: the flusher waits for it (backpressure)
        return transport

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        self._direct.pop(sid, None)
        super()._remove_sub(sid, max_msgs)

    def _build_message(
        self,
        sid: int,
        subject: bytes,
        reply: bytes,
        data: bytes,
        headers: dict[str, str] | None,
    ) -> Msg:
        # Undecodable bytes become lone surrogates: still a str, never a valid subject.
        return self.msg_class(
            subject=subject.decode(errors="surrogateescape"),
            reply=reply.decode(errors="surrogateescape"),
            data=data,
            headers=headers,
            _client=self,
            _sid=sid,
        )

    async def _process_headers(self, headers: Any) -> dict[str, str] | None:
        if headers:
            plain = read_plain_headers(headers)
            if plain is not None:
                return plain
        try:
            return await super()._process_headers(headers)
        except Exception as exc:
            logger.debug("NATS: a message's headers can't be read (%r); taken without", exc)
            return None


async def subscribe_direct(
    connection: _Client, subject: str, handler: Handler, queue: str = ""
) -> Subscription:
    """Subscribe `handler`, called with each message from the task reading the connection.

    `handler` must return at once and never raise (an exception is logged); anything slow
    it has to do goes in a task of its own. Unsubscribing and draining work as for any
    subscription (nothing ever waits in its queue).
    """

    async def fallback(msg: Msg) -> None:  # a connection that is not ours
        handler(msg)

    subscription = await connection.subscribe(subject, queue=queue, cb=fallback)
    if isinstance(connection, Client):
        connection._direct[subscription._id] = handler
    return subscription


async def publish_checked(
    connection: _Client,
    subject: str,
    payload: bytes,
    reply: str = "",
    header_block: bytes | None = None,
    *,
    alone: bool = False,
) -> None:
    """nats-py's ``publish``, for subjects this package checked and a header block it wrote
    (`wire.header_block`): the same checks of the connection and the payload, the same
    command, buffered and flushed the same way, without checking the subjects again and
    without passing the headers through nats-py's general encoder (a request's publish cost
    a third of our client's time with 64 calls in flight).

    `alone`: nothing else the caller publishes would join this publish in the same write
    (its only call in flight), so it may go out at once on any event loop.
    """
    if connection.is_closed:
        raise errors.ConnectionClosedError
    if connection.is_draining_pubs:
        raise errors.ConnectionDrainingError
    size = len(payload)
    if not connection.is_connected:
        limit = connection._max_pending_size
        if limit <= 0 or size + connection._pending_data_size > limit:
            raise errors.OutboundBufferLimitError
    if size > connection._max_payload:
        raise errors.MaxPayloadError
    head = f"{subject} {reply} " if reply else f"{subject} "
    if header_block is None:
        command = b"PUB %s%d\r\n%s\r\n" % (head.encode(), size, payload)
    else:
        length = len(header_block)
        command = b"HPUB %s%d %d\r\n%s%s\r\n" % (
            head.encode(),
            length,
            length + size,
            header_block,
            payload,
        )
    connection.stats["out_msgs"] += 1
    connection.stats["out_bytes"] += size
    await connection._send_command(command)
    if connection._flush_queue is not None and connection._flush_queue.empty():
        if isinstance(connection, Client):
            await connection._flush_pending(alone=alone)
        else:
            await connection._flush_pending()


def reconnect_forever(connection: _Client) -> None:
    """From now on, a lost server is retried for ever (calls fail or time out meanwhile)."""
    connection.options["max_reconnect_attempts"] = -1


async def flush_in_order(connection: _Client, timeout: int = 10) -> None:
    """Wait until the server has seen every command given to `connection` so far.

    nats-py's ``flush`` writes its PING at once, ahead of what still waits in its buffer for
    the flusher task (a SUB just made): its PONG can come back before the server has seen
    that SUB, and a message another connection publishes meanwhile finds no subscriber (the
    first message of a fresh subscription was lost in 1 to 2 runs of 100). So the buffer
    goes out first, then the round trip. `TimeoutError` when either takes over `timeout`
    seconds (a flusher that stops on a lost connection never answers what it was given).
    """
    await asyncio.wait_for(connection._flush_pending(force_flush=True), timeout)
    await connection.flush(timeout=timeout)


async def drain_subscription(connection: _Client, subscription: Subscription) -> None:
    """Stop `subscription` at the server, then read every message the server sent it first.

    nats-py's own ``drain`` waits for one PING round trip after its UNSUB, but writes that
    PING at once, ahead of the UNSUB still in its buffer (`flush_in_order`): its PONG can
    come before the server has even seen the UNSUB, and what the server sends meanwhile is
    dropped. Here the round trip follows the UNSUB, so once its PONG is back nothing more
    can come.
    """
    await connection._send_unsubscribe(subscription._id)
    await flush_in_order(connection)
    await subscription._pending_queue.join()
    subscription._closed = True
    subscription._stop_processing()
    connection._remove_sub(subscription._id)
