"""What every transport needs, written once: no transport re-implements any of it.

A transport does its broker's I/O and nothing else. The bookkeeping around that I/O is the
same for every broker and lives here:

- `Ledger`: the deliveries handed to the worker and not yet settled, and the slots they
  hold. Each delivery is settled once (a second settle is logged and dropped); its slot is
  freed on every path, errors included; a settle that meets a broker error meaning "try
  again" is retried with backoff until the broker is back; on close, what is left goes back
  to the transport to give back to its broker.
- `WorkerTransportBase` and `LedgerDelivery`: the worker side's start, stop and close around
  a `Ledger`, so that a transport writes only how it takes, settles and gives back.
- `Slots`: unsettled deliveries counted against the worker's concurrency.
- `Backoff`: growing, jittered pauses between attempts, reset by a success.
- The deadline codec (`encode_deadline`, `decode_deadline`): one rule on every wire.
- `UrlOptions`: our own options taken out of a broker URL's query string and parsed the same
  way for every broker (flags, seconds, counts, choices).
- `ReplyRouter` and `connection_lost`, for the clients' side.
- `keep_reads_small`: reads on asyncio's own loop that don't map memory each time.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import random
import secrets
import ssl
import time
from abc import abstractmethod
from asyncio import selector_events
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._exceptions import CallTimeout, ConfigurationError, TransportError
from .base import Delivery, WorkerOptions, WorkerTransport

logger = logging.getLogger("micromessaging.transport")

T = TypeVar("T")
D = TypeVar("D", bound="LedgerDelivery")

CLOSE_WAIT = 5.0
"""Seconds a closing worker transport waits for settles still under way before giving back."""


READ_SIZE = 64 * 1024
"""The most a connection of ours reads at once on asyncio's own loop (`keep_reads_small`)."""


def keep_reads_small(transport: asyncio.BaseTransport | None) -> None:
    """Have `transport` read at most `READ_SIZE` bytes at once, when it is a socket transport
    of asyncio's own (selector) loop; nothing otherwise (uvloop's, TLS).

    asyncio's socket transport reads with ``recv(256 KiB)``: a fresh bytes object that size
    each read, above glibc's threshold for mapping memory (128 KiB), shrunk to what came and
    freed once handled: three system calls (mmap, mremap, munmap) and a page fault a read,
    every read, as the threshold never grows (what is freed is the shrunk size). A 64 KiB
    read comes from the heap. Measured one call after another over NATS, on the blocking
    `Client`'s private loop and an `AsyncClient` on asyncio's loop: 6-10% of a round trip.
    uvloop reads into a buffer of its own. The size is the transport's ``max_size``, an
    attribute of asyncio's private class (the same in Python 3.11 to 3.13): set on the
    instance, when the instance has it.
    """
    kind = _SOCKET_TRANSPORT
    if kind is not None and isinstance(transport, kind) and hasattr(transport, "max_size"):
        transport.max_size = READ_SIZE


_SOCKET_TRANSPORT: type[Any] | None = getattr(selector_events, "_SelectorSocketTransport", None)


class Refused(TransportError):
    """The broker was reached and refused us: credentials, a certificate, permissions.

    Trying again won't help, so a worker waiting for its broker gives up at once on it.
    """


_REFUSAL_SIGNS = (
    "certificate verify failed",
    "wrong_version_number",
    "ssl:",
    "authoriz",  # NATS: Authorization Violation
    "got <connection.close",  # AMQP: the broker closed the handshake (a vhost, a password)
)


