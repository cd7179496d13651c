"""redis:// and rediss:// - JSON-RPC over Redis lists, compatible with the seed's programs.

Requests are LPUSHed onto the list named after the queue and taken from its other end.
A worker answers both wire forms on the same queue: the seed's bare JSON-RPC (the reply is
RPUSHed onto the list named by the request's id, which then expires) and our envelope
(a one-line JSON header naming the client's reply list, a correlation id, a deadline and
a delivery count). docs/wire-redis.md describes both, field by field.

URL options besides redis-py's own: ``?wire=seed`` makes a client speak the seed's protocol;
``?heartbeat=SECONDS`` sets a worker's heartbeat TTL, which bounds how long a killed
worker's requests wait before a live worker takes them (1.5 x TTL; default 10 s);
``?worker_window=SECONDS`` is the no-worker rule of clients (default 30, 0 with
``wire=seed``: a call to a queue no worker was seen alive on fails with `NoWorkers`).
"""

from __future__ import annotations

from ..base import ClientTransport, SyncClientTransport, WorkerOptions
from .admin import RedisAdmin, admin_transport
from .client import RedisClientTransport, RedisSeedClientTransport
from .connection import RedisSettings
from .sync_client import RedisSeedSyncClientTransport, RedisSyncClientTransport
from .worker import RedisDelivery, RedisWorkerTransport


def client_transport(url: str) -> ClientTransport:
    """A client for a redis:// or rediss:// URL (the seed's protocol with ``?wire=seed``)."""
    settings = RedisSettings.from_url(url)
    if settings.wire == "seed":
        return RedisSeedClientTransport(settings)
    return RedisClientTransport(settings)


def sync_client_transport(url: str) -> SyncClientTransport:
    """A blocking client that does its I/O on the calling thread (for `Client`)."""
    settings = RedisSettings.from_url(url)
    if settings.wire == "seed":
        return RedisSeedSyncClientTransport(settings)
    return RedisSyncClientTransport(settings)


def worker_transport(url: str, options: WorkerOptions) -> RedisWorkerTransport:
    """A worker taking messages from the list named `options.queue`."""
    return RedisWorkerTransport(RedisSettings.from_url(url), options)


__all__ = [
    "RedisAdmin",
    "RedisClientTransport",
    "RedisDelivery",
    "RedisSeedClientTransport",
    "RedisSeedSyncClientTransport",
    "RedisSettings",
    "RedisSyncClientTransport",
    "RedisWorkerTransport",
    "admin_transport",
    "client_transport",
    "sync_client_transport",
    "worker_transport",
]
