"""The one place that touches aiormq and pamqp beyond their documented API; checked against
aiormq 7.2.4 and pamqp 4.0 (pyproject.toml bounds aiormq to 7.2.4 - 7.x).

`Link` hands pre-encoded frames (`frames`) straight to a channel's writer, which aiormq does
not offer publicly: a channel's ``write_queue`` of `ChannelFrame` items. Everything that
relies on that is here, so that an aiormq upgrade is checked in one module (pyproject.toml
bounds the version to what was checked).

The broker passes a message's properties on as the publisher encoded them, and pamqp's
decoder raises on what it can't read (a short string that is not UTF-8, an unknown field
type, tables nested past Python's recursion limit); aiormq then closes the connection, the
broker delivers the message again, and the worker never gets past it. `read_leniently`
makes such a content header decode as `UnreadableProperties`, so that the worker takes the
message and dead-letters it.

`read_quickly` replaces aiormq's frame reader, which awaits three reads per frame and decodes
every frame through pamqp's general decoder: ours reads what the socket has in one go, cuts
it into frames, and decodes the frames every message brings (``basic.deliver``, a content
header with the properties our messages carry, body frames) with `struct`; every other
frame (and any header ours does not decode exactly as pamqp would) still goes through
pamqp. The reader and `deliver_directly` were checked against aiormq 7.2.4. Only connections
opened inside `our_connections` (and their reconnections, which run in the context they
were opened in) read so: other aio-pika code in the same process keeps aiormq's reader.

`deliver_directly` hands a consumer's messages to a plain function as the connection's
reader puts their frames on the channel (``basic.deliver``, content header, body frames):
no trip through the channel's frame queue and reader task, and no task per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import aiormq.connection
import pamqp.frame
from aiormq import Channel
from aiormq.abc import ChannelFrame, DeliveredMessage
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

from .._shared import keep_reads_small

Frames = ChannelFrame

logger = logging.getLogger("micromessaging.transport.amqp")


class UnreadableProperties(Basic.Properties):
    """The properties of a message whose content header could not be decoded: none."""

    def __init__(self, problem: str) -> None:
        super().__init__()
        self.problem = problem
        """What the decoder said, for the dead letter's reason."""


_strict_content_header = pamqp.frame._unmarshal_header_frame


def _lenient_content_header(frame_data: bytes) -> ContentHeader:
    try:
        return _strict_content_header(frame_data)
    except Exception as exc:
        if len(frame_data) < 12:
            raise  # not even a body size: the broker would not have sent it
        _, weight, body_size = struct.unpack(">HHQ", frame_data[:12])
        problem = str(exc.__cause__ or exc) or type(exc).__name__
        return ContentHeader(weight, body_size, UnreadableProperties(problem[:200]))


def read_leniently() -> None:
    """Decode content headers pamqp can't read as `UnreadableProperties` (once per process)."""
    pamqp.frame._unmarshal_header_frame = _lenient_content_header


READ_SIZE = 262144
_frame_head = struct.Struct(">BHI")
_deliver_index = struct.Struct(">I").pack(Basic.Deliver.index)
_delivery_tag = struct.Struct(">QB")
FRAME_END = 0xCE

Received = tuple[int, int, Any]


def _deliver(payload: bytes) -> Basic.Deliver:
    """A ``basic.deliver`` method's arguments (after the method index), as pamqp's."""
    size = payload[4]
    at = 5 + size
    consumer_tag = payload[5:at].decode()
    delivery_tag, bits = _delivery_tag.unpack_from(payload, at)
    at += 9
    size = payload[at]
    exchange = payload[at + 1 : at + 1 + size].decode()
    at += 1 + size
    size = payload[at]
    routing_key = payload[at + 1 : at + 1 + size].decode()
    if at + 1 + size != len(payload):
        raise ValueError("basic.deliver: trailing bytes")
    frame = Basic.Deliver.__new__(Basic.Deliver)
    frame.consumer_tag = consumer_tag
    frame.delivery_tag = delivery_tag
    frame.redelivered = bool(bits & 1)
    frame.exchange = exchange
    frame.routing_key = routing_key
    return frame


_SHORT_STRINGS = (
    # Basic.Properties fields in flag order: (flag, name, kind) for those decoded here.
    (1 << 15, "content_type", "s"),
    (1 << 14, "content_encoding", "s"),
    (1 << 13, "headers", "F"),
    (1 << 12, "delivery_mode", "o"),
    (1 << 11, "priority", "o"),
    (1 << 10, "correlation_id", "s"),
    (1 << 9, "reply_to", "s"),
    (1 << 8, "expiration", "s"),
    (1 << 7, "message_id", "s"),
    (1 << 5, "message_type", "s"),
    (1 << 4, "user_id", "s"),
    (1 << 3, "app_id", "s"),
)
_QUICK_FLAGS = sum(flag for flag, _, _ in _SHORT_STRINGS)
_header_head = struct.Struct(">HHQH")
_long_long = struct.Struct(">q")
_long = struct.Struct(">l")
_unsigned = struct.Struct(">I")