def looks_refused(exc: BaseException) -> bool:
    """Whether a connection failure is a refusal (TLS or authentication), judged by its text
    and its chain: libraries wrap these in their generic connection errors."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError) or any(
            sign in str(seen).lower() for sign in _REFUSAL_SIGNS
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# --- deadlines -------------------------------------------------------------------------------


def encode_deadline(deadline: float) -> int:
    """A deadline (seconds since the epoch) as every wire carries it: whole milliseconds."""
    return int(deadline * 1000)


def decode_deadline(value: object) -> float | None:
    """A deadline read off a wire, in seconds since the epoch; None when there is none.

    One rule for every transport (docs/wire-format.md): an integer or a float number of
    milliseconds since the Unix epoch, as a number or as decimal text (for wires whose
    headers are text). Anything else - a boolean, zero, a negative, NaN or infinite number,
    text that is not a number - is unreadable, and an unreadable deadline counts as none:
    the request runs, as one from a caller that sent no deadline would.
    """
    kind = type(value)
    if kind is int or kind is float:
        milliseconds: float = value  # type: ignore[assignment]
    elif kind is str or kind is bytes:
        try:
            milliseconds = float(value)  # type: ignore[arg-type]
        except ValueError:
            return None
    else:
        return None
    if not (milliseconds > 0 and math.isfinite(milliseconds)):
        return None
    return milliseconds / 1000


# --- URL options -----------------------------------------------------------------------------

TRUE = frozenset({"1", "true", "yes", "on"})
"""Flag values meaning yes. A flag given no value is an error, not a guess: for a flag such
as ``no_verify_ssl`` a wrong guess would switch certificate checks off."""
FALSE = frozenset({"0", "false", "no", "off"})


class UrlOptions:
    """Our own options in a broker URL's query string, read the same way for every broker."""

    def __init__(self, what: str, values: dict[str, str]) -> None:
        self.what = what
        self.values = values

    @classmethod
    def split(
        cls, url: str, ours: Collection[str], *, what: str, strict: bool = False
    ) -> tuple[UrlOptions, str]:
        """Our options, and `url` without them (for the broker's library).

        `strict`: an option that is not ours is an error (the library takes none).
        """
        parts = urlsplit(url)
        taken: dict[str, str] = {}
        rest: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in ours:
                taken[name] = value
            else:
                rest.append((name, value))
        if strict and rest:
            unknown = ", ".join(sorted({name for name, _ in rest}))
            known = ", ".join(sorted(ours))
            raise ConfigurationError(f"unknown {what} URL options: {unknown} (known: {known})")
        return cls(what, taken), urlunsplit(parts._replace(query=urlencode(rest)))

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def _bad(self, name: str, expected: str) -> ConfigurationError:
        return ConfigurationError(
            f"{self.what} URL option {name}={self.values[name]!r} is not {expected}"
        )

    def flag(self, name: str, default: bool) -> bool:
        """A yes/no option: 1, true, yes, on / 0, false, no, off (any case)."""
        if name not in self.values:
            return default
        value = self.values[name].lower()
        if value in TRUE:
            return True
        if value in FALSE:
            return False
        raise self._bad(name, "a yes or no (true/false, 1/0, on/off)")

    def seconds(
        self, name: str, default: float, *, minimum: float = 0.0, maximum: float = math.inf
    ) -> float:
        """Seconds: above `minimum` (exclusive when it is 0), at most `maximum`."""
        if name not in self.values:
            return default
        try:
            value = float(self.values[name])
        except ValueError:
            raise self._bad(name, "a number of seconds") from None
        low_ok = value > 0 if minimum == 0 else value >= minimum
        if not (low_ok and value <= maximum and math.isfinite(value)):
            limits = f"between {minimum:g} and {maximum:g}" if maximum < math.inf else "positive"
            raise self._bad(name, f"a number of seconds {limits}")
        return value

    def count(self, name: str, default: int, *, minimum: int = 0) -> int:
        """A whole number, at least `minimum`."""
        if name not in self.values:
            return default
        text = self.values[name]
        if not text.isdigit() or int(text) < minimum:
            raise self._bad(name, f"a whole number of at least {minimum}")
        return int(text)

    def choice(self, name: str, default: str, choices: Collection[str]) -> str:
        """One of `choices` (case-insensitive)."""
        if name not in self.values:
            return default
        value = self.values[name].lower()
        if value not in choices:
            raise self._bad(name, "one of " + ", ".join(sorted(choices)))
        return value

    def text(self, name: str, default: str | None = None) -> str | None:
        """The option's text as given."""
        return self.values.get(name, default)


