"""What operations see of NATS: queues, live workers (their status replies), dead letters.

Live workers answer a request on ``mm.status.<queue>`` with their record; the admin side
gathers the answers that come within `COLLECT` seconds. JetStream keeps the rest: a queue's
depth and in-flight count are its consumer's (``num_pending``, ``num_ack_pending``), the
oldest wait is the age of the first request still stored, and dead letters are the messages
of ``MM_DEAD_<queue>``, named by their sequence numbers there. Core NATS keeps no requests:
its depth is unknown (None, with a note); its workers keep dead letters in the same stream
when the server has JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ..._exceptions import TransportError
from ..admin import AdminTransport, DeadLetter, QueueStatus, WorkerRecord
from . import presence, wire
from .connection import NATS_ERRORS, close_connection, open_connection, where

COLLECT = 0.3
"""Seconds the status request waits for the workers' answers."""
SCAN_LIMIT = 10_000
"""Sequence numbers looked at, at most, to list one page of dead letters."""


class NatsAdmin(AdminTransport):
    """A NATS server seen by an operator (JetStream when the server has it)."""

    def __init__(self, url: str) -> None:
        self._settings = wire.parse_url(url)
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None

    async def connect(self) -> None:
        self._nc = await open_connection(self._settings, "micromessaging-admin")
        self._js = self._nc.jetstream(timeout=self._settings.connect_timeout * 2)

    async def aclose(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            await close_connection(nc)

    def _live(self) -> tuple[NATS, JetStreamContext]:
        if self._nc is None or self._js is None:
            raise TransportError("the NATS admin is not connected")
        return self._nc, self._js

    async def queues(self) -> list[str]:
        _, js = self._live()
        # The queues live workers serve, and those JetStream keeps requests or dead letters of.
        names = {record.queue for record in await self._ask(presence.ALL_STATUS)}
        try:
            streams = await js.streams_info()
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            return sorted(names)  # no JetStream: nothing is kept
        except NATS_ERRORS as exc:
            raise TransportError(f"can't list NATS streams at {where(self._settings)}") from exc
        for info in streams:
            name, subjects = info.config.name or "", info.config.subjects or []
            if not name.startswith("MM_") or name == presence.STREAM or len(subjects) != 1:
                continue
            subject = subjects[0]
            if name.startswith("MM_DEAD_") and subject.startswith(wire.DEAD_LETTER_PREFIX):
                subject = subject[len(wire.DEAD_LETTER_PREFIX) :]
            if name in (wire.stream_name(subject), wire.dead_letter_stream_name(subject)):
                names.add(subject)
        return sorted(names)

    async def status(self, queue: str) -> QueueStatus:
        wire.check_queue(queue)
        _, js = self._live()
        workers = await self._workers(queue)
        status = QueueStatus(queue, None, None, None, None, workers)
        if self._settings.jetstream:
            await self._stream_status(js, queue, status)
        else:
            status.in_flight = sum(worker.in_flight for worker in workers)
            status.notes.append("core NATS keeps no requests waiting: depth unknown")
        try:
            info = await js.stream_info(wire.dead_letter_stream_name(queue))
            status.dead_letters = info.state.messages
        except nats.js.errors.NotFoundError:
            status.dead_letters = 0
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            status.notes.append("no JetStream on this server: dead letters are not kept")
        return status

    async def _stream_status(self, js: JetStreamContext, queue: str, status: QueueStatus) -> None:
        stream = wire.stream_name(queue)
        try:
            info = await js.stream_info(stream)
            consumer = await js.consumer_info(stream, wire.CONSUMER_NAME)
        except nats.js.errors.NotFoundError:
            status.depth, status.in_flight = 0, 0
            status.notes.append(f"no stream {stream} yet")
            return
        status.depth = consumer.num_pending
        status.in_flight = consumer.num_ack_pending
        if info.state.messages:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                first = await js.get_msg(stream, info.state.first_seq)
                status.oldest_wait = max(0.0, time.time() - _stored_at(first.time))

    async def _workers(self, queue: str) -> list[WorkerRecord]:
        """The records of the workers that answer on the status subject within `COLLECT`."""
        records = await self._ask(presence.status_subject(queue))
        return [record for record in records if record.queue == queue]

    async def _ask(self, subject: str) -> list[WorkerRecord]:
        nc, _ = self._live()
        inbox = nc.new_inbox()
        records: list[WorkerRecord] = []

        async def answered(msg: Msg) -> None:
            with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError):
                data = orjson.loads(msg.data)
                if isinstance(data, dict):
                    records.append(WorkerRecord.from_json(data))

        try:
            sub = await nc.subscribe(inbox, cb=answered)
            await nc.publish(subject, b"", reply=inbox)
            await asyncio.sleep(COLLECT)
            await sub.unsubscribe()
        except NATS_ERRORS as exc:
            raise TransportError(f"can't ask the workers on {subject!r}: {exc!r}") from exc
        return sorted(records, key=lambda record: record.id)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        return await self._letters(queue, None, limit)

    async def _letters(
        self, queue: str, ids: list[str] | None, limit: int | None = None
    ) -> list[DeadLetter]:
        _, js = self._live()
        stream = wire.dead_letter_stream_name(queue)
        try:
            state = (await js.stream_info(stream)).state
        except (nats.js.errors.NotFoundError, nats.js.errors.ServiceUnavailableError):
            return []
        if ids is not None:
            wanted = sorted({int(i) for i in ids if i.isdigit()})
        else:
            last = min(state.last_seq, state.first_seq + SCAN_LIMIT)
            wanted = list(range(state.first_seq, last + 1)) if state.messages else []
        letters: list[DeadLetter] = []
        for seq in wanted:
            if limit is not None and len(letters) >= limit:
                break
            with contextlib.suppress(nats.js.errors.NotFoundError):
                letters.append(_dead_letter(queue, await js.get_msg(stream, seq)))
        return letters

    async def replay(self, queue: str, ids: list[str] | None) -> list[DeadLetter]:
        nc, js = self._live()
        letters = await self._letters(queue, ids)
        for letter in letters:
            headers = {
                key: letter.extra[name]
                for key, name in ((wire.REPLY_TO, "reply_to"), (wire.DEADLINE, "deadline"))
                if letter.extra.get(name)
            }
            headers[wire.SENT] = str(int(time.time() * 1000))
            try:
                if self._settings.jetstream:
                    await js.publish(queue, letter.body, headers=headers)
                else:
                    reply = headers.pop(wire.REPLY_TO, "")
                    await nc.publish(queue, letter.body, reply=reply, headers=headers)
                await js.delete_msg(wire.dead_letter_stream_name(queue), int(letter.id))
            except NATS_ERRORS as exc:
                raise TransportError(f"can't replay dead letter {letter.id}: {exc!r}") from exc
        return letters

    async def purge(self, queue: str, ids: list[str] | None) -> int:
        _, js = self._live()
        stream = wire.dead_letter_stream_name(queue)
        if ids is None:
            try:
                count = (await js.stream_info(stream)).state.messages
                await js.purge_stream(stream)
            except nats.js.errors.NotFoundError:
                return 0
            return count
        gone = 0
        for letter in await self._letters(queue, ids):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_msg(stream, int(letter.id))
                gone += 1
        return gone

    async def delete_queue(self, queue: str) -> None:
        _, js = self._live()
        for stream in (wire.stream_name(queue), wire.dead_letter_stream_name(queue)):
            with contextlib.suppress(nats.js.errors.NotFoundError, *NATS_ERRORS):
                await js.delete_stream(stream)
        with contextlib.suppress(nats.js.errors.NotFoundError, *NATS_ERRORS):
            await js.purge_stream(presence.STREAM, subject=presence.queue_records(queue))


def _stored_at(when: datetime.datetime | None) -> float:
    return when.timestamp() if when is not None else time.time()


def _dead_letter(queue: str, msg: Any) -> DeadLetter:
    headers: dict[str, str] = dict(msg.headers or {})
    extra: dict[str, Any] = {}
    if headers.get(wire.REPLY_TO):
        extra["reply_to"] = headers[wire.REPLY_TO]
    if headers.get(wire.DEADLINE):
        extra["deadline"] = headers[wire.DEADLINE]
    return DeadLetter(
        id=str(msg.seq),
        queue=queue,
        reason=headers.get(wire.REASON, ""),
        deliveries=wire.read_count(headers),
        at=_stored_at(msg.time),
        body=msg.data or b"",
        extra=extra,
    )


def admin_transport(url: str) -> NatsAdmin:
    """What operations see of the NATS server(s) `url` names."""
    return NatsAdmin(url)