class _Irregular(Exception):
    """Not a header `_content_header` decodes: pamqp does, or says what is wrong."""


def _table(data: bytes, at: int) -> tuple[int, dict[str, Any]]:
    """A field table of the value types our headers use (``l S I t V``), as pamqp's."""
    (size,) = _unsigned.unpack_from(data, at)
    at += 4
    end = at + size
    if end > len(data):
        raise _Irregular
    table: dict[str, Any] = {}
    while at < end:
        length = data[at]
        name = data[at + 1 : at + 1 + length].decode()
        at += 1 + length
        kind = data[at]
        at += 1
        if kind == 0x6C:  # l
            (table[name],) = _long_long.unpack_from(data, at)
            at += 8
        elif kind == 0x53:  # S
            (length,) = _unsigned.unpack_from(data, at)
            at += 4
            if at + length > end:
                raise _Irregular
            table[name] = data[at : at + length].decode()  # not UTF-8: pamqp gives bytes
            at += length
        elif kind == 0x49:  # I
            (table[name],) = _long.unpack_from(data, at)
            at += 4
        elif kind == 0x74:  # t
            table[name] = bool(data[at])
            at += 1
        elif kind == 0x56:  # V
            table[name] = None
        else:
            raise _Irregular
    if at != end:
        raise _Irregular
    return at, table


def _content_header(payload: bytes) -> ContentHeader:
    """A content header whose properties are the ones our messages carry, decoded as pamqp
    decodes them; `_Irregular` (or a decoding error) for anything else."""
    class_id, weight, body_size, flags = _header_head.unpack_from(payload)
    if flags & ~_QUICK_FLAGS:
        raise _Irregular  # a timestamp, a cluster id, more flag words: pamqp's
    properties = Basic.Properties()
    at = 14
    for flag, name, kind in _SHORT_STRINGS:
        if not flags & flag:
            continue
        if kind == "s":
            length = payload[at]
            end = at + 1 + length
            if end > len(payload):
                raise _Irregular
            setattr(properties, name, payload[at + 1 : end].decode())
            at = end
        elif kind == "o":
            setattr(properties, name, payload[at])
            at += 1
        else:
            at, properties.headers = _table(payload, at)
    if at != len(payload):
        raise _Irregular
    header = ContentHeader(weight, body_size, properties)
    header.class_id = class_id
    return header


def _decode(data: bytes, start: int, end: int) -> Received:
    """The frame in ``data[start:end]`` (frame end included), as pamqp's `unmarshal` returns it."""
    kind, channel, _ = _frame_head.unpack_from(data, start)
    if data[end - 1] != FRAME_END:
        raise InvalidFrameError("frame end missing")
    if kind == 3:  # body
        return end - start, channel, ContentBody(data[start + 7 : end - 1])
    if kind == 2:
        try:
            return end - start, channel, _content_header(data[start + 7 : end - 1])
        except (_Irregular, IndexError, ValueError, struct.error):
            pass  # pamqp's, or `read_leniently`'s
    elif kind == 1 and data[start + 7 : start + 11] == _deliver_index:
        try:
            return end - start, channel, _deliver(data[start + 7 : end - 1])
        except (IndexError, ValueError, struct.error):
            pass  # pamqp says what is wrong with it
    try:
        return pamqp.frame.unmarshal(data[start:end])
    except PAMQPException as exc:
        raise InvalidFrameError(str(exc)) from exc


_ours: ContextVar[bool] = ContextVar("micromessaging_amqp_connection", default=False)
_aiormq_init = aiormq.connection.FrameReceiver.__init__
_aiormq_get_frame = aiormq.connection.FrameReceiver.get_frame
bulk_readers = 0
"""How many frame receivers read in bulk so far (each connection and reconnection has one)."""


@contextlib.contextmanager
def our_connections() -> Iterator[None]:
    """Connections opened (and reopened) from within read their frames in bulk."""
    token = _ours.set(True)
    try:
        yield
    finally:
        _ours.reset(token)


def _init(self: aiormq.connection.FrameReceiver, reader: asyncio.StreamReader) -> None:
    global bulk_readers
    _aiormq_init(self, reader)
    if _ours.get():
        keep_reads_small(reader._transport)  # type: ignore[attr-defined]
        bulk_readers += 1
        self.__dict__["_mm_ready"] = deque()
        self.__dict__["_mm_data"] = b""


