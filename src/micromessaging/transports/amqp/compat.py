"""The one place that touches aiormq and pamqp beyond their documented API; checked against
aiormq 6.8 - 7.2 and pamqp 4.0.

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
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import pamqp.frame
from aiormq import Channel
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

Frames = ChannelFrame


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
