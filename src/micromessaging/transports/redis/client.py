"""The caller's end of the Redis transport, in its two wire forms (async; `sync_client` is
the blocking twin, and `calls` the core both share).

`RedisClientTransport` (the default): every request is an envelope naming this client's one
reply list and a correlation id; one reader task drains that list many replies per round
trip (BLMPOP ... COUNT) and hands each to its waiting call. Requests made while a push is
in flight go out together in one push, so 64 concurrent calls use two connections. Under the
no-worker rule (``?worker_window=``) a push is `scripts.PUSH`, which pushes only when a
worker of the queue was seen alive lately (`calls.Pushes`), else the calls get `NoWorkers`.

`RedisSeedClientTransport` (``?wire=seed``): exactly the seed's client, LPUSH of the bare
request then BRPOP on the list its id names, which holds a connection per call in flight;
a blocking pool bounds them (``max_connections``, 64 unless the URL says otherwise).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from functools import partial
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster

from ..._exceptions import CallTimeout, TransportError
from .._shared import Backoff, ReplyRouter, connection_lost
from ..base import ClientTransport, TraceContext
from . import calls, wire
from .connection import (
    CONNECTION_ERRORS,
    LINK_ERRORS,
    REPLY_BLOCK_SECONDS,
    Batcher,
    RedisSettings,
    close_client,
    is_transient,
)
from .link import ClusterLink, Link

logger = logging.getLogger("micromessaging.transport.redis")

# (queue, message, future, whether the future waits for a reply rather than for the push)
_Push = tuple[str, bytes, "asyncio.Future[bytes] | asyncio.Future[None]", bool]


class RedisClientTransport(ClientTransport):
    """Many calls in flight over one pool: envelopes out, one reply list back."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._failures = calls.Failures(settings)
        self.client_id = secrets.token_hex(8)
        self.reply_list = wire.reply_key(self.client_id, cluster=settings.cluster)
        self._prefix = wire.request_prefix(self.reply_list)
        self._router = ReplyRouter()
        self._pusher: Batcher[_Push] = Batcher(self._push)
        self._sweeps = calls.Sweeps()
        self._spreader = calls.Spreader(settings.shards)
        self._pushes = calls.Pushes(settings.worker_window, cluster=settings.cluster)
        self._push_link: Link | None = None
        self._read_link: Link | None = None
        self._cluster: aiocluster.RedisCluster | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._open = False

    async def connect(self) -> None:
        name = calls.client_name(self.client_id)
        if self._settings.cluster:
            self._cluster = self._settings.cluster_client(name, block=REPLY_BLOCK_SECONDS)
            pool_for = partial(self._settings.node_pool, name=name)
            self._push_link = ClusterLink(self._cluster, pool_for)
            self._read_link = ClusterLink(self._cluster, pool_for, block=REPLY_BLOCK_SECONDS)
        else:
            pool = self._settings.pool(name)
            self._push_link = Link(pool)
            self._read_link = Link(pool, block=REPLY_BLOCK_SECONDS)
        try:
            if self._cluster is not None:
                await self._cluster.initialize()  # learns which node holds which slots
            await self._push_link.command("PING")
        except CONNECTION_ERRORS as exc:
            await self._close_connections()
            raise self._failures.unreachable(exc) from exc
        self._open = True
        self._reader_task = asyncio.create_task(self._read_replies())

    async def request(
        self, queue: str, body: bytes, deadline: float, trace: TraceContext | None = None
    ) -> bytes:
        if not self._open:
            raise self._failures.closed()
        correlation_id, future = self._router.expect(deadline)
        message = wire.encode_request_fast(
            self._prefix, correlation_id, deadline, time.time(), body, trace
        )
        try:
            await self._pusher.send((self._spreader.queue(queue), message, future, True))
            return await future
        except BaseException:
            self._router.forget(correlation_id)
            raise

    async def send(
        self, queue: str, body: bytes, deadline: float | None, trace: TraceContext | None = None
    ) -> None:
        if not self._open:
            raise self._failures.closed()
        pushed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        message = calls.notification(body, deadline, time.time(), trace)
        await self._pusher.send((self._spreader.queue(queue), message, pushed, False))
        await pushed

    async def _push(self, batch: list[_Push]) -> None:
        """LPUSH everything that waited, one push per queue, in one round trip (a second
        one, rarely: a script Redis did not know yet, an ACL that refuses scripts)."""
        link = self._push_link
        assert link is not None
        plan = self._pushes.plan((queue, message) for queue, message, _, _ in batch)
        commands = plan.first()
        sweeps = self._sweeps.due(plan.queues, time.time())
        try:
            try:
                if self._cluster is not None:
                    replies = await self._push_through_failover(link, commands, sweeps, batch)
                else:
                    replies = await link.pipeline(*commands, *sweeps)
            except LINK_ERRORS:
                # Most likely a connection Redis closed while idle (a restart, a timeout):
                # try once more on a new one. Should the first push have landed after all,
                # the request runs twice and its second reply is dropped as unknown.
                replies = await link.pipeline(*commands, *sweeps)
            self._sweeps.done(sweeps, replies[len(commands) :])
            following = plan.next(replies[: len(commands)])
            while following:
                following = plan.next(await link.pipeline(*following))
        except CONNECTION_ERRORS as exc:
            error = self._failures.sending(exc)
            for _, _, future, _ in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for queue, _, future, awaits_reply in batch:
            if future.done():
                continue
            outcome = plan.outcomes.get(queue)
            if outcome is not None:
                future.set_exception(self._failures.pushing(outcome))
            elif not awaits_reply:
                future.set_result(None)  # type: ignore[arg-type]

    async def _push_through_failover(
        self, link: Link, commands: list[Any], sweeps: list[Any], batch: list[_Push]
    ) -> list[Any]:
        """On a Redis Cluster, push again while a master is down and its replica not yet
        promoted, as long as a call of the batch still waits (`calls.FAILOVER_PATIENCE` at most).

        Should a push have landed after all, its request runs twice and its second reply is
        dropped as unknown.
        """
        backoff, given_up = Backoff(), time.monotonic() + calls.FAILOVER_PATIENCE
        while True:
            try:
                replies = await link.pipeline(*commands, *sweeps)
                # A transient refusal of a push is retried here; the other errors (a script
                # the master does not know yet, an ACL) are the push plan's to handle.
                failed = [r for r in replies[: len(commands)] if _transient_reply(r)]
                if not failed:
                    return replies
                raise failed[0]
            except CONNECTION_ERRORS as exc:
                waiting = any(not future.done() for _, _, future, _ in batch)
                if not (is_transient(exc) and waiting and self._open):
                    raise
                if time.monotonic() > given_up:
                    raise
                if backoff.failures == 0:
                    logger.warning("pushing to the Redis Cluster failed (%s); retrying", exc)
                await asyncio.sleep(backoff.failed())

    async def _read_replies(self) -> None:
        """Drain the reply list into the waiting calls; on a lost link, fail them and retry."""
        link = self._read_link
        assert link is not None
        command = calls.read_command(self.reply_list, REPLY_BLOCK_SECONDS)
        backoff = Backoff()
        while self._open:
            try:
                got = await link.command(*command)
            except CONNECTION_ERRORS as exc:
                if not self._open:
                    return
                if calls.replies_may_be_lost(exc, cluster=self._cluster is not None):
                    # Replies to calls already sent may be lost with the link (a restarted
                    # Redis forgets the queue too): fail them now, not at their deadlines.
                    self._router.fail_all(connection_lost(self._failures.where, exc))
                # Otherwise Redis refuses for the moment (a failover): the replies wait.
                if backoff.failures == 0:
                    logger.warning("reading replies from Redis failed (%s); reconnecting", exc)
                await asyncio.sleep(backoff.failed())
                continue
            if backoff.succeeded():
                logger.info("reading replies from Redis again")
            if got:
                for correlation_id, reply in calls.replies(got):
                    self._router.resolve(correlation_id, reply)
                if len(got[1]) > 1:
                    # After the wake-ups it just scheduled: the woken callers' next calls
                    # then go out together, where the first would go alone and the rest next.
                    self._pusher.hold_for_this_round()
                # Let the woken callers run (and send their next requests) before this loop
                # asks for more: the next BLMPOP then costs no caller any latency.
                await asyncio.sleep(0)

    async def check(self) -> None:
        link = self._push_link
        if not self._open or link is None:
            raise self._failures.closed()
        try:
            await link.command("PING")
        except CONNECTION_ERRORS as exc:
            raise self._failures.silent(exc) from exc

    async def aclose(self) -> None:
        if not self._open and self._push_link is None:
            return
        self._open = False
        reader_task, self._reader_task = self._reader_task, None
        if reader_task is not None:
            reader_task.cancel()
            if self._read_link is not None:
                self._read_link.drop()  # a read under way (or being connected) ends now
            await asyncio.gather(reader_task, return_exceptions=True)
        try:
            async with asyncio.timeout(2):
                await self._pusher.flush()
        except TimeoutError:
            pass
        await self._pusher.aclose()
        self._router.fail_all(TransportError("client closed"))
        if self._push_link is not None:
            try:
                await self._push_link.command("DEL", self.reply_list)  # replies nobody will read
            except CONNECTION_ERRORS as exc:
                logger.debug("could not delete reply list %s: %s", self.reply_list, exc)
        await self._close_connections()

    async def _close_connections(self) -> None:
        links = (self._push_link, self._read_link)
        self._push_link = self._read_link = None
        for link in links:
            if link is not None:
                await link.aclose()
        cluster, self._cluster = self._cluster, None
        await close_client(cluster)