async def _get_frame(self: aiormq.connection.FrameReceiver) -> Received:
    """aiormq's `FrameReceiver.get_frame`, reading everything available at once."""
    ready: deque[Received] | None = self.__dict__.get("_mm_ready")
    if ready is None:
        return await _aiormq_get_frame(self)
    if ready:
        return ready.popleft()
    if self.reader.at_eof() and not self.__dict__["_mm_data"]:
        del self.reader
        raise StopAsyncIteration
    data: bytes = self.__dict__["_mm_data"]
    while True:
        if not self.started and len(data) >= 7:
            if data.startswith(b"AMQP"):
                raise ProtocolSyntaxError("Unexpected AMQP protocol header")
            self.started = True
        start, length = 0, len(data)
        while length - start >= 7:
            end = start + 8 + _frame_head.unpack_from(data, start)[2]
            if end > length:
                break
            ready.append(_decode(data, start, end))
            start = end
        data = data[start:] if start else data
        self.__dict__["_mm_data"] = data
        if ready:
            return ready.popleft()
        try:
            chunk = await self.reader.read(READ_SIZE)
        except ConnectionRefusedError as exc:
            raise AMQPConnectionError(f"Server connection refused: {exc!r}") from exc
        except ConnectionResetError as exc:
            raise AMQPConnectionError(f"Server connection reset: {exc!r}") from exc
        except ConnectionError as exc:
            raise AMQPConnectionError(f"Server connection error: {exc!r}") from exc
        except OSError as exc:
            raise AMQPConnectionError(f"Server communication error: {exc!r}") from exc
        if not chunk:
            raise AMQPConnectionError(
                f"Server connection unexpectedly closed. Read {len(data)} bytes of a frame"
            )
        data = data + chunk if data else chunk


def read_quickly() -> None:
    """Read our connections' frames with `_get_frame` instead of aiormq's reader (once per
    process; idempotent)."""
    receiver = aiormq.connection.FrameReceiver
    receiver.__init__ = _init  # type: ignore[method-assign]
    receiver.get_frame = _get_frame  # type: ignore[method-assign]


OnMessage = Callable[[DeliveredMessage], None]


class _DirectFrames(asyncio.Queue[tuple[int, Any]]):
    """A channel's frame queue that takes its direct consumers' messages out of the stream.

    A ``basic.deliver`` for a direct consumer that arrives while the queue is empty (so at a
    message boundary: aiormq is not in the middle of reading a message) is held with the
    content header and body frames that follow it, and the whole message goes to the
    consumer's function. Any other frame goes into the queue, as before; a frame out of
    place while a message is held sends what is held into the queue first, in order, for
    aiormq to complain about as it would have.
    """

    channel: Channel
    direct: dict[str, OnMessage]
    _held: list[tuple[int, Any]]
    _size: int
    _left: int

    def _take(self, item: tuple[int, Any]) -> bool:
        frame = item[1]
        held = self._held
        if held:
            if len(held) == 1:
                if isinstance(frame, ContentHeader):
                    held.append(item)
                    self._left = frame.body_size or 0
                    if not self._left:
                        self._deliver()
                    return True
            elif isinstance(frame, ContentBody):
                held.append(item)
                self._left -= len(frame.value)
                if self._left <= 0:
                    self._deliver()
                return True
            self._held = []
            for early in held:
                super().put_nowait(early)
            return False
        if isinstance(frame, Basic.Deliver) and frame.consumer_tag in self.direct and self.empty():
            held.append(item)
            return True
        return False

    def _deliver(self) -> None:
        held, self._held = self._held, []
        frame, header = held[0][1], held[1][1]
        body = b"".join(part[1].value for part in held[2:])
        on_message = self.direct.get(frame.consumer_tag)
        if on_message is None:
            return
        try:
            on_message(DeliveredMessage(frame, header, body, self.channel))
        except Exception:
            logger.exception("a consumer of channel %s failed", self.channel.number)

    def put_nowait(self, item: tuple[int, Any]) -> None:
        if not self._take(item):
            super().put_nowait(item)

    async def put(self, item: tuple[int, Any]) -> None:
        if not self._take(item):
            await super().put(item)


def deliver_directly(channel: Channel, consumer_tag: str, on_message: OnMessage) -> None:
    """Hand the messages of `consumer_tag` on `channel` straight to `on_message` (which must
    not raise: what it raises is logged)."""
    queue = channel.frames
    if not isinstance(queue, _DirectFrames):
        queue.__class__ = _DirectFrames
        assert isinstance(queue, _DirectFrames)
        queue.channel = channel
        queue.direct = {}
        queue._held = []
        queue._left = 0
    queue.direct[consumer_tag] = on_message


def frames(payload: bytes) -> Frames:
    """Encoded frames as the channel's writer takes them."""
    return ChannelFrame(payload=payload, should_close=False)


def write_now(channel: Channel, item: Frames) -> bool:
    """Queue `item` for the channel's writer; False when its queue is full (a slow socket)."""
    try:
        channel.write_queue.put_nowait(item)
    except asyncio.QueueFull:
        return False
    return True


async def write_when_room(channel: Channel, item: Frames) -> None:
    """Queue `item` once the writer has room, or give up when the channel closes."""
    put = asyncio.ensure_future(channel.write_queue.put(item))
    await asyncio.wait([put, channel.closing], return_when=asyncio.FIRST_COMPLETED)
    put.cancel()


def on_confirms(channel: Channel, handler: Callable[[Basic.Ack | Basic.Nack], None]) -> None:
    """Hand the broker's publisher confirms on `channel` to `handler` instead of aiormq, for
    publishes written as frames (aiormq counts only its own ``basic_publish``, and logs
    every other confirm as unexpected)."""

    async def confirmed(frame: Basic.Ack | Basic.Nack) -> None:
        handler(frame)

    channel._on_confirm_frame = confirmed  # type: ignore[method-assign,assignment]