WORKER_WINDOW = 30.0
"""Seconds after the last live worker of a queue was seen during which calls still wait."""


def worker_window(options: UrlOptions) -> float:
    """``?worker_window=SECONDS``: the no-worker rule, the same on every broker.

    A call to a queue none of whose workers was seen alive in the last `SECONDS` (default
    30) fails at once with `NoWorkers` and leaves nothing behind; within the window (workers
    restarting, a deploy) it waits as ever. ``0`` turns the rule off: calls always wait,
    for queues served by programs that don't say they are alive (the seed's).
    """
    if "worker_window" not in options:
        return WORKER_WINDOW
    text = options.values["worker_window"]
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise options._bad("worker_window", "a number of seconds, 0 or more (0: always wait)")
    return value


# --- backoff and slots -----------------------------------------------------------------------


class Backoff:
    """Growing pauses between attempts (jittered, so that workers don't retry in step)."""

    DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

    def __init__(self, delays: tuple[float, ...] = DELAYS) -> None:
        self.delays = delays
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next attempt."""
        delay = self.delays[min(self.failures, len(self.delays) - 1)]
        self.failures += 1
        return delay * random.uniform(0.8, 1.2)

    def succeeded(self) -> bool:
        """Reset; whether there had been failures (so that the recovery can be logged)."""
        had_failed, self.failures = self.failures > 0, 0
        return had_failed


class Slots:
    """Unsettled deliveries counted against a limit, for transports that take in a loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()
        self._waiting = 0  # a release wakes `wait` only when something waits (most never do)

    @property
    def free(self) -> int:
        """How many more deliveries may be taken now."""
        return self.limit - self.used

    def take(self, count: int = 1) -> None:
        """Count `count` deliveries as taken (or reserved, before asking the broker)."""
        self.used += count

    def release(self, count: int = 1) -> None:
        """Count `count` deliveries as settled (or reservations as unused)."""
        self.used -= count
        if self._waiting:
            self._freed.set()

    async def wait(self) -> int:
        """Wait until at least one slot is free; how many are."""
        while self.used >= self.limit:
            self._freed.clear()
            self._waiting += 1
            try:
                await self._freed.wait()
            finally:
                self._waiting -= 1
        return self.limit - self.used


# --- the ledger of unsettled deliveries ------------------------------------------------------


def never(exc: BaseException) -> bool:
    """No error is worth retrying (the default classification)."""
    return False


