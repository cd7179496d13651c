"""What operations see of Redis: queues, live workers, dead letters (`AdminTransport`).

Everything is read from what the workers write (docs/wire-redis.md, *Keys*): the set of
queues they serve, each worker's record in its heartbeat, its processing list, the queue's
dead-letter list. Replays and purges are Lua scripts that remove a record by value, so a
dead letter goes back at most once however many operators click at the same time.

On a Redis Cluster (redis+cluster://) each queue's keys share its slot (``mm:{<queue>}:...``,
docs/wire-redis.md), so every command and script on one queue goes to one master; only
``mm:queues``, one key, lives elsewhere, and deleting a queue scans every master.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster

from ..._exceptions import TransportError
from ..._json import DecodeError, loads
from ..admin import AdminTransport, DeadLetter, QueueStatus, WorkerRecord
from . import calls, scripts, wire
from .connection import CONNECTION_ERRORS, RedisSettings, close_client, transport_error

OLDEST_HEAD = """
-- The first 4096 bytes of the request taken next from a queue (its header), or nil.
local item = redis.call('LINDEX', KEYS[1], -1)
if item then return string.sub(item, 1, 4096) end
return false
"""
PURGE_ALL = """
-- Every dead letter of a queue deleted; how many there were. KEYS: the dead-letter list.
local count = redis.call('LLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return count
"""
BATCH = 500
"""Dead letters replayed or purged per script run, so that one run stays short."""


class RedisAdmin(AdminTransport):
    """Statuses, worker records and dead letters of the queues of one Redis database."""

    def __init__(self, url: str) -> None:
        self._settings = RedisSettings.from_url(url)
        self._cluster = self._settings.cluster
        self._redis: aioredis.Redis | aiocluster.RedisCluster | None = None

    @property
    def redis(self) -> aioredis.Redis | aiocluster.RedisCluster:
        """The connection (`TransportError` before `connect`)."""
        if self._redis is None:
            raise TransportError("the Redis admin client is not connected")
        return self._redis

    async def connect(self) -> None:
        name = f"mm:admin:{secrets.token_hex(4)}"
        if self._cluster:
            self._redis = self._settings.cluster_client(name)
        else:
            self._redis = self._settings.client(self._settings.pool(name))
        try:
            if isinstance(self._redis, aiocluster.RedisCluster):
                await self._redis.initialize()  # learns which node holds which slots
            await self._redis.ping()
        except CONNECTION_ERRORS as exc:
            await self.aclose()
            raise calls.unreachable(f"Redis at {self._settings.display}", exc) from exc

    async def aclose(self) -> None:
        redis_client, self._redis = self._redis, None
        await close_client(redis_client)

    async def _run(self, what: str, work: Any) -> Any:
        try:
            return await work
        except CONNECTION_ERRORS as exc:
            raise transport_error(f"{what} at {self._settings.display}", exc) from exc

    async def queues(self) -> list[str]:
        members = await self._run("listing queues", self.redis.smembers(wire.QUEUES_KEY))
        names = sorted(_text(member) for member in members)
        if not names:
            return []
        # One EXISTS per queue on one Redis; one per key on a cluster, where a name another
        # writer put in the set may hold a brace, and so its keys several slots.
        per = 4 if self._cluster else 1
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                keys = self._keys(name)
                if self._cluster:
                    for key in keys:
                        pipe.exists(key)
                else:
                    pipe.exists(*keys)
            found = await self._run("listing queues", pipe.execute())
        kept = [name for i, name in enumerate(names) if any(found[per * i : per * (i + 1)])]
        gone = sorted(set(names) - set(kept))
        if gone:  # nothing of theirs is left, the last-seen time included: forget them
            await self._run("listing queues", self.redis.srem(wire.QUEUES_KEY, *gone))
        return kept

    def _keys(self, queue: str) -> list[str]:
        """The keys whose presence says a queue is still in use: its list, its dead letters,
        its workers set, its last-seen time."""
        cluster = self._cluster
        return [
            queue,
            wire.dead_letter_key(queue, cluster=cluster),
            wire.workers_key(queue, cluster=cluster),
            wire.seen_key(queue, cluster=cluster),
        ]

    async def status(self, queue: str) -> QueueStatus:
        redis_client = self.redis
        async with redis_client.pipeline(transaction=False) as pipe:
            pipe.llen(queue)
            pipe.eval(OLDEST_HEAD, 1, queue)
            pipe.llen(wire.dead_letter_key(queue, cluster=self._cluster))
            pipe.smembers(wire.workers_key(queue, cluster=self._cluster))
            depth, head, dead, members = await self._run("reading a queue", pipe.execute())
        ids = sorted(_text(member) for member in members)
        async with redis_client.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.get(wire.heartbeat_key(queue, worker_id, cluster=self._cluster))
                pipe.llen(wire.processing_key(queue, worker_id, cluster=self._cluster))
            found = await self._run("reading workers", pipe.execute()) if ids else []
        workers: list[WorkerRecord] = []
        in_flight, silent = 0, 0
        for index, worker_id in enumerate(ids):
            beat, held = found[2 * index], found[2 * index + 1]
            in_flight += held
            if beat is None:
                silent += 1
            else:
                workers.append(_record(queue, worker_id, beat))
        notes: list[str] = []
        if silent:
            notes.append(
                f"{silent} registered worker(s) without a heartbeat: dead; a live worker "
                "gives their requests back to the queue"
            )
        oldest = None
        if head is not None:
            header, _ = wire.split_envelope(head if isinstance(head, bytes) else head.encode())
            sent = wire.read_sent(header)
            if sent is None:
                notes.append("the oldest request carries no send time (seed form)")
            else:
                oldest = max(0.0, time.time() - sent)
        return QueueStatus(
            queue=queue,
            depth=depth,
            oldest_wait=oldest,
            in_flight=in_flight,
            dead_letters=dead,
            workers=workers,
            notes=notes,
        )

    async def _records(self, queue: str, limit: int = -1) -> list[wire.DeadRecord]:
        records = await self._run(
            "reading dead letters",
            self.redis.lrange(
                wire.dead_letter_key(queue, cluster=self._cluster),
                0,
                limit - 1 if limit > 0 else -1,
            ),
        )
        return [wire.read_dead_letter(record) for record in records]

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        return [_dead_letter(queue, record) for record in await self._records(queue, limit)]

    async def replay(self, queue: str, ids: list[str] | None) -> list[DeadLetter]:
        chosen = _chosen(await self._records(queue), ids)
        now = time.time()
        pairs = [(dead, item) for dead in chosen if (item := wire.replay_item(dead, now))]
        script = self.redis.register_script(scripts.REPLAY)
        replayed: list[DeadLetter] = []
        for start in range(0, len(pairs), BATCH):
            batch = pairs[start : start + BATCH]
            args = [part for dead, item in batch for part in (dead.record, item)]
            keys = [wire.dead_letter_key(queue, cluster=self._cluster), queue]
            done = await self._run("replaying dead letters", script(keys=keys, args=args))
            for (dead, _), ok in zip(batch, done, strict=True):
                if ok:
                    replayed.append(_dead_letter(queue, dead))
        return replayed

    async def purge(self, queue: str, ids: list[str] | None) -> int:
        key = wire.dead_letter_key(queue, cluster=self._cluster)
        if ids is None:
            purge_all = self.redis.register_script(PURGE_ALL)
            return int(await self._run("purging dead letters", purge_all(keys=[key])))
        chosen = _chosen(await self._records(queue), ids)
        script = self.redis.register_script(scripts.PURGE)
        removed = 0
        for start in range(0, len(chosen), BATCH):
            records = [dead.record for dead in chosen[start : start + BATCH]]
            removed += await self._run("purging dead letters", script(keys=[key], args=records))
        return removed

    async def delete_queue(self, queue: str) -> None:
        redis_client = self.redis
        keys = [queue, wire.dead_letter_key(queue, cluster=self._cluster)]
        # On a cluster the scan goes over every master (the keys are all in the queue's slot).
        pattern = wire.queue_keys_pattern(queue, cluster=self._cluster)
        scan = redis_client.scan_iter(match=pattern, count=1000)
        keys += [_text(key) async for key in scan]
        await self._run("deleting a queue", redis_client.delete(*keys))
        await self._run("deleting a queue", redis_client.srem(wire.QUEUES_KEY, queue))


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _chosen(records: list[wire.DeadRecord], ids: list[str] | None) -> list[wire.DeadRecord]:
    if ids is None:
        return records
    wanted = set(ids)
    return [record for record in records if record.id in wanted]


def _record(queue: str, worker_id: str, beat: bytes) -> WorkerRecord:
    """A worker's record from its heartbeat (older workers wrote only a timestamp)."""
    try:
        data = loads(beat)
    except DecodeError:
        data = None
    if type(data) is dict:
        try:
            record = WorkerRecord.from_json({**data, "id": worker_id, "queue": queue})
        except TypeError:
            pass
        else:
            if _well_typed(record):
                return record
    last_seen = float(data) if type(data) in (int, float) else 0.0
    return WorkerRecord(worker_id, queue, "", 0, 0, 0, 0, 0, 0.0, last_seen, "redis")


_TEXT_FIELDS = ("host", "transport", "version")
_COUNT_FIELDS = ("pid", "concurrency", "in_flight", "completed", "failed")


def _well_typed(record: WorkerRecord) -> bool:
    """Whether a record read from Redis has the documented types (anyone can write one)."""
    texts = all(type(getattr(record, name)) is str for name in _TEXT_FIELDS)
    counts = all(type(getattr(record, name)) is int for name in _COUNT_FIELDS)
    times = all(type(getattr(record, name)) in (int, float) for name in ("started", "last_seen"))
    return texts and counts and times


def _dead_letter(queue: str, dead: wire.DeadRecord) -> DeadLetter:
    extra: dict[str, Any] = {}
    if dead.worker is not None:
        extra["worker"] = dead.worker
    if dead.header is not None:
        extra["header"] = dead.header
    body = dead.body if dead.body is not None else dead.record
    return DeadLetter(dead.id, queue, dead.reason, dead.deliveries, dead.at, body, extra)


def admin_transport(url: str) -> RedisAdmin:
    """What operations see of the Redis at `url`."""
    return RedisAdmin(url)
