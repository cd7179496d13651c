"""What the worker layer reports of every message and call, fed to stats, metrics, traces, logs.

One `CallObserver` per worker. Counters (`WorkerStats`) are always kept; Prometheus metrics,
OpenTelemetry spans and per-call debug lines only when switched on, so that a worker with
none of them pays for a few attribute updates per call.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from .._protocol import Request
from .._types import JSON
from .stats import DEAD_LETTERED, EXPIRED, OK, UNKNOWN_METHOD, WorkerStats, outcome_of

if TYPE_CHECKING:
    from ..transports.base import Delivery, TraceContext
    from .metrics import WorkerMetrics
    from .tracing import Tracing

logger = logging.getLogger("micromessaging.worker")
calls_logger = logging.getLogger("micromessaging.worker.calls")

ANY_METHOD = "*"
"""The method label of what is counted before its message is read (expired requests)."""


class CallContext(Protocol):
    """What a call's message carried besides the request: its trace context and send time (the
    `Delivery` itself: nothing is copied out of it for each call)."""

    @property
    def trace(self) -> TraceContext | None:
        """The caller's trace context, when the wire carried one."""

    @property
    def sent(self) -> float | None:
        """When the client sent it, in seconds since the epoch (None when the wire has no time)."""


class CallObserver:
    """Counts, measures, traces and logs one worker's messages and calls."""

    def __init__(
        self,
        queue: str,
        *,
        metrics: WorkerMetrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.queue = queue
        self.stats = WorkerStats()
        self.metrics = metrics
        self.tracing = tracing

    def taken(self, delivery: Delivery) -> CallContext:
        """A message was handed to the worker; what its calls' observations need of it."""
        if delivery.delivery_count > 1:
            self.stats.redelivered += 1
            if self.metrics is not None:
                self.metrics.redelivered.labels(self.queue).inc()
        sent = delivery.sent
        if self.metrics is not None:
            self.metrics.in_flight.labels(self.queue).inc()
            if sent is not None:
                wait = max(0.0, time.time() - sent)
                self.metrics.queue_wait.labels(self.queue).observe(wait)
        return delivery

    def settled(self) -> None:
        """A message's handling is over (settled or given up)."""
        if self.metrics is not None:
            self.metrics.in_flight.labels(self.queue).dec()

    def expired(self) -> None:
        """A message was skipped or cancelled because its caller had given up."""
        self.stats.expired += 1
        if self.metrics is not None:
            self.metrics.calls.labels(self.queue, ANY_METHOD, EXPIRED).inc()

    def dead_lettered(self, requests: list[Request], known: frozenset[str]) -> None:
        """A message was dead-lettered (its requests are counted under their methods)."""
        self.stats.dead_lettered += 1
        if self.metrics is not None:
            methods = [_label(request.method, known) for request in requests] or [ANY_METHOD]
            for method in methods:
                self.metrics.calls.labels(self.queue, method, DEAD_LETTERED).inc()

    def finished(
        self,
        request: Request,
        known: bool,
        response: dict[str, JSON] | None,
        seconds: float,
        context: CallContext | None,
    ) -> None:
        """One call ran (or was refused) and produced `response` in `seconds`."""
        outcome = outcome_of(response)
        if outcome != OK:
            self.stats.failed += 1
        metrics = self.metrics
        method = request.method if known else UNKNOWN_METHOD
        sent = context.sent if context is not None else None
        if metrics is not None:
            metrics.calls.labels(self.queue, method, outcome).inc()
            metrics.execution.labels(self.queue, method).observe(seconds)
            if sent is not None:
                metrics.call_time.labels(self.queue, method).observe(max(0.0, time.time() - sent))
        if calls_logger.isEnabledFor(logging.DEBUG):
            self._log(request, method, outcome, seconds, sent)

    def _log(
        self, request: Request, method: str, outcome: str, seconds: float, sent: float | None
    ) -> None:
        fields: dict[str, Any] = {
            "queue": self.queue,
            "method": method,
            "id": request.id,
            "duration_ms": round(seconds * 1000, 3),
            "outcome": outcome,
        }
        waited = ""
        if sent is not None:
            fields["wait_ms"] = round(max(0.0, time.time() - sent - seconds) * 1000, 3)
            waited = f", waited {fields['wait_ms']:.1f} ms"
        calls_logger.debug(
            "%s %s id=%r: %s in %.1f ms%s",
            self.queue, method, request.id, outcome, seconds * 1000, waited,
            extra=fields,
        )  # fmt: skip


def _label(method: str, known: frozenset[str]) -> str:
    return method if method in known else UNKNOWN_METHOD