class Ledger(Generic[D]):
    """The deliveries handed to a worker and not yet settled, and the slots they hold.

    A delivery is admitted when handed over, claimed when its settle starts (only the first
    claim succeeds: a second settle is logged and dropped), and released when the settle is
    done, whether it succeeded or not: its slot is freed exactly once on every path. A
    settle that failed for good leaves the delivery stranded: still in the broker, to be
    given back when the transport closes. With no `limit`, the broker itself bounds what it
    hands over (a prefetch count), and the ledger only keeps the books.
    """

    def __init__(
        self,
        limit: int | None,
        *,
        transient: Callable[[BaseException], bool] = never,
        on_freed: Callable[[], None] | None = None,
        on_stranded: Callable[[D], bool] | None = None,
        name: str = "",
    ) -> None:
        self.slots = Slots(limit) if limit is not None else None
        self.transient = transient
        self.name = name
        self._on_freed = on_freed
        self._on_stranded = on_stranded
        self._unsettled: dict[D, None] = {}  # in the order handed over
        self._settling: set[D] = set()
        self._stranded: list[D] = []
        self._idle: asyncio.Event | None = None
        """Set when the last settle under way is over, for `close` (made only by it)."""
        self.closing = False
        self.retried = 0
        """Settle attempts repeated after a transient broker error."""

    def __len__(self) -> int:
        """How many deliveries are handed over and not yet settled (settles under way too)."""
        return len(self._unsettled) + len(self._settling)

    def __contains__(self, delivery: object) -> bool:
        return delivery in self._unsettled

    def in_flight(self) -> list[D]:
        """The deliveries handed over whose settle has not started (their calls still run)."""
        return list(self._unsettled)

    def admit(self, delivery: D, *, reserved: bool = False) -> None:
        """Count `delivery` as handed to the worker; it takes a slot unless one was `reserved`."""
        if self.slots is not None and not reserved:
            self.slots.take()
        self._unsettled[delivery] = None

    def claim(self, delivery: D) -> bool:
        """Start settling `delivery`: True the first time, False (and logged) after that."""
        if delivery not in self._unsettled:
            logger.error("a message from %r was settled twice; the second is dropped", self.name)
            return False
        del self._unsettled[delivery]
        self._settling.add(delivery)
        if self._idle is not None:  # closing: a settle under way again
            self._idle.clear()
        return True

    def release(self, delivery: D) -> None:
        """`delivery`'s settle is over: free its slot (once, however often this is called)."""
        if delivery not in self._settling:
            return
        self._settling.discard(delivery)
        if self.slots is not None:
            self.slots.release()
        if not self._settling and self._idle is not None:
            self._idle.set()
        if self._on_freed is not None:
            self._on_freed()

    def strand(self, delivery: D) -> None:
        """Settling `delivery` failed for good: free its slot; it is given back on close,
        unless the transport gives it back at once (`on_stranded` returns True)."""
        if delivery in self._settling:
            if self._on_stranded is None or not self._on_stranded(delivery):
                self._stranded.append(delivery)
            self.release(delivery)

    async def settle(self, delivery: D, step: Callable[[], Awaitable[None]], what: str) -> None:
        """Run `step`, the broker I/O that settles `delivery`, once; retried while transient.

        Whatever `step` does, the delivery's slot is freed; when it fails for good the
        error is raised to the worker, and the delivery stays in the broker.
        """
        if not self.claim(delivery):
            return
        try:
            try:
                await step()  # the common case: once (no coroutine for the retries)
            except Exception as exc:
                if self._final(exc):
                    raise
                await self.retrying(what, step, exc)
        except BaseException:
            self.strand(delivery)
            raise
        self.release(delivery)

    def _final(self, exc: Exception) -> bool:
        """Whether `exc` ends the retries: not transient, or the transport is closing."""
        return self.closing or not self.transient(exc)

    async def retrying(
        self, what: str, step: Callable[[], Awaitable[T]], failed: Exception | None = None
    ) -> T:
        """`step()`, run again after each transient broker error, until it succeeds.

        Gives up (raising the error) on an error that is not transient, or once the
        transport is closing. `failed`: the transient error a first run of `step` already
        met (it is not run at once again, but after the first backoff).
        """
        if failed is None:
            try:
                return await step()  # the common case: once, with no backoff to set up
            except Exception as exc:
                if self._final(exc):
                    raise
                failed = exc
        failure = failed
        backoff = Backoff()
        while True:
            delay = backoff.failed()
            self.retried += 1
            if backoff.failures == 1:
                logger.warning("%s on %r failed (%s); retrying", what, self.name, failure)
            await asyncio.sleep(delay)
            try:
                result = await step()
            except Exception as exc:
                if self._final(exc):
                    raise
                failure = exc
                continue
            logger.info("%s on %r succeeded again", what, self.name)
            return result

    async def close(self, timeout: float = CLOSE_WAIT) -> list[D]:
        """Stop retrying, wait (up to `timeout` s) for settles under way; what is left.

        What is left - handed over and never settled, or stranded - is the transport's to
        give back to its broker. The ledger is empty afterwards.
        """
        self.closing = True
        if self._settling:
            idle = self._idle = self._idle or asyncio.Event()
            try:
                async with asyncio.timeout(timeout):
                    await idle.wait()
            except TimeoutError:
                logger.warning(
                    "%d settles on %r still under way after %gs",
                    len(self._settling),
                    self.name,
                    timeout,
                )
        left = [*self._unsettled, *self._stranded, *self._settling]
        if self.slots is not None:
            self.slots.release(len(self._unsettled) + len(self._settling))
        self._unsettled.clear()
        self._stranded.clear()
        self._settling.clear()
        self._idle = None
        return left


