"""The one place that touches redis-py beyond its documented API; checked against 5.0 - 8.1.

The hot-path `Link` and the blocking client talk to redis-py's connections directly (one
write, one read), which its public client does not offer; everything they need of its
internals is here, so that a redis-py upgrade is checked in one module (pyproject.toml
bounds the version to what was checked).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode
from redis.connection import parse_url
from redis.retry import Retry

AnyPool = aioredis.ConnectionPool | redis.ConnectionPool


def retry(pool_class: type[AnyPool], retries: int) -> Retry | AsyncRetry:
    """redis-py's retry policy for a pool of `pool_class`: a few quick, jittered attempts."""
    backoff = ExponentialWithJitterBackoff(base=0.02, cap=0.25)
    if issubclass(pool_class, aioredis.ConnectionPool):
        return AsyncRetry(backoff, retries)
    return Retry(backoff, retries)


def new_connection(pool: aioredis.ConnectionPool) -> Any:
    """A connection of `pool`'s kind (TLS, AUTH, ACL user, database as configured), not pooled."""
    return pool.make_connection()  # type: ignore[no-untyped-call]


def drop_now(connection: Any) -> None:
    """Close an async connection at once, without awaiting (safe while being cancelled)."""
    connection._close()


def dedicated_connection(client: redis.Redis) -> Any:
    """The one connection of a ``single_connection_client`` (to write pipelined commands)."""
    return client.connection


def send_commands(connection: Any, commands: list[tuple[Any, ...]]) -> None:
    """Write several commands on a blocking connection in one go."""
    connection.send_packed_command(connection.pack_commands(commands))


def execute(client: redis.Redis | redis.client.Pipeline, command: tuple[Any, ...]) -> Any:
    """Run (or, on a pipeline, queue) one command given as a tuple, on a blocking client."""
    return client.execute_command(*command)  # type: ignore[no-untyped-call]


def cluster_client(
    client_class: type[Any],
    url: str,
    nodes: tuple[tuple[str, int], ...],
    *,
    default_timeout: float,
    block: float,
    **kwargs: Any,
) -> Any:
    """redis-py's cluster client (`client_class`, async or blocking) for the nodes of a
    cluster; `url` (a redis:// URL of one of them) gives the options of every connection.
    Like `configure`: timeouts default to `default_timeout`, and reads wait `block` longer.
    """
    options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    if options.pop("connection_class", None) is not None:  # only rediss:// names one
        options["ssl"] = True
    options.setdefault("socket_connect_timeout", default_timeout)
    options["socket_timeout"] = (options.get("socket_timeout") or default_timeout) + block
    node_class = aiocluster.ClusterNode if client_class is aiocluster.RedisCluster else ClusterNode
    startup = [node_class(host, port) for host, port in nodes]
    return client_class(startup_nodes=startup, **{**options, **kwargs})


def execute_at(client: Any, key: str, command: tuple[Any, ...]) -> Any:
    """Run one command on the node of `key`'s slot of a blocking cluster client."""
    return client.execute_command(*command, target_nodes=client.get_node_from_key(key))
