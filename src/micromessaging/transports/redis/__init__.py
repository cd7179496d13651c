"""redis://, rediss://, redis+cluster:// - JSON-RPC over Redis lists, compatible with the seed.

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
``redis+cluster://host:port,host:port`` (``rediss+cluster://`` with TLS) is a Redis Cluster,
and ``?shards=N`` spreads one queue over N lists (N slots): docs/scaling.md.
"""

from __future__ import annotations

from ..._exceptions import ConfigurationError
from ..base import ClientTransport, SyncClientTransport, WorkerOptions
from .admin import RedisAdmin, admin_transport
from .client import RedisClientTransport, RedisSeedClientTransport
from .connection import RedisSettings
from .shards import ShardedWorkerTransport
from .sync_client import RedisSeedSyncClientTransport, RedisSyncClientTransport
from .worker import RedisDelivery, RedisWorkerTransport


def _settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_url(url)
    if settings.cluster and settings.wire == "seed":
        raise ConfigurationError("wire=seed is for one Redis: the seed's programs know no cluster")
    return settings


def client_transport(url: str) -> ClientTransport:
    """A client for a redis:// or rediss:// URL (the seed's protocol with ``?wire=seed``)."""
    settings = _settings(url)
    if settings.wire == "seed":
        return RedisSeedClientTransport(settings)
    return RedisClientTransport(settings)


def sync_client_transport(url: str) -> SyncClientTransport:
    """A blocking client that does its I/O on the calling thread (for `Client`)."""
    settings = _settings(url)
    if settings.wire == "seed":
        return RedisSeedSyncClientTransport(settings)
    return RedisSyncClientTransport(settings)


def worker_transport(
    url: str, options: WorkerOptions
) -> RedisWorkerTransport | ShardedWorkerTransport:
    """A worker taking messages from the list named `options.queue` (and, with
    ``?shards=N``, from every shard of it)."""
    settings = RedisSettings.from_url(url)
    if settings.shards > 1:
        return ShardedWorkerTransport(settings, options)
    return RedisWorkerTransport(settings, options)


__all__ = [
    "RedisAdmin",
    "RedisClientTransport",
    "RedisDelivery",
    "RedisSeedClientTransport",
    "RedisSeedSyncClientTransport",
    "RedisSettings",
    "RedisSyncClientTransport",
    "RedisWorkerTransport",
    "ShardedWorkerTransport",
    "admin_transport",
    "client_transport",
    "sync_client_transport",
    "worker_transport",
]
