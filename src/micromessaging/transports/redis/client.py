"""The caller's end of the Redis transport, in its two wire forms.

`RedisClientTransport` (the default): every request is an envelope naming this client's one
reply list and a correlation id; one reader task drains that list many replies per round
trip (BLMPOP ... COUNT) and hands each to its waiting call. Requests made while a push is
in flight go out together in one LPUSH, so 64 concurrent calls use two connections.

`RedisSeedClientTransport` (``?wire=seed``): exactly the seed's client, LPUSH of the bare
request then BRPOP on the list its id names, which holds a connection per call in flight;
a blocking pool bounds them (``max_connections``, 64 unless the URL says otherwise).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import redis.asyncio as aioredis

from ..._exceptions import CallTimeout, TransportError
from ..base import ClientTransport, ReplyRouter, connection_lost
from . import wire
from .connection import (
    CONNECTION_ERRORS,
    LINK_ERRORS,
    REPLY_BLOCK_SECONDS,
    Backoff,
    Batcher,
    RedisSettings,
    close_client,
    transport_error,
)
from .link import Link

logger = logging.getLogger("micromessaging.transport.redis")

REPLY_BATCH = 512
"""The most replies one read takes from the reply list."""
SEED_MAX_CONNECTIONS = 64

# (queue, message, future, whether the future waits for a reply rather than for the push)
_Push = tuple[str, bytes, "asyncio.Future[bytes] | asyncio.Future[None]", bool]


class RedisClientTransport(ClientTransport):
    """Many calls in flight over one pool: envelopes out, one reply list back."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self.client_id = secrets.token_hex(8)
        self.reply_list = wire.reply_key(self.client_id)
        self._prefix = wire.request_prefix(self.reply_list)
        self._router = ReplyRouter()
        self._pusher: Batcher[_Push] = Batcher(self._push)
        self._push_link: Link | None = None
        self._read_link: Link | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._open = False

    async def connect(self) -> None:
        pool = self._settings.pool(f"mm:client:{self.client_id}")
        self._push_link = Link(pool)
        self._read_link = Link(pool, block=REPLY_BLOCK_SECONDS)
        try:
            await self._push_link.command("PING")
        except CONNECTION_ERRORS as exc:
            await self._close_connections()
            raise transport_error(f"cannot reach Redis at {self._settings.display}", exc) from exc
        self._open = True
        self._reader_task = asyncio.create_task(self._read_replies())

    async def request(self, queue: str, body: bytes, deadline: float) -> bytes:
        if not self._open:
            raise TransportError("the Redis client is closed")
        correlation_id, future = self._router.expect(deadline)
        message = wire.encode_request_fast(self._prefix, correlation_id, deadline, body)
        try:
            await self._pusher.send((queue, message, future, True))
            return await future
        except BaseException:
            self._router.forget(correlation_id)
            raise

    async def send(self, queue: str, body: bytes, deadline: float | None) -> None:
        if not self._open:
            raise TransportError("the Redis client is closed")
        # A bare body is the seed form; a header without reply_to carries just the deadline.
        message = body if deadline is None else wire.encode_request(body, None, None, deadline)
        pushed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._pusher.send((queue, message, pushed, False))
        await pushed

    async def _push(self, batch: list[_Push]) -> None:
        """LPUSH everything that waited, one command per queue, in one round trip."""
        link = self._push_link
        assert link is not None
        by_queue: dict[str, list[bytes]] = {}
        for queue, message, _, _ in batch:
            by_queue.setdefault(queue, []).append(message)
        commands = [("LPUSH", queue, *messages) for queue, messages in by_queue.items()]
        try:
            try:
                replies = await link.pipeline(*commands)
            except LINK_ERRORS:
                # Most likely a connection Redis closed while idle (a restart, a timeout):
                # try once more on a new one. Should the first push have landed after all,
                # the request runs twice and its second reply is dropped as unknown.
                replies = await link.pipeline(*commands)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        except CONNECTION_ERRORS as exc:
            for _, _, future, _ in batch:
                if not future.done():
                    future.set_exception(
                        transport_error(f"sending to Redis at {self._settings.display}", exc)
                    )
            return
        for _, _, future, awaits_reply in batch:
            if not awaits_reply and not future.done():
                future.set_result(None)  # type: ignore[arg-type]

    async def _read_replies(self) -> None:
        """Drain the reply list into the waiting calls; on a lost link, fail them and retry."""
        link = self._read_link
        assert link is not None
        backoff = Backoff()
        while self._open:
            try:
                got = await link.command(
                    "BLMPOP",
                    REPLY_BLOCK_SECONDS,
                    1,
                    self.reply_list,
                    "LEFT",
                    "COUNT",
                    REPLY_BATCH,
                )
            except CONNECTION_ERRORS as exc:
                if not self._open:
                    return
                # Replies to calls already sent may be lost with the link (a restarted Redis
                # forgets the queue too): fail them now rather than let them wait it out.
                self._router.fail_all(connection_lost(f"Redis at {self._settings.display}", exc))
                if backoff.failures == 0:
                    logger.warning("reading replies from Redis failed (%s); reconnecting", exc)
                await asyncio.sleep(backoff.failed())
                continue
            if backoff.succeeded():
                logger.info("reading replies from Redis again")
            if got:
                if len(got[1]) > 1:
                    self._pusher.hold_for_this_round()  # the woken callers' next calls
                for message in got[1]:
                    self._router.resolve(*wire.decode_reply(message))
                # Let the woken callers run (and send their next requests) before this loop
                # asks for more: the next BLMPOP then costs no caller any latency.
                await asyncio.sleep(0)

    async def aclose(self) -> None:
        if not self._open and self._push_link is None:
            return
        self._open = False
        reader_task, self._reader_task = self._reader_task, None
        if reader_task is not None:
            reader_task.cancel()
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


