"""Plain counters of what a worker or a client has done: always on, nearly free.

They feed a worker's `WorkerRecord` (``micromessaging status``) and `client.stats`; the
Prometheus metrics (`metrics`), when on, count the same events with labels.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

OK = "ok"
EXPIRED = "expired"
DEAD_LETTERED = "dead_lettered"
UNKNOWN_METHOD = "<unknown>"
"""The method label of calls to methods the service doesn't have (bounded label values)."""


def outcome_of(response: dict[str, object] | None) -> str:
    """A call's outcome label: ``ok``, or its JSON-RPC error code as text."""
    if response is None or "error" not in response:
        return OK
    error = response["error"]
    code = error.get("code") if isinstance(error, dict) else None
    return str(code) if isinstance(code, int) else "error"


@dataclass(slots=True)
class WorkerStats:
    """What a worker has done since it started."""

    completed: int = 0
    """Messages settled with their reply (errors included)."""
    failed: int = 0
    """Calls answered with an error."""
    expired: int = 0
    """Messages skipped or cancelled because their caller had given up."""
    dead_lettered: int = 0
    redelivered: int = 0
    """Messages delivered more than once (a worker died or gave them back)."""
    transport_errors: int = 0
    """Settles the broker refused for good (the message was delivered again)."""
    started: float = field(default_factory=time.time)


@dataclass(slots=True)
class ClientStats:
    """What a client has done: calls by method and outcome, calls in flight, their time.

    Outcomes: ``ok``, a JSON-RPC error code (``"-32601"``), ``timeout`` or ``transport``.
    """

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    in_flight: int = 0
    seconds: float = 0.0
    """The time all finished calls took, together (divide by their count for a mean)."""

    @property
    def total(self) -> int:
        """Calls finished."""
        return sum(self.calls.values())

    def by_outcome(self) -> dict[str, int]:
        """Finished calls by outcome, all methods together."""
        totals: Counter[str] = Counter()
        for (_, outcome), count in self.calls.items():
            totals[outcome] += count
        return dict(totals)
