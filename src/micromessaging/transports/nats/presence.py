"""Which queues have workers: a record per worker kept in JetStream, outliving a restart.

Every worker, core or JetStream, stores its `WorkerRecord` on ``mm.workers.<queue>.<worker
id>`` in the stream ``MM_WORKERS`` (one message kept per subject, a day at most) when it
starts, every `HEARTBEAT` seconds, and when it stops. A client reads the records of a queue
(an ephemeral consumer delivering the last message of each ``mm.workers.<queue>.*`` subject)
before it creates a queue's stream (JetStream) or when the server says no worker is
subscribed (core NATS): no record newer than the URL's ``worker_window`` means `NoWorkers`
at once.

Never ``$JS.API.STREAM.MSG.GET`` here: nats-server 2.9.10 (Debian's) dereferences a nil store
when that request meets a stream being created (``MM_WORKERS`` made by the first worker while
clients look) and the whole server dies; a consumer create checks for it and says no.

A server without JetStream keeps nothing: workers only answer the status subject, and a
core client falls back on what it saw itself (see docs/wire-nats.md, "No worker").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats.aio.msg
import nats.errors
import nats.js.errors
import orjson
from nats.js import JetStreamContext, api

from .._shared import wait_shared
from ..admin import WorkerRecord
from . import wire

logger = logging.getLogger("micromessaging.transport.nats")

STREAM = "MM_WORKERS"
PREFIX = "mm.workers."
HEARTBEAT = 5.0
"""Seconds between a worker's records: a worker counts as live for 3 of them."""
READ_WITHIN = 2.0
"""Seconds a look waits for the records the consumer said it would deliver."""
KEPT = 24 * 3600.0
"""Seconds a record is kept: the longest useful ``worker_window``."""
CHECK_EVERY = 1.0
"""Seconds a client trusts its last look at a queue's records."""
STATUS_PREFIX = "mm.status."
"""Workers answer requests on ``mm.status.<queue>`` with their record (core and JetStream)."""
ALL_STATUS = "mm.status"
"""Every worker of every queue answers requests here too (how `queues` finds them)."""


def record_subject(queue: str, worker_id: str) -> str:
    """Where one worker of `queue` keeps its record."""
    return f"{PREFIX}{wire.token(queue)}.{wire.token(worker_id)}"


def queue_records(queue: str) -> str:
    """The subjects of every worker record of `queue` (a wildcard)."""
    return f"{PREFIX}{wire.token(queue)}.*"


def status_subject(queue: str) -> str:
    """Where the workers of `queue` answer with their records."""
    return STATUS_PREFIX + queue


class Unknown(Exception):
    """The server can't tell (no JetStream): nobody keeps records there."""


async def ensure_stream(js: JetStreamContext, replicas: int = 1) -> None:
    """``MM_WORKERS``, made by the first worker that finds it missing."""
    try:
        await js.stream_info(STREAM)
        return
    except nats.js.errors.NotFoundError:
        pass
    config = api.StreamConfig(
        name=STREAM,
        subjects=[PREFIX + ">"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_msgs_per_subject=1,
        max_age=KEPT,
        num_replicas=replicas,
    )
    with contextlib.suppress(nats.js.errors.BadRequestError):  # made meanwhile: fine
        await js.add_stream(config)


async def last_seen(js: JetStreamContext, queue: str) -> float | None:
    """When a worker of `queue` last said it was alive (epoch seconds), None if never.

    An ephemeral push consumer on ``MM_WORKERS`` (in memory, no acks) delivers the last record
    of each worker of `queue`; it is deleted as soon as they are in. `Unknown` when the server
    has no JetStream to ask.
    """
    nc = js._nc
    inbox = nc.new_inbox()
    records: asyncio.Queue[bytes] = asyncio.Queue()

    async def arrived(msg: nats.aio.msg.Msg) -> None:
        records.put_nowait(msg.data or b"")

    sub = await nc.subscribe(inbox, cb=arrived)  # before the consumer: it may deliver at once
    config = api.ConsumerConfig(
        deliver_subject=inbox,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        filter_subject=queue_records(queue),
        ack_policy=api.AckPolicy.NONE,
        max_deliver=1,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=READ_WITHIN,
    )
    try:
        try:
            info = await js.add_consumer(STREAM, config)
        except nats.js.errors.NotFoundError:
            return None  # no stream: no worker ever kept a record
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
            raise Unknown(str(exc)) from exc
        except (TypeError, KeyError) as exc:
            # nats-server 2.9 may answer a create meeting the stream's deletion with neither
            # an error nor a consumer, which nats-py's reader can't make into ConsumerInfo
            raise nats.js.errors.Error(f"the server answered with no consumer: {exc}") from exc
        try:
            newest: float | None = None
            for _ in range(info.num_pending or 0):
                data = await asyncio.wait_for(records.get(), READ_WITHIN)
                seen = _last_seen(data)
                if seen is not None and (newest is None or seen > newest):
                    newest = seen
            return newest
        finally:  # no reply awaited: the consumer goes anyway once nobody listens
            await nc.publish(f"$JS.API.CONSUMER.DELETE.{STREAM}.{info.name}", b"")
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


def _last_seen(data: bytes) -> float | None:
    try:
        record = orjson.loads(data)
        return float(record["last_seen"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class Presence:
    """A client's view of which queues have workers, asked at most once a second per queue."""

    def __init__(self, js: JetStreamContext, window: float, timeout: float) -> None:
        self.js = js
        self.window = window
        self.timeout = timeout
        self._looks: dict[str, tuple[float, asyncio.Future[float | None]]] = {}
        self.answered: dict[str, float] = {}
        """When this client last had an answer from each queue (monotonic seconds)."""

    def answer_from(self, queue: str) -> None:
        """A worker of `queue` just answered this client."""
        self.answered[queue] = time.monotonic()

    def answered_within(self, queue: str) -> bool:
        """Whether this client itself had an answer from `queue` within the window."""
        seen = self.answered.get(queue)
        return seen is not None and time.monotonic() - seen <= self.window

    async def served(self, queue: str, deadline: float | None = None) -> bool | None:
        """Whether a worker of `queue` was seen within the window; None when nobody can tell.

        Waits at most `timeout` seconds, and not past `deadline` (epoch seconds).
        """
        now = time.monotonic()
        look = self._looks.get(queue)
        if look is None or now - look[0] > CHECK_EVERY:
            future = asyncio.ensure_future(last_seen(self.js, queue))
            future.add_done_callback(_retrieve)
            look = self._looks[queue] = (now, future)
        try:
            wait = self.timeout if deadline is None else min(self.timeout, deadline - time.time())
            seen = await wait_shared(look[1], max(wait, 0.001))
        except Unknown:
            return True if self.answered_within(queue) else None
        except (TimeoutError, nats.errors.Error, OSError):
            self._looks.pop(queue, None)
            return True  # the server is slow or away: don't refuse on a guess
        if seen is not None and time.time() - seen <= self.window:
            return True
        return self.answered_within(queue)


async def announce(js: JetStreamContext | None, record: WorkerRecord, replicas: int = 1) -> bool:
    """Store `record` where clients and `status` look; False when JetStream isn't there."""
    if js is None:
        return False
    payload = orjson.dumps(record.to_json())
    try:
        await js.publish(record_subject(record.queue, record.id), payload, timeout=2)
    except nats.js.errors.NoStreamResponseError:
        await ensure_stream(js, replicas)
        await js.publish(record_subject(record.queue, record.id), payload, timeout=2)
    return True


def _retrieve(future: asyncio.Future[float | None]) -> None:
    if not future.cancelled():
        future.exception()