class LedgerDelivery(Delivery):
    """A delivery settled through its transport's `Ledger` (through `WorkerTransportBase`)."""

    transport: WorkerTransportBase[LedgerDelivery]

    async def complete(self, reply: bytes | None) -> None:
        await self.transport.settle(self, reply)

    async def dead_letter(self, reason: str, reply: bytes | None) -> None:
        await self.transport.bury(self, reason, reply)


class WorkerTransportBase(WorkerTransport, Generic[D]):
    """A worker transport's start, stop and close around a `Ledger`.

    A transport implements its broker's I/O: `_open` (connect, start taking), `_stop_taking`,
    `_complete` (publish the reply, acknowledge), `_bury` (dead-letter, then reply and
    acknowledge), `_give_back` (return unsettled deliveries to the broker) and
    `_disconnect`; it classifies broker errors with `_transient` and hands each message it
    takes to the worker with `hand_over`.
    """

    limit_slots = True
    """False when the broker bounds what it hands over (a prefetch count): no slots then."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.queue = options.queue
        self.ledger: Ledger[D] = Ledger(
            options.concurrency if self.limit_slots else None,
            transient=self._transient,
            on_freed=self._slot_freed,
            on_stranded=self._strand,
            name=options.queue,
        )
        self._deliver: Callable[[Delivery], None] | None = None

    @property
    def receiving(self) -> bool:
        """Whether messages are still handed to the worker."""
        return self._deliver is not None

    async def start(self, deliver: Callable[[Delivery], None]) -> None:
        self._deliver = deliver
        try:
            await self._open()
        except BaseException:
            self._deliver = None
            raise

    def hand_over(self, delivery: D, *, reserved: bool = False) -> None:
        """Give `delivery` to the worker, counting it (and its slot, unless `reserved`)."""
        deliver = self._deliver
        assert deliver is not None, "hand_over after stop_receiving"
        self.ledger.admit(delivery, reserved=reserved)
        deliver(delivery)

    async def settle(self, delivery: D, reply: bytes | None) -> None:
        """Publish `reply` (when there is one) and acknowledge, through the ledger."""
        await self.ledger.settle(delivery, lambda: self._complete(delivery, reply), "settling")

    async def bury(self, delivery: D, reason: str, reply: bytes | None) -> None:
        """Dead-letter `delivery` with `reason`, answering `reply`, through the ledger."""
        await self.ledger.settle(
            delivery, lambda: self._bury(delivery, reason, reply), "dead-lettering"
        )

    async def stop_receiving(self) -> None:
        self._deliver = None
        await self._stop_taking()

    async def aclose(self) -> None:
        await self.stop_receiving()
        left = await self.ledger.close()
        try:
            await self._give_back(left)
        finally:
            await self._disconnect()

    def _transient(self, exc: BaseException) -> bool:
        """Whether a broker error means "try again" (the broker will be back)."""
        return False

    def _slot_freed(self) -> None:
        """A delivery's settle is over (a slot may be free): take more, if taking in a loop."""

    def _strand(self, delivery: D) -> bool:
        """Settling `delivery` failed for good: True when it was given back to the broker now
        (else it is, on close)."""
        return False

    @abstractmethod
    async def _open(self) -> None:
        """Connect and start taking messages; `TransportError` when the broker can't be had."""

    @abstractmethod
    async def _stop_taking(self) -> None:
        """Take no more messages; those not taken stay in the broker."""

    @abstractmethod
    async def _complete(self, delivery: D, reply: bytes | None) -> None:
        """Publish the reply (when there is one and an address), then acknowledge."""

    @abstractmethod
    async def _bury(self, delivery: D, reason: str, reply: bytes | None) -> None:
        """Keep the message as a dead letter with `reason`, reply when possible, acknowledge."""

    @abstractmethod
    async def _give_back(self, deliveries: list[D]) -> None:
        """Return deliveries handed over and not settled (maybe none) to the broker, counted
        as delivered once more: they may have run."""

    @abstractmethod
    async def _disconnect(self) -> None:
        """Close every connection."""


