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
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..._exceptions import ConfigurationError
from .._context import decode_sent, read_trace
from .._shared import (
    WORKER_WINDOW,
    UrlOptions,
    decode_deadline,
    encode_deadline,
    worker_window,
)
from ..base import TraceContext

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
"""RabbitMQ's pseudo-queue for replies: no queue to declare, replies go to the channel."""
SERVER_NAMED = "amq.gen-"
"""How the names the broker gives queues declared without one begin (the seed's reply queue)."""
DEAD_SUFFIX = ".dead"
"""A queue's dead letters are kept in ``<queue>.dead``."""
ALIVE_SUFFIX = ".alive"
"""A queue's last heartbeat is kept in ``<queue>.alive`` (`presence`)."""

DEADLINE = "mm-deadline"
"""Header: when the caller stops waiting, in whole milliseconds since the epoch (an integer:
pamqp re-encodes a float header as a 32-bit float, off by minutes at today's epoch)."""
SENT = "mm-sent"
"""Header: when the client sent the request, in whole milliseconds since the epoch (an
integer, like `DEADLINE`); a foreign client's ``timestamp`` property (seconds) is read too."""
DELIVERIES = "mm-deliveries"
"""Header: how many times the message has been handed to a worker (our count, classic queues)."""
QUORUM_DELIVERIES = "x-delivery-count"
"""Header set by quorum queues: how many times the message went back to the queue."""
COUNT_LIMIT = 2**31
"""Counts read off a message are capped here, so that one raised by one still encodes."""
DEAD_REASON = "mm-dead-reason"
"""Header on a dead letter: why the worker gave up on it."""
DEAD_ID = "mm-dead-id"
"""Header on a dead letter: its id (16 hex digits), what ``dead-letters --id`` names."""
DEAD_AT = "mm-dead-at"
"""Header on a dead letter: when it was dead-lettered, integer milliseconds since the epoch."""

BROKER_DELIVERY_LIMIT = 20
"""Quorum queues: deliveries after which the broker itself dead-letters a request (RabbitMQ
4's default, declared so that 3.x does the same). Our workers give up first, with a reply,
at ``--max-deliveries`` (3): this catches what they never saw (a request that kills a
worker before it is read, workers run with a higher limit)."""

JSON_CONTENT_TYPE = "application/json"
RECONNECT_INTERVAL = "1"
"""Seconds between reconnection attempts, unless the URL says otherwise (aio-pika's is 5)."""

OUR_OPTIONS = frozenset({"queue_type", "durable", "no_verify_ssl", "worker_window"})
"""Taken out of the URL (aio-pika gets the rest; no_verify_ssl goes back as aiormq reads it)."""


@dataclass(frozen=True, slots=True)
class AmqpSettings:
    """An amqp:// or amqps:// URL, split into aio-pika's part and ours."""

    connect_url: str
    queue_type: str = "classic"
    durable: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    worker_window: float = WORKER_WINDOW
    """The no-worker rule's window, in seconds; 0: calls always wait (`presence`)."""

    def arguments_for(self, queue: str) -> dict[str, Any]:
        """The arguments `queue` is declared with: on quorum, a service's queue also names its
        dead-letter queue and a delivery limit (`BROKER_DELIVERY_LIMIT`), so that a request
        the broker gives up on reaches ``<queue>.dead`` instead of being dropped."""
        if self.queue_type != "quorum" or queue.endswith((DEAD_SUFFIX, ALIVE_SUFFIX)):
            return dict(self.arguments)
        return {
            **self.arguments,
            "x-delivery-limit": BROKER_DELIVERY_LIMIT,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue + DEAD_SUFFIX,
        }

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
    ours, rest = UrlOptions.split(url, OUR_OPTIONS, what="AMQP")
    queue_type = ours.choice("queue_type", "classic", ("classic", "quorum"))
    if queue_type == "quorum":
        if not ours.flag("durable", True):
            raise ConfigurationError("quorum queues are always durable: drop durable=false")
        durable, arguments = True, {"x-queue-type": "quorum"}
    else:
        durable, arguments = ours.flag("durable", False), {}
    query: dict[str, str] = dict(parse_qsl(urlsplit(rest).query, keep_blank_values=True))
    if "no_verify_ssl" in ours:
        # aiormq verifies certificates only when this is exactly "0": "false" turned it off.
        query["no_verify_ssl"] = "1" if ours.flag("no_verify_ssl", False) else "0"
    query.setdefault("reconnect_interval", RECONNECT_INTERVAL)
    connect_url = urlunsplit(parts._replace(query=urlencode(query)))
    return AmqpSettings(connect_url, queue_type, durable, arguments, worker_window(ours))


