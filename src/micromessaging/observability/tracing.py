"""OpenTelemetry spans for calls, on both ends, when the ``otel`` extra is installed.

The client makes a CLIENT span per call and puts its W3C trace context (``traceparent``,
``tracestate``) on the wire; the worker continues it with a SERVER span, so that one call
shows as one trace across processes. Attributes follow OpenTelemetry's RPC conventions for
JSON-RPC (``rpc.system=jsonrpc``, ``rpc.service``, ``rpc.method``, ``rpc.jsonrpc.version``,
``rpc.jsonrpc.request_id``, ``rpc.jsonrpc.error_code``/``error_message``) and its messaging
ones (``messaging.system``, ``messaging.destination.name``).

Without opentelemetry-api installed `available()` is False and nothing here imports it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import (
        NoOpTracerProvider,
        ProxyTracerProvider,
        SpanKind,
        Status,
        StatusCode,
    )
except ModuleNotFoundError:  # the otel extra is not installed: no tracing
    trace = None  # type: ignore[assignment]

from .._types import JSON, Id

CARRIED = ("traceparent", "tracestate")
"""The headers of the trace context that travel with a request."""
INSTRUMENTATION = "micromessaging"
RECHECK = 1.0
"""Seconds between two looks for a tracer provider while none is set (a look reads the
environment: too dear to pay on every call of a program that never sets one up)."""


def available() -> bool:
    """Whether opentelemetry-api is installed."""
    return trace is not None


class Tracing:
    """Spans of one service's calls (a queue's, on one broker kind)."""

    def __init__(self, queue: str, system: str) -> None:
        if trace is None:
            raise RuntimeError(
                'tracing needs opentelemetry-api: pip install "micromessaging[otel]"'
            )
        self.queue = queue
        self.system = system
        self._tracer: Any = None
        self._recheck = 0.0

    def active(self) -> bool:
        """Whether a program has set up OpenTelemetry (a real tracer provider) by now.

        With the API installed and no SDK configured, spans would be no-ops that still cost
        a context switch and a propagation per call: until a provider is set, none is made.
        A provider set after the first calls is seen within `RECHECK` seconds.
        """
        if self._tracer is not None:
            return True
        now = time.monotonic()
        if now < self._recheck:
            return False
        self._recheck = now + RECHECK
        provider = trace.get_tracer_provider()
        if isinstance(provider, ProxyTracerProvider | NoOpTracerProvider):
            return False
        self._tracer = provider.get_tracer(INSTRUMENTATION)
        return True

    def _attributes(self, method: str, id_: Id) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "rpc.system": "jsonrpc",
            "rpc.service": self.queue,
            "rpc.method": method,
            "rpc.jsonrpc.version": "2.0",
            "messaging.system": self.system,
            "messaging.destination.name": self.queue,
        }
        if id_ is not None:
            attributes["rpc.jsonrpc.request_id"] = str(id_)
        return attributes

    @contextlib.contextmanager
    def client_call(self, method: str, id_: Id) -> Iterator[dict[str, str]]:
        """A CLIENT span around one call; yields the trace context to send with it."""
        with self._tracer.start_as_current_span(
            f"{self.queue}/{method}", kind=SpanKind.CLIENT, attributes=self._attributes(method, id_)
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            try:
                yield {key: carrier[key] for key in CARRIED if key in carrier}
            except Exception as exc:
                code = getattr(exc, "code", None)
                if isinstance(code, int):
                    span.set_attribute("rpc.jsonrpc.error_code", code)
                    span.set_attribute(
                        "rpc.jsonrpc.error_message", str(getattr(exc, "message", ""))
                    )
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    @contextlib.contextmanager
    def server_call(self, carrier: Mapping[str, str] | None, method: str, id_: Id) -> Iterator[Any]:
        """A SERVER span for one call, continuing the caller's trace from `carrier`."""
        context = propagate.extract(dict(carrier)) if carrier else None
        with self._tracer.start_as_current_span(
            f"{self.queue}/{method}",
            context=context,
            kind=SpanKind.SERVER,
            attributes=self._attributes(method, id_),
        ) as span:
            yield span

    @staticmethod
    def answered(span: Any, response: dict[str, JSON] | None) -> None:
        """Mark `span` with the error a response carries, if any."""
        error = response.get("error") if response is not None else None
        if isinstance(error, dict):
            span.set_attribute("rpc.jsonrpc.error_code", error.get("code"))
            span.set_attribute("rpc.jsonrpc.error_message", str(error.get("message")))
            span.set_status(Status(StatusCode.ERROR, str(error.get("message"))))
