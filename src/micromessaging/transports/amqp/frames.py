"""AMQP 0-9-1 frames for the hot path, encoded as bytes by pure functions.

aiormq encodes every frame through pamqp's general-purpose classes, which costs more CPU than
the rest of a call; the few frames we send for every message (publish, ack, nack) are simple
enough to pack with `struct`. Frames are concatenated and written in one go by `Link.write`.
Anything rarer (declarations, republishing a message with foreign headers) still goes
through aiormq. The tests check these bytes against pamqp's decoder.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping

FRAME_END = b"\xce"
METHOD, HEADER, BODY = 1, 2, 3
BASIC = 60
PUBLISH, ACK, NACK = 40, 80, 120

# Basic property flags, in the order the properties follow the flag word.
CONTENT_TYPE = 1 << 15
HEADERS = 1 << 13
DELIVERY_MODE = 1 << 12
CORRELATION_ID = 1 << 10
REPLY_TO = 1 << 9
EXPIRATION = 1 << 8

HeaderValue = str | int | float | bool | None

_frame_head = struct.Struct(">BHI")
_ack = struct.Struct(">HHQB")
_header_head = struct.Struct(">HHQH")
_long_long = struct.Struct(">q")
_publish_head = struct.pack(">HHH", BASIC, PUBLISH, 0) + b"\x00"  # ticket, exchange ""


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    """One frame: type, channel, size, payload, frame end."""
    return _frame_head.pack(kind, channel, len(payload)) + payload + FRAME_END


def shortstr(value: str) -> bytes:
    """An AMQP short string: one length octet, then at most 255 bytes of UTF-8."""
    data = value.encode()
    if len(data) > 255:
        raise ValueError(f"AMQP short strings hold at most 255 bytes: {value[:40]!r}...")
    return bytes((len(data),)) + data


_constants: dict[tuple[object, ...], bytes] = {}
CONSTANTS_KEPT = 4096


def _constant(key: tuple[object, ...], make: Callable[[], bytes]) -> bytes:
    """`make()`, kept by `key` (queue names, content types: a few per process)."""
    data = _constants.get(key)
    if data is None:
        data = make()
        if len(_constants) < CONSTANTS_KEPT:
            _constants[key] = data
    return data


def table(values: Mapping[str, HeaderValue]) -> bytes:
    """An AMQP field table of strings, integers, floats, booleans and voids."""
    parts = []
    for name, value in values.items():
        parts.append(_constant((name,), lambda name=name: shortstr(name)))  # type: ignore[misc]
        if type(value) is int:  # the usual: a time in milliseconds
            parts.append(b"l" + _long_long.pack(value))
        elif isinstance(value, bool):  # before int: bool is an int
            parts.append(b"t\x01" if value else b"t\x00")
        elif isinstance(value, int):
            parts.append(b"l" + struct.pack(">q", value))
        elif isinstance(value, float):
            parts.append(b"d" + struct.pack(">d", value))
        elif isinstance(value, str):
            data = value.encode()
            parts.append(b"S" + struct.pack(">I", len(data)) + data)
        elif value is None:
            parts.append(b"V")
        else:
            raise TypeError(f"header {name!r}: {type(value).__name__} is not supported here")
    data = b"".join(parts)
    return struct.pack(">I", len(data)) + data


def encode_publish(
    channel: int,
    routing_key: str,
    body: bytes,
    *,
    body_frame_size: int,
    mandatory: bool = False,
    content_type: str | None = None,
    headers: Mapping[str, HeaderValue] | None = None,
    delivery_mode: int | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    expiration: str | None = None,
) -> bytes:
    """basic.publish to the default exchange, its content header and its body frames."""
    method_frame = _constants.get((channel, routing_key, mandatory))
    if method_frame is None:
        method_frame = _constant(
            (channel, routing_key, mandatory),
            lambda: frame(
                METHOD,
                channel,
                _publish_head + shortstr(routing_key) + (b"\x01" if mandatory else b"\x00"),
            ),
        )
    flags = 0
    properties = []
    if content_type is not None:
        flags |= CONTENT_TYPE
        properties.append(_constant((content_type,), lambda: shortstr(content_type)))
    if headers:
        flags |= HEADERS
        properties.append(table(headers))
    if delivery_mode is not None:
        flags |= DELIVERY_MODE
        properties.append(bytes((delivery_mode,)))
    if correlation_id is not None:
        flags |= CORRELATION_ID
        properties.append(shortstr(correlation_id))
    if reply_to is not None:
        flags |= REPLY_TO
        properties.append(_constant((reply_to,), lambda: shortstr(reply_to)))
    if expiration is not None:
        flags |= EXPIRATION
        properties.append(shortstr(expiration))
    header = _header_head.pack(BASIC, 0, len(body), flags) + b"".join(properties)
    frames = [method_frame, frame(HEADER, channel, header)]
    # The body is cut into frames of the size the connection negotiated (frame_max - 8).
    step = body_frame_size
    if len(body) <= step:
        if body:
            frames += (_frame_head.pack(BODY, channel, len(body)), body, FRAME_END)
    else:
        frames.extend(frame(BODY, channel, body[i : i + step]) for i in range(0, len(body), step))
    return b"".join(frames)


def encode_ack(channel: int, delivery_tag: int) -> bytes:
    """basic.ack of one delivery."""
    return frame(METHOD, channel, _ack.pack(BASIC, ACK, delivery_tag, 0))


def encode_nack(channel: int, delivery_tag: int, *, requeue: bool = True) -> bytes:
    """basic.nack of one delivery, back to its queue when `requeue`."""
    return frame(METHOD, channel, _ack.pack(BASIC, NACK, delivery_tag, 2 if requeue else 0))
