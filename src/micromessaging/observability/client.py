"""What a client counts and traces of each call: `Observed`, one ``with`` per call.

A class rather than a generator context manager: it runs around every call of every
client, and costs a fraction of one.
"""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .._exceptions import CallTimeout, MicromessagingError, RemoteError
from .._types import Id
from .stats import OK, ClientStats

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from .tracing import Tracing

TIMEOUT = "timeout"
TRANSPORT = "transport"


def client_tracing(queue: str, broker: str) -> Tracing | None:
    """Spans for a client's calls: on when OpenTelemetry is installed, unless switched off."""
    if os.environ.get("MICROMESSAGING_TRACING", "1") in ("0", "false", "no"):
        return None
    from . import tracing

    if not tracing.available():
        return None
    return tracing.Tracing(queue, urlsplit(broker).scheme)


class Observed:
    """One call, counted in `stats` (and traced when `tracing` is on)."""

    __slots__ = ("_id", "_method", "_span", "_started", "_stats", "_tracing")

    def __init__(self, stats: ClientStats, tracing: Tracing | None, method: str, id_: Id) -> None:
        self._stats = stats
        self._tracing = tracing
        self._method = method
        self._id = id_
        self._span: AbstractContextManager[dict[str, str]] | None = None
        self._started = 0.0

    def __enter__(self) -> dict[str, str] | None:
        self._stats.in_flight += 1
        self._started = time.perf_counter()
        if self._tracing is None or not self._tracing.active():
            return None
        self._span = self._tracing.client_call(self._method, self._id)
        return self._span.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stats = self._stats
        stats.in_flight -= 1
        stats.seconds += time.perf_counter() - self._started
        if exc is None:
            outcome = OK
        elif isinstance(exc, RemoteError):
            outcome = str(exc.code)
        elif isinstance(exc, CallTimeout):
            outcome = TIMEOUT
        elif isinstance(exc, MicromessagingError):
            outcome = TRANSPORT
        else:
            outcome = type(exc).__name__
        stats.calls[self._method, outcome] += 1
        if self._span is not None:
            self._span.__exit__(exc_type, exc, tb)