def deadline_header(deadline: float) -> int:
    """The `DEADLINE` header's value for a deadline in seconds since the epoch."""
    return encode_deadline(deadline)


def deadline_of(headers: Mapping[str, Any] | None) -> float | None:
    """The deadline a message carries, in seconds since the epoch (the shared rule)."""
    return decode_deadline(headers.get(DEADLINE)) if headers else None


def sent_of(headers: Mapping[str, Any] | None, timestamp: object = None) -> float | None:
    """When a message was sent (seconds since the epoch): `SENT`, else the AMQP ``timestamp``
    property (whole seconds, as a foreign client may set it), else None."""
    sent = decode_sent(headers.get(SENT)) if headers else None
    if sent is None and isinstance(timestamp, datetime):
        stamp = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)
        sent = decode_sent(stamp.timestamp() * 1000)
    return sent


def trace_of(headers: Mapping[str, Any] | None) -> TraceContext | None:
    """The W3C trace context in a message's headers; None when absent or malformed."""
    return read_trace(headers) if headers else None


def delivery_count_of(
    headers: Mapping[str, Any] | None, redelivered: bool, *, quorum: bool
) -> tuple[int, bool]:
    """How many times this message has now been delivered, and whether it must be recounted.

    Quorum queues count for us (``x-delivery-count``: returns to the queue so far); on any
    other queue that header was written by whoever published the message, and is ignored:
    a caller must not be able to forge a count. Classic queues only flag a redelivery: such a
    message is republished with our count raised by one and the original acknowledged, so
    the count survives any number of worker deaths.
    """
    counted = headers.get(QUORUM_DELIVERIES) if headers and quorum else None
    if isinstance(counted, int) and not isinstance(counted, bool) and counted >= 0:
        return min(counted, COUNT_LIMIT) + 1, False
    ours = headers.get(DELIVERIES) if headers else None
    count = ours if isinstance(ours, int) and not isinstance(ours, bool) and ours > 0 else 1
    count = min(count, COUNT_LIMIT)
    if redelivered:
        return count + 1, True
    return count, False


def is_direct_reply_to(reply_to: str) -> bool:
    """Whether `reply_to` is a direct reply-to address (the broker's rewrite of it)."""
    return reply_to.startswith(DIRECT_REPLY_TO + ".") and len(reply_to) > len(DIRECT_REPLY_TO) + 1


def reply_to_refusal(reply_to: str, queue: str) -> str | None:
    """Why a reply must not go to `reply_to`, as far as its name tells; None when the name may
    be a caller's reply queue (the broker is asked whether it is: `ReplyAddresses`).

    Replies go to direct reply-to or to a caller's own reply queue, never to a work queue
    or a dead-letter queue: a reply published there would be a fake request or a fake
    dead letter, planted by whoever wrote `reply_to`.
    """
    shown = ascii(reply_to[:80])
    if reply_to == queue:
        return f"reply_to {shown} is the request queue itself"
    if reply_to.endswith(DEAD_SUFFIX):
        return f"reply_to {shown} is a dead-letter queue"
    if reply_to.endswith(ALIVE_SUFFIX):
        return f"reply_to {shown} is a heartbeat queue"
    if reply_to.startswith("amq.") and not reply_to.startswith(SERVER_NAMED):
        # Only the broker names queues amq.*: nothing else of that name can be a reply queue.
        return f"reply_to {shown} is neither direct reply-to nor a reply queue"
    if not reply_to.isprintable():
        return f"reply_to {shown} holds unprintable characters"
    return None


def republishable(value: Any) -> Any:
    """A header value as pamqp decoded it, in a form pamqp encodes again.

    pamqp reads a long string that is not UTF-8 as bytes, and can't encode bytes: they
    become a byte array (field type ``x``), the same bytes. Tables and arrays are walked.
    """
    if isinstance(value, dict):
        return {key: republishable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [republishable(item) for item in value]
    if isinstance(value, bytes):
        return bytearray(value)
    return value


def expiration_for(deadline: float, now: float) -> str:
    """The per-message TTL (milliseconds, as AMQP wants it) that ends at `deadline`."""
    return str(max(1, math.ceil((deadline - now) * 1000)))
