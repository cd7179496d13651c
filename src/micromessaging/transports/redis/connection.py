"""Connections for the Redis transport: URL options, clients, error conversion, batching.

redis:// and rediss:// URLs go to redis-py's ``from_url`` (database number, password, ACL
user, ``ssl_cert_reqs=none`` for the self-signed certificates of hosted Redis, and its other
query options). Our own query options are taken out first:

- ``wire=seed``: the client speaks the seed's protocol (bare request, BRPOP on its id).
- ``heartbeat=SECONDS``: a worker's heartbeat TTL; a killed worker's messages are back in
  the queue at most 1.5 x this after its death (default 10).
- ``worker_window=SECONDS``: a client's no-worker rule (`_shared.worker_window`; default 30,
  off with ``wire=seed``, whose Ruby workers never say they are alive).
- ``shards=N``: one queue spread over N lists (`wire.shard_queue`), in N slots of a Redis
  Cluster: clients push to them in turn, a worker takes from all of them (`shards`).

redis+cluster:// and rediss+cluster:// URLs name a Redis Cluster by one or more of its nodes,
``redis+cluster://[user:password@]host:port,host:port[/0][?options]``: they go to redis-py's
cluster client (`cluster_client`, `sync_cluster_client`), which finds the other nodes and
follows MOVED, ASK and failovers. docs/wire-redis.md says how the keys share hash slots.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..._exceptions import ConfigurationError, TransportError
from ..._settings import mask_password
from .._shared import UrlOptions, worker_window
from . import compat

logger = logging.getLogger("micromessaging.transport.redis")

T = TypeVar("T")
P = TypeVar("P", aioredis.ConnectionPool, redis.ConnectionPool)
C = TypeVar("C", aiocluster.RedisCluster, redis.cluster.RedisCluster)

DEFAULT_HEARTBEAT = 10.0
DEFAULT_SOCKET_TIMEOUT = 5.0
"""Seconds a command (beyond its own blocking time) or a connect may take, unless the URL
says otherwise (``socket_timeout``, ``socket_connect_timeout``)."""
BLOCK_SECONDS = 1
"""How long one blocking pop waits in Redis, so that loops notice a stop or a lost link."""
REPLY_BLOCK_SECONDS = 2

OUR_OPTIONS = frozenset({"wire", "heartbeat", "worker_window", "shards"})
MAX_SHARDS = 256
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,  # redis-py's cluster client raises these outside RedisError
    OSError,
    TimeoutError,
)
LINK_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    TimeoutError,
)
"""The errors of a broken link, as opposed to a command Redis refused."""
REFUSALS_FOR_NOW: tuple[type[BaseException], ...] = (
    ReadOnlyError,  # a replica, during a failover (or REPLICAOF)
    BusyLoadingError,  # loading its data after a restart
    MasterDownError,
    OutOfMemoryError,  # maxmemory reached with noeviction: replies expire, memory frees
    TryAgainError,
    ClusterDownError,
    SlotNotCoveredError,  # a Redis Cluster between a master's death and its replica's promotion
)
_TRY_AGAIN_CODES = frozenset({"BUSY", "NOREPLICAS", "MISCONF"})
_MIGRATING = "Script attempted to access a non local key"
"""What a Redis Cluster answers a script whose slot is being migrated (some of its keys have
gone to the new owner): once the migration is done the script runs there."""


def is_transient(exc: BaseException) -> bool:
    """Whether a Redis error means "try again": a broken link, or a refusal for the moment."""
    if isinstance(exc, LINK_ERRORS + REFUSALS_FOR_NOW):
        return True
    if not isinstance(exc, ResponseError):
        return False
    return str(exc).split(" ", 1)[0] in _TRY_AGAIN_CODES or str(exc).startswith(_MIGRATING)


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """A broker URL taken apart: what redis-py gets, and our own options."""

    url: str
    """The URL without our options, for redis-py."""
    display: str
    """The URL with its password masked, for logs and errors."""
    wire: str = "envelope"
    heartbeat: float = DEFAULT_HEARTBEAT
    nodes: tuple[tuple[str, int], ...] = ()
    """The nodes a redis+cluster:// URL names; empty for one Redis."""
    shards: int = 1
    """How many lists one queue is spread over (``?shards=N``)."""
    worker_window: float = 0.0
    """Seconds: the no-worker rule of clients (`_shared.worker_window`; 0: off)."""

    @property
    def cluster(self) -> bool:
        """Whether the URL names a Redis Cluster."""
        return bool(self.nodes)

    @classmethod
    def from_url(cls, url: str) -> RedisSettings:
        """Read our options from `url`'s query; `ConfigurationError` when one is wrong."""
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", *CLUSTER_SCHEMES):
            raise ConfigurationError(
                f"not a redis://, rediss:// or redis+cluster:// URL: {mask_password(url)}"
            )
        options, clean = UrlOptions.split(url, OUR_OPTIONS, what="Redis")
        wire = options.choice("wire", "envelope", ("envelope", "seed"))
        heartbeat = options.seconds("heartbeat", DEFAULT_HEARTBEAT, minimum=0.3, maximum=3600)
        shards = options.count("shards", 1, minimum=1)
        if shards > MAX_SHARDS:
            raise ConfigurationError(f"Redis URL option shards={shards} is above {MAX_SHARDS}")
        nodes: tuple[tuple[str, int], ...] = ()
        if scheme in CLUSTER_SCHEMES:
            clean, nodes = cluster_nodes(clean)
        # The seed's workers never say they are alive: a seed-wire client waits, as the
        # seed's own does, unless the URL asks for the rule.
        window = worker_window(options) if wire != "seed" or "worker_window" in options else 0.0
        return cls(clean, mask_password(clean), wire, heartbeat, nodes, shards, window)

    def configure(
        self,
        pool_class: type[P],
        name: str,
        *,
        retries: int = 2,
        block: float = 0.0,
        read_timeout: bool = True,
        **extra: Any,
    ) -> P:
        """A redis-py pool (async or blocking, `pool_class`) for this URL: the one way every
        client and worker of ours gets its connections, so that they agree on every option.

        Its connections call themselves `name`. `block`: seconds a blocking command may
        wait in Redis, added to the read timeout; `read_timeout=False` for connections
        whose reads the caller bounds itself.
        """
        try:
            pool = pool_class.from_url(
                self.url, client_name=name, retry=compat.retry(pool_class, retries), **extra
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"bad Redis URL {self.display}: {exc}") from exc
        compat.read_small(pool)
        kwargs = pool.connection_kwargs
        # redis-py waits for ever by default: a Redis that stops answering would hang us.
        for option in ("socket_timeout", "socket_connect_timeout"):
            if kwargs.get(option) is None:
                kwargs[option] = DEFAULT_SOCKET_TIMEOUT
        if not read_timeout:
            kwargs["socket_timeout"] = None
        elif block:
            kwargs["socket_timeout"] += block
        return pool

    def pool(self, name: str, *, retries: int = 2) -> aioredis.ConnectionPool:
        """An async connection pool for this URL (see `configure`)."""
        return self.configure(aioredis.ConnectionPool, name, retries=retries)

    def client(self, pool: aioredis.ConnectionPool) -> aioredis.Redis:
        """A redis-py client over `pool`, for commands off the hot path."""
        return aioredis.Redis(connection_pool=pool)

    def node_pool(self, host: str, port: int, name: str) -> aioredis.ConnectionPool:
        """An async pool (see `pool`) for one node of a Redis Cluster, with this URL's options."""
        parts = urlsplit(self.url)
        userinfo, _, _ = parts.netloc.rpartition("@")
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        netloc = f"{userinfo}@{address}" if userinfo else address
        return replace(self, url=urlunsplit(parts._replace(netloc=netloc))).pool(name)

    def cluster_client(self, name: str, *, block: float = 0.0) -> aiocluster.RedisCluster:
        """redis-py's async cluster client for a redis+cluster:// URL (see `configure`:
        the same timeouts; `block` is the longest a blocking command of ours waits)."""
        return self._cluster(aiocluster.RedisCluster, aioredis.ConnectionPool, name, block)

    def sync_cluster_client(self, name: str, *, block: float = 0.0) -> redis.cluster.RedisCluster:
        """redis-py's blocking cluster client for a redis+cluster:// URL."""
        return self._cluster(redis.cluster.RedisCluster, redis.ConnectionPool, name, block)

    def _cluster(self, client_class: type[C], pool_class: type[Any], name: str, block: float) -> C:
        if not self.cluster:
            raise ConfigurationError(f"not a redis+cluster:// URL: {self.display}")
        try:
            client: C = compat.cluster_client(
                client_class,
                self.url,
                self.nodes,
                client_name=name,
                retry=compat.retry(pool_class, 3),
                default_timeout=DEFAULT_SOCKET_TIMEOUT,
                block=block,
            )
            return client
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"bad Redis Cluster URL {self.display}: {exc}") from exc
        # A RedisClusterException here (the blocking client connects at once) is a cluster
        # out of reach: the caller's to report, as for any connection error.


