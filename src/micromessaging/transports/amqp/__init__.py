"""amqp:// and amqps:// - RabbitMQ, speaking the seed's wire format (aio-pika underneath).

    amqp://user:password@host:5672/vhost                      classic, non-durable queue
    amqps://user:password@host/vhost?queue_type=quorum        quorum queue (durable)
    amqp://host/?durable=true&heartbeat=30                    classic durable queue

Requests go through the default exchange with routing key = queue name, ``reply_to`` and
``correlation_id``; replies go to ``reply_to`` with the same ``correlation_id``. That is all
the seed's Ruby programs send and expect, so they interoperate with ours both ways. Between
our own ends, a request also carries its deadline (``mm-deadline`` header and a per-message
``expiration``), and replies come back through direct reply-to. docs/wire-amqp.md has the
details: every property and header, queue arguments, delivery counting, dead letters.

The default queue is classic and non-durable, as the seed's programs declare it, so that
either side may declare it first. Durable or quorum queues keep queued requests over a
broker restart, but the seed's client can't declare them (PRECONDITION_FAILED).
"""

from __future__ import annotations

from ..base import WorkerOptions
from .admin import AmqpAdmin, admin_transport
from .client import AmqpClientTransport
from .worker import AmqpDelivery, AmqpWorkerTransport


def client_transport(url: str) -> AmqpClientTransport:
    """A client of the RabbitMQ broker `url` names."""
    return AmqpClientTransport(url)


def worker_transport(url: str, options: WorkerOptions) -> AmqpWorkerTransport:
    """A worker of `options.queue` on the RabbitMQ broker `url` names."""
    return AmqpWorkerTransport(url, options)


__all__ = [
    "AmqpAdmin",
    "AmqpClientTransport",
    "AmqpDelivery",
    "AmqpWorkerTransport",
    "admin_transport",
    "client_transport",
    "worker_transport",
]
