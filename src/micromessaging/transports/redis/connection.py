"""Connections for the Redis transport: URL options, clients, error conversion, batching.

redis:// and rediss:// URLs go to redis-py's ``from_url`` (database number, password, ACL
user, ``ssl_cert_reqs=none`` for the self-signed certificates of hosted Redis, and its other
query options). Our own query options are taken out first:

- ``wire=seed``: the client speaks the seed's protocol (bare request, BRPOP on its id).
- ``heartbeat=SECONDS``: a worker's heartbeat TTL; a killed worker's messages are back in
  the queue at most 1.5 x this after its death (default 10).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..._exceptions import ConfigurationError, TransportError
from ..._settings import mask_password

logger = logging.getLogger("micromessaging.transport.redis")

T = TypeVar("T")

DEFAULT_HEARTBEAT = 10.0
DEFAULT_SOCKET_TIMEOUT = 5.0
"""Seconds a command (beyond its own blocking time) or a connect may take, unless the URL
says otherwise (``socket_timeout``, ``socket_connect_timeout``)."""
BLOCK_SECONDS = 1
"""How long one blocking pop waits in Redis, so that loops notice a stop or a lost link."""
REPLY_BLOCK_SECONDS = 2
RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

OUR_OPTIONS = frozenset({"wire", "heartbeat"})
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
LINK_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    TimeoutError,
)
"""The errors of a broken link, as opposed to a command Redis refused."""


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """A broker URL taken apart: what redis-py gets, and our own options."""

    url: str
    """The URL without our options, for redis-py."""
    display: str
    """The URL with its password masked, for logs and errors."""
    wire: str = "envelope"
    heartbeat: float = DEFAULT_HEARTBEAT

    @classmethod
    def from_url(cls, url: str) -> RedisSettings:
        """Read our options from `url`'s query; `ConfigurationError` when one is wrong."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigurationError(f"not a redis:// or rediss:// URL: {mask_password(url)}")
        ours: dict[str, str] = {}
        theirs: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in OUR_OPTIONS:
                ours[name] = value
            else:
                theirs.append((name, value))
        wire = ours.get("wire", "envelope")
        if wire not in ("envelope", "seed"):
            raise ConfigurationError(f"wire must be 'envelope' or 'seed', not {wire!r}")
        try:
            heartbeat = float(ours.get("heartbeat", DEFAULT_HEARTBEAT))
        except ValueError:
            raise ConfigurationError(
                f"heartbeat must be seconds, not {ours['heartbeat']!r}"
            ) from None
        if not 0.3 <= heartbeat <= 3600:
            raise ConfigurationError("heartbeat must be between 0.3 and 3600 seconds")
        clean = urlunsplit(parts._replace(query=urlencode(theirs)))
        return cls(clean, mask_password(clean), wire, heartbeat)

    def pool(self, name: str, *, retries: int = 2) -> aioredis.ConnectionPool:
        """A redis-py connection pool for this URL; its connections call themselves `name`."""
        kwargs: dict[str, Any] = {
            "client_name": name,
            "retry": Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.25), retries),
        }
        try:
            pool = aioredis.ConnectionPool.from_url(self.url, **kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"bad Redis URL {self.display}: {exc}") from exc
        # redis-py waits for ever by default: a Redis that stops answering would hang us.
        for option in ("socket_timeout", "socket_connect_timeout"):
            if pool.connection_kwargs.get(option) is None:
                pool.connection_kwargs[option] = DEFAULT_SOCKET_TIMEOUT
        return pool

    def client(self, pool: aioredis.ConnectionPool) -> aioredis.Redis:
        """A redis-py client over `pool`, for commands off the hot path."""
        return aioredis.Redis(connection_pool=pool)


def transport_error(what: str, exc: BaseException) -> TransportError:
    """A broker error as ours, naming what failed."""
    return TransportError(f"{what}: {type(exc).__name__}: {exc}")


async def close_client(client: aioredis.Redis | None) -> None:
    """Close a client and its pool, ignoring a broker that is already gone."""
    if client is None:
        return
    try:
        await client.aclose(close_connection_pool=True)
    except CONNECTION_ERRORS as exc:
        logger.debug("closing a Redis connection: %s", exc)


class Backoff:
    """Growing pauses between reconnection attempts, reset by a success."""

    def __init__(self) -> None:
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next attempt."""
        delay = RECONNECT_DELAYS[min(self.failures, len(RECONNECT_DELAYS) - 1)]
        self.failures += 1
        return delay

    def succeeded(self) -> bool:
        """Reset; whether there had been failures (so the recovery can be logged)."""
        had_failed, self.failures = self.failures > 0, 0
        return had_failed


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
        """Queue what is sent until the callbacks ready now (and those they wake) have run."""
        if not self._held:
            self._held = True
            # call_soon runs after every callback already scheduled, such as the wake-ups of
            # the tasks the caller is resolving right now.
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
            while self._waiting:
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
