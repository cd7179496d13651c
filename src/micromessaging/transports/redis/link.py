"""A dedicated Redis connection for a loop on the hot path, without per-command overhead.

redis-py's client wraps every command in pooling, retries, observability hooks and a timeout
task, and parses each reply through several layers of Python. The few loops that carry every
message (pushing requests, reading replies, taking and settling messages) each send one
command (or one pipeline) at a time, so each owns one connection made and set up by redis-py
(so TLS, AUTH, ACL user and database work as configured) and then talks to it itself: an
asyncio protocol (`Link`) or a blocking socket (`BlockingLink`), with hiredis parsing the
replies. Written here because redis-py offers no public API for a bare connection. A broken
link is dropped and made again on the next command; the loop that owns it decides how long
to back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from redis.exceptions import (
    AskError,
    InvalidResponse,
    NoScriptError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from .._shared import keep_reads_small
from . import compat
from .connection import LINK_ERRORS

DEFAULT_COMMAND_TIMEOUT = 5.0
STALL = 0.5
"""How late a timer may fire before we take it that the event loop was held up."""


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


class _Pending:
    """A command (or a pipeline of them) sent on a link, waiting for its replies."""

    __slots__ = ("deadline", "future", "left", "replies")

    def __init__(self, future: asyncio.Future[Any], count: int, deadline: float) -> None:
        self.future = future
        self.left = count
        self.replies: list[Any] | None = [] if count > 1 else None
        self.deadline = deadline


class _LinkProtocol(asyncio.Protocol):
    """Reads the replies of one connection with hiredis and hands each to its command, in
    the order the commands were sent; one watchdog timer bounds the oldest one waiting."""

    def __init__(
        self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, owner: object
    ) -> None:
        self.transport = transport
        keep_reads_small(transport)
        self.owner = owner
        """What must live as long as the transport is used (`compat.take_transport`)."""
        self.loop = loop
        self.reader = hiredis.Reader(replyError=compat.parse_error)
        self.pending: deque[_Pending] = deque()
        self.broken: BaseException | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_at = 0.0
        self.paused: asyncio.Future[None] | None = None

    # --- sending -----------------------------------------------------------------------------

    def send(self, data: bytes, count: int, timeout: float) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        pending = _Pending(future, count, self.loop.time() + timeout)
        self.pending.append(pending)
        self.transport.write(data)
        if self._watchdog is None:
            self._watch(pending.deadline)
        return future

    async def drained(self) -> None:
        """Return once the transport takes more (after a large write)."""
        while self.paused is not None:
            await asyncio.shield(self.paused)

    def pause_writing(self) -> None:
        if self.paused is None:
            self.paused = self.loop.create_future()

    def resume_writing(self) -> None:
        paused, self.paused = self.paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    # --- the watchdog ------------------------------------------------------------------------

    def _watch(self, when: float) -> None:
        self._watch_at = when
        self._watchdog = self.loop.call_at(when, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if not self.pending:
            return
        now = self.loop.time()
        oldest = self.pending[0]
        if now < oldest.deadline:
            self._watch(oldest.deadline)
        elif now - self._watch_at > STALL:
            # This timer fired late: the event loop was held up (a blocking call, a paused
            # `asyncio.Runner`), and the reply may be waiting, unread. Give it a moment.
            oldest.deadline = now + STALL
            self._watch(oldest.deadline)
        else:
            self.fail(TimeoutError("Redis did not answer in time"))

    # --- receiving ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        reader, pending = self.reader, self.pending
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(InvalidResponse(f"unreadable reply from Redis: {exc}"))
                return
            if reply is False:
                return
            if not pending:
                self.fail(InvalidResponse("a reply from Redis that no command asked for"))
                return
            waiting = pending[0]
            if waiting.replies is None:
                pending.popleft()
                if not waiting.future.done():
                    waiting.future.set_result(reply)
            else:
                waiting.replies.append(reply)
                waiting.left -= 1
                if waiting.left == 0:
                    pending.popleft()
                    if not waiting.future.done():
                        waiting.future.set_result(waiting.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        why = f": {exc}" if exc is not None else ""
        self.fail(RedisConnectionError(f"Connection closed by server{why}"))
        self.resume_writing()

    def fail(self, exc: BaseException) -> None:
        """Fail every command waiting and close the connection: it can't be trusted now."""
        if self.broken is None:
            self.broken = exc
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pending, self.pending = self.pending, deque()
        for waiting in pending:
            if not waiting.future.done():
                waiting.future.set_exception(exc)
        self.transport.close()


