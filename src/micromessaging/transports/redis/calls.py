"""What the async and the blocking Redis clients share, free of I/O: one core, two loops.

`client` (asyncio) and `sync_client` (threads) differ only in how they wait: a reader task
and futures, or a reader role passed among calling threads. Everything else - the bytes of
a request and of a notification, the commands a batch of pushes or a reply read becomes,
how a reply is read, the errors raised, the pool they connect with - is here, once.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    NoScriptError,
)

from ..._exceptions import NoWorkers, TransportError
from .._shared import Refused, looks_refused
from ..base import TraceContext
from . import scripts, wire
from .connection import LINK_ERRORS, RedisSettings, transport_error

logger = logging.getLogger("micromessaging.transport.redis")

REFUSALS = (AuthenticationError, AuthorizationError, NoPermissionError)
REPLY_BATCH = 512
"""The most replies one read takes from the reply list."""
SEED_MAX_CONNECTIONS = 64
"""Calls in flight at once over ``?wire=seed`` (each holds a connection for its BRPOP)."""
FAILOVER_PATIENCE = 30.0
"""Seconds a client retries a push to a Redis Cluster while a master is down and its replica
not yet promoted (its calls still time out at their own deadlines)."""
SWEEP_LIMIT = 500
"""The most expired requests one sweep drops, so that one run of the script stays short."""
SWEEP_INTERVAL = 1.0
"""Seconds between one client's sweeps of one queue, unless the last found more to drop."""
SWEEP_MARGIN = 1.0
"""Seconds past its deadline before a client drops a request (a worker drops it at the
deadline, by its own clock): room for clocks a little out of step."""


def client_name(client_id: str) -> str:
    """The connection name of a client's connections (CLIENT LIST shows it)."""
    return f"mm:client:{client_id}"


def notification(
    body: bytes, deadline: float | None, sent: float, trace: TraceContext | None
) -> bytes:
    """The message for a call that wants no reply: a header without reply_to (send time,
    deadline when there is one, trace context when given), then the body."""
    return wire.encode_request(body, None, None, deadline, sent, trace)


PUSH_SHA = hashlib.sha1(scripts.PUSH.encode()).hexdigest()


class Pushes:
    """How one client pushes: plain LPUSH, or under the no-worker rule (`scripts.PUSH`).

    With a window, a push is the script that pushes only when a worker of the queue was
    seen alive within it, atomically; the script says for how long it will go on accepting
    (until the window after the worker last seen closes, unless a worker beats again), and
    until then a push is a plain LPUSH: the script would push it all the same, at three
    times the cost to Redis. A Redis that doesn't know the script yet gets it
    again in full (EVAL); an ACL that refuses scripts gets the same rule in two steps (TIME
    and GET of the last-seen key, then LPUSH), which a worker's death can race. Its state
    is a flag and a dict: threads may share it.
    """

    def __init__(self, window: float, *, cluster: bool = False) -> None:
        self.window = window
        self.cluster = cluster
        """On a Redis Cluster the last-seen key shares the queue's slot (`wire.seen_key`)."""
        self.window_ms = int(window * 1000)
        self.scripted = True
        self._served_until: dict[str, float] = {}
        """Per queue, until when (monotonic) Redis said its pushes will be accepted."""

    def plan(self, messages: Iterable[tuple[str, bytes]]) -> PushPlan:
        """The rounds of commands that push (queue, message) pairs: one push per queue."""
        by_queue: dict[str, list[bytes]] = {}
        for queue, message in messages:
            by_queue.setdefault(queue, []).append(message)
        return PushPlan(self, by_queue)

    def served(self, queue: str) -> bool:
        """Whether Redis said lately that it will accept pushes to `queue` now."""
        return time.monotonic() < self._served_until.get(queue, 0.0)

    def combinable(self, queue: str) -> bool:
        """Whether a push to `queue` can go in one write with a blocking read: its outcome
        is known to be a push (no rule, or Redis said lately that it will accept it now)."""
        if not self.window_ms:
            return True
        return self.scripted and self.served(queue)

    def accepted(self, queue: str, left_ms: object, asked: float) -> None:
        """A push to `queue` sent at `asked` (monotonic) went in under the rule, and more
        will for `left_ms` after Redis ran it.

        Counted from `asked` (Redis ran it later) and for the window at most: `left_ms`
        also counts the time a live worker's heartbeat has still to run, which the last
        worker's clean stop takes back (`scripts.GIVE_BACK` marks the queue seen at its
        stop, after `asked`). So a plain push is sent only when the script would push too.
        """
        if len(self._served_until) > 10_000:
            self._served_until.clear()
        if type(left_ms) is int:
            self._served_until[queue] = asked + min(left_ms, self.window_ms) / 1000

    def no_workers(self, queue: str) -> NoWorkers:
        """The error of a call to `queue` none of whose workers was seen alive lately."""
        self._served_until.pop(queue, None)
        return NoWorkers(
            queue, f"none seen alive in the last {self.window:g} s (?worker_window=, 0: wait)"
        )


