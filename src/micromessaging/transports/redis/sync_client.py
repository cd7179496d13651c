"""The blocking Redis client transport: the calling thread does its own I/O.

The envelope wire, like `RedisClientTransport`, but with no event loop thread to hand each
call to and back (two thread wake-ups per call): the caller LPUSHes its request itself (with
those of the threads that call meanwhile, in one LPUSH), and then one of the waiting callers,
whichever comes first (the "reader"), drains the client's one reply list with BLMPOP and hands
each reply to its caller; when the reader's own reply has come it passes the role on to
another waiting caller. A lone caller is always the reader, so a call costs what the seed's
LPUSH + BRPOP costs. `RedisSeedSyncClientTransport` is ``?wire=seed``: the seed's own client
loop, a pooled connection per call in flight.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from typing import Any

import redis
import redis.cluster
from redis.exceptions import ResponseError

from ..._exceptions import CallTimeout, TransportError
from .._shared import Backoff
from ..base import SyncClientTransport, TraceContext
from . import calls, compat, wire
from .connection import CONNECTION_ERRORS, REPLY_BLOCK_SECONDS, RedisSettings, is_transient
from .link import BlockingLink

logger = logging.getLogger("micromessaging.transport.redis")

MAX_CONNECTIONS = 16
"""Pushes are short, so this many connections serve any number of calling threads."""
REFUSED_READ_PAUSE = 0.1
"""Seconds between reads of the reply list while Redis refuses them for the moment."""


class _Waiter:
    """One call waiting for its reply."""

    __slots__ = ("error", "reply", "wake")

    def __init__(self) -> None:
        self.reply: bytes | None = None
        self.error: BaseException | None = None
        self.wake = threading.Event()


class RedisSyncClientTransport(SyncClientTransport):
    """Calls from any number of threads over a few connections and one reply list."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._failures = calls.Failures(settings)
        self.client_id = secrets.token_hex(8)
        self.reply_list = wire.reply_key(self.client_id, cluster=settings.cluster)
        self._prefix = wire.request_prefix(self.reply_list)
        self._cids = map(f"{secrets.token_hex(6)}.{{}}".format, itertools.count(1))
        self._lock = threading.Lock()
        self._pending: dict[str, _Waiter] = {}
        self._reading = False
        self._outbox: list[tuple[str, bytes, _Waiter]] = []
        self._pushing = False
        self._sweeps = calls.Sweeps()
        self._spreader = calls.Spreader(settings.shards)
        self._pushes = calls.Pushes(settings.worker_window, cluster=settings.cluster)
        self._closed = False
        self._redis: redis.Redis | redis.cluster.RedisCluster | None = None
        self._reader: redis.cluster.RedisCluster | BlockingLink | None = None
        """Where replies are read: on one Redis a link of the reader role's own."""

    def connect(self) -> None:
        name = calls.client_name(self.client_id)
        if self._settings.cluster:
            try:
                # One cluster client does both: pushes, and reads on a connection of its pool.
                cluster = self._settings.sync_cluster_client(name, block=REPLY_BLOCK_SECONDS)
                self._redis = self._reader = cluster
                cluster.ping()
            except CONNECTION_ERRORS as exc:
                self.close()
                raise self._failures.unreachable(exc) from exc
            return
        pool = self._settings.configure(
            redis.BlockingConnectionPool, name, max_connections=MAX_CONNECTIONS
        )
        reader_pool = self._settings.configure(
            redis.ConnectionPool, name, retries=0, block=REPLY_BLOCK_SECONDS
        )
        self._redis = redis.Redis(connection_pool=pool)
        try:
            self._redis.ping()
            self._reader = BlockingLink(reader_pool)
            self._reader.connect()
        except CONNECTION_ERRORS as exc:
            self.close()
            raise self._failures.unreachable(exc) from exc

    def request(
        self, queue: str, body: bytes, deadline: float, trace: TraceContext | None = None
    ) -> bytes:
        redis_client = self._redis
        if self._closed or redis_client is None:
            raise self._failures.closed()
        cid = next(self._cids)
        queue = self._spreader.queue(queue)
        waiter = _Waiter()
        message = wire.encode_request_fast(self._prefix, cid, deadline, time.time(), body, trace)
        with self._lock:
            self._pending[cid] = waiter
            lone = len(self._pending) == 1 and not self._reading and not self._pushing
            lone = lone and not self._settings.cluster  # no one connection to write both on
            if lone:  # both roles are ours: push and first read go out in one round trip
                self._reading = self._pushing = True
        try:
            if lone:
                self._push_and_read(redis_client, queue, message, waiter, deadline)
            else:
                self._push(redis_client, queue, message, waiter, deadline)
            return self._wait(waiter, deadline)
        finally:
            with self._lock:
                self._pending.pop(cid, None)
                self._pass_reading_on()

    def _push(
        self, redis_client: Any, queue: str, message: bytes, waiter: _Waiter, deadline: float
    ) -> None:
        """LPUSH `message`, together with those of the threads that call meanwhile.

        The first caller to find no push in progress sends everything that waits, round
        after round, until nothing does; the others only queue theirs and go on to wait for
        their replies (a failed push reaches them as their waiter's error). A lone caller
        sends its own at once, so this costs it nothing.
        """
        with self._lock:
            self._outbox.append((queue, message, waiter))
            if self._pushing:
                return
            self._pushing = True
        self._send_outbox(redis_client, deadline)

    def _send_outbox(self, redis_client: Any, deadline: float | None = None) -> None:
        """As the pusher: send what waits, round after round, until nothing does."""
        while True:
            with self._lock:
                batch, self._outbox = self._outbox, []
                if not batch:
                    self._pushing = False
                    return
            try:
                if self._settings.cluster:
                    plan = self._push_through_failover(redis_client, batch, deadline)
                else:
                    plan = self._push_batch(redis_client, batch)
            except BaseException as exc:
                broken = isinstance(exc, CONNECTION_ERRORS)
                error = self._failures.sending(exc)
                with self._lock:
                    if not broken:  # interrupted: nobody is left to send what waits
                        batch += self._outbox
                        self._outbox = []
                        self._pushing = False
                    for _, _, failed in batch:
                        failed.error = error
                        failed.wake.set()
                if not broken:
                    raise
                continue
            with self._lock:
                for name, _, waiter in batch:
                    outcome = plan.outcomes.get(name)
                    if outcome is not None:
                        waiter.error = self._failures.pushing(outcome)
                        waiter.wake.set()

    def _finish(self, redis_client: Any, plan: calls.PushPlan, replies: list[Any]) -> None:
        """Send the rounds of `plan` that follow the first (rarely any)."""
        following = plan.next(replies)
        while following:
            following = plan.next(_execute(redis_client, following))

    def _push_batch(
        self, redis_client: Any, batch: list[tuple[str, bytes, _Waiter]]
    ) -> calls.PushPlan:
        """Push `batch` (and the sweeps due) in one round trip, then the rounds that follow
        (rarely any); the plan, whose outcomes say which pushes were refused."""
        plan = self._pushes.plan((name, item) for name, item, _ in batch)
        commands = plan.first()
        sweeps = self._sweeps.due(plan.queues, time.time())
        replies = _execute(redis_client, [*commands, *sweeps])
        if self._settings.cluster:  # a master refusing for now: `_push_through_failover`
            for reply in replies[: len(commands)]:
                if isinstance(reply, Exception) and is_transient(reply):
                    raise reply
        self._sweeps.done(sweeps, replies[len(commands) :])
        self._finish(redis_client, plan, replies[: len(commands)])
        return plan

    def _push_through_failover(
        self, redis_client: Any, batch: list[tuple[str, bytes, _Waiter]], deadline: float | None
    ) -> calls.PushPlan:
        """On a Redis Cluster, push again while a master is down and its replica not yet
        promoted: until the pushing caller's deadline (`calls.FAILOVER_PATIENCE` at most)."""
        backoff = Backoff()
        give_up = time.time() + calls.FAILOVER_PATIENCE
        if deadline is not None:
            give_up = min(give_up, deadline)
        while True:
            try:
                return self._push_batch(redis_client, batch)
            except CONNECTION_ERRORS as exc:
                delay = backoff.failed()
                if self._closed or not is_transient(exc) or time.time() + delay > give_up:
                    raise
                if backoff.failures == 1:
                    logger.warning("pushing to the Redis Cluster failed (%s); retrying", exc)
                time.sleep(delay)

    def _push_and_read(
        self,
        redis_client: Any,
        queue: str,
        message: bytes,
        waiter: _Waiter,
        deadline: float,
    ) -> None:
        """A lone caller's LPUSH and first BLMPOP, written together: the seed's two round
        trips in one. Then the pusher's and the reader's roles go back as usual.

        Under the no-worker rule, only for a queue whose pushes were accepted lately: else
        the push goes first, alone, so that a refusal does not wait for the read.
        """
        reader = self._reader
        assert isinstance(reader, BlockingLink)
        try:
            if not self._pushes.combinable(queue):
                with self._lock:
                    self._outbox.append((queue, message, waiter))
                self._send_outbox(redis_client)  # our role: a refusal reaches the waiter
                if waiter.error is None:
                    self._read_until(waiter, deadline, once=True)
                return
            block = max(min(deadline - time.time(), REPLY_BLOCK_SECONDS), 0.001)
            read = calls.read_command(self.reply_list, block)
            plan = self._pushes.plan([(queue, message)])
            push = plan.first()
            sweeps = self._sweeps.due((queue,), time.time())
            commands = [*push, *sweeps, read]
            replies: list[Any] = []
            try:
                try:
                    reader.send(commands)
                finally:
                    # The pusher's role goes back now, not after the reply: what other
                    # callers queued meanwhile must not wait for it.
                    self._send_outbox(redis_client)
                replies = [reader.read() for _ in commands]
            except CONNECTION_ERRORS as exc:
                self._fail_all(self._failures.reading(exc))
                return
            got = replies[-1]
            self._sweeps.done(sweeps, replies[len(push) : -1])
            try:
                self._finish(redis_client, plan, replies[: len(push)])
            except CONNECTION_ERRORS as exc:
                waiter.error = self._failures.sending(exc)
            outcome = plan.outcomes.get(queue)
            if outcome is not None:
                waiter.error = self._failures.pushing(outcome)
            elif isinstance(got, Exception):
                if calls.replies_may_be_lost(got):
                    self._fail_all(self._failures.reading(got))
            else:
                self._hand_out(calls.replies(got))
        finally:
            with self._lock:
                self._reading = False
                self._pass_reading_on()

    def _hand_out(self, replies: list[tuple[str | None, bytes]]) -> None:
        """Give each reply to the call waiting for it."""
        with self._lock:
            for cid, reply in replies:
                other = self._pending.get(cid) if cid is not None else None
                if other is not None and other.reply is None:
                    other.reply = reply
                    other.wake.set()

    def _wait(self, waiter: _Waiter, deadline: float) -> bytes:
        while True:
            if waiter.reply is not None:
                return waiter.reply
            if waiter.error is not None:
                raise waiter.error
            remaining = deadline - time.time()
            if remaining <= 0:
                raise CallTimeout("no reply before the deadline")
            with self._lock:
                reader = not self._reading and waiter.reply is None and waiter.error is None
                if reader:
                    self._reading = True
            if reader:
                try:
                    self._read_until(waiter, deadline)
                finally:
                    with self._lock:
                        self._reading = False
            else:
                waiter.wake.wait(remaining)
                waiter.wake.clear()

    def _read_until(self, waiter: _Waiter, deadline: float, *, once: bool = False) -> None:
        """Hand out replies until ours has come or our deadline has passed (`once`: one
        read, or until a read fails)."""
        assert self._reader is not None
        while waiter.reply is None and waiter.error is None:
            block = min(deadline - time.time(), REPLY_BLOCK_SECONDS)
            if block <= 0.001:
                return
            try:
                got = self._read(self._reader, block)
            except CONNECTION_ERRORS as exc:
                if calls.replies_may_be_lost(exc, cluster=self._settings.cluster):
                    self._fail_all(self._failures.reading(exc))
                    return
                # Refused for the moment (a failover): the replies wait in their list.
                time.sleep(min(REFUSED_READ_PAUSE, max(deadline - time.time(), 0)))
                continue
            self._hand_out(calls.replies(got))
            if once:
                return

    def _read(self, reader: redis.cluster.RedisCluster | BlockingLink, block: float) -> Any:
        """One read of the reply list (on a cluster, sent to the node of its slot at once:
        redis-py would ask a node where the keys of BLMPOP are, every time)."""
        command = calls.read_command(self.reply_list, block)
        if isinstance(reader, redis.cluster.RedisCluster):
            return compat.execute_at(reader, self.reply_list, command)
        return reader.command(*command)

    def _pass_reading_on(self) -> None:
        """With the lock held: when nobody reads replies, wake a waiting caller to do it."""
        if self._reading:
            return
        # A caller whose reply has come is about to return: wake one still waiting.
        for waiter in self._pending.values():
            if waiter.reply is None and waiter.error is None:
                waiter.wake.set()
                return

    def _fail_all(self, error: TransportError) -> None:
        with self._lock:
            for waiter in self._pending.values():
                if waiter.reply is None:
                    waiter.error = error
                    waiter.wake.set()

    def send(
        self, queue: str, body: bytes, deadline: float | None, trace: TraceContext | None = None
    ) -> None:
        if self._closed or self._redis is None:
            raise self._failures.closed()
        message = calls.notification(body, deadline, time.time(), trace)
        push(self._redis, self._pushes, self._failures, self._spreader.queue(queue), message)

    def close(self) -> None:
        self._closed = True
        self._fail_all(TransportError("client closed"))
        redis_client, reader = self._redis, self._reader
        self._redis = self._reader = None
        if redis_client is not None:
            try:
                redis_client.delete(self.reply_list)  # replies nobody will read
            except CONNECTION_ERRORS as exc:
                logger.debug("could not delete reply list %s: %s", self.reply_list, exc)
            redis_client.close()
            if isinstance(redis_client, redis.cluster.RedisCluster):
                return  # its reader, too, and it closes its connections itself
            redis_client.connection_pool.disconnect()
        if isinstance(reader, BlockingLink):
            reader.drop()