class Link:
    """One connection, commands sent one after another; reconnects lazily after a failure.

    redis-py makes the connection (TLS, AUTH, ACL user, database as configured) and does
    its handshake; then our protocol takes over its transport (`compat.take_transport`),
    and hiredis parses what comes back. A command costs one write, one future and what
    hiredis does; its timeout is one timer per link, not a task or a context per command.
    """

    def __init__(self, pool: aioredis.ConnectionPool, *, block: float = 0.0) -> None:
        self._pool = pool
        kwargs = pool.connection_kwargs
        self._timeout = (kwargs.get("socket_timeout") or DEFAULT_COMMAND_TIMEOUT) + block
        self._protocol: _LinkProtocol | None = None

    async def _connect(self) -> _LinkProtocol:
        connection = compat.new_connection(self._pool)
        try:
            async with asyncio.timeout(self._timeout):
                await connection.connect()
            transport, unread, owner = compat.take_transport(connection)
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        protocol = _LinkProtocol(transport, asyncio.get_running_loop(), owner)
        transport.set_protocol(protocol)
        if unread:
            protocol.data_received(unread)
        self._protocol = protocol
        return protocol

    async def _exchange(self, data: bytes, count: int) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.broken is not None:
            protocol = await self._connect()
        future = protocol.send(data, count, self._timeout)
        try:
            if protocol.paused is not None:
                await protocol.drained()
            return await future
        except ResponseError:
            raise  # the command failed, the connection is fine
        except BaseException:
            # A timeout, a broken socket or a cancellation mid-exchange: the reply may still
            # come (a blocking command holds the connection until it does): start afresh.
            if self._protocol is protocol:
                self.drop()
            raise

    async def command(self, *args: Any) -> Any:
        """Send one command and return its raw reply; `ResponseError` for an error reply."""
        reply = await self._exchange(b"".join(pack(args)), 1)
        if isinstance(reply, RedisError):  # an error reply
            raise reply
        return reply

    async def pipeline(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send several commands in one write; their replies, error replies included."""
        packed = b"".join([part for command in commands for part in pack(command)])
        replies: list[Any] = await self._exchange(packed, len(commands))
        if len(commands) == 1:
            return [replies]
        return replies

    async def pipeline_packed(self, data: bytes, count: int) -> list[Any]:
        """`pipeline` of `count` commands packed already (RESP, as `pack` makes them)."""
        if count == 1:
            return [await self._exchange(data, 1)]
        replies: list[Any] = await self._exchange(data, count)
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
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.fail(RedisConnectionError("the link was dropped"))

    async def aclose(self) -> None:
        """Close the connection."""
        self.drop()


class BlockingLink:
    """`Link` for a blocking caller: one connection, used by one thread at a time.

    The blocking client's reader (and a lone caller's push) go through it: redis-py makes
    the connection and does the handshake, then the socket is ours (`compat.take_socket`):
    a command costs one `sendall`, a `recv` and what hiredis does, against redis-py's
    several layers per reply (measured here: a PING round trip in 40 us against 170 us).
    A broken exchange drops the connection; the next command makes a new one.
    """

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._timeout = pool.connection_kwargs.get("socket_timeout") or DEFAULT_COMMAND_TIMEOUT
        self._sock: socket.socket | None = None
        self._reader: hiredis.Reader | None = None

    def connect(self) -> None:
        """Connect now (else the first command does)."""
        if self._sock is None:
            sock = compat.connected_socket(self._pool)
            sock.settimeout(self._timeout)
            self._sock = sock
            self._reader = hiredis.Reader(replyError=compat.parse_error)

    def send(self, commands: list[tuple[Any, ...]]) -> None:
        """Write `commands` in one go; read their replies with `read`."""
        self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(b"".join([part for command in commands for part in pack(command)]))
        except BaseException:
            self.drop()
            raise

    def read(self) -> Any:
        """The next reply (an error reply as its exception, not raised)."""
        reader, sock = self._reader, self._sock
        if reader is None or sock is None:
            raise RedisConnectionError("the link is closed")
        try:
            while True:
                reply = reader.gets()
                if reply is not False:
                    return reply
                data = sock.recv(65536)
                if not data:
                    raise RedisConnectionError("Connection closed by server.")
                reader.feed(data)
        except hiredis.ProtocolError as exc:
            self.drop()
            raise InvalidResponse(f"unreadable reply from Redis: {exc}") from exc
        except BaseException:
            # A timeout, a broken socket, an interruption mid-reply: out of step for good.
            self.drop()
            raise

    def command(self, *args: Any) -> Any:
        """Send one command and return its reply; an error reply is raised."""
        self.send([args])
        reply = self.read()
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def drop(self) -> None:
        """Close the connection; the next command makes a new one."""
        sock, self._sock, self._reader = self._sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
            with contextlib.suppress(OSError):
                sock.close()


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