class RedisSeedClientTransport(ClientTransport):
    """The seed's client protocol: LPUSH the bare request, BRPOP the list named by its id."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._redis: aioredis.Redis | None = None
        self._open = False

    async def connect(self) -> None:
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                self._settings.url,
                max_connections=SEED_MAX_CONNECTIONS,
                timeout=None,  # wait for a free connection; each call's deadline bounds it
                client_name=f"mm:seed-client:{secrets.token_hex(4)}",
            )
        except (ValueError, TypeError) as exc:
            raise transport_error(f"bad Redis URL {self._settings.display}", exc) from exc
        # BRPOP holds the read open until the call's deadline, which the call enforces.
        pool.connection_kwargs["socket_timeout"] = None
        self._redis = aioredis.Redis(connection_pool=pool)
        try:
            await self._redis.ping()
        except CONNECTION_ERRORS as exc:
            await close_client(self._redis)
            self._redis = None
            raise transport_error(f"cannot reach Redis at {self._settings.display}", exc) from exc
        self._open = True

    async def request(self, queue: str, body: bytes, deadline: float) -> bytes:
        redis_client = self._redis
        if not self._open or redis_client is None:
            raise TransportError("the Redis client is closed")
        reply_list = wire.seed_reply_list(body)
        if reply_list is None:
            raise TransportError("wire=seed sends only requests with a string or integer id")
        try:
            async with asyncio.timeout(max(0.0, deadline - time.time()) + 1.0):
                await redis_client.lpush(queue, body)
                remaining = deadline - time.time()
                got = None
                if remaining > 0.001:
                    got = await redis_client.brpop([reply_list], timeout=remaining)
        except TimeoutError:
            got = None
        except CONNECTION_ERRORS as exc:
            if not self._open:
                raise TransportError("client closed") from exc
            raise transport_error(f"calling over Redis at {self._settings.display}", exc) from exc
        if got is None:
            raise CallTimeout("no reply before the deadline")
        reply: bytes = got[1]  # type: ignore[assignment]
        return reply

    async def send(self, queue: str, body: bytes, deadline: float | None) -> None:
        if not self._open or self._redis is None:
            raise TransportError("the Redis client is closed")
        try:
            await self._redis.lpush(queue, body)
        except CONNECTION_ERRORS as exc:
            raise transport_error(f"sending to Redis at {self._settings.display}", exc) from exc

    async def aclose(self) -> None:
        self._open = False
        redis_client, self._redis = self._redis, None
        if redis_client is not None:
            # Disconnecting ends the BRPOPs in flight: their calls fail with "client closed".
            await redis_client.connection_pool.disconnect(inuse_connections=True)
            await close_client(redis_client)