def cluster_nodes(url: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    """A redis+cluster:// URL as a redis:// URL of its first node, and every node it names."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for address in hosts.split(","):
        host, colon, port = address.strip().rpartition(":")
        if not colon:
            host, port = address.strip(), "6379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(
                f"bad Redis Cluster node {address!r} in {mask_password(url)}: host:port expected"
            )
        nodes.append((host, int(port)))
    if parts.path not in ("", "/", "/0"):
        raise ConfigurationError(
            f"a Redis Cluster has only database 0, not {parts.path[1:]!r}: {mask_password(url)}"
        )
    first = f"{userinfo}@{hosts.split(',')[0]}" if userinfo else hosts.split(",")[0]
    scheme = CLUSTER_SCHEMES[parts.scheme]
    return urlunsplit(parts._replace(scheme=scheme, netloc=first)), tuple(nodes)


def transport_error(what: str, exc: BaseException) -> TransportError:
    """A broker error as ours, naming what failed."""
    return TransportError(f"{what}: {type(exc).__name__}: {exc}")


async def close_client(client: aioredis.Redis | aiocluster.RedisCluster | None) -> None:
    """Close a client and its pool, ignoring a broker that is already gone."""
    if client is None:
        return
    try:
        if isinstance(client, aiocluster.RedisCluster):
            await client.aclose()
        else:
            await client.aclose(close_connection_pool=True)
    except CONNECTION_ERRORS as exc:
        logger.debug("closing a Redis connection: %s", exc)


class Batcher(Generic[T]):
    """Sends items as they come: at once when idle, else all that waited, together, next.

    This coalesces the commands of concurrent callers into one round trip without ever
    delaying a lone caller: there is no timer, only "the previous send is still out". A lone
    caller sends in its own task; what piles up meanwhile goes out from a drain task. Whoever
    is about to wake several senders at once (a batch of replies, of new messages) can
    `hold_for_this_round` so that what they send goes out together.
    """

    def __init__(self, send: Callable[[list[T]], Awaitable[None]]) -> None:
        self._send = send
        self._waiting: list[T] = []
        self._busy = False
        self._held = False
        self._task: asyncio.Task[None] | None = None

    def hold_for_this_round(self) -> None:
        """Queue what is sent until the callbacks ready now have run: call it *after*
        scheduling the wake-ups (resolving the futures, creating the tasks), since the hold
        ends in a callback of its own, run after every callback already scheduled. Called
        before them it ends before they run, and the first of them sends alone."""
        if not self._held:
            self._held = True
            asyncio.get_running_loop().call_soon(self._unhold)

    def _unhold(self) -> None:
        self._held = False
        if not self._busy and self._waiting:
            self._busy = True
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def send(self, item: T) -> None:
        """Send `item` now when nothing is in flight, else queue it for the next send.

        Either way the outcome reaches the caller through `item` itself (its future).
        """
        if self._busy or self._held:
            self._waiting.append(item)
            return
        self._busy = True
        try:
            await self._send([item])
        finally:
            self._hand_on()

    def _hand_on(self) -> None:
        if self._waiting and not self._held:
            self._task = asyncio.get_running_loop().create_task(self._drain())
        else:
            self._busy = False

    async def _drain(self) -> None:
        try:
            while self._waiting and not self._held:  # held: the end of the hold sends it
                batch, self._waiting = self._waiting, []
                try:
                    await self._send(batch)
                except Exception:
                    logger.exception("sending a batch of Redis commands failed")
        finally:
            self._task = None
            self._busy = False

    async def flush(self) -> None:
        """Wait until everything submitted so far has been sent."""
        while self._busy or self._waiting:
            if self._task is not None:
                await asyncio.shield(self._task)
            else:
                await asyncio.sleep(0.001)  # a sender's own send, or a hold, ends soon

    async def aclose(self) -> None:
        """Stop sending; what still waits is dropped (its senders hold its futures)."""
        task, self._task = self._task, None
        self._waiting = []
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._busy = False