class PushPlan:
    """One push of a batch, as rounds of commands a client sends and feeds the replies of.

    `first()` gives the first round; `next(replies)` the next one (a script Redis did not
    know, the two-step check), or None when every queue's push is settled; then `outcomes`
    holds, per queue, None (pushed) or the error (`NoWorkers`, or Redis's own).
    """

    def __init__(self, pushes: Pushes, by_queue: dict[str, list[bytes]]) -> None:
        self._pushes = pushes
        self._by_queue = by_queue
        self._round: list[tuple[str, str]] = []
        self._asked = time.monotonic()
        self.outcomes: dict[str, BaseException | None] = {}

    @property
    def queues(self) -> list[str]:
        """The queues this plan pushes to."""
        return list(self._by_queue)

    def _mode(self) -> str:
        pushes = self._pushes
        return "plain" if not pushes.window_ms else "script" if pushes.scripted else "check"

    def first(self) -> list[tuple[Any, ...]]:
        """The first round of commands."""
        mode, pushes = self._mode(), self._pushes
        if mode == "script":
            return self._commands(
                [(queue, "served" if pushes.served(queue) else mode) for queue in self._by_queue]
            )
        return self._commands([(queue, mode) for queue in self._by_queue])

    def _commands(self, steps: list[tuple[str, str]]) -> list[tuple[Any, ...]]:
        self._round = steps
        commands: list[tuple[Any, ...]] = []
        window = self._pushes.window_ms
        cluster = self._pushes.cluster
        for queue, mode in steps:
            items = self._by_queue[queue]
            seen = wire.seen_key(queue, cluster=cluster)
            if mode in ("plain", "served"):
                commands.append(("LPUSH", queue, *items))
            elif mode in ("script", "eval"):
                head = ("EVALSHA", PUSH_SHA) if mode == "script" else ("EVAL", scripts.PUSH)
                commands.append((*head, 2, queue, seen, window, *items))
            else:
                commands += [("TIME",), ("GET", seen)]
        return commands

    def next(self, replies: list[Any]) -> list[tuple[Any, ...]] | None:
        """Take the replies of the last round; the next round, or None when done."""
        pushes, steps, later = self._pushes, self._round, []
        at = 0
        for queue, mode in steps:
            reply = replies[at]
            at += 1
            if mode == "check":
                seen, at = replies[at], at + 1
                if isinstance(reply, Exception) or isinstance(seen, Exception):
                    self.outcomes[queue] = reply if isinstance(reply, Exception) else seen
                elif _left(reply, seen, pushes.window_ms) >= 0:
                    later.append((queue, "plain"))
                else:
                    self.outcomes[queue] = pushes.no_workers(queue)
            elif isinstance(reply, NoScriptError) and mode == "script":
                later.append((queue, "eval"))
            elif (
                isinstance(reply, Exception)
                and mode in ("script", "eval")
                and _refuses_scripts(reply)
            ):
                pushes.scripted = False
                later.append((queue, "check"))
            elif isinstance(reply, Exception):
                self.outcomes[queue] = reply
            elif mode in ("script", "eval") and reply == -1:
                self.outcomes[queue] = pushes.no_workers(queue)
            else:
                if mode in ("script", "eval") and isinstance(reply, list) and len(reply) == 2:
                    pushes.accepted(queue, reply[1], self._asked)
                self.outcomes[queue] = None
        return self._commands(later) if later else None


def _refuses_scripts(error: Exception) -> bool:
    return isinstance(error, NoPermissionError) or "NOPERM" in str(error)


def _left(now: Any, seen: Any, window_ms: int) -> float:
    """For how many ms pushes are accepted, from TIME and GET replies (< 0: not now)."""
    try:
        redis_now = int(now[0]) * 1000 + int(now[1]) // 1000
        return -1.0 if seen is None else float(seen) + window_ms - redis_now
    except (TypeError, ValueError, IndexError):
        return -1.0


class Spreader:
    """Which shard of a queue a client's next request goes to (``?shards=N``): each in turn.

    Its state is one counter, whose `next` is atomic: threads may share it.
    """

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._turns = itertools.count()

    def queue(self, queue: str) -> str:
        """The list the next request to `queue` goes to."""
        if self.shards == 1:
            return queue
        return wire.shard_queue(queue, next(self._turns) % self.shards)