def _transient_reply(reply: object) -> bool:
    return isinstance(reply, Exception) and is_transient(reply)


async def push(
    redis_client: aioredis.Redis, pushes: calls.Pushes, queue: str, message: bytes
) -> None:
    """Push one message under `pushes`' rule, on its own (`NoWorkers` when refused; Redis's
    errors as they are, for the caller to convert)."""
    if not pushes.window_ms:
        await redis_client.lpush(queue, message)
        return
    plan = pushes.plan([(queue, message)])
    following: list[tuple[Any, ...]] | None = plan.first()
    while following:
        async with redis_client.pipeline(transaction=False) as pipe:
            for command in following:
                pipe.execute_command(*command)
            following = plan.next(await pipe.execute(raise_on_error=False))
    outcome = plan.outcomes.get(queue)
    if outcome is not None:
        raise outcome


class RedisSeedClientTransport(ClientTransport):
    """The seed's client protocol: LPUSH the bare request, BRPOP the list named by its id."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._failures = calls.Failures(settings)
        self._pushes = calls.Pushes(settings.worker_window)
        self._redis: aioredis.Redis | None = None
        self._open = False

    async def connect(self) -> None:
        pool = self._settings.configure(
            aioredis.BlockingConnectionPool,
            f"mm:seed-client:{secrets.token_hex(4)}",
            retries=0,  # a BRPOP retried on a new connection would outlive `aclose`
            read_timeout=False,  # a BRPOP reads until the call's deadline, which bounds it
            max_connections=calls.SEED_MAX_CONNECTIONS,
            timeout=None,  # wait for a free connection; each call's deadline bounds it
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        try:
            await self._redis.ping()
        except CONNECTION_ERRORS as exc:
            await close_client(self._redis)
            self._redis = None
            raise self._failures.unreachable(exc) from exc
        self._open = True

    async def request(
        self, queue: str, body: bytes, deadline: float, trace: TraceContext | None = None
    ) -> bytes:
        redis_client = self._redis
        if not self._open or redis_client is None:
            raise self._failures.closed()
        reply_list = calls.seed_reply_list(body)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.time()) + 1.0):
                await push(redis_client, self._pushes, queue, body)
                remaining = deadline - time.time()
                got = None
                if remaining > 0.001:
                    got = await redis_client.brpop([reply_list], timeout=remaining)
        except TimeoutError:
            got = None
        except CONNECTION_ERRORS as exc:
            if not self._open:
                raise TransportError("client closed") from exc
            raise self._failures.sending(exc) from exc
        if not self._open:
            # Closed meanwhile: the push or the BRPOP may have taken a new connection from
            # the pool after `aclose` emptied it; it is closed here, not left to the collector.
            await redis_client.connection_pool.disconnect(inuse_connections=True)
            raise TransportError("client closed")
        if got is None:
            raise CallTimeout("no reply before the deadline")
        reply: bytes = got[1]  # type: ignore[assignment]
        return reply

    async def send(
        self, queue: str, body: bytes, deadline: float | None, trace: TraceContext | None = None
    ) -> None:
        if not self._open or self._redis is None:
            raise self._failures.closed()
        try:
            await push(self._redis, self._pushes, queue, body)
        except CONNECTION_ERRORS as exc:
            raise self._failures.sending(exc) from exc

    async def check(self) -> None:
        if not self._open or self._redis is None:
            raise self._failures.closed()
        try:
            await self._redis.ping()
        except CONNECTION_ERRORS as exc:
            raise self._failures.silent(exc) from exc

    async def aclose(self) -> None:
        self._open = False
        redis_client, self._redis = self._redis, None
        if redis_client is not None:
            # Disconnecting ends the BRPOPs in flight: their calls fail with "client closed".
            await redis_client.connection_pool.disconnect(inuse_connections=True)
            await close_client(redis_client)
