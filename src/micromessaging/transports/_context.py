"""What travels beside a request on every wire: its send time and the caller's trace context.

One reading for every transport, so that a forged or garbled header means the same thing on
every broker: a send time is read like a deadline (`decode_deadline`: milliseconds since the
epoch, anything unreadable is no time), and a trace context is kept only when its
``traceparent`` is well formed (W3C Trace Context, version 00 layout) - a bad one is dropped
with its ``tracestate``, never passed on to the tracer, and never fails the call. Written by
hand: it is two short checks, and the W3C propagator of opentelemetry is an optional extra.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ._shared import decode_deadline, encode_deadline
from .base import TraceContext

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
MAX_TRACESTATE = 512
"""The longest ``tracestate`` kept (W3C: 32 entries, at least 512 characters propagated)."""

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[\x21-\x7e]*)?")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def encode_sent(sent: float) -> str:
    """A send time (seconds since the epoch) as text headers carry it: whole milliseconds."""
    return str(encode_deadline(sent))


def decode_sent(value: object) -> float | None:
    """A send time read off a wire; None when absent or unreadable (the deadline rule)."""
    return decode_deadline(value)


def _text(value: object) -> str | None:
    if type(value) is str:
        return value
    if type(value) is bytes:
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return None


def read_trace(headers: Mapping[str, object]) -> TraceContext | None:
    """The trace context in `headers` (str or bytes values), or None when absent or malformed."""
    parent = _text(headers.get(TRACEPARENT))
    if parent is None or not valid_traceparent(parent):
        return None
    state = _text(headers.get(TRACESTATE))
    if state is None or len(state) > MAX_TRACESTATE or not _PRINTABLE.fullmatch(state):
        return {TRACEPARENT: parent}
    return {TRACEPARENT: parent, TRACESTATE: state}


def valid_traceparent(value: str) -> bool:
    """Whether `value` is a traceparent a tracer can use (W3C, versions 00 to fe)."""
    if len(value) > 256 or not _TRACEPARENT.fullmatch(value):
        return False
    version, trace_id, span_id = value[:2], value[3:35], value[36:52]
    if version == "ff" or (version == "00" and len(value) != 55):
        return False
    return trace_id != "0" * 32 and span_id != "0" * 16


def trace_headers(trace: TraceContext | None) -> dict[str, str]:
    """The headers that carry `trace` (only what `read_trace` would keep)."""
    if not trace:
        return {}
    return dict(read_trace(trace) or {})
