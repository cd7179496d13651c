"""What an amqp:// URL asks for, and the message conventions both ends share. Pure: no I/O.

The URL is the one setting a deployment has (``CLOUDAMQP_URL``), so the queue's kind rides
on its query string: ``?queue_type=quorum`` or ``?durable=true``. Those two are ours and are
removed before the URL reaches aio-pika; every other parameter (``heartbeat``,
``reconnect_interval``, TLS files...) is aio-pika's. docs/wire-amqp.md describes the wire.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..._exceptions import ConfigurationError

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
"""RabbitMQ's pseudo-queue for replies: no queue to declare, replies go to the channel."""

DEADLINE = "mm-deadline"
"""Header: when the caller stops waiting, in whole milliseconds since the epoch (an integer:
pamqp re-encodes a float header as a 32-bit float, off by minutes at today's epoch)."""
DELIVERIES = "mm-deliveries"
"""Header: how many times the message has been handed to a worker (our count, classic queues)."""
QUORUM_DELIVERIES = "x-delivery-count"
"""Header set by quorum queues: how many times the message went back to the queue."""
DEAD_REASON = "mm-dead-reason"
"""Header on a dead letter: why the worker gave up on it."""

JSON_CONTENT_TYPE = "application/json"
RECONNECT_INTERVAL = "1"
"""Seconds between reconnection attempts, unless the URL says otherwise (aio-pika's is 5)."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class AmqpSettings:
    """An amqp:// or amqps:// URL, split into aio-pika's part and ours."""

    connect_url: str
    queue_type: str = "classic"
    durable: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def delivery_mode(self) -> int | None:
        """2 (persistent) when the queue survives a broker restart, else the default."""
        return 2 if self.durable else None


def parse_url(url: str) -> AmqpSettings:
    """Read our options off `url`; `ConfigurationError` when one is wrong."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("amqp", "amqps"):
        raise ConfigurationError(f"not an AMQP URL: {parts.scheme}://")
    if not parts.hostname:
        raise ConfigurationError("an AMQP URL needs a host: amqp://user:password@host/vhost")
    query: dict[str, str] = dict(parse_qsl(parts.query, keep_blank_values=True))
    queue_type = query.pop("queue_type", "classic").lower()
    if queue_type not in ("classic", "quorum"):
        raise ConfigurationError(f"queue_type must be classic or quorum, not {queue_type!r}")
    durable_text = query.pop("durable", "").lower()
    if durable_text and durable_text not in _TRUE | _FALSE:
        raise ConfigurationError(f"durable must be true or false, not {durable_text!r}")
    if queue_type == "quorum":
        if durable_text in _FALSE:
            raise ConfigurationError("quorum queues are always durable: drop durable=false")
        durable, arguments = True, {"x-queue-type": "quorum"}
    else:
        durable, arguments = durable_text in _TRUE, {}
    if "no_verify_ssl" in query:
        # aiormq verifies certificates only when this is exactly "0": "false" turned it off.
        no_verify = query["no_verify_ssl"].lower()
        if no_verify not in _TRUE | _FALSE:
            raise ConfigurationError(f"no_verify_ssl must be true or false, not {no_verify!r}")
        query["no_verify_ssl"] = "1" if no_verify in _TRUE else "0"
    query.setdefault("reconnect_interval", RECONNECT_INTERVAL)
    connect_url = urlunsplit(parts._replace(query=urlencode(query)))
    return AmqpSettings(connect_url, queue_type, durable, arguments)


def deadline_header(deadline: float) -> int:
    """The `DEADLINE` header's value for a deadline in seconds since the epoch."""
    return int(deadline * 1000)


def deadline_of(headers: Mapping[str, Any] | None) -> float | None:
    """The deadline a message carries, in seconds since the epoch; None when it has none."""
    value = headers.get(DEADLINE) if headers else None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value / 1000


def delivery_count_of(headers: Mapping[str, Any] | None, redelivered: bool) -> tuple[int, bool]:
    """How many times this message has now been delivered, and whether it must be recounted.

    Quorum queues count for us (``x-delivery-count``: returns to the queue so far). Classic
    queues only flag a redelivery: such a message is republished with our count raised by
    one and the original acknowledged, so the count survives any number of worker deaths.
    """
    quorum = headers.get(QUORUM_DELIVERIES) if headers else None
    if isinstance(quorum, int) and not isinstance(quorum, bool):
        return quorum + 1, False
    ours = headers.get(DELIVERIES) if headers else None
    count = ours if isinstance(ours, int) and not isinstance(ours, bool) and ours > 0 else 1
    if redelivered:
        return count + 1, True
    return count, False


def expiration_for(deadline: float, now: float) -> str:
    """The per-message TTL (milliseconds, as AMQP wants it) that ends at `deadline`."""
    return str(max(1, math.ceil((deadline - now) * 1000)))
