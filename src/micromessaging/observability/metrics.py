"""Prometheus metrics of workers and the gateway, through prometheus-client (extra ``metrics``).

Served at ``/metrics`` by ``micromessaging worker --metrics-port N`` and by the gateway. The
names and labels are documented in docs/operations.md; the method label of calls to
methods a service doesn't have is ``<unknown>``, so that callers can't grow the label set.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

try:
    import prometheus_client as prometheus
except ModuleNotFoundError as exc:  # pragma: no cover - the extra is missing
    raise ModuleNotFoundError(
        'metrics need prometheus-client: pip install "micromessaging[metrics]"', name=exc.name
    ) from exc

from .._exceptions import ConfigurationError

BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Seconds: from a tenth of a millisecond (a broker round trip) to a minute."""

Registry = prometheus.CollectorRegistry


class WorkerMetrics:
    """The workers' metrics, registered in `registry` (the process's default one normally).

    One set per registry, shared by every worker of the process (`for_registry`): the
    queue is a label, and a registry refuses a metric name twice.
    """

    _shared: ClassVar[dict[int, WorkerMetrics]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def for_registry(cls, registry: Registry | None = None) -> WorkerMetrics:
        """The one set of worker metrics of `registry`."""
        registry = registry if registry is not None else prometheus.REGISTRY
        with cls._lock:
            found = cls._shared.get(id(registry))
            if found is None or found.registry is not registry:
                found = cls._shared[id(registry)] = cls(registry)
            return found

    def __init__(self, registry: Registry | None = None) -> None:
        registry = registry if registry is not None else prometheus.REGISTRY
        self.registry = registry
        options: dict[str, Any] = {"registry": registry, "namespace": "micromessaging_worker"}
        self.calls = prometheus.Counter(
            "calls", "Calls answered, by outcome: ok, a JSON-RPC error code, expired, "
            "dead_lettered.", ["queue", "method", "outcome"], **options,
        )  # fmt: skip
        self.queue_wait = prometheus.Histogram(
            "queue_wait_seconds", "From the client's send to a worker taking the request.",
            ["queue"], buckets=BUCKETS, **options,
        )  # fmt: skip
        self.execution = prometheus.Histogram(
            "execution_seconds", "How long the method ran.", ["queue", "method"],
            buckets=BUCKETS, **options,
        )  # fmt: skip
        self.call_time = prometheus.Histogram(
            "call_seconds", "From the client's send to the reply going out, as the worker saw it.",
            ["queue", "method"], buckets=BUCKETS, **options,
        )  # fmt: skip
        self.in_flight = prometheus.Gauge(
            "in_flight", "Messages taken and not yet settled.", ["queue"], **options
        )
        self.redelivered = prometheus.Counter(
            "redelivered", "Messages delivered more than once (their worker died, or gave "
            "them back).", ["queue"], **options,
        )  # fmt: skip


class GatewayMetrics:
    """The gateway's metrics: requests by queue and HTTP status, and their latency."""

    def __init__(self, registry: Registry | None = None) -> None:
        registry = registry if registry is not None else prometheus.REGISTRY
        self.registry = registry
        options: dict[str, Any] = {"registry": registry, "namespace": "micromessaging_gateway"}
        self.requests = prometheus.Counter(
            "requests", "Requests by queue and HTTP status (401, 403, 413, 504 included).",
            ["queue", "status"], **options,
        )  # fmt: skip
        self.latency = prometheus.Histogram(
            "request_seconds", "From the request's arrival to the response.", ["queue"],
            buckets=BUCKETS, **options,
        )  # fmt: skip


def exposition(registry: Registry | None = None) -> tuple[bytes, str]:
    """The Prometheus text of `registry` and its content type."""
    data = prometheus.generate_latest(registry if registry is not None else prometheus.REGISTRY)
    return data, prometheus.CONTENT_TYPE_LATEST


_serving_lock = threading.Lock()


def serve(port: int, host: str = "0.0.0.0", registry: Registry | None = None) -> Any:
    """Serve ``/metrics`` on `port` from a thread of prometheus-client's; the server."""
    with _serving_lock:
        try:
            server, _ = prometheus.start_http_server(
                port, addr=host, registry=registry if registry is not None else prometheus.REGISTRY
            )
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    return server
