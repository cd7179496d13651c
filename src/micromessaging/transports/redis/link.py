"""A dedicated Redis connection for a loop on the hot path, without per-command overhead.

redis-py's client wraps every command in pooling, retries, observability hooks and a timeout
task. The few loops that carry every message (pushing requests, reading replies, taking and
settling messages) each send one command at a time, so each owns one raw connection made by
redis-py (so TLS, AUTH, ACL user and database work as configured) and talks to it directly:
one write, one read, a cheap `asyncio.timeout` around both. A broken link is dropped and
made again on the next command; the loop that owns it decides how long to back off.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from redis.exceptions import AskError, NoScriptError, ResponseError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError

from . import compat
from .connection import LINK_ERRORS

DEFAULT_COMMAND_TIMEOUT = 5.0


def pack(args: tuple[Any, ...]) -> list[bytes]:
    """One command in RESP (bytes, str and int arguments), without copying the large ones."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is not bytes:
            arg = arg.encode() if type(arg) is str else str(arg).encode()
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return parts


class Script:
    """A Lua script run by its SHA1, loaded on the first NOSCRIPT (a new or restarted Redis)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class Link:
    """One connection, one command at a time; reconnects lazily after a failure."""

    def __init__(self, pool: aioredis.ConnectionPool, *, block: float = 0.0) -> None:
        self._pool = pool
        kwargs = pool.connection_kwargs
        self._timeout = (kwargs.get("socket_timeout") or DEFAULT_COMMAND_TIMEOUT) + block
        self._connection: Any = None

    async def _connect(self) -> Any:
        connection = compat.new_connection(self._pool)
        # Our asyncio.timeout bounds each exchange; redis-py's own would add a task per write.
        connection.socket_timeout = None
        try:
            async with asyncio.timeout(self._timeout):
                await connection.connect()
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        self._connection = connection
        return connection

    async def command(self, *args: Any) -> Any:
        """Send one command and return its raw reply; `ResponseError` for an error reply."""
        connection = self._connection or await self._connect()
        try:
            async with asyncio.timeout(self._timeout):
                await connection.send_packed_command(pack(args), False)
                return await connection.read_response()
        except ResponseError:
            raise  # the command failed, the connection is fine
        except BaseException:
            # A timeout, a broken socket or a cancellation mid-exchange: the reply may still
            # come, so this connection can't be trusted with the next command.
            self.drop()
            raise

    async def pipeline(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send several commands in one write; their replies, error replies included."""
        connection = self._connection or await self._connect()
        replies: list[Any] = []
        try:
            async with asyncio.timeout(self._timeout):
                packed = [part for command in commands for part in pack(command)]
                await connection.send_packed_command(packed, False)
                for _ in commands:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
        except BaseException:
            self.drop()
            raise
        return replies

    async def run(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """Run a Lua script: EVALSHA, and EVAL when Redis doesn't know it yet."""
        try:
            return await self.command("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            pass
        return await self.command("EVAL", script.source, len(keys), *keys, *args)

    def drop(self) -> None:
        """Close the connection; the next command makes a new one."""
        connection, self._connection = self._connection, None
        if connection is not None:
            compat.drop_now(connection)  # synchronous: safe even while being cancelled

    async def aclose(self) -> None:
        """Close the connection."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect(nowait=True)


def command_key(args: tuple[Any, ...]) -> Any:
    """The key that routes one of our commands on a Redis Cluster (None: any node will do).

    Ours only: the keys of BLMPOP are "movable", which redis-py would ask a node to find
    (COMMAND GETKEYS) on every call.
    """
    name = str(args[0]).upper()
    if name in ("EVAL", "EVALSHA", "BLMPOP"):
        return args[3] if len(args) > 3 and int(args[2]) > 0 else None
    return args[1] if len(args) > 1 else None


class ClusterLink(Link):
    """A `Link` on a Redis Cluster: each command goes to the master of its key's slot.

    The hot path is a `Link` per master (raw connections, as on one Redis), found from
    redis-py's cluster client's map of slots. What that path can't do goes through the
    cluster client itself, which follows MOVED and ASK and learns the new layout after a
    failover: a redirection, a command without a key, a pipeline over several masters, and
    every command after a broken link until one succeeds (the map may be stale). The
    cluster client is the transport's, shared by its links; the transport closes it.
    """

    def __init__(
        self,
        cluster: aiocluster.RedisCluster,
        pool_for: Callable[[str, int], aioredis.ConnectionPool],
        *,
        block: float = 0.0,
    ) -> None:
        self._cluster = cluster
        self._pool_for = pool_for
        self._block = block
        self._links: dict[str, Link] = {}
        self._stale = False

    def _master(self, key: Any) -> aiocluster.ClusterNode:
        node = self._cluster.get_node_from_key(key)
        if node is None:
            raise SlotNotCoveredError(f"no master serves the slot of {key!r}")
        return node

    def _link(self, key: Any) -> Link:
        node = self._master(key)
        link = self._links.get(node.name)
        if link is None:
            link = Link(self._pool_for(node.host, int(node.port)), block=self._block)
            self._links[node.name] = link
        return link

    async def command(self, *args: Any) -> Any:
        key = command_key(args)
        try:
            if key is None or self._stale:
                return await self._through_cluster_client(args, key)
            try:
                return await self._link(key).command(*args)
            except AskError:  # MovedError too: the slot is elsewhere (or on its way there)
                return await self._through_cluster_client(args, key)
            except LINK_ERRORS:
                self._stale = True
                raise
        except SlotNotCoveredError as exc:  # its master is gone, no replica promoted yet
            raise RedisConnectionError(str(exc)) from exc

    async def _through_cluster_client(self, args: tuple[Any, ...], key: Any) -> Any:
        if key is None:
            result = await self._cluster.execute_command(*args)
        else:
            result = await self._cluster.execute_command(*args, target_nodes=self._master(key))
        self._stale = False
        return result

    async def pipeline(self, *commands: tuple[Any, ...]) -> list[Any]:
        keys = [command_key(command) for command in commands]
        try:
            masters = {self._master(key).name for key in keys if key is not None}
            if self._stale or None in keys or len(masters) != 1:
                return await self._cluster_pipeline(commands)
            try:
                replies = await self._link(keys[0]).pipeline(*commands)
            except LINK_ERRORS:
                self._stale = True
                raise
            for i, reply in enumerate(replies):
                if isinstance(reply, AskError):  # not run there: run where the slot now is
                    try:
                        replies[i] = await self._through_cluster_client(commands[i], keys[i])
                    except ResponseError as exc:
                        replies[i] = exc
            return replies
        except SlotNotCoveredError as exc:
            raise RedisConnectionError(str(exc)) from exc

    async def _cluster_pipeline(self, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
        async with self._cluster.pipeline() as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies = list(await pipe.execute(raise_on_error=False))
        self._stale = False
        return replies

    def drop(self) -> None:
        for link in self._links.values():
            link.drop()

    async def aclose(self) -> None:
        """Close the links to every master (not the cluster client: the transport's)."""
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.aclose()
