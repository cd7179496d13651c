"""nats:// and tls:// - JSON-RPC over NATS request/reply, or durably over JetStream.

``nats://host:4222`` (core NATS): a request is published on the subject named after the
queue, with a reply subject under the client's one wildcard inbox; workers subscribe in a
queue group named after the queue, so the server gives each request to one of them. Any
NATS client can call our workers with a plain ``request("calc", body)``. Core NATS keeps
nothing: a worker killed mid-call loses that request, and its caller gets `CallTimeout`.

``nats://host:4222?jetstream=1``: requests are stored in a work-queue stream per queue and
acknowledged by the worker after it has published the reply; a request whose worker died
is delivered again after ``ack_wait`` seconds. The wire format is in docs/wire-nats.md.
"""

from __future__ import annotations

from ..base import WorkerOptions
from .admin import NatsAdmin, admin_transport
from .client import NatsClientTransport
from .jetstream import NatsJetStreamWorkerTransport
from .wire import parse_url
from .worker import NatsWorkerBase, NatsWorkerTransport


def client_transport(url: str) -> NatsClientTransport:
    """A client of the NATS server(s) `url` names."""
    return NatsClientTransport(url)


def worker_transport(url: str, options: WorkerOptions) -> NatsWorkerBase:
    """A worker of the NATS server(s) `url` names: JetStream when the URL asks for it."""
    if parse_url(url).jetstream:
        return NatsJetStreamWorkerTransport(url, options)
    return NatsWorkerTransport(url, options)


__all__ = [
    "NatsAdmin",
    "NatsClientTransport",
    "NatsJetStreamWorkerTransport",
    "NatsWorkerTransport",
    "admin_transport",
    "client_transport",
    "worker_transport",
]
