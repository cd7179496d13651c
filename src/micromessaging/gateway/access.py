"""What the gateway says of each request: one access log line, and its metrics when asked.

The line goes to logger ``micromessaging.gateway.access`` at info, with the request's fields
as ``extra`` (so ``--log-format json`` gives each its own key): method, path, queue, token
(the grant's name, never the token), rpc (the JSON-RPC methods called), status and
duration_ms. The metrics' queue label is a queue some token may call, else ``<other>``, so
that callers can't grow the label set by inventing paths.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._asgi import Message, Send

if TYPE_CHECKING:
    from ..observability.metrics import GatewayMetrics

access_logger = logging.getLogger("micromessaging.gateway.access")

MAX_LOGGED_PATH = 200
"""Characters of a request's path an access line keeps."""
OTHER_QUEUE = "<other>"
"""The metrics' queue label of a request to no queue a token may call (404s, the console)."""


@dataclass(slots=True)
class AccessEntry:
    """One request, filled in as the gateway learns about it."""

    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    queue: str | None = None
    token: str | None = None
    rpc: list[str] = field(default_factory=list)
    status: int = 0
    """The response's status; 0 when none went out (the caller hung up)."""

    def watch(self, send: Send) -> Send:
        """`send`, noting the response status as it goes out."""

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            await send(message)

        return watched


class AccessRecorder:
    """Writes each finished request's access line and counts it in the metrics."""

    def __init__(self, queues: Iterable[str], metrics: GatewayMetrics | None = None) -> None:
        self.queues = frozenset(queues)
        self.metrics = metrics

    def finish(self, entry: AccessEntry) -> None:
        """Record `entry`, whose response has gone out (or never will)."""
        duration = time.perf_counter() - entry.started
        if self.metrics is not None:
            label = entry.queue if entry.queue in self.queues else OTHER_QUEUE
            self.metrics.requests.labels(label, str(entry.status)).inc()
            self.metrics.latency.labels(label).observe(duration)
        if access_logger.isEnabledFor(logging.INFO):
            rpc = ",".join(entry.rpc) or "-"
            # A caller's path is escaped (no newline can fake a line) and cut short.
            path = (
                entry.path
                if entry.path.isprintable() and entry.path.isascii()
                else (ascii(entry.path)[1:-1])
            )
            path = path[:MAX_LOGGED_PATH]
            access_logger.info(
                "%s %s %d %.1fms queue=%s token=%s rpc=%s",
                entry.method,
                path,
                entry.status,
                duration * 1000,
                entry.queue or "-",
                entry.token or "-",
                rpc,
                extra={
                    "method": entry.method,
                    "path": path,
                    "queue": entry.queue,
                    "token": entry.token,
                    "rpc": entry.rpc,
                    "status": entry.status,
                    "duration_ms": round(duration * 1000, 3),
                },
            )