def _execute(redis_client: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Run commands in one round trip; their replies, error replies included."""
    if len(commands) == 1:
        try:
            return [compat.execute(redis_client, commands[0])]
        except ResponseError as exc:
            return [exc]
    with redis_client.pipeline(transaction=False) as pipe:
        for command in commands:
            compat.execute(pipe, command)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies


def push(
    redis_client: redis.Redis | redis.cluster.RedisCluster,
    pushes: calls.Pushes,
    failures: calls.Failures,
    queue: str,
    message: bytes,
) -> None:
    """Push one message under `pushes`' rule, on its own: `NoWorkers` or `TransportError`."""
    plan = pushes.plan([(queue, message)])
    following: list[tuple[Any, ...]] | None = plan.first()
    try:
        while following:
            following = plan.next(_execute(redis_client, following))
    except CONNECTION_ERRORS as exc:
        raise failures.sending(exc) from exc
    outcome = plan.outcomes.get(queue)
    if outcome is not None:
        raise failures.pushing(outcome)


class RedisSeedSyncClientTransport(SyncClientTransport):
    """``?wire=seed`` for blocking callers: the seed's LPUSH + BRPOP, on the calling thread."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._failures = calls.Failures(settings)
        self._pushes = calls.Pushes(settings.worker_window)
        self._redis: redis.Redis | None = None

    def connect(self) -> None:
        pool = self._settings.configure(
            redis.BlockingConnectionPool,
            f"mm:seed-client:{secrets.token_hex(4)}",
            retries=0,  # a BRPOP retried on a new connection would outlive `aclose`
            read_timeout=False,  # a BRPOP reads until the call's deadline, which bounds it
            max_connections=calls.SEED_MAX_CONNECTIONS,
            timeout=None,
        )
        self._redis = redis.Redis(connection_pool=pool)
        try:
            self._redis.ping()
        except CONNECTION_ERRORS as exc:
            self.close()
            raise self._failures.unreachable(exc) from exc

    def request(
        self, queue: str, body: bytes, deadline: float, trace: TraceContext | None = None
    ) -> bytes:
        redis_client = self._redis
        if redis_client is None:
            raise self._failures.closed()
        reply_list = calls.seed_reply_list(body)
        try:
            push(redis_client, self._pushes, self._failures, queue, body)
            remaining = deadline - time.time()
            got: Any = None
            if remaining > 0.001:
                got = redis_client.brpop([reply_list], timeout=round(remaining, 3))
        except CONNECTION_ERRORS as exc:
            if self._redis is None:
                raise TransportError("client closed") from exc
            raise self._failures.sending(exc) from exc
        if got is None:
            raise CallTimeout("no reply before the deadline")
        reply: bytes = got[1]
        return reply

    def send(
        self, queue: str, body: bytes, deadline: float | None, trace: TraceContext | None = None
    ) -> None:
        if self._redis is None:
            raise self._failures.closed()
        push(self._redis, self._pushes, self._failures, queue, body)

    def close(self) -> None:
        redis_client, self._redis = self._redis, None
        if redis_client is not None:
            redis_client.close()
            redis_client.connection_pool.disconnect()
