"""The one place that touches redis-py beyond its documented API; checked against 5.3 - 8.1.

The hot-path links (`link.Link`, `link.BlockingLink`) let redis-py make and set up their
connections (TLS, AUTH, ACL user, database), then take over the socket or the asyncio
transport and talk to it with hiredis directly, which redis-py's public client does not
offer; everything they need of its internals is here, so that a redis-py upgrade is
checked in one module (pyproject.toml bounds the version to what was checked).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from redis._parsers.base import BaseParser
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode
from redis.connection import parse_url
from redis.retry import Retry

from .._shared import keep_reads_small

AnyPool = aioredis.ConnectionPool | redis.ConnectionPool


def retry(pool_class: type[AnyPool], retries: int) -> Retry | AsyncRetry:
    """redis-py's retry policy for a pool of `pool_class`: a few quick, jittered attempts."""
    backoff = ExponentialWithJitterBackoff(base=0.02, cap=0.25)
    if issubclass(pool_class, aioredis.ConnectionPool):
        return AsyncRetry(backoff, retries)
    return Retry(backoff, retries)


def reading_small(connection_class: type[Any]) -> type[Any]:
    """`connection_class` (an async redis-py connection class) whose connections read at
    most `READ_SIZE` at once on asyncio's own loop (`keep_reads_small`); made once a class."""
    made = _reading_small.get(connection_class)
    if made is None:

        async def _connect(self: Any) -> None:
            await connection_class._connect(self)
            if self._writer is not None:
                keep_reads_small(self._writer.transport)

        made = type(connection_class.__name__, (connection_class,), {"_connect": _connect})
        _reading_small[connection_class] = made
    return made


_reading_small: dict[type[Any], type[Any]] = {}


def read_small(pool: AnyPool) -> None:
    """Have the connections `pool` makes from now on read as `reading_small` says."""
    if isinstance(pool, aioredis.ConnectionPool):
        pool.connection_class = reading_small(pool.connection_class)


def new_connection(pool: aioredis.ConnectionPool) -> Any:
    """A connection of `pool`'s kind (TLS, AUTH, ACL user, database as configured), not pooled."""
    return pool.make_connection()  # type: ignore[no-untyped-call]


def take_transport(connection: Any) -> tuple[asyncio.Transport, bytes, object]:
    """Take over the asyncio transport of a connected async connection: the transport, what
    its stream had read but not parsed, and its stream writer, to be kept as long as the
    transport is used (a stream writer closes its transport when it is collected). The
    connection itself is left without them: its close and `__del__` do nothing."""
    reader, writer = connection._reader, connection._writer
    connection._reader = connection._writer = None  # its __del__ and close leave it alone
    unread = bytes(reader._buffer)
    reader._buffer.clear()
    return writer.transport, unread, writer


def connected_socket(pool: redis.ConnectionPool) -> socket.socket:
    """A new connection of `pool`'s kind (TLS, AUTH, ACL user, database as configured),
    handshake done, as its bare socket: the redis-py connection is left without it."""
    connection: Any = pool.make_connection()
    try:
        connection.connect()
        sock: socket.socket = connection._sock
        connection._sock = None
    finally:
        connection.disconnect()  # resets its parser; the socket, if taken, is not its own
    return sock


parse_error: Callable[[str], Exception] = BaseParser.parse_error
"""An error reply as redis-py's exception for it (NoScriptError, ReadOnlyError, MovedError...)."""


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
