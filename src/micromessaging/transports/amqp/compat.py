"""The one place that touches aiormq beyond its documented API; checked against 6.8 - 7.2.

`Link` hands pre-encoded frames (`frames`) straight to a channel's writer, which aiormq does
not offer publicly: a channel's ``write_queue`` of `ChannelFrame` items. Everything that
relies on that is here, so that an aiormq upgrade is checked in one module (pyproject.toml
bounds the version to what was checked).
"""

from __future__ import annotations

import asyncio

from aiormq import Channel
from aiormq.abc import ChannelFrame

Frames = ChannelFrame


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