class Sweeps:
    """When a client drops expired requests from the queues it pushes to, worker or none.

    A sweep (`scripts.SWEEP`) goes out with a push, in the same write, at most once per
    `SWEEP_INTERVAL` per queue, and again at the next push while a sweep finds a full
    `SWEEP_LIMIT` to drop; so a queue nobody serves holds no more abandoned calls than its
    clients push in a second or so. A Redis that refuses the script (an ACL without EVAL)
    is not asked again. Its state is a dict and counters: threads may share it.
    """

    def __init__(self) -> None:
        self._next: dict[str, float] = {}
        self.enabled = True
        self.swept = 0
        """Expired requests this client has dropped."""

    def due(self, queues: Iterable[str], now: float) -> list[tuple[Any, ...]]:
        """The sweep commands to send with a push to `queues` at `now` (epoch seconds)."""
        if not self.enabled:
            return []
        if len(self._next) > 10_000:
            self._next.clear()  # a client of very many queues: forget, sweep them again
        cutoff = int((now - SWEEP_MARGIN) * 1000)
        commands: list[tuple[Any, ...]] = []
        for queue in queues:
            if self._next.get(queue, 0.0) <= now:
                self._next[queue] = now + SWEEP_INTERVAL
                commands.append(("EVAL", scripts.SWEEP, 1, queue, cutoff, SWEEP_LIMIT))
        return commands

    def done(self, commands: list[tuple[Any, ...]], replies: list[Any]) -> None:
        """Count what the sweeps dropped; a queue with more to drop is swept again next."""
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, Exception):
                if isinstance(reply, NoPermissionError) or "NOPERM" in str(reply):
                    self.enabled = False
                logger.debug("sweeping %r failed: %s", command[3], reply)
            elif isinstance(reply, int):
                self.swept += reply
                if reply >= SWEEP_LIMIT:
                    self._next[command[3]] = 0.0


def read_command(reply_list: str, block: float) -> tuple[Any, ...]:
    """The command that waits up to `block` seconds for replies and takes a batch of them."""
    return ("BLMPOP", round(block, 3), 1, reply_list, "LEFT", "COUNT", REPLY_BATCH)


def replies(got: Any) -> list[tuple[str | None, bytes]]:
    """(correlation id, body) of each reply a `read_command` returned (none on a timeout)."""
    return [wire.decode_reply(message) for message in got[1]] if got else []


def seed_reply_list(body: bytes) -> str:
    """Where the seed's server puts the reply to `body`: the list its id names."""
    name = wire.seed_reply_list(body)
    if name is None:
        raise TransportError("wire=seed sends only requests with a string or integer id")
    return name


def unreachable(where: str, exc: BaseException) -> TransportError:
    """The error for a failed connection to `where`: `Refused` for a refusal."""
    error = transport_error(f"cannot reach {where}", exc)
    if isinstance(exc, REFUSALS) or looks_refused(exc):
        return Refused(str(error))
    return error


def replies_may_be_lost(exc: BaseException, *, cluster: bool = False) -> bool:
    """Whether a failed read of the reply list means its replies may never come.

    A broken link may be a restarted Redis that lost them: the calls waiting fail at once.
    A refusal (a replica during a failover, LOADING, UNBLOCKED) leaves them in their list.
    On a Redis Cluster a lost node is a failover: its replica takes over with the list, so
    the calls wait (those whose replies it had not yet received time out at their deadlines).
    """
    return isinstance(exc, LINK_ERRORS) and not cluster


class Failures:
    """The errors a client of one Redis raises, worded the same by both clients."""

    def __init__(self, settings: RedisSettings) -> None:
        self.where = f"Redis at {settings.display}"

    def unreachable(self, exc: BaseException) -> TransportError:
        """Connecting failed (`Refused` when Redis refused us: trying again won't help)."""
        return unreachable(self.where, exc)

    def silent(self, exc: BaseException) -> TransportError:
        """A health check got no answer."""
        return transport_error(f"{self.where} does not answer", exc)

    def sending(self, exc: BaseException) -> TransportError:
        """A push failed."""
        return transport_error(f"sending to {self.where}", exc)

    def pushing(self, outcome: BaseException) -> TransportError:
        """A push's outcome as the caller's error: `NoWorkers` as it is."""
        if isinstance(outcome, TransportError):
            return outcome
        return self.sending(outcome)

    def reading(self, exc: BaseException) -> TransportError:
        """Reading replies failed."""
        return transport_error(f"reading replies from {self.where}", exc)

    @staticmethod
    def closed() -> TransportError:
        """A call on a closed client."""
        return TransportError("the Redis client is closed")