# --- the clients' side -----------------------------------------------------------------------


async def wait_shared(shared: asyncio.Future[T], timeout: float) -> T:
    """`shared`'s result, waiting at most `timeout` seconds (then `TimeoutError`), leaving
    `shared` running for its other waiters.

    Each caller waits on a future of its own: with thousands of callers giving up at once,
    ``wait_for(shield(shared))`` would scan `shared`'s callbacks once for each of them.

    `shared` cancelled is its owner giving it up (a client closed while its calls waited
    for it to connect): that fails the waiters with `TransportError`; a CancelledError
    would tell a task nobody cancelled that it was.
    """
    if not shared.done():
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        shared.add_done_callback(functools.partial(_wake, waiter))
        await asyncio.wait_for(waiter, timeout)
    if shared.cancelled():
        raise TransportError("closed while this call waited to be sent")
    return shared.result()


def _wake(waiter: asyncio.Future[None], _: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ReplyRouter:
    """Pending calls by correlation id: one future each, resolved by the reply listener.

    Replies with an unknown id (late, duplicated or someone else's) are counted and dropped,
    never handed to another caller. A call's future fails with `CallTimeout` once its
    deadline has passed: one sweep every `SWEEP_INTERVAL` seconds while calls are pending
    costs less than a timer per call. Thread-safe: `resolve` may be called from any thread.
    """

    SWEEP_INTERVAL = 0.05

    def __init__(self) -> None:
        self._pending: dict[str, tuple[asyncio.Future[bytes], float]] = {}
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.unknown_replies = 0

    def __len__(self) -> int:
        return len(self._pending)

    def expect(self, deadline: float) -> tuple[str, asyncio.Future[bytes]]:
        """A new correlation id and the future its reply will resolve by `deadline`."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        correlation_id = f"{self._prefix}.{next(self._counter)}"
        future = loop.create_future()
        self._pending[correlation_id] = (future, deadline)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.SWEEP_INTERVAL, self._sweep)
        return correlation_id, future

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.time()
        expired = [cid for cid, (_, deadline) in self._pending.items() if deadline <= now]
        for correlation_id in expired:
            future = self._pending.pop(correlation_id)[0]
            if not future.done():
                future.set_exception(CallTimeout("no reply before the deadline"))
        if self._pending and self._loop is not None:
            self._sweeper = self._loop.call_later(self.SWEEP_INTERVAL, self._sweep)

    def forget(self, correlation_id: str) -> None:
        """Stop waiting for `correlation_id` (the call failed or was cancelled)."""
        self._pending.pop(correlation_id, None)

    def resolve(self, correlation_id: str | None, body: bytes) -> None:
        """Hand a reply to its caller, from the router's loop or from any other thread."""
        # Not "another thread": the blocking client's loop runs on whichever thread calls.
        if self._loop is not None and asyncio._get_running_loop() is not self._loop:
            self._loop.call_soon_threadsafe(self.resolve, correlation_id, body)
            return
        entry = self._pending.pop(correlation_id, None) if correlation_id else None
        if entry is None or entry[0].done():
            self.unknown_replies += 1
            logger.debug("dropped a reply for unknown correlation id %r", correlation_id)
            return
        entry[0].set_result(body)

    def fail(self, correlation_id: str, exc: BaseException) -> None:
        """Fail one pending call (its request could not be delivered)."""
        entry = self._pending.pop(correlation_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(exc)

    def fail_all(self, exc: BaseException) -> None:
        """Fail every pending call at once (the connection carrying replies was lost)."""
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(exc)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


def connection_lost(what: str, exc: BaseException | None = None) -> TransportError:
    """The error pending calls fail with when the link carrying their replies breaks."""
    detail = f": {exc}" if exc else ""
    return TransportError(f"connection to {what} lost{detail}")
